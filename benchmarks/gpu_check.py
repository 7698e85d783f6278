"""CUDA checks that the CPU test suite cannot make: parity on the GPU, one training step on the GPU
against the same step on the CPU, and GPU latency of RT-DETR-R18 against RT-DETR-SpaRTAN-T.

    python benchmarks/gpu_check.py --out output/gpu_check

Run it from the repository root on a machine with a CUDA GPU (the test fixtures are read from
``tests/fixtures/parity``). Sections:

- ``parity``: the reference fixtures (RT-DETR-R18, RT-DETR-SpaRTAN-T, the SpaRTAN-T classifier
  with and without autograd) reproduced on the GPU in float32 with TF32 off, by the same
  measures as the CPU tests.
- ``train_step``: one forward + loss + backward of each detector (denoising without noise and
  no stochastic depth, so both devices compute the same function) on the CPU and on the GPU
  from the same weights and targets: relative loss and gradient differences; then the same
  step under float16 autocast must be finite.
- ``latency``: ``rtdetr_spartan.benchmark.benchmark`` on the GPU (model + postprocessor,
  640 px, random weights, deployed) for each ``--settings`` entry BATCH-DTYPE-MODE: float32 or
  float16 autocast; eager PyTorch, replays of a CUDA graph, or torch.compile + CUDA graph.
  float32 runs with TF32 off (as every section here); ``--cudnn-benchmark`` lets cuDNN pick its
  algorithms by timing.
- ``profile``: each deployed detector's GPU kernels for one batch (``--profile-batch``, float16):
  kernel count and the kernels with the most GPU time (OUT/profile_<model>.txt).

End-to-end training, resuming and pretraining on the GPU are the tools' own commands (see
``benchmarks/gpu_check.sh``). The last stdout line is a JSON object with every number.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

from rtdetr_spartan.benchmark.latency import benchmark
from rtdetr_spartan.deploy.from_config import load_config
from rtdetr_spartan.nn.backbones.spartan import SpaRTANClassifier
from rtdetr_spartan.testing import parity as fixtures
from rtdetr_spartan.testing.parity import (
    detector_parity,
    state_dict_spec,
    summary_problems,
    synthetic_scenes,
    synthetic_state_dict,
    synthetic_targets,
)

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "parity"  # data files, read from the repository

logger = logging.getLogger("gpu_check")

DETECTORS = {
    "RT-DETR-R18": ("rtdetr_r18vd", ROOT / "configs/rtdetr/rtdetr_r18vd_6x_coco.yml"),
    "RT-DETR-SpaRTAN-T": ("rtdetr_spartan_t", ROOT / "configs/rtdetr/rtdetr_spartan_t_6x_coco.yml"),
}


def _detector(config: Path, fixture: str, overrides: list[str] | None = None) -> torch.nn.Module:
    """The config's detector with the fixture's synthetic weights (state dict checked against the spec)."""
    model = load_config(config, overrides or []).build("model")
    entries, _ = fixtures.load_spec(fixture, FIXTURES)
    if state_dict_spec(model) != entries:
        raise AssertionError(f"{config.name}: state dict differs from the {fixture} spec")
    model.load_state_dict(synthetic_state_dict(entries, 0), strict=True)
    return model


def parity(device: torch.device) -> dict[str, object]:
    """Reference fixtures reproduced on ``device`` (float32, TF32 off)."""
    results: dict[str, object] = {}
    for name, (fixture, config) in DETECTORS.items():
        model = _detector(config, fixture).eval().to(device)
        expected = fixtures.load_expected(f"{fixture}_seed0", FIXTURES)
        for form in ("eval", "deployed"):
            if form == "deployed":
                model = model.deploy()
            problems, fraction = detector_parity(model, expected, device)
            results[f"{name} ({form})"] = {
                "matched_queries": round(fraction, 4),
                "problems": problems,
                "ok": fraction >= 0.98 and not problems,
            }
    entries, _ = fixtures.load_spec("spartan_t_cls", FIXTURES)
    classifier = SpaRTANClassifier()
    classifier.load_state_dict(synthetic_state_dict(entries, 0), strict=True)
    classifier = classifier.eval().to(device)
    expected = fixtures.load_expected("spartan_t_cls_seed0", FIXTURES)
    x = synthetic_scenes(expected["input_shape"][0], *expected["input_shape"][2:], seed=0).to(device)
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            stages = classifier.forward_stages(x, (1, 2, 3))
            logits = classifier(x)
        problems = [
            f"stage {i + 2}: {p}"
            for i, (summary, stage) in enumerate(zip(expected["stages"], stages))
            for p in summary_problems(summary, stage.detach().cpu())
        ]
        worst = (logits.detach().cpu() - expected["logits"]).abs().max().item()
        results[f"SpaRTAN-T classifier (grad={grad})"] = {
            "logits_max_abs_diff": worst,
            "problems": problems,
            "ok": worst <= 1e-4 and not problems,
        }
    return results


def _step(
    model: torch.nn.Module,
    criterion: torch.nn.Module,
    images: torch.Tensor,
    targets: list[dict[str, torch.Tensor]],
    amp: torch.dtype | None,
) -> tuple[dict[str, float], dict]:
    """Losses and gradients (on the CPU) of one training step on the tensors' device."""
    model.zero_grad(set_to_none=True)
    with torch.autocast(images.device.type, amp or torch.float32, enabled=amp is not None):
        outputs = model(images, targets)
        losses = criterion(outputs, targets)
    total = sum(losses.values())
    total.backward()
    grads = {n: p.grad.detach().float().cpu() for n, p in model.named_parameters() if p.grad is not None}
    return {k: float(v) for k, v in losses.items()}, grads


