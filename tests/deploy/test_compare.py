from __future__ import annotations

import numpy as np
import pytest

from rtdetr_spartan.deploy.compare import detection_difference


def _detections(seed: int, batch: int = 2, k: int = 6) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, (batch, k))
    xy = rng.uniform(0, 50, (batch, k, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 40, (batch, k, 2))], -1).astype(np.float32)
    scores = np.sort(rng.uniform(0, 1, (batch, k)), axis=1)[:, ::-1].astype(np.float32)
    return labels, boxes, scores


SIZES = np.array([[100, 80], [200, 50]])


def test_identical_detections_differ_by_zero() -> None:
    ref = _detections(0)
    assert detection_difference(ref, ref, SIZES) == 0.0


def test_reordered_near_ties_are_matched() -> None:
    ref = _detections(1)
    order = [1, 0, 2, 3, 5, 4]
    got = tuple(a[:, order] for a in ref)
    assert detection_difference(ref, got, SIZES) == 0.0


def test_box_error_is_relative_to_image_size() -> None:
    ref = _detections(2)
    boxes = ref[1].copy()
    boxes[1, 3, 0] += 2.0  # 2 px of a 200 px wide image
    assert detection_difference(ref, (ref[0], boxes, ref[2]), SIZES) == pytest.approx(0.01, rel=1e-5)


def test_score_error_and_label_mismatch_are_reported() -> None:
    ref = _detections(3)
    scores = ref[2].copy()
    scores[0, 2] -= 0.003
    assert detection_difference(ref, (ref[0], ref[1], scores), SIZES) == pytest.approx(0.003, abs=1e-6)
    labels = ref[0].copy()
    labels[0, 0] = 7  # no detection with this label in the reference
    assert detection_difference(ref, (labels, ref[1], ref[2]), SIZES) >= 1e6


def test_shape_mismatch_raises() -> None:
    ref = _detections(4)
    with pytest.raises(ValueError, match="shapes differ"):
        detection_difference(ref, tuple(a[:, :3] for a in ref), SIZES)
