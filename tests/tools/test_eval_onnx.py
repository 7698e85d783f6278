from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.ops import box_iou

from rtdetr_spartan.data.coco_eval import CocoEvaluator
from rtdetr_spartan.data.dataloader import default_collate_fn
from rtdetr_spartan.data.shapes import make_detection_dataset
from rtdetr_spartan.deploy.evaluate import validation_dataset
from rtdetr_spartan.deploy.export import DeployModel
from rtdetr_spartan.deploy.from_config import load_config, model_info_from_config
from rtdetr_spartan.deploy.runtime import TorchPredictor
from rtdetr_spartan.solver.det_engine import evaluate
from tests.deploy.deploy_utils import R18_CONFIG
from tools.eval_onnx import main as eval_onnx_main
from tools.export_onnx import main as export_main

pytestmark = pytest.mark.slow  # every test exports a full model or runs a subprocess

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


def _torch_stats(setup: dict, backend: str) -> list[float]:
    """The training solver's evaluation path on the same weights and images."""
    dataset = validation_dataset(setup["ann"], setup["images"], (SIZE, SIZE))
    loader = DataLoader(dataset, batch_size=2, collate_fn=default_collate_fn)
    evaluator = CocoEvaluator(dataset.coco, backend=backend)
    summary = evaluate(
        setup["model"],
        setup["cfg"].build("postprocessor"),
        loader,
        evaluator,
        torch.device("cpu"),
        label_to_category=dataset.label_to_category,
    )
    return summary["stats"]


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
