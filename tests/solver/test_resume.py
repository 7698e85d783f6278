"""Resuming a run: the checkpoint's contents load as data only, changed settings are refused
except ``epochs`` (the lr schedule is then rebuilt), ``-r auto``; --overwrite's clean-up; the
training values checked when a solver is built."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

import rtdetr_spartan
from rtdetr_spartan.core import ConfigError, YAMLConfig
from rtdetr_spartan.optim.warmup_cosine import warmup_cosine_lr
from rtdetr_spartan.solver import DetSolver
from rtdetr_spartan.solver.resume import check_resume_config, config_differences, remove_previous_run
from tests.train_utils import TINY_CONFIG, dataset_overrides, make_tiny_dataset

MIN_LR = 1e-6


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("shapes"), train=4, val=2)


@pytest.fixture(scope="module", params=["epoch", "iteration"])
def cosine_config(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny config with a cosine schedule over ``epochs`` (stepped per ``param``), which
    depends on the planned run length."""
    resolved = json.loads(json.dumps(YAMLConfig(TINY_CONFIG).yaml_cfg))  # tuples -> lists for YAML
    resolved["lr_scheduler"] = {"type": "WarmupCosineLR", "min_lr": MIN_LR, "step_per": request.param}
    path = tmp_path_factory.mktemp("cfg") / "cosine.yml"
    path.write_text(yaml.safe_dump(resolved))
    return path


def _cfg(config: Path, data: Path, out: Path, **overrides: Any) -> YAMLConfig:
    base = dataset_overrides(data)
    base["train_dataloader"]["batch_size"] = 2
    return YAMLConfig(config, **{**base, "output_dir": str(out), "device": "cpu", "epochs": 1, **overrides})


