"""The optimizer path's implementation default: fused kernels unless the config chooses."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from rtdetr_spartan.core import YAMLConfig
from rtdetr_spartan.solver.optimization import build_optimizer

R18 = Path(__file__).resolve().parents[2] / "configs" / "rtdetr" / "rtdetr_r18vd_6x_coco.yml"


def _optimizer(overrides: dict[str, object]) -> torch.optim.Optimizer:
    cfg = YAMLConfig(R18, HybridEncoder={"num_encoder_layers": 0})
    cfg.yaml_cfg["optimizer"].update(overrides)
    return build_optimizer(cfg, cfg.build("model"), DataLoader([0], batch_size=1))


def test_fused_by_default_and_steps_like_the_loop() -> None:
    optimizer = _optimizer({})
    assert optimizer.defaults["fused"] is True and not optimizer.defaults["foreach"]
    assert [g["lr"] for g in optimizer.param_groups] == [1e-5, 1e-5, 1e-4, 1e-4]  # groups intact
    # one fused step equals torch's loop on the same parameters and gradients
    torch.manual_seed(0)
    params = [torch.randn(5, 3), torch.randn(7)]
    grads = [torch.randn_like(p) for p in params]
    results = []
    for fused in (True, False):
        copies = [p.clone().requires_grad_(True) for p in params]
        opt = torch.optim.AdamW(copies, lr=1e-2, weight_decay=1e-2, fused=fused, foreach=False if not fused else None)
        for copy, grad in zip(copies, grads):
            copy.grad = grad.clone()
        opt.step()
        results.append([c.detach() for c in copies])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("choice", [{"fused": False}, {"foreach": True}])
def test_the_configs_choice_wins(choice: dict[str, bool]) -> None:
    optimizer = _optimizer(choice)
    assert not optimizer.defaults["fused"]
    assert optimizer.defaults["foreach"] == choice.get("foreach")
