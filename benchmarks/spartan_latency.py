# Follows the design of SpaRTAN (henry-pay/SpaRTAN, Apache-2.0): the "reference-style" baseline
# below recomputes the reference's forward math from this project's modules.
"""CPU eval latency of SpaRTAN-T against PResNet-18 (RT-DETR-R18's backbone), as backbones and
as full RT-DETR detectors, in eager PyTorch.

    python benchmarks/spartan_latency.py --threads 2 --runs 20 --out output/spartan_latency

Models: SpaRTAN-T as implemented here (the canonical model in eval mode, and its inference form
``reparameterize_model``; detectors: ``deploy()``, which applies it in place), a direct formulation
of the reference forward on the same weights ("reference-style": NCHW, two 1x1 convs, argmax +
gather, complex-dtype rotation between permute/contiguous copies, separate BN and
squeeze-excite passes) as the before-optimization baseline, and PResNet-18-vd. Detectors are
built from configs/spartan/spartan_t_model.yml and configs/rtdetr/rtdetr_r18vd_6x_coco.yml
(SpaRTAN-T or R18 backbone + HybridEncoder (hidden 256, expansion 0.5) + 3-layer decoder).

Calls are interleaved (A B C A B C ...) so that load from other processes hits every model
alike; the table gives the median and minimum wall time of ``--runs`` calls after ``--warmup``,
the median process CPU time, minor page faults per call and MACs (torch.utils.flop_counter).
The profiler's top ops per model go to ``--out``/<model>.profile.txt; the last stdout line is
a JSON summary, with the 1-minute load average before the run.

On a machine shared with other processes (load above the core count), OpenMP's default
spin-waiting makes every multi-threaded op wait for a descheduled sibling thread, which hurts
models with many small ops most; there run with ``OMP_WAIT_POLICY=PASSIVE`` (set before Python
starts) and compare ``--threads 1`` CPU times as well.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from rtdetr_spartan.core.yaml_config import YAMLConfig
from rtdetr_spartan.nn.reparameterize import reparameterize_model
from rtdetr_spartan.testing.spartan_reference import ReferenceStyleSpaRTAN

try:
    import resource
except ImportError:  # not on Windows
    resource = None

logger = logging.getLogger("spartan_latency")

ROOT = Path(__file__).resolve().parents[1]
SPARTAN_CONFIG = ROOT / "configs" / "spartan" / "spartan_t_model.yml"
R18_CONFIG = ROOT / "configs" / "rtdetr" / "rtdetr_r18vd_6x_coco.yml"


# ---- models ------------------------------------------------------------------------------------


def build_models(detectors: bool, reference_style: bool) -> dict[str, nn.Module]:
    """Eval-mode models by display name (random weights: speed does not depend on them)."""
    spartan_det = YAMLConfig(SPARTAN_CONFIG).model.eval()
    r18_det = YAMLConfig(R18_CONFIG).model.eval()
    models: dict[str, nn.Module] = {}
    if reference_style:
        models["SpaRTAN-T reference-style"] = ReferenceStyleSpaRTAN(spartan_det.backbone)
    models["SpaRTAN-T"] = spartan_det.backbone
    models["SpaRTAN-T deploy"] = reparameterize_model(spartan_det.backbone, inplace=False)
    models["PResNet-18"] = r18_det.backbone
    if detectors:
        if reference_style:
            port = copy.deepcopy(spartan_det)
            port.backbone = ReferenceStyleSpaRTAN(port.backbone)
            models["RT-DETR-SpaRTAN-T reference-style"] = port
        models["RT-DETR-SpaRTAN-T"] = spartan_det
        models["RT-DETR-SpaRTAN-T deploy"] = copy.deepcopy(spartan_det).deploy()
        models["RT-DETR-R18"] = r18_det
        models["RT-DETR-R18 deploy"] = copy.deepcopy(r18_det).deploy()
    return models


# ---- measurement -------------------------------------------------------------------------------


@dataclass
class Timing:
    median_ms: float
    min_ms: float
    cpu_ms: float
    faults: float | None
    gmacs: float


def _faults() -> int | None:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource else None


def count_gmacs(model: nn.Module, images: torch.Tensor) -> float:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(images)
    return counter.get_total_flops() / 2e9


def time_interleaved(models: dict[str, nn.Module], images: torch.Tensor, runs: int, warmup: int) -> dict[str, Timing]:
    calls: dict[str, Callable[[], object]] = {name: (lambda m=m: m(images)) for name, m in models.items()}
    wall: dict[str, list[float]] = {name: [] for name in calls}
    cpu: dict[str, list[float]] = {name: [] for name in calls}
    faults: dict[str, int] = {name: 0 for name in calls}
    with torch.inference_mode():
        for name, call in calls.items():
            for _ in range(warmup):
                call()
            logger.info("warmed up %s", name)
        for run in range(runs):
            for name, call in calls.items():
                before, start, start_cpu = _faults(), time.perf_counter(), time.process_time()
                call()
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
                after = _faults()
                faults[name] += 0 if before is None else after - before
            logger.info("run %d/%d done", run + 1, runs)
    return {
        name: Timing(
            median_ms=1e3 * statistics.median(wall[name]),
            min_ms=1e3 * min(wall[name]),
            cpu_ms=1e3 * statistics.median(cpu[name]),
            faults=faults[name] / runs if resource else None,
            gmacs=count_gmacs(models[name], images),
        )
        for name in calls
    }


def save_profile(name: str, model: nn.Module, images: torch.Tensor, out_dir: Path, runs: int, top: int) -> str:
    """Profile ``runs`` calls; write the top ops (by self CPU time) and return the first lines."""
    with torch.inference_mode():
        model(images)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(runs):
                model(images)
    by_op = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)
    by_shape = prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=top, max_shapes_column_width=80
    )
    path = out_dir / (name.replace(" ", "_") + ".profile.txt")
    path.write_text(f"{name}: {runs} calls, input {tuple(images.shape)}\n\n{by_op}\n\n{by_shape}\n")
    logger.info("profile of %s -> %s", name, path)
    return by_op


# ---- report ------------------------------------------------------------------------------------


def format_table(results: dict[str, Timing]) -> str:
    lines = [f"{'model':36s} {'median ms':>10s} {'min ms':>9s} {'cpu ms':>9s} {'faults':>8s} {'GMACs':>7s}"]
    for name, t in results.items():
        faults = "n/a" if t.faults is None else f"{t.faults:.0f}"
        lines.append(f"{name:36s} {t.median_ms:10.1f} {t.min_ms:9.1f} {t.cpu_ms:9.1f} {faults:>8s} {t.gmacs:7.2f}")
    return "\n".join(lines)


def format_ratios(results: dict[str, Timing]) -> str:
    pairs = [
        ("SpaRTAN-T", "PResNet-18"),
        ("SpaRTAN-T deploy", "PResNet-18"),
        ("SpaRTAN-T reference-style", "PResNet-18"),
        ("SpaRTAN-T reference-style", "SpaRTAN-T"),
        ("RT-DETR-SpaRTAN-T", "RT-DETR-R18"),
        ("RT-DETR-SpaRTAN-T deploy", "RT-DETR-R18 deploy"),
        ("RT-DETR-SpaRTAN-T reference-style", "RT-DETR-R18"),
    ]
    lines = []
    for a, b in pairs:
        if a in results and b in results:
            lines.append(
                f"{a} / {b}: median {results[a].median_ms / results[b].median_ms:.2f}x, "
                f"min {results[a].min_ms / results[b].min_ms:.2f}x"
            )
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads")
    parser.add_argument("--size", type=int, default=640, help="square input side")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--backbones-only", action="store_true", help="skip the detectors")
    parser.add_argument("--no-reference-style", action="store_true", help="skip the reference-style baseline")
    parser.add_argument("--profile-runs", type=int, default=3, help="0: no profiles")
    parser.add_argument("--top", type=int, default=30, help="ops per profile table")
    parser.add_argument("--out", type=Path, default=Path("output/spartan_latency"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    logger.info(
        "load average %s on %s cores, OMP_WAIT_POLICY=%s",
        load,
        os.cpu_count(),
        os.environ.get("OMP_WAIT_POLICY", "(default)"),
    )
    models = build_models(detectors=not args.backbones_only, reference_style=not args.no_reference_style)
    images = torch.rand(args.batch, 3, args.size, args.size)
    results = time_interleaved(models, images, args.runs, args.warmup)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.profile_runs > 0:
        for name in ("SpaRTAN-T", "PResNet-18", "SpaRTAN-T reference-style"):
            if name in models:
                top = save_profile(name, models[name], images, args.out, args.profile_runs, args.top)
                print(f"\n{name}: top ops over {args.profile_runs} calls\n" + "\n".join(top.splitlines()[:14]))
    print(
        f"\nbatch {args.batch}, {args.size}x{args.size}, {torch.get_num_threads()} threads, "
        f"{args.runs} interleaved runs after {args.warmup} warm-up calls each, load average "
        f"{load} on {os.cpu_count()} cores before the run\n"
    )
    print(format_table(results))
    print("\n" + format_ratios(results))
    summary = {
        "threads": torch.get_num_threads(),
        "size": args.size,
        "batch": args.batch,
        "runs": args.runs,
        "load_average": load,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "results": {k: asdict(v) for k, v in results.items()},
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
