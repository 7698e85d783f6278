"""RT-DETR with the SpaRTAN-T backbone and the R18 head, built from its model config, against
the reference fixture."""

from __future__ import annotations

from pathlib import Path

from rtdetr_spartan.core.yaml_config import YAMLConfig
from rtdetr_spartan.nn.backbones.spartan import SpaRTAN
from rtdetr_spartan.nn.backbones.spartan_inference import convert_for_inference
from rtdetr_spartan.zoo.rtdetr.rtdetr import RTDETR
from tests.parity_utils import detector_parity, load_expected, load_spec, state_dict_spec, synthetic_state_dict

MODEL_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "spartan" / "spartan_t_model.yml"


def build_spartan_detector() -> RTDETR:
    """The fixture's model, built from configs/spartan/spartan_t_model.yml."""
    model = YAMLConfig(MODEL_CONFIG).model
    assert isinstance(model, RTDETR) and isinstance(model.backbone, SpaRTAN)
    return model


def test_spartan_detector_reproduces_reference() -> None:
    entries, params = load_spec("rtdetr_spartan_t")
    model = build_spartan_detector()
    assert state_dict_spec(model) == entries
    assert sum(p.numel() for p in model.parameters()) == params
    model.load_state_dict(synthetic_state_dict(entries, 0), strict=True)
    model.eval()

    expected = load_expected("rtdetr_spartan_t_seed0")
    # the canonical model, then the deployed one (RepVGG fused, SpaRTAN in inference form)
    for form in (model, convert_for_inference(model.deploy())):
        problems, fraction = detector_parity(form, expected)
        assert problems == []
        assert fraction >= 0.98, f"only {fraction:.3f} of the reference queries reproduced"
