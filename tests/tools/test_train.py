"""tools/train.py: the command line, in process and under torchrun (2 CPU ranks, gloo)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from rtdetr_spartan.core import ConfigError, YAMLConfig
from rtdetr_spartan.misc.checkpoint import load_checkpoint, save_atomic
from rtdetr_spartan.solver.cli import config_overrides
from tests.train_utils import (
    TINY_CONFIG,
    as_cli_updates,
    dataset_overrides,
    make_tiny_dataset,
    read_json_lines,
    run_torchrun,
)
from tools.train import get_args_parser, main

TORCHRUN_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("shapes"), train=4, val=3)


def test_resume_and_tuning_together_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["-c", str(TINY_CONFIG), "-r", "a.pth", "-t", "b.pth"])
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_flags_become_config_overrides() -> None:
    args = get_args_parser().parse_args(
        [
            "-c",
            "x.yml",
            "-t",
            "w.pth",
            "--amp",
            "--seed",
            "3",
            "--device",
            "cpu",
            "--output-dir",
            "out",
            "-u",
            "epochs=5",
            "optimizer.lr=0.001",
            "seed=9",
        ]
    )
    assert config_overrides(args) == {
        "epochs": 5,
        "optimizer": {"lr": 0.001},
        "seed": 3,
        "tuning": "w.pth",
        "device": "cpu",
        "output_dir": "out",
        "use_amp": True,
    }


def test_auto_resume_overwrite_and_compile_flags() -> None:
    parse = get_args_parser().parse_args
    assert config_overrides(parse(["-c", "x.yml", "-r", "auto"])) == {"resume": "auto"}
    assert config_overrides(parse(["-c", "x.yml", "--overwrite", "--compile", "-t", "w.pth"])) == {
        "tuning": "w.pth",
        "compile": True,
        "overwrite": True,
    }


def test_fresh_run_into_an_earlier_run_names_the_file(shapes: Path, tmp_path: Path) -> None:
    (tmp_path / "last.pth").write_bytes(b"an earlier run")
    updates = as_cli_updates(dataset_overrides(shapes))
    argv = ["-c", str(TINY_CONFIG), "--device", "cpu", "--output-dir", str(tmp_path), "-u", *updates]
    with pytest.raises(ConfigError, match=rf"{tmp_path / 'last.pth'} exists: .*-r auto.*--overwrite"):
        main(argv)
    assert (tmp_path / "last.pth").read_bytes() == b"an earlier run"


def test_resume_with_a_new_lr_and_more_epochs_names_the_lr(tmp_path: Path) -> None:
    """The issue's case: ``-r last.pth -u epochs=3 optimizer.lr=0.1``; epochs may change, the lr not."""
    saved = YAMLConfig(TINY_CONFIG, device="cpu", output_dir=str(tmp_path)).yaml_cfg
    last = save_atomic({"model": {}, "epoch": 0, "task": "detection", "config": saved}, tmp_path / "last.pth")
    argv = ["-c", str(TINY_CONFIG), "--device", "cpu", "--output-dir", str(tmp_path), "-r", str(last)]
    argv += ["-u", "epochs=3", "optimizer.lr=0.1"]
    with pytest.raises(
        ConfigError, match=r"\(1 differ from the checkpoint's config: optimizer.lr: checkpoint 0.0001, now 0.1\)"
    ):
        main(argv)


@pytest.mark.slow
def test_overwrite_clears_the_earlier_runs_logs_and_events(shapes: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "summary").mkdir(parents=True)
    (out / "last.pth").write_bytes(b"earlier")
    (out / "log.txt").write_text('{"epoch": 5}\n')
    (out / "train.log").write_text("EARLIER RUN LINE\n")
    old_events = out / "summary" / "events.out.tfevents.1.earlier"
    old_events.write_bytes(b"earlier")
    updates = as_cli_updates(dataset_overrides(shapes))
    assert (
        main(["-c", str(TINY_CONFIG), "--device", "cpu", "--output-dir", str(out), "--overwrite", "-u", *updates]) == 0
    )
    events = sorted((out / "summary").rglob("events.out.tfevents.*"))
    assert len(events) == 1 and events != [old_events]
    log = (out / "train.log").read_text()
    assert "EARLIER RUN LINE" not in log
    assert (
        f"overwrite: removed the earlier run's last.pth, log.txt, train.log, 1 TensorBoard event files in {out / 'summary'}"
        in log
    )
    assert [r["epoch"] for r in read_json_lines(out / "log.txt")] == [0]


