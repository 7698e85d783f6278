"""What ``tools/visualize.py`` does: CAM figures (and detector feature-map grids) as PNG files
and, optionally, TensorBoard images."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from rtdetr_spartan.core import YAMLConfig, create
from rtdetr_spartan.data.image_io import read_rgb, to_rgb
from rtdetr_spartan.deploy.metadata import categories_from_config, input_size_from_config
from rtdetr_spartan.deploy.predictor import preprocess
from rtdetr_spartan.deploy.types import Detection
from rtdetr_spartan.misc.checkpoint import load_model_weights
from rtdetr_spartan.misc.images import (
    IMAGE_SUFFIXES,
    collect_inputs,
    draw_detections,
    refuse_overwriting_inputs,
    unique_names,
)
from rtdetr_spartan.visualize.cam import DetectionScores, classifier_cam, detector_cam
from rtdetr_spartan.visualize.figures import cam_overlay, feature_grid, panels_figure, save_png
from rtdetr_spartan.visualize.layers import classifier_layers, resolve_layers, stage_layers

__all__ = [
    "classifier_figure",
    "classifier_transform",
    "collect_images",
    "detector_figures",
    "figure_stems",
    "visualize",
]

logger = logging.getLogger(__name__)


def collect_images(source: str | Path) -> list[Path]:
    """``source`` if it is an image file, else the images directly inside it, sorted."""
    return collect_inputs(source, IMAGE_SUFFIXES)


def figure_stems(images: Sequence[Path], out_dir: Path) -> dict[Path, str]:
    """The name stem of each image's figures (``<stem>_cam.png``, ``<stem>_features.png``): the
    image's stem, made unique as inference names its outputs
    (:func:`~rtdetr_spartan.misc.images.unique_names`: ``a.jpg``, ``a.png`` -> ``a``, ``a_2``).
    :class:`~rtdetr_spartan.misc.images.OutputOverwritesInputError` (a ValueError) when a figure
    would replace an input image."""
    stems = unique_names(images, lambda p: p.stem)
    figures = [out_dir / f"{stem}_{kind}.png" for stem in stems.values() for kind in ("cam", "features")]
    refuse_overwriting_inputs(figures, images)
    return stems


def classifier_transform(cfg: YAMLConfig) -> Any:
    """The config's validation transform of classification (resize, crop, normalize)."""
    spec = ((cfg.get("val_dataloader") or {}).get("dataset") or {}).get("transforms")
    if not spec:
        raise ValueError(f"{cfg.path}: no val_dataloader.dataset.transforms to preprocess images with")
    return create(spec, cfg.yaml_cfg, path="val_dataloader.dataset.transforms")


def _shown(tensor: torch.Tensor, transform: Any) -> Image.Image:
    """The preprocessed image as the model sees it, de-normalized for display."""
    mean = torch.tensor(getattr(transform.transforms[-1], "mean", [0.0] * 3)).view(3, 1, 1)
    std = torch.tensor(getattr(transform.transforms[-1], "std", [1.0] * 3)).view(3, 1, 1)
    pixels = (tensor * std + mean).clamp(0, 1).mul(255).byte().permute(1, 2, 0).numpy()
    return Image.fromarray(pixels)


def classifier_figure(
    model: torch.nn.Module,
    image: Image.Image,
    transform: Any,
    layers: Sequence[str],
    method: str = "gradcam",
    class_index: int | None = None,
    class_names: Sequence[str] = (),
) -> np.ndarray:
    """The preprocessed image beside the CAM overlay of each layer, as an RGB array."""
    tensor = transform(to_rgb(image))
    result = classifier_cam(model, tensor[None], layers, method, class_index)

    def name(index: int) -> str:
        return class_names[index] if index < len(class_names) else f"class {index}"

    shown = _shown(tensor, transform)
    panels: list[tuple[str, Image.Image | np.ndarray]] = [
        (f"predicted {name(result.predicted)} ({result.probability:.2f})", shown)
    ]
    panels += [(layer, cam_overlay(shown, cam)) for layer, cam in result.cams.items()]
    return panels_figure(panels, title=f"{method} of class {name(result.target)}")


