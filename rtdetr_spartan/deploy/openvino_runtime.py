"""Run an exported detector with OpenVINO on the CPU, behind the same interface as onnxruntime.

OpenVINO reads the ``.onnx`` file that ``tools/export_onnx.py`` writes (no conversion step) and
compiles it for the CPU; ``save_ir`` also writes it as OpenVINO IR (``model.xml`` + ``.bin``),
with the export's metadata, which :class:`OpenVinoPredictor` reads back the same way.
Input checks, batching and preprocessing are those of every predictor
(:class:`rtdetr_spartan.deploy.predictor.Predictor`); this module adds OpenVINO's part.

Precision: float32 unless asked otherwise. OpenVINO's own CPU default is bfloat16 on CPUs with
bfloat16 instructions (AVX512_BF16, AMX), which changes the numbers; here bfloat16 is opt-in.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from rtdetr_spartan.deploy.metadata import ModelInfo
from rtdetr_spartan.deploy.predictor import GRAPH_INPUTS, ModelFileError, Outputs, Predictor, model_file

__all__ = [
    "PRECISIONS",
    "OpenVinoPredictor",
    "openvino_bf16_supported",
    "openvino_config",
    "read_openvino_model",
    "stored_model_info",
    "write_ir",
]

logger = logging.getLogger(__name__)

PRECISIONS = ("float32", "bfloat16")
IR_NAME = "model.xml"
_RT_INFO_SECTION = "rtdetr_spartan"  # where the ONNX metadata lives in a saved IR


def openvino_bf16_supported() -> bool:
    """Whether OpenVINO's CPU plugin can compute in bfloat16 on this machine."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def openvino_config(threads: int | None = None, precision: str = "float32") -> dict[str, Any]:
    """CPU compile settings: latency mode, ``threads`` inference threads (None: OpenVINO's
    default, one per core) and the inference ``precision``; ValueError for bfloat16 on a CPU
    without it (naming the CPU and what it supports)."""
    import openvino as ov
    import openvino.properties.hint as hints

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if precision == "bfloat16" and not openvino_bf16_supported():
        core = ov.Core()
        raise ValueError(
            f"this CPU ({core.get_property('CPU', 'FULL_DEVICE_NAME')}) has no bfloat16 support in OpenVINO "
            f"(capabilities {core.get_property('CPU', 'OPTIMIZATION_CAPABILITIES')}); use precision float32"
        )
    config: dict[str, Any] = {
        hints.performance_mode: hints.PerformanceMode.LATENCY,
        hints.inference_precision: ov.Type.bf16 if precision == "bfloat16" else ov.Type.f32,
    }
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return config


def _onnx_metadata(path: Path) -> dict[str, str]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {prop.key: prop.value for prop in model.metadata_props}


def _ir_metadata(model: Any, path: Path) -> dict[str, str]:
    rt_info = model.get_rt_info()
    if _RT_INFO_SECTION not in rt_info:
        raise ValueError(f"{path}: OpenVINO IR without rtdetr_spartan metadata; save it with --save-ir")
    return {str(key): value.astype(str) for key, value in rt_info[_RT_INFO_SECTION].items()}


def read_openvino_model(path: Path, core: Any | None = None) -> Any:
    """``path`` (an exported ``.onnx`` or a saved ``model.xml``) read by OpenVINO as an
    ``openvino.Model``; :class:`ModelFileError` naming the file for anything it cannot parse
    (garbage, a truncated IR, an IR without its ``.bin``)."""
    import openvino as ov

    try:
        return (core or ov.Core()).read_model(str(path))
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelFileError(
            f"{path} is not a model OpenVINO can read (an exported .onnx or a saved model.xml with its .bin): {first}"
        ) from err


def stored_model_info(path: Path, model: Any | None = None) -> ModelInfo:
    """The export metadata of the model file ``path``: a saved IR's rt_info (``model``: the IR
    as read) or an ``.onnx`` file's metadata_props. ValueError naming the file when it has none."""
    if path.suffix.lower() == ".xml":
        meta = _ir_metadata(model, path)
    else:
        meta = _onnx_metadata(path)
    return ModelInfo.from_metadata(meta, str(path))


