from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rtdetr_spartan.core import ConfigError, YAMLConfig
from tests.parity_utils import load_spec, state_dict_spec

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
R18 = CONFIGS / "rtdetr" / "rtdetr_r18vd_6x_coco.yml"


def test_reference_values_resolved_through_includes():
    cfg = YAMLConfig(R18)
    y = cfg.yaml_cfg
    assert y["epochs"] == 72 and y["clip_max_norm"] == 0.1 and y["use_ema"] is True
    assert y["ema"] == {"type": "ModelEMA", "decay": 0.9999, "warmups": 2000}
    assert y["RTDETRTransformer"]["num_decoder_layers"] == 3 and y["RTDETRTransformer"]["num_queries"] == 300
    assert y["RTDETRTransformer"]["num_denoising"] == 100
    assert y["HybridEncoder"]["expansion"] == 0.5
    assert y["RTDETR"]["multi_scale"][0] == 480 and max(y["RTDETR"]["multi_scale"]) == 800
    assert y["optimizer"]["lr"] == 1e-4 and y["optimizer"]["weight_decay"] == 1e-4


def test_keyword_overrides_are_deep_merged():
    cfg = YAMLConfig(
        R18, PResNet={"pretrained": False}, remap_mscoco_category=False, RTDETRTransformer={"num_queries": 100}
    )
    y = cfg.yaml_cfg
    assert y["PResNet"]["depth"] == 18 and y["PResNet"]["pretrained"] is False
    assert y["remap_mscoco_category"] is False
    assert y["RTDETRTransformer"]["num_queries"] == 100 and y["RTDETRTransformer"]["num_decoder_layers"] == 3


@pytest.mark.parametrize("name", ["r18vd", "r34vd", "r50vd", "r101vd", "spartan_t"])
def test_config_builds_reference_state_dict(name):
    cfg = YAMLConfig(CONFIGS / "rtdetr" / f"rtdetr_{name}_6x_coco.yml")
    spec, params = load_spec(f"rtdetr_{name}")
    model = cfg.model
    assert state_dict_spec(model) == spec
    assert sum(p.numel() for p in model.parameters()) == params


def test_building_twice_gives_equal_independent_models():
    cfg = YAMLConfig(R18)
    torch.manual_seed(0)
    first = cfg.build("model")
    torch.manual_seed(0)
    second = cfg.build("model")
    assert first is not second
    for (k1, v1), (k2, v2) in zip(first.state_dict().items(), second.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    with torch.no_grad():
        next(first.parameters()).add_(1.0)
    assert not torch.equal(next(first.parameters()), next(second.parameters()))
    assert YAMLConfig(R18).yaml_cfg == cfg.yaml_cfg


def test_misspelled_argument_names_key_path():
    cfg = YAMLConfig(R18, RTDETRTransformer={"num_querys": 100})
    with pytest.raises(ConfigError, match=r"RTDETRTransformer\.num_querys.*did you mean 'num_queries'"):
        cfg.build("model")


def test_unknown_type_lists_close_names():
    cfg = YAMLConfig(R18, RTDETR={"encoder": "HybridEncodr"})
    with pytest.raises(ConfigError, match=r"RTDETR.encoder.*did you mean 'HybridEncoder'"):
        cfg.build("model")


def test_misspelled_top_level_section_is_an_error():
    with pytest.raises(ConfigError, match="HybridEncodr.*did you mean 'HybridEncoder'"):
        YAMLConfig(R18, HybridEncodr={"hidden_dim": 128})


def test_deprecated_epoches_alias(tmp_path, caplog):
    cfg_file = tmp_path / "cfg.yml"
    cfg_file.write_text(f"__include__: ['{R18.as_posix()}']\nepoches: 3\n")
    with caplog.at_level("WARNING"):
        cfg = YAMLConfig(cfg_file)
    assert cfg.epochs == 3 and "epoches" not in cfg.yaml_cfg
    assert any("deprecated" in r.message for r in caplog.records)


def test_a_moved_key_names_its_replacement(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'cam_logging' is no longer read: .*hooks: \[CamLoggingHook\]"):
        YAMLConfig(R18, output_dir=str(tmp_path), cam_logging={"every_n_epochs": 2})


def test_a_classifier_config_declares_no_postprocessor() -> None:
    """Nothing runs a classifier's postprocessor: the solver evaluates top-k from the logits."""
    cfg = YAMLConfig(CONFIGS / "spartan" / "spartan_t_shapes_cls.yml")
    assert cfg.task == "classification" and cfg.get("postprocessor") is None
