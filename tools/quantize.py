"""INT8 post-training quantization of an exported detector (NNCF, for OpenVINO on the CPU).

The code is in ``rtdetr_spartan/cli/quantize.py``; the same tool is ``rtdetr-spartan quantize``.
"""

from rtdetr_spartan.cli.quantize import get_args_parser, main

__all__ = ["get_args_parser", "main"]

if __name__ == "__main__":
    from rtdetr_spartan.misc.cli_errors import run_main

    raise SystemExit(run_main(main))