def write_ir(model: Any, target: Path, info: ModelInfo) -> Path:
    """Write ``model`` (an ``openvino.Model``) as IR ``target`` (+ ``.bin``, float32 weights) with
    ``info`` in its rt_info, which :func:`stored_model_info` reads back. Both files are written
    under temporary names beside ``target`` and renamed over the old ones, the weights first, so
    an interrupted save leaves the previous IR whole and a reader never sees a half-written pair."""
    import openvino as ov

    target.parent.mkdir(parents=True, exist_ok=True)
    for key, value in info.to_metadata().items():
        model.set_rt_info(value, [_RT_INFO_SECTION, key])
    handle, scratch = tempfile.mkstemp(prefix=f".{target.stem}-", suffix=".xml", dir=target.parent)
    os.close(handle)
    scratch_xml = Path(scratch)
    scratch_bin = scratch_xml.with_suffix(".bin")
    try:
        ov.save_model(model, str(scratch_xml), compress_to_fp16=False)
        os.replace(scratch_bin, target.with_suffix(".bin"))
        os.replace(scratch_xml, target)
    finally:
        scratch_xml.unlink(missing_ok=True)
        scratch_bin.unlink(missing_ok=True)
    return target


class OpenVinoPredictor(Predictor):
    """An exported model (``.onnx``, or IR ``.xml`` saved by this class) compiled for the CPU.

    Args:
        path: the exported ``.onnx`` file or a saved ``model.xml``.
        threads: inference threads (None: one per core).
        precision: ``float32`` (default) or ``bfloat16`` (CPUs with bfloat16 instructions).
        input_size: (H, W) to run at; only for models exported with ``--dynamic-size``.
        save_ir: a folder to write the model as OpenVINO IR into (``model.xml`` / ``model.bin``,
            float32 weights), with the export's metadata.
        profiling: compile with OpenVINO's per-node counters on (``profiling_info``).
    """

    path: Path

    def __init__(
        self,
        path: str | Path,
        threads: int | None = None,
        precision: str = "float32",
        input_size: tuple[int, int] | None = None,
        save_ir: str | Path | None = None,
        profiling: bool = False,
    ) -> None:
        import openvino as ov

        self.path = model_file(path)
        config = openvino_config(threads, precision)
        if profiling:
            config[ov.properties.enable_profiling] = True
        core = ov.Core()
        model = read_openvino_model(self.path, core)
        self.info = stored_model_info(self.path, model)
        self.precision = precision
        inputs = {port.get_any_name(): port for port in model.inputs}
        batch = inputs[GRAPH_INPUTS[0]].get_partial_shape()[0] if GRAPH_INPUTS[0] in inputs else None
        sizes = inputs.get(GRAPH_INPUTS[1])
        self.bind_graph(
            inputs,
            fixed_batch=batch.get_length() if batch is not None and batch.is_static else None,
            sizes_are_float=sizes is not None and sizes.get_element_type() == ov.Type.f32,
            input_size=input_size,
        )
        if save_ir is not None:
            self.save_ir(model, save_ir)
        self.compiled = core.compile_model(model, "CPU", config)
        self._request = self.compiled.create_infer_request()

    def save_ir(self, model: Any, folder: str | Path) -> Path:
        """Write ``model`` (an ``openvino.Model``) as IR ``folder/model.xml`` (+ ``model.bin``)
        with this model's metadata; returns the ``.xml`` path.

        Written atomically (:func:`write_ir`), so an interrupted save leaves the previous IR
        whole. Writing over the IR this predictor was loaded from is refused
        (:class:`ModelFileError`): OpenVINO maps its ``.bin`` into memory while the model is in use.
        """
        folder = Path(folder)
        target = folder / IR_NAME
        if self.path.suffix.lower() == ".xml" and target.resolve() in (
            self.path.resolve(),
            self.path.with_suffix(".bin").resolve(),
        ):
            raise ModelFileError(
                f"--save-ir {folder} would write over the model being read ({self.path}); choose another folder"
            )
        write_ir(model, target, self.info)
        logger.info("OpenVINO IR written to %s", target)
        return target

    def profiling_info(self) -> list[Any]:
        """Per-node ``openvino.ProfilingInfo`` of the last inference (compile with ``profiling=True``)."""
        return list(self._request.get_profiling_info())

    @property
    def threads(self) -> int:
        """Inference threads of the compiled model."""
        return int(self.compiled.get_property("INFERENCE_NUM_THREADS"))

    def infer(self, images: np.ndarray, orig_sizes: np.ndarray) -> Outputs:
        self._request.infer({GRAPH_INPUTS[0]: images, GRAPH_INPUTS[1]: orig_sizes})
        labels, boxes, scores = (
            np.array(self._request.get_tensor(name).data) for name in ("labels", "boxes", "scores")
        )
        return labels, boxes, scores
