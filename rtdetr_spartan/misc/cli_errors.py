"""The entry wrapper of every tool: a known error prints one line, not a traceback.

``raise SystemExit(run_main(main))`` in a tool's ``__main__`` block runs ``main(argv)``. An
error the project raises for bad input -- a config (``ConfigError``), a checkpoint
(``CheckpointError``), an image, video or data file (``ImageReadError``, ``VideoError``,
``FileNotFoundError``, ``ValueError``), a failed export check (``ExportVerificationError``) or
a full disk -- prints ``error: <message>`` on stderr and exits with status 2
(argparse's status for a bad command line). Anything else is a bug and keeps its traceback.
``--debug`` anywhere on the command line (removed before the tool parses it) or the environment
variable ``RTDETR_SPARTAN_DEBUG=1`` shows the traceback of known errors too.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable, Sequence

from rtdetr_spartan.core import ConfigError

__all__ = ["DEBUG_ENV", "DEBUG_FLAG", "EXIT_KNOWN_ERROR", "is_known_error", "run_main"]

DEBUG_FLAG = "--debug"
DEBUG_ENV = "RTDETR_SPARTAN_DEBUG"
EXIT_KNOWN_ERROR = 2

# ValueError covers CheckpointError and the project's named checks of values and files.
_KNOWN_TYPES: tuple[type[BaseException], ...] = (
    ConfigError,
    ValueError,
    FileNotFoundError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)
# Named errors of other bases, as (module, class): looked up only in modules already imported (an
# error of a module that was never imported cannot have been raised), so none is imported here.
_KNOWN_ELSEWHERE = (
    ("rtdetr_spartan.data.coco", "ImageReadError"),
    ("rtdetr_spartan.deploy.video", "VideoError"),
    ("rtdetr_spartan.deploy.export", "ExportVerificationError"),
)


def _imported_known_types() -> tuple[type[BaseException], ...]:
    found = (getattr(sys.modules.get(module), name, None) for module, name in _KNOWN_ELSEWHERE)
    return tuple(t for t in found if isinstance(t, type) and issubclass(t, BaseException))


def is_known_error(err: BaseException) -> bool:
    """Whether ``err`` is one of the project's errors for bad input (see the module docstring)."""
    if isinstance(err, (*_KNOWN_TYPES, *_imported_known_types())):
        return True
    return isinstance(err, OSError) and err.errno == errno.ENOSPC


def _debug_requested(args: Sequence[str]) -> bool:
    return DEBUG_FLAG in args or os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _one_line(err: BaseException) -> str:
    message = " ".join(str(err).split()) or type(err).__name__
    return f"error: {message} (run with {DEBUG_FLAG} for the traceback)"


def run_main(main: Callable[[list[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run ``main`` on ``argv`` (default: the command line) without ``--debug``; a known error
    becomes one ``error:`` line on stderr and :data:`EXIT_KNOWN_ERROR`."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_requested(args)
    try:
        return main([a for a in args if a != DEBUG_FLAG])
    except Exception as err:
        if debug or not is_known_error(err):
            raise
        print(_one_line(err), file=sys.stderr)
        return EXIT_KNOWN_ERROR
