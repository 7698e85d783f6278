"""Training curves from a solver's ``OUTPUT_DIR/log.txt`` (one JSON record per line).

Detection records carry ``train_loss`` and ``test_coco_eval_bbox`` (the 12 COCO numbers: AP
first, AP50 second); classification records carry ``train_loss`` and ``test_top1`` (percent).
The figure has two panels per epoch: the training loss, and the validation metric (AP and AP50,
or top-1). Drawing uses matplotlib's Agg canvas directly, so no pyplot state or GUI backend is
touched.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

__all__ = ["TrainingCurves", "plot_training_curves", "read_log", "training_curves"]


@dataclass
class TrainingCurves:
    """Per-epoch series; ``metrics`` maps a label (``AP``, ``AP50``, ``top-1 (%)``) to values."""

    epochs: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    metrics: dict[str, list[float]] = field(default_factory=dict)


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The JSON records of ``path``; a malformed line raises ``ValueError`` naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training log {path} does not exist")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}, line {number}: not a JSON record ({err.msg})") from err
        if not isinstance(record, dict):
            raise ValueError(f"{path}, line {number}: expected a JSON object, got {type(record).__name__}")
        records.append(record)
    return records


def _number(value: Any) -> float:
    """A float, NaN for missing or non-numeric values (JSON ``null`` from a non-finite loss)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def _metrics_of(record: Mapping[str, Any]) -> dict[str, float]:
    coco = record.get("test_coco_eval_bbox")
    if isinstance(coco, Sequence) and len(coco) >= 2:
        return {"AP": _number(coco[0]), "AP50": _number(coco[1])}
    if "test_top1" in record:
        return {"top-1 (%)": _number(record["test_top1"])}
    return {}


def training_curves(records: Sequence[Mapping[str, Any]]) -> TrainingCurves:
    """Per-epoch loss and metrics of solver records, in epoch order.

    Records without an ``epoch`` (e.g. a ``--test-only`` evaluation) are skipped; when an epoch
    appears twice (a resumed run), its last record wins.
    """
    by_epoch: dict[int, Mapping[str, Any]] = {}
    for record in records:
        if isinstance(record.get("epoch"), int):
            by_epoch[int(record["epoch"])] = record
    curves = TrainingCurves()
    for epoch in sorted(by_epoch):
        record = by_epoch[epoch]
        curves.epochs.append(epoch)
        curves.loss.append(_number(record.get("train_loss")))
        for name, value in _metrics_of(record).items():
            # A metric first seen at a later epoch is padded so every series aligns with epochs.
            series = curves.metrics.setdefault(name, [math.nan] * (len(curves.epochs) - 1))
            series.append(value)
        for series in curves.metrics.values():
            series.extend([math.nan] * (len(curves.epochs) - len(series)))
    return curves


def _draw(figure: Figure, curves: TrainingCurves, title: str | None) -> None:
    loss_ax, metric_ax = figure.subplots(1, 2)
    loss_ax.plot(curves.epochs, curves.loss, marker="o", color="tab:red")
    loss_ax.set_title("training loss")
    loss_ax.set_xlabel("epoch")
    loss_ax.grid(alpha=0.3)
    for name, values in curves.metrics.items():
        metric_ax.plot(curves.epochs, values, marker="o", label=name)
    metric_ax.set_title("validation")
    metric_ax.set_xlabel("epoch")
    metric_ax.grid(alpha=0.3)
    for ax in (loss_ax, metric_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    if curves.metrics:
        metric_ax.legend(loc="lower right")
    if title:
        figure.suptitle(title)


def plot_training_curves(log_path: str | Path, out_path: str | Path, title: str | None = None) -> Path:
    """Write a PNG of the per-epoch training loss and validation metric of ``log_path``.

    Raises ``ValueError`` when the log holds no epoch record.
    """
    curves = training_curves(read_log(log_path))
    if not curves.epochs:
        raise ValueError(f"{log_path}: no per-epoch records (with 'epoch') to plot")
    figure = Figure(figsize=(10, 4), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    _draw(figure, curves, title)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_path, format="png")
    return out_path
