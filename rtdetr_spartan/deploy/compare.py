"""Compare two sets of batched detections that may list near-tied detections in another order.

A freshly initialised (or weakly trained) detector gives many detections whose scores differ
only in the 7th digit, so two correct runtimes may order them differently, and may even keep a
different one of two near-tied candidates at the top-K cut (query selection, final top-K): one
low-ranked detection then has no counterpart at all. Detections are therefore matched per image
(same label; as many pairs within the tolerance as possible) before they are compared, and
:func:`compare_detections` reports how many were reproduced instead of only the worst pair.

:func:`compare_with_ties` (the export check) goes further: given what each runtime's decoder
selected (:class:`QuerySelection`), it excuses an unmatched detection only when a near-tie is
proven, at the query selection or at the final top-K, and requires every other one to match.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = [
    "DetectionAgreement",
    "ExcusedDetection",
    "QuerySelection",
    "TieAwareAgreement",
    "compare_detections",
    "compare_with_ties",
    "detection_difference",
    "matched_detections",
    "paired_differences",
]

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


def _image_hits(a: Detections, b: Detections, tolerance: float) -> tuple[np.ndarray, float]:
    """[K] bool: which of ``a``'s detections the matching pairs with one of ``b``'s within
    ``tolerance``, and the largest difference among those pairs (0 when none)."""
    cost = _pairwise_cost(*a, *b)
    if cost.size == 0:
        return np.zeros(a[0].shape, dtype=bool), 0.0
    within = cost <= tolerance
    # a pair beyond the tolerance costs more than all within-tolerance pairs together
    beyond = 1.0 + tolerance * cost.shape[0]
    rows, cols = linear_sum_assignment(np.where(within, cost, beyond + np.minimum(cost, 1.0)))
    hit = np.zeros(a[0].shape, dtype=bool)
    hit[rows] = within[rows, cols]
    worst = float(cost[rows, cols][within[rows, cols]].max()) if hit.any() else 0.0
    return hit, worst


def matched_detections(
    ref: Detections, got: Detections, image_sizes: np.ndarray, tolerance: float = 1e-3
) -> np.ndarray:
    """[N, K] bool: which of ``ref``'s detections :func:`compare_detections` counts as reproduced."""
    return np.stack([_image_hits(a, b, tolerance)[0] for a, b in _normalized(ref, got, image_sizes)])


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
        if a[0].size == 0:
            continue
        hit, image_worst = _image_hits(a, b, tolerance)
        top = _high_scoring(a[2], top_fraction, score_threshold)
        total, matched = total + hit.size, matched + int(hit.sum())
        top_total, top_matched = top_total + int(top.sum()), top_matched + int((hit & top).sum())
        worst = max(worst, image_worst)
    return DetectionAgreement(total, matched, top_total, top_matched, worst, tolerance)


# --- Near-tie proof: which unmatched detections are explained by a tie the runtimes broke apart.


@dataclass(frozen=True)
class QuerySelection:
    """What one runtime's RT-DETR decoder selected, read next to its detections.

    ``scores`` [N, A]: the encoder's query-selection score of every anchor (its largest class
    logit); ``anchors`` [N, Q]: the anchor each decoder query starts from, best first (the
    top-Q of ``scores``); ``detection_queries`` / ``detection_classes`` [N, K]: the (query,
    class) pair each detection is; ``pair_scores`` [N, Q, C]: the score of every (query, class)
    pair, from which the postprocessor's top-K takes the detections (None when not read).
    """

    scores: np.ndarray
    anchors: np.ndarray
    detection_queries: np.ndarray
    detection_classes: np.ndarray
    pair_scores: np.ndarray | None = None


@dataclass(frozen=True)
class ExcusedDetection:
    """A reference detection without a counterpart that a proven near-tie explains.

    ``reason`` is ``"selection"`` (its query's anchor is one the other runtime did not select,
    and its selection score lies ``margin`` above the first unselected one, within twice the
    runtimes' selection-score difference) or ``"rank"`` (the other runtime computes the same
    (query, class) pair within the tolerance, but ranks it below its K-th detection: ``margin``
    is how far below).
    """

    image: int
    rank: int
    label: int
    score: float
    anchor: int
    reason: str
    margin: float

    def describe(self) -> str:
        where = f"image {self.image} detection {self.rank} (label {self.label}, score {self.score:.6f})"
        if self.reason == "selection":
            return (
                f"{where}: query-selection tie, the other runtime did not select its anchor {self.anchor}, "
                f"{self.margin:.1e} above the first unselected score"
            )
        return f"{where}: final top-K tie, the other runtime scores it {self.margin:.1e} below its K-th detection"


