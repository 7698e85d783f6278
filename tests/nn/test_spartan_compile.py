"""Regional compilation of SpaRTAN (``compile_regional`` compiles each ``Block``): compiled
forward and one compiled training step equal eager PyTorch on the CPU."""

from __future__ import annotations

import copy

import pytest
import torch

from rtdetr_spartan.nn.backbones.spartan import SpaRTAN
from rtdetr_spartan.nn.backbones.spartan_inference import InferenceBlock
from rtdetr_spartan.nn.backbones.spartan_layers import Block
from rtdetr_spartan.nn.compile import compile_regional, compile_units
from rtdetr_spartan.nn.reparameterize import reparameterize_model
from tests.nn.spartan_helpers import randomize

# two stages (a depthwise one, a grouped one): each block shape compiles separately, so few shapes
# keep the test short
SMALL = {"depths": [2, 1], "widths": [16, 32], "expand_ratios": [3, 2]}


def test_blocks_are_the_compile_units() -> None:
    backbone = SpaRTAN()
    units = compile_units(backbone)
    assert len(units) == 20 and all(isinstance(u, Block) for u in units)
    assert all(isinstance(u, InferenceBlock) for u in compile_units(reparameterize_model(backbone, inplace=False)))


@pytest.mark.slow
def test_compiled_forward_and_training_step_equal_eager() -> None:
    torch._dynamo.reset()
    eager = randomize(SpaRTAN(SMALL, return_idx=(0, 1), drop_path_rate=0.0), seed=0).train()
    # dynamic=False: every block shape compiles once (automatic dynamic shapes fail in inductor here)
    compiled = compile_regional(copy.deepcopy(eager), dynamic=False)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    losses = []
    for model in (eager, compiled):
        loss = sum(f.square().mean() for f in model(x))
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-4, atol=1e-5)
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters(), strict=True):
        assert p.grad is not None and q.grad is not None, name
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-5, msg=name)
    torch.testing.assert_close(compiled.state_dict(), eager.state_dict())  # BN statistics alike
    eager.eval()
    inference = compile_regional(reparameterize_model(eager, inplace=False), dynamic=False)
    with torch.no_grad():
        for a, b in zip(inference(x), eager(x), strict=True):
            assert (a - b).abs().max() < 1e-4
