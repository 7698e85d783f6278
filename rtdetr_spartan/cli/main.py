"""rtdetr-spartan SUBCOMMAND [OPTIONS]: every tool of RT-DETR-SpaRTAN behind one command.

Each subcommand runs its tool's main() on the remaining arguments, so its options are those of
python tools/<tool>.py. `python -m rtdetr_spartan` is the same command, so
`torchrun --nproc-per-node=N -m rtdetr_spartan train ...` trains with DDP.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from rtdetr_spartan import __version__

__all__ = ["PROG", "SUBCOMMANDS", "Subcommand", "main", "run"]

PROG = "rtdetr-spartan"


@dataclass(frozen=True)
class Subcommand:
    """A subcommand: the module under ``rtdetr_spartan.cli`` whose ``main`` it runs (``tool``:
    the ``tools/`` script of the same options) and its one-line help."""

    module: str
    tool: str
    help: str


SUBCOMMANDS: dict[str, Subcommand] = {
    "train": Subcommand("train", "train.py", "train a detector from a YAML config (DDP under torchrun)"),
    "pretrain": Subcommand("pretrain", "pretrain.py", "pretrain a backbone as an image classifier (ImageNet layout)"),
    "val": Subcommand("main", "train.py --test-only", "evaluate a checkpoint (COCO mAP / top-k); --onnx: an export"),
    "predict": Subcommand("infer", "infer.py", "detect in images, folders and videos; annotated pictures + JSON"),
    "export": Subcommand("export_onnx", "export_onnx.py", "export a detector to ONNX, checked and verified"),
    "quantize": Subcommand("quantize", "quantize.py", "INT8 quantization of an export for OpenVINO (NNCF)"),
    "benchmark": Subcommand("benchmark", "benchmark.py", "parameters, GFLOPs, latency and throughput"),
    "visualize": Subcommand("visualize", "visualize.py", "Grad-CAM and feature-map figures of a model"),
    "quickstart": Subcommand("quickstart", "quickstart.py", "the whole pipeline on generated data, on a CPU"),
    "make-shapes": Subcommand(
        "make_shapes", "make_shapes.py", "write a generated shapes dataset (COCO, YOLO, classes)"
    ),
}

VAL_DESCRIPTION = """Evaluate a checkpoint on the validation set: COCO mAP and per-class AP for a detector,
top-1/top-5 for a classifier. The options of `rtdetr-spartan train` (= tools/train.py --test-only).

    rtdetr-spartan val -c CFG -r runs/det/best.pth [--data DIR]
    rtdetr-spartan val --onnx model.onnx --ann ANN.json --images DIR   # an export (= tools/eval_onnx.py)
"""


def _subcommand_table() -> str:
    width = max(map(len, SUBCOMMANDS)) + 2
    rows = [f"  {name:<{width}}{command.help}" for name, command in SUBCOMMANDS.items()]
    return "subcommands:\n" + "\n".join(rows)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        usage="%(prog)s [-h] [--version] SUBCOMMAND [OPTIONS]",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        # The table is written here: argparse wraps a subcommand's help under names longer than its column.
        epilog=f"{_subcommand_table()}\n\n`{PROG} SUBCOMMAND --help` lists a subcommand's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", help=argparse.SUPPRESS)
    for name in SUBCOMMANDS:
        commands.add_parser(name, add_help=False)
    return parser


def val_main(argv: list[str] | None = None) -> int:
    """``val``: the training tool's evaluation (``--test-only``) or, with ``--onnx``, ``eval_onnx``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a == "--onnx" or a.startswith("--onnx=") for a in args):
        from rtdetr_spartan.cli import eval_onnx

        return eval_onnx.main(args)
    from rtdetr_spartan.cli import train
    from rtdetr_spartan.solver.cli import run_tool

    parser = train.get_args_parser()
    parser.description = VAL_DESCRIPTION
    parsed = parser.parse_args(args)
    parsed.test_only = True
    run_tool(parsed)
    return 0


def _tool_main(name: str) -> Callable[[list[str] | None], int]:
    if name == "val":
        return val_main
    module = importlib.import_module(f"rtdetr_spartan.cli.{SUBCOMMANDS[name].module}")
    tool_main: Callable[[list[str] | None], int] = module.main
    return tool_main


@contextmanager
def _program_name(name: str) -> Iterator[None]:
    """The tools' parsers take their program name from ``sys.argv[0]``: ``rtdetr-spartan train``."""
    saved = sys.argv[0] if sys.argv else ""
    if sys.argv:
        sys.argv[0] = f"{PROG} {name}"
    try:
        yield
    finally:
        if sys.argv:
            sys.argv[0] = saved


def run(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``argv`` (default: the command line): ``SUBCOMMAND ARGS...`` -> that tool's ``main(ARGS)``."""
    args = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    if not args or args[0] not in SUBCOMMANDS:
        parsed = parser.parse_args(args)  # --help / --version exit here; unknown names are errors
        parser.print_help()
        return 2 if parsed.command is None else 0
    with _program_name(args[0]):
        return _tool_main(args[0])(args[1:])


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: :func:`run` with a known error as one ``error:`` line (``--debug``:
    the traceback), as the tools' scripts do."""
    from rtdetr_spartan.misc.cli_errors import run_main

    return run_main(lambda rest: run(rest), argv)
