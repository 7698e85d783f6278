"""The non-finite checks of the detection training loop (single process)."""

from __future__ import annotations

import math

import pytest
import torch

from rtdetr_spartan.solver.det_engine import check_finite_loss, check_finite_outputs


def test_finite_loss_returns_the_total() -> None:
    losses = {"loss_vfl": torch.tensor(0.5), "loss_bbox": torch.tensor(1.25)}
    assert check_finite_loss(losses, losses, epoch=3, iteration=7) == pytest.approx(1.75)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_loss_names_epoch_iteration_and_losses(bad: float) -> None:
    losses = {"loss_vfl": torch.tensor(0.5), "loss_giou_dn_1": torch.tensor(bad)}
    with pytest.raises(FloatingPointError, match=r"epoch 3, iteration 7.*'loss_giou_dn_1': (nan|inf)"):
        check_finite_loss(losses, losses, epoch=3, iteration=7)


def test_non_finite_outputs_name_the_tensor() -> None:
    outputs = {"pred_logits": torch.zeros(1, 2, 3), "pred_boxes": torch.full((1, 2, 4), math.nan)}
    with pytest.raises(FloatingPointError, match=r"epoch 0, iteration 4 \(rank 0: pred_boxes\)"):
        check_finite_outputs(outputs, epoch=0, iteration=4)
    check_finite_outputs({"pred_logits": torch.zeros(1, 2, 3), "pred_boxes": torch.zeros(1, 2, 4)}, 0, 0)
