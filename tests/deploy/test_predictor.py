"""The Predictor base through its public interface, on a small numpy backend: input checks,
chunks of the graph's fixed batch, dtypes of the sizes input, detections above a threshold."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rtdetr_spartan.deploy.metadata import ModelInfo
from rtdetr_spartan.deploy.predictor import Outputs, Predictor

INFO = ModelInfo(input_size=(8, 8), num_classes=2, label_to_category={0: 3, 1: 7}, class_names={0: "cat", 1: "dog"})


class MeanBrightness(Predictor):
    """A two-query "detector": query 0 scores the image's mean, query 1 one minus it; boxes are
    the whole image (w, h) scaled by 1.5 so that clipping shows. Records each batch it gets."""

    def __init__(self, fixed_batch: int | None, sizes_are_float: bool = False) -> None:
        self.path = Path("mean.onnx")
        self.info = replace(INFO)  # its own copy: set_input_size changes it
        self.batches: list[tuple[int, np.dtype]] = []
        self.bind_graph(("images", "orig_target_sizes"), fixed_batch, sizes_are_float)

    def infer(self, images: np.ndarray, orig_sizes: np.ndarray) -> Outputs:
        assert images.flags.c_contiguous and images.dtype == np.float32
        self.batches.append((len(images), orig_sizes.dtype))
        mean = images.mean(axis=(1, 2, 3))
        scores = np.stack([mean, 1.0 - mean], axis=1)
        labels = np.tile(np.array([0, 1]), (len(images), 1))
        w, h = orig_sizes[:, 0].astype(np.float32), orig_sizes[:, 1].astype(np.float32)
        box = np.stack([0 * w, 0 * h, 1.5 * w, 1.5 * h], axis=1)
        return labels, np.stack([box, box], axis=1), scores


def _images(values: list[float]) -> np.ndarray:
    return np.stack([np.full((3, 8, 8), v, dtype=np.float64) for v in values])


@pytest.mark.parametrize(("fixed", "chunks"), [(2, [2, 2, 1]), (None, [5]), (1, [1] * 5)])
def test_run_feeds_chunks_of_the_fixed_batch_in_order(fixed: int | None, chunks: list[int]) -> None:
    predictor = MeanBrightness(fixed)
    values = [0.1, 0.2, 0.3, 0.4, 0.5]
    labels, boxes, scores = predictor.run(_images(values), np.array([[10, 20]] * 5))
    assert [n for n, _ in predictor.batches] == chunks and predictor.fixed_batch == fixed
    assert scores[:, 0] == pytest.approx(values) and scores.dtype == np.float32
    assert labels.dtype == np.int64 and boxes.shape == (5, 2, 4)


def test_sizes_are_fed_in_the_graphs_dtype() -> None:
    for as_float, dtype in ((True, np.float32), (False, np.int64)):
        predictor = MeanBrightness(None, sizes_are_float=as_float)
        predictor.run(_images([0.5]), np.array([[4, 4]], dtype=np.int32))
        assert predictor.batches == [(1, np.dtype(dtype))]


def test_bad_inputs_are_named() -> None:
    predictor = MeanBrightness(2)
    with pytest.raises(ValueError, match=r"mean.onnx: images must be \[N, 3, H, W\], got shape \(2, 8, 8\)"):
        predictor.run(np.zeros((2, 8, 8)), np.zeros((2, 2)))
    with pytest.raises(
        ValueError, match=r"orig_sizes must be \[N, 2\] \(width, height\) for 2 images, got shape \(3, 2\)"
    ):
        predictor.run(_images([0.1, 0.2]), np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"run needs at least one image"):
        predictor.run(np.zeros((0, 3, 8, 8)), np.zeros((0, 2)))
    with pytest.raises(ValueError, match=r"mean.onnx: inputs \['orig_target_sizes'\] missing \(has \['images'\]\)"):
        predictor.bind_graph(("images",), None, False)


def test_input_size_changes_only_for_dynamic_size_exports() -> None:
    predictor = MeanBrightness(None)
    with pytest.raises(ValueError, match=r"mean.onnx was exported for input size \(8, 8\), not \(16, 16\)"):
        predictor.set_input_size((16, 16))
    predictor.info.dynamic_size = True
    predictor.set_input_size((16, 12))
    assert predictor.input_size == (16, 12)


def test_predict_keeps_scores_above_the_threshold_best_first_and_clips_boxes() -> None:
    predictor = MeanBrightness(1)
    bright, dark = Image.new("RGB", (40, 30), (204, 204, 204)), Image.new("L", (20, 10), 51)
    first, second = predictor.predict([bright, dark], threshold=0.5)
    assert [(d.name, d.category_id) for d in first] == [("cat", 3)] and first[0].score == pytest.approx(0.8)
    assert first[0].box == (0.0, 0.0, 40.0, 30.0)  # 1.5 x the image, clipped to it
    assert [(d.name, round(d.score, 3)) for d in second] == [("dog", 0.8)] and second[0].box == (0.0, 0.0, 20.0, 10.0)
    assert [d.name for d in predictor.predict([bright], threshold=0.1)[0]] == ["cat", "dog"]  # best first
    assert predictor.predict([], threshold=0.5) == []
