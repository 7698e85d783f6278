"""INT8 post-training quantization of an exported detector with NNCF, for OpenVINO.

``quantize_openvino`` reads the exported ``.onnx`` (or a float IR saved by this project),
calibrates NNCF's quantizers on images preprocessed exactly as the predictors preprocess them
(``runtime.preprocess``: resize to the export's input size, [0, 1], no mean/std) and writes
``OUT_DIR/model_int8.xml`` + ``.bin`` with the export's metadata, which ``OpenVinoPredictor``
(and so ``tools/infer.py``, ``tools/eval_onnx.py``) reads as it reads any saved IR.

What stays in float (``FLOAT_SCOPES``): everything under ``/model/decoder/`` and
``/postprocessor/`` (node names carry the module path). RT-DETR's decoder holds the query
selection (``enc_output`` / ``enc_score_head`` / ``enc_bbox_head`` and top-k over all encoder
tokens), the deformable attention's sampling offsets and grid-sample, iterative box refinement
through ``inverse_sigmoid`` and the score heads. Quantizing them collapses the family's accuracy
(Ultralytics measured RT-DETR-L at mAP 0.0002 fully quantized; an RT-DETRv2-S card gives 4.2 AP
against 45.7 with the decoder in float): a top-k over int8 scores picks the wrong queries, and
8-bit offsets move the sampling points by whole pixels. The backbone and the hybrid encoder,
where nearly all the FLOPs are, are quantized. Every scope must match nodes of the graph; one
that matches none is an error, so a renamed graph never silently quantizes the decoder.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from rtdetr_spartan.data.image_io import read_rgb
from rtdetr_spartan.data.layouts import detection_dataset
from rtdetr_spartan.deploy.metadata import ModelInfo
from rtdetr_spartan.deploy.openvino_runtime import read_openvino_model, stored_model_info, write_ir
from rtdetr_spartan.deploy.predictor import preprocess
from rtdetr_spartan.misc.images import IMAGE_SUFFIXES, collect_inputs

__all__ = [
    "DEFAULT_SUBSET",
    "FLOAT_SCOPES",
    "INT8_IR_NAME",
    "MODEL_TYPES",
    "PRESETS",
    "CalibrationError",
    "QuantizationResult",
    "calibration_from_config",
    "calibration_from_folder",
    "fake_quantize_consumers",
    "float_node_names",
    "float_scope",
    "quantize_openvino",
    "read_model_info",
]

logger = logging.getLogger(__name__)

INT8_IR_NAME = "model_int8.xml"
DEFAULT_SUBSET = 300
FLOAT_SCOPES: tuple[str, ...] = ("/model/decoder/", "/postprocessor/")
PRESETS = ("performance", "mixed")
MODEL_TYPES = ("cnn", "transformer")
_QUANTIZER_TYPES = frozenset({"FakeQuantize", "FakeConvert"})


class CalibrationError(ValueError):
    """The calibration images cannot calibrate this model: none found, or from a dataset whose
    classes are not the model's."""


@dataclass
class QuantizationResult:
    """Where the INT8 model went and how it was made."""

    path: Path
    calibration_images: int
    seconds: float
    float_scopes: tuple[str, ...]
    quantizers: int
    preset: str
    model_type: str
    per_scope: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record["path"] = str(self.path)
        return record


def _check_model_path(path: Path) -> None:
    if path.is_dir():
        raise IsADirectoryError(f"--onnx {path} is a folder; give the exported .onnx file (or a saved IR .xml)")
    if not path.is_file():
        raise FileNotFoundError(f"model {path} does not exist; give the .onnx file tools/export_onnx.py wrote")
    if path.suffix.lower() not in (".onnx", ".xml"):
        raise ValueError(f"model {path}: expected an exported .onnx file or a saved OpenVINO IR .xml")


def read_model_info(path: str | Path, model: Any | None = None) -> ModelInfo:
    """The export metadata of ``path`` (``.onnx`` metadata_props, or the IR's rt_info for an
    ``.xml``; ``model``: the IR already read). ValueError naming the file for a model that was
    not exported by this project."""
    path = Path(path)
    _check_model_path(path)
    if path.suffix.lower() == ".xml" and model is None:
        model = read_openvino_model(path)
    return stored_model_info(path, model)


def _sample(items: Sequence[Any], subset: int, seed: int) -> list[Any]:
    """At most ``subset`` of ``items`` in their order, drawn with a fixed seed."""
    if subset < 1:
        raise ValueError(f"subset must be >= 1 calibration image, got {subset}")
    if len(items) <= subset:
        return list(items)
    chosen = sorted(random.Random(seed).sample(range(len(items)), subset))
    return [items[i] for i in chosen]


