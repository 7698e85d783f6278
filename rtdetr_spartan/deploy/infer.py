"""Detect objects in images, folders of images and videos; write annotated pictures and JSON."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterator

from PIL import Image, UnidentifiedImageError

from rtdetr_spartan.deploy.draw import draw_detections
from rtdetr_spartan.deploy.runtime import Predictor

__all__ = ["IMAGE_SUFFIXES", "VIDEO_SUFFIXES", "VideoBackendError", "collect_inputs", "run_inference"]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"})
RESULTS_NAME = "detections.json"


class VideoBackendError(RuntimeError):
    """No installed library can decode the video."""


def collect_inputs(source: str | Path) -> list[Path]:
    """``source`` itself if it is a file, else the images and videos directly inside it, sorted."""
    source = Path(source)
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise FileNotFoundError(f"input {source} is neither a file nor a directory")
    found = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES)
    if not found:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES | VIDEO_SUFFIXES))
        raise FileNotFoundError(f"no images or videos ({suffixes}) in {source}")
    return found


def _video_frames(path: Path) -> Iterator[Image.Image]:
    """RGB frames of a video via imageio, else torchvision.io; VideoBackendError if neither works."""
    try:
        import imageio.v3 as iio
    except ImportError:
        iio = None
    if iio is not None:
        try:
            for frame in iio.imiter(path):
                yield Image.fromarray(frame).convert("RGB")
        except (OSError, ValueError, RuntimeError) as err:  # e.g. imageio without its ffmpeg plugin
            raise VideoBackendError(f"cannot decode video {path} with imageio: {err}") from err
        return
    import torchvision.io

    read_video = getattr(torchvision.io, "read_video", None)
    if read_video is not None:
        try:
            frames, _, _ = read_video(str(path), pts_unit="sec", output_format="THWC")
        except (ImportError, RuntimeError) as err:
            raise VideoBackendError(f"cannot decode video {path}: {err}") from err
        for frame in frames:
            yield Image.fromarray(frame.numpy())
        return
    raise VideoBackendError(
        f"cannot decode video {path}: no video backend is installed; install imageio "
        "with its ffmpeg plugin (pip install 'imageio[ffmpeg]') or a torchvision build "
        "with video support"
    )


def _annotate(predictor: Predictor, image: Image.Image, out_path: Path, threshold: float) -> dict[str, Any]:
    detections = predictor.predict([image], threshold)[0]
    draw_detections(image, detections).save(out_path)
    return {
        "width": image.width,
        "height": image.height,
        "output": out_path.name,
        "detections": [d.to_dict() for d in detections],
    }


def _image_record(predictor: Predictor, path: Path, out_dir: Path, threshold: float) -> dict[str, Any]:
    try:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
    except (OSError, UnidentifiedImageError) as err:
        raise OSError(f"cannot read image {path}: {err}") from err
    suffix = path.suffix.lower() if path.suffix.lower() in {".jpg", ".jpeg", ".png"} else ".png"
    record = _annotate(predictor, image, out_dir / f"{path.stem}{suffix}", threshold)
    logger.info("%s: %d detections", path.name, len(record["detections"]))
    return {"file": path.name, **record}


def _video_record(predictor: Predictor, path: Path, out_dir: Path, threshold: float) -> dict[str, Any]:
    frame_dir = out_dir / f"{path.stem}_frames"
    frames = []
    for index, frame in enumerate(_video_frames(path)):
        frame_dir.mkdir(parents=True, exist_ok=True)
        record = _annotate(predictor, frame, frame_dir / f"frame_{index:06d}.jpg", threshold)
        frames.append({"frame": index, **record})
    logger.info("%s: %d frames annotated in %s", path.name, len(frames), frame_dir)
    return {"file": path.name, "frames": frames}


def run_inference(
    predictor: Predictor, source: str | Path, out_dir: str | Path, threshold: float = 0.5
) -> dict[str, Any]:
    """Annotate every input of ``source`` into ``out_dir`` and write ``out_dir/detections.json``.

    Returns the JSON content: ``images`` (per image: file, size, output picture, detections with
    label, category_id, name, score, box XYXY and bbox XYWH pixels), ``videos`` (per frame the
    same) and ``errors`` (inputs that could not be processed, with the reason).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "threshold": threshold,
        "input_size": list(predictor.input_size),
        "images": [],
        "videos": [],
        "errors": [],
    }
    for path in collect_inputs(source):
        try:
            if path.suffix.lower() in VIDEO_SUFFIXES:
                results["videos"].append(_video_record(predictor, path, out_dir, threshold))
            else:
                results["images"].append(_image_record(predictor, path, out_dir, threshold))
        except (OSError, VideoBackendError) as err:
            logger.error("%s", err)
            results["errors"].append({"file": path.name, "error": str(err)})
    (out_dir / RESULTS_NAME).write_text(json.dumps(results, indent=2))
    return results
