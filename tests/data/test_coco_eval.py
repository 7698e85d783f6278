from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from rtdetr_spartan.data.coco_eval import STAT_NAMES, CocoEvaluator, to_category_ids

BACKENDS = ("faster_coco_eval", "pycocotools")
CATEGORIES = ((1, "ant"), (5, "bee"), (9, "cow"), (13, "dog"))  # "dog" has no ground truth


def make_ground_truth(seed: int = 0, num_images: int = 8) -> dict[str, Any]:
    """Images of 640x480 with small, medium and large boxes and one crowd region."""
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "width": 640, "height": 480})
        for _ in range(int(rng.integers(1, 6))):
            side = float(rng.choice([rng.uniform(8, 30), rng.uniform(35, 90), rng.uniform(100, 300)]))
            w, h = side, side * float(rng.uniform(0.6, 1.4))
            x, y = float(rng.uniform(0, 640 - w)), float(rng.uniform(0, 480 - min(h, 470)))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(rng.choice([1, 5, 9])),
                    "bbox": [x, y, w, min(h, 480 - y)],
                    "area": w * min(h, 480 - y),
                    "iscrowd": 0,
                }
            )
    annotations.append(
        {
            "id": len(annotations) + 1,
            "image_id": 1,
            "category_id": 5,
            "bbox": [300.0, 200.0, 200.0, 150.0],
            "area": 30000.0,
            "iscrowd": 1,
        }
    )
    return {"images": images, "annotations": annotations, "categories": [{"id": c, "name": n} for c, n in CATEGORIES]}


def make_detections(gt: dict[str, Any], seed: int = 1) -> dict[int, dict[str, torch.Tensor]]:
    """Jittered copies of most objects (some with the wrong class) plus false positives, as the
    evaluator takes them: XYXY float64 pixels, scores, category ids. Image 2 gets none."""
    rng = np.random.default_rng(seed)
    category_ids = [c["id"] for c in gt["categories"]]
    out = {}
    for img in gt["images"]:
        boxes, scores, labels = [], [], []
        for ann in (a for a in gt["annotations"] if a["image_id"] == img["id"]):
            if rng.random() < 0.85:
                x, y, w, h = ann["bbox"]
                j = rng.normal(0, 0.08, 4) * [w, h, w, h]
                boxes.append([x + j[0], y + j[1], x + w + j[2], y + h + j[3]])
                scores.append(float(rng.uniform(0.05, 1)))
                labels.append(ann["category_id"] if rng.random() < 0.9 else int(rng.choice(category_ids)))
        for _ in range(int(rng.integers(0, 4))):
            x, y = rng.uniform(0, 500, 2)
            boxes.append([x, y, x + rng.uniform(5, 120), y + rng.uniform(5, 120)])
            scores.append(float(rng.uniform(0, 0.6)))
            labels.append(int(rng.choice(category_ids)))
        if img["id"] == 2:
            boxes, scores, labels = [], [], []
        out[img["id"]] = {
            "boxes": torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4),
            "scores": torch.tensor(scores, dtype=torch.float64),
            "labels": torch.tensor(labels, dtype=torch.int64),
        }
    return out


