from __future__ import annotations

import numpy as np
import pytest

from rtdetr_spartan.deploy.compare import (
    QuerySelection,
    compare_detections,
    compare_with_ties,
    detection_difference,
    paired_differences,
)


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


# --- compare_with_ties: unmatched detections are excused only by a proven near-tie.

TIE_SIZES = np.array([[100, 100]])


def _tie_case(got_anchor_scores: list[float], got_anchors: list[int]) -> tuple:
    """One image, 6 anchors, 3 queries, 2 classes, 3 detections. PyTorch selects anchors 0, 1, 2
    (scores 5, 4, 3; the first unselected, anchor 3, scores 3 - 5e-7); its detections are the
    pairs (query 0, class 1), (query 2, class 0), (query 1, class 0). The other runtime has
    ``got_anchor_scores`` and selects ``got_anchors``; its query 2 detection is another box."""
    ref_scores = np.array([[5.0, 4.0, 3.0, 3.0 - 5e-7, 1.0, 0.0]])
    boxes = np.array([[[10, 10, 30, 30], [40, 40, 60, 60], [70, 10, 90, 30]]], dtype=np.float32)
    labels, scores = np.array([[1, 0, 0]]), np.array([[0.9, 0.8, 0.7]], dtype=np.float32)
    ref = (labels, boxes, scores)
    ref_selection = QuerySelection(ref_scores, np.array([[0, 1, 2]]), np.array([[0, 2, 1]]), labels)
    got_boxes = boxes.copy()
    got_boxes[0, 1] += 25.0  # the detection of query 2 is elsewhere
    got = (labels, got_boxes, scores)
    pair_scores = np.array([[[0.1, 0.9], [0.7, 0.2], [0.8, 0.3]]])  # [1, Q, C]
    got_selection = QuerySelection(
        np.array([got_anchor_scores]), np.array([got_anchors]), np.array([[0, 2, 1]]), labels, pair_scores
    )
    return ref, got, ref_selection, got_selection


def test_query_selection_near_tie_is_excused() -> None:
    # the other runtime scores anchor 3 a little above anchor 2 (by 2e-7): it selects anchor 3
    ref, got, ref_sel, got_sel = _tie_case([5.0, 4.0, 3.0 - 3e-7, 3.0 - 1e-7, 1.0, 0.0], [0, 1, 3])
    agreement = compare_with_ties(ref, got, TIE_SIZES, ref_sel, got_sel)
    assert agreement.detections.matched == 2 and agreement.unexplained == 0 and agreement.passes()
    (excused,) = agreement.excused
    assert (excused.image, excused.rank, excused.anchor, excused.reason) == (0, 1, 2, "selection")
    assert excused.margin == pytest.approx(5e-7, rel=1e-3)
    assert agreement.selection_diff == pytest.approx(4e-7, rel=1e-3)
    assert "1 excused as near-ties (1 at the query selection" in agreement.describe()
    assert not compare_detections(ref, got, TIE_SIZES).passes(0.95)  # the old rule refused it


def test_selection_the_scores_do_not_explain_fails() -> None:
    # same selection, but the other runtime's scores agree with PyTorch's: anchor 3 scores
    # below anchor 2, so selecting it is no tie (a broken TopK or gather), and anchor 2 sits
    # 5e-7 above the boundary while the scores differ by only 1e-9
    ref, got, ref_sel, got_sel = _tie_case([5.0, 4.0, 3.0 + 1e-9, 3.0 - 5e-7, 1.0, 0.0], [0, 1, 3])
    agreement = compare_with_ties(ref, got, TIE_SIZES, ref_sel, got_sel)
    assert agreement.excused == () and agreement.unexplained == 1 and not agreement.passes()


def test_final_top_k_tie_is_excused_only_when_the_other_runtime_ranks_the_pair_out() -> None:
    # same anchors selected; query 1's classes 0 and 1 both score 0.7 within 1e-6, and the other
    # runtime keeps class 1 as its third detection: PyTorch's third has no counterpart
    ref, _, ref_sel, _ = _tie_case([5.0, 4.0, 3.0, 3.0 - 5e-7, 1.0, 0.0], [0, 1, 2])
    pair_scores = np.array([[[0.1, 0.9], [0.7 - 1e-6, 0.7], [0.8, 0.3]]])
    got_labels = np.array([[1, 0, 1]])
    got = (got_labels, ref[1], ref[2])
    got_sel = QuerySelection(ref_sel.scores, ref_sel.anchors, np.array([[0, 2, 1]]), got_labels, pair_scores)
    agreement = compare_with_ties(ref, got, TIE_SIZES, ref_sel, got_sel)
    assert agreement.passes() and [(e.rank, e.reason) for e in agreement.excused] == [(2, "rank")]
    assert agreement.excused[0].margin == pytest.approx(1e-6, rel=1e-3)
    # a wrong class mapping: the graph's top-K picked (query 1, class 0), as PyTorch's, but its
    # labels output says class 1: the pair was kept, so this is no tie
    kept_sel = QuerySelection(ref_sel.scores, ref_sel.anchors, np.array([[0, 2, 1]]), ref[0], pair_scores)
    wrong = compare_with_ties(ref, got, TIE_SIZES, ref_sel, kept_sel)
    assert wrong.excused == () and wrong.unexplained == 1 and not wrong.passes()


def test_selection_scores_beyond_the_tolerance_fail_even_if_detections_match() -> None:
    ref, _, ref_sel, _ = _tie_case([0.0] * 6, [0, 1, 2])
    shifted = QuerySelection(ref_sel.scores + 2e-3, ref_sel.anchors, ref_sel.detection_queries, ref[0])
    agreement = compare_with_ties(ref, ref, TIE_SIZES, ref_sel, shifted)
    assert agreement.detections.matched == 3 and agreement.unexplained == 0
    assert agreement.selection_diff == pytest.approx(2e-3) and not agreement.passes()


def test_without_selections_nothing_is_excused() -> None:
    ref, got, ref_sel, got_sel = _tie_case([5.0, 4.0, 3.0 - 3e-7, 3.0 - 1e-7, 1.0, 0.0], [0, 1, 3])
    agreement = compare_with_ties(ref, got, TIE_SIZES, ref_sel, None)
    assert agreement.selection_diff is None and agreement.unexplained == 1 and not agreement.passes()
    both = agreement + compare_with_ties(ref, got, TIE_SIZES, ref_sel, got_sel)
    assert (both.detections.total, both.unexplained, len(both.excused)) == (6, 1, 1)
