from __future__ import annotations

import pytest
import torch
from torch import nn

from rtdetr_spartan.core import ConfigError
from rtdetr_spartan.nn.backbones.spartan import SpaRTANClassifier
from rtdetr_spartan.optim.no_decay import is_no_decay, no_weight_decay_groups
from rtdetr_spartan.optim.param_groups import param_groups_from_config


class Block(nn.Module):
    """Parameter kinds of SpaRTAN: conv + BN, ``gamma`` (4-D), a 5-D complex weight, a layer scale,
    a LayerNorm named ``norm_1``, a 1-D non-bias weight, a scalar, and a frozen weight."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.gamma = nn.Parameter(torch.ones(1, 8, 1, 1))
        self.complex = nn.Parameter(torch.ones(1, 1, 1, 8, 2))
        self.scale_1 = nn.Parameter(torch.ones(1, 8, 1, 1))  # layer scale: decayed, as the reference
        self.norm_1 = nn.LayerNorm(8)
        self.scale = nn.Parameter(torch.ones(8))
        self.temperature = nn.Parameter(torch.tensor(1.0))
        self.linear = nn.Linear(8, 4)
        self.frozen = nn.Parameter(torch.ones(4, 4), requires_grad=False)


EXPECTED_NO_DECAY = {
    "conv.bias",
    "bn.weight",
    "bn.bias",
    "gamma",
    "norm_1.weight",
    "norm_1.bias",
    "scale",
    "temperature",
    "linear.bias",
}
EXPECTED_DECAY = {"conv.weight", "complex", "scale_1", "linear.weight"}


def test_groups_split_exactly_by_rule() -> None:
    decay, no_decay = no_weight_decay_groups(Block())
    assert set(decay["names"]) == EXPECTED_DECAY
    assert set(no_decay["names"]) == EXPECTED_NO_DECAY
    assert no_decay["weight_decay"] == 0.0 and "weight_decay" not in decay
    model = Block()
    by_id = {id(p): n for n, p in model.named_parameters()}
    groups = no_weight_decay_groups(model)
    assert [by_id[id(p)] for p in groups[1]["params"]] == groups[1]["names"]


def test_skip_names_configurable_and_frozen_excluded() -> None:
    groups = no_weight_decay_groups(Block(), skip_names=())
    names = [set(g["names"]) for g in groups]
    assert "gamma" in names[0] and "norm_1.weight" in names[1]  # 1-D still exempt
    assert all("frozen" not in n for n in names)
    assert is_no_decay("layers.0.smixer.gamma", torch.zeros(2, 2))
    assert not is_no_decay("layers.0.cmixer.complex", torch.zeros(1, 1, 1, 4, 2))


def test_selectable_from_config_and_used_by_adamw() -> None:
    model = Block()
    cfg = {
        "optimizer": {"type": "AdamW", "params": {"type": "no_weight_decay_groups", "skip_names": ["norm", "gamma"]}}
    }
    groups = param_groups_from_config(cfg["optimizer"], model, cfg)
    opt = torch.optim.AdamW(groups, lr=1e-3, weight_decay=0.03)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.03, 0.0]
    assert set(opt.param_groups[1]["names"]) == EXPECTED_NO_DECAY
    by_name = param_groups_from_config({"params": "no_weight_decay_groups"}, model)
    assert [set(g["names"]) for g in by_name] == [EXPECTED_DECAY, EXPECTED_NO_DECAY]
    regex = param_groups_from_config({"params": [{"params": "norm", "weight_decay": 0.0}]}, model)
    assert len(regex[0]["params"]) == 2 and len(regex) == 2


def test_unknown_group_function_names_key() -> None:
    with pytest.raises(ConfigError, match="optimizer.params"):
        param_groups_from_config({"params": "no_decay_typo"}, Block())


def test_spartan_classifier_groups_follow_the_reference_rule() -> None:
    model = SpaRTANClassifier(num_classes=10)
    decay, no_decay = no_weight_decay_groups(model)
    params = dict(model.named_parameters())
    assert len(decay["names"]) + len(no_decay["names"]) == len(params)
    assert all(params[n].ndim > 1 and "norm" not in n and "gamma" not in n for n in decay["names"])
    assert all(params[n].ndim <= 1 or n.endswith("bias") or "norm" in n or "gamma" in n for n in no_decay["names"])
    assert {n.rsplit(".", 1)[-1] for n in decay["names"]} >= {"complex", "scale_1", "scale_2", "weight"}
    assert any(n.endswith("smixer.gamma") for n in no_decay["names"])
