"""tools/quickstart.py --fast: every stage runs end to end in a subprocess and writes its files."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from rtdetr_spartan.pipeline.datasets import SPEC_FILE, ensure_detection_dataset
from tools.quickstart import get_args_parser

REPO_ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 420


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    root = tmp_path_factory.mktemp("quickstart")
    out = root / "out"
    # One thread: the run stays fast when other processes keep the cores busy (OpenMP threads that
    # wait for each other on a loaded machine make it several times slower).
    command = [
        sys.executable,
        "tools/quickstart.py",
        "--fast",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--output-dir",
        str(out),
        "--data-dir",
        str(root / "data"),
        "--seed",
        "1",
    ]
    proc = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)
    return proc, out


@pytest.mark.slow
def test_fast_run_succeeds_and_writes_summary(fast_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    proc, out = fast_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    for key in ("ap", "ap50", "onnx_max_abs_diff", "seconds", "latency_ms", "onnx_ap", "pretrain_top1", "paths"):
        assert key in summary, key
    assert 0.0 <= summary["ap"] <= summary["ap50"] <= 1.0
    # onnxruntime reproduces PyTorch (a near-tied detection may be another query's)
    assert summary["onnx_matched_fraction"] >= 0.95 and 0.0 <= summary["onnx_max_abs_diff"] < 1e-3
    assert math.isclose(summary["onnx_ap"], summary["ap"], abs_tol=1e-3)
    # one call's latency fits in the demo stage that measured it (median of several calls)
    assert 0 < summary["latency_ms"] < 1000 * summary["stage_seconds"]["demo"] <= 1000 * summary["seconds"]
    assert set(summary["stage_seconds"]) == {"datasets", "pretrain", "train", "export", "onnx_eval", "demo", "curves"}


@pytest.mark.slow
def test_fast_run_writes_model_pictures_and_curves(fast_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    proc, out = fast_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    paths = json.loads((out / "summary.json").read_text())["paths"]
    model = onnx.load(paths["onnx"])
    assert [i.name for i in model.graph.input] == ["images", "orig_target_sizes"]
    for png in (paths["detector_curve"], paths["pretrain_curve"]):
        with Image.open(png) as image:
            assert image.format == "PNG" and np.asarray(image).std() > 10  # axes and curves, not blank
    assert len(paths["samples"]) == 2
    for sample in map(Path, paths["samples"]):  # annotated as tools/infer.py names and draws them
        (source,) = (out.parent / "data").glob(f"*/detection/val/{sample.name}")
        with Image.open(sample) as picture, Image.open(source) as image:
            assert picture.size == image.size and picture.format == {".jpg": "JPEG", ".png": "PNG"}[sample.suffix]
    assert Path(paths["pretrain_checkpoint"]).is_file() and Path(paths["detector_checkpoint"]).is_file()
    log = (out / "train.log").read_text()
    assert "[7/7] training curves" in log and "per-class AP" in log and "square" in log


def test_second_run_reuses_the_datasets(tmp_path: Path) -> None:
    root = tmp_path / "det"
    ensure_detection_dataset(root, train=2, val=1, size=64, seed=0, max_objects=2)
    marker = root / "train" / "keep.txt"
    marker.write_text("unchanged")
    ensure_detection_dataset(root, train=2, val=1, size=64, seed=0, max_objects=2)
    assert marker.is_file()  # same settings: reused
    ensure_detection_dataset(root, train=3, val=1, size=64, seed=0, max_objects=2)
    assert not marker.exists()  # other settings: regenerated
    assert json.loads((root / SPEC_FILE).read_text())["train"] == 3


def test_foreign_folder_is_left_alone(tmp_path: Path) -> None:
    root = tmp_path / "mine"
    root.mkdir()
    (root / "photo.jpg").write_bytes(b"")
    with pytest.raises(FileExistsError, match="not written by the quickstart"):
        ensure_detection_dataset(root, train=2, val=1, size=64, seed=0, max_objects=2)


def test_arguments() -> None:
    args = get_args_parser().parse_args(["--fast", "--seed", "3", "-u", "epochs=2", "optimizer.lr=0.001"])
    assert args.fast and args.seed == 3 and args.output_dir == "outputs/quickstart" and args.data_dir == "data"
    assert args.update == ["epochs=2", "optimizer.lr=0.001"]
