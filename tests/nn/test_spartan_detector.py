"""RT-DETR with the SpaRTAN-T backbone and the R18 head, built from its model config, against
the reference fixture."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from rtdetr_spartan.core.yaml_config import YAMLConfig
from rtdetr_spartan.nn.backbones.spartan import SpaRTAN
from rtdetr_spartan.nn.backbones.spartan_inference import InferenceBlock
from rtdetr_spartan.nn.backbones.spartan_layers import Block, ConvNormAct
from rtdetr_spartan.nn.reparameterize import reparameterize_model
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
    for form in (model, model.deploy()):
        problems, fraction = detector_parity(form, expected)
        assert problems == []
        assert fraction >= 0.98, f"only {fraction:.3f} of the reference queries reproduced"


def test_deploy_is_the_inference_form_and_training_weights_still_load() -> None:
    """RT-DETR's convention, ``model.deploy()``, swaps SpaRTAN's layers for their inference forms
    in place: no canonical block or conv layer is left, the output equals
    ``reparameterize_model``'s copy within 1e-4, and the training state dict saved before deploying
    loads strictly into a fresh training model."""
    entries, _ = load_spec("rtdetr_spartan_t")
    model = build_spartan_detector()
    model.load_state_dict(synthetic_state_dict(entries, 7), strict=True)
    model.eval()
    trained = copy.deepcopy(model.state_dict())
    converted = reparameterize_model(model, inplace=False)
    deployed = model.deploy()
    assert deployed is model
    assert not any(isinstance(m, (Block, ConvNormAct)) for m in deployed.modules())
    assert sum(isinstance(m, InferenceBlock) for m in deployed.modules()) == 20
    x = torch.rand(2, 3, 160, 160, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = converted.backbone(x), deployed.backbone(x)
        assert all((a - b).abs().max() < 1e-4 for a, b in zip(want, got))
        encoded_want, encoded_got = converted.encoder(want), deployed.encoder(got)
        assert all((a - b).abs().max() < 1e-4 for a, b in zip(encoded_want, encoded_got))
    assert deployed.deploy() is deployed  # a second deploy changes nothing
    fresh = build_spartan_detector()
    fresh.load_state_dict(trained, strict=True)
    with torch.no_grad():
        assert all((a - b).abs().max() < 1e-4 for a, b in zip(fresh.eval().backbone(x), want))
