"""Training curves from solver logs: parsing, per-epoch series, PNG output."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image

from rtdetr_spartan.misc.plot import plot_training_curves, read_log, training_curves


def _write_log(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _det_record(epoch: int, loss: float, ap: float, ap50: float) -> dict:
    return {
        "epoch": epoch,
        "train_loss": loss,
        "train_lr": 1e-4,
        "test_coco_eval_bbox": [ap, ap50] + [0.0] * 10,
        "best": {"value": ap},
    }


def test_detection_records_give_loss_ap_and_ap50() -> None:
    records = [_det_record(1, 2.0, 0.2, 0.4), _det_record(0, 3.0, 0.1, 0.3), {"test_top1": 5.0}]
    curves = training_curves(records)
    assert curves.epochs == [0, 1]
    assert curves.loss == [3.0, 2.0]
    assert curves.metrics == {"AP": [0.1, 0.2], "AP50": [0.3, 0.4]}


def test_classification_records_and_resumed_epochs() -> None:
    records = [
        {"epoch": 0, "train_loss": 1.5, "test_top1": 40.0},
        {"epoch": 1, "train_loss": 9.9, "test_top1": 1.0},
        {"epoch": 1, "train_loss": 1.0, "test_top1": 70.0},
    ]  # resumed: the last record wins
    curves = training_curves(records)
    assert curves.epochs == [0, 1]
    assert curves.loss == [1.5, 1.0]
    assert curves.metrics == {"top-1 (%)": [40.0, 70.0]}


def test_missing_values_become_nan_and_series_stay_aligned() -> None:
    records = [{"epoch": 0, "train_loss": None}, _det_record(1, 2.0, 0.2, 0.4)]
    curves = training_curves(records)
    assert math.isnan(curves.loss[0]) and curves.loss[1] == 2.0
    assert len(curves.metrics["AP"]) == 2 and math.isnan(curves.metrics["AP"][0])


def test_plot_writes_a_png(tmp_path: Path) -> None:
    log = _write_log(tmp_path / "log.txt", [_det_record(e, 3.0 - e, 0.1 * e, 0.2 * e) for e in range(4)])
    out = plot_training_curves(log, tmp_path / "plots" / "curve.png", title="shapes")
    with Image.open(out) as image:
        assert image.format == "PNG"
        assert image.size == (1000, 400)


def test_malformed_line_names_file_and_line(tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    log.write_text(json.dumps(_det_record(0, 1.0, 0.1, 0.2)) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"log\.txt, line 2"):
        read_log(log)


def test_log_without_epochs_is_an_error(tmp_path: Path) -> None:
    log = _write_log(tmp_path / "log.txt", [{"test_top1": 50.0}])
    with pytest.raises(ValueError, match="no per-epoch records"):
        plot_training_curves(log, tmp_path / "x.png")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_log(tmp_path / "missing.txt")
