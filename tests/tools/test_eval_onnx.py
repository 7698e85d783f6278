from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.ops import box_iou

from rtdetr_spartan.data.categories import MSCOCO_CATEGORY_TO_NAME, MSCOCO_LABEL_TO_CATEGORY
from rtdetr_spartan.data.coco_eval import CocoEvaluator
from rtdetr_spartan.data.dataloader import default_collate_fn
from rtdetr_spartan.data.shapes import make_detection_dataset
from rtdetr_spartan.deploy.evaluate import (
    evaluate_predictor,
    validation_dataset,
)
from rtdetr_spartan.deploy.export import DeployModel
from rtdetr_spartan.deploy.from_config import load_config, model_info_from_config
from rtdetr_spartan.deploy.loading import load_predictor
from rtdetr_spartan.deploy.torch_predictor import TorchPredictor
from rtdetr_spartan.solver.det_solver import coco_evaluate
from tests.deploy.deploy_utils import R18_CONFIG
from tools.eval_onnx import main as eval_onnx_main
from tools.export_onnx import main as export_main

SIZE = 128
OVERRIDES = ["num_classes=4", "remap_mscoco_category=False", f"eval_spatial_size=[{SIZE},{SIZE}]"]


def _pseudo_ground_truth(predictor: TorchPredictor, ann_file: Path, img_dir: Path, out: Path) -> Path:
    """The shapes annotation file with its objects replaced by the model's own top detections
    (up to 3 non-overlapping boxes inside each image), so the model scores a high, non-trivial AP
    that any error of the exported graph would lower."""
    coco = json.loads(ann_file.read_text())
    category_ids = sorted(c["id"] for c in coco["categories"])
    annotations = []
    for image in coco["images"]:
        with Image.open(img_dir / image["file_name"]) as opened:
            dets = predictor.predict([opened.convert("RGB")], threshold=0.0)[0]
        chosen: list[torch.Tensor] = []
        for det in dets:
            box = torch.tensor(det.box)
            inside = bool((box[:2] >= 0).all() and box[2] <= image["width"] and box[3] <= image["height"])
            if not inside or (box[2:] - box[:2]).min() < 4:
                continue
            if chosen and box_iou(box[None], torch.stack(chosen)).max() > 0.3:
                continue
            chosen.append(box)
            x0, y0, x1, y1 = det.box
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image["id"],
                    "iscrowd": 0,
                    "category_id": category_ids[det.label],
                    "area": (x1 - x0) * (y1 - y0),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                }
            )
            if len(chosen) == 3:
                break
    out.write_text(json.dumps({**coco, "annotations": annotations}))
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("eval")
    paths = make_detection_dataset(root / "shapes", train=0, val=4, size=160)
    torch.manual_seed(0)
    cfg = load_config(R18_CONFIG, OVERRIDES)
    model = cfg.build("model")
    checkpoint = root / "model.pth"
    torch.save({"model": model.state_dict()}, checkpoint)
    onnx_path = root / "model.onnx"
    assert (
        export_main(
            [
                "-c",
                str(R18_CONFIG),
                "-r",
                str(checkpoint),
                "-o",
                str(onnx_path),
                "-u",
                *OVERRIDES,
                "--size",
                str(SIZE),
                str(SIZE),
                "--no-check",
            ]
        )
        == 0
    )
    module = DeployModel(model, cfg.build("postprocessor"))
    predictor = TorchPredictor(module, model_info_from_config(cfg))
    images = root / "shapes" / "val"
    ann = _pseudo_ground_truth(predictor, paths["val"], images, root / "pseudo_val.json")
    return {"cfg": cfg, "model": model, "onnx": onnx_path, "ann": ann, "images": images, "root": root}


def _torch_stats(
    setup: dict, backend: str, ann: Path | None = None, label_to_category: dict[int, int] | None = None
) -> list[float]:
    """The training solver's evaluation path on the same weights and images (labels scored as
    ``label_to_category``, default the annotation file's own mapping)."""
    dataset = validation_dataset(ann or setup["ann"], setup["images"], (SIZE, SIZE))
    loader = DataLoader(dataset, batch_size=2, collate_fn=default_collate_fn)
    evaluator = CocoEvaluator(dataset.coco, backend=backend)
    summary = coco_evaluate(
        setup["model"],
        setup["cfg"].build("postprocessor"),
        loader,
        evaluator,
        torch.device("cpu"),
        label_to_category=label_to_category or dataset.label_to_category,
    )
    return summary["stats"]


