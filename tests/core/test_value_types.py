"""Typed overrides: top-level settings and constructor arguments checked against their types."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal, Sequence

import pytest
import torch

from rtdetr_spartan.core import ConfigError, YAMLConfig, parse_overrides
from rtdetr_spartan.core.value_types import ValueTypeError, coerce
from tools.train import main as train_main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
R18 = CONFIGS / "rtdetr" / "rtdetr_r18vd_6x_coco.yml"
SHAPES = CONFIGS / "rtdetr" / "rtdetr_spartan_t_shapes.yml"


def _config(*overrides: str) -> YAMLConfig:
    return YAMLConfig(R18, **parse_overrides(overrides))


@pytest.mark.parametrize(
    "override, message",
    [
        ("epochs=1.5", r"top-level setting epochs: expected int, got 1\.5 \(float\)"),
        ("epochs=abc", r"top-level setting epochs: expected int, got 'abc' \(str\)"),
        ("num_classes=abc", r"top-level setting num_classes: expected int, got 'abc' \(str\)"),
        ("clip_max_norm=high", r"clip_max_norm: expected float, got 'high'"),
        ("checkpoint_freq=[1]", r"checkpoint_freq: expected int, got \[1\] \(list\)"),
        ("use_ema=maybe", r"use_ema: expected bool, got 'maybe'"),
        ("eval_spatial_size=[640]", r"eval_spatial_size: expected tuple\[int, int\] \| None, got \[640\]"),
        ("epochs=0", r"epochs must be >= 1, got 0"),
    ],
)
def test_wrong_top_level_setting_is_named(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        _config(override)
    assert str(R18) in str(info.value)


def test_train_tool_stops_before_training_on_a_wrong_override(tmp_path: Path) -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    for override, key in (("epochs=1.5", "epochs"), ("num_classes=abc", "num_classes")):
        with pytest.raises(ConfigError, match=f"setting {key}: expected int"):
            train_main(["-c", str(SHAPES), "-u", override, f"output_dir={tmp_path}"])
    # the tool closes the console logging it set up, however the run ends
    assert root.handlers == handlers and root.level == level
    assert not (tmp_path / "train.log").exists()


def test_valid_settings_are_converted_losslessly() -> None:
    cfg = _config("epochs=12.0", "clip_max_norm='1e-1'", "seed=null", "eval_spatial_size=[320, 320]")
    assert cfg.yaml_cfg["epochs"] == 12 and isinstance(cfg.yaml_cfg["epochs"], int)
    assert cfg.yaml_cfg["clip_max_norm"] == 0.1 and cfg.yaml_cfg["seed"] is None


def test_wrong_constructor_argument_names_key_path_value_and_type() -> None:
    with pytest.raises(
        ConfigError, match=r"optimizer\.lr: expected float \| Tensor, got 'abc' \(str\), for AdamW\(lr\)"
    ):
        _config("optimizer.lr=abc").build("optimizer", params=[torch.zeros(1, requires_grad=True)])
    with pytest.raises(ConfigError, match=r"train_dataloader\.batch_size: expected int \| None, got 2\.5"):
        _config("train_dataloader.batch_size=2.5").build("train_dataloader")  # annotations partly unresolvable
    with pytest.raises(ConfigError, match=r"RTDETRTransformer\.num_queries .*expected int, got 'many'"):
        _config("RTDETRTransformer.num_queries=many").build("model")
    with pytest.raises(
        ConfigError,
        match=r"HybridEncoder\.in_channels .*expected Sequence\[int\], got \[64, 'x', 256\] \(list\) \(item 1: expected int",
    ):
        _config("HybridEncoder.in_channels=[64,x,256]").build("model")


def test_number_given_as_yaml_string_still_works() -> None:
    """YAML reads ``1e-4`` (no dot) as a string; a float argument takes it as the number."""
    cfg = _config("optimizer.lr=1e-4", "RTDETRTransformer.num_queries='100'")
    optimizer = cfg.build("optimizer", params=[torch.zeros(1, requires_grad=True)])
    assert all(isinstance(g["lr"], float) for g in optimizer.param_groups)
    assert optimizer.defaults["lr"] == pytest.approx(1e-4)
    assert cfg.build("model").decoder.num_queries == 100


def test_coerce_rules() -> None:
    assert coerce("2e-3", float) == 2e-3 and coerce(3, float) == 3 and coerce(4.0, int) == 4
    assert coerce(None, int | None) is None and coerce([1, "2"], list[int]) == [1, 2]
    assert coerce((1, 2), tuple[int, ...]) == (1, 2) and coerce("a", Literal["a", "b"]) == "a"
    assert coerce(object, type) is object  # plain classes: isinstance
    for value, hint in (
        (True, int),
        (1, bool),
        (1.5, int),
        ("x", float),
        (1, str),
        ("ab", Sequence[int]),
        ([1, 2, 3], tuple[int, int]),
        ("c", Literal["a", "b"]),
        (None, float),
    ):
        with pytest.raises(ValueTypeError, match="expected"):
            coerce(value, hint)
