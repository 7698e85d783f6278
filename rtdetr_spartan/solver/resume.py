"""What a run does with an earlier one: find the checkpoint to resume (``resume: auto``), read
it and compare its settings, or clear an earlier run's files for ``--overwrite``.

Resuming continues *the same* run, so the config must be the checkpoint's, with two kinds of
exceptions. Settings that only say where things are or how they are reported (``output_dir``,
``device``, logging and checkpoint frequencies, worker counts, data file locations, ...) may
differ. ``epochs`` may differ to extend (or shorten) the run: the lr schedule is then rebuilt for
the new total and advanced to the resumed position, as if the run had been planned that long
from the start (``BaseSolver.load_state_dict``). Any other difference (``optimizer.lr``, a
transform, the model) is refused with a :class:`ConfigError` listing every differing key, so
that no setting is silently ignored; start a new run from the weights with ``-t`` instead.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from rtdetr_spartan.core import ConfigError, YAMLConfig
from rtdetr_spartan.misc import dist
from rtdetr_spartan.misc.checkpoint import load_checkpoint
from rtdetr_spartan.misc.logger import LOG_FILE_NAME

__all__ = [
    "AUTO_RESUME",
    "EXTENDABLE_KEYS",
    "IGNORED_KEYS",
    "check_resume_config",
    "config_differences",
    "describe_removed",
    "previous_run_files",
    "read_resume_checkpoint",
    "remove_previous_run",
    "resume_source",
    "summary_dir",
]

logger = logging.getLogger(__name__)

AUTO_RESUME = "auto"

# Top-level keys that do not change what is trained (where files go, how it is reported, the
# device, compilation, and the resume request itself).
IGNORED_KEYS = frozenset(
    {
        "resume",
        "tuning",
        "overwrite",
        "output_dir",
        "summary_dir",
        "print_freq",
        "log_step",
        "checkpoint_freq",
        "checkpoint_step",
        "device",
        "compile",
        "hooks",
        "num_workers",
        "cam_logging",
    }
)
# Nested keys (the last part of a dotted key) that say where data or weights are, or how many
# workers load them: data may move between machines, and a resumed model takes its weights
# from the checkpoint, not from ``pretrained``.
IGNORED_LEAVES = frozenset({"img_folder", "ann_file", "root", "num_workers", "pretrained", "persistent_workers"})
# Keys that may change on resume; the solver rebuilds what depends on them.
EXTENDABLE_KEYS = frozenset({"epochs"})

_MISSING = "<not set>"


def _normalized(value: Any) -> Any:
    """Tuples as lists (a checkpoint may hold either), recursively."""
    if isinstance(value, (list, tuple)):
        return [_normalized(v) for v in value]
    return value


def _flatten(cfg: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            yield from _flatten(value, f"{name}.")
        else:
            yield name, _normalized(value)


def _ignored(key: str) -> bool:
    parts = key.split(".")
    return parts[0] in IGNORED_KEYS or parts[-1] in IGNORED_LEAVES


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (saved value, current value)}`` for every setting that differs, without
    the ignored ones (``<not set>`` where one side lacks the key)."""
    old, new = dict(_flatten(saved)), dict(_flatten(current))
    differences = {}
    for key in sorted(old.keys() | new.keys()):
        if _ignored(key):
            continue
        before, after = old.get(key, _MISSING), new.get(key, _MISSING)
        if before != after:
            differences[key] = (before, after)
    return differences


def check_resume_config(checkpoint: Mapping[str, Any], current: Mapping[str, Any], source: str) -> set[str]:
    """Refuse to resume ``checkpoint`` (read from ``source``) with settings other than its own;
    returns the extendable keys that differ (``{'epochs'}`` to extend the run).

    A checkpoint without a stored config (published weights) is not compared.
    """
    saved = checkpoint.get("config")
    if not isinstance(saved, Mapping):
        if "optimizer" in checkpoint or "lr_scheduler" in checkpoint:
            logger.warning(
                "%s stores no config (not written by this project), so its settings cannot be compared with the "
                "config's: the optimizer and lr schedule states it holds replace the config's lr and schedule",
                source,
            )
        return set()
    differences = config_differences(saved, current)
    refused = {k: v for k, v in differences.items() if k not in EXTENDABLE_KEYS}
    if refused:
        listed = "; ".join(f"{key}: checkpoint {old!r}, now {new!r}" for key, (old, new) in refused.items())
        raise ConfigError(
            f"cannot resume {source} with changed settings ({len(refused)} differ from the checkpoint's config: "
            f"{listed}). Resume continues the same run: give the checkpoint's values (only epochs may change, to "
            f"extend the run), or start a new run from its weights with -t {source}"
        )
    return set(differences)


