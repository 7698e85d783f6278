"""backward_and_step (plain, clipped, loss-scaled), the finite-loss check and the test-only fault point."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from rtdetr_spartan.solver.steps import FAULT_ENV, FAULT_EXIT_CODE, backward_and_step, check_finite_loss


def _model() -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(4, 2)


def _loss(model: nn.Module, scale: float = 1.0) -> torch.Tensor:
    x = torch.arange(8.0).reshape(2, 4)
    return scale * model(x).pow(2).sum()


def _manual_sgd(model: nn.Module, lr: float, max_norm: float, scale: float = 1.0) -> dict[str, torch.Tensor]:
    """The expected weights after one SGD step, computed by hand from torch.autograd.grad."""
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(_loss(model, scale), list(params.values()))
    norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
    factor = min(1.0, max_norm / (float(norm) + 1e-6)) if max_norm > 0 else 1.0
    return {n: (p - lr * factor * g).detach() for (n, p), g in zip(params.items(), grads)}


@pytest.mark.parametrize("max_norm", [0.0, 1.0])
def test_one_sgd_step_with_and_without_clipping(max_norm: float) -> None:
    model = _model()
    expected = _manual_sgd(model, lr=0.1, max_norm=max_norm)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for p in model.parameters():  # stale gradients from an earlier step must not leak in
        p.grad = torch.full_like(p, 100.0)
    backward_and_step(_loss(model), model, optimizer, None, max_norm)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.detach(), expected[name])
    if max_norm > 0:  # the clipping really bit: the raw gradient norm is far above 1
        fresh = _model()
        grads = torch.autograd.grad(_loss(fresh), list(fresh.parameters()))
        assert float(torch.cat([g.flatten() for g in grads]).norm()) > 10 * max_norm


def test_loss_scaling_clips_the_unscaled_gradients() -> None:
    """With a GradScaler the step equals the unscaled one: clipping sees the true gradients."""
    model = _model()
    expected = _manual_sgd(model, lr=0.1, max_norm=1.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    backward_and_step(_loss(model), model, optimizer, scaler, 1.0)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.detach(), expected[name])
    assert scaler.get_scale() == 2.0**10  # finite gradients: the scale is kept (growth after 2000 steps)


def test_loss_scaling_skips_a_step_with_infinite_gradients() -> None:
    model = _model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    backward_and_step(_loss(model, scale=float("inf")), model, optimizer, scaler, 0.0)
    assert all(torch.equal(p.detach(), before[n]) for n, p in model.named_parameters())
    assert scaler.get_scale() == 2.0**9  # backed off


_FAULT_SCRIPT = """
from rtdetr_spartan.solver.steps import fault_point
fault_point(2, 2)
print("passed 2:2", flush=True)
fault_point(2, 3)
print("passed 2:3", flush=True)
"""


@pytest.mark.slow  # two fresh Python processes
@pytest.mark.parametrize(("restart", "exits"), [("0", True), ("1", False)])
def test_fault_point_exits_at_its_iteration_on_the_first_attempt_only(restart: str, exits: bool) -> None:
    env = {**os.environ, FAULT_ENV: "0:2:3", "TORCHELASTIC_RESTART_COUNT": restart, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", _FAULT_SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert "passed 2:2" in done.stdout
    if exits:
        assert done.returncode == FAULT_EXIT_CODE and "passed 2:3" not in done.stdout
        assert f"{FAULT_ENV}: rank 0 exits at epoch 2, iteration 3" in done.stderr
    else:
        assert done.returncode == 0 and "passed 2:3" in done.stdout, done.stderr


def test_finite_loss_returns_the_total() -> None:
    losses = {"loss_vfl": torch.tensor(0.5), "loss_bbox": torch.tensor(1.25)}
    assert check_finite_loss(losses, losses) == pytest.approx(1.75)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_loss_names_the_losses(bad: float) -> None:
    losses = {"loss_vfl": torch.tensor(0.5), "loss_giou_dn_1": torch.tensor(bad)}
    with pytest.raises(
        FloatingPointError, match=r"non-finite loss (nan|inf); losses of rank 0: .*'loss_giou_dn_1': (nan|inf)"
    ):
        check_finite_loss(losses, losses)
