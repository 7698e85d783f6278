# Follows the design of RT-DETR (lyuwenyu/RT-DETR, Apache-2.0).
"""Config-buildable DataLoader and detection collate functions."""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as nnf
import torch.utils.data as data

from rtdetr_spartan.core import register

Batch = tuple[torch.Tensor, list[dict[str, Any]]]
Item = tuple[torch.Tensor, dict[str, Any]]

__all__ = ["DataLoader", "default_collate_fn", "BatchImageCollateFunction", "set_epoch"]


@register()
class DataLoader(data.DataLoader):
    """``torch.utils.data.DataLoader`` whose ``dataset`` and ``collate_fn`` come from the config."""

    __inject__ = ["dataset", "collate_fn"]

    def set_epoch(self, epoch: int) -> None:
        """Forward ``epoch`` to a sampler / collate function that track it (see :func:`set_epoch`)."""
        set_epoch(self, epoch)

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}("]
        for name in ("dataset", "batch_size", "num_workers", "drop_last", "collate_fn"):
            lines.append(f"    {name}: {getattr(self, name)}")
        return "\n".join(lines + [")"])


def set_epoch(loader: data.DataLoader, epoch: int) -> None:
    """Tell the loader's sampler (e.g. DistributedSampler, so shuffling differs per epoch), batch
    sampler and collate function which epoch starts; objects without ``set_epoch`` are skipped."""
    sampler = loader.sampler
    batch_sampler = loader.batch_sampler
    inner = getattr(batch_sampler, "sampler", None)
    seen: list[Any] = []
    for obj in (sampler, batch_sampler, inner, loader.collate_fn):
        if obj is not None and hasattr(obj, "set_epoch") and not any(obj is s for s in seen):
            obj.set_epoch(epoch)  # type: ignore[union-attr]
            seen.append(obj)


@register()
def default_collate_fn(items: Sequence[Item]) -> Batch:
    """Stack same-size images into ``[B, 3, H, W]``; targets stay a list of dicts."""
    images = torch.stack([torch.as_tensor(image) for image, _ in items])
    return images, [target for _, target in items]


@register()
class BatchImageCollateFunction:
    """Collate, then (multi-scale training) resize the whole batch to a square side drawn from
    ``scales`` until ``stop_epoch``. Boxes are normalized, so targets need no change.

    ``images``: ``[B, 3, S, S]`` with ``S`` from ``scales`` (or the input size when not scaling).
    """

    def __init__(self, scales: Sequence[int] | None = None, stop_epoch: int | None = None) -> None:
        self.scales = tuple(int(s) for s in scales) if scales else None
        self.stop_epoch = stop_epoch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _scaling(self) -> bool:
        return self.scales is not None and (self.stop_epoch is None or self.epoch < self.stop_epoch)

    def __call__(self, items: Sequence[Item]) -> Batch:
        images, targets = default_collate_fn(items)
        if self._scaling():
            assert self.scales is not None
            size = self.scales[int(torch.randint(len(self.scales), (1,)))]
            images = nnf.interpolate(images, size=(size, size))
        return images, targets

    def __repr__(self) -> str:
        return f"{type(self).__name__}(scales={self.scales}, stop_epoch={self.stop_epoch})"