def summary_dir(cfg: YAMLConfig) -> Path:
    """Where a run's TensorBoard event files go: ``summary_dir``, default ``OUTPUT_DIR/summary``."""
    return Path(cfg.get("summary_dir") or cfg.output_dir / "summary")


def previous_run_files(output_dir: Path, events_dir: Path) -> list[Path]:
    """The files an earlier training run left: checkpoints, ``log.txt``, ``train.log`` and the
    TensorBoard event files under ``events_dir`` (its :func:`summary_dir`)."""
    names = [output_dir / n for n in ("last.pth", "best.pth", "log.txt", LOG_FILE_NAME)]
    names += sorted(output_dir.glob("checkpoint[0-9][0-9][0-9][0-9].pth"))
    if events_dir.is_dir():
        names += sorted(events_dir.rglob("events.out.tfevents.*"))
    return [p for p in names if p.is_file()]


def remove_previous_run(output_dir: Path, events_dir: Path) -> list[Path]:
    """Remove :func:`previous_run_files` (``train.log`` is emptied rather than unlinked, so a
    log handler already appending to it keeps writing into the visible file); returns them.
    Rank 0 only: callers synchronise."""
    found = previous_run_files(output_dir, events_dir)
    for path in found:
        if path.name == LOG_FILE_NAME:
            path.write_bytes(b"")
        else:
            path.unlink()
    return found


def describe_removed(removed: list[Path], output_dir: Path) -> str:
    """``last.pth, best.pth, train.log, 3 TensorBoard event files`` for the overwrite log line."""
    events = [p for p in removed if p.name.startswith("events.out.tfevents.")]
    named = [str(p.relative_to(output_dir)) if p.is_relative_to(output_dir) else str(p) for p in removed]
    named = [n for n, p in zip(named, removed, strict=True) if p not in events]
    if events:
        named.append(f"{len(events)} TensorBoard event files in {events[0].parent}")
    return ", ".join(named) or "nothing"


def resume_source(cfg: YAMLConfig, training: bool) -> Path | None:
    """The checkpoint to resume: ``resume``, or with ``resume: auto`` ``OUTPUT_DIR/last.pth``
    when it exists. A fresh training run into a folder holding ``last.pth`` is refused unless
    ``overwrite`` is set (the earlier run's files are then removed; collective)."""
    resume, output_dir = cfg.get("resume"), cfg.output_dir
    last = output_dir / "last.pth"
    if resume == AUTO_RESUME:
        if last.is_file():
            logger.info("resume auto: continuing the run in %s from %s", output_dir, last)
            return last
        logger.info("resume auto: no %s; starting a fresh run", last)
        return None
    if resume:
        return Path(resume)
    if training and last.is_file():
        if not cfg.get("overwrite", False):
            raise ConfigError(
                f"{last} exists: {output_dir} holds an earlier run. Continue it with -r auto "
                f"(or -r {last}), or start a fresh run over it with --overwrite"
            )
        dist.barrier()  # every rank has seen last.pth before rank 0 removes it
        if dist.is_main_process():
            removed = remove_previous_run(output_dir, summary_dir(cfg))
            logger.warning("overwrite: removed the earlier run's %s", describe_removed(removed, output_dir))
        dist.barrier()
    return None


def read_resume_checkpoint(cfg: YAMLConfig, path: Path, training: bool) -> dict[str, Any]:
    """The checkpoint to resume, refused when it is not data only, records another task than
    ``cfg.task``, or (``training``) was written with other settings than ``cfg``'s, except ``epochs``."""
    checkpoint = load_checkpoint(path, expect_task=cfg.task, purpose=f"resuming (-r) a {cfg.task} run")
    if training:
        check_resume_config(checkpoint, cfg.yaml_cfg, str(path))
    return checkpoint
