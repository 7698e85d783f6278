"""A hostile checkpoint (one whose unpickling runs code) is refused by every way in: the file is
named, and the code never runs.

The hostile object's ``__reduce__`` creates a marker file when unpickled; the first test proves
that it does with ``weights_only=False``, so that the others can fail.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image

from rtdetr_spartan.misc.checkpoint import CheckpointError, load_checkpoint, load_model_weights
from tests.cls_utils import SHAPES_CLS_CONFIG
from tests.train_utils import REPO_ROOT, TINY_CONFIG, TINY_SPARTAN_CONFIG
from tools import export_onnx, infer, pretrain, train, visualize


class Hostile:
    """Unpickling this creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., object], tuple[object, ...]]:
        return (Path.touch, (self.marker,))


def _write_hostile(path: Path, marker: Path, old_format: bool = False) -> Path:
    payload = {"model": {"weight": torch.zeros(2)}, "epoch": 0, "extra": Hostile(marker)}
    torch.save(payload, path, _use_new_zipfile_serialization=not old_format)
    return path


@pytest.fixture
def hostile(tmp_path: Path) -> tuple[Path, Path]:
    """``(checkpoint, marker)``: a zip-format hostile checkpoint and the file it would create."""
    marker = tmp_path / "MARKER"
    return _write_hostile(tmp_path / "evil.pth", marker), marker


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "img.png"
    Image.new("RGB", (64, 64), (120, 30, 200)).save(path)
    return path


@pytest.mark.parametrize("old_format", [False, True], ids=["zip", "legacy"])
def test_the_hostile_file_runs_code_when_unpickled_unsafely(tmp_path: Path, old_format: bool) -> None:
    marker = tmp_path / "MARKER"
    path = _write_hostile(tmp_path / "evil.pth", marker, old_format)
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("old_format", [False, True], ids=["zip", "legacy"])
def test_load_checkpoint_refuses_it_and_names_the_file(tmp_path: Path, old_format: bool) -> None:
    marker = tmp_path / "MARKER"
    path = _write_hostile(tmp_path / "evil.pth", marker, old_format)
    with pytest.raises(CheckpointError, match=rf"checkpoint {path} refused: .*arbitrary code.*getattr"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match=str(path)):
        load_model_weights(torch.nn.Linear(2, 2), path)
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_a_plain_pickle_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"model": Hostile(marker)}, protocol=4))
    with pytest.raises(CheckpointError, match=rf"checkpoint {path} refused"):
        load_checkpoint(path)
    assert not marker.exists()


def _refused(run: Callable[[], object], checkpoint: Path, marker: Path) -> None:
    with pytest.raises(CheckpointError, match=rf"checkpoint {checkpoint} refused"):
        run()
    assert not marker.exists()


def test_train_resume(hostile: tuple[Path, Path], tmp_path: Path) -> None:
    path, marker = hostile
    argv = ["-c", str(TINY_CONFIG), "--device", "cpu", "--output-dir", str(tmp_path / "out"), "-r", str(path)]
    _refused(lambda: train.main(argv), path, marker)


def test_train_resume_of_a_legacy_format_file(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    path = _write_hostile(tmp_path / "old.pth", marker, old_format=True)
    argv = ["-c", str(TINY_CONFIG), "--device", "cpu", "--output-dir", str(tmp_path / "out"), "-r", str(path)]
    _refused(lambda: train.main(argv), path, marker)


def test_train_tuning(hostile: tuple[Path, Path], tmp_path: Path) -> None:
    path, marker = hostile
    argv = ["-c", str(TINY_CONFIG), "--device", "cpu", "--output-dir", str(tmp_path / "out"), "-t", str(path)]
    _refused(lambda: train.main(argv), path, marker)


@pytest.mark.parametrize(
    ("config", "key"), [(TINY_CONFIG, "PResNet.pretrained"), (TINY_SPARTAN_CONFIG, "SpaRTAN.pretrained")]
)
def test_backbone_pretrained(hostile: tuple[Path, Path], tmp_path: Path, config: Path, key: str) -> None:
    path, marker = hostile
    argv = ["-c", str(config), "--device", "cpu", "--output-dir", str(tmp_path / "out"), "-u", f"{key}={path}"]
    _refused(lambda: train.main(argv), path, marker)


def test_pretrain_resume(hostile: tuple[Path, Path], tmp_path: Path) -> None:
    path, marker = hostile
    argv = ["-c", str(SHAPES_CLS_CONFIG), "--device", "cpu", "--output-dir", str(tmp_path / "out"), "-r", str(path)]
    _refused(lambda: pretrain.main(argv), path, marker)


def test_export_onnx(hostile: tuple[Path, Path], tmp_path: Path) -> None:
    path, marker = hostile
    output = tmp_path / "model.onnx"
    _refused(lambda: export_onnx.main(["-c", str(TINY_CONFIG), "-r", str(path), "-o", str(output)]), path, marker)
    assert not output.exists()


def test_infer(hostile: tuple[Path, Path], image: Path, tmp_path: Path) -> None:
    path, marker = hostile
    argv = ["-c", str(TINY_CONFIG), "-r", str(path), "-i", str(image), "-o", str(tmp_path / "pred")]
    _refused(lambda: infer.main(argv), path, marker)


def test_visualize(hostile: tuple[Path, Path], image: Path, tmp_path: Path) -> None:
    path, marker = hostile
    argv = ["-c", str(TINY_CONFIG), "-r", str(path), "-i", str(image), "-o", str(tmp_path / "vis")]
    _refused(lambda: visualize.main(argv), path, marker)


@pytest.mark.slow
def test_the_command_line_prints_one_line_and_runs_nothing(hostile: tuple[Path, Path], tmp_path: Path) -> None:
    path, marker = hostile
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RTDETR_SPARTAN_DEBUG", None)
    proc = subprocess.run(
        [
            sys.executable,
            "tools/export_onnx.py",
            "-c",
            str(TINY_CONFIG),
            "-r",
            str(path),
            "-o",
            str(tmp_path / "m.onnx"),
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert f"error: checkpoint {path} refused" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists()
