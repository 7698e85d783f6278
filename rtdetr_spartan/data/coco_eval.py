# Follows the design of RT-DETR (lyuwenyu/RT-DETR, Apache-2.0).
"""COCO box evaluation over a run, merged across distributed ranks.

The reference's interface: ``update`` per batch, ``synchronize_between_processes``,
``accumulate``, ``summarize``. Unlike the reference, the evaluator keeps the detections
themselves (not per-image partial evaluations) and runs one ordinary COCOeval at the end, so its
numbers are by construction those of COCOeval on the same detections. Backends:
``faster_coco_eval`` (C++, default) and ``pycocotools``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["CocoEvaluator", "STAT_NAMES", "to_category_ids"]

logger = logging.getLogger(__name__)

BACKENDS: tuple[str, ...] = ("faster_coco_eval", "pycocotools")
IOU_TYPES: tuple[str, ...] = ("bbox",)
STAT_NAMES: tuple[str, ...] = (
    "AP",
    "AP50",
    "AP75",
    "AP_small",
    "AP_medium",
    "AP_large",
    "AR1",
    "AR10",
    "AR100",
    "AR_small",
    "AR_medium",
    "AR_large",
)


def to_category_ids(
    predictions: Mapping[int, Mapping[str, torch.Tensor]], label_to_category: Mapping[int, int]
) -> dict[int, dict[str, torch.Tensor]]:
    """Replace contiguous ``labels`` by dataset category ids (``dataset.label_to_category``).

    Use it when the postprocessor does not remap (``remap_mscoco_category`` false). A model
    with more classes than the dataset can predict labels that have no category: those
    detections are dropped (COCOeval would ignore them) with one warning per call.
    ``predictions``: {image_id: {"labels": [K], "boxes": [K, 4], "scores": [K], ...}}."""
    lut = torch.full((max(label_to_category) + 1,), -1, dtype=torch.int64)
    for label, cid in label_to_category.items():
        lut[label] = cid
    out: dict[int, dict[str, torch.Tensor]] = {}
    dropped: dict[int, int] = {}
    for image_id, pred in predictions.items():
        labels = pred["labels"].to(torch.int64).cpu()
        in_range = (labels >= 0) & (labels < len(lut))
        categories = torch.where(in_range, lut[labels.clamp(0, len(lut) - 1)], -1)
        known = categories >= 0
        if bool(known.all()):
            out[image_id] = {**pred, "labels": categories}
            continue
        for label in labels[~known].tolist():
            dropped[label] = dropped.get(label, 0) + 1
        keep = known.nonzero().flatten()
        out[image_id] = {
            k: (v[keep.to(v.device)] if torch.is_tensor(v) and v.shape[:1] == labels.shape else v)
            for k, v in pred.items()
        }
        out[image_id]["labels"] = categories[keep]
    if dropped:
        logger.warning(
            "dropped %d detections whose labels have no dataset category (label: count %s; "
            "the dataset has %d categories — is num_classes larger?)",
            sum(dropped.values()),
            dict(sorted(dropped.items())),
            len(label_to_category),
        )
    return out


@contextlib.contextmanager
def _captured_stdout() -> Iterator[io.StringIO]:
    """pycocotools prints progress and summaries; collect them for the logger instead."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        yield buffer


@contextlib.contextmanager
def _captured_output(coco_eval: Any) -> Iterator[io.StringIO]:
    """Collect what a COCOeval of either backend reports: pycocotools prints to stdout,
    faster_coco_eval calls its ``print_function``."""
    buffer = io.StringIO()

    def write(*args: Any) -> None:
        buffer.write(" ".join(str(a) for a in args) + "\n")

    previous = getattr(coco_eval, "print_function", None)
    if previous is not None:
        coco_eval.print_function = write
    try:
        with contextlib.redirect_stdout(buffer):
            yield buffer
    finally:
        if previous is not None:
            coco_eval.print_function = previous


def _coco_gt_dataset(coco_gt: Any) -> dict[str, Any]:
    """The annotation dict of a COCO object (either library), a dict, or a JSON path."""
    if isinstance(coco_gt, (str, Path)):
        with open(coco_gt) as f:
            return json.load(f)
    if isinstance(coco_gt, Mapping):
        return dict(coco_gt)
    dataset = getattr(coco_gt, "dataset", None)
    if isinstance(dataset, Mapping):
        return dict(dataset)
    raise TypeError(f"coco_gt must be a COCO object, an annotation dict or a JSON path, got {type(coco_gt).__name__}")


def _with_gt_defaults(dataset: dict[str, Any]) -> dict[str, Any]:
    """``dataset`` (a copy the caller owns) with the optional fields COCOeval reads filled in:
    ``iscrowd`` 0 and ``area`` the box's width x height where missing, as faster_coco_eval already
    assumes; pycocotools raises ``KeyError`` on them, so both backends now score a file the same."""
    for ann in dataset.get("annotations", []):
        ann.setdefault("iscrowd", 0)
        if "area" not in ann and len(ann.get("bbox", ())) == 4:
            ann["area"] = float(ann["bbox"][2]) * float(ann["bbox"][3])
    return dataset


