"""Grad-CAM and feature maps of a classifier or detector on images: PNG figures (and TensorBoard).

The code is in ``rtdetr_spartan/cli/visualize.py``; the same tool is ``rtdetr-spartan visualize``.
"""

from rtdetr_spartan.cli.visualize import get_args_parser, main

__all__ = ["get_args_parser", "main"]

if __name__ == "__main__":
    from rtdetr_spartan.misc.cli_errors import run_main

    raise SystemExit(run_main(main))
