from __future__ import annotations

import pytest
import torch
from torchvision.ops import sigmoid_focal_loss

from rtdetr_spartan.zoo.rtdetr.criterion import SetCriterion
from rtdetr_spartan.zoo.rtdetr.matcher import HungarianMatcher
from tests.parity_utils import load_expected


def _r18_criterion() -> SetCriterion:
    """The configuration stated in the fixture's note."""
    matcher = HungarianMatcher(
        {"cost_class": 2, "cost_bbox": 5, "cost_giou": 2}, use_focal_loss=True, alpha=0.25, gamma=2.0
    )
    return SetCriterion(
        matcher,
        {"loss_vfl": 1, "loss_bbox": 5, "loss_giou": 2},
        ["vfl", "boxes"],
        alpha=0.75,
        gamma=2.0,
        num_classes=80,
    )


def test_reference_losses_reproduced() -> None:
    fixture = load_expected("criterion_r18vd_seed0")
    losses = _r18_criterion()(fixture["outputs"], fixture["targets"])
    expected = fixture["losses"]
    assert set(losses) == set(expected)
    for key, want in expected.items():
        got = losses[key].item()
        assert abs(got - want.item()) <= 1e-4 * abs(want.item()), f"{key}: {got} != reference {want.item()}"


def _single_match_case() -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    logits = torch.tensor([[[2.0, -1.0, 0.5], [-0.5, 0.2, -2.0]]])
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.1, 0.1]]])
    targets = [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.4]])}]
    return {"pred_logits": logits, "pred_boxes": boxes}, targets


def test_focal_and_box_losses_by_hand() -> None:
    outputs, targets = _single_match_case()
    matcher = HungarianMatcher({"cost_class": 1, "cost_bbox": 5, "cost_giou": 2}, use_focal_loss=True)
    criterion = SetCriterion(
        matcher,
        {"loss_focal": 2, "loss_bbox": 5, "loss_giou": 2},
        ["focal", "boxes"],
        alpha=0.25,
        gamma=2.0,
        num_classes=3,
    )
    losses = criterion(outputs, targets)
    one_hot = torch.tensor([[[1.0, 0, 0], [0, 0, 0]]])
    focal = sigmoid_focal_loss(outputs["pred_logits"], one_hot, 0.25, 2.0).mean(1).sum() * 2
    torch.testing.assert_close(losses["loss_focal"], 2 * focal)
    torch.testing.assert_close(losses["loss_bbox"], torch.tensor(5 * 0.2))
    # Predicted box is the target's upper half: IoU 0.5, enclosing box = target, GIoU 0.5.
    torch.testing.assert_close(losses["loss_giou"], torch.tensor(2 * 0.5))


def test_cross_entropy_labels_loss_uses_no_object_weight() -> None:
    outputs, targets = _single_match_case()
    outputs["pred_logits"] = torch.cat([outputs["pred_logits"], torch.zeros(1, 2, 1)], -1)
    matcher = HungarianMatcher({"cost_class": 1, "cost_bbox": 5, "cost_giou": 2})
    criterion = SetCriterion(matcher, {"loss_ce": 1}, ["labels"], eos_coef=0.1, num_classes=3)
    got = criterion(outputs, targets)["loss_ce"]
    logp = outputs["pred_logits"][0].log_softmax(-1)
    want = -(logp[0, 0] * 1.0 + logp[1, 3] * 0.1) / 1.1
    torch.testing.assert_close(got, want)


def test_only_weighted_keys_are_returned_with_suffixes() -> None:
    outputs, targets = _single_match_case()
    outputs["aux_outputs"] = [{k: v.clone() for k, v in outputs.items()}]
    matcher = HungarianMatcher({"cost_class": 1, "cost_bbox": 5, "cost_giou": 2}, use_focal_loss=True)
    criterion = SetCriterion(matcher, {"loss_vfl": 1, "loss_giou": 2}, ["vfl", "boxes"], num_classes=3)
    assert set(criterion(outputs, targets)) == {"loss_vfl", "loss_giou", "loss_vfl_aux_0", "loss_giou_aux_0"}


def _vfl_criterion(num_classes: int) -> SetCriterion:
    matcher = HungarianMatcher({"cost_class": 2, "cost_bbox": 5, "cost_giou": 2}, use_focal_loss=True)
    return SetCriterion(
        matcher,
        {"loss_vfl": 1, "loss_bbox": 5, "loss_giou": 2},
        ["vfl", "boxes"],
        alpha=0.75,
        gamma=2.0,
        num_classes=num_classes,
    )


def test_no_boxes_gives_finite_losses() -> None:
    outputs, _ = _single_match_case()
    empty = [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}]
    losses = _vfl_criterion(3)(outputs, empty)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_bbox"].item() == 0.0 and losses["loss_giou"].item() == 0.0
    assert losses["loss_vfl"].item() > 0.0  # every query is pushed towards background


def test_unknown_loss_is_reported() -> None:
    matcher = HungarianMatcher({"cost_class": 1, "cost_bbox": 1, "cost_giou": 1})
    with pytest.raises(ValueError, match="'masks'"):
        SetCriterion(matcher, {}, ["vfl", "masks"])