class CocoEvaluator:
    """Collects detections per image and computes the 12 COCO box statistics.

    ``update`` takes ``{image_id: {"boxes": [K, 4] XYXY pixels of the original image,
    "scores": [K], "labels": [K] category ids}}``. Images passed to ``update`` without
    detections still count (their objects are misses); only updated images are evaluated.
    """

    def __init__(
        self, coco_gt: Any, iou_types: tuple[str, ...] | list[str] = ("bbox",), backend: str = "faster_coco_eval"
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown COCO backend '{backend}'; expected one of {BACKENDS}")
        unsupported = [t for t in iou_types if t not in IOU_TYPES]
        if unsupported or not iou_types:
            raise ValueError(f"iou_types {list(iou_types)} not supported; expected a subset of {IOU_TYPES}")
        self.backend = backend
        self.iou_types = tuple(iou_types)
        self.gt_dataset = _with_gt_defaults(copy.deepcopy(_coco_gt_dataset(coco_gt)))
        self.coco_gt = self._make_coco(self.gt_dataset)
        self._valid_image_ids = {int(img["id"]) for img in self.gt_dataset.get("images", [])}
        self._valid_category_ids = {int(c["id"]) for c in self.gt_dataset.get("categories", [])}
        self.category_names = {int(c["id"]): str(c.get("name", c["id"])) for c in self.gt_dataset.get("categories", [])}
        self.coco_eval: dict[str, Any] = {}
        self.stats: list[float] = []
        self.cleanup()

    def cleanup(self) -> None:
        """Forget all detections (start a new evaluation round)."""
        self._results: dict[int, list[dict[str, Any]]] = {}
        self._warned_unknown = False
        self.coco_eval = {}
        self.stats = []

    # ----------------------------------------------------------------- backend helpers
    def _make_coco(self, dataset: dict[str, Any]) -> Any:
        if self.backend == "faster_coco_eval":
            from faster_coco_eval import COCO

            return COCO(copy.deepcopy(dataset))
        from pycocotools.coco import COCO

        coco = COCO()
        coco.dataset = copy.deepcopy(dataset)
        with _captured_stdout():
            coco.createIndex()
        return coco

    def _make_cocoeval(self, coco_dt: Any) -> Any:
        if self.backend == "faster_coco_eval":
            from faster_coco_eval import COCOeval_faster

            return COCOeval_faster(self.coco_gt, coco_dt, iouType="bbox")
        from pycocotools.cocoeval import COCOeval

        return COCOeval(self.coco_gt, coco_dt, iouType="bbox")

    def _detections_coco(self) -> Any:
        """The collected detections as a COCO object of the backend (empty results allowed)."""
        # loadRes adds keys to the records it gets: hand it fresh ones.
        results = [{**r, "bbox": list(r["bbox"])} for r in self.results()]
        if results:
            with _captured_stdout():
                return self.coco_gt.loadRes(results)
        # loadRes refuses an empty list in pycocotools; an empty result set is still evaluable.
        empty = {k: copy.deepcopy(self.gt_dataset.get(k, [])) for k in ("images", "categories")}
        return self._make_coco({**empty, "annotations": []})

    # ----------------------------------------------------------------- collecting
    def update(self, predictions: Mapping[int, Mapping[str, torch.Tensor]]) -> None:
        """Add detections of some images (XYXY pixels, category ids); see the class doc."""
        for image_id, pred in predictions.items():
            image_id = int(image_id)
            if image_id not in self._valid_image_ids:
                raise KeyError(f"image id {image_id} is not in the ground-truth annotation set")
            self._results[image_id] = self._image_results(image_id, pred)

    def _image_results(self, image_id: int, pred: Mapping[str, torch.Tensor]) -> list[dict[str, Any]]:
        boxes = torch.as_tensor(pred["boxes"]).detach().to("cpu", torch.float64).reshape(-1, 4)
        scores = torch.as_tensor(pred["scores"]).detach().to("cpu", torch.float64).reshape(-1)
        labels = torch.as_tensor(pred["labels"]).detach().to("cpu", torch.int64).reshape(-1)
        if not len(boxes) == len(scores) == len(labels):
            raise ValueError(
                f"image {image_id}: {len(boxes)} boxes, {len(scores)} scores and {len(labels)} labels differ in count"
            )
        known = torch.tensor([c in self._valid_category_ids for c in labels.tolist()], dtype=torch.bool)
        if not bool(known.all()):
            self._warn_unknown(image_id, sorted(set(labels[~known].tolist())))
            boxes, scores, labels = boxes[known], scores[known], labels[known]
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1)
        return [
            {"image_id": image_id, "category_id": c, "bbox": b, "score": s}
            for b, s, c in zip(xywh.tolist(), scores.tolist(), labels.tolist())
        ]

    def _warn_unknown(self, image_id: int, unknown: list[int]) -> None:
        """Detections of categories absent from the ground truth are ignored, as COCOeval
        ignores them; warn once per round (contiguous labels passed by mistake look like this)."""
        if self._warned_unknown:
            return
        self._warned_unknown = True
        logger.warning(
            "image %d: category ids %s are not in the ground truth %s; such detections are ignored "
            "(if these are contiguous labels, map them with to_category_ids)",
            image_id,
            unknown,
            sorted(self._valid_category_ids),
        )

    def results(self) -> list[dict[str, Any]]:
        """COCO results records (XYWH boxes, category ids) of all images, by image id."""
        return [r for image_id in sorted(self._results) for r in self._results[image_id]]

    @property
    def img_ids(self) -> list[int]:
        return sorted(self._results)

    def synchronize_between_processes(self) -> None:
        """Gather detections of all ranks (every rank ends with the union). An image seen by
        several ranks (DistributedSampler pads by repeating samples) is kept once."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, self._results)
        merged: dict[int, list[dict[str, Any]]] = {}
        for part in gathered:
            for image_id, records in part.items():
                merged.setdefault(int(image_id), records)
        self._results = merged

    # ----------------------------------------------------------------- evaluating
    def accumulate(self) -> None:
        """Run COCOeval (evaluate + accumulate) over the updated images."""
        if not self._results:
            raise RuntimeError("CocoEvaluator.accumulate(): no images were added with update()")
        coco_eval = self._make_cocoeval(self._detections_coco())
        coco_eval.params.imgIds = self.img_ids
        with _captured_output(coco_eval) as out:
            coco_eval.evaluate()
            coco_eval.accumulate()
        logger.debug("%s", out.getvalue().rstrip())
        self.coco_eval = {"bbox": coco_eval}

    def summarize(self) -> list[float]:
        """Log the COCO summary and return its 12 statistics in COCOeval order (``STAT_NAMES``)."""
        coco_eval = self._evaluated()
        with _captured_output(coco_eval) as out:
            coco_eval.summarize()
        logger.info("IoU metric: bbox\n%s", out.getvalue().rstrip())
        self.stats = [float(s) for s in np.asarray(coco_eval.stats)[: len(STAT_NAMES)]]
        return list(self.stats)

    def _evaluated(self) -> Any:
        if "bbox" not in self.coco_eval:
            raise RuntimeError("call accumulate() before summarize() / per_class()")
        return self.coco_eval["bbox"]

    def per_class(self) -> list[dict[str, Any]]:
        """Per category: AP (IoU .50:.95) and AP50, area all, max detections 100; -1 where the
        evaluated images hold no object of the category."""
        coco_eval = self._evaluated()
        precision = np.asarray(coco_eval.eval["precision"])  # [T iou, R recall, K cat, A area, M maxdets]
        iou_thrs = np.asarray(coco_eval.params.iouThrs)
        t50 = int(np.argmin(np.abs(iou_thrs - 0.5)))
        rows = []
        for k, cid in enumerate(coco_eval.params.catIds):
            p = precision[:, :, k, 0, -1]
            rows.append(
                {
                    "category_id": int(cid),
                    "name": self.category_names.get(int(cid), str(cid)),
                    "ap": _mean_valid(p),
                    "ap50": _mean_valid(p[t50]),
                }
            )
        return rows

    def format_per_class_table(self) -> str:
        """A fixed-width text table of :meth:`per_class` for the log."""
        rows = self.per_class()
        width = max([len("category")] + [len(r["name"]) for r in rows])
        lines = [f"{'id':>5}  {'category':<{width}}  {'AP':>6}  {'AP50':>6}"]
        for r in rows:
            ap = f"{r['ap']:6.3f}" if r["ap"] >= 0 else f"{'-':>6}"
            ap50 = f"{r['ap50']:6.3f}" if r["ap50"] >= 0 else f"{'-':>6}"
            lines.append(f"{r['category_id']:>5}  {r['name']:<{width}}  {ap}  {ap50}")
        return "\n".join(lines)

    # ----------------------------------------------------------------- files
    def write_results(self, path: str | Path) -> Path:
        """Write the detections as a COCO results JSON (XYWH boxes, category ids)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.results()))
        return path

    def write_summary(self, path: str | Path) -> Path:
        """Write ``{"stats": {name: value}, "stats_list": [...], "per_class": [...]}`` as JSON."""
        stats = self.stats or self.summarize()
        summary = {
            "backend": self.backend,
            "num_images": len(self._results),
            "stats": dict(zip(STAT_NAMES, stats)),
            "stats_list": stats,
            "per_class": self.per_class(),
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary, indent=2))
        return path


def _mean_valid(values: np.ndarray) -> float:
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else -1.0
