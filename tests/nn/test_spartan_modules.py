"""SpaRTAN's module tree matches what runs: every module that holds parameters is called in
the forward (so forward hooks, profilers and summaries see it), in the canonical form and in
the inference form; and one walker (``reparameterize_model``) converts SpaRTAN's blocks and
the encoder's RepVGG blocks alike."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rtdetr_spartan.nn.backbones.spartan import SpaRTAN, SpaRTANClassifier
from rtdetr_spartan.nn.backbones.spartan_inference import FusedConvAct, InferenceBlock
from rtdetr_spartan.nn.backbones.spartan_layers import Block, ConvNormAct
from rtdetr_spartan.nn.reparameterize import ExportForm, reparameterize_model
from rtdetr_spartan.zoo.rtdetr.hybrid_encoder import RepVggBlock
from tests.nn.spartan_helpers import randomize

# a non-T variant: odd (3) and even (4) group sizes, one pair per group (2)
VARIANT = {"depths": [1, 1, 1, 1], "widths": [16, 32, 48, 64], "expand_ratios": [3, 2, 3, 4]}


def _silent_modules(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Names of the modules holding parameters (their own or their children's) that one
    forward of ``model`` on ``x`` does not call; the trunk's flat ``layers`` list (the
    reference's layout) is indexed per stage, not called, so it does not count."""
    called: set[str] = set()
    holders = {n: m for n, m in model.named_modules() if n != "layers" and any(True for _ in m.parameters())}
    handles = [m.register_forward_hook(lambda _m, _i, _o, name=name: called.add(name)) for name, m in holders.items()]
    try:
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    return sorted(set(holders) - called)


@pytest.mark.parametrize("variant", ["T", "other"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_every_parameterized_module_is_called(variant: str, mode: str) -> None:
    model = SpaRTANClassifier("T" if variant == "T" else VARIANT, num_classes=5).train(mode == "train")
    holders = [n for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]
    assert len(holders) == (471 if variant == "T" else 4 + 3 * 2 + 4 * 23 + 1)  # e.g. layers.0.cmixer.theta
    x = torch.rand(2, 3, 64, 64)
    assert _silent_modules(model, x) == []
    with torch.no_grad():
        inference = reparameterize_model(model, inplace=False)
        assert _silent_modules(inference, x) == []


def test_one_walker_converts_spartan_and_repvgg_blocks() -> None:
    """SpaRTAN's blocks and conv layers become their inference forms, RepVGG fuses in place,
    unconvertible layers stay, and a second pass changes nothing."""
    repvgg = RepVggBlock(16, 16)
    model = nn.Sequential(
        ConvNormAct(3, 16, 3, padding=1), randomize(Block(16, 2, True, 0.0), seed=0), repvgg, nn.Conv2d(16, 4, 1)
    )
    x = torch.rand(2, 3, 12, 10).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        want = model.eval()(x)
        converted = reparameterize_model(model)
        assert converted is model and model[2] is repvgg and not hasattr(repvgg, "conv1")
        assert [type(m) for m in model] == [FusedConvAct, InferenceBlock, RepVggBlock, nn.Conv2d]
        assert (model(x) - want).abs().max() < 1e-4
        state = {k: v.clone() for k, v in model.state_dict().items()}
        assert reparameterize_model(model) is model
        torch.testing.assert_close(model.state_dict(), state, rtol=0, atol=0)
        export = reparameterize_model(model, export=ExportForm(fixed_shapes=False), inplace=False)
        assert (export(x.contiguous()) - want).abs().max() < 1e-4


def test_block_converts_itself_and_batch_statistics_are_refused() -> None:
    block = Block(16, 2, True, 0.0)
    assert isinstance(reparameterize_model(block, inplace=False), InferenceBlock)
    with pytest.raises(ValueError, match=r"BatchNorm2d\(8\): it normalizes with batch statistics; call model.eval"):
        block.train().reparameterize()
    backbone = SpaRTAN(return_idx=(3,))
    assert not any(isinstance(m, (Block, ConvNormAct)) for m in reparameterize_model(backbone).modules())
