from __future__ import annotations

import itertools

import pytest
import torch

from rtdetr_spartan.zoo.rtdetr.matcher import HungarianMatcher

COSTS = {"cost_class": 2.0, "cost_bbox": 5.0, "cost_giou": 2.0}


def _outputs(batch: int, queries: int, classes: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centers = 0.2 + 0.6 * torch.rand(batch, queries, 2, generator=g)
    sizes = 0.05 + 0.3 * torch.rand(batch, queries, 2, generator=g)
    return {
        "pred_logits": torch.randn(batch, queries, classes, generator=g),
        "pred_boxes": torch.cat([centers, sizes], -1),
    }


def _targets(counts: list[int], classes: int, seed: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    targets = []
    for n in counts:
        boxes = torch.cat([0.2 + 0.6 * torch.rand(n, 2, generator=g), 0.05 + 0.3 * torch.rand(n, 2, generator=g)], -1)
        targets.append({"labels": torch.randint(0, classes, (n,), generator=g), "boxes": boxes})
    return targets


@pytest.mark.parametrize("use_focal_loss", [True, False])
def test_batched_equals_per_image(use_focal_loss: bool) -> None:
    matcher = HungarianMatcher(COSTS, use_focal_loss=use_focal_loss)
    outputs = _outputs(3, 20, 7, seed=0)
    targets = _targets([4, 0, 6], 7, seed=1)
    batched = matcher(outputs, targets)
    assert len(batched) == 3
    for i, target in enumerate(targets):
        single = matcher({k: v[i : i + 1] for k, v in outputs.items()}, [target])[0]
        assert torch.equal(batched[i][0], single[0]) and torch.equal(batched[i][1], single[1])
        assert len(batched[i][0]) == len(target["labels"])
        assert batched[i][0].dtype == torch.int64


def test_recovers_a_permutation_of_perfect_predictions() -> None:
    targets = _targets([5], 4, seed=2)
    order = torch.tensor([3, 0, 4, 1, 2])
    logits = torch.full((1, 5, 4), -8.0)
    logits[0, torch.arange(5), targets[0]["labels"][order]] = 8.0
    outputs = {"pred_logits": logits, "pred_boxes": targets[0]["boxes"][order][None]}
    rows, cols = HungarianMatcher(COSTS, use_focal_loss=True)(outputs, targets)[0]
    assert torch.equal(rows, torch.arange(5))
    assert torch.equal(cols, order)


def test_assignment_is_optimal_on_a_small_case() -> None:
    matcher = HungarianMatcher(COSTS, use_focal_loss=True)
    outputs = _outputs(1, 5, 3, seed=3)
    targets = _targets([3], 3, seed=4)
    cost = matcher.cost_matrix(outputs, targets)[0]
    rows, cols = matcher(outputs, targets)[0]
    best = min(sum(cost[q, t].item() for t, q in enumerate(perm)) for perm in itertools.permutations(range(5), 3))
    assert cost[rows, cols].sum().item() == pytest.approx(best, rel=1e-6)


def test_focal_class_cost_formula() -> None:
    matcher = HungarianMatcher(COSTS, use_focal_loss=True, alpha=0.25, gamma=2.0)
    logits = torch.tensor([[0.3, -1.2]])
    p = torch.sigmoid(logits)[:, [1]]
    want = 0.25 * (1 - p) ** 2 * -(p + 1e-8).log() - 0.75 * p**2 * -(1 - p + 1e-8).log()
    torch.testing.assert_close(matcher._class_cost(logits, torch.tensor([1])), want)


def test_empty_targets() -> None:
    matcher = HungarianMatcher(COSTS, use_focal_loss=True)
    outputs = _outputs(2, 10, 5, seed=5)
    for counts in ([0, 0], [0, 2]):
        indices = matcher(outputs, _targets(counts, 5, seed=6))
        assert [len(rows) for rows, _ in indices] == counts
        assert all(rows.dtype == torch.int64 and cols.dtype == torch.int64 for rows, cols in indices)


def test_more_targets_than_queries_matches_every_query() -> None:
    indices = HungarianMatcher(COSTS)(_outputs(1, 3, 4, seed=7), _targets([5], 4, seed=8))
    rows, cols = indices[0]
    assert torch.equal(rows, torch.arange(3)) and len(set(cols.tolist())) == 3


def test_bad_weight_dict_is_reported() -> None:
    with pytest.raises(ValueError, match="cost_giou"):
        HungarianMatcher({"cost_class": 1.0, "cost_bbox": 1.0})
    with pytest.raises(ValueError, match="cannot all be 0"):
        HungarianMatcher({"cost_class": 0, "cost_bbox": 0, "cost_giou": 0})
