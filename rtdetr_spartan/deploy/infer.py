"""Detect objects in images, folders of images and videos; write annotated pictures, videos and JSON."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from rtdetr_spartan.deploy.draw import draw_detections
from rtdetr_spartan.deploy.runtime import Predictor
from rtdetr_spartan.deploy.video import VideoError, VideoReader, VideoWriter

__all__ = ["IMAGE_SUFFIXES", "VIDEO_SUFFIXES", "collect_inputs", "run_inference", "video_output_name"]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"})
RESULTS_NAME = "detections.json"


def collect_inputs(source: str | Path, suffixes: frozenset[str] = IMAGE_SUFFIXES | VIDEO_SUFFIXES) -> list[Path]:
    """``source`` itself if it is a file, else the files with ``suffixes`` (default: images and
    videos) directly inside it, sorted."""
    source = Path(source)
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise FileNotFoundError(f"input {source} is neither a file nor a directory")
    found = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    if not found:
        kinds = "images or videos" if suffixes & VIDEO_SUFFIXES else "images"
        raise FileNotFoundError(f"no {kinds} ({', '.join(sorted(suffixes))}) in {source}")
    return found


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


def video_output_name(path: Path) -> str:
    """``clip.mp4`` -> ``clip.mp4``; ``clip.avi`` -> ``clip_avi.mp4`` (annotated videos are MP4)."""
    suffix = path.suffix.lower()
    return f"{path.stem}.mp4" if suffix == ".mp4" else f"{path.stem}_{suffix.lstrip('.')}.mp4"


def _video_record(predictor: Predictor, path: Path, out_dir: Path, threshold: float) -> dict[str, Any]:
    """Detect on every frame, streaming: decode a frame, draw it, encode it; one record per frame."""
    frames: list[dict[str, Any]] = []
    with VideoReader(path) as reader:
        info = reader.info
        out_path = out_dir / video_output_name(path)
        with (
            VideoWriter(out_path, info.width, info.height, info.fps) as writer,
            tqdm(total=info.frames or None, desc=path.name, unit="frame", dynamic_ncols=True) as progress,
        ):
            for index, seconds, frame in reader:
                detections = predictor.predict([frame], threshold)[0]
                writer.write(draw_detections(frame, detections))
                frames.append(
                    {"frame": index, "time": round(seconds, 6), "detections": [d.to_dict() for d in detections]}
                )
                progress.update()
    if not frames:
        raise VideoError(f"video {path} has no decodable frames")
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
        except OSError as err:  # unreadable image or video (VideoError is an OSError)
            logger.error("%s", err)
            results["errors"].append({"file": path.name, "error": str(err)})
    (out_dir / RESULTS_NAME).write_text(json.dumps(results, indent=2))
    return results
