"""Parameters, GFLOPs, latency and throughput of a config's detector (PyTorch, onnxruntime or OpenVINO).

    python tools/benchmark.py -c configs/rtdetr/rtdetr_r18vd_6x_coco.yml --backend onnxruntime
    python tools/benchmark.py -c configs/rtdetr/rtdetr_r18vd_6x_coco.yml --backend openvino --threads 2
    python tools/benchmark.py -c configs/rtdetr/rtdetr_r18vd_6x_coco.yml --device cuda --amp float16 --cuda-graph

GFLOPs per image with FLOPs = 2 x MACs (torch.utils.flop_counter; matrix products and
convolutions). Latency: median over --runs after --warmup calls, model + postprocessor, one
batch. The last line of stdout is one JSON object with params, gflops, gmacs, latency_ms
(median), throughput (images/s) and the run's settings.
"""

from __future__ import annotations

import argparse
import json
import logging

from rtdetr_spartan.deploy.benchmark import BACKENDS, benchmark


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", required=True, help="YAML config of the model")
    parser.add_argument("-r", "--resume", default=None, help="checkpoint (weights do not change speed)")
    parser.add_argument(
        "-u",
        "--update",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides, e.g. -u num_classes=4 (repeatable)",
    )
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
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
    )
    logging.getLogger(__name__).info(
        "%s %s (%s): %.2f M params, %.2f GFLOPs (2xMACs) per image, median %.1f ms per batch of %d, %.2f img/s",
        result.config,
        result.backend,
        result.device,
        result.params / 1e6,
        result.gflops,
        result.latency_ms,
        result.batch,
        result.throughput,
    )
    print(json.dumps(result.to_dict()), flush=True)  # the machine-readable last line
    return 0


if __name__ == "__main__":
    from rtdetr_spartan.misc.cli_errors import run_main

    raise SystemExit(run_main(main))
