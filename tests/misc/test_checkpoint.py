"""misc.checkpoint: the one weight loader's strictness policy, atomic saves, a full disk, stale files."""

from __future__ import annotations

import errno
import io
import logging
import os
from pathlib import Path
from typing import IO

import pytest
import torch
from torch import nn

from rtdetr_spartan.misc import checkpoint
from rtdetr_spartan.misc.checkpoint import load_model_weights, remove_stale_temp_files, save_atomic


def _net(classes: int = 3) -> nn.Sequential:
    torch.manual_seed(classes)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(classes))


def _built(classes: int = 3) -> nn.Sequential:
    net = _net(classes)
    net(torch.zeros(1, 3, 5, 5))  # materialise the lazy head
    return net


def test_strict_false_loads_matching_tensors_and_reports_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    source, target = _built(classes=5), _built(classes=3)
    state = source.state_dict()
    state["extra.weight"] = torch.zeros(2)
    del state["1.running_var"]
    with caplog.at_level(logging.WARNING, logger="rtdetr_spartan"):
        report = load_model_weights(target, {"model": state}, strict=False)
    assert report.unexpected == ["extra.weight"]
    assert report.missing == ["1.running_var"]
    assert report.mismatched == ["3.weight (5, 36) vs model (3, 36)", "3.bias (5,) vs model (3,)"]
    assert set(report.loaded) == {"0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.num_batches_tracked"}
    assert torch.equal(target.state_dict()["0.weight"], source.state_dict()["0.weight"])
    assert not torch.equal(target.state_dict()["3.bias"][:3], source.state_dict()["3.bias"][:3])
    assert "shape mismatch: 2" in caplog.text and "extra.weight" in caplog.text


def test_strict_true_names_every_difference_and_loads_nothing(tmp_path: Path) -> None:
    source, target = _built(classes=5), _built(classes=3)
    path = tmp_path / "other.pth"
    torch.save({"model": source.state_dict()}, path)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError, match=rf"checkpoint {path} does not match Sequential .*3.weight \(5, 36\)"):
        load_model_weights(target, path, strict=True)
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())


def test_layouts_ema_first_ddp_prefix_and_ignored_prefixes() -> None:
    ema, plain = _built(), _built(classes=3)
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(1.0)
    wrapped = {f"module.{k}": v for k, v in ema.state_dict().items()}
    target = _built()
    report = load_model_weights(target, {"ema": {"module": wrapped}, "model": plain.state_dict()})
    assert report.complete and torch.equal(target.state_dict()["0.weight"], ema.state_dict()["0.weight"])
    head_dropped = load_model_weights(_built(classes=7), {"model": ema.state_dict()}, strict=False, ignore=("3.",))
    assert head_dropped.missing == ["3.weight", "3.bias"] and not head_dropped.mismatched
    with pytest.raises(ValueError, match="no tensors found"):
        load_model_weights(target, {"epoch": 3})


