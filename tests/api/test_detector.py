"""The Python API's Detector on tiny generated data: overrides, every kind of prediction
source (fast, untrained tiny model), and train / val / predict / export / load on a COCO and a
YOLO dataset made by the tests (slow)."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rtdetr_spartan import Classifier, Detector
from rtdetr_spartan.api.results import Detections
from rtdetr_spartan.data.shapes import SHAPE_CATEGORIES, make_detection_dataset, make_yolo_dataset
from rtdetr_spartan.deploy.loading import load_predictor
from rtdetr_spartan.deploy.video import VideoWriter
from rtdetr_spartan.misc.checkpoint import CheckpointError, load_checkpoint
from tests.cls_utils import SHAPES_CLS_CONFIG
from tests.train_utils import TINY_CONFIG

SHAPE_NAMES = [name for _, name in SHAPE_CATEGORIES]


@pytest.fixture(scope="module")
def coco_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("api_coco")
    make_detection_dataset(root, train=4, val=2, size=64, seed=0)
    return root


@pytest.fixture(scope="module")
def untrained(coco_data: Path) -> Detector:
    return Detector(
        TINY_CONFIG,
        device="cpu",
        **{"val_dataloader.dataset.ann_file": str(coco_data / "annotations" / "instances_val.json")},
    )


def _image(coco_data: Path) -> Path:
    return sorted((coco_data / "val").iterdir())[0]


def _same(a: Detections, b: Detections) -> None:
    assert a.names == b.names
    np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
    np.testing.assert_array_equal(a.labels, b.labels)


# ----------------------------------------------------------------------------- fast
def test_overrides_strings_then_keywords_with_dotted_keys() -> None:
    det = Detector(
        TINY_CONFIG, "epochs=3", "HybridEncoder.hidden_dim=32", epochs=5, **{"RTDETRTransformer.num_queries": 7}
    )
    cfg = det.config.resolve().yaml_cfg
    assert cfg["epochs"] == 5 and cfg["HybridEncoder"]["hidden_dim"] == 32
    assert cfg["RTDETRTransformer"]["num_queries"] == 7 and cfg["RTDETRTransformer"]["hidden_dim"] == 64


def test_backbone_weights_become_the_backbones_pretrained() -> None:
    det = Detector(TINY_CONFIG, backbone_weights="runs/cls/best.pth")
    assert det.config.resolve().yaml_cfg["PResNet"]["pretrained"] == "runs/cls/best.pth"


def test_task_mismatch_names_the_other_class() -> None:
    with pytest.raises(ValueError, match="task: detection.*use Classifier"):
        Detector(SHAPES_CLS_CONFIG)
    with pytest.raises(ValueError, match="task: classification.*use Detector"):
        Classifier(TINY_CONFIG)


def test_load_refuses_a_checkpoint_without_config(tmp_path: Path) -> None:
    weights = tmp_path / "weights.pth"
    torch.save({"model": {"w": torch.zeros(1)}}, weights)
    with pytest.raises(CheckpointError, match=r"weights\.pth stores no config.*config="):
        Detector.load(weights)


def test_predict_gives_the_same_detections_for_every_source_kind(untrained: Detector, coco_data: Path) -> None:
    path = _image(coco_data)
    pil = Image.open(path).convert("RGB")
    array = np.array(pil)
    (by_path,) = untrained.predict(path, threshold=0.0)
    assert by_path.source == str(path) and by_path.frame is None and by_path.image_size == pil.size
    assert len(by_path) == 10 and by_path.boxes.shape == (10, 4)  # num_top_queries of the tiny config
    assert set(by_path.names) <= set(SHAPE_NAMES)
    assert list(by_path.scores) == sorted(by_path.scores, reverse=True)
    uint8 = torch.from_numpy(array).permute(2, 0, 1)
    results = untrained.predict([str(path), pil, array, uint8, uint8.float() / 255], threshold=0.0, batch_size=2)
    assert len(results) == 5
    for other in results:
        _same(other, by_path)
    assert [r.source for r in results] == [str(path), None, None, None, None]


def test_predict_on_a_folder_and_a_batch_tensor(untrained: Detector, coco_data: Path) -> None:
    folder = untrained.predict(coco_data / "val", threshold=0.3)
    assert [r.source for r in folder] == [str(p) for p in sorted((coco_data / "val").iterdir())]
    assert all((r.scores >= 0.3).all() for r in folder)
    batch = torch.rand(3, 3, 48, 40)
    assert [r.image_size for r in untrained.predict(batch, threshold=0.0)] == [(40, 48)] * 3


def test_predict_streams_a_video_frame_by_frame(untrained: Detector, coco_data: Path, tmp_path: Path) -> None:
    frame = Image.open(_image(coco_data)).convert("RGB")
    video = tmp_path / "clip.mp4"
    writer = VideoWriter(video, frame.width, frame.height, 5)
    for _ in range(3):
        writer.write(frame)
    writer.close()
    frames = untrained.predict(video, threshold=0.0)
    assert inspect.isgenerator(frames)
    results = list(frames)
    assert [r.frame for r in results] == [0, 1, 2] and {r.source for r in results} == {str(video)}
    assert all(len(r) == 10 for r in results)


def test_result_to_dict_and_plot(untrained: Detector, coco_data: Path) -> None:
    (result,) = untrained.predict(_image(coco_data), threshold=0.0)
    record = result.to_dict()
    assert (record["width"], record["height"]) == result.image_size
    np.testing.assert_allclose(np.array([d["box"] for d in record["detections"]]), result.boxes, atol=1e-4)
    assert [d["category_id"] for d in record["detections"]] == result.labels.tolist()
    assert result.plot().size == result.image_size


def test_bad_sources_are_named(untrained: Detector, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"source\[1\].*HWC RGB uint8.*\(3, 8, 8\)"):
        untrained.predict([np.zeros((8, 8, 3), np.uint8), np.zeros((3, 8, 8), np.uint8)])
    with pytest.raises(ValueError, match=r"tensor image must be \[3, H, W\]"):
        untrained.predict(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"float tensor image holds values in \[0, 1\]"):
        untrained.predict(torch.full((3, 8, 8), 2.0))
    with pytest.raises(TypeError, match="cannot predict on a int"):
        untrained.predict(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"clip\.mp4 is a video"):
        untrained.predict([tmp_path / "clip.mp4"])
    with pytest.raises(ValueError, match=r"threshold is a score in \[0, 1\]"):
        untrained.predict(np.zeros((8, 8, 3), np.uint8), threshold=1.5)


def test_benchmark_measures_this_model_at_the_configs_size(untrained: Detector) -> None:
    result = untrained.benchmark(runs=2, warmup=1, flops=False)
    params = sum(p.numel() for p in untrained.config.resolve().build("model").parameters())
    assert (result["size"], result["batch"], result["backend"]) == (64, 1, "torch")
    assert result["params"] == params and result["gflops"] is None and result["runs"] == 2


def test_visualize_writes_cam_and_feature_figures(untrained: Detector, coco_data: Path, tmp_path: Path) -> None:
    image = _image(coco_data)
    written = untrained.visualize(image, output_dir=tmp_path / "cam", top_k=2)
    assert written == [tmp_path / "cam" / f"{image.stem}_cam.png", tmp_path / "cam" / f"{image.stem}_features.png"]
    assert all(Image.open(p).size[0] > 64 for p in written)


# ----------------------------------------------------------------------------- slow: train once per layout
def _tiny_detector() -> Detector:
    return Detector(TINY_CONFIG, "print_freq=1", device="cpu")


@pytest.fixture(scope="module")
def trained_coco(coco_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Detector, dict, Path]:
    out = tmp_path_factory.mktemp("api_coco_run") / "out"
    det = _tiny_detector()
    metrics = det.train(data=coco_data, epochs=1, batch_size=2, output_dir=out)
    return det, metrics, out


@pytest.mark.slow
def test_train_on_coco_writes_the_solvers_checkpoints_and_returns_final_and_best(
    trained_coco: tuple[Detector, dict, Path],
) -> None:
    det, metrics, out = trained_coco
    assert det.checkpoint == out / "best.pth" and (out / "last.pth").is_file() and (out / "log.txt").is_file()
    assert metrics["final"]["epoch"] == 0 and metrics["best"]["epoch"] == 0
    assert metrics["best"]["metric"] == "AP" and metrics["best"]["value"] == metrics["best"]["AP"]
    assert set(metrics["final"]["per_class"]) == set(SHAPE_NAMES)
    ckpt = load_checkpoint(out / "best.pth")
    assert ckpt["config"]["train_dataloader"]["batch_size"] == 2 and ckpt["config"]["epochs"] == 1


@pytest.mark.slow
def test_val_and_load_give_the_trained_models_metrics_and_detections(
    trained_coco: tuple[Detector, dict, Path], coco_data: Path
) -> None:
    det, metrics, _ = trained_coco
    stats = det.val()
    assert set(stats) >= {"AP", "AP50", "AP75", "AR100", "per_class", "num_images"}
    assert stats["num_images"] == 2 and set(stats["per_class"]) == set(SHAPE_NAMES)
    assert stats["AP"] == pytest.approx(metrics["best"]["AP"], abs=1e-6)
    loaded = Detector.load(det.checkpoint)
    assert loaded.val(data=coco_data)["AP"] == pytest.approx(stats["AP"], abs=1e-6)
    image = _image(coco_data)
    _same(loaded.predict(image, threshold=0.0)[0], det.predict(image, threshold=0.0)[0])


@pytest.mark.slow
def test_overwrite_refuses_to_delete_the_weights_it_starts_from(
    trained_coco: tuple[Detector, dict, Path], coco_data: Path
) -> None:
    det, _, out = trained_coco
    with pytest.raises(ValueError, match=r"overwrite=True would delete .*best\.pth"):
        det.train(data=coco_data, output_dir=out, overwrite=True)
    assert (out / "best.pth").is_file() and "overwrite" not in det.config.overrides


@pytest.mark.slow
def test_resume_auto_extends_the_run(coco_data: Path, tmp_path: Path) -> None:
    det = _tiny_detector()
    det.train(data=coco_data, epochs=1, batch_size=2, output_dir=tmp_path / "out")
    metrics = Detector(TINY_CONFIG, "print_freq=1", device="cpu").train(
        data=coco_data, epochs=2, batch_size=2, output_dir=tmp_path / "out", resume="auto"
    )
    assert metrics["final"]["epoch"] == 1
    assert load_checkpoint(tmp_path / "out" / "last.pth")["epoch"] == 1


@pytest.mark.slow
def test_export_onnx_matches_the_detectors_predictions(
    trained_coco: tuple[Detector, dict, Path], coco_data: Path, tmp_path: Path
) -> None:
    det, _, _ = trained_coco
    path = det.export(tmp_path / "model.onnx")
    assert path == tmp_path / "model.onnx"
    predictor = load_predictor(path)
    assert predictor.info.class_names == dict(enumerate(SHAPE_NAMES)) and predictor.fixed_batch is None
    image = Image.open(_image(coco_data)).convert("RGB")
    exported = predictor.predict([image], threshold=0.0)[0]
    # Near-tied queries may swap between runtimes: compare the best detection's score only.
    assert exported[0].score == pytest.approx(float(det.predict(image, threshold=0.0)[0].scores[0]), abs=1e-3)
    static = det.export(tmp_path / "static.onnx", static=True)
    assert load_predictor(static).fixed_batch == 1
    with pytest.raises(ValueError, match="format must be one of"):
        det.export(tmp_path / "m.tflite", format="tflite")
    with pytest.raises(ValueError, match="int8.*format='openvino'"):
        det.export(tmp_path / "m.onnx", int8=True)


@pytest.mark.slow
def test_train_val_predict_export_on_a_yolo_dataset(tmp_path: Path) -> None:
    data = tmp_path / "yolo"
    make_yolo_dataset(data, train=4, val=2, size=64, seed=0)
    det = _tiny_detector()
    metrics = det.train(data=data, epochs=1, batch_size=2, output_dir=tmp_path / "out")
    assert set(metrics["best"]["per_class"]) == set(SHAPE_NAMES)
    stats = det.val()
    assert stats["num_images"] == 2 and set(stats["per_class"]) == set(SHAPE_NAMES)
    (result,) = det.predict(
        data / "images" / "val" / sorted(p.name for p in (data / "images" / "val").iterdir())[0], threshold=0.0
    )
    assert set(result.names) <= set(SHAPE_NAMES) and len(result) == 10
    ir = det.export(tmp_path / "ir", format="openvino")
    assert ir == tmp_path / "ir" / "model.xml" and (tmp_path / "ir" / "model.onnx").is_file()
    assert load_predictor(ir, "openvino").info.class_names == dict(enumerate(SHAPE_NAMES))


@pytest.mark.slow
def test_export_int8_openvino_calibrated_on_a_folder(
    trained_coco: tuple[Detector, dict, Path], coco_data: Path, tmp_path: Path
) -> None:
    det, _, _ = trained_coco
    path = det.export(tmp_path / "int8", format="openvino", int8=True, calibration=coco_data / "val")
    assert path == tmp_path / "int8" / "model_int8.xml" and (tmp_path / "int8" / "model.xml").is_file()
    image = Image.open(_image(coco_data)).convert("RGB")
    assert len(load_predictor(path, "openvino").predict([image], threshold=0.0)[0]) == 10


TRAIN_SCRIPT = """
import sys
from rtdetr_spartan import Detector

config, data, out = sys.argv[1:]
det = Detector(config, "print_freq=1", device="cpu")
metrics = det.train(data=data, epochs=1, batch_size=2, output_dir=out)
line = f"trained {metrics['best']['epoch']} {sorted(metrics['best']['per_class'])} {det.checkpoint.name}\\n"
sys.stdout.write(line)  # one write: the two ranks share the pipe, and print() writes each part apart
sys.stdout.flush()
"""


@pytest.mark.slow
@pytest.mark.distributed
def test_train_under_torchrun_every_rank_calls_it(coco_data: Path, tmp_path: Path) -> None:
    script = tmp_path / "train_api.py"
    script.write_text(TRAIN_SCRIPT)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script)]
    result = subprocess.run(
        [*command, str(TINY_CONFIG), str(coco_data), str(tmp_path / "out")],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    expected = f"trained 0 {sorted(SHAPE_NAMES)} best.pth"
    assert result.stdout.count(expected) == 2  # both ranks, the same result
    assert "world size 2" in result.stderr
