"""Pretrain a backbone as an image classifier (ImageNet layout) from a YAML config.

The code is in ``rtdetr_spartan/cli/pretrain.py``; the same tool is ``rtdetr-spartan pretrain``.
"""

from rtdetr_spartan.cli.pretrain import get_args_parser, main

__all__ = ["get_args_parser", "main"]

if __name__ == "__main__":
    from rtdetr_spartan.misc.cli_errors import run_main

    raise SystemExit(run_main(main))
