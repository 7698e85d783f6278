"""Detect objects in images, folders of images and videos; write annotated pictures, videos and JSON."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from rtdetr_spartan.data.image_io import read_rgb
from rtdetr_spartan.deploy.predictor import Predictor
from rtdetr_spartan.deploy.video import VideoError, VideoReader, VideoWriter
from rtdetr_spartan.misc.images import (
    IMAGE_SUFFIXES,
    VIDEO_SUFFIXES,
    OutputOverwritesInputError,
    collect_inputs,
    draw_detections,
    refuse_overwriting_inputs,
    unique_names,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "VIDEO_SUFFIXES",
    "OutputOverwritesInputError",
    "annotate_image",
    "collect_inputs",
    "image_output_name",
    "output_paths",
    "run_inference",
    "video_output_name",
]

logger = logging.getLogger(__name__)

RESULTS_NAME = "detections.json"


def _annotate(predictor: Predictor, image: Image.Image, out_path: Path, threshold: float) -> dict[str, Any]:
    """Draw ``image``'s detections into ``out_path``; the record without the file name."""
    detections = predictor.predict([image], threshold)[0]
    draw_detections(image, detections).save(out_path)
    return {
        "width": image.width,
        "height": image.height,
        "output": out_path.name,
        "detections": [d.to_dict() for d in detections],
    }


def annotate_image(predictor: Predictor, path: Path, out_path: Path, threshold: float) -> dict[str, Any]:
    """Detect on the image file ``path`` and draw its detections scoring >= ``threshold`` into
    ``out_path``; returns its record of ``detections.json`` (file, width, height, output,
    detections)."""
    # read_rgb applies the EXIF orientation, so boxes are in the image as it is displayed
    record = _annotate(predictor, read_rgb(path), out_path, threshold)
    logger.info("%s: %d detections", path.name, len(record["detections"]))
    return {"file": path.name, **record}


def image_output_name(path: Path) -> str:
    """``a.jpg`` -> ``a.jpg``, ``a.png`` -> ``a.png``; other formats (``a.gif``) -> ``a.png``."""
    suffix = path.suffix.lower() if path.suffix.lower() in {".jpg", ".jpeg", ".png"} else ".png"
    return f"{path.stem}{suffix}"


def video_output_name(path: Path) -> str:
    """``clip.mp4`` -> ``clip.mp4``; ``clip.avi`` -> ``clip_avi.mp4`` (annotated videos are MP4)."""
    suffix = path.suffix.lower()
    return f"{path.stem}.mp4" if suffix == ".mp4" else f"{path.stem}_{suffix.lstrip('.')}.mp4"


def output_paths(inputs: list[Path], out_dir: Path) -> dict[Path, Path]:
    """The annotated output in ``out_dir`` of each input (``image_output_name`` /
    ``video_output_name``), unique: when two inputs would share a name (``clip.avi`` and
    ``clip_avi.mp4`` both give ``clip_avi.mp4``; ``a.gif`` and ``a.png`` both ``a.png``), an input
    whose output keeps its own name keeps it and the other gets ``_2``, ``_3``, ... (a warning
    names both). Names are compared case-insensitively, as some file systems do.

    Raises :class:`OutputOverwritesInputError` when an output (or ``detections.json``) would be
    one of the input files.
    """
    names = unique_names(
        inputs,
        lambda p: video_output_name(p) if p.suffix.lower() in VIDEO_SUFFIXES else image_output_name(p),
        reserved=(RESULTS_NAME,),
    )
    outputs = {p: out_dir / names[p] for p in inputs}
    refuse_overwriting_inputs([*outputs.values(), out_dir / RESULTS_NAME], inputs)
    return outputs


def _check_output_folder(source: Path, inputs: list[Path], out_dir: Path) -> None:
    """Refuse an output folder that is the input folder or holds an input file: its annotated
    copies would replace or sit among the user's originals."""
    out = out_dir.resolve()
    if source.is_dir() and source.resolve() == out:
        raise OutputOverwritesInputError(
            f"output folder {out_dir} is the input folder {source}; choose another -o (e.g. {out_dir / 'annotated'})"
        )
    held = [p for p in inputs if p.parent.resolve() == out]
    if held:
        raise OutputOverwritesInputError(
            f"output folder {out_dir} holds the input {held[0]}; choose an output folder (-o) that holds no inputs"
        )


def _video_record(predictor: Predictor, path: Path, out_path: Path, threshold: float) -> dict[str, Any]:
    """Detect on every frame, streaming: decode a frame, draw it, encode it; one record per frame.
    The output is opened at the first frame, so a video without frames leaves no file."""
    frames: list[dict[str, Any]] = []
    with VideoReader(path) as reader:
        info = reader.info
        writer: VideoWriter | None = None
        try:
            with tqdm(total=info.frames or None, desc=path.name, unit="frame", dynamic_ncols=True) as progress:
                for index, seconds, frame in reader:
                    if writer is None:
                        writer = VideoWriter(out_path, info.width, info.height, info.fps)
                    detections = predictor.predict([frame], threshold)[0]
                    writer.write(draw_detections(frame, detections))
                    frames.append(
                        {"frame": index, "time": round(seconds, 6), "detections": [d.to_dict() for d in detections]}
                    )
                    progress.update()
        finally:
            if writer is not None:
                writer.close()
    if not frames:
        raise VideoError(f"video {path} has no frames")
    logger.info("%s: %d frames at %.3g fps annotated into %s", path.name, len(frames), float(info.fps), out_path)
    return {
        "file": path.name,
        "output": out_path.name,
        "width": info.width,
        "height": info.height,
        "fps": float(info.fps),
        "frames": frames,
    }


def run_inference(
    predictor: Predictor, source: str | Path, out_dir: str | Path, threshold: float = 0.5
) -> dict[str, Any]:
    """Annotate every input of ``source`` into ``out_dir`` and write ``out_dir/detections.json``.

    Returns the JSON content: ``images`` (per image: file, size, output picture, detections with
    label, category_id, name, score, box XYXY and bbox XYWH pixels), ``videos`` (per video: file,
    annotated MP4 ``output``, size, fps and per frame its index, time in seconds and detections)
    and ``errors`` (inputs that could not be processed, with the reason; the others go on).

    ``threshold`` must lie in [0, 1]. ``out_dir`` may not be the input folder nor hold an input
    (:class:`OutputOverwritesInputError`); output names are unique (see :func:`output_paths`).
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1] (a score), got {threshold}")
    source, out_dir = Path(source), Path(out_dir)
    inputs = collect_inputs(source)
    _check_output_folder(source, inputs, out_dir)
    outputs = output_paths(inputs, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "threshold": threshold,
        "input_size": list(predictor.input_size),
        "images": [],
        "videos": [],
        "errors": [],
    }
    for path in inputs:
        try:
            if path.suffix.lower() in VIDEO_SUFFIXES:
                results["videos"].append(_video_record(predictor, path, outputs[path], threshold))
            else:
                results["images"].append(annotate_image(predictor, path, outputs[path], threshold))
        except OSError as err:  # unreadable image or video (VideoError is an OSError)
            logger.error("%s", err)
            results["errors"].append({"file": path.name, "error": str(err)})
    (out_dir / RESULTS_NAME).write_text(json.dumps(results, indent=2))
    return results
