"""The one epoch loop: its statistics on a toy model, and the same TensorBoard tags and lr
semantic for detection and classification runs."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from rtdetr_spartan.core import YAMLConfig, merge_dict
from rtdetr_spartan.solver import ClsSolver, DetSolver, LoopSettings, TrainState, TrainStep
from rtdetr_spartan.solver.loop import predict_batches, to_device, train_one_epoch
from tests.cls_utils import SHAPES_CLS_CONFIG, make_tiny_cls_dataset, tiny_overrides
from tests.train_utils import make_tiny_dataset, read_json_lines, tiny_cfg


def _toy_state(lrs: list[float]) -> TrainState:
    """A linear model on 3 batches of 2, with a per-iteration schedule through ``lrs``."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    data = TensorDataset(torch.randn(6, 3), torch.randn(6, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lrs[min(step, len(lrs) - 1)])
    scheduler.step_per = "iteration"  # type: ignore[attr-defined]
    return TrainState(
        model=model,
        criterion=nn.MSELoss(),
        postprocessor=None,
        ema=None,
        val_loader=DataLoader(data, batch_size=2),
        train_loader=DataLoader(data, batch_size=2),
        optimizer=optimizer,
        lr_scheduler=scheduler,
        scaler=None,
    )


def _two_terms(state: TrainState) -> TrainStep:
    def losses(outputs: torch.Tensor, batch: Any) -> dict[str, torch.Tensor]:
        mse = state.criterion(outputs, batch[1])
        return {"loss_a": mse, "loss_b": 2 * mse}

    return TrainStep(forward=lambda batch: state.model(batch[0]), losses=losses)


def test_epoch_statistics_are_term_means_and_the_last_lr() -> None:
    state = _toy_state([0.1, 0.05, 0.02])
    seen: list[float] = []
    step = _two_terms(state)
    recording = TrainStep(forward=step.forward, losses=lambda o, b: _record(seen, step.losses(o, b)))
    stats = train_one_epoch(state, recording, 0, LoopSettings(torch.device("cpu"), print_freq=0))
    assert stats["lr"] == pytest.approx(0.02)  # the last step's lr, not the mean 0.0567
    assert stats["loss"] == pytest.approx(sum(seen) / 3)
    assert stats["loss_b"] == pytest.approx(2 * stats["loss_a"]) and stats["loss"] == pytest.approx(3 * stats["loss_a"])
    assert state.optimizer.param_groups[0]["lr"] == pytest.approx(0.02)  # stepped once per iteration


def _record(seen: list[float], losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    seen.append(float(sum(v.item() for v in losses.values())))
    return losses


def test_non_finite_loss_names_epoch_and_iteration() -> None:
    state = _toy_state([1.0])
    calls = iter(range(10))

    def losses(outputs: torch.Tensor, batch: Any) -> dict[str, torch.Tensor]:
        loss = state.criterion(outputs, batch[1])
        return {"loss": loss * math.nan if next(calls) == 1 else loss}

    step = TrainStep(forward=lambda batch: state.model(batch[0]), losses=losses)
    with pytest.raises(FloatingPointError, match=r"at epoch 2, iteration 1: non-finite loss nan"):
        train_one_epoch(state, step, 2, LoopSettings(torch.device("cpu"), print_freq=0))


def test_predictions_are_made_in_eval_mode_without_gradients() -> None:
    state = _toy_state([1.0])
    model = nn.Sequential(state.model, nn.Dropout(0.9))
    results = list(predict_batches(model, state.val_loader, lambda batch: model(batch[0]), torch.device("cpu")))
    assert not model.training and len(results) == 3
    for (images, _), outputs in results:
        assert not outputs.requires_grad and torch.equal(outputs, state.model(images).detach())
    nested = to_device({"a": [torch.zeros(1)], "b": (torch.ones(1), "name")}, torch.device("cpu"))
    assert nested["b"][1] == "name" and isinstance(nested["b"], tuple)


def _scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "summary"))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.mark.slow  # two training runs
def test_both_tasks_write_the_same_tags_and_lr_semantic(tmp_path: Path) -> None:
    schedule = {"type": "WarmupCosineLR", "warmup_epochs": 0, "min_lr": 1e-6, "step_per": "iteration"}
    det_data = make_tiny_dataset(tmp_path / "det_data", train=4, val=2)
    det_cfg = tiny_cfg(det_data, tmp_path / "det", epochs=1, print_freq=1)
    det_cfg.yaml_cfg["lr_scheduler"] = dict(schedule)  # replaces the tiny config's MultiStepLR
    DetSolver(det_cfg).fit()
    cls_data = make_tiny_cls_dataset(tmp_path / "cls_data", train=8, val=4)
    cls_overrides = merge_dict(tiny_overrides(cls_data, epochs=1, batch_size=4), {"output_dir": str(tmp_path / "cls")})
    ClsSolver(YAMLConfig(SHAPES_CLS_CONFIG, **merge_dict(cls_overrides, {"lr_scheduler": schedule}))).fit()
    tags = {}
    for task in ("det", "cls"):
        scalars = _scalars(tmp_path / task)
        tags[task] = {t for t in scalars if not t.startswith(("Test/", "Train/loss_"))}  # task terms and metrics
        (record,) = read_json_lines(tmp_path / task / "log.txt")
        lrs = [value for _, value in scalars["Lr/pg_0"]]
        losses = [value for _, value in scalars["Loss/total"]]
        assert len(set(lrs)) == len(lrs) > 1, task  # one point per iteration, the lr falling
        assert record["train_lr"] == pytest.approx(lrs[-1], rel=1e-5) == scalars["Train/lr"][0][1], task
        assert record["train_loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-5), task
    assert tags["det"] == tags["cls"] == {"Loss/total", "Lr/pg_0", "Train/loss", "Train/lr"}
