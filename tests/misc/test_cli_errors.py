"""misc.cli_errors.run_main: known errors become one line and exit 2; --debug keeps the traceback."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from rtdetr_spartan.core import ConfigError
from rtdetr_spartan.data import ImageReadError
from rtdetr_spartan.misc.checkpoint import CheckpointError
from rtdetr_spartan.misc.cli_errors import DEBUG_ENV, EXIT_KNOWN_ERROR, is_known_error, run_main
from tests.train_utils import REPO_ROOT, TINY_CONFIG
from tools import train


def _raising(err: BaseException, seen: list[list[str] | None]) -> Callable[[list[str] | None], int]:
    def main(argv: list[str] | None = None) -> int:
        seen.append(argv)
        raise err

    return main


@pytest.mark.parametrize(
    "err",
    [
        ConfigError("cfg.yml: optimizer.lr must be a number > 0, got -1"),
        CheckpointError("checkpoint x.pth refused"),
        ImageReadError("a.jpg cannot be read"),
        FileNotFoundError("checkpoint y.pth does not exist"),
        OSError(errno.ENOSPC, "no space left on device while saving last.pth"),
    ],
)
def test_a_known_error_is_one_line_and_exit_2(
    err: BaseException, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    seen: list[list[str] | None] = []
    assert run_main(_raising(err, seen), ["-c", "x.yml"]) == EXIT_KNOWN_ERROR == 2
    assert seen == [["-c", "x.yml"]]
    err_lines = capsys.readouterr().err.splitlines()
    assert len(err_lines) == 1 and err_lines[0].startswith(f"error: {str(err).split()[0]}")
    assert err_lines[0].endswith("(run with --debug for the traceback)")


def test_debug_flag_or_environment_keeps_the_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    seen: list[list[str] | None] = []
    with pytest.raises(ConfigError, match="bad"):
        run_main(_raising(ConfigError("bad"), seen), ["-c", "x.yml", "--debug"])
    assert seen == [["-c", "x.yml"]]  # the tool's parser never sees --debug
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(ConfigError, match="bad"):
        run_main(_raising(ConfigError("bad"), seen), ["-c", "x.yml"])


def test_named_errors_of_other_bases_are_known() -> None:
    from rtdetr_spartan.deploy.export import ExportVerificationError
    from rtdetr_spartan.deploy.video import VideoError

    assert is_known_error(VideoError("video clip.mp4 has no frames"))
    assert is_known_error(ExportVerificationError("model.onnx: onnxruntime does not reproduce PyTorch"))


def test_other_errors_are_bugs_and_keep_their_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    assert not is_known_error(RuntimeError("shape mismatch in conv"))
    assert not is_known_error(OSError(errno.EIO, "io"))
    with pytest.raises(RuntimeError, match="conv"):
        run_main(_raising(RuntimeError("conv"), []), [])


def test_train_with_a_directory_for_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    (tmp_path / "last.pth").write_bytes(b"")
    argv = ["-c", str(TINY_CONFIG), "--device", "cpu", "--output-dir", str(tmp_path / "o"), "-r", str(tmp_path)]
    assert run_main(train.main, argv) == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
    assert f"checkpoint {tmp_path} is a directory, not a file" in line and str(tmp_path / "last.pth") in line


def test_train_with_a_zero_batch_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    argv = [
        "-c",
        str(TINY_CONFIG),
        "--device",
        "cpu",
        "--output-dir",
        str(tmp_path),
        "-u",
        "train_dataloader.batch_size=0",
    ]
    assert run_main(train.main, argv) == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
    assert "train_dataloader.batch_size (per process) must be an integer >= 1, got 0" in line


@pytest.mark.slow
def test_the_tool_prints_one_line_and_debug_prints_the_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(DEBUG_ENV, None)
    command = [
        sys.executable,
        "tools/train.py",
        "-c",
        str(TINY_CONFIG),
        "--output-dir",
        str(tmp_path),
        "-u",
        "optimizer.lr=-1",
    ]
    plain = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert "error: " in plain.stderr and "optimizer.lr must be a number > 0, got -1" in plain.stderr
    debug = subprocess.run([*command, "--debug"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "ConfigError" in debug.stderr