@pytest.mark.slow  # the tests that use setup export a full model
@pytest.mark.parametrize("backend", ["faster_coco_eval", "pycocotools"])
def test_onnx_map_equals_torch_map(setup: dict, backend: str) -> None:
    summary_path = setup["root"] / f"summary_{backend}.json"
    argv = [
        "--onnx",
        str(setup["onnx"]),
        "--ann",
        str(setup["ann"]),
        "--images",
        str(setup["images"]),
        "--backend",
        backend,
        "--batch-size",
        "3",
        "--summary",
        str(summary_path),
    ]
    assert eval_onnx_main(argv) == 0
    onnx_stats = json.loads(summary_path.read_text())["stats_list"]
    torch_stats = _torch_stats(setup, backend)
    assert torch_stats[0] > 0.3 and torch_stats[1] > 0.5  # AP, AP50: the comparison is not 0 == 0
    assert onnx_stats == pytest.approx(torch_stats, abs=1e-3)


def _eval_argv(setup: dict, onnx_path: Path, ann: Path, summary: Path, *extra: str) -> list[str]:
    return [
        "--onnx",
        str(onnx_path),
        "--ann",
        str(ann),
        "--images",
        str(setup["images"]),
        "--summary",
        str(summary),
        *extra,
    ]


@pytest.mark.slow
def test_openvino_map_equals_onnxruntime_map(setup: dict) -> None:
    stats = {}
    for runtime in ("onnxruntime", "openvino"):
        summary = setup["root"] / f"summary_runtime_{runtime}.json"
        argv = _eval_argv(setup, setup["onnx"], setup["ann"], summary, "--runtime", runtime, "--threads", "1")
        assert eval_onnx_main(argv) == 0
        stats[runtime] = json.loads(summary.read_text())["stats_list"]
    assert stats["onnxruntime"][0] > 0.3  # AP: the comparison is not 0 == 0
    assert stats["openvino"] == pytest.approx(stats["onnxruntime"], abs=1e-3)


def _with_class_names(onnx_path: Path, names: dict[int, str], out: Path) -> Path:
    """A copy of the exported model whose metadata stores ``names`` as its class names."""
    model = onnx.load(str(onnx_path))
    for prop in model.metadata_props:
        if prop.key == "class_names":
            prop.value = json.dumps({str(k): v for k, v in names.items()})
    onnx.save(model, str(out))
    return out


def _file_names(ann: Path) -> dict[int, str]:
    categories = sorted(json.loads(ann.read_text())["categories"], key=lambda c: c["id"])
    return {label: c["name"] for label, c in enumerate(categories)}


@pytest.mark.slow
def test_differing_class_names_warn(setup: dict, caplog: pytest.LogCaptureFixture) -> None:
    names = _file_names(setup["ann"])
    assert eval_onnx_main(_eval_argv(setup, setup["onnx"], setup["ann"], setup["root"] / "s0.json")) == 0
    assert "class names" not in caplog.text  # placeholder names (class_<i>) are not compared
    same = _with_class_names(setup["onnx"], names, setup["root"] / "same.onnx")
    assert eval_onnx_main(_eval_argv(setup, same, setup["ann"], setup["root"] / "s1.json")) == 0
    assert "differ" not in caplog.text
    one_off = _with_class_names(setup["onnx"], {**names, 1: "hexagon"}, setup["root"] / "one_off.onnx")
    assert eval_onnx_main(_eval_argv(setup, one_off, setup["ann"], setup["root"] / "s2.json")) == 0
    assert "1 of 4 class names of the model differ" in caplog.text and "'hexagon'" in caplog.text


@pytest.mark.slow
def test_no_matching_class_fails(setup: dict, caplog: pytest.LogCaptureFixture) -> None:
    coco_names = {0: "person", 1: "bicycle", 2: "car", 3: "motorcycle"}
    other = _with_class_names(setup["onnx"], coco_names, setup["root"] / "coco_names.onnx")
    assert eval_onnx_main(_eval_argv(setup, other, setup["ann"], setup["root"] / "s3.json")) == 1
    assert "none of the model's 4 class names matches" in caplog.text and "'person'" in caplog.text
    assert not (setup["root"] / "s3.json").exists()
    # a COCO model (remapped category ids, COCO names) on the shapes file, whose ids 3, 7, 11, 20
    # are COCO ids too (car, train, fire hydrant, horse): the ids match, the names do not
    remapped = setup["root"] / "remapped.onnx"
    model = onnx.load(str(setup["onnx"]))
    values = {
        "remap_mscoco_category": "true",
        "num_classes": "80",
        "class_names": json.dumps(
            {str(label): MSCOCO_CATEGORY_TO_NAME[cid] for label, cid in MSCOCO_LABEL_TO_CATEGORY.items()}
        ),
    }
    for prop in model.metadata_props:
        prop.value = values.get(prop.key, prop.value)
    onnx.save(model, str(remapped))
    caplog.clear()
    assert eval_onnx_main(_eval_argv(setup, remapped, setup["ann"], setup["root"] / "s4.json")) == 1
    assert "none of the model's 80 class names matches" in caplog.text and "'car', file 'square'" in caplog.text


