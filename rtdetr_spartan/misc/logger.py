"""Logging for training runs: rank 0 reports progress, other ranks only warnings and errors.

``setup_logging`` configures the root logger, so that the package's module loggers and the
tools' own loggers share one format, one console stream and one file (``OUTPUT_DIR/train.log``).
Handlers it installs are tagged and replaced on the next call, so calling it twice (e.g. several
runs in one process) never duplicates lines; ``close_logging`` removes them.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rtdetr_spartan.misc.dist import get_rank

__all__ = ["LOG_FILE_NAME", "append_json_line", "close_logging", "setup_logging"]

LOG_FILE_NAME = "train.log"
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
_TAG = "_rtdetr_spartan_handler"
_saved_level: list[int] = []  # the root level before setup_logging, restored by close_logging


def close_logging() -> None:
    """Remove (and close) the handlers that ``setup_logging`` installed."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _TAG, False):
            root.removeHandler(handler)
            handler.close()
    if _saved_level:
        root.setLevel(_saved_level.pop())
        logging.captureWarnings(False)


def _tagged(handler: logging.Handler) -> logging.Handler:
    setattr(handler, _TAG, True)
    handler.setFormatter(logging.Formatter(_FORMAT, _DATE_FORMAT))
    return handler


def setup_logging(
    output_dir: str | Path | None = None, level: int = logging.INFO, rank: int | None = None
) -> logging.Logger:
    """Configure the root logger for this process and return it.

    Rank 0 logs at ``level`` to stderr and, when ``output_dir`` is given, appends to
    ``output_dir/train.log``; other ranks log WARNING and above to stderr only.
    """
    rank = get_rank() if rank is None else rank
    close_logging()
    root = logging.getLogger()
    _saved_level.append(root.level)
    effective = level if rank == 0 else max(level, logging.WARNING)
    root.setLevel(effective)
    console = _tagged(logging.StreamHandler(sys.stderr))
    if rank != 0:
        console.setFormatter(logging.Formatter(f"[rank {rank}] {_FORMAT}", _DATE_FORMAT))
    root.addHandler(console)
    if rank == 0 and output_dir is not None:
        path = Path(output_dir) / LOG_FILE_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        root.addHandler(_tagged(logging.FileHandler(path, encoding="utf-8")))
    logging.captureWarnings(True)
    return root


def _json_safe(value: Any) -> Any:
    """Floats that JSON cannot hold (NaN, inf) become ``None``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def append_json_line(path: str | Path, record: Mapping[str, Any]) -> None:
    """``record`` as one JSON line at the end of ``path`` (a run's ``log.txt``); NaN and inf
    are written as ``null``."""
    with Path(path).open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(_json_safe(record)) + "\n")
