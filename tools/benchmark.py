"""Parameters, GFLOPs, latency and throughput of a config's detector (PyTorch, onnxruntime or OpenVINO).

The code is in ``rtdetr_spartan/cli/benchmark.py``; the same tool is ``rtdetr-spartan benchmark``.
"""

from rtdetr_spartan.cli.benchmark import get_args_parser, main

__all__ = ["get_args_parser", "main"]

if __name__ == "__main__":
    from rtdetr_spartan.misc.cli_errors import run_main

    raise SystemExit(run_main(main))
