from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest

from rtdetr_spartan.data.layouts import detect_layout
from tools.make_shapes import get_args_parser, main

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_main_writes_detection_dataset(tmp_path: Path) -> None:
    argv = ["--out", str(tmp_path), "--train", "5", "--val", "3", "--size", "64", "--seed", "2", "--format", "png"]
    assert main(argv) == 0
    assert len(list((tmp_path / "train").glob("*.png"))) == 5 and len(list((tmp_path / "val").glob("*.png"))) == 3
    coco = json.loads((tmp_path / "annotations" / "instances_val.json").read_text())
    assert [img["id"] for img in coco["images"]] == [1, 2, 3]
    assert all(img["width"] == img["height"] == 64 for img in coco["images"])


def test_parser_defaults() -> None:
    args = get_args_parser().parse_args(["--out", "x"])
    assert (args.train, args.val, args.seed, args.image_format, args.classification) == (400, 100, 0, "jpg", False)


def test_script_entry_point_classification(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # what `python tools/make_shapes.py ...` runs, in-process (a subprocess would re-import torch)
    argv = ["make_shapes.py", "--out", str(tmp_path), "--classification", "--train", "8", "--val", "4", "--size", "32"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(REPO_ROOT / "tools" / "make_shapes.py"), run_name="__main__")
    assert info.value.code == 0
    classes = sorted(p.name for p in (tmp_path / "train").iterdir())
    assert classes == ["circle", "square", "star", "triangle"]
    assert sum(1 for _ in (tmp_path / "val").rglob("*.jpg")) == 4


def test_main_writes_yolo_layout(tmp_path: Path) -> None:
    argv = ["--out", str(tmp_path), "--layout", "yolo", "--train", "4", "--val", "2", "--size", "64", "--format", "png"]
    assert main(argv) == 0
    layout = detect_layout(tmp_path)
    assert (layout.kind, layout.names) == ("yolo", ["square", "circle", "triangle", "star"])
    assert len(list((tmp_path / "images" / "train").glob("*.png"))) == 4
    labels = sorted((tmp_path / "labels" / "val").glob("*.txt"))
    assert [p.stem for p in labels] == ["000000", "000001"]
    first = labels[0].read_text().splitlines()
    assert first and all(len(line.split()) == 5 for line in first)


def test_layout_with_classification_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--out", str(tmp_path), "--classification", "--layout", "yolo"])
    assert info.value.code == 2
