"""BaseSolver pieces that need no model: device and AMP choice, best metric, checkpoint links."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from rtdetr_spartan.core import ConfigError, YAMLConfig, register
from rtdetr_spartan.misc.checkpoint import publish_link, save_atomic
from rtdetr_spartan.solver.base import BaseSolver
from rtdetr_spartan.solver.device import resolve_amp_dtype, select_device
from rtdetr_spartan.solver.state import SolverHook


def _cfg(tmp_path: Path, **values: object) -> YAMLConfig:
    path = tmp_path / "cfg.yml"
    path.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "out"), **values}))
    return YAMLConfig(path)


def test_select_device() -> None:
    assert select_device("cpu") == torch.device("cpu")
    assert select_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="device: expected 'cpu' or 'cuda', got 'tpu'"):
        select_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_cuda_without_cuda_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="CUDA is not available"):
        select_device("cuda")


def test_amp_dtype_choice(tmp_path: Path) -> None:
    cpu = torch.device("cpu")
    assert resolve_amp_dtype(_cfg(tmp_path), cpu) is None
    assert resolve_amp_dtype(_cfg(tmp_path, use_amp=True), cpu) is torch.bfloat16
    assert resolve_amp_dtype(_cfg(tmp_path, use_amp=True), torch.device("cuda")) is torch.float16
    with pytest.raises(ConfigError, match="float16 autocast is not supported on the CPU"):
        resolve_amp_dtype(_cfg(tmp_path, use_amp=True, amp_dtype="float16"), cpu)
    with pytest.raises(ConfigError, match="amp_dtype: expected one of"):
        resolve_amp_dtype(_cfg(tmp_path, use_amp=True, amp_dtype="fp8"), cpu)


def test_best_metric_keeps_the_highest(tmp_path: Path) -> None:
    solver = BaseSolver(_cfg(tmp_path, device="cpu"))
    assert solver.update_best("AP", 0.0, 0)
    assert not solver.update_best("AP", 0.0, 1)
    assert solver.update_best("AP", 0.2, 2) and not solver.update_best("AP", 0.1, 3)
    assert solver.best == {"metric": "AP", "value": 0.2, "epoch": 2}


def test_published_copy_survives_the_next_last_checkpoint(tmp_path: Path) -> None:
    last, best = tmp_path / "last.pth", tmp_path / "best.pth"
    save_atomic({"epoch": 0}, last)
    publish_link(last, best)
    save_atomic({"epoch": 1}, last)  # a new file renamed over last.pth
    assert torch.load(best)["epoch"] == 0 and torch.load(last)["epoch"] == 1
    publish_link(last, best)
    assert torch.load(best)["epoch"] == 1


@register(name="TestEveryNEpochsHook")
class _EveryNEpochs(SolverHook):
    def __init__(self, every: int = 1) -> None:
        self.every = every


@register(name="TestNotAHook")
class _NotAHook:
    pass


def test_hooks_are_built_from_the_config(tmp_path: Path) -> None:
    solver = BaseSolver(_cfg(tmp_path, device="cpu", hooks=[{"type": "TestEveryNEpochsHook", "every": 5}]))
    (hook,) = solver.hooks
    assert isinstance(hook, _EveryNEpochs) and hook.every == 5
    with pytest.raises(ConfigError, match=r"hooks\[0\] built a _NotAHook, expected a SolverHook"):
        BaseSolver(_cfg(tmp_path, device="cpu", hooks=["TestNotAHook"]))
