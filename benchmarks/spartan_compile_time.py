"""Compile time of the SpaRTAN-T backbone: regional compilation (each ``Block`` compiled, every
instance of a shape reusing the code; ``rtdetr_spartan.nn.compile.compile_regional``) against
whole-model ``torch.compile``. Time = first forward (tracing + codegen; wall and process CPU
time), then steady-state latency of compiled and eager forwards.

    python benchmarks/spartan_compile_time.py --threads 2 --size 320 [--modes regional whole] [--train]
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import statistics
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from rtdetr_spartan.nn.backbones.spartan import SpaRTAN
from rtdetr_spartan.nn.compile import compile_regional

logger = logging.getLogger("spartan_compile_time")


def _timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall, process CPU) seconds of one call; CPU time is the steadier on a shared machine."""
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - cpu


def measure(model: nn.Module, x: torch.Tensor, runs: int, train: bool) -> dict[str, float]:
    """First call (compile) and median / min of ``runs`` later calls, in seconds."""

    def step() -> None:
        if train:
            sum(f.float().mean() for f in model(x)).backward()
        else:
            with torch.no_grad():
                model(x)

    first, first_cpu = _timed(step)
    times = [_timed(step)[0] for _ in range(runs)]
    return {
        "first_call_s": round(first, 2),
        "first_call_cpu_s": round(first_cpu, 2),
        "median_s": round(statistics.median(times), 4),
        "min_s": round(min(times), 4),
    }


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--train", action="store_true", help="time forward + backward in train mode")
    parser.add_argument("--modes", nargs="+", choices=("regional", "whole"), default=["regional", "whole"])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = SpaRTAN().train(args.train)
    x = torch.rand(args.batch, 3, args.size, args.size)
    results = {"eager": measure(copy.deepcopy(base), x, args.runs, args.train)}
    # a cold compile: no inductor code cached on disk by an earlier run
    torch._inductor.config.fx_graph_cache = False
    for mode in args.modes:
        torch._dynamo.reset()
        model = copy.deepcopy(base)
        compiled = compile_regional(model, dynamic=False) if mode == "regional" else torch.compile(model, dynamic=False)
        results[mode] = measure(compiled, x, args.runs, args.train)
    logger.info(json.dumps({"threads": args.threads, "size": args.size, "train": args.train, **results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
