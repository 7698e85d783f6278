"""Checkpoint files: atomic writes, stale temporary files, safe reading, and the one model-weight loader.

:func:`load_checkpoint` reads every checkpoint as data only (``torch.load(weights_only=True)``):
a file that would run code when unpickled is refused with a :class:`CheckpointError` naming it.
There is no opt-in for unsafe loading: every layout this project writes and the published
RT-DETR / SpaRTAN weights are tensors, containers and plain values. Checkpoints written by the
solver record ``task``, the resolved ``config`` and the package ``version``, so a tool refuses a
checkpoint of the other task (``expect_task``) with a message instead of a shape mismatch.

:func:`load_model_weights` is the project's only way to put saved weights into a model (solvers'
resume and tuning, backbones' ``pretrained``, deployment). As timm's ``load_checkpoint`` /
``clean_state_dict``, it reads every published layout (``{'ema': {'module': sd}}``,
``{'model': sd}``, ``{'state_dict': sd}`` or a bare state dict; EMA weights first), strips a
DistributedDataParallel ``module.`` prefix, and applies one strictness policy:

- ``strict=True``: names and shapes must match exactly; the error lists every difference.
- ``strict=False``: the tensors whose names and shapes match are loaded; the rest are reported
  in one warning (e.g. a class head of another size when fine-tuning).

Either way BatchNorm's ``num_batches_tracked`` counters never count as a difference (a
FrozenBatchNorm2d has none), and ``ignore`` drops entries by name prefix (a classifier head).
"""

from __future__ import annotations

import errno
import logging
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch

__all__ = [
    "CheckpointError",
    "LoadReport",
    "check_task",
    "checkpoint_task",
    "clean_state_dict",
    "extract_state_dict",
    "load_checkpoint",
    "load_model_weights",
    "publish_link",
    "remove_stale_temp_files",
    "save_atomic",
]

logger = logging.getLogger(__name__)

# save_atomic's temporary files: ``.NAME.<random>.tmp`` beside NAME.
TEMP_SUFFIX = ".tmp"


def _open_for_writing(fd: int) -> IO[bytes]:
    """The binary file object ``save_atomic`` writes through (a seam for disk-full tests)."""
    return os.fdopen(fd, "wb")


