"""Compare two sets of batched detections that may list near-tied detections in another order.

A freshly initialised (or weakly trained) detector gives many detections whose scores differ
only in the 7th digit, so two correct runtimes may order them differently. Detections are
therefore matched per image (same label; minimal difference) before they are compared.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = ["detection_difference"]

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


def _image_difference(
    ref: tuple[np.ndarray, np.ndarray, np.ndarray], got: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> float:
    """Bottleneck of the better of two matchings: same position, and the minimal-sum one."""
    cost = _pairwise_cost(*ref, *got)
    if cost.size == 0:
        return 0.0
    same_position = float(np.diagonal(cost).max())
    rows, cols = linear_sum_assignment(cost)
    return min(same_position, float(cost[rows, cols].max()))


def detection_difference(
    ref: tuple[np.ndarray, np.ndarray, np.ndarray],
    got: tuple[np.ndarray, np.ndarray, np.ndarray],
    image_sizes: np.ndarray,
) -> float:
    """Largest difference between matched detections of two runs.

    Args:
        ref, got: ``(labels [N, K], boxes [N, K, 4] XYXY pixels, scores [N, K])``.
        image_sizes: [N, 2] (width, height) the boxes are in; box differences are divided by
            it, so the result is in units of the image size (scores are in [0, 1] anyway).

    Returns:
        max over images and matched detections of max(|score diff|, |box diff| / size);
        >= 1e6 when some detection has no counterpart with the same label.
    """
    if ref[0].shape != got[0].shape:
        raise ValueError(f"detection shapes differ: {ref[0].shape} vs {got[0].shape}")
    scale = np.tile(np.asarray(image_sizes, dtype=np.float64), (1, 2))[:, None, :]  # [N, 1, 4]
    worst = 0.0
    for i in range(ref[0].shape[0]):
        a = (ref[0][i], ref[1][i] / scale[i], ref[2][i].astype(np.float64))
        b = (got[0][i], got[1][i] / scale[i], got[2][i].astype(np.float64))
        worst = max(worst, _image_difference(a, b))
    return worst
