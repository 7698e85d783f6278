"""Plain result types shared by the exporter, the runtimes and the tools."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Detection"]


@dataclass(frozen=True)
class Detection:
    """One detected object.

    ``label`` is the model's contiguous class index (0..C-1); ``category_id`` the dataset's
    category id for it (e.g. COCO's 1..90); ``box`` is XYXY in pixels of the original image.
    """

    label: int
    category_id: int
    name: str
    score: float
    box: tuple[float, float, float, float]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict, plus ``bbox`` as COCO ``[x, y, w, h]``."""
        out = asdict(self)
        x0, y0, x1, y1 = self.box
        out["box"] = [float(v) for v in self.box]
        out["bbox"] = [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]
        return out
