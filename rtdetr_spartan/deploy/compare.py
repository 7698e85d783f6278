"""Compare two sets of batched detections that may list near-tied detections in another order.

A freshly initialised (or weakly trained) detector gives many detections whose scores differ
only in the 7th digit, so two correct runtimes may order them differently, and may even keep a
different one of two near-tied candidates at the top-K cut (query selection, final top-K): one
low-ranked detection then has no counterpart at all. Detections are therefore matched per image
(same label; as many pairs within the tolerance as possible) before they are compared, and
:func:`compare_detections` reports how many were reproduced instead of only the worst pair.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = ["DetectionAgreement", "compare_detections", "detection_difference", "paired_differences"]

Detections = tuple[np.ndarray, np.ndarray, np.ndarray]

# Cost added to pairs with different labels so they are never preferred over a same-label pair.
_LABEL_MISMATCH_COST = 1e6


def _pairwise_cost(
    labels_a: np.ndarray,
    boxes_a: np.ndarray,
    scores_a: np.ndarray,
    labels_b: np.ndarray,
    boxes_b: np.ndarray,
    scores_b: np.ndarray,
) -> np.ndarray:
    """[K, K]: max(|score diff|, max |box coordinate diff|) plus a large label-mismatch cost."""
    box_diff = np.abs(boxes_a[:, None, :] - boxes_b[None, :, :]).max(-1)
    score_diff = np.abs(scores_a[:, None] - scores_b[None, :])
    cost = np.maximum(box_diff, score_diff)
    return cost + _LABEL_MISMATCH_COST * (labels_a[:, None] != labels_b[None, :])


def _image_difference(ref: Detections, got: Detections) -> float:
    """Bottleneck of the better of two matchings: same position, and the minimal-sum one."""
    cost = _pairwise_cost(*ref, *got)
    if cost.size == 0:
        return 0.0
    same_position = float(np.diagonal(cost).max())
    rows, cols = linear_sum_assignment(cost)
    return min(same_position, float(cost[rows, cols].max()))


def _normalized(ref: Detections, got: Detections, image_sizes: np.ndarray) -> list[tuple[Detections, Detections]]:
    """Per image, both detection sets with boxes divided by the image's (w, h, w, h)."""
    if ref[0].shape != got[0].shape:
        raise ValueError(f"detection shapes differ: {ref[0].shape} vs {got[0].shape}")
    scale = np.tile(np.asarray(image_sizes, dtype=np.float64), (1, 2))[:, None, :]  # [N, 1, 4]
    images = []
    for i in range(ref[0].shape[0]):
        a = (ref[0][i], ref[1][i] / scale[i], ref[2][i].astype(np.float64))
        b = (got[0][i], got[1][i] / scale[i], got[2][i].astype(np.float64))
        images.append((a, b))
    return images


def detection_difference(ref: Detections, got: Detections, image_sizes: np.ndarray) -> float:
    """Largest difference between matched detections of two runs.

    Args:
        ref, got: ``(labels [N, K], boxes [N, K, 4] XYXY pixels, scores [N, K])``.
        image_sizes: [N, 2] (width, height) the boxes are in; box differences are divided by
            it, so the result is in units of the image size (scores are in [0, 1] anyway).

    Returns:
        max over images and matched detections of max(|score diff|, |box diff| / size);
        >= 1e6 when some detection has no counterpart with the same label. One flipped near-tie
        makes this large; :func:`compare_detections` tolerates it.
    """
    return max((_image_difference(a, b) for a, b in _normalized(ref, got, image_sizes)), default=0.0)


def paired_differences(ref: Detections, got: Detections, image_sizes: np.ndarray) -> np.ndarray:
    """[N, K]: per image, the difference of each of ``ref``'s detections to its partner in ``got``
    under the minimal-sum one-to-one pairing (same cost as :func:`detection_difference`: >= 1e6
    when the labels differ), in ``ref``'s score order."""
    rows_out = []
    for a, b in _normalized(ref, got, image_sizes):
        cost = _pairwise_cost(*a, *b)
        rows, cols = linear_sum_assignment(cost)
        per_detection = np.empty(len(rows))
        per_detection[rows] = cost[rows, cols]
        rows_out.append(per_detection[np.argsort(-a[2], kind="stable")])
    return np.stack(rows_out)


