"""Run an exported detector with onnxruntime on the CPU: the one place onnxruntime sessions are
made (:func:`onnxruntime_session`, used by the predictor, the export check and the benchmark)
and :class:`OnnxPredictor`, the onnxruntime backend of :class:`~rtdetr_spartan.deploy.predictor.Predictor`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from rtdetr_spartan.deploy.metadata import ModelInfo
from rtdetr_spartan.deploy.predictor import GRAPH_INPUTS, ModelFileError, Outputs, Predictor, model_file

__all__ = ["OPTIMIZATION_LEVELS", "OnnxPredictor", "onnxruntime_session", "session_options"]

logger = logging.getLogger(__name__)

OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")
OUTPUT_NAMES = ("labels", "boxes", "scores")


def session_options(threads: int | None = None, optimization: str = "all", profile_prefix: str | None = None) -> Any:
    """onnxruntime ``SessionOptions``: intra-op ``threads`` (None: onnxruntime's default, one per
    core; else one inter-op thread), graph ``optimization`` level, and optional profiling to
    ``profile_prefix*.json``."""
    import onnxruntime as ort

    if optimization not in OPTIMIZATION_LEVELS:
        raise ValueError(f"graph optimization must be one of {OPTIMIZATION_LEVELS}, got {optimization!r}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return options


def onnxruntime_session(
    model: str | Path | bytes,
    threads: int | None = None,
    optimization: str = "all",
    profile_prefix: str | None = None,
    providers: Sequence[str] = ("CPUExecutionProvider",),
) -> Any:
    """An onnxruntime ``InferenceSession`` on ``model`` (a file, or a serialized ``ModelProto``)
    with :func:`session_options`. A file onnxruntime cannot load is a :class:`ModelFileError`
    naming it."""
    import onnxruntime as ort
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidGraph, InvalidProtobuf

    options = session_options(threads, optimization, profile_prefix)
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(source, options, providers=list(providers))
    except (InvalidProtobuf, InvalidGraph, Fail) as err:
        name = "the serialized model" if isinstance(model, bytes) else str(model)
        raise ModelFileError(
            f"{name} is not an ONNX model onnxruntime can load (export one with tools/export_onnx.py): {err}"
        ) from err


class OnnxPredictor(Predictor):
    """An exported model (``tools/export_onnx.py``) in an onnxruntime CPU session.

    Class names, category ids and the input size come from the file's metadata. A graph
    exported with a fixed batch is fed in chunks of that batch. ``profile_prefix``: profile every
    run to ``profile_prefix*.json`` (``session.end_profiling()`` ends it).
    """

    path: Path

    def __init__(
        self,
        path: str | Path,
        threads: int | None = None,
        optimization: str = "all",
        input_size: tuple[int, int] | None = None,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        profile_prefix: str | None = None,
    ) -> None:
        self.path = model_file(path)
        if self.path.suffix.lower() == ".xml":
            raise ModelFileError(f"{self.path} is an OpenVINO IR, not an ONNX model; use --runtime openvino")
        self.session = onnxruntime_session(self.path, threads, optimization, profile_prefix, providers)
        self.info = ModelInfo.from_metadata(self.session.get_modelmeta().custom_metadata_map, str(self.path))
        inputs = {i.name: i for i in self.session.get_inputs()}
        batch = inputs[GRAPH_INPUTS[0]].shape[0] if GRAPH_INPUTS[0] in inputs else None
        sizes = inputs.get(GRAPH_INPUTS[1])
        self.bind_graph(
            inputs,
            fixed_batch=batch if isinstance(batch, int) else None,
            sizes_are_float=sizes is not None and sizes.type == "tensor(float)",
            input_size=input_size,
        )

    def infer(self, images: np.ndarray, orig_sizes: np.ndarray) -> Outputs:
        labels, boxes, scores = self.session.run(
            list(OUTPUT_NAMES), {GRAPH_INPUTS[0]: images, GRAPH_INPUTS[1]: orig_sizes}
        )
        return labels, boxes, scores
