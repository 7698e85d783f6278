from __future__ import annotations

import inspect
import io
import math
import warnings
from typing import Any

import pytest
import torch
from torch import nn

from rtdetr_spartan.core import lookup
from rtdetr_spartan.zoo.rtdetr.hybrid_encoder import HybridEncoder, RepVggBlock, build_2d_sincos_position_embedding
from tests.parity_utils import state_dict_spec, summary_problems
from tests.rtdetr_reference_utils import (
    ENCODER_COMMON,
    PARITY_MODELS,
    REFERENCE_CONFIGS,
    build_backbone,
    reference_backbone_run,
    sub_spec,
    sub_weights,
)


def build_encoder(name: str, **overrides: Any) -> HybridEncoder:
    return HybridEncoder(**{**ENCODER_COMMON, **REFERENCE_CONFIGS[name][1], **overrides})


def tiny_encoder() -> HybridEncoder:
    torch.manual_seed(0)
    return HybridEncoder(
        in_channels=(16, 32, 64), hidden_dim=32, nhead=4, dim_feedforward=64, eval_spatial_size=(256, 256)
    )


def r18_features(batch: int, height: int, width: int) -> list[torch.Tensor]:
    """Random features shaped like PResNet-18's for a height x width image."""
    gen = torch.Generator().manual_seed(height * 10_000 + width)
    return [torch.randn(batch, c, height // s, width // s, generator=gen) for c, s in zip((128, 256, 512), (8, 16, 32))]


@pytest.mark.parametrize("name", list(REFERENCE_CONFIGS))
def test_state_dict_matches_reference_spec(name: str) -> None:
    assert state_dict_spec(build_encoder(name)) == sub_spec(name, "encoder.")


@pytest.mark.parametrize("name", PARITY_MODELS)
def test_parity_with_reference_outputs(name: str) -> None:
    # The backbone outputs themselves are checked against the fixture in tests/nn/test_presnet.py.
    expected, feats = reference_backbone_run(name)
    encoder = build_encoder(name)
    encoder.load_state_dict(sub_weights(name, "encoder."), strict=True)
    with torch.no_grad():
        outs = encoder.eval()(list(feats))
    assert len(outs) == len(expected["encoder"])
    for level, (summary, out) in enumerate(zip(expected["encoder"], outs)):
        assert summary_problems(summary, out) == [], f"encoder level {level}"


def test_position_embedding_layout() -> None:
    # embed_dim 4 -> one frequency (1.0): channels are sin(x), cos(x), sin(y), cos(y), and the
    # reference's grid gives token n the coordinates x = n // h, y = n % h.
    w, h = 3, 2
    embed = build_2d_sincos_position_embedding(w, h, embed_dim=4)
    assert embed.shape == (1, w * h, 4) and embed.dtype == torch.float32
    for n in range(w * h):
        x, y = n // h, n % h
        want = torch.tensor([math.sin(x), math.cos(x), math.sin(y), math.cos(y)])
        torch.testing.assert_close(embed[0, n], want)
    with pytest.raises(ValueError, match="divisible by 4"):
        build_2d_sincos_position_embedding(2, 2, embed_dim=6)


def test_cached_position_embedding_is_a_non_persistent_buffer() -> None:
    encoder = build_encoder("rtdetr_r18vd").eval()
    assert "pos_embed2" in dict(encoder.named_buffers())
    assert not any("pos_embed" in k for k in encoder.state_dict())
    torch.testing.assert_close(encoder.pos_embed2, build_2d_sincos_position_embedding(20, 20, 256, 10000))
    assert encoder._position_embedding(2, 20, 20, torch.device("cpu")) is encoder.pos_embed2
    assert encoder._position_embedding(2, 10, 20, torch.device("cpu")).shape == (1, 200, 256)
    assert build_encoder("rtdetr_r18vd", eval_spatial_size=None)._cached_hw == {}


def test_eval_at_other_size_matches_uncached_encoder() -> None:
    # eval_spatial_size is 640x640; a 256x320 input needs a (non-square) embedding of its own.
    cached = build_encoder("rtdetr_r18vd").eval()
    uncached = build_encoder("rtdetr_r18vd", eval_spatial_size=None).eval()
    uncached.load_state_dict(cached.state_dict())
    feats = r18_features(1, 256, 320)
    with torch.no_grad():
        outs, ref = cached(feats), uncached(feats)
    assert [tuple(o.shape[-2:]) for o in outs] == [(32, 40), (16, 20), (8, 10)]
    for out, want in zip(outs, ref):
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)


def test_odd_input_size_is_supported() -> None:
    # 500 px: PResNet's stride-8/16/32 maps are 63/32/16, not exact doublings.
    encoder = tiny_encoder().eval()
    feats = [torch.randn(1, c, n, n) for c, n in zip((16, 32, 64), (63, 32, 16))]
    with torch.no_grad():
        assert [o.shape[-1] for o in encoder(feats)] == [63, 32, 16]


@pytest.mark.parametrize("size", [320, 416])
def test_training_step_is_finite(size: int) -> None:
    backbone = build_backbone("rtdetr_r18vd").train()
    encoder = build_encoder("rtdetr_r18vd").train()
    outs = encoder(backbone(torch.rand(1, 3, size, size)))
    assert [tuple(o.shape) for o in outs] == [(1, 256, size // s, size // s) for s in (8, 16, 32)]
    sum(o.square().mean() for o in outs).backward()
    assert all(torch.isfinite(o).all() for o in outs)
    for module in (backbone, encoder):
        for pname, p in module.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), pname


def _randomize_norms(module: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.uniform_(-0.3, 0.3, generator=gen)
                m.running_mean.uniform_(-0.3, 0.3, generator=gen)
                m.running_var.uniform_(0.5, 1.5, generator=gen)


def test_repvgg_reparameterize_is_equivalent() -> None:
    block = RepVggBlock(8, 12, act="silu")
    _randomize_norms(block, seed=0)
    block.eval()
    x = torch.randn(2, 8, 11, 13)
    with torch.no_grad():
        before = block(x)
        block.reparameterize()
        after = block(x)
    assert list(block.state_dict()) == ["conv.weight", "conv.bias"]
    assert (after - before).abs().max().item() <= 1e-4
    block.reparameterize()  # second call keeps the fused conv
    with torch.no_grad():
        torch.testing.assert_close(block(x), after, rtol=0, atol=0)


def test_encoder_with_fused_blocks_is_equivalent() -> None:
    encoder = build_encoder("rtdetr_r18vd")
    encoder.load_state_dict(sub_weights("rtdetr_r18vd", "encoder."), strict=True)
    encoder.eval()
    feats = r18_features(1, 128, 128)
    with torch.no_grad():
        before = encoder(feats)
        for module in encoder.modules():
            if isinstance(module, RepVggBlock):
                module.reparameterize()
        after = encoder(feats)
    for a, b in zip(after, before):
        assert ((a - b).abs() / (1 + b.abs())).max().item() <= 1e-4


def test_wrong_number_of_levels_is_rejected() -> None:
    with pytest.raises(ValueError, match="expects 3 feature maps"):
        build_encoder("rtdetr_r18vd")(r18_features(1, 64, 64)[:2])


def test_onnx_export_has_dynamic_height_and_width() -> None:
    ort = pytest.importorskip("onnxruntime")
    encoder = tiny_encoder().eval()

    def feats(height: int, width: int) -> list[torch.Tensor]:
        return [torch.rand(1, c, height // s, width // s) for c, s in zip((16, 32, 64), (8, 16, 32))]

    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, f0: torch.Tensor, f1: torch.Tensor, f2: torch.Tensor) -> tuple:
            return tuple(self.encoder([f0, f1, f2]))

    names = ["f0", "f1", "f2"]
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Wrapper().eval(),
            tuple(feats(256, 256)),
            buffer,
            dynamo=False,
            input_names=names,
            opset_version=17,
            dynamic_axes={n: {2: f"h{n}", 3: f"w{n}"} for n in names},
        )
    session = ort.InferenceSession(buffer.getvalue())
    for height, width in ((256, 256), (320, 192)):
        inputs = feats(height, width)
        with torch.no_grad():
            want = encoder(inputs)
        got = session.run(None, {n: t.numpy() for n, t in zip(names, inputs)})
        for g, w in zip(got, want):
            torch.testing.assert_close(torch.from_numpy(g), w, rtol=1e-4, atol=1e-4)


def test_registered_with_reference_arguments() -> None:
    assert lookup("HybridEncoder") is HybridEncoder
    assert HybridEncoder.__share__ == ["eval_spatial_size"]
    assert list(inspect.signature(HybridEncoder).parameters) == [
        "in_channels",
        "feat_strides",
        "hidden_dim",
        "nhead",
        "dim_feedforward",
        "dropout",
        "enc_act",
        "use_encoder_idx",
        "num_encoder_layers",
        "pe_temperature",
        "expansion",
        "depth_mult",
        "act",
        "eval_spatial_size",
    ]