@dataclass(frozen=True)
class TieAwareAgreement:
    """The export check's verdict: every reference detection is reproduced within the
    tolerance or is an :class:`ExcusedDetection`, and the query-selection scores of all anchors
    agree within the tolerance (``selection_diff``; None when they were not compared)."""

    detections: DetectionAgreement
    selection_diff: float | None
    excused: tuple[ExcusedDetection, ...]
    unexplained: int

    def passes(self) -> bool:
        selection_ok = self.selection_diff is None or self.selection_diff <= self.detections.tolerance
        return selection_ok and self.unexplained == 0

    def describe(self) -> str:
        d = self.detections
        reasons = [e.reason for e in self.excused]
        text = (
            f"{d.matched}/{d.total} detections match within {d.tolerance:g} (largest matched difference "
            f"{d.max_matched_diff:.2e}); {len(self.excused)} excused as near-ties ({reasons.count('selection')} "
            f"at the query selection, {reasons.count('rank')} at the final top-K), {self.unexplained} unexplained"
        )
        if self.selection_diff is not None:
            text += f"; query-selection scores differ by up to {self.selection_diff:.2e}"
        return text

    def __add__(self, other: TieAwareAgreement) -> TieAwareAgreement:
        diffs = [x for x in (self.selection_diff, other.selection_diff) if x is not None]
        return TieAwareAgreement(
            self.detections + other.detections,
            max(diffs) if diffs else None,
            self.excused + other.excused,
            self.unexplained + other.unexplained,
        )


def _selection_excuse(
    image: int, anchor: int, ref: QuerySelection, got: QuerySelection, selection_diff: float
) -> float | None:
    """The anchor's margin above ``ref``'s first unselected score when ``got`` did not select it
    and the margin is within 2 * ``selection_diff`` (what a score difference of that size can
    flip), else None."""
    if np.any(got.anchors[image] == anchor):
        return None
    first_unselected = np.sort(ref.scores[image])[::-1][ref.anchors.shape[1]]
    margin = float(ref.scores[image, anchor] - first_unselected)
    return margin if margin <= 2 * selection_diff else None


def _rank_excuse(
    image: int, anchor: int, label: int, score: float, got: QuerySelection, tolerance: float
) -> float | None:
    """How far below ``got``'s K-th score ``got`` ranks the (anchor's query, label) pair, when it
    is not among ``got``'s detections and ``got`` scores it within ``tolerance`` of ``score``."""
    queries = np.flatnonzero(got.anchors[image] == anchor)
    if got.pair_scores is None or queries.size != 1 or not 0 <= label < got.pair_scores.shape[2]:
        return None
    query = int(queries[0])
    kept = np.any((got.detection_queries[image] == query) & (got.detection_classes[image] == label))
    got_score = float(got.pair_scores[image, query, label])
    kth = float(got.pair_scores[image][got.detection_queries[image], got.detection_classes[image]].min())
    if kept or got_score > kth or abs(got_score - score) > tolerance:
        return None
    return kth - got_score


def compare_with_ties(
    ref: Detections,
    got: Detections,
    image_sizes: np.ndarray,
    ref_selection: QuerySelection | None,
    got_selection: QuerySelection | None,
    tolerance: float = 1e-3,
) -> TieAwareAgreement:
    """:func:`compare_detections`, then explain each of ``ref``'s unmatched detections by a
    near-tie, or count it as unexplained.

    A near-tie is proven, not assumed from the score: the detection's query starts from an
    anchor that ``got``'s decoder did not select, and whose selection score sits within twice the
    runtimes' largest selection-score difference of the selection boundary; or ``got`` computes
    the same (query, class) pair within ``tolerance`` and its own top-K ranks it out. Without
    both selections nothing is excused.
    """
    detections = compare_detections(ref, got, image_sizes, tolerance)
    hits = matched_detections(ref, got, image_sizes, tolerance)
    if ref_selection is None or got_selection is None:
        return TieAwareAgreement(detections, None, (), int((~hits).sum()))
    if ref_selection.scores.shape != got_selection.scores.shape:  # not even the same anchors
        return TieAwareAgreement(detections, math.inf, (), int((~hits).sum()))
    selection_diff = float(np.abs(ref_selection.scores - got_selection.scores).max())
    if selection_diff > tolerance:  # the encoders disagree: no tie is proven
        return TieAwareAgreement(detections, selection_diff, (), int((~hits).sum()))
    excused: list[ExcusedDetection] = []
    for image, rank in zip(*np.nonzero(~hits)):
        image, rank = int(image), int(rank)
        anchor = int(ref_selection.anchors[image, ref_selection.detection_queries[image, rank]])
        label, score = int(ref[0][image, rank]), float(ref[2][image, rank])
        margin = _selection_excuse(image, anchor, ref_selection, got_selection, selection_diff)
        reason = "selection"
        if margin is None:
            margin, reason = _rank_excuse(image, anchor, label, score, got_selection, tolerance), "rank"
        if margin is not None:
            excused.append(ExcusedDetection(image, rank, label, score, anchor, reason, margin))
    return TieAwareAgreement(detections, selection_diff, tuple(excused), int((~hits).sum()) - len(excused))
