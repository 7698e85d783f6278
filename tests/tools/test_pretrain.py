"""tools/pretrain.py end to end: pretrain on generated shapes, initialise a detector's SpaRTAN
backbone from the checkpoint, evaluate only, and train under torchrun (2 CPU ranks, gloo)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rtdetr_spartan.core import ConfigError, YAMLConfig
from rtdetr_spartan.misc.checkpoint import load_checkpoint
from rtdetr_spartan.solver.cli import config_overrides
from tests.cls_utils import PRETRAIN_TOOL, REPO_ROOT, SHAPES_CLS_CONFIG, make_tiny_cls_dataset, tiny_overrides
from tests.train_utils import TINY_SPARTAN_CONFIG, as_cli_updates, read_json_lines
from tools.pretrain import get_args_parser, main

TORCHRUN_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def cls_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_cls_dataset(tmp_path_factory.mktemp("shapes_cls"))


@pytest.fixture(scope="module")
def pretrained(cls_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Output folder of a 2-epoch pretraining run with EMA."""
    out = tmp_path_factory.mktemp("pretrain") / "out"
    updates = as_cli_updates({**tiny_overrides(cls_data), "use_ema": True, "ema": {"decay": 0.9, "warmups": 2}})
    assert main(["-c", str(SHAPES_CLS_CONFIG), "--output-dir", str(out), "--seed", "1", "-u", *updates]) == 0
    return out


def test_flags_become_config_overrides() -> None:
    args = get_args_parser().parse_args(
        [
            "-c",
            "x.yml",
            "-r",
            "last.pth",
            "--amp",
            "--seed",
            "3",
            "--output-dir",
            "out",
            "-u",
            "epochs=5",
            "-u",
            "optimizer.lr=0.001",
        ]
    )
    assert config_overrides(args) == {
        "epochs": 5,
        "optimizer": {"lr": 0.001},
        "seed": 3,
        "resume": "last.pth",
        "output_dir": "out",
        "use_amp": True,
    }


def test_imagenet_config_holds_the_paper_recipe() -> None:
    cfg = YAMLConfig(REPO_ROOT / "configs" / "spartan" / "spartan_t_imagenet.yml")
    y = cfg.yaml_cfg
    assert (y["task"], y["epochs"], y["num_classes"], y["base_lr_batch"], y["use_amp"]) == (
        "classification",
        300,
        1000,
        2048,
        True,
    )
    assert (y["optimizer"]["type"], y["optimizer"]["lr"], y["optimizer"]["weight_decay"]) == ("AdamW", 2.5e-3, 0.03)
    assert y["optimizer"]["params"]["type"] == "no_weight_decay_groups"
    schedule = y["lr_scheduler"]
    assert (schedule["warmup_epochs"], schedule["warmup_lr"], schedule["min_lr"]) == (20, 1e-4, 1e-6)
    train, val = y["train_dataloader"], y["val_dataloader"]
    assert train["dataset"]["root"] == "./data/imagenet/train" and val["dataset"]["root"] == "./data/imagenet/val"
    aug = train["dataset"]["transforms"]
    assert (aug["size"], aug["hflip"], aug["randaugment_magnitude"], aug["random_erasing"]) == (256, 0.5, 7, 0.25)
    assert (train["collate_fn"]["cutmix_alpha"], train["collate_fn"]["mixup_alpha"]) == (1.0, 0.2)
    assert (val["dataset"]["transforms"]["resize"], val["dataset"]["transforms"]["crop"]) == (256, 256)
    model = cfg.model
    assert model.linear.out_features == 1000 and y["SpaRTANClassifier"]["drop_path_rate"] == 0.1
    with pytest.raises(FileNotFoundError, match="data/imagenet/train does not exist"):
        cfg.build("train_dataloader")


def test_detection_config_is_refused() -> None:
    with pytest.raises(ConfigError, match="task: classification"):
        main(["-c", str(TINY_SPARTAN_CONFIG)])