@pytest.fixture(scope="module")
def one_epoch(cosine_config: Path, shapes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``last.pth`` of a 1-epoch run planned for 1 epoch."""
    out = tmp_path_factory.mktemp("run")
    DetSolver(_cfg(cosine_config, shapes, out)).fit()
    return out / "last.pth"


def test_the_checkpoint_holds_every_part_and_loads_as_data_only(one_epoch: Path) -> None:
    ckpt = torch.load(one_epoch, map_location="cpu", weights_only=True)
    assert {"model", "ema", "optimizer", "lr_scheduler", "rng", "config", "epoch", "best", "date"} <= set(ckpt)
    assert ckpt["task"] == "detection" and ckpt["version"] == rtdetr_spartan.__version__
    assert ckpt["epoch"] == 0 and ckpt["best"]["metric"] == "AP" and ckpt["config"]["epochs"] == 1
    assert ckpt["ema"]["updates"] == 2 and ckpt["optimizer"]["state"]  # AdamW moments after 2 steps
    (rank0,) = ckpt["rng"]
    assert {"python", "numpy", "torch", "data"} <= set(rank0)


def test_changed_settings_are_refused_naming_each(cosine_config: Path, shapes: Path, one_epoch: Path) -> None:
    cfg = _cfg(cosine_config, shapes, one_epoch.parent, resume=str(one_epoch), optimizer={"lr": 0.1}, seed=5)
    solver = DetSolver(cfg)
    message = (
        rf"cannot resume {one_epoch} with changed settings \(2 differ .*: optimizer.lr: checkpoint 0.0001, now 0.1; "
        r"seed: checkpoint 0, now 5\)\. .*only epochs may change.*-t "
    )
    with pytest.raises(ConfigError, match=message):
        solver.setup_train()


@pytest.mark.slow
def test_extending_epochs_rebuilds_the_schedule_for_the_new_total(
    cosine_config: Path, shapes: Path, one_epoch: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = tmp_path / "extended"
    run.mkdir()
    (run / "last.pth").write_bytes(one_epoch.read_bytes())
    solver = DetSolver(_cfg(cosine_config, shapes, run, resume="auto", epochs=3, checkpoint_freq=1))
    state = solver.setup_train()
    assert solver.last_epoch == 0
    base_lrs = [g["initial_lr"] for g in state.optimizer.param_groups]
    # A 1-epoch cosine had reached min_lr; a 3-epoch one is at epoch 1 of 3.
    expected = [warmup_cosine_lr(1.0, lr, 3, 0, 1e-4, MIN_LR) for lr in base_lrs]
    assert [g["lr"] for g in state.optimizer.param_groups] == pytest.approx(expected, rel=1e-6)
    reached = [g["lr"] for g in torch.load(one_epoch, weights_only=True)["optimizer"]["param_groups"]]
    assert reached == pytest.approx([MIN_LR] * len(reached)) and all(e > 5 * MIN_LR for e in expected)
    assert "rebuilt for 3 epochs and advanced past 1 finished epochs" in caplog.text
    solver.fit()
    after = torch.load(run / "checkpoint0002.pth", weights_only=True)
    assert after["epoch"] == 2 and after["config"]["epochs"] == 3
    # The schedule continued on the 3-epoch curve to its end.
    assert [g["lr"] for g in after["optimizer"]["param_groups"]] == pytest.approx([MIN_LR] * len(base_lrs))


def test_auto_resume_with_the_same_settings(cosine_config: Path, shapes: Path, one_epoch: Path) -> None:
    solver = DetSolver(_cfg(cosine_config, shapes, one_epoch.parent, resume="auto", print_freq=7, device="cpu"))
    state = solver.setup_train()
    assert solver.last_epoch == 0 and state.ema is not None and state.ema.updates == 2


def test_config_differences_ignore_locations_and_reporting() -> None:
    saved = {
        "epochs": 1,
        "output_dir": "a",
        "eval_spatial_size": (64, 64),
        "optimizer": {"lr": 1e-4, "betas": [0.9, 0.999]},
        "train_dataloader": {"num_workers": 4, "dataset": {"img_folder": "/old/train"}},
        "PResNet": {"pretrained": "/old/r18.pth"},
    }
    current = {
        "epochs": 3,
        "output_dir": "b",
        "device": "cpu",
        "eval_spatial_size": [64, 64],
        "optimizer": {"lr": 1e-4, "betas": [0.9, 0.99]},
        "train_dataloader": {"num_workers": 0, "dataset": {"img_folder": "/new/train"}, "shuffle": False},
        "PResNet": {"pretrained": "/new/r18.pth"},
    }
    assert config_differences(saved, current) == {
        "epochs": (1, 3),
        "optimizer.betas": ([0.9, 0.999], [0.9, 0.99]),
        "train_dataloader.shuffle": ("<not set>", False),
    }


def test_a_checkpoint_without_config_is_not_compared(caplog: pytest.LogCaptureFixture) -> None:
    assert check_resume_config({"ema": {"module": {}}}, {"optimizer": {"lr": 0.1}}, "published.pth") == set()
    assert not caplog.text
    assert check_resume_config({"optimizer": {}, "last_epoch": 3}, {"optimizer": {"lr": 0.1}}, "ref.pth") == set()
    assert "ref.pth stores no config" in caplog.text and "replace the config's lr" in caplog.text


def test_overwrite_clears_every_file_of_the_earlier_run(tmp_path: Path) -> None:
    out, summary = tmp_path / "out", tmp_path / "out" / "summary"
    (summary / "nested").mkdir(parents=True)
    earlier = ["last.pth", "best.pth", "log.txt", "checkpoint0003.pth", "summary/events.out.tfevents.1.host"]
    earlier.append("summary/nested/events.out.tfevents.2.host")
    for name in [*earlier, "train.log", "notes.txt", "eval/summary.json"]:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("earlier run")
    removed = remove_previous_run(out, summary)
    assert sorted(str(p.relative_to(out)) for p in removed) == sorted([*earlier, "train.log"])
    assert not any((out / name).exists() for name in earlier)
    assert (out / "train.log").read_text() == ""  # emptied: a handler appending to it keeps working
    assert (out / "notes.txt").exists() and (out / "eval" / "summary.json").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"train_dataloader": {"batch_size": 0}},
            r"train_dataloader.batch_size \(per process\) must be an integer >= 1",
        ),
        ({"val_dataloader": {"batch_size": 2.5}}, r"val_dataloader.batch_size .* got 2.5"),
        ({"optimizer": {"lr": -1}}, r"optimizer.lr must be a number > 0, got -1"),
        ({"optimizer": {"lr": 0}}, r"optimizer.lr must be a number > 0, got 0"),
        ({"optimizer": {"params": [{"params": "x", "lr": -0.1}]}}, r"optimizer.params\[0\].lr must be a number >= 0"),
    ],
)
def test_bad_training_values_are_named_when_the_solver_is_built(overrides: dict[str, Any], message: str) -> None:
    cfg = YAMLConfig(TINY_CONFIG, device="cpu", **overrides)
    with pytest.raises(ConfigError, match=rf"{TINY_CONFIG}: {message}"):
        DetSolver(cfg)
