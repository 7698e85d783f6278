"""SpaRTAN's conversions through the one walker (``reparameterize_model``): the inference form and
the ONNX export form (``ExportForm``) compute what the canonical model computes, for every conv
grouping (depthwise, one pair per group, odd and even group sizes)."""

from __future__ import annotations

import copy
import io
import warnings

import onnx
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from rtdetr_spartan.nn.backbones import spartan_inference
from rtdetr_spartan.nn.backbones.spartan import SpaRTAN, SpaRTANClassifier
from rtdetr_spartan.nn.backbones.spartan_export import ExportBlock
from rtdetr_spartan.nn.backbones.spartan_inference import InferenceBlock
from rtdetr_spartan.nn.backbones.spartan_layers import Block, ConvNormAct
from rtdetr_spartan.nn.reparameterize import ExportForm, reparameterize_model
from tests.nn.spartan_helpers import randomize
from tests.parity_utils import load_expected, load_spec, synthetic_scenes, synthetic_state_dict

PLANS = pytest.mark.parametrize(
    ("grouped", "ratio"),
    [(False, 4), (True, 2), (True, 3), (True, 4)],
    ids=["depthwise", "pair_per_group", "odd_groups", "even_groups"],
)


def _block(dim: int, ratio: int, grouped: bool, seed: int) -> Block:
    return randomize(Block(dim, ratio, grouped, drop_path=0.1), seed).eval()  # type: ignore[return-value]


def _input(batch: int, dim: int, h: int, w: int, seed: int) -> torch.Tensor:
    x = torch.randn(batch, dim, h, w, generator=torch.Generator().manual_seed(seed))
    return x.contiguous(memory_format=torch.channels_last)