def _relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """||a - b|| / ||a|| over all tensors together (the same names in both)."""
    if a.keys() != b.keys():
        raise AssertionError(f"different gradients: {sorted(a.keys() ^ b.keys())[:5]}")
    diff = sum(float((a[n].double() - b[n].double()).square().sum()) for n in a)
    norm = sum(float(a[n].double().square().sum()) for n in a)
    return math.sqrt(diff / max(norm, 1e-300))


def train_step(device: torch.device) -> dict[str, object]:
    """One training step per detector: CPU float32 against ``device`` float32, then float16 autocast
    on CUDA (bfloat16 on the CPU)."""
    results: dict[str, object] = {}
    for name, (fixture, config) in DETECTORS.items():
        overrides = [
            "RTDETRTransformer.label_noise_ratio=0",
            "RTDETRTransformer.box_noise_scale=0",
            "RTDETR.multi_scale=~",
        ] + (["SpaRTAN.drop_path_rate=0"] if "SpaRTAN" in name else [])
        model = _detector(config, fixture, overrides).train()
        criterion = load_config(config, overrides).build("criterion")
        images = synthetic_scenes(2, 320, 320, seed=1)
        targets = synthetic_targets(2, 80, seed=1)
        cpu_losses, cpu_grads = _step(model, criterion, images, targets, None)
        model, criterion = model.to(device), criterion.to(device)
        gpu_targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        gpu_losses, gpu_grads = _step(model, criterion, images.to(device), gpu_targets, None)
        loss_rel = max(abs(cpu_losses[k] - gpu_losses[k]) / max(abs(cpu_losses[k]), 1e-6) for k in cpu_losses)
        grad_rel = _relative_difference(cpu_grads, gpu_grads)
        amp = torch.float16 if device.type == "cuda" else torch.bfloat16
        amp_losses, amp_grads = _step(model, criterion, images.to(device), gpu_targets, amp)
        finite = all(math.isfinite(v) for v in amp_losses.values()) and all(
            bool(torch.isfinite(g).all()) for g in amp_grads.values()
        )
        results[name] = {
            "total_loss_cpu": round(sum(cpu_losses.values()), 6),
            "loss_max_rel_diff": loss_rel,
            "grad_rel_diff": grad_rel,
            "amp_total_loss": round(sum(amp_losses.values()), 6),
            "amp_finite": bool(finite),
            "ok": loss_rel <= 1e-4 and grad_rel <= 1e-2 and bool(finite),
        }
    return results


# batch, autocast dtype (None: float32), how the model runs: eager, graph (CUDA graph replay),
# compile (torch.compile + CUDA graph replay)
DEFAULT_SETTINGS = (
    "1-float32-eager",
    "1-float16-eager",
    "1-float32-graph",
    "1-float16-graph",
    "16-float32-graph",
    "16-float16-graph",
)