@dataclass(frozen=True)
class DetectionAgreement:
    """How many reference detections another run reproduces within ``tolerance``.

    ``top_*`` count the high-scoring detections (see :func:`compare_detections`), which must all
    be reproduced; ``max_matched_diff`` is the largest difference among the reproduced pairs
    (scores, and boxes in units of the image size).
    """

    total: int
    matched: int
    top_total: int
    top_matched: int
    max_matched_diff: float
    tolerance: float

    @property
    def matched_fraction(self) -> float:
        return self.matched / self.total if self.total else 1.0

    def passes(self, min_matched_fraction: float) -> bool:
        """Every high-scoring detection and at least ``min_matched_fraction`` of all reproduced."""
        return self.top_matched == self.top_total and self.matched_fraction >= min_matched_fraction

    def describe(self) -> str:
        return (
            f"{self.matched}/{self.total} detections ({100 * self.matched_fraction:.1f} %) and "
            f"{self.top_matched}/{self.top_total} high-scoring ones match within {self.tolerance:g} "
            f"(largest matched difference {self.max_matched_diff:.2e})"
        )

    def __add__(self, other: DetectionAgreement) -> DetectionAgreement:
        return DetectionAgreement(
            total=self.total + other.total,
            matched=self.matched + other.matched,
            top_total=self.top_total + other.top_total,
            top_matched=self.top_matched + other.top_matched,
            max_matched_diff=max(self.max_matched_diff, other.max_matched_diff),
            tolerance=max(self.tolerance, other.tolerance),
        )


def _high_scoring(scores: np.ndarray, top_fraction: float, score_threshold: float) -> np.ndarray:
    """[K] bool: the ``ceil(top_fraction * K)`` best scores and every score >= the threshold."""
    top = np.zeros(scores.shape, dtype=bool)
    count = math.ceil(top_fraction * scores.size)
    top[np.argsort(-scores, kind="stable")[:count]] = True
    return top | (scores >= score_threshold)


def compare_detections(
    ref: Detections,
    got: Detections,
    image_sizes: np.ndarray,
    tolerance: float = 1e-3,
    top_fraction: float = 0.1,
    score_threshold: float = 0.5,
) -> DetectionAgreement:
    """Match ``got`` to ``ref`` per image and count the detections reproduced within ``tolerance``.

    Args:
        ref, got: ``(labels [N, K], boxes [N, K, 4] XYXY pixels, scores [N, K])``; ``ref`` is the
            reference (e.g. PyTorch).
        image_sizes: [N, 2] (width, height); box differences are divided by it.
        tolerance: largest max(|score diff|, |box diff| / size) of a reproduced detection.
        top_fraction, score_threshold: the high-scoring detections of an image are its
            ``ceil(top_fraction * K)`` best by reference score plus all scoring >= ``score_threshold``.

    The matching maximises the number of same-label pairs within ``tolerance`` (then minimises
    their summed difference), so reordered near-ties pair up and one flipped detection costs one
    detection, not the comparison.
    """
    total = matched = top_total = top_matched = 0
    worst = 0.0
    for a, b in _normalized(ref, got, image_sizes):
        cost = _pairwise_cost(*a, *b)
        if cost.size == 0:
            continue
        within = cost <= tolerance
        # a pair beyond the tolerance costs more than all within-tolerance pairs together
        beyond = 1.0 + tolerance * cost.shape[0]
        rows, cols = linear_sum_assignment(np.where(within, cost, beyond + np.minimum(cost, 1.0)))
        hit = np.zeros(a[0].shape, dtype=bool)
        hit[rows] = within[rows, cols]
        top = _high_scoring(a[2], top_fraction, score_threshold)
        total, matched = total + hit.size, matched + int(hit.sum())
        top_total, top_matched = top_total + int(top.sum()), top_matched + int((hit & top).sum())
        if hit.any():
            worst = max(worst, float(cost[rows, cols][within[rows, cols]].max()))
    return DetectionAgreement(total, matched, top_total, top_matched, worst, tolerance)