def test_test_only_writes_eval_files_and_log(shapes: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    updates = as_cli_updates(dataset_overrides(shapes))
    assert (
        main(["-c", str(TINY_CONFIG), "--test-only", "--device", "cpu", "--output-dir", str(out), "-u", *updates]) == 0
    )
    summary = json.loads((out / "eval" / "summary.json").read_text())
    assert len(summary["stats"]) == 12 and summary["num_images"] == 3
    results = json.loads((out / "eval" / "results.json").read_text())
    assert {r["image_id"] for r in results} == {1, 2, 3}
    assert "AP" in (out / "train.log").read_text()
    assert not (out / "last.pth").exists()


def _alternating_empty_annotations(root: Path) -> Path:
    """Train annotations of 4 images where ids 2 and 4 have no boxes: with batch 1, no shuffling
    and 2 ranks, rank 1 only ever sees images without objects."""
    data = json.loads((root / "annotations" / "instances_train.json").read_text())
    boxed = sorted({a["image_id"] for a in data["annotations"]})[:4]
    images = {img["id"]: img for img in data["images"]}
    new_images, new_anns = [], []
    for new_id, old_id in enumerate(boxed, start=1):
        new_images.append({**images[old_id], "id": new_id})
        if new_id % 2 == 1:
            new_anns += [{**a, "image_id": new_id} for a in data["annotations"] if a["image_id"] == old_id]
    for index, ann in enumerate(new_anns, start=1):
        ann["id"] = index
    path = root / "annotations" / "alternating_empty.json"
    path.write_text(json.dumps({**data, "images": new_images, "annotations": new_anns}))
    return path


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    """One epoch under ``torchrun --nproc-per-node=2`` (gloo) where rank 1's batches have no
    boxes while denoising is on, and DDP is strict (``find_unused_parameters: False``: a
    parameter unused on one rank, e.g. the denoising embedding, would fail the run)."""
    root = tmp_path_factory.mktemp("ddp")
    data = make_tiny_dataset(root / "data", train=6, val=3)
    overrides = dataset_overrides(data, train_ann=_alternating_empty_annotations(data))
    overrides["train_dataloader"].update(batch_size=1, shuffle=False)
    updates = as_cli_updates({**overrides, "find_unused_parameters": False})
    out = root / "out"
    proc = run_torchrun(
        ["-c", str(TINY_CONFIG), "--device", "cpu", "--output-dir", str(out), "-u", *updates],
        timeout=TORCHRUN_TIMEOUT_S,
    )
    return proc, out


@pytest.mark.slow
@pytest.mark.distributed
def test_torchrun_two_cpu_ranks_train_and_evaluate(ddp_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    proc, out = ddp_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    (record,) = read_json_lines(out / "log.txt")  # rank 1 wrote no second line
    assert record["epoch"] == 0
    ckpt = load_checkpoint(out / "last.pth")
    assert len(ckpt["rng"]) == 2 and ckpt["ema"]["updates"] == 2  # 4 images / (2 ranks x batch 1)
    summary = json.loads((out / "eval" / "summary.json").read_text())
    assert summary["num_images"] == 3  # sharded over the ranks, each image once
    results = json.loads((out / "eval" / "results.json").read_text())
    assert {r["image_id"] for r in results} == {1, 2, 3}
    log = (out / "train.log").read_text()
    assert "world size 2" in log and "[rank 1]" not in log
    assert sorted(p.name for p in out.iterdir()) == ["best.pth", "eval", "last.pth", "log.txt", "summary", "train.log"]


@pytest.mark.slow
@pytest.mark.distributed
def test_torchrun_rank_without_boxes_does_not_hang(ddp_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    proc, out = ddp_run  # the fixture's timeout turns a hang into a failure
    assert proc.returncode == 0, proc.stderr[-4000:]
    (record,) = read_json_lines(out / "log.txt")
    assert record["train_loss_vfl_dn_0"] > 0  # denoising ran on rank 0
