"""Result types of the Python API: :class:`Detections` (one image or video frame) and
:class:`Classification` (one image's top-k classes), each with ``to_dict()``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from rtdetr_spartan.deploy.types import Detection
from rtdetr_spartan.misc.images import draw_detections

__all__ = ["Classification", "Detections"]


@dataclass
class Detections:
    """The detections of one image or video frame, best first.

    ``boxes`` [N, 4] float32 XYXY in pixels of the image as displayed (clipped to it);
    ``scores`` [N]; ``labels`` [N] the dataset's category ids; ``names`` the class names;
    ``source`` the image or video file (None for in-memory images); ``frame`` the video frame
    index (None for images).
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    names: list[str]
    source: str | None = None
    frame: int | None = None
    image_size: tuple[int, int] = (0, 0)
    detections: list[Detection] = field(default_factory=list, repr=False)
    _image: Image.Image | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_detections(
        cls, detections: Sequence[Detection], image: Image.Image, source: str | None = None, frame: int | None = None
    ) -> Detections:
        return cls(
            boxes=np.array([d.box for d in detections], dtype=np.float32).reshape(-1, 4),
            scores=np.array([d.score for d in detections], dtype=np.float32),
            labels=np.array([d.category_id for d in detections], dtype=np.int64),
            names=[d.name for d in detections],
            source=source,
            frame=frame,
            image_size=image.size,
            detections=list(detections),
            _image=image,
        )

    def __len__(self) -> int:
        return len(self.detections)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: source, frame, width, height and one record per detection (label,
        category_id, name, score, box XYXY, bbox COCO XYWH), as ``detections.json`` writes."""
        return {
            "source": self.source,
            "frame": self.frame,
            "width": self.image_size[0],
            "height": self.image_size[1],
            "detections": [d.to_dict() for d in self.detections],
        }

    def plot(self) -> Image.Image:
        """The image with its detections drawn (as ``rtdetr-spartan predict`` draws them)."""
        if self._image is None:
            raise ValueError("these detections keep no image to draw on")
        return draw_detections(self._image, self.detections)


@dataclass
class Classification:
    """One image's ``top_k`` classes, most probable first: ``labels`` (class indices),
    ``names`` and softmax ``scores``; ``source`` the image file (None for in-memory images)."""

    labels: list[int]
    names: list[str]
    scores: list[float]
    source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "top_k": [
                {"label": label, "name": name, "score": score}
                for label, name, score in zip(self.labels, self.names, self.scores)
            ],
        }
