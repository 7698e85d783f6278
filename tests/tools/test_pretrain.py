"""tools/pretrain.py end to end: pretrain on generated shapes, initialise a detector's SpaRTAN
backbone from the checkpoint, evaluate only, and train under torchrun (2 CPU ranks, gloo)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import rtdetr_spartan
from rtdetr_spartan.core import ConfigError, YAMLConfig
from rtdetr_spartan.misc.checkpoint import CheckpointError, load_checkpoint
from rtdetr_spartan.optim.param_groups import param_groups_from_config, scaled_lr
from rtdetr_spartan.solver.cli import config_overrides
from rtdetr_spartan.solver.steps import FAULT_ENV
from tests.cls_utils import PRETRAIN_TOOL, REPO_ROOT, SHAPES_CLS_CONFIG, make_tiny_cls_dataset, tiny_overrides
from tests.train_utils import TINY_SPARTAN_CONFIG, as_cli_updates, read_json_lines, run_torchrun
from tools import export_onnx, train
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


def test_imagenet_config_builds_the_paper_recipe() -> None:
    """The ImageNet config's components behave as the paper's recipe: AdamW whose decay spares
    norms, biases and the SMixer gammas, lr 2.5e-3 per 2048 images warmed up from 1e-4 over 20
    of 300 epochs then annealed to 1e-6, and a 1000-class head."""
    cfg = YAMLConfig(REPO_ROOT / "configs" / "spartan" / "spartan_t_imagenet.yml")
    model = cfg.model
    assert model.linear.out_features == 1000
    groups = param_groups_from_config(cfg.yaml_cfg["optimizer"], model, cfg.yaml_cfg)
    optimizer = cfg.build("optimizer", params=groups)
    assert isinstance(optimizer, torch.optim.AdamW)
    decay, no_decay = optimizer.param_groups
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.03, 0.0)
    assert all(not n.endswith(("bias", "gamma")) and "norm" not in n for n in decay["names"])
    assert scaled_lr(optimizer.defaults["lr"], 8 * 256, cfg.yaml_cfg["base_lr_batch"]) == pytest.approx(2.5e-3)
    scheduler = cfg.build("lr_scheduler", optimizer=optimizer, iters_per_epoch=1)
    lrs = []
    for _ in range(301):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert (lrs[0], lrs[20], lrs[300]) == pytest.approx((1e-4, 2.5e-3, 1e-6))
    assert max(lrs) == lrs[20] and all(a >= b for a, b in zip(lrs[20:], lrs[21:]))
    with pytest.raises(FileNotFoundError, match="data/imagenet/train does not exist"):
        cfg.build("train_dataloader")


def test_detection_config_is_refused() -> None:
    with pytest.raises(ConfigError, match="task: classification"):
        main(["-c", str(TINY_SPARTAN_CONFIG)])


@pytest.mark.slow
def test_run_writes_checkpoints_and_logs(pretrained: Path) -> None:
    names = sorted(p.name for p in pretrained.iterdir())
    assert names == ["best.pth", "last.pth", "log.txt", "summary", "train.log"]
    records = read_json_lines(pretrained / "log.txt")
    assert [r["epoch"] for r in records] == [0, 1] and records[0]["test_num_images"] == 8
    last = load_checkpoint(pretrained / "last.pth")
    assert last["epoch"] == 1 and last["best"]["metric"] == "top1"
    assert {"model", "ema", "optimizer", "lr_scheduler", "rng", "config"} <= set(last)
    assert last["config"]["task"] == "classification"
    assert last["task"] == "classification" and last["version"] == rtdetr_spartan.__version__
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


def test_a_classifier_checkpoint_is_refused_where_a_detector_is_needed(pretrained: Path, tmp_path: Path) -> None:
    best = pretrained / "best.pth"
    needs = rf"checkpoint {best} is a classification checkpoint \(a classifier from tools/pretrain.py.*\); "
    for flag, purpose in (("-r", "resuming"), ("-t", "tuning")):
        argv = [
            "-c",
            str(TINY_SPARTAN_CONFIG),
            "--device",
            "cpu",
            "--output-dir",
            str(tmp_path / flag),
            flag,
            str(best),
        ]
        with pytest.raises(CheckpointError, match=rf"{needs}{purpose} \({flag}\) a detection .*needs a detection"):
            train.main(argv)
    with pytest.raises(CheckpointError, match=rf"{needs}a detector \(-r\) needs a detection checkpoint"):
        export_onnx.main(["-c", str(TINY_SPARTAN_CONFIG), "-r", str(best), "-o", str(tmp_path / "m.onnx")])


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


@pytest.mark.slow
@pytest.mark.distributed
def test_torchrun_two_cpu_ranks(cls_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    updates = as_cli_updates(tiny_overrides(cls_data, batch_size=4))
    proc = run_torchrun(
        ["-c", str(SHAPES_CLS_CONFIG), "--output-dir", str(out), "-u", *updates],
        timeout=TORCHRUN_TIMEOUT_S,
        tool=PRETRAIN_TOOL,
    )
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


@pytest.mark.slow
@pytest.mark.distributed
def test_torchrun_restart_resumes_with_auto(cls_data: Path, tmp_path: Path) -> None:
    """``torchrun --max-restarts=1 ... -r auto``: rank 1 dies mid-epoch 1 (first attempt only); the
    restarted workers resume from epoch 0's last.pth and finish all 3 epochs, redoing epoch 1 only."""
    out = tmp_path / "elastic"
    updates = as_cli_updates(tiny_overrides(cls_data, epochs=3, batch_size=4))
    proc = run_torchrun(
        ["-c", str(SHAPES_CLS_CONFIG), "-r", "auto", "--output-dir", str(out), "-u", *updates],
        timeout=2 * TORCHRUN_TIMEOUT_S,
        tool=PRETRAIN_TOOL,
        torchrun_args=["--max-restarts=1"],
        env={FAULT_ENV: "1:1:1"},  # rank 1, epoch 1, iteration 1
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "rank 1 exits at epoch 1, iteration 1" in proc.stderr + proc.stdout  # the fault did happen
    log = (out / "train.log").read_text()
    assert f"resume auto: no {out / 'last.pth'}; starting a fresh run" in log
    assert f"resume auto: continuing the run in {out} from {out / 'last.pth'}" in log
    assert "resumed after epoch 0" in log
    assert [r["epoch"] for r in read_json_lines(out / "log.txt")] == [0, 1, 2]  # epoch 1 lost once, redone
    last = load_checkpoint(out / "last.pth")
    assert last["epoch"] == 2 and len(last["rng"]) == 2
    assert last["lr_scheduler"]["last_epoch"] == 3 * 2  # 16 images / (2 ranks x 4): 2 steps per epoch
    assert not list(out.glob(".*.tmp"))
