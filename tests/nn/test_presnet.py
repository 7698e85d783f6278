from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from rtdetr_spartan.core import lookup
from rtdetr_spartan.nn.backbones.presnet import PResNet
from rtdetr_spartan.nn.common import FrozenBatchNorm2d
from tests.parity_utils import (
    state_dict_spec,
    summary_problems,
    synthetic_state_dict,
)
from tests.rtdetr_reference_utils import (
    PARITY_MODELS,
    REFERENCE_CONFIGS,
    build_backbone,
    reference_backbone_run,
    sub_spec,
)


@pytest.mark.parametrize("name", list(REFERENCE_CONFIGS))
def test_state_dict_matches_reference_spec(name: str) -> None:
    assert state_dict_spec(build_backbone(name)) == sub_spec(name, "backbone.")


def test_output_contract() -> None:
    assert build_backbone("rtdetr_r50vd").out_channels == [512, 1024, 2048]
    model = build_backbone("rtdetr_r18vd").eval()
    assert model.out_channels == [128, 256, 512] and model.out_strides == [8, 16, 32]
    with torch.no_grad():
        outs = model(torch.rand(1, 3, 96, 128))
    assert [tuple(o.shape) for o in outs] == [(1, 128, 12, 16), (1, 256, 6, 8), (1, 512, 3, 4)]


@pytest.mark.parametrize("name", PARITY_MODELS)
def test_parity_with_reference_outputs(name: str) -> None:
    expected, outs = reference_backbone_run(name)
    assert len(outs) == len(expected["backbone"])
    for level, (summary, out) in enumerate(zip(expected["backbone"], outs)):
        assert summary_problems(summary, out) == [], f"level {level}"


def test_freeze_at_and_freeze_norm() -> None:
    model = PResNet(depth=18, return_idx=(1, 2, 3), freeze_at=2, freeze_norm=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in model.modules()) == len(convs)
    for part in (model.conv1, model.res_layers[0], model.res_layers[1]):
        assert all(not p.requires_grad for p in part.parameters())
    for part in (model.res_layers[2], model.res_layers[3]):
        assert all(p.requires_grad for p in part.parameters())

    trainable = PResNet(depth=18, freeze_at=-1, freeze_norm=False)
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in trainable.modules())
    assert all(p.requires_grad for p in trainable.parameters())


# Full-model (backbone + encoder) training steps at 320 and 416 are in test_hybrid_encoder.py.
@pytest.mark.parametrize("name, batch, size", [("rtdetr_r18vd", 2, 160), ("rtdetr_r50vd", 1, 128)])
def test_forward_backward_finite(name: str, batch: int, size: int) -> None:
    model = build_backbone(name).train()
    outs = model(torch.rand(batch, 3, size, size))
    assert [o.shape[-1] for o in outs] == [size // 8, size // 16, size // 32]
    sum(o.float().mean() for o in outs).backward()
    assert all(torch.isfinite(o).all() for o in outs)
    for pname, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        else:  # reference R50: freeze_at=0 freezes the stem
            assert pname.startswith("conv1.") and p.grad is None


def test_variant_b_uses_7x7_stem() -> None:
    model = PResNet(depth=18, variant="b", freeze_norm=False)
    assert model.conv1.conv1_1.conv.kernel_size == (7, 7) and len(model.conv1) == 1
    assert [o.shape[1] for o in model.eval()(torch.rand(1, 3, 64, 64))] == [64, 128, 256, 512]


@pytest.mark.parametrize("pretrained", [True, "https://example.com/ResNet18_vd.pth"])
def test_pretrained_download_is_refused(pretrained: bool | str) -> None:
    with pytest.raises(ValueError, match="not supported.*local path"):
        PResNet(depth=18, pretrained=pretrained)


def test_pretrained_local_path_loads(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = PResNet(depth=18, freeze_norm=False)
    source.load_state_dict(synthetic_state_dict(state_dict_spec(source), seed=3))
    path = tmp_path / "resnet18_vd.pth"
    torch.save(source.state_dict(), path)
    with caplog.at_level(logging.WARNING, logger="rtdetr_spartan"):
        # A trainable-BN checkpoint also loads into frozen BN (num_batches_tracked is dropped).
        model = PResNet(depth=18, freeze_norm=True, pretrained=str(path))
    assert not [r for r in caplog.records if r.name.startswith("rtdetr_spartan")]
    expected = source.state_dict()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0)


def test_pretrained_partial_checkpoint_reports_missing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = PResNet(depth=18, freeze_norm=False).state_dict()
    state.pop("conv1.conv1_1.conv.weight")
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "partial.pth"
    torch.save({"model": state}, path)
    with caplog.at_level(logging.WARNING, logger="rtdetr_spartan"):
        PResNet(depth=18, freeze_norm=False, pretrained=path)
    text = caplog.text
    assert "conv1.conv1_1.conv.weight" in text and "extra.weight" in text


def test_pretrained_missing_file_and_bad_depth() -> None:
    with pytest.raises(FileNotFoundError, match="no_such.pth"):
        PResNet(depth=18, pretrained="no_such.pth")
    with pytest.raises(ValueError, match="depth=152"):
        PResNet(depth=152)


def test_registered_with_reference_argument_names() -> None:
    assert lookup("PResNet") is PResNet
    assert list(PResNet.__init__.__code__.co_varnames[1:9]) == [
        "depth",
        "variant",
        "num_stages",
        "return_idx",
        "act",
        "freeze_at",
        "freeze_norm",
        "pretrained",
    ]
