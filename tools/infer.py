"""Detect objects in an image, a video or a folder of them; write annotated pictures, videos and JSON.

The code is in ``rtdetr_spartan/cli/infer.py``; the same tool is ``rtdetr-spartan predict``.
"""

from rtdetr_spartan.cli.infer import get_args_parser, main

__all__ = ["get_args_parser", "main"]

if __name__ == "__main__":
    from rtdetr_spartan.misc.cli_errors import run_main

    raise SystemExit(run_main(main))
