"""onnxruntime and OpenVINO against eager PyTorch for RT-DETR-R18 and RT-DETR-SpaRTAN-T on this
CPU: the README's deployment latency table.

    python benchmarks/deploy_latency.py --threads 1 2 --rounds 3 --runs 15

Each measurement is one ``rtdetr_spartan.deploy.benchmark.benchmark`` call (what
``tools/benchmark.py`` runs): the config's detector with random weights, model +
postprocessor, batch 1, 640 x 640, ``--runs`` calls after ``--warmup``; the
onnxruntime side exports the fixed-shape graph that ``tools/export_onnx.py --static`` writes and
runs it with default session options (one session alive at a time, so no idle thread pool
competes for the cores); the OpenVINO side compiles the same graph for the CPU in float32. Calls alternate between models and backends, round after round, so that
slow phases of a shared machine hit every entry alike. The table gives the median over rounds of
each call's median latency, and the fastest single run (on a VM whose host is busy the minimum is
the steadier of the two). The last stdout line is a JSON object with every measurement.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
from collections import defaultdict
from pathlib import Path

from rtdetr_spartan.deploy.benchmark import benchmark, cpu_name

logger = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("torch", "onnxruntime", "openvino")  # eager PyTorch (SpaRTAN's inference form), the runtimes

MODELS = {
    "RT-DETR-R18": ROOT / "configs/rtdetr/rtdetr_r18vd_6x_coco.yml",
    "RT-DETR-SpaRTAN-T": ROOT / "configs/rtdetr/rtdetr_spartan_t_6x_coco.yml",
}


Latencies = dict[tuple[str, str, int], list[tuple[float, float]]]


def measure(
    threads: list[int], rounds: int, runs: int, warmup: int, size: int, backends: tuple[str, ...] = BACKENDS
) -> Latencies:
    """(median, minimum) latency in ms per call, keyed by (model, backend, threads)."""
    latencies: Latencies = defaultdict(list)
    for round_index in range(rounds):
        for count in threads:
            for model, config in MODELS.items():
                for backend in backends:
                    result = benchmark(config, size=size, backend=backend, threads=count, runs=runs, warmup=warmup)
                    latencies[model, backend, count].append((result.latency_ms, result.latency_min_ms))
                    logger.info(
                        "round %d/%d %s %s %d thread(s): %.1f ms",
                        round_index + 1,
                        rounds,
                        model,
                        backend,
                        count,
                        result.latency_ms,
                    )
    return latencies


def summary(latencies: Latencies, key: tuple[str, str, int]) -> tuple[float, float]:
    """(median over rounds of the call medians, minimum of all runs) in ms."""
    return (statistics.median(m for m, _ in latencies[key]), min(low for _, low in latencies[key]))


def format_table(latencies: Latencies, threads: list[int], backends: tuple[str, ...] = BACKENDS) -> str:
    """Markdown: per model and thread count, each backend's latency as "median / min" ms; the
    factor after onnxruntime is eager / onnxruntime, after OpenVINO onnxruntime / OpenVINO."""
    baseline = {"onnxruntime": "torch", "openvino": "onnxruntime"}
    names = {"torch": "eager", "onnxruntime": "onnxruntime", "openvino": "OpenVINO"}
    header = "| model | " + " | ".join(f"{names[b]}, {t} thr" for t in threads for b in backends)
    lines = [header + " |", "|---" * (1 + len(backends) * len(threads)) + "|"]
    for model in MODELS:
        cells = []
        for count in threads:
            for backend in backends:
                median, low = summary(latencies, (model, backend, count))
                cell = f"{median:.0f} / {low:.0f} ms"
                base = baseline.get(backend)
                if base in backends:
                    ref = summary(latencies, (model, base, count))
                    cell += f" ({ref[0] / median:.2f}x / {ref[1] / low:.2f}x)"
                cells.append(cell)
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("rtdetr_spartan").setLevel(logging.WARNING)
    load = os.getloadavg()[0]
    backends = tuple(args.backends)
    latencies = measure(args.threads, args.rounds, args.runs, args.warmup, args.size, backends)
    print(f"{cpu_name()}, {os.cpu_count()} cores, load average {load:.2f} before the run")
    print(format_table(latencies, args.threads, backends))
    for count in args.threads:
        for backend in backends:
            r18, spartan = (summary(latencies, (m, backend, count)) for m in MODELS)
            print(
                f"{backend}, {count} thread(s): SpaRTAN-T / R18 latency = "
                f"{spartan[0] / r18[0]:.3f} (median), {spartan[1] / r18[1]:.3f} (min)"
            )
    print(
        json.dumps(
            {
                "size": args.size,
                "rounds": args.rounds,
                "runs": args.runs,
                "latency_ms": {f"{m}|{b}|{t}": v for (m, b, t), v in latencies.items()},
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