def test_run_writes_checkpoints_and_logs(pretrained: Path) -> None:
    names = sorted(p.name for p in pretrained.iterdir())
    assert names == ["best.pth", "last.pth", "log.txt", "summary", "train.log"]
    records = read_json_lines(pretrained / "log.txt")
    assert [r["epoch"] for r in records] == [0, 1] and records[0]["test_num_images"] == 8
    last = load_checkpoint(pretrained / "last.pth")
    assert last["epoch"] == 1 and last["best"]["metric"] == "top1"
    assert {"model", "ema", "optimizer", "lr_scheduler", "rng", "config"} <= set(last)
    assert last["config"]["task"] == "classification"
    assert any(p.name.startswith("events.out.tfevents") for p in (pretrained / "summary").iterdir())
    log = (pretrained / "train.log").read_text()
    assert "lr 0.0005 = base lr 0.004 x total batch 8" in log
    assert f"best top1 {last['best']['value']} at epoch {last['best']['epoch']}; checkpoints in {pretrained}" in log
    torch.load(pretrained / "best.pth", weights_only=True)  # loadable without unpickling code


def _detector_backbone(checkpoint: Path) -> dict[str, torch.Tensor]:
    cfg = YAMLConfig(TINY_SPARTAN_CONFIG, SpaRTAN={"pretrained": str(checkpoint)})
    return cfg.model.backbone.state_dict()


def test_checkpoint_initialises_detector_backbone_with_ema_weights(pretrained: Path, tmp_path: Path) -> None:
    best = load_checkpoint(pretrained / "best.pth")
    ema, model = best["ema"]["module"], best["model"]
    backbone = _detector_backbone(pretrained / "best.pth")
    assert set(backbone) == {k for k in ema if not k.startswith("linear.")}
    assert all(torch.equal(backbone[k], ema[k]) for k in backbone)
    assert not all(torch.equal(backbone[k], model[k]) for k in backbone)  # EMA was chosen, not the model
    without_ema = tmp_path / "model_only.pth"
    torch.save({k: v for k, v in best.items() if k != "ema"}, without_ema)
    backbone = _detector_backbone(without_ema)
    assert all(torch.equal(backbone[k], model[k]) for k in backbone)


def test_test_only_reproduces_best_top1(pretrained: Path, cls_data: Path) -> None:
    updates = as_cli_updates({**tiny_overrides(cls_data), "use_ema": True})
    assert (
        main(
            [
                "-c",
                str(SHAPES_CLS_CONFIG),
                "-r",
                str(pretrained / "best.pth"),
                "--test-only",
                "--output-dir",
                str(pretrained),
                "-u",
                *updates,
            ]
        )
        == 0
    )
    records = read_json_lines(pretrained / "log.txt")
    best = load_checkpoint(pretrained / "best.pth")["best"]
    assert records[-1]["test_top1"] == best["value"] and records[-1]["test_num_images"] == 8


def test_torchrun_two_cpu_ranks(cls_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    updates = as_cli_updates(tiny_overrides(cls_data, batch_size=4))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        str(PRETRAIN_TOOL),
        "-c",
        str(SHAPES_CLS_CONFIG),
        "--output-dir",
        str(out),
        "-u",
        *updates,
    ]
    proc = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=TORCHRUN_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-4000:]
    records = read_json_lines(out / "log.txt")  # rank 0 writes
    assert [r["epoch"] for r in records] == [0, 1]
    assert all(r["test_num_images"] == 8 for r in records)  # each rank its shard, reduced
    last = load_checkpoint(out / "last.pth")
    assert len(last["rng"]) == 2
    # 16 images, 2 ranks x batch 4: 2 steps per epoch; lr scaled to the total batch 8
    assert last["lr_scheduler"]["last_epoch"] == 4
    assert last["optimizer"]["param_groups"][0]["initial_lr"] == pytest.approx(4e-3 * 8 / 64)
    log = (out / "train.log").read_text()
    assert "world size 2" in log and "total batch 8 (4 x 2 processes)" in log
