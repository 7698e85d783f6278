"""The one optimizer path: the reference R18 regex groups, and group-spec errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from rtdetr_spartan.core import ConfigError, YAMLConfig
from rtdetr_spartan.optim.param_groups import param_groups_from_config

R18 = Path(__file__).resolve().parents[2] / "configs" / "rtdetr" / "rtdetr_r18vd_6x_coco.yml"


def test_reference_regex_groups_build_the_reference_optimizer() -> None:
    cfg = YAMLConfig(R18)
    model = cfg.build("model")
    groups = param_groups_from_config(cfg.yaml_cfg["optimizer"], model, cfg.yaml_cfg)
    optimizer = cfg.build("optimizer", params=groups)
    names = {id(p): n for n, p in model.named_parameters()}
    assert isinstance(optimizer, torch.optim.AdamW) and len(optimizer.param_groups) == 4
    backbone_norm, backbone_rest, head_no_decay, head_rest = optimizer.param_groups
    assert all("backbone" in names[id(p)] and "norm" in names[id(p)] for p in backbone_norm["params"])
    assert all("backbone" in names[id(p)] and "norm" not in names[id(p)] for p in backbone_rest["params"])
    assert all(("norm" in names[id(p)] or "bias" in names[id(p)]) for p in head_no_decay["params"])
    assert [(g["lr"], g["weight_decay"]) for g in optimizer.param_groups] == [
        (1e-5, 0.0),
        (1e-5, 1e-4),
        (1e-4, 0.0),
        (1e-4, 1e-4),
    ]
    assert sum(len(g["params"]) for g in groups) == sum(1 for p in model.parameters() if p.requires_grad)
    scheduler = cfg.build("lr_scheduler", optimizer=optimizer)
    assert isinstance(scheduler, torch.optim.lr_scheduler.MultiStepLR)


def test_overlapping_and_malformed_groups_are_config_errors() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))
    with pytest.raises(
        ConfigError, match=r"parameter '0.weight' is selected by optimizer.params pattern .* and again by 'weight'"
    ):
        param_groups_from_config({"params": [{"params": r"0\."}, {"params": "weight"}]}, model)
    with pytest.raises(ConfigError, match=r"optimizer.params\[0\] needs a 'params' regex"):
        param_groups_from_config({"params": [{"lr": 1.0}]}, model)
    with pytest.raises(ConfigError, match="must be a list of regex groups or a registered group function"):
        param_groups_from_config({"params": 3}, model)
    (everything,) = param_groups_from_config({}, model)
    assert len(everything["params"]) == 4
