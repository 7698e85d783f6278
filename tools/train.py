"""Train or evaluate a model from a YAML config.

The code is in ``rtdetr_spartan/cli/train.py``; the same tool is ``rtdetr-spartan train``.
"""

from rtdetr_spartan.cli.train import get_args_parser, main

__all__ = ["get_args_parser", "main"]

if __name__ == "__main__":
    from rtdetr_spartan.misc.cli_errors import run_main

    raise SystemExit(run_main(main))
