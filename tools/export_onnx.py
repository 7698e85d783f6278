"""Export a config's detector (with its postprocessor) to ONNX, then check and verify it.

The code is in ``rtdetr_spartan/cli/export_onnx.py``; the same tool is ``rtdetr-spartan export``.
"""

from rtdetr_spartan.cli.export_onnx import get_args_parser, main

__all__ = ["get_args_parser", "main"]

if __name__ == "__main__":
    from rtdetr_spartan.misc.cli_errors import run_main

    raise SystemExit(run_main(main))
