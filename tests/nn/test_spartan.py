"""SpaRTAN classifier / backbone (the canonical form): reference state dict and outputs, the
real-arithmetic rotation, the mixers against a direct (complex dtype, NCHW, module-by-module)
formulation of the reference, training, autocast, FLOPs, checkpoints and freezing. The
inference and export forms: test_spartan_conversions.py; variants: test_spartan_variants.py."""

from __future__ import annotations

import copy
import functools
import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from rtdetr_spartan.core import lookup
from rtdetr_spartan.nn.backbones.spartan import SpaRTAN, SpaRTANClassifier
from rtdetr_spartan.nn.backbones.spartan_layers import (
    Block,
    CMixer,
    DropPath,
    GatedProjection,
    SMixer,
    fold_rotation,
    gated_projection,
    pair_matrix,
    peak_mix,
    rotate_pairs,
)
from rtdetr_spartan.nn.common import FrozenBatchNorm2d
from rtdetr_spartan.testing.spartan_reference import cmixer_forward, complex_rotate, smixer_forward
from tests.nn.spartan_helpers import randomize
from tests.parity_utils import (
    load_expected,
    load_spec,
    state_dict_spec,
    summary_problems,
    synthetic_scenes,
    synthetic_state_dict,
)

# ---- the rotation ---------------------------------------------------------------------------


def test_real_rotations_equal_complex_multiplication() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 7, 24, generator=gen, dtype=torch.float64)
    rotation = torch.randn(12, 2, generator=gen, dtype=torch.float64)
    expected = complex_rotate(x, rotation)
    torch.testing.assert_close(rotate_pairs(x, rotation), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("per_group", [2, 4])
def test_rotation_folds_into_grouped_conv(per_group: int) -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 16, 9, 9, generator=gen, dtype=torch.float64)
    weight = torch.randn(16, per_group, 3, 3, generator=gen, dtype=torch.float64)
    rotation = torch.randn(8, 2, generator=gen, dtype=torch.float64)
    groups = 16 // per_group
    rotated = rotate_pairs(x.permute(0, 2, 3, 1), rotation).permute(0, 3, 1, 2)
    folded = F.conv2d(x, fold_rotation(weight, rotation), padding=1, groups=groups)
    torch.testing.assert_close(folded, F.conv2d(rotated, weight, padding=1, groups=groups))


def test_pair_matrix_is_the_rotation_of_unit_pairs() -> None:
    gen = torch.Generator().manual_seed(3)
    rotation = torch.randn(5, 2, generator=gen, dtype=torch.float64)
    x = torch.randn(4, 10, generator=gen, dtype=torch.float64)
    by_matrix = torch.einsum("kji,bki->bkj", pair_matrix(rotation), x.view(4, 5, 2)).flatten(1)
    torch.testing.assert_close(by_matrix, complex_rotate(x, rotation), rtol=1e-12, atol=1e-12)