def detector_figures(
    detector: DetectionScores,
    image: Image.Image,
    input_size: tuple[int, int],
    layers: Sequence[str],
    stages: Sequence[str],
    class_names: dict[int, str],
    method: str = "gradcam",
    top_k: int = 5,
) -> tuple[np.ndarray, np.ndarray]:
    """(CAM figure, feature-map figure) of one image: the image with the top detections beside
    the CAM of their scores per layer; per backbone stage its most active channels."""
    image = to_rgb(image)
    tensor = preprocess(image, input_size)[None]
    result = detector_cam(detector, tensor, layers, method, top_k)
    sx, sy = image.width / input_size[1], image.height / input_size[0]
    detections = [
        Detection(label, label, class_names.get(label, f"class_{label}"), score, (x0 * sx, y0 * sy, x1 * sx, y1 * sy))
        for label, score, (x0, y0, x1, y1) in zip(result.labels, result.scores, result.boxes)
    ]
    panels: list[tuple[str, Image.Image | np.ndarray]] = [
        (f"top {len(detections)} detections", draw_detections(image, detections))
    ]
    panels += [(_short(layer), cam_overlay(image, cam, detections)) for layer, cam in result.cams.items()]
    cam_fig = panels_figure(panels, title=f"{method} of the top detections' scores")
    maps: dict[str, torch.Tensor] = {}
    handles = [
        module.register_forward_hook(lambda _m, _i, out, name=name: maps.__setitem__(name, out))
        for name, module in zip(stages, resolve_layers(detector, stages))
    ]
    try:
        with torch.no_grad():
            detector(tensor)
    finally:
        for handle in handles:
            handle.remove()
    grid: list[tuple[str, Image.Image | np.ndarray]] = []
    for name in stages:
        feature = maps[name][0]
        stride = input_size[0] // feature.shape[1]
        grid.append((f"{_short(name)}\nstride {stride}, {feature.shape[0]} channels", image))
        grid += feature_grid(feature)
    features_fig = panels_figure(grid, title="backbone stages: most active channels", columns=9)
    return cam_fig, features_fig


def _short(name: str) -> str:
    """A layer name as the user gives it (relative to the detector, without the wrapper's prefix)."""
    return name.removeprefix("model.")


def _load(cfg: YAMLConfig, checkpoint: str | Path | None) -> torch.nn.Module:
    model = cfg.build("model")
    if checkpoint is None:
        logger.warning("no -r checkpoint: the maps show untrained weights")
    else:
        load_model_weights(model, checkpoint, strict=True, expect_task="detection", purpose="a detector (-r)")
    return model.eval()


def visualize(
    cfg: YAMLConfig,
    checkpoint: str | Path | None,
    source: str | Path,
    out_dir: str | Path,
    layers: Sequence[str] = (),
    method: str = "gradcam",
    class_index: int | None = None,
    top_k: int = 5,
    tensorboard: str | Path | None = None,
) -> list[Path]:
    """Write the figures of every image of ``source`` into ``out_dir`` (and TensorBoard); returns
    the PNG paths. Classifiers (``task: classification``) get CAMs of ``class_index`` or the
    predicted class; detectors get the CAM of their top detections and the backbone stages' maps."""
    if top_k < 1:
        raise ValueError(f"--top-k must be >= 1 (the detections the CAM explains), got {top_k}")
    out_dir = Path(out_dir)
    images = collect_images(source)
    stems = figure_stems(images, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = None
    if tensorboard is not None:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(tensorboard))
    model = _load(cfg, checkpoint)
    written: list[Path] = []
    try:
        if cfg.task == "classification":
            transform = classifier_transform(cfg)
            layers = tuple(layers) or classifier_layers(model)
            resolve_layers(model, layers)
            names = _class_names(cfg)
            for path in tqdm(images, desc="visualize", unit="image"):
                figure = classifier_figure(model, read_rgb(path), transform, layers, method, class_index, names)
                stem = stems[path]
                written.append(_emit(figure, out_dir / f"{stem}_cam.png", writer, f"cam/{stem}"))
        else:
            if class_index is not None:
                raise ValueError("--class is for classifiers; a detector's CAM follows its top detections")
            detector = DetectionScores(model, cfg.build("postprocessor").deploy()).eval()
            size = input_size_from_config(cfg.yaml_cfg)
            stages = stage_layers(detector, "model.backbone", torch.zeros(1, 3, *size))
            resolve_layers(model, layers)  # errors name layers as the user gives them
            layers = tuple(f"model.{n}" for n in layers) or tuple(stages)
            _, class_names = categories_from_config(cfg.yaml_cfg)
            for path in tqdm(images, desc="visualize", unit="image"):
                cam_fig, feat_fig = detector_figures(
                    detector, read_rgb(path), size, layers, stages, class_names, method, top_k
                )
                stem = stems[path]
                written.append(_emit(cam_fig, out_dir / f"{stem}_cam.png", writer, f"cam/{stem}"))
                written.append(_emit(feat_fig, out_dir / f"{stem}_features.png", writer, f"features/{stem}"))
    finally:
        if writer is not None:
            writer.close()
    logger.info("%d figures written to %s", len(written), out_dir)
    return written


def _class_names(cfg: YAMLConfig) -> list[str]:
    root = ((cfg.get("val_dataloader") or {}).get("dataset") or {}).get("root")
    if root and Path(root).is_dir():
        return sorted(p.name for p in Path(root).iterdir() if p.is_dir())
    return []


def _emit(figure: np.ndarray, path: Path, writer: Any, tag: str) -> Path:
    save_png(figure, str(path))
    if writer is not None:
        writer.add_image(tag, figure, global_step=0, dataformats="HWC")
    return path
