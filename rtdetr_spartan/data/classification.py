"""ImageNet-style classification data: an ImageFolder dataset, the pretraining augmentation, and
a collate function that mixes each batch with MixUp or CutMix (soft targets).

Follows the design of SpaRTAN (henry-pay/SpaRTAN, Apache-2.0): training images go through
RandomResizedCrop, horizontal flip, RandAugment, scaling to [0, 1], ImageNet normalization and
RandomErasing; evaluation images through Resize + CenterCrop; every training batch is mixed by
CutMix or MixUp, chosen with equal probability.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torchvision.transforms.v2 as T
from PIL import Image
from torch.utils.data import default_collate
from torchvision import datasets

from rtdetr_spartan.core import register
from rtdetr_spartan.data.coco import ImageReadError
from rtdetr_spartan.data.image_io import read_rgb

__all__ = [
    "ImageFolderDataset",
    "ClassificationTrainTransforms",
    "ClassificationEvalTransforms",
    "MixUpCutMixCollate",
    "classification_collate_fn",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

logger = logging.getLogger(__name__)

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

_INTERPOLATIONS: dict[str, T.InterpolationMode] = {
    "nearest": T.InterpolationMode.NEAREST,
    "bilinear": T.InterpolationMode.BILINEAR,
    "bicubic": T.InterpolationMode.BICUBIC,
}

for _cls in (T.RandomResizedCrop, T.CenterCrop, T.RandAugment, T.RandomErasing):
    register(_cls)


def _interpolation(name: str, owner: str) -> T.InterpolationMode:
    if name not in _INTERPOLATIONS:
        raise ValueError(f"{owner}: unknown interpolation '{name}'; expected one of {sorted(_INTERPOLATIONS)}")
    return _INTERPOLATIONS[name]


def _layout_hint(root: Path) -> str:
    return (
        f"expected the ImageFolder layout {root}/<class>/<image> (e.g. {root}/n01440764/"
        "xxx.JPEG); docs/pretraining.md shows how to sort the ImageNet val split "
        "into class folders"
    )


def _read_rgb(path: str) -> Image.Image:
    """The image at ``path`` as 8-bit RGB as displayed (``data.image_io.read_rgb``: EXIF
    orientation applied, 16-bit scaled); an unreadable file (missing, truncated, or not an image
    despite its extension) raises :class:`ImageReadError` naming it."""
    try:
        return read_rgb(path)
    except OSError as err:
        raise ImageReadError(str(err)) from err


@register()
class ImageFolderDataset(datasets.ImageFolder):
    """Images under ``root/<class>/*`` (torchvision's image extensions, any case), labelled
    ``0..C-1`` in sorted class-folder order.

    Item: ``(image, label)`` — ``image`` as ``transforms`` returns it (``[3, H, W]`` float for
    the pipelines below; a PIL image without transforms), ``label`` an ``int``.
    ``category_names`` maps each label to its folder name (a WordNet id for ImageNet).
    """

    __inject__ = ["transforms"]

    def __init__(self, root: str | Path, transforms: Callable[[Any], Any] | None = None) -> None:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"dataset root {root} does not exist or is not a folder; {_layout_hint(root)}")
        try:
            super().__init__(str(root), transform=transforms, loader=_read_rgb, allow_empty=True)
        except FileNotFoundError as err:  # torchvision: no class folder
            raise FileNotFoundError(
                f"dataset root {root} holds no class folders ({err}); {_layout_hint(root)}"
            ) from None
        empty = sorted(set(self.classes) - {self.classes[label] for _, label in self.samples})
        if empty:
            raise FileNotFoundError(
                f"dataset root {root}: {len(empty)} of {len(self.classes)} class folders hold no images: "
                f"{', '.join(empty[:10])}{' ...' if len(empty) > 10 else ''} (image extensions: "
                f"{', '.join(datasets.folder.IMG_EXTENSIONS)}); {_layout_hint(root)}"
            )
        self.category_names: dict[int, str] = {i: name for i, name in enumerate(self.classes)}
        logger.info("%s: %d images in %d classes", root, len(self.samples), len(self.classes))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def extra_repr(self) -> str:
        return f"classes: {len(self.classes)}"


@register()
class ClassificationTrainTransforms(T.Compose):
    """The pretraining augmentation; PIL/uint8 image in, normalized ``[3, size, size]`` float out.

    ToImage -> RandomResizedCrop(size, scale) -> RandomHorizontalFlip(hflip) ->
    RandAugment(magnitude, 2 ops) -> ToDtype(float32, scaled to [0, 1]) -> Normalize(mean, std)
    -> RandomErasing(random_erasing). ``randaugment_magnitude: null`` drops RandAugment;
    ``hflip: 0`` and ``random_erasing: 0`` make those steps no-ops.
    """

    def __init__(
        self,
        size: int = 224,
        scale: Sequence[float] = (0.08, 1.0),
        hflip: float = 0.5,
        randaugment_magnitude: int | None = 9,
        random_erasing: float = 0.0,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        interpolation: str = "bilinear",
    ) -> None:
        mode = _interpolation(interpolation, type(self).__name__)
        ops: list[Callable[..., Any]] = [
            T.ToImage(),
            T.RandomResizedCrop(size, scale=tuple(scale), interpolation=mode, antialias=True),
            T.RandomHorizontalFlip(p=hflip),
        ]
        if randaugment_magnitude is not None:
            ops.append(T.RandAugment(magnitude=randaugment_magnitude, interpolation=mode))
        ops += [T.ToDtype(torch.float32, scale=True), T.Normalize(list(mean), list(std))]
        if random_erasing > 0:
            ops.append(T.RandomErasing(p=random_erasing))
        super().__init__(ops)


@register()
class ClassificationEvalTransforms(T.Compose):
    """Evaluation preprocessing: ToImage -> Resize(resize, shorter side) -> CenterCrop(crop) ->
    ToDtype(float32, [0, 1]) -> Normalize(mean, std); output ``[3, crop, crop]`` float."""

    def __init__(
        self,
        resize: int = 256,
        crop: int = 224,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        interpolation: str = "bilinear",
    ) -> None:
        mode = _interpolation(interpolation, type(self).__name__)
        super().__init__(
            [
                T.ToImage(),
                T.Resize(resize, interpolation=mode, antialias=True),
                T.CenterCrop(crop),
                T.ToDtype(torch.float32, scale=True),
                T.Normalize(list(mean), list(std)),
            ]
        )


@register()
class MixUpCutMixCollate:
    """Stack ``(image, label)`` items, then mix the batch by CutMix or MixUp (one of the two per
    batch, equally likely; only the one with a positive alpha when the other is 0).

    Returns ``(images [B, 3, H, W] float, targets [B, num_classes] float)``: probability rows
    summing to 1. With ``prob < 1`` a batch is left unmixed with probability ``1 - prob`` (its
    targets are then one-hot). Both alphas 0 turns mixing off: ``targets`` are then the int64
    labels ``[B]``.
    """

    __share__ = ["num_classes"]

    def __init__(
        self, num_classes: int, mixup_alpha: float = 0.2, cutmix_alpha: float = 1.0, prob: float = 1.0
    ) -> None:
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ValueError(
                f"MixUpCutMixCollate: alphas must be >= 0, got mixup_alpha={mixup_alpha}, cutmix_alpha={cutmix_alpha}"
            )
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"MixUpCutMixCollate: prob must be in [0, 1], got {prob}")
        self.num_classes = int(num_classes)
        self.mixup_alpha, self.cutmix_alpha, self.prob = mixup_alpha, cutmix_alpha, prob
        choices: list[T.Transform] = []
        if cutmix_alpha > 0:
            choices.append(T.CutMix(alpha=cutmix_alpha, num_classes=self.num_classes))
        if mixup_alpha > 0:
            choices.append(T.MixUp(alpha=mixup_alpha, num_classes=self.num_classes))
        self.mix: T.Transform | None = T.RandomChoice(choices) if choices else None

    def __call__(self, items: Sequence[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = default_collate(list(items))
        labels = torch.as_tensor(labels, dtype=torch.int64)
        if self.mix is None:
            return images, labels
        if self.prob < 1.0 and float(torch.rand(())) >= self.prob:
            return images, torch.nn.functional.one_hot(labels, self.num_classes).to(images.dtype)
        return self.mix(images, labels)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_classes={self.num_classes}, mixup_alpha={self.mixup_alpha}, "
            f"cutmix_alpha={self.cutmix_alpha}, prob={self.prob})"
        )


@register()
def classification_collate_fn(items: Sequence[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``(image, label)`` items: ``(images [B, 3, H, W], labels [B] int64)``."""
    images, labels = default_collate(list(items))
    return images, torch.as_tensor(labels, dtype=torch.int64)