def latency(settings: list[str], rounds: int, runs: int, warmup: int) -> dict[str, object]:
    """Median over rounds of each setting's median latency (ms per batch) on the GPU; the
    models alternate within a round. A setting that fails is reported, the others still run."""
    times: dict[str, list[float]] = {}
    info: dict[str, object] = {}
    for _ in range(rounds):
        for setting in settings:
            batch, amp, mode = setting.split("-")
            for name, (_, config) in DETECTORS.items():
                key = f"{name} {setting}"
                try:
                    result = benchmark(
                        config,
                        size=640,
                        batch=int(batch),
                        runs=runs,
                        warmup=warmup,
                        device="cuda",
                        amp=None if amp == "float32" else amp,
                        compile_model=mode == "compile",
                        cuda_graph=mode in ("graph", "compile"),
                    )
                except Exception as error:
                    info[f"{key} error"] = repr(error)[:300]
                    continue
                times.setdefault(key, []).append(result.latency_ms)
                info.update(gpu=result.gpu, torch=result.torch_version)
                info[f"{name} gflops"] = result.gflops
                logger.info("%s: %.3f ms", key, result.latency_ms)
    info.update({key: round(statistics.median(values), 3) for key, values in times.items()})
    return info


def profile_kernels(device: torch.device, out: Path, batch: int, top: int = 20) -> dict[str, object]:
    """Each deployed detector's kernels on ``device`` for one 640 px batch (float16 autocast on
    CUDA, float32 on the CPU): the number of kernels and of ops, and the ``top`` kernels by
    self time, written to OUT/profile_<model>.txt."""
    from torch.profiler import ProfilerActivity, profile

    from rtdetr_spartan.deploy.export import DeployModel, sample_inputs

    cuda = device.type == "cuda"
    activity, sort_key = (
        (ProfilerActivity.CUDA, "self_device_time_total") if cuda else (ProfilerActivity.CPU, "self_cpu_time_total")
    )
    results: dict[str, object] = {}
    for name, (_, config) in DETECTORS.items():
        cfg = load_config(config)
        module = DeployModel(cfg.build("model"), cfg.build("postprocessor")).to(device)
        images, sizes = (t.to(device) for t in sample_inputs((640, 640), batch))
        with torch.inference_mode(), torch.autocast(device.type, torch.float16, enabled=cuda):
            for _ in range(3):
                module(images, sizes)
            if cuda:
                torch.cuda.synchronize(device)
            with profile(activities=[activity]) as prof:
                module(images, sizes)
                if cuda:
                    torch.cuda.synchronize(device)
        events = prof.key_averages()
        table = events.table(sort_by=sort_key, row_limit=top)
        (out / f"profile_{name}.txt").write_text(table)
        results[name] = {
            "kernels" if cuda else "ops": sum(e.count for e in events),
            "top": [
                (e.key[:80], round(getattr(e, sort_key) / 1000, 3), e.count)
                for e in sorted(events, key=lambda e: -getattr(e, sort_key))[:top]
            ],
        }
    return results


def _section(name: str, run: Callable[[], dict[str, object]], summary: dict[str, object]) -> None:
    try:
        summary[name] = run()
    except Exception:  # report and go on: one broken section must not hide the others
        summary[name] = {"ok": False, "error": traceback.format_exc(limit=6)}
    logger.info("%s: %s", name, json.dumps(summary[name], indent=1, default=str))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("output/gpu_check"))
    parser.add_argument(
        "--sections",
        nargs="+",
        default=["parity", "train_step", "latency"],
        choices=("parity", "train_step", "latency", "profile"),
    )
    parser.add_argument("--profile-batch", type=int, default=16)
    parser.add_argument(
        "--cudnn-benchmark",
        action="store_true",
        help="torch.backends.cudnn.benchmark = True (cuDNN times its algorithms first)",
    )
    parser.add_argument("--device", default="cuda", help="cpu checks the script itself (latency needs cuda)")
    parser.add_argument(
        "--settings",
        nargs="+",
        default=list(DEFAULT_SETTINGS),
        help="latency settings BATCH-DTYPE-MODE, MODE one of eager, graph, compile",
    )
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: torch.cuda.is_available() is False")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    args.out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, object] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
    }
    sections = {
        "parity": lambda: parity(device),
        "train_step": lambda: train_step(device),
        "latency": lambda: latency(args.settings, args.rounds, args.runs, args.warmup),
        "profile": lambda: profile_kernels(device, args.out, args.profile_batch),
    }
    for name in args.sections:
        _section(name, sections[name], summary)
    (args.out / f"gpu_check_{'_'.join(args.sections)}.json").write_text(json.dumps(summary, indent=1, default=str))
    print(json.dumps(summary, default=str), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
