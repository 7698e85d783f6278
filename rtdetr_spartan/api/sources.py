"""What ``predict`` accepts, as PIL images: a file, a folder, a list, a PIL image, an HWC RGB
uint8 array, a tensor ([3, H, W] or [N, 3, H, W], float in [0, 1] or uint8), or a video file."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from rtdetr_spartan.data.image_io import read_rgb
from rtdetr_spartan.deploy.video import VideoReader
from rtdetr_spartan.misc.images import IMAGE_SUFFIXES, VIDEO_SUFFIXES, collect_inputs

__all__ = ["ImageSource", "SourceImage", "is_video", "iter_images", "iter_video_frames"]

ImageSource = str | Path | Image.Image | np.ndarray | torch.Tensor | Sequence[Any]
# One image to predict on, the file it came from (None in memory) and its video frame index.
SourceImage = tuple[Image.Image, str | None, int | None]


def is_video(source: Any) -> bool:
    """Whether ``source`` is the path of a video file (which ``predict`` streams)."""
    return isinstance(source, (str, Path)) and Path(source).suffix.lower() in VIDEO_SUFFIXES


def _array_image(array: np.ndarray, where: str) -> Image.Image:
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(
            f"{where}: a numpy image must be HWC RGB uint8 (H, W, 3), got shape {array.shape} dtype {array.dtype}"
        )
    return Image.fromarray(array)


def _tensor_images(tensor: torch.Tensor, where: str) -> list[Image.Image]:
    batch = tensor.unsqueeze(0) if tensor.ndim == 3 else tensor
    if batch.ndim != 4 or batch.shape[1] != 3:
        raise ValueError(f"{where}: a tensor image must be [3, H, W] or [N, 3, H, W], got shape {tuple(tensor.shape)}")
    if batch.is_floating_point() and (batch.min() < 0 or batch.max() > 1):
        raise ValueError(f"{where}: a float tensor image holds values in [0, 1] (uint8 for 0..255)")
    if not batch.is_floating_point() and batch.dtype != torch.uint8:
        raise ValueError(f"{where}: a tensor image is float in [0, 1] or uint8, got {batch.dtype}")
    return [TF.to_pil_image(image.cpu()) for image in batch]


def _one(item: Any, where: str) -> Iterator[SourceImage]:
    if isinstance(item, Image.Image):
        yield item, None, None
    elif isinstance(item, np.ndarray):
        yield _array_image(item, where), None, None
    elif isinstance(item, torch.Tensor):
        for image in _tensor_images(item, where):
            yield image, None, None
    elif isinstance(item, (str, Path)):
        if is_video(item):
            raise ValueError(f"{where}: {item} is a video; pass a video file alone to predict(), which streams it")
        for path in collect_inputs(item, IMAGE_SUFFIXES):
            yield read_rgb(path), str(path), None
    else:
        raise TypeError(
            f"{where}: cannot predict on a {type(item).__name__}; give a path, a folder, a PIL image, "
            "an HWC RGB uint8 array, a tensor, or a list of them"
        )


def iter_images(source: ImageSource) -> Iterator[SourceImage]:
    """The images of ``source`` one at a time (a folder's images sorted by name), read when reached."""
    items = list(source) if isinstance(source, (list, tuple)) else [source]
    for index, item in enumerate(items):
        where = f"source[{index}]" if isinstance(source, (list, tuple)) else "source"
        yield from _one(item, where)


def iter_video_frames(path: str | Path) -> Iterator[SourceImage]:
    """The frames of the video ``path``, decoded one at a time."""
    with VideoReader(path) as reader:
        for index, _, frame in reader:
            yield frame, str(path), index
