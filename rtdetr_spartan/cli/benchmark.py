"""Parameters, GFLOPs, latency and throughput of a config's detector (PyTorch, onnxruntime or OpenVINO).

    python tools/benchmark.py -c configs/rtdetr/rtdetr_r18vd_6x_coco.yml --backend onnxruntime
    python tools/benchmark.py -c configs/rtdetr/rtdetr_r18vd_6x_coco.yml --backend openvino --threads 2
    python tools/benchmark.py -c configs/rtdetr/rtdetr_r18vd_6x_coco.yml --device cuda --amp float16 --cuda-graph
    python tools/benchmark.py -c CFG --backend openvino --ov-precision bfloat16 --profile profiles/r18_bf16
    python tools/benchmark.py --onnx OUT/model_int8.xml --backend openvino --profile

GFLOPs per image with FLOPs = 2 x MACs (torch.utils.flop_counter; matrix products and
convolutions). Latency: median over --runs after --warmup calls, model + postprocessor, one
batch. The last line of stdout is one JSON object with params, gflops, gmacs, latency_ms
(median), throughput (images/s) and the run's settings.

--profile [PATH] records the timed calls with the backend's own profiler (torch.profiler,
onnxruntime's session profiling, OpenVINO's per-node counters) and prints the most expensive
nodes (--profile-top), with the kernel and precision that ran them, and the time by node type;
with PATH it also writes PATH.md (those tables) and PATH.json (every node). Latency is then
measured under the profiler. --onnx measures a saved .onnx or OpenVINO .xml (an INT8 IR, say)
instead of exporting the config's model; -c is then optional (it adds params and GFLOPs).
"""

from __future__ import annotations

import argparse
import json
import logging

from rtdetr_spartan.benchmark.latency import BACKENDS, benchmark
from rtdetr_spartan.benchmark.profiling import format_table, write_profile
from rtdetr_spartan.core import add_overrides_argument


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", default=None, help="YAML config of the model (optional with --onnx)")
    parser.add_argument(
        "--onnx",
        default=None,
        metavar="PATH",
        help="measure this saved .onnx or OpenVINO .xml (with --backend onnxruntime or openvino) "
        "instead of exporting the config's model",
    )
    parser.add_argument("-r", "--resume", default=None, help="checkpoint (weights do not change speed)")
    add_overrides_argument(parser, "num_classes=4")
    parser.add_argument("--size", type=int, default=640, help="square input side")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--backend", choices=BACKENDS, default="torch")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the torch backend runs")
    parser.add_argument(
        "--amp", choices=("float16", "bfloat16"), default=None, help="torch backend: autocast dtype (default float32)"
    )
    parser.add_argument(
        "--compile", action="store_true", help="torch backend: compile the repeated blocks (regional compilation)"
    )
    parser.add_argument(
        "--cuda-graph", action="store_true", help="torch backend on cuda: time replays of a captured CUDA graph"
    )
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all cores)")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--ort-optimization",
        choices=("disable", "basic", "extended", "all"),
        default="all",
        help="onnxruntime graph optimization level",
    )
    parser.add_argument(
        "--ov-precision",
        choices=("float32", "bfloat16"),
        default="float32",
        help="openvino inference precision (bfloat16 on CPUs that support it)",
    )
    parser.add_argument(
        "--profile",
        nargs="?",
        const="",
        default=None,
        metavar="PATH",
        help="per-node profile of the timed calls, printed; with PATH also written to PATH.md and PATH.json",
    )
    parser.add_argument("--profile-top", type=int, default=25, metavar="N", help="rows in the profile's node table")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.config is None and args.onnx is None:
        parser.error("give -c CONFIG, or --onnx PATH to measure a saved model")
    if args.profile_top < 1:
        parser.error(f"--profile-top must be >= 1, got {args.profile_top}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    result = benchmark(
        args.config,
        size=args.size,
        batch=args.batch,
        backend=args.backend,
        threads=args.threads,
        runs=args.runs,
        warmup=args.warmup,
        overrides=args.update,
        checkpoint=args.resume,
        optimization=args.ort_optimization,
        device=args.device,
        amp=args.amp,
        compile_model=args.compile,
        cuda_graph=args.cuda_graph,
        openvino_precision=args.ov_precision,
        onnx=args.onnx,
        profile=args.profile is not None,
    )
    logger = logging.getLogger(__name__)
    size = (
        ""
        if result.params is None
        else f"{result.params / 1e6:.2f} M params, {result.gflops:.2f} GFLOPs (2xMACs) per image, "
    )
    logger.info(
        "%s %s (%s): %smedian %.1f ms per batch of %d, %.2f img/s",
        result.config,
        result.backend,
        result.device,
        size,
        result.latency_ms,
        result.batch,
        result.throughput,
    )
    if result.profile is not None:
        print(format_table(result.profile, args.profile_top), flush=True)
        if args.profile:
            markdown, table = write_profile(result.profile, args.profile, args.profile_top)
            logger.info("profile written to %s and %s", markdown, table)
    print(json.dumps(result.to_dict()), flush=True)  # the machine-readable last line
    return 0


if __name__ == "__main__":
    from rtdetr_spartan.misc.cli_errors import run_main

    raise SystemExit(run_main(main))