# ----------------------------------------------------------------- the model's stored category ids
STORED = {0: 3, 1: 7, 2: 11, 3: 20}  # the shapes file's category ids, as a model trained on it stores them


def _subset_file(ann: Path, drop: int, out: Path, extra_category: dict | None = None) -> Path:
    """``ann`` without category ``drop`` and its annotations (plus ``extra_category``, unannotated)."""
    coco = json.loads(ann.read_text())
    coco["categories"] = [c for c in coco["categories"] if c["id"] != drop] + (
        [extra_category] if extra_category else []
    )
    coco["annotations"] = [a for a in coco["annotations"] if a["category_id"] != drop]
    out.write_text(json.dumps(coco))
    return out


def _with_stored_categories(onnx_path: Path, ann: Path, out: Path) -> Path:
    """A copy of the exported model storing ``STORED`` and the file's names, as an export from a
    config whose validation file is ``ann`` does."""
    names = {c["id"]: c["name"] for c in json.loads(ann.read_text())["categories"]}
    model = onnx.load(str(onnx_path))
    values = {
        "label_to_category": json.dumps({str(k): v for k, v in STORED.items()}),
        "class_names": json.dumps({str(k): names[v] for k, v in STORED.items()}),
    }
    for prop in model.metadata_props:
        prop.value = values.get(prop.key, prop.value)
    onnx.save(model, str(out))
    return out


@pytest.mark.slow
def test_subset_file_is_scored_by_the_models_stored_ids(setup: dict, caplog: pytest.LogCaptureFixture) -> None:
    annotated = {a["category_id"] for a in json.loads(setup["ann"].read_text())["annotations"]}
    assert annotated & {11, 20}  # without 7, the file's own order scores labels 2 / 3 as 20 / none
    subset = _subset_file(setup["ann"], 7, setup["root"] / "subset.json")
    stored = _with_stored_categories(setup["onnx"], setup["ann"], setup["root"] / "stored.onnx")
    summary = setup["root"] / "s_subset.json"
    caplog.clear()
    assert eval_onnx_main(_eval_argv(setup, stored, subset, summary)) == 0
    assert "differ" not in caplog.text  # the names agree under the stored mapping
    onnx_stats = json.loads(summary.read_text())["stats_list"]
    expected = _torch_stats(setup, "faster_coco_eval", subset, STORED)
    assert expected[0] > 0.3  # the comparison is not 0 == 0
    assert onnx_stats == pytest.approx(expected, abs=1e-3)
    # a category the model does not know, unannotated, changes nothing
    listed = _subset_file(setup["ann"], 7, setup["root"] / "listed.json", {"id": 99, "name": "star"})
    assert eval_onnx_main(_eval_argv(setup, stored, listed, setup["root"] / "s_listed.json")) == 0
    assert json.loads((setup["root"] / "s_listed.json").read_text())["stats_list"] == pytest.approx(onnx_stats)


@pytest.mark.slow
def test_annotated_category_the_model_does_not_know_fails(setup: dict, caplog: pytest.LogCaptureFixture) -> None:
    coco = json.loads(setup["ann"].read_text())
    coco["categories"].append({"id": 99, "name": "star"})
    coco["annotations"][0]["category_id"] = 99
    unknown = setup["root"] / "unknown.json"
    unknown.write_text(json.dumps(coco))
    stored = _with_stored_categories(setup["onnx"], setup["ann"], setup["root"] / "stored_u.onnx")
    caplog.clear()
    assert eval_onnx_main(_eval_argv(setup, stored, unknown, setup["root"] / "s_unknown.json")) == 1
    assert f"{unknown} has annotated categories the model does not know: 99 ('star')" in caplog.text
    assert "[3, 7, 11, 20]" in caplog.text and not (setup["root"] / "s_unknown.json").exists()


@pytest.mark.slow
def test_batch_size_below_one_is_refused_by_the_library(setup: dict) -> None:
    predictor = load_predictor(setup["onnx"], "onnxruntime", threads=1)
    with pytest.raises(ValueError, match="batch_size must be a positive integer .*got 0"):
        evaluate_predictor(predictor, setup["ann"], setup["images"], batch_size=0)


@pytest.mark.parametrize(
    "argument, value, expected",
    [
        ("--batch-size", "0", "--batch-size must be a positive number of images, got 0"),
        ("--threads", "0", "--threads must be >= 1"),
    ],
)
def test_bad_numbers_are_named_before_loading(
    tmp_path: Path, capsys: pytest.CaptureFixture, argument: str, value: str, expected: str
) -> None:
    argv = ["--onnx", str(tmp_path / "never_read.onnx"), "--ann", "a.json", "--images", "img", argument, value]
    with pytest.raises(SystemExit) as info:
        eval_onnx_main(argv)
    assert info.value.code == 2 and expected in capsys.readouterr().err