def test_peak_mix_gradients() -> None:
    """The hand-written backward of the CMixer's per-pixel part against finite differences."""
    gen = torch.Generator().manual_seed(2)
    t = torch.randn(2, 3, 4, 6, generator=gen, dtype=torch.float64)
    theta, w = (torch.randn(2, 3, 4, 8, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(2))
    rotation = torch.randn(4, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(peak_mix, (t, theta, w))
    assert torch.autograd.gradcheck(peak_mix, (t, theta, w, rotation))
    with torch.no_grad():
        rotated = rotate_pairs(peak_mix(t, theta, w), rotation)
        torch.testing.assert_close(peak_mix(t, theta, w, rotation), rotated)


# ---- every path of the mixers against the reference formulation -----------------------------

MODES = ["train", "eval"]


@pytest.mark.parametrize(
    ("grouped", "ratio"),
    [(False, 4), (True, 2), (True, 3), (True, 4)],
    ids=["depthwise", "pair_per_group", "odd_groups", "even_groups"],
)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("size", [(13, 11), (3, 2)], ids=["gated_weights", "gated_activations"])
def test_cmixer_matches_reference(mode: str, grouped: bool, ratio: int, size: tuple[int, int]) -> None:
    mixer = randomize(CMixer(16, ratio, grouped), seed=2)
    reference = copy.deepcopy(mixer)
    mixer.train(mode == "train")
    reference.train(mode == "train")
    x = torch.randn(2, 16, *size, generator=torch.Generator().manual_seed(3))
    x = x.contiguous(memory_format=torch.channels_last)
    scale = torch.rand(1, 16, 1, 1) + 0.5
    got = mixer(x, scale)
    torch.testing.assert_close(got, scale * cmixer_forward(reference, x), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(mixer.state_dict(), reference.state_dict())  # BN statistics
    assert got.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("grouped", [False, True], ids=["dense", "depthwise"])
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("size", [(10, 12), (4, 3)], ids=["gated_weights", "gated_activations"])
def test_smixer_matches_reference(mode: str, grouped: bool, size: tuple[int, int]) -> None:
    mixer = randomize(SMixer(16, grouped), seed=4)
    reference = copy.deepcopy(mixer)
    mixer.train(mode == "train")
    reference.train(mode == "train")
    x = torch.randn(2, 16, *size, generator=torch.Generator().manual_seed(5))
    scale = torch.rand(1, 16, 1, 1) + 0.5
    got = mixer(x.contiguous(memory_format=torch.channels_last), scale)
    torch.testing.assert_close(got, scale * smixer_forward(reference, x), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(mixer.state_dict(), reference.state_dict())


@pytest.mark.parametrize("size", [(5, 4), (2, 3)], ids=["gated_weights", "gated_activations"])
def test_projection_folds_gate_layer_scale_and_drop_path(size: tuple[int, int]) -> None:
    """``GatedProjection`` against the plain composition, values and gradients (float64)."""
    gen = torch.Generator().manual_seed(6)
    proj = GatedProjection(6, 5).double()
    t = torch.randn(3, *size, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    gate = torch.rand(3, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    layer_scale = torch.rand(1, 5, 1, 1, generator=gen, dtype=torch.float64, requires_grad=True)
    sample_scale = torch.tensor([0.0, 1.25, 1.25], dtype=torch.float64)
    got = proj(t, gate, layer_scale, sample_scale)
    conv = F.conv2d((t * gate[:, None, None]).permute(0, 3, 1, 2), proj.weight, proj.bias)
    plain = conv * layer_scale * sample_scale[:, None, None, None]
    torch.testing.assert_close(got, plain)
    assert got.is_contiguous(memory_format=torch.channels_last)
    weight, bias = proj.weight.detach().flatten(1), proj.bias.detach()
    assert torch.autograd.gradcheck(gated_projection, (t, weight.requires_grad_(True), bias, gate))
    assert torch.autograd.gradcheck(
        lambda t, gate, layer_scale: proj(t, gate, layer_scale, sample_scale), (t, gate, layer_scale)
    )


def test_block_drop_path_is_a_per_sample_factor_on_each_branch() -> None:
    """In training a block's output equals x + f1 * scale_1 * SMixer(GN(x)), then the same with
    f2 and the CMixer, for the per-sample factors its two DropPaths draw (0 or 1 / keep)."""
    block = randomize(Block(16, 2, True, drop_path=0.5), seed=7).train()
    x = torch.randn(8, 16, 6, 5, generator=torch.Generator().manual_seed(8)).contiguous(
        memory_format=torch.channels_last
    )
    torch.manual_seed(9)
    got = block(x)
    torch.manual_seed(9)
    f1 = block.drop_path_1.factors(8, x)
    assert f1 is not None and set(f1.tolist()) == {0.0, 2.0}  # both outcomes occur for this seed
    y = x + f1[:, None, None, None] * block.smixer(block.norm_1(x), block.scale_1)
    f2 = block.drop_path_2.factors(8, x)
    assert f2 is not None
    expected = y + f2[:, None, None, None] * block.cmixer(block.norm_2(y), block.scale_2)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert block.eval().drop_path_1.factors(8, x) is None


# ---- reference state dicts and outputs --------------------------------------------------------


def test_classifier_state_dict_equals_reference() -> None:
    entries, params = load_spec("spartan_t_cls")
    model = SpaRTANClassifier(num_classes=1000)
    assert state_dict_spec(model) == entries
    assert sum(p.numel() for p in model.parameters()) == params == 3_820_296


def test_backbone_state_dict_equals_detector_spec() -> None:
    entries, _ = load_spec("rtdetr_spartan_t")
    expected = [(k.removeprefix("backbone."), s, d) for k, s, d in entries if k.startswith("backbone.")]
    backbone = SpaRTAN(return_idx=(1, 2, 3))
    assert state_dict_spec(backbone) == expected
    assert backbone.out_channels == [64, 128, 256] and backbone.out_strides == [8, 16, 32]


@functools.lru_cache(maxsize=1)
def _reference_classifier() -> SpaRTANClassifier:
    entries, _ = load_spec("spartan_t_cls")
    model = SpaRTANClassifier()
    model.load_state_dict(synthetic_state_dict(entries, 0), strict=True)
    return model.eval()


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "autograd"])
def test_classifier_reproduces_reference_outputs(grad: bool) -> None:
    model = _reference_classifier()
    expected = load_expected("spartan_t_cls_seed0")
    x = synthetic_scenes(*expected["input_shape"][:1], *expected["input_shape"][2:], seed=0)
    with torch.set_grad_enabled(grad):
        stages = model.forward_stages(x, (1, 2, 3))
        logits = model(x)
    for index, (summary, stage) in enumerate(zip(expected["stages"], stages, strict=True)):
        assert summary_problems(summary, stage) == [], f"stage {index + 2}"
    torch.testing.assert_close(logits, expected["logits"], rtol=0, atol=1e-4)


def test_flops_match_the_paper() -> None:
    model = SpaRTANClassifier().eval()
    with FlopCounterMode(display=False) as counter:
        model(torch.rand(1, 3, 256, 256))
    assert counter.get_total_flops() / 2 == pytest.approx(1.04e9, rel=0.01)


# ---- training, sizes, autocast, layouts -------------------------------------------------------


@pytest.mark.parametrize("size", [64, 96, 160])
def test_forward_backward(size: int) -> None:
    torch.manual_seed(size)
    backbone = SpaRTAN(drop_path_rate=0.2).train()
    feats = backbone(torch.rand(2, 3, size, size))
    assert [tuple(f.shape) for f in feats] == [
        (2, c, size // s, size // s) for c, s in zip(backbone.out_channels, backbone.out_strides)
    ]
    sum(f.square().mean() for f in feats).backward()
    grads = {n: p.grad for n, p in backbone.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    # drop path may skip a whole branch for both images; the stem is always trained
    assert all(grads[n].abs().sum() > 0 for n in grads if n.startswith("conv."))


def test_autocast_bfloat16_on_cpu() -> None:
    model = _reference_classifier()
    x = synthetic_scenes(1, 64, 64, seed=1)
    with torch.no_grad():
        full = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model(x)
    assert half.dtype == torch.bfloat16 and torch.isfinite(half).all()
    assert torch.corrcoef(torch.stack((half.float().flatten(), full.flatten())))[0, 1] > 0.99
    backbone = SpaRTAN().train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats = backbone(x)
    sum(f.float().mean() for f in feats).backward()
    assert all(torch.isfinite(p.grad).all() for p in backbone.parameters() if p.grad is not None)


def test_memory_format_does_not_change_outputs() -> None:
    model = _reference_classifier()
    x = synthetic_scenes(1, 64, 96, seed=2)
    with torch.no_grad():
        nchw = model.forward_stages(x, (0, 1, 2, 3))
        nhwc = model.forward_stages(x.contiguous(memory_format=torch.channels_last), (0, 1, 2, 3))
    for a, b in zip(nchw, nhwc, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert a.is_contiguous(memory_format=torch.channels_last)


def test_rejects_bad_input_and_config() -> None:
    with pytest.raises(ValueError, match="variant='Z' is unknown"):
        SpaRTAN(variant="Z")
    with pytest.raises(ValueError, match="return_idx"):
        SpaRTAN(return_idx=(1, 4))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\], got \(3, 64, 64\)"):
        SpaRTAN()(torch.rand(3, 64, 64))


# ---- checkpoints -------------------------------------------------------------------------------


def _classifier_weights(seed: int) -> dict[str, torch.Tensor]:
    entries, _ = load_spec("spartan_t_cls")
    return synthetic_state_dict(entries, seed)


LAYOUTS = {
    "bare": lambda sd: sd,
    "model": lambda sd: {"model": sd, "epoch": 3},
    "ddp_prefix": lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}},
    "ema_preferred": lambda sd: {"model": _classifier_weights(9), "ema": {"module": sd, "updates": 7}},
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_pretrained_checkpoint_layouts(layout: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    weights = _classifier_weights(1)
    path = tmp_path / "spartan_t.pth"
    torch.save(LAYOUTS[layout](weights), path)
    with caplog.at_level(logging.INFO, logger="rtdetr_spartan.nn.backbones.spartan"):
        backbone = SpaRTAN(pretrained=str(path))
    expected = {k: v for k, v in weights.items() if not k.startswith("linear.")}
    torch.testing.assert_close(backbone.state_dict(), expected, rtol=0, atol=0)
    assert f"loaded {len(expected)} tensors" in caplog.text


def test_pretrained_with_frozen_norm(tmp_path: Path) -> None:
    path = tmp_path / "spartan_t.pth"
    torch.save(_classifier_weights(1), path)
    backbone = SpaRTAN(pretrained=path, freeze_norm=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in backbone.modules())
    frozen = backbone.layers[3].norm
    assert isinstance(frozen, FrozenBatchNorm2d) and frozen.eps == 1e-6
    torch.testing.assert_close(frozen.running_var, _classifier_weights(1)["layers.3.norm.running_var"])


def test_pretrained_shape_mismatch_names_the_tensor(tmp_path: Path) -> None:
    weights = _classifier_weights(1)
    weights["layers.4.cmixer.complex"] = torch.zeros(1, 1, 1, 64, 2)
    path = tmp_path / "other.pth"
    torch.save({"model": weights}, path)
    with pytest.raises(
        ValueError,
        match=r"layers\.4\.cmixer\.complex \(1, 1, 1, 64, 2\) vs model \(1, 1, 1, 128, 2\)",
    ):
        SpaRTAN(pretrained=path)


def test_pretrained_missing_tensors_and_paths(tmp_path: Path) -> None:
    weights = _classifier_weights(1)
    del weights["layers.22.norm_2.bias"]
    path = tmp_path / "partial.pth"
    torch.save(weights, path)
    with pytest.raises(ValueError, match=r"missing in checkpoint: 1 \(layers\.22\.norm_2\.bias\)"):
        SpaRTAN(pretrained=path)
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        SpaRTAN(pretrained=tmp_path / "nowhere.pth")
    with pytest.raises(ValueError, match="never downloaded"):
        SpaRTAN(pretrained=True)


# ---- freezing, registry -----------------------------------------------------------------------


def test_freeze_at_freezes_stem_and_leading_stages() -> None:
    backbone = SpaRTAN(freeze_at=1)
    frozen = {n.split(".")[0] + "." + n.split(".")[1] for n, p in backbone.named_parameters() if not p.requires_grad}
    assert frozen == {"conv.0", "conv.1", "layers.0", "layers.1", "layers.2"}
    assert all(p.requires_grad for p in SpaRTAN(freeze_at=-1).parameters())


def test_registered_under_reference_names() -> None:
    assert lookup("SpaRTAN") is SpaRTAN
    assert lookup("SpaRTANClassifier") is SpaRTANClassifier
    assert SpaRTANClassifier.__share__ == ["num_classes"]


def test_drop_path_drops_whole_samples_and_rescales() -> None:
    drop = DropPath(0.25)
    torch.manual_seed(0)
    factors = drop.train().factors(4000, torch.ones(()))
    assert factors is not None and factors.shape == (4000,)
    assert ((factors == 0) | (factors == 1 / 0.75)).all()
    assert abs((factors > 0).float().mean().item() - 0.75) < 0.03
    assert drop.eval().factors(4000, torch.ones(())) is None
    assert "rate" not in drop.state_dict()  # not a reference tensor