def test_batchnorm_counters_do_not_block_a_strict_load() -> None:
    frozen = nn.Sequential(nn.Conv2d(3, 4, 3))
    frozen.add_module("1", nn.BatchNorm2d(4, track_running_stats=True))
    state = {k: v for k, v in frozen.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert load_model_weights(frozen, state, strict=True).complete


class _FullDisk(io.RawIOBase):
    """A file that accepts ``limit`` bytes, then fails as a full disk does."""

    def __init__(self, handle: IO[bytes], limit: int) -> None:
        self.handle, self.limit, self.written = handle, limit, 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.written += len(data)
        if self.written > self.limit:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.handle.write(data)

    def fileno(self) -> int:
        return self.handle.fileno()

    def close(self) -> None:
        self.handle.close()
        super().close()


def test_disk_full_names_the_file_and_keeps_the_previous_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.pth"
    save_atomic({"epoch": 0}, path)
    monkeypatch.setattr(checkpoint, "_open_for_writing", lambda fd: _FullDisk(os.fdopen(fd, "wb"), limit=1000))
    with pytest.raises(OSError, match=rf"no space left on device while saving {path} \(.* MiB free") as info:
        save_atomic({"epoch": 1, "weights": torch.zeros(10_000)}, path)
    assert info.value.errno == errno.ENOSPC
    assert torch.load(path)["epoch"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth"]  # no temporary file left


def test_stale_temporary_files_are_removed(tmp_path: Path) -> None:
    stale = [tmp_path / ".last.pth.k3j2_x.tmp", tmp_path / ".best.pth.staging"]
    keep = [tmp_path / "last.pth", tmp_path / "notes.tmp", tmp_path / ".hidden"]
    for path in stale + keep:
        path.write_bytes(b"x" * 10)
    assert remove_stale_temp_files(tmp_path) == sorted(stale)
    assert sorted(tmp_path.iterdir()) == sorted(keep)
    assert remove_stale_temp_files(tmp_path / "missing") == []


def test_a_directory_is_named_as_one_with_the_checkpoint_in_it(tmp_path: Path) -> None:
    with pytest.raises(checkpoint.CheckpointError, match=rf"checkpoint {tmp_path} is a directory.*a \.pth file"):
        checkpoint.load_checkpoint(tmp_path)
    save_atomic({"model": {}}, tmp_path / "last.pth")
    with pytest.raises(checkpoint.CheckpointError, match=rf"is a directory.*e\.g\. {tmp_path / 'last.pth'}"):
        checkpoint.load_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match=f"checkpoint {tmp_path / 'nope.pth'} does not exist"):
        checkpoint.load_checkpoint(tmp_path / "nope.pth")


def test_a_file_that_is_no_checkpoint_is_named(tmp_path: Path) -> None:
    path = tmp_path / "notes.pth"
    path.write_text("not a checkpoint")
    with pytest.raises(checkpoint.CheckpointError, match=rf"checkpoint {path} refused: it is no file torch.save wrote"):
        checkpoint.load_checkpoint(path)
    path.write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(checkpoint.CheckpointError, match=rf"checkpoint {path} cannot be read as a PyTorch checkpoint"):
        checkpoint.load_checkpoint(path)
    save_atomic(torch.zeros(2), tmp_path / "tensor.pth")
    with pytest.raises(checkpoint.CheckpointError, match="holds a Tensor, expected a dict"):
        checkpoint.load_checkpoint(tmp_path / "tensor.pth")


@pytest.mark.parametrize(
    ("stored", "task"),
    [
        ({"task": "classification"}, "classification"),
        ({"config": {"task": "classification"}}, "classification"),
        ({"config": {"epochs": 3}}, "detection"),  # a detection config need not say so
        ({"ema": {"module": {}}}, None),  # published weights record nothing
    ],
)
def test_the_task_a_checkpoint_records(stored: dict[str, object], task: str | None) -> None:
    assert checkpoint.checkpoint_task(stored) == task


def test_a_checkpoint_of_the_other_task_is_refused_before_any_tensor(tmp_path: Path) -> None:
    path = save_atomic({"model": _built().state_dict(), "task": "classification"}, tmp_path / "cls.pth")
    message = (
        rf"checkpoint {path} is a classification checkpoint .*tools/pretrain.py.*; -r needs a detection checkpoint"
    )
    with pytest.raises(checkpoint.CheckpointError, match=message):
        checkpoint.load_checkpoint(path, expect_task="detection", purpose="-r")
    with pytest.raises(checkpoint.CheckpointError, match="is a classification checkpoint"):
        load_model_weights(nn.Linear(2, 2), path, expect_task="detection")  # not a shape mismatch
    assert load_model_weights(_built(), path, expect_task="classification").complete
    assert load_model_weights(_built(), {"model": _built().state_dict()}, expect_task="detection").complete


def test_deploy_models_refuse_a_classifier_checkpoint(tmp_path: Path) -> None:
    from rtdetr_spartan.deploy.from_config import build_deploy_model, load_config
    from tests.train_utils import TINY_CONFIG

    path = save_atomic({"model": {"linear.weight": torch.zeros(4, 8)}, "task": "classification"}, tmp_path / "c.pth")
    with pytest.raises(checkpoint.CheckpointError, match=rf"{path} is a classification checkpoint.*a detector \(-r\)"):
        build_deploy_model(load_config(TINY_CONFIG), path)


def test_parity_fixtures_load_as_data_only() -> None:
    from rtdetr_spartan.testing.parity import load_expected
    from tests.train_utils import REPO_ROOT

    expected = load_expected("spartan_t_cls_seed0", REPO_ROOT / "tests" / "fixtures" / "parity")
    assert isinstance(expected, dict) and any(isinstance(v, torch.Tensor) for v in expected.values())


def test_a_detector_checkpoint_is_refused_as_backbone_weights(tmp_path: Path) -> None:
    from rtdetr_spartan.nn.backbones.presnet import PResNet
    from rtdetr_spartan.nn.backbones.spartan import SpaRTAN

    path = save_atomic({"model": {"backbone.conv.weight": torch.zeros(1)}, "config": {}}, tmp_path / "det.pth")
    for backbone, key in ((SpaRTAN, "SpaRTAN"), (PResNet, "PResNet")):
        with pytest.raises(
            checkpoint.CheckpointError, match=rf"{path} is a detection checkpoint.*{key}.pretrained needs"
        ):
            backbone(pretrained=str(path))


def test_a_grad_scaler_and_fused_optimizer_state_load_as_data(tmp_path: Path) -> None:
    """The parts of a float16 CUDA run's checkpoint this CPU suite cannot train: a used GradScaler
    (its CPU form has the same state) and a fused AdamW."""
    weight = nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([weight], fused=True)
    scaler = torch.amp.GradScaler("cpu")
    scaler.scale(weight.sum()).backward()
    scaler.step(optimizer)
    scaler.update()
    path = save_atomic({"scaler": scaler.state_dict(), "optimizer": optimizer.state_dict()}, tmp_path / "s.pth")
    loaded = checkpoint.load_checkpoint(path)
    restored = torch.amp.GradScaler("cpu")
    restored.load_state_dict(loaded["scaler"])
    assert restored.get_scale() == scaler.get_scale() and loaded["scaler"]["_growth_tracker"] == 1
    assert torch.equal(loaded["optimizer"]["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])


def test_a_folder_as_backbone_weights_is_named_as_one(tmp_path: Path) -> None:
    from rtdetr_spartan.nn.backbones.presnet import PResNet
    from rtdetr_spartan.nn.backbones.spartan import SpaRTAN

    for backbone in (SpaRTAN, PResNet):
        with pytest.raises(checkpoint.CheckpointError, match=rf"checkpoint {tmp_path} is a directory, not a file"):
            backbone(pretrained=str(tmp_path))