def calibration_from_folder(folder: str | Path, subset: int = DEFAULT_SUBSET, seed: int = 0) -> list[Path]:
    """Up to ``subset`` image files of ``folder`` (sorted, then a seeded sample)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CalibrationError(f"--images {folder} is not a folder of calibration images")
    try:
        files = collect_inputs(folder, IMAGE_SUFFIXES)
    except FileNotFoundError as err:
        raise CalibrationError(f"no calibration images: {err}") from err
    return _sample(files, subset, seed)


def _dataset_section(cfg: Any) -> tuple[str, dict[str, Any]]:
    for key in ("val_dataloader", "train_dataloader"):
        dataset = (cfg.get(key) or {}).get("dataset") or {}
        if dataset.get("img_folder") and dataset.get("ann_file"):
            return f"{key}.dataset", dataset
    raise CalibrationError(
        "the config has no val_dataloader.dataset (or train_dataloader.dataset) with img_folder and ann_file"
    )


def calibration_from_config(
    cfg: Any, info: ModelInfo, subset: int = DEFAULT_SUBSET, seed: int = 0, source: str = "the config"
) -> list[Path]:
    """Up to ``subset`` image files of the config's validation dataset (else its training
    dataset), checked by ``CocoDetection`` (every listed file exists). ``cfg``: the config's YAML dict. CalibrationError when its ``num_classes`` or its
    annotation file's categories do not fit the model's ``num_classes``, or it has no images."""
    num_classes = int(cfg.get("num_classes", 80))
    if num_classes != info.num_classes:
        raise CalibrationError(
            f"{source} has num_classes={num_classes} but the model was exported with "
            f"num_classes={info.num_classes}: calibrate with the config the model was trained with"
        )
    key, section = _dataset_section(cfg)
    try:
        dataset = detection_dataset(  # CocoDetection, or YOLODetection for a data.yaml
            section["img_folder"],
            section["ann_file"],
            remap_mscoco_category=bool(cfg.get("remap_mscoco_category", False)),
            num_classes=num_classes,
        )
    except ValueError as err:
        raise CalibrationError(f"{source}: {key} cannot calibrate this model: {err}") from err
    if len(dataset) == 0:
        raise CalibrationError(f"{source}: {key} ({dataset.ann_file}) lists no images to calibrate with")
    files = [dataset.img_folder / dataset.coco.loadImgs(image_id)[0]["file_name"] for image_id in dataset.ids]
    return _sample(files, subset, seed)


def float_node_names(model: Any, prefixes: Sequence[str] = FLOAT_SCOPES) -> list[str]:
    """Friendly names of the ops of ``model`` (an ``openvino.Model``) that stay in float: those
    whose module path starts with one of ``prefixes``, and the ops OpenVINO names itself (no
    module path: e.g. the ``MVN`` a LayerNorm becomes, ``ShapeOf``) whose data inputs all come
    from ops that stay in float, so a decoder LayerNorm is not quantized for its name."""
    prefixes = tuple(prefixes)
    # True / False for ops in / out of the float scopes; None for constant subgraphs (Constant,
    # Range of constants, ...), which neither hold nor pass on a scope.
    floating: dict[str, bool | None] = {}
    for op in model.get_ordered_ops():
        name = op.get_friendly_name()
        if name.startswith("/"):
            floating[name] = name.startswith(prefixes)
            continue
        producers = [port.get_source_output().get_node().get_friendly_name() for port in op.inputs()]
        votes = [floating[p] for p in producers if floating.get(p) is not None]
        floating[name] = all(votes) if votes else None
    return [name for name, is_float in floating.items() if is_float]


def float_scope(model: Any, prefixes: Sequence[str] = FLOAT_SCOPES, source: str = "the model") -> Any:
    """NNCF ``IgnoredScope`` of :func:`float_node_names`. ValueError naming the prefix when one
    matches no node of ``model`` (an ``openvino.Model``)."""
    import nncf

    names = [op.get_friendly_name() for op in model.get_ops()]
    for prefix in prefixes:
        if not any(name.startswith(prefix) for name in names):
            examples = sorted({"/".join(n.split("/")[:3]) for n in names if n.startswith("/")})[:8]
            raise ValueError(
                f"{source}: no node name starts with {prefix!r}, so it would not stay in float "
                f"(node-name scopes found: {examples}); was the graph exported by rtdetr_spartan?"
            )
    return nncf.IgnoredScope(names=float_node_names(model, prefixes), validate=False)


def _inputs(item: Image.Image | Path, info: ModelInfo, size_dtype: type) -> dict[str, np.ndarray]:
    """One calibration sample as the predictors feed it: batch 1, ``runtime.preprocess``."""
    image = read_rgb(item) if isinstance(item, Path) else item
    return {
        "images": preprocess(image, info.input_size).numpy()[None],
        "orig_target_sizes": np.array([image.size], dtype=size_dtype),
    }


def fake_quantize_consumers(model: Any) -> list[tuple[str, str]]:
    """``(quantizer, consumer)`` friendly names for every FakeQuantize / FakeConvert of
    ``model`` (an ``openvino.Model``) and each op that reads its output."""
    pairs = []
    for op in model.get_ops():
        if op.get_type_name() not in _QUANTIZER_TYPES:
            continue
        for output in op.outputs():
            for target in output.get_target_inputs():
                pairs.append((op.get_friendly_name(), target.get_node().get_friendly_name()))
    return pairs


def _per_scope(model: Any) -> dict[str, int]:
    """Quantizers counted by the top-level module of the op they feed (``/model/backbone``, ...)."""
    counts: dict[str, int] = {}
    for _, consumer in fake_quantize_consumers(model):
        scope = "/".join(consumer.split("/")[:3]) if consumer.startswith("/") else "(other)"
        counts[scope] = counts.get(scope, 0) + 1
    return dict(sorted(counts.items()))


def quantize_openvino(
    model_path: str | Path,
    images: Sequence[Image.Image | Path],
    output_dir: str | Path,
    preset: str = "mixed",
    model_type: str = "transformer",
    extra_float_scopes: Sequence[str] = (),
) -> QuantizationResult:
    """Quantize the exported model to INT8 with NNCF and write ``output_dir/model_int8.xml``.

    ``images``: calibration images (PIL images, or files read with ``read_rgb`` when used), preprocessed
    as the predictors do. ``preset``: NNCF's ``mixed`` (symmetric weights, asymmetric
    activations) or ``performance`` (symmetric both). ``model_type``: ``transformer`` (NNCF's
    transformer scheme: quantizers on convolutions and matrix products only, SmoothQuant) or
    ``cnn`` (NNCF's default scheme, which also quantizes the inputs of element-wise ops). On the
    shapes detector the transformer scheme kept AP (0.2342 vs 0.2326 in float32) and ran faster
    than float32; the cnn scheme put ~3x more quantizers on SpaRTAN's per-pixel products and
    gates and ran slower than float32 (docs/deployment_int8.md). ``extra_float_scopes``: node-name
    prefixes kept in float besides
    ``FLOAT_SCOPES``.
    """
    import nncf
    import openvino as ov

    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {model_type!r}")
    model_path = Path(model_path)
    _check_model_path(model_path)
    target = Path(output_dir) / INT8_IR_NAME
    if target.resolve() == model_path.resolve():
        raise ValueError(f"{target} is the input model; write the INT8 model to another folder")
    model = read_openvino_model(model_path)
    info = read_model_info(model_path, model)
    scopes = (*FLOAT_SCOPES, *extra_float_scopes)
    ignored = float_scope(model, scopes, str(model_path))
    calibration = list(images)
    if not calibration:
        raise CalibrationError("no calibration images were given")
    sizes = next(p for p in model.inputs if p.get_any_name() == "orig_target_sizes")
    size_dtype = np.float32 if sizes.get_element_type() == ov.Type.f32 else np.int64
    start = time.perf_counter()
    quantized = nncf.quantize(
        model,
        nncf.Dataset(calibration, lambda image: _inputs(image, info, size_dtype)),
        preset=nncf.QuantizationPreset.MIXED if preset == "mixed" else nncf.QuantizationPreset.PERFORMANCE,
        model_type=nncf.ModelType.TRANSFORMER if model_type == "transformer" else None,
        subset_size=len(calibration),
        ignored_scope=ignored,
    )
    seconds = time.perf_counter() - start
    kept = set(ignored.names)
    leaked = [pair for pair in fake_quantize_consumers(quantized) if pair[1] in kept]
    if leaked:
        raise RuntimeError(f"{model_path}: quantizers feed ops meant to stay in float, e.g. {leaked[:3]}")
    settings = {"tool": f"nncf {nncf.__version__}", "images": len(calibration), "preset": preset}
    settings.update({"model_type": model_type, "float_scopes": list(scopes)})
    info.extra["quantization"] = json.dumps(settings)
    write_ir(quantized, target, info)
    per_scope = _per_scope(quantized)
    logger.info(
        "INT8 model written to %s (%.1f s, %d calibration images, quantizers %s)",
        target,
        seconds,
        len(calibration),
        per_scope,
    )
    return QuantizationResult(
        target, len(calibration), seconds, scopes, sum(per_scope.values()), preset, model_type, per_scope
    )