def as_results(detections: dict[int, dict[str, torch.Tensor]]) -> list[dict[str, Any]]:
    records = []
    for image_id, d in sorted(detections.items()):
        for (x1, y1, x2, y2), s, c in zip(d["boxes"].tolist(), d["scores"].tolist(), d["labels"].tolist()):
            records.append({"image_id": image_id, "category_id": c, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": s})
    return records


def direct_cocoeval(
    gt: dict[str, Any], results: list[dict[str, Any]], img_ids: list[int], cat_ids: list[int] | None = None
) -> COCOeval:
    """pycocotools run by hand, the way its README does."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.params.imgIds = img_ids
        if cat_ids is not None:
            ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def run_evaluator(gt: Any, detections: dict[int, dict[str, torch.Tensor]], backend: str) -> CocoEvaluator:
    evaluator = CocoEvaluator(gt, iou_types=("bbox",), backend=backend)
    ids = sorted(detections)
    for chunk in (ids[: len(ids) // 2], ids[len(ids) // 2 :]):  # several update() calls, like batches
        evaluator.update({i: detections[i] for i in chunk})
    evaluator.synchronize_between_processes()
    evaluator.accumulate()
    evaluator.summarize()
    return evaluator


@pytest.fixture(scope="module")
def gt() -> dict[str, Any]:
    return make_ground_truth()


@pytest.fixture(scope="module")
def detections(gt: dict[str, Any]) -> dict[int, dict[str, torch.Tensor]]:
    dets = make_detections(gt)
    del dets[8]  # image 8 is never evaluated
    return dets


@pytest.mark.parametrize("backend", BACKENDS)
def test_stats_equal_direct_pycocotools(gt: dict, detections: dict, backend: str) -> None:
    direct = direct_cocoeval(gt, as_results(detections), sorted(detections))
    evaluator = run_evaluator(gt, detections, backend)
    assert len(evaluator.stats) == 12 == len(STAT_NAMES)
    assert evaluator.stats == [float(s) for s in direct.stats]
    assert 0.1 < evaluator.stats[0] < 0.95  # a meaningful, non-degenerate case
    assert all(s >= 0 for s in evaluator.stats)  # every area range holds objects


def test_backends_agree_on_generated_dataset(shapes_root: Path) -> None:
    ann_file = shapes_root / "annotations" / "instances_train.json"
    gt_dict = json.loads(ann_file.read_text())
    dets = make_detections(gt_dict, seed=5)
    stats = [run_evaluator(ann_file, dets, backend).stats for backend in BACKENDS]
    assert stats[0] == stats[1]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(ann_file))  # a COCO object is accepted as ground truth too
    assert run_evaluator(coco, dets, "faster_coco_eval").stats == stats[0]


def test_ground_truth_without_area_or_iscrowd_scores_alike_in_both_backends(gt: dict, detections: dict) -> None:
    """Converters often omit the optional ``area`` / ``iscrowd``; pycocotools used to raise
    KeyError on them at the end of an epoch. Both default to the box area and 0."""
    complete = copy.deepcopy(gt)
    complete["annotations"] = [a for a in complete["annotations"] if not a["iscrowd"]]
    for ann in complete["annotations"]:
        ann["area"] = ann["bbox"][2] * ann["bbox"][3]
    bare = copy.deepcopy(complete)
    for ann in bare["annotations"]:
        del ann["area"], ann["iscrowd"]
    expected = run_evaluator(complete, detections, "pycocotools").stats
    assert 0.1 < expected[0] < 0.95
    for backend in BACKENDS:
        assert run_evaluator(bare, detections, backend).stats == pytest.approx(expected, abs=1e-12)
    assert "area" not in bare["annotations"][0]  # the caller's dict is left as it is


@pytest.mark.parametrize("backend", BACKENDS)
def test_per_class_equals_single_category_runs(gt: dict, detections: dict, backend: str) -> None:
    evaluator = run_evaluator(gt, detections, backend)
    rows = evaluator.per_class()
    assert [(r["category_id"], r["name"]) for r in rows] == list(CATEGORIES)
    results = as_results(detections)
    for row in rows[:3]:
        single = direct_cocoeval(gt, results, sorted(detections), cat_ids=[row["category_id"]])
        assert row["ap"] == pytest.approx(single.stats[0], abs=1e-12)
        assert row["ap50"] == pytest.approx(single.stats[1], abs=1e-12)
    assert rows[3]["ap"] == -1.0 and rows[3]["ap50"] == -1.0  # no ground truth for "dog"
    table = evaluator.format_per_class_table()
    assert len(table.splitlines()) == 5 and "bee" in table and f"{rows[1]['ap']:6.3f}" in table


def test_results_and_summary_files(tmp_path: Path, gt: dict, detections: dict) -> None:
    evaluator = run_evaluator(gt, detections, "faster_coco_eval")
    results_path = evaluator.write_results(tmp_path / "out" / "results.json")
    reloaded = json.loads(results_path.read_text())
    assert reloaded == as_results(detections)
    assert direct_cocoeval(gt, reloaded, sorted(detections)).stats.tolist() == evaluator.stats
    summary = json.loads(evaluator.write_summary(tmp_path / "out" / "summary.json").read_text())
    assert summary["stats"] == dict(zip(STAT_NAMES, evaluator.stats))
    assert summary["per_class"] == evaluator.per_class()


def test_summary_goes_to_the_log_not_stdout(
    gt: dict, detections: dict, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    with caplog.at_level(logging.INFO, logger="rtdetr_spartan.data.coco_eval"):
        for backend in BACKENDS:
            run_evaluator(gt, detections, backend)
    assert capsys.readouterr().out == ""
    assert sum("Average Precision" in r.getMessage() for r in caplog.records) == 2


def test_no_detections_at_all(gt: dict) -> None:
    empty = {
        i: {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
        for i in (1, 2, 3)
    }
    stats = [run_evaluator(gt, empty, backend).stats for backend in BACKENDS]
    assert stats[0] == stats[1]
    assert stats[0][0] == 0.0 and stats[0][8] == 0.0


def test_errors(gt: dict, detections: dict, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ValueError, match="pycocotools"):
        CocoEvaluator(gt, backend="detectron")
    with pytest.raises(ValueError, match="segm"):
        CocoEvaluator(gt, iou_types=("segm",))
    evaluator = CocoEvaluator(gt)
    with pytest.raises(RuntimeError, match="update"):
        evaluator.accumulate()
    with pytest.raises(KeyError, match="999"):
        evaluator.update({999: detections[1]})
    # unknown category ids: ignored as COCOeval ignores them, with a warning
    contiguous = {**detections[1], "labels": torch.full_like(detections[1]["labels"], 2)}
    with caplog.at_level("WARNING"):
        evaluator.update({1: contiguous})
    assert "to_category_ids" in caplog.text and evaluator.results() == []
    with pytest.raises(RuntimeError, match="accumulate"):
        evaluator.per_class()


def test_to_category_ids(caplog: pytest.LogCaptureFixture) -> None:
    preds = {4: {"boxes": torch.zeros(3, 4), "scores": torch.ones(3), "labels": torch.tensor([0, 2, 1])}}
    mapped = to_category_ids(preds, {0: 1, 1: 5, 2: 9})
    assert mapped[4]["labels"].tolist() == [1, 9, 5] and mapped[4]["boxes"] is preds[4]["boxes"]
    # a head with more classes than the dataset: labels without a category are dropped
    boxes = torch.arange(12.0).view(3, 4)
    wide = {4: {"boxes": boxes, "scores": torch.tensor([0.9, 0.8, 0.7]), "labels": torch.tensor([3, 2, 7])}}
    with caplog.at_level("WARNING"):
        mapped = to_category_ids(wide, {0: 1, 1: 5, 2: 9})
    assert mapped[4]["labels"].tolist() == [9] and mapped[4]["scores"].tolist() == [pytest.approx(0.8)]
    assert mapped[4]["boxes"].tolist() == [boxes[1].tolist()]
    assert "dropped 2 detections" in caplog.text and "3 categories" in caplog.text


def _distributed_worker(rank: int, world_size: int, store: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        gt_dict = make_ground_truth()
        dets = make_detections(gt_dict)
        # rank 0 gets images 1..5, rank 1 gets 5..8: image 5 is seen twice (sampler padding)
        mine = {i: d for i, d in dets.items() if (i <= 5 if rank == 0 else i >= 5)}
        evaluator = CocoEvaluator(gt_dict)
        evaluator.update(mine)
        evaluator.synchronize_between_processes()
        evaluator.accumulate()
        report = {"stats": evaluator.summarize(), "ids": evaluator.img_ids}
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(report))
    finally:
        dist.destroy_process_group()


def test_synchronize_between_processes(tmp_path: Path, gt: dict) -> None:
    # fork: the children reuse the imported modules, which keeps this test to a couple of seconds
    mp.start_processes(
        _distributed_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True, start_method="fork"
    )
    expected = run_evaluator(gt, make_detections(gt), "faster_coco_eval").stats
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["ids"] == list(range(1, 9))
        assert got["stats"] == expected
