from __future__ import annotations

import numpy as np
import pytest

from rtdetr_spartan.deploy.compare import compare_detections, detection_difference, paired_differences


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


def test_paired_differences_per_detection_in_score_order() -> None:
    ref = _detections(1)
    got = tuple(a[:, [1, 0, 2, 3, 5, 4]].copy() for a in ref)
    got[2][0, 5] += 0.004  # image 0: its 5th detection (score rank 4) moves by 0.004
    diffs = paired_differences(ref, got, SIZES)
    assert diffs.shape == (2, 6)
    np.testing.assert_allclose(diffs[0], [0, 0, 0, 0, 0.004, 0], atol=1e-6)
    assert np.all(diffs[1] == 0.0)


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


def _many(seed: int, k: int = 40) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return _detections(seed, batch=2, k=k)


def test_flipped_low_ranked_detection_costs_one_detection() -> None:
    ref = _many(5)
    labels, boxes = ref[0].copy(), ref[1].copy()
    labels[0, -1] = (labels[0, -1] + 1) % 3  # the lowest-ranked detection is another query's
    boxes[0, -1] += 11.0
    got = (labels, boxes, ref[2])
    assert detection_difference(ref, got, SIZES) > 0.1  # the old check: one flip fails everything
    agreement = compare_detections(ref, got, SIZES, tolerance=1e-3)
    assert (agreement.total, agreement.matched) == (80, 79)
    # high-scoring: the best 10 % (4 of 40; scores are sorted) and all scoring >= 0.5
    assert agreement.top_total == sum(max(4, int((scores >= 0.5).sum())) for scores in ref[2])
    assert agreement.top_matched == agreement.top_total and agreement.passes(0.95)
    assert "79/80 detections (98.8 %)" in agreement.describe()


def test_reordered_and_slightly_different_detections_all_match() -> None:
    ref = _many(6)
    order = np.random.default_rng(0).permutation(40)
    got = tuple(a[:, order].copy() for a in ref)
    got[2][:] += 2e-4
    agreement = compare_detections(ref, got, SIZES, tolerance=1e-3)
    assert agreement.matched == agreement.total == 80
    assert agreement.max_matched_diff == pytest.approx(2e-4, rel=1e-2)
    assert not compare_detections(ref, got, SIZES, tolerance=1e-4).passes(0.95)


def test_changed_high_scoring_detection_or_shifted_boxes_fail() -> None:
    ref = _many(7)
    boxes = ref[1].copy()
    boxes[1, 0] += 5.0  # the best detection of image 1 moved
    agreement = compare_detections(ref, (ref[0], boxes, ref[2]), SIZES)
    assert agreement.matched_fraction > 0.95 and agreement.top_matched == agreement.top_total - 1
    assert not agreement.passes(0.95)
    shifted = compare_detections(ref, (ref[0], ref[1] + 2.0, ref[2]), SIZES)
    assert shifted.matched == 0 and not shifted.passes(0.5)


def test_agreements_add_up() -> None:
    ref = _many(8)
    one = compare_detections(ref, ref, SIZES)
    both = one + one
    assert (both.total, both.matched, both.top_total) == (160, 160, 2 * one.top_total)
