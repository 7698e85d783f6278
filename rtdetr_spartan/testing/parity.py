"""Parity checks against the reference fixtures (``tests/fixtures/parity`` in the repository),
shared by the test suite and the GPU benchmark.

Implements the fixtures' documented synthetic-weight rule: each state-dict entry ``i`` is
filled from NumPy's PCG64 stream seeded with ``seed * 1_000_003 + i``; the kind of entry
(BN statistics, 1-D scale, 1-D other, N-D) picks the distribution.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

__all__ = [
    "Spec",
    "detector_parity",
    "load_expected",
    "load_spec",
    "matched_fraction",
    "state_dict_spec",
    "summary_problems",
    "synthetic_scenes",
    "synthetic_state_dict",
    "synthetic_targets",
]

Spec = list[tuple[str, tuple[int, ...], str]]


def load_spec(name: str, fixtures: Path) -> tuple[Spec, int]:
    """The ordered (name, shape, dtype) entries of ``fixtures/NAME.json`` and its parameter count."""
    data = json.loads((fixtures / f"{name}.json").read_text())
    entries = [(n, tuple(shape), dtype) for n, shape, dtype in data["state_dict"]]
    return entries, int(data["params"])


def load_expected(name: str, fixtures: Path) -> Any:
    """The reference outputs stored in ``fixtures/NAME.pt`` (tensors and plain values, read as data only)."""
    return torch.load(fixtures / f"{name}.pt", weights_only=True)


def _uniform_fill(name: str, shape: tuple[int, ...], stream: np.random.Generator) -> np.ndarray:
    u = stream.random(math.prod(shape)).reshape(shape)
    if name.endswith("running_mean"):
        return 0.1 * (2.0 * u - 1.0)
    if name.endswith("running_var"):
        return 0.5 + u
    if len(shape) <= 1:
        offset = 1.0 if name.endswith("weight") else 0.0
        return offset + 0.1 * (2.0 * u - 1.0)
    fan_in = max(1, math.prod(shape[1:]))
    return (2.0 * u - 1.0) / math.sqrt(fan_in)


def synthetic_state_dict(spec: Spec, seed: int = 0) -> dict[str, torch.Tensor]:
    """Deterministic weights for every entry of ``spec``."""
    state: dict[str, torch.Tensor] = {}
    for index, (name, shape, dtype) in enumerate(spec):
        if name.endswith("num_batches_tracked"):
            state[name] = torch.zeros(shape, dtype=torch.int64)
            continue
        stream = np.random.Generator(np.random.PCG64(seed * 1_000_003 + index))
        state[name] = torch.from_numpy(_uniform_fill(name, shape, stream)).to(getattr(torch, dtype))
    return state


def synthetic_scenes(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """The fixtures' input images: [batch, 3, height, width] float32 in [0, 1].

    Per image and channel a smooth gradient ``0.5 a + 0.25 bx x + 0.25 by y``, then 12 flat
    rectangles, all drawn in order from one PCG64(seed) stream.
    """
    stream = np.random.Generator(np.random.PCG64(seed))
    ys = np.linspace(0.0, 1.0, height)[:, None]
    xs = np.linspace(0.0, 1.0, width)[None, :]
    images = np.empty((batch, 3, height, width))
    for b in range(batch):
        for c in range(3):
            a, bx, by = stream.random(3)
            images[b, c] = 0.5 * a + 0.25 * bx * xs + 0.25 * by * ys
        for _ in range(12):
            x0 = stream.integers(0, width - 8)
            y0 = stream.integers(0, height - 8)
            w = stream.integers(8, width // 3)
            h = stream.integers(8, height // 3)
            images[b, :, y0 : y0 + h, x0 : x0 + w] = stream.random(3)[:, None, None]
    return torch.from_numpy(images).float()


def synthetic_targets(batch: int, classes: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """Detection targets for ``batch`` images: 1-7 boxes each, ``boxes`` [n, 4] cxcywh
    normalized, ``labels`` [n] in [0, classes)."""
    generator = torch.Generator().manual_seed(seed)
    targets = []
    for _ in range(batch):
        count = int(torch.randint(1, 8, (1,), generator=generator))
        centres = 0.2 + 0.6 * torch.rand(count, 2, generator=generator)
        sizes = 0.05 + 0.3 * torch.rand(count, 2, generator=generator)
        labels = torch.randint(0, classes, (count,), generator=generator)
        targets.append({"labels": labels, "boxes": torch.cat([centres, sizes], dim=1)})
    return targets


def state_dict_spec(module: torch.nn.Module) -> Spec:
    return [(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in module.state_dict().items()]


def summary_problems(summary: dict[str, Any], tensor: torch.Tensor, tol: float = 1e-4) -> list[str]:
    """Differences between ``tensor`` and a fixture summary (shape, sum, |sum|, probed values)."""
    if list(tensor.shape) != list(summary["shape"]):
        return [f"shape {list(tensor.shape)} != reference {list(summary['shape'])}"]
    values = tensor.detach().double()
    problems = []
    slack = tol * math.sqrt(values.numel())
    for key, got in (("sum", values.sum().item()), ("abs_sum", values.abs().sum().item())):
        want = float(summary[key])
        if abs(got - want) > slack + tol * abs(want):
            problems.append(f"{key} {got:.6g} != reference {want:.6g}")
    expected = summary["probe_value"].double()
    probed = values.flatten()[summary["probe_index"]]
    worst = (probed - expected).abs().max().item()
    if worst > tol + tol * expected.abs().max().item():
        problems.append(f"probed values differ by up to {worst:.3g}")
    return problems


def matched_fraction(
    ref_logits: torch.Tensor, ref_boxes: torch.Tensor, logits: torch.Tensor, boxes: torch.Tensor, atol: float = 1e-4
) -> float:
    """Share of reference queries that some output query reproduces within ``atol``.

    logits: [B, Q, C]; boxes: [B, Q, 4]. Per image, each reference query is compared with every
    output query by the largest absolute difference over logits and box.
    """
    if ref_logits.shape != logits.shape or ref_boxes.shape != boxes.shape:
        raise ValueError(
            f"shapes {tuple(logits.shape)}/{tuple(boxes.shape)} != reference "
            f"{tuple(ref_logits.shape)}/{tuple(ref_boxes.shape)}"
        )
    reference = torch.cat([ref_logits, ref_boxes], dim=-1).double()
    produced = torch.cat([logits, boxes], dim=-1).double()
    hits = 0
    for ref_img, out_img in zip(reference, produced):
        nearest = torch.cdist(ref_img, out_img, p=float("inf")).min(dim=1).values
        hits += int((nearest <= atol).sum())
    return hits / (reference.shape[0] * reference.shape[1])


def detector_parity(
    model: torch.nn.Module, expected: dict[str, Any], device: torch.device | str = "cpu"
) -> tuple[list[str], float]:
    """Run an RT-DETR ``model`` (eval mode, on ``device``) on a detector fixture's input and
    compare: differences of its backbone and encoder maps from the fixture summaries
    (``summary_problems``, each prefixed by part and level), and the ``matched_fraction`` of
    the reference decoder queries (atol 1e-4)."""
    batch, _, height, width = expected["input_shape"]
    backbone, encoder, decoder = (cast(torch.nn.Module, getattr(model, n)) for n in ("backbone", "encoder", "decoder"))
    with torch.inference_mode():
        feats = backbone(synthetic_scenes(batch, height, width, seed=0).to(device))
        memory = encoder(feats)
        outputs = decoder(memory)
    problems = []
    for part, tensors in (("backbone", feats), ("encoder", memory)):
        for level, (summary, tensor) in enumerate(zip(expected[part], tensors, strict=True)):
            problems += [f"{part} level {level}: {p}" for p in summary_problems(summary, tensor.cpu())]
    fraction = matched_fraction(
        expected["pred_logits"],
        expected["pred_boxes"],
        outputs["pred_logits"].cpu(),
        outputs["pred_boxes"].cpu(),
        atol=1e-4,
    )
    return problems, fraction
