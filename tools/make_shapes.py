"""Write a generated shapes dataset: COCO detection (default) or ImageFolder classification.

The code is in ``rtdetr_spartan/cli/make_shapes.py``; the same tool is ``rtdetr-spartan make-shapes``.
"""

from rtdetr_spartan.cli.make_shapes import get_args_parser, main

__all__ = ["get_args_parser", "main"]

if __name__ == "__main__":
    from rtdetr_spartan.misc.cli_errors import run_main

    raise SystemExit(run_main(main))
