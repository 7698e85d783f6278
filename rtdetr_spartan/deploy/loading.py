""":func:`load_predictor`: an exported model in the runtime asked for, behind one interface."""

from __future__ import annotations

from pathlib import Path

from rtdetr_spartan.deploy.openvino_runtime import OpenVinoPredictor
from rtdetr_spartan.deploy.predictor import Predictor
from rtdetr_spartan.deploy.runtime import OnnxPredictor

__all__ = ["RUNTIMES", "load_predictor"]

RUNTIMES = ("onnxruntime", "openvino")


def load_predictor(
    path: str | Path,
    runtime: str = "onnxruntime",
    threads: int | None = None,
    input_size: tuple[int, int] | None = None,
    precision: str = "float32",
    save_ir: str | Path | None = None,
) -> Predictor:
    """An exported model (``.onnx``; for OpenVINO also a saved ``model.xml``) in ``runtime``
    (``onnxruntime`` or ``openvino``) with ``threads`` inference threads (None: one per core).
    ``precision`` (``float32`` / ``bfloat16``) and ``save_ir`` (a folder for the IR) are
    OpenVINO's: onnxruntime runs float32 and has no IR."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    if runtime == "openvino":
        return OpenVinoPredictor(path, threads=threads, precision=precision, input_size=input_size, save_ir=save_ir)
    if precision != "float32" or save_ir is not None:
        raise ValueError("precision and save_ir are options of the openvino runtime; onnxruntime runs float32")
    return OnnxPredictor(path, threads=threads, input_size=input_size)
