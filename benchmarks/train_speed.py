"""CPU training-step speed of RT-DETR-SpaRTAN-T against RT-DETR-R18, and of the SpaRTAN-T
classifier against the reference formulation of the same weights, in one interleaved run.

    python benchmarks/train_speed.py --threads 2 --rounds 15

A step is forward + criterion (detectors: the config's SetCriterion on synthetic targets;
classifier: cross-entropy) + backward + AdamW. Detectors: 320 x 320, batch 4, with the config's
optimizer as training builds it (parameter groups, fused AdamW); classifier: 224 x 224, batch
16, fused AdamW for both. As in training on the CPU, freed tensor memory is kept for reuse
(``misc.allocator``; ``--no-malloc-tuning`` measures glibc's defaults). Each pair (the two
detectors, then the two classifiers) alternates step by step, so slow phases of a shared machine
hit both alike; the summary gives the median and the fastest step of each, the median process
CPU time, and their ratios. (Interleaving all four models made the detectors' steps share the
allocator and caches with the classifiers' 16-image batches, which shifted the detector ratio
by up to 0.04 from run to run.)

Run it on an idle machine with OpenMP's default wait policy. ``OMP_WAIT_POLICY=PASSIVE`` (which
keeps a loaded machine's descheduled threads from spinning) puts the worker threads to sleep
after every parallel region; waking them costs tens of microseconds per op, which penalises
SpaRTAN's many small ops far more than ResNet's large convs (forward and backward of a SpaRTAN-T
third-stage block, 128 channels at 20 x 20, batch 4: 29.5 ms passive, 22.5 ms default).
Memory: the bytes autograd saves for backward in one step (distinct storages), the part of
peak training memory that depends on the model's formulation. The last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from rtdetr_spartan.deploy.from_config import load_config
from rtdetr_spartan.misc.allocator import retain_freed_memory
from rtdetr_spartan.nn.backbones.spartan import SpaRTANClassifier
from rtdetr_spartan.solver.optimization import build_optimizer
from rtdetr_spartan.testing.parity import synthetic_targets
from rtdetr_spartan.testing.spartan_reference import ReferenceStyleSpaRTAN

logger = logging.getLogger("train_speed")
ROOT = Path(__file__).resolve().parents[1]
DETECTORS = {
    "RT-DETR-R18": ROOT / "configs/rtdetr/rtdetr_r18vd_6x_coco.yml",
    "RT-DETR-SpaRTAN-T": ROOT / "configs/rtdetr/rtdetr_spartan_t_6x_coco.yml",
}
Step = Callable[[], None]


def detector_step(config: Path, size: int, batch: int, compile_blocks: bool) -> tuple[Step, nn.Module]:
    cfg = load_config(config, ["RTDETR.multi_scale=~"])
    model, criterion = cfg.build("model").train(), cfg.build("criterion").train()
    if compile_blocks:
        from rtdetr_spartan.nn.compile import compile_regional

        compile_regional(model)
    optimizer = build_optimizer(cfg, model, DataLoader([], batch_size=batch))
    images = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    targets = synthetic_targets(batch, 80, seed=1)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        losses = criterion(model(images, targets), targets)
        sum(losses.values()).backward()
        optimizer.step()

    return step, model


class ReferenceFormulationClassifier(nn.Module):
    """A ``SpaRTANClassifier``'s weights run through the reference's forward formulation."""

    def __init__(self, classifier: SpaRTANClassifier) -> None:
        super().__init__()
        self.classifier = classifier
        self.trunk = ReferenceStyleSpaRTAN(classifier)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, 3, H, W] -> logits [B, classes]."""
        return self.classifier.linear(self.trunk(x)[-1].mean((2, 3)))


def classifier_step(reference: bool, size: int, batch: int) -> tuple[Step, nn.Module]:
    torch.manual_seed(0)
    model: nn.Module = SpaRTANClassifier().train()
    if reference:
        model = ReferenceFormulationClassifier(model)  # type: ignore[arg-type]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, fused=True)
    images = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 1000, (batch,), generator=torch.Generator().manual_seed(1))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()

    return step, model


def saved_bytes(step: Step) -> int:
    """Bytes of the distinct storages autograd saves for backward during one ``step``."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if not isinstance(tensor, nn.Parameter):
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(storages.values())


def interleaved(
    steps: dict[str, Step], rounds: int, warmup: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and process CPU seconds of each step, the steps alternating round after round."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    cpu: dict[str, list[float]] = {name: [] for name in steps}
    for round_index in range(rounds):
        for name, step in steps.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            step()
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
        logger.info("round %d/%d: %s", round_index + 1, rounds, {n: round(t[-1], 3) for n, t in times.items()})
    return times, cpu


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="regional compilation of the detectors' blocks")
    parser.add_argument("--skip-classifier", action="store_true")
    parser.add_argument("--no-malloc-tuning", action="store_true", help="keep glibc's allocator defaults")
    parser.add_argument("--skip-detector", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("rtdetr_spartan").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    malloc_tuning = not args.no_malloc_tuning and retain_freed_memory()
    phases: list[dict[str, Step]] = []
    if not args.skip_detector:
        phases.append({name: detector_step(config, 320, 4, args.compile)[0] for name, config in DETECTORS.items()})
    if not args.skip_classifier:
        phases.append(
            {
                "SpaRTAN-T classifier": classifier_step(False, 224, 16)[0],
                "SpaRTAN-T classifier, reference formulation": classifier_step(True, 224, 16)[0],
            }
        )
    load = os.getloadavg()[0]
    memory: dict[str, float] = {}
    times: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    for steps in phases:
        memory.update({name: saved_bytes(step) / 2**20 for name, step in steps.items()})
        phase_times, phase_cpu = interleaved(steps, args.rounds, args.warmup)
        times.update(phase_times)
        cpu.update(phase_cpu)
    result: dict[str, object] = {
        "threads": args.threads,
        "load_average_before": load,
        "compile": args.compile,
        "malloc_tuning": malloc_tuning,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
    }
    for name, values in times.items():
        result[name] = {
            "median_s": round(statistics.median(values), 4),
            "min_s": round(min(values), 4),
            "cpu_median_s": round(statistics.median(cpu[name]), 4),
            "saved_for_backward_mib": round(memory[name], 1),
        }
        logger.info(
            "%s: median %.3f s, min %.3f s, CPU time median %.3f s, saved for backward %.0f MiB",
            name,
            statistics.median(values),
            min(values),
            statistics.median(cpu[name]),
            memory[name],
        )
    pairs = [
        ("RT-DETR-SpaRTAN-T", "RT-DETR-R18"),
        ("SpaRTAN-T classifier", "SpaRTAN-T classifier, reference formulation"),
    ]
    for a, b in pairs:
        if a in times and b in times:
            median = statistics.median(times[a]) / statistics.median(times[b])
            fastest = min(times[a]) / min(times[b])
            cpu_ratio = statistics.median(cpu[a]) / statistics.median(cpu[b])
            result[f"{a} / {b}"] = {"median": round(median, 3), "min": round(fastest, 3), "cpu": round(cpu_ratio, 3)}
            logger.info("%s / %s: %.3f (median), %.3f (min), %.3f (CPU time)", a, b, median, fastest, cpu_ratio)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
