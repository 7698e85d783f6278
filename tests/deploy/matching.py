"""Compare two runtimes' detections of a random-weight detector without depending on near ties.

Such a detector scores many queries within float rounding of each other, so two correct runtimes
(or one runtime on AVX2 and AVX-512 CPUs, or with 1 and 2 threads) may select a different query
at the top-k boundary and list a few other detections. Detections are therefore paired one to one
(same label, minimal difference) and the test asserts that nearly all of them have a partner
within the tolerance, which a wrong graph (another resize, another preprocessing) fails by far.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

Outputs = tuple[np.ndarray, np.ndarray, np.ndarray]


def matched_costs(ref: Outputs, got: Outputs, image_sizes: np.ndarray) -> np.ndarray:
    """[N, K]: per image, for each of ``ref``'s detections in ``ref``'s score order, the
    difference to its partner in ``got``: max(|score diff|, max |box diff| / image size), plus
    1e6 when the labels differ. Partners come from a minimal-sum one-to-one assignment."""
    if ref[0].shape != got[0].shape:
        raise ValueError(f"detection shapes differ: {ref[0].shape} vs {got[0].shape}")
    rows_out = []
    for i in range(ref[0].shape[0]):
        scale = np.tile(np.asarray(image_sizes[i], dtype=np.float64), 2)
        box_diff = np.abs(ref[1][i][:, None] / scale - got[1][i][None] / scale).max(-1)
        score_diff = np.abs(ref[2][i][:, None].astype(np.float64) - got[2][i][None])
        cost = np.maximum(box_diff, score_diff) + 1e6 * (ref[0][i][:, None] != got[0][i][None])
        rows, cols = linear_sum_assignment(cost)
        per_detection = np.empty(len(rows))
        per_detection[rows] = cost[rows, cols]
        rows_out.append(per_detection[np.argsort(-ref[2][i], kind="stable")])
    return np.stack(rows_out)


def matched_fraction(ref: Outputs, got: Outputs, image_sizes: np.ndarray, tolerance: float = 1e-3) -> float:
    """Smallest per-image fraction of ``ref``'s detections with a partner within ``tolerance``."""
    costs = matched_costs(ref, got, image_sizes)
    return float((costs <= tolerance).mean(axis=1).min())
