"""The eager PyTorch side of the benchmark: one timed call on CPU or CUDA (optionally compiled or
replayed from a CUDA graph) and the checks of device, autocast and backend options."""

from __future__ import annotations

from typing import Callable

import torch

from rtdetr_spartan.deploy.export import DeployModel
from rtdetr_spartan.nn.compile import compile_regional

__all__ = ["BACKENDS", "resolve_device", "torch_call"]

BACKENDS: tuple[str, ...] = ("torch", "onnxruntime", "openvino")


def torch_call(
    module: DeployModel,
    images: torch.Tensor,
    sizes: torch.Tensor,
    amp_dtype: torch.dtype | None,
    compile_model: bool = False,
    cuda_graph: bool = False,
) -> Callable[[], object]:
    """One inference call on ``images.device``; a CUDA call waits for the GPU before returning.

    ``compile_model``: compile the module's repeated blocks first (regional compilation,
    ``rtdetr_spartan.nn.compile.compile_regional``; the warm-up calls compile them).
    ``cuda_graph``: capture one call in a CUDA graph and time its replays, which removes the
    per-op launch cost of eager PyTorch (what a deployment with fixed input shapes would do).
    """
    device = images.device
    module = module.to(device)
    sizes = sizes.to(device)
    forward = compile_regional(module, dynamic=False) if compile_model else module

    def run() -> object:
        with (
            torch.inference_mode(),
            torch.autocast(device.type, amp_dtype or torch.float32, enabled=amp_dtype is not None),
        ):
            return forward(images, sizes)

    def call() -> object:
        outputs = run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return outputs

    if not cuda_graph:
        return call
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(3):  # warm-up (cuDNN / cuBLAS choices, caches) off the graph
            run()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = run()

    def replay() -> object:
        graph.replay()
        torch.cuda.synchronize(device)
        return outputs

    return replay


def resolve_device(
    device: str, backend: str, amp: str | None, compile_model: bool, cuda_graph: bool
) -> tuple[torch.device, torch.dtype | None]:
    """The torch device and autocast dtype, with a clear error for combinations that cannot run."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    resolved = torch.device(device)
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, got {device!r}")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda requested but torch.cuda.is_available() is False")
    if backend != "torch" and (resolved.type != "cpu" or amp is not None):
        raise ValueError(f"the {backend} backend runs on the CPU: use --device cpu without --amp")
    if backend != "torch" and (compile_model or cuda_graph):
        raise ValueError("compile_model and cuda_graph are options of the torch backend")
    if cuda_graph and resolved.type != "cuda":
        raise ValueError("cuda_graph needs device cuda")
    if amp is None:
        return resolved, None
    if amp not in ("float16", "bfloat16"):
        raise ValueError(f"amp must be float16 or bfloat16, got {amp!r}")
    if resolved.type == "cpu" and amp == "float16":
        raise ValueError("float16 autocast is for CUDA; use bfloat16 on the CPU")
    return resolved, getattr(torch, amp)
