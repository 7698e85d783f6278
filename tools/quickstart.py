"""The whole pipeline on generated data, on a laptop CPU: one command.

The code is in ``rtdetr_spartan/cli/quickstart.py``; the same tool is ``rtdetr-spartan quickstart``.
"""

from rtdetr_spartan.cli.quickstart import get_args_parser, main

__all__ = ["get_args_parser", "main"]

if __name__ == "__main__":
    from rtdetr_spartan.misc.cli_errors import run_main

    raise SystemExit(run_main(main))