def _is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` or an exception it wraps is ENOSPC (torch's writer raises a RuntimeError
    whose context is the OSError of the failed write)."""
    seen: BaseException | None = err
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def save_atomic(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then rename it over ``path``.

    A crash mid-write leaves the previous file intact (rename is atomic on POSIX); a kill can
    leave the temporary file, which :func:`remove_stale_temp_files` removes. A full disk raises
    ``OSError(ENOSPC)`` naming ``path`` and the free space.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with _open_for_writing(fd) as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if _is_disk_full(err):
            free = shutil.disk_usage(path.parent).free
            raise OSError(
                errno.ENOSPC,
                f"no space left on device while saving {path} ({free / 2**20:.1f} MiB free in {path.parent}); "
                "free some space (old checkpointNNNN.pth files?) and resume with -r auto",
            ) from err
        raise
    return path


def publish_link(source: Path, target: Path) -> None:
    """Atomically make ``target`` a hard link to ``source`` (a copy where links are unsupported)."""
    staging = target.with_name(f".{target.name}.staging")
    staging.unlink(missing_ok=True)
    try:
        os.link(source, staging)
    except OSError:
        shutil.copyfile(source, staging)
    os.replace(staging, target)


def remove_stale_temp_files(directory: str | Path) -> list[Path]:
    """Delete the temporary files that a killed :func:`save_atomic` (``.NAME.*.tmp``) or
    checkpoint publication (``.NAME.staging``) left in ``directory``; returns them."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = sorted({*directory.glob(".*.pth.*.tmp"), *directory.glob(".*.pth.staging")})
    total = 0
    for path in stale:
        total += path.stat().st_size
        path.unlink(missing_ok=True)
    if stale:
        logger.info(
            "removed %d stale temporary checkpoint files (%.1f MiB) in %s", len(stale), total / 2**20, directory
        )
    return stale


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, not data only, or of another task."""


# The task a checkpoint's weights serve, as ``BaseSolver.state_dict`` records it.
TASKS = ("detection", "classification")
_TASK_HINTS = {
    "classification": "a classifier from tools/pretrain.py; a detector takes it as backbone weights "
    "(SpaRTAN.pretrained / PResNet.pretrained)",
    "detection": "a detector from tools/train.py",
}


def _refusal_reason(err: BaseException) -> str:
    """The part of torch's weights-only error that names what the file wanted to run."""
    text = str(err)
    match = re.search(r"WeightsUnpickler error:\s*(.*?)(?: Please use|\n|$)", text)
    reason = match.group(1) if match else text.splitlines()[0] if text else ""
    return reason.strip().rstrip(".") or type(err).__name__


def load_checkpoint(path: str | Path, expect_task: str | None = None, purpose: str = "") -> dict[str, Any]:
    """Read a checkpoint file on the CPU as data only (``torch.load(weights_only=True)``).

    A file that needs arbitrary unpickling (objects other than tensors, containers and plain
    values) is refused: unpickling it could run any code. ``expect_task`` (``'detection'`` or
    ``'classification'``) refuses a checkpoint that records another task, before any weight is
    compared; ``purpose`` (e.g. ``'-r'``) says in the message what needed it. Every error is a
    :class:`CheckpointError` (a ``ValueError``) naming the file, or ``FileNotFoundError``.
    """
    path = Path(path)
    if path.is_dir():
        candidates = [path / n for n in ("last.pth", "best.pth") if (path / n).is_file()]
        hint = f"e.g. {candidates[0]}" if candidates else "a .pth file"
        raise CheckpointError(f"checkpoint {path} is a directory, not a file; give a checkpoint file ({hint})")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = _refusal_reason(err)
        what = (
            "it is no file torch.save wrote (garbage, or a plain pickle)"
            if reason.startswith("Unsupported operand")
            else "it holds more than weights and data and would need arbitrary code to load"
        )
        raise CheckpointError(
            f"checkpoint {path} refused: {what} ({reason}). Checkpoints load with torch.load(weights_only=True) "
            "only; save the tensors of a file you trust as a plain state dict (see docs/troubleshooting.md)"
        ) from None
    except Exception as err:  # torch raises many types for corrupt or truncated files
        raise CheckpointError(
            f"checkpoint {path} cannot be read as a PyTorch checkpoint (truncated, or another format?): "
            f"{type(err).__name__}: {err}"
        ) from err
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict")
    checkpoint = dict(obj)
    if expect_task is not None:
        check_task(checkpoint, expect_task, f"checkpoint {path}", purpose)
    return checkpoint


def checkpoint_task(checkpoint: Mapping[str, Any]) -> str | None:
    """The task a checkpoint records (``task``, else its stored config's ``task``, default
    detection); ``None`` for files that record neither (published weights, bare state dicts)."""
    task = checkpoint.get("task")
    if isinstance(task, str):
        return task
    config = checkpoint.get("config")
    if isinstance(config, Mapping):
        return str(config.get("task", "detection"))
    return None


def check_task(checkpoint: Mapping[str, Any], expected: str, label: str = "checkpoint", purpose: str = "") -> None:
    """Raise :class:`CheckpointError` when ``checkpoint`` records a task other than ``expected``."""
    if expected not in TASKS:
        raise ValueError(f"expect_task must be one of {TASKS}, got {expected!r}")
    task = checkpoint_task(checkpoint)
    if task is None or task == expected:
        return
    needs = f"{purpose} needs" if purpose else "this needs"
    raise CheckpointError(
        f"{label} is a {task} checkpoint ({_TASK_HINTS.get(task, task)}); {needs} a {expected} checkpoint "
        f"({_TASK_HINTS[expected]})"
    )


def clean_state_dict(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of ``state`` with a DistributedDataParallel ``module.`` prefix removed."""
    tensors = {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if tensors and all(k.startswith("module.") for k in tensors):
        tensors = {k.removeprefix("module."): v for k, v in tensors.items()}
    return tensors


def extract_state_dict(obj: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Model weights from any published layout: EMA weights, else ``model``, else
    ``state_dict``, else a bare state dict (cleaned by :func:`clean_state_dict`)."""
    ema = obj.get("ema")
    if isinstance(ema, Mapping) and isinstance(ema.get("module"), Mapping):
        state = ema["module"]
    elif isinstance(obj.get("model"), Mapping):
        state = obj["model"]
    elif isinstance(obj.get("state_dict"), Mapping):
        state = obj["state_dict"]
    else:
        state = obj
    tensors = clean_state_dict(state)
    if not tensors:
        raise CheckpointError(
            "no tensors found in the checkpoint: expected a state dict, {'model': state_dict} or "
            f"{{'ema': {{'module': state_dict}}}} (top-level keys: {sorted(map(str, obj))[:10]})"
        )
    return tensors


@dataclass
class LoadReport:
    """What a weight load did: tensors loaded, and those it skipped with the reason."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every model tensor loaded and every checkpoint tensor used."""
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors"]
        for label, names in (
            ("missing in checkpoint", self.missing),
            ("not in model", self.unexpected),
            ("shape mismatch", self.mismatched),
        ):
            if names:
                shown = ", ".join(names[:8]) + (f", ... (+{len(names) - 8})" if len(names) > 8 else "")
                lines.append(f"{label}: {len(names)} ({shown})")
        return "; ".join(lines)


def _is_counter(name: str) -> bool:
    return name.endswith("num_batches_tracked")


def load_model_weights(
    model: torch.nn.Module,
    source: str | Path | Mapping[str, Any],
    strict: bool = True,
    ignore: Sequence[str] = (),
    expect_task: str | None = None,
    purpose: str = "",
) -> LoadReport:
    """Load weights into ``model`` from a checkpoint path or an already-read checkpoint.

    ``strict`` and ``ignore`` (name prefixes of checkpoint entries to drop) follow the module's
    policy; ``expect_task`` and ``purpose`` as :func:`load_checkpoint` (checked before any
    tensor). Raises ``ValueError`` naming the file (when given a path) and the differences.
    """
    label = f"checkpoint {source}" if isinstance(source, (str, Path)) else "checkpoint"
    ckpt: Mapping[str, Any]
    if isinstance(source, (str, Path)):
        ckpt = load_checkpoint(source, expect_task, purpose)
    else:
        ckpt = source
        if expect_task is not None:
            check_task(ckpt, expect_task, label, purpose)
    try:
        state = extract_state_dict(ckpt)
    except ValueError as err:
        raise CheckpointError(f"{label}: {err}") from None
    state = {k: v for k, v in state.items() if not any(k.startswith(p) for p in ignore)}
    own = model.state_dict()
    report = LoadReport()
    usable: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if name not in own:
            if not _is_counter(name):
                report.unexpected.append(name)
        elif own[name].shape != tensor.shape:
            report.mismatched.append(f"{name} {tuple(tensor.shape)} vs model {tuple(own[name].shape)}")
        else:
            usable[name] = tensor
    report.missing = [n for n in own if n not in state and not _is_counter(n)]
    report.loaded = list(usable)
    if strict and not report.complete:
        raise CheckpointError(
            f"{label} does not match {type(model).__name__} ({report.describe()}); "
            "load with strict=False (tuning) to take only the matching tensors"
        )
    model.load_state_dict(usable, strict=False)
    if report.complete:
        logger.info("%s: %s", label, report.describe())
    else:
        logger.warning("%s: %s", label, report.describe())
    return report
