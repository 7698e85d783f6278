"""SpaRTAN-T against R18 in every runtime and precision this project deploys with, on this CPU:
the latency table of docs/results.md ("SpaRTAN-T / R18 where users deploy").

    python benchmarks/deploy_latency.py --threads 1 2 --rounds 3 --runs 10
    python benchmarks/deploy_latency.py --entries openvino-bf16 openvino-int8 --profile outputs/profiles

Models: RT-DETR-R18 and RT-DETR-SpaRTAN-T with random weights, model + postprocessor, batch 1,
640 x 640. Entries (``--entries``):
  * ``eager``: PyTorch after ``model.deploy()`` (RepVGG branches fused, SpaRTAN's inference form);
  * ``onnxruntime``: the fixed-shape graph that ``tools/export_onnx.py --static`` writes;
  * ``openvino-f32`` / ``openvino-bf16``: the same graph compiled by OpenVINO with that inference
    precision (bf16 is OpenVINO's default on CPUs with bf16 instructions, AMX or AVX512_BF16);
  * ``openvino-int8`` / ``openvino-int8-f32``: the graph quantized by ``tools/quantize.py``'s
    NNCF recipe (decoder in float) on ``--calibration`` synthetic scenes, the float rest in
    bf16 / f32.
Every measurement is one ``rtdetr_spartan.benchmark.benchmark`` call (``tools/benchmark.py``):
``--runs`` calls after ``--warmup``, one runtime session alive at a time. Calls alternate between
models and entries, round after round, so that slow phases of a shared machine hit every entry
alike. The table gives the median over rounds of each call's median latency and the fastest run;
the ratio lines give SpaRTAN-T / R18 for both. ``--profile DIR`` also writes each model's per-op
profile (``tools/benchmark.py --profile``) of the last round. The last stdout line is a JSON
object with every measurement.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from PIL import Image

from rtdetr_spartan.benchmark.latency import benchmark, cpu_name
from rtdetr_spartan.benchmark.profiling import write_profile
from rtdetr_spartan.deploy.export import export_onnx
from rtdetr_spartan.deploy.from_config import build_deploy_model, load_config, model_info_from_config
from rtdetr_spartan.deploy.quantize import quantize_openvino
from rtdetr_spartan.testing.parity import synthetic_scenes

logger = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]

MODELS = {
    "RT-DETR-R18": ROOT / "configs/rtdetr/rtdetr_r18vd_6x_coco.yml",
    "RT-DETR-SpaRTAN-T": ROOT / "configs/rtdetr/rtdetr_spartan_t_6x_coco.yml",
}
# entry -> (backend, OpenVINO inference precision, model file kind)
ENTRIES: dict[str, tuple[str, str, str]] = {
    "eager": ("torch", "float32", "config"),
    "onnxruntime": ("onnxruntime", "float32", "onnx"),
    "openvino-f32": ("openvino", "float32", "onnx"),
    "openvino-bf16": ("openvino", "bfloat16", "onnx"),
    "openvino-int8": ("openvino", "bfloat16", "int8"),
    "openvino-int8-f32": ("openvino", "float32", "int8"),
}

Latencies = dict[tuple[str, str, int], list[tuple[float, float]]]


def _calibration(count: int, size: int) -> list[Image.Image]:
    """``count`` synthetic scenes (the parity fixtures' image rule) as PIL images."""
    scenes = synthetic_scenes(count, size, size, seed=1)
    arrays = (scenes.permute(0, 2, 3, 1).numpy() * 255).round().astype("uint8")
    return [Image.fromarray(array) for array in arrays]


def prepare_models(work: Path, size: int, entries: list[str], calibration: int) -> dict[tuple[str, str], Path]:
    """Per model the fixed-shape ONNX export and, when an int8 entry is asked for, its INT8 IR."""
    files: dict[tuple[str, str], Path] = {}
    kinds = {ENTRIES[e][2] for e in entries}
    for model, config in MODELS.items():
        cfg = load_config(config)
        info = model_info_from_config(cfg, (size, size), dynamic_batch=False)
        folder = work / model
        onnx = export_onnx(build_deploy_model(cfg), folder / "model.onnx", info, check=False, verify=False).path
        files[model, "onnx"] = onnx
        if "int8" in kinds:
            files[model, "int8"] = quantize_openvino(onnx, _calibration(calibration, size), folder).path
    return files


def _measure_one(model: str, entry: str, files: dict[tuple[str, str], Path], **kwargs: Any) -> Any:
    backend, precision, kind = ENTRIES[entry]
    if kind == "config":  # latency only: FLOPs (an extra forward pass per call) are not reported here
        return benchmark(MODELS[model], backend=backend, flops=False, **kwargs)
    return benchmark(None, backend=backend, onnx=files[model, kind], openvino_precision=precision, **kwargs)


def measure(
    threads: list[int],
    rounds: int,
    entries: list[str],
    files: dict[tuple[str, str], Path],
    profile_dir: Path | None,
    **kwargs: Any,
) -> Latencies:
    """(median, minimum) latency in ms per call, keyed by (model, entry, threads)."""
    latencies: Latencies = defaultdict(list)
    for round_index in range(rounds):
        last = round_index == rounds - 1
        for count in threads:
            for model in MODELS:
                for entry in entries:
                    profile = profile_dir is not None and last
                    result = _measure_one(model, entry, files, threads=count, profile=profile, **kwargs)
                    latencies[model, entry, count].append((result.latency_ms, result.latency_min_ms))
                    if profile and result.profile is not None:
                        assert profile_dir is not None
                        write_profile(result.profile, profile_dir / f"{model}_{entry}_{count}thr")
                    logger.info(
                        "round %d/%d %s %s %d thread(s): %.1f ms",
                        round_index + 1,
                        rounds,
                        model,
                        entry,
                        count,
                        result.latency_ms,
                    )
    return latencies


def summary(latencies: Latencies, key: tuple[str, str, int]) -> tuple[float, float]:
    """(median over rounds of the call medians, minimum of all runs) in ms."""
    return (statistics.median(m for m, _ in latencies[key]), min(low for _, low in latencies[key]))


def format_table(latencies: Latencies, threads: list[int], entries: list[str]) -> str:
    """Markdown: one row per entry and thread count, each model's "median / min" ms and the
    SpaRTAN-T / R18 ratios of both."""
    r18, spartan = MODELS
    lines = [
        f"| runtime, precision | threads | {r18} | {spartan} | ratio (median / min) |",
        "|---|---|---|---|---|",
    ]
    for entry in entries:
        for count in threads:
            a, b = summary(latencies, (r18, entry, count)), summary(latencies, (spartan, entry, count))
            lines.append(
                f"| {entry} | {count} | {a[0]:.0f} / {a[1]:.0f} ms | {b[0]:.0f} / {b[1]:.0f} ms "
                f"| **{b[0] / a[0]:.2f}** / {b[1] / a[1]:.2f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--entries", nargs="+", choices=list(ENTRIES), default=list(ENTRIES))
    parser.add_argument("--calibration", type=int, default=32, help="synthetic calibration images for INT8")
    parser.add_argument("--profile", type=Path, default=None, help="write per-op profiles of the last round here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("rtdetr_spartan").setLevel(logging.WARNING)
    logging.getLogger("nncf").setLevel(logging.WARNING)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        files = prepare_models(Path(tmp), args.size, args.entries, args.calibration)
        latencies = measure(
            args.threads, args.rounds, args.entries, files, args.profile, runs=args.runs, warmup=args.warmup
        )
    print(f"{cpu_name()}, {os.cpu_count()} cores, load average {load:.2f} before the run; {args.size}², batch 1")
    print(format_table(latencies, args.threads, args.entries))
    print(
        json.dumps(
            {
                "size": args.size,
                "rounds": args.rounds,
                "runs": args.runs,
                "latency_ms": {f"{m}|{e}|{t}": v for (m, e, t), v in latencies.items()},
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
