"""``rtdetr-spartan``: the subcommand list, each subcommand's options equal to its tool's, the
installed console script and ``python -m rtdetr_spartan``, ``--data``, ``val`` and DDP under
``torchrun -m rtdetr_spartan`` on the CPU (gloo)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rtdetr_spartan.cli import main as cli
from rtdetr_spartan.data.shapes import make_yolo_dataset
from rtdetr_spartan.misc.checkpoint import load_checkpoint
from rtdetr_spartan.solver.cli import load_tool_config
from tests.train_utils import REPO_ROOT, TINY_CONFIG, make_tiny_dataset, read_json_lines
from tools import train as train_tool

TOOLS = {
    "train": "train",
    "pretrain": "pretrain",
    "predict": "infer",
    "export": "export_onnx",
    "quantize": "quantize",
    "benchmark": "benchmark",
    "visualize": "visualize",
    "quickstart": "quickstart",
    "make-shapes": "make_shapes",
}
TINY = ["-c", str(TINY_CONFIG), "--device", "cpu", "-u", "print_freq=1", "train_dataloader.batch_size=2"]


def _run(args: list[str], timeout: float = 240, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        cwd=REPO_ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_help_lists_every_subcommand_on_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.run(["--help"])
    assert exit_info.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    for name, command in cli.SUBCOMMANDS.items():
        assert any(line.split() == [name, *command.help.split()] for line in lines), name


def test_unknown_subcommand_names_the_valid_ones(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.run(["trian"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'trian'" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(TOOLS))
def test_each_subcommand_has_its_tools_options(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    tool = __import__(f"tools.{TOOLS[name]}", fromlist=["get_args_parser"])
    with pytest.raises(SystemExit):
        cli.run([name, "--help"])
    help_text = capsys.readouterr().out
    assert help_text.startswith(f"usage: rtdetr-spartan {name} ")
    options = {o for action in tool.get_args_parser()._actions for o in action.option_strings}
    assert options and all(option in help_text for option in options)


def test_val_is_train_test_only_and_onnx_goes_to_eval_onnx(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.run(["val", "--help"])
    assert "Evaluate a checkpoint" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.run(["val", "--onnx", "m.onnx", "--help"])
    assert "--ann" in capsys.readouterr().out  # eval_onnx's options


def test_data_option_points_the_config_at_a_yolo_dataset(tmp_path: Path) -> None:
    data = tmp_path / "yolo"
    make_yolo_dataset(data, train=2, val=1, size=64, seed=0)
    args = train_tool.get_args_parser().parse_args(["-c", str(TINY_CONFIG), "--data", str(data), "-u", "num_classes=9"])
    cfg = load_tool_config(args)
    assert cfg.yaml_cfg["train_dataloader"]["dataset"]["type"] == "YOLODetection"
    assert cfg.yaml_cfg["val_dataloader"]["dataset"]["ann_file"] == str((data / "data.yaml").absolute())
    assert cfg.yaml_cfg["num_classes"] == 9  # -u wins over the dataset's 4 classes
    assert cfg.yaml_cfg["val_dataloader"]["dataset"]["transforms"]["ops"][0]["type"] == "Resize"  # kept


def test_data_option_names_an_unknown_layout(tmp_path: Path) -> None:
    args = train_tool.get_args_parser().parse_args(["-c", str(TINY_CONFIG), "--data", str(tmp_path)])
    with pytest.raises(ValueError, match="not a dataset of a known layout"):
        load_tool_config(args)


@pytest.mark.slow
def test_installed_console_script_and_module_list_the_subcommands() -> None:
    script = shutil.which("rtdetr-spartan")
    assert script is not None, "pip install -e . installs the rtdetr-spartan console script"
    for command in ([script], [sys.executable, "-m", "rtdetr_spartan"]):
        result = _run([*command, "--help"], timeout=60)
        assert result.returncode == 0, result.stderr
        assert all(name in result.stdout for name in cli.SUBCOMMANDS)
    # one subcommand through the installed script (each is checked in-process above; a process costs ~4 s)
    result = _run([script, "train", "--help"], timeout=60)
    assert result.returncode == 0 and "usage: rtdetr-spartan train" in result.stdout, result.stderr


@pytest.mark.slow
def test_make_shapes_train_val_through_the_console_script(tmp_path: Path) -> None:
    script = shutil.which("rtdetr-spartan")
    assert script is not None
    data = tmp_path / "data"
    made = _run([script, "make-shapes", "--out", str(data), "--train", "4", "--val", "2", "--size", "64"])
    assert made.returncode == 0, made.stderr
    out = tmp_path / "out"
    trained = _run([script, "train", *TINY, "--data", str(data), "--output-dir", str(out)])
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert load_checkpoint(out / "best.pth")["config"]["val_dataloader"]["dataset"]["img_folder"] == str(
        (data / "val").absolute()
    )
    evaluated = _run([script, "val", *TINY, "--data", str(data), "-r", str(out / "best.pth"), "--output-dir", str(out)])
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "AP50" in evaluated.stderr and len(read_json_lines(out / "log.txt")) == 1  # evaluation adds no epoch
    missing = _run([script, "val", *TINY, "--data", str(tmp_path / "nothing")])
    assert missing.returncode != 0 and "nothing does not exist" in missing.stderr


@pytest.mark.slow
@pytest.mark.distributed
def test_torchrun_module_trains_with_two_cpu_ranks(tmp_path: Path) -> None:
    data = make_tiny_dataset(tmp_path / "data", train=4, val=2, size=64)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    result = _run([*command, "-m", "rtdetr_spartan", "train", *TINY, "--data", str(data), "--output-dir", str(out)])
    assert result.returncode == 0, result.stderr[-4000:]
    assert "world size 2" in result.stderr
    assert load_checkpoint(out / "last.pth")["epoch"] == 0
