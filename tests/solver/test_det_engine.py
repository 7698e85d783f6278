"""The non-finite output check of the detection training loop (single process)."""

from __future__ import annotations

import math

import pytest
import torch

from rtdetr_spartan.solver.det_engine import check_finite_outputs


def test_non_finite_outputs_name_the_tensor() -> None:
    outputs = {"pred_logits": torch.zeros(1, 2, 3), "pred_boxes": torch.full((1, 2, 4), math.nan)}
    with pytest.raises(FloatingPointError, match=r"epoch 0, iteration 4 \(rank 0: pred_boxes\)"):
        check_finite_outputs(outputs, epoch=0, iteration=4)
    check_finite_outputs({"pred_logits": torch.zeros(1, 2, 3), "pred_boxes": torch.zeros(1, 2, 4)}, 0, 0)