@PLANS
@pytest.mark.parametrize("tiled", [False, True], ids=["whole", "tiled"])
def test_inference_block_matches_canonical(
    grouped: bool, ratio: int, tiled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if tiled:  # tile even small maps, in uneven pieces (rows do not divide the height)
        monkeypatch.setattr(spartan_inference, "TILE_ELEMENTS", 1 << 11)
        monkeypatch.setattr(spartan_inference, "TILE_MIN_ROWS", 3)
    block = _block(16, ratio, grouped, seed=2)
    x = _input(2, 16, 13, 11, seed=3)
    converted = reparameterize_model(block, inplace=False)
    assert isinstance(converted, InferenceBlock)
    assert (converted.cmixer._rows(x) < 13) == tiled
    with torch.no_grad():
        want, got = block(x), converted(x)
    assert (got - want).abs().max() < 1e-4
    assert got.is_contiguous(memory_format=torch.channels_last)


@PLANS
@pytest.mark.parametrize("fixed", [False, True], ids=["dynamic", "fixed_shapes"])
def test_export_block_matches_canonical(grouped: bool, ratio: int, fixed: bool) -> None:
    """Width 10 gives the CMixer's channel spans odd sizes; the input is plain NCHW."""
    for dim in (16, 10):
        block = _block(dim, ratio, grouped, seed=11)
        x = _input(2, dim, 9, 7, seed=12)
        converted = reparameterize_model(block, export=ExportForm(fixed), inplace=False)
        assert isinstance(converted, ExportBlock)
        with torch.no_grad():
            want, got = block(x), converted(x.contiguous())
        assert (got - want).abs().max() < 1e-4


def test_conversions_return_new_modules_and_leave_the_model() -> None:
    model = randomize(SpaRTAN(return_idx=(0, 1, 2, 3)), seed=4).train()
    before = copy.deepcopy(model.state_dict())
    inference = reparameterize_model(model, inplace=False)
    export = reparameterize_model(model, export=ExportForm(False), inplace=False)
    assert model.training and all(isinstance(m, Block) for m in model.layers if not isinstance(m, ConvNormAct))
    torch.testing.assert_close(model.state_dict(), before, rtol=0, atol=0)
    for converted in (inference, export):
        assert not converted.training
        assert not any(isinstance(m, (Block, ConvNormAct, nn.BatchNorm2d)) for m in converted.modules())
    assert not any(t.requires_grad for t in inference.state_dict(keep_vars=True).values())
    again = reparameterize_model(inference, inplace=False)  # nothing left to convert
    x = synthetic_scenes(1, 96, 64, seed=5)
    with torch.no_grad():
        want = model.eval()(x)
        for converted in (
            inference,
            again,
            export,
            reparameterize_model(inference, export=ExportForm(True), inplace=False),
        ):
            for a, b in zip(converted(x), want, strict=True):
                assert (a - b).abs().max() < 1e-4


def test_frozen_norms_fold_like_eval_mode_norms() -> None:
    model = randomize(SpaRTAN(return_idx=(1, 2, 3)), seed=5).eval()
    frozen = SpaRTAN(return_idx=(1, 2, 3), freeze_norm=True)
    frozen.load_state_dict(model.state_dict(), strict=False)  # FrozenBatchNorm2d: no num_batches_tracked
    x = synthetic_scenes(1, 64, 64, seed=6)
    with torch.no_grad():
        for a, b in zip(reparameterize_model(frozen, inplace=False)(x), model(x), strict=True):
            assert (a - b).abs().max() < 1e-4


@pytest.mark.parametrize(
    "variant", ["T", {"depths": [1, 1, 1, 1], "widths": [16, 32, 48, 64], "expand_ratios": [3, 2, 3, 4]}]
)
def test_inference_and_export_forms_hold_contiguous_tensors(variant: str | dict[str, list[int]]) -> None:
    """Precomputed factors kept as permuted views made every broadcast op over the activations
    strided: the eager inference form of SpaRTAN-T ran ~10 % slower at 640²."""
    model = SpaRTAN(variant, return_idx=(1, 2, 3))
    for form in (
        reparameterize_model(model, inplace=False),
        reparameterize_model(model, export=ExportForm(False), inplace=False),
    ):
        strided = [name for name, t in [*form.named_buffers(), *form.named_parameters()] if not t.is_contiguous()]
        assert strided == []


def test_inference_form_reproduces_the_reference_classifier() -> None:
    entries, _ = load_spec("spartan_t_cls")
    model = SpaRTANClassifier()
    model.load_state_dict(synthetic_state_dict(entries, 0), strict=True)
    expected = load_expected("spartan_t_cls_seed0")
    x = synthetic_scenes(*expected["input_shape"][:1], *expected["input_shape"][2:], seed=0)
    with torch.no_grad():
        logits = reparameterize_model(model, inplace=False)(x)
    torch.testing.assert_close(logits, expected["logits"], rtol=0, atol=1e-4)


def test_inference_form_follows_dtype_and_counts_flops() -> None:
    """Precomputed weights are buffers: ``.double()`` converts them; FlopCounterMode works."""
    block = _block(24, 2, True, seed=6)
    x = _input(2, 24, 12, 10, seed=7)
    converted = reparameterize_model(block, inplace=False).double()
    with torch.no_grad():
        got = converted(x.double())
        assert got.dtype == torch.float64
        assert (got - block.double()(x.double())).abs().max() < 1e-4
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        reparameterize_model(SpaRTAN(), inplace=False)(torch.rand(1, 3, 64, 64))
    assert counter.get_total_flops() > 0


def _onnx(module: nn.Module, x: torch.Tensor, dynamic: bool) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            module,
            (x,),
            buffer,
            dynamo=False,
            opset_version=17,
            input_names=["x"],
            dynamic_axes={"x": {0: "batch"}} if dynamic else None,
        )
    return buffer.getvalue()


@pytest.mark.parametrize(("grouped", "ratio"), [(False, 4), (True, 2)], ids=["depthwise", "pair_per_group"])
def test_export_form_runs_in_onnxruntime(grouped: bool, ratio: int) -> None:
    """Dynamic batch: no Transpose (NCHW throughout), any batch size. Fixed shapes: gates
    expanded with Resize. Both match the canonical block."""
    ort = pytest.importorskip("onnxruntime")
    block = _block(16, ratio, grouped, seed=8)
    x = torch.randn(1, 16, 12, 10, generator=torch.Generator().manual_seed(9))
    for fixed in (False, True):
        data = _onnx(reparameterize_model(block, export=ExportForm(fixed), inplace=False), x, dynamic=not fixed)
        ops = {node.op_type for node in onnx.load_from_string(data).graph.node}
        assert "Transpose" not in ops and ("Resize" in ops) == fixed
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        batch = x if fixed else torch.randn(3, 16, 12, 10, generator=torch.Generator().manual_seed(10))
        with torch.no_grad():
            want = block(batch.contiguous(memory_format=torch.channels_last))
        (got,) = session.run(None, {"x": batch.numpy()})
        assert (torch.from_numpy(got) - want).abs().max() < 1e-4
