# Follows the design of RT-DETR (lyuwenyu/RT-DETR, Apache-2.0).
"""COCO-format detection dataset with contiguous labels and tv_tensors targets."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
import torchvision
from PIL import Image
from pycocotools.coco import COCO
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from rtdetr_spartan.core import register
from rtdetr_spartan.data.categories import (
    MSCOCO_CATEGORY_TO_LABEL,
    MSCOCO_CATEGORY_TO_NAME,
    MSCOCO_LABEL_TO_CATEGORY,
    contiguous_mapping,
)
from rtdetr_spartan.data.coco_validation import check_coco_structure, structure_error
from rtdetr_spartan.data.image_io import read_rgb

__all__ = ["CocoDetection", "ImageReadError", "in_memory_coco"]

logger = logging.getLogger(__name__)


class ImageReadError(OSError):
    """An image listed in the annotation file is missing or cannot be decoded."""


def in_memory_coco(dataset: dict[str, Any]) -> COCO:
    """A pycocotools ``COCO`` over an annotation dict (no file), indexed as if read from one."""
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress
        coco.createIndex()
    return coco


@register()
class CocoDetection(torchvision.datasets.CocoDetection):
    """Detection dataset over a COCO annotation file.

    Each item is ``(image, target)``. With the usual pipeline (``ToImage``, ``ToDtype``,
    ``ConvertBoxes(fmt='cxcywh', normalize=True)``) the image is a float ``tv_tensors.Image``
    ``[3, H, W]`` in [0, 1] and ``target["boxes"]`` is CXCYWH normalized. Without transforms the
    image is the decoded RGB ``PIL.Image`` and boxes are XYXY pixels.

    ``target`` holds ``boxes`` (tv_tensors.BoundingBoxes ``[n, 4]``), ``labels`` (int64 ``[n]``,
    contiguous 0..C-1), ``image_id`` (int64 ``[1]``), ``area`` ``[n]``, ``iscrowd`` ``[n]``,
    ``orig_size`` and ``size`` (int64 ``[2]`` as (w, h), before / after transforms) and, with
    ``return_masks``, ``masks`` (tv_tensors.Mask ``[n, H, W]``).

    Labels: with ``remap_mscoco_category`` the 80 COCO categories (ids 1..90) become labels
    0..79; otherwise the file's own category ids become 0..N-1 in sorted id order.

    Images are read by ``data.image_io.read_rgb``: EXIF orientation applied and 16-bit images
    scaled to 8 bits, so pixels, ``orig_size`` and boxes are all in the displayed frame, the one
    the file's ``width`` / ``height`` and boxes are annotated in (a decoded size that disagrees
    with the recorded one is a warning naming the image).

    Construction checks the annotation file (``data.coco_validation``: every record's required
    fields, each bad one named by file, id and field) and, with ``check_images`` (one stat per
    image), that every listed image file exists, so a bad file stops a run before training, not
    at the first batch or evaluation. A file without annotations is a warning. Boxes that are
    degenerate or lie outside their image are dropped or clamped when items are loaded; one
    warning per dataset gives their counts.
    """

    __inject__ = ["transforms"]
    __share__ = ["remap_mscoco_category", "num_classes"]

    def __init__(
        self,
        img_folder: str | Path,
        ann_file: str | Path,
        transforms: Callable[..., Any] | None = None,
        return_masks: bool = False,
        remap_mscoco_category: bool = False,
        num_classes: int | None = None,
        check_images: bool = True,
    ) -> None:
        self.img_folder = Path(img_folder)
        self.ann_file = Path(ann_file)
        if not self.ann_file.is_file():
            raise FileNotFoundError(f"annotation file not found: {self.ann_file}")
        # pycocotools prints progress to stdout; keep it in the debug log instead.
        captured = io.StringIO()
        try:
            with contextlib.redirect_stdout(captured):
                super().__init__(str(self.img_folder), str(self.ann_file), transforms=transforms)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{self.ann_file} is not a valid COCO JSON file: {err}") from err
        except (KeyError, TypeError, AttributeError, AssertionError) as err:
            # pycocotools indexes records by field without a check; say which record is bad.
            error = structure_error(json.loads(self.ann_file.read_text()), self.ann_file)
            if error is not None:
                raise error from err
            raise
        logger.debug("%s", captured.getvalue().strip())
        check_coco_structure(self.coco.dataset, self.ann_file)
        self._configure(return_masks, remap_mscoco_category, num_classes, check_images)

    def _setup(
        self,
        coco: COCO,
        transforms: Callable[..., Any] | None,
        return_masks: bool,
        remap_mscoco_category: bool,
        num_classes: int | None,
        check_images: bool,
    ) -> None:
        """Initialise from a COCO object already in memory (``img_folder`` and ``ann_file`` set):
        what a subclass whose annotations are not a COCO file (``data.yolo``) calls instead of
        ``__init__``."""
        torchvision.datasets.VisionDataset.__init__(self, str(self.img_folder), transforms=transforms)
        self.coco = coco
        self.ids = sorted(coco.imgs.keys())
        self._configure(return_masks, remap_mscoco_category, num_classes, check_images)

    def _configure(
        self, return_masks: bool, remap_mscoco_category: bool, num_classes: int | None, check_images: bool
    ) -> None:
        """The category mapping and the checks, once ``self.coco`` is loaded."""
        self.return_masks = return_masks
        self.remap_mscoco_category = remap_mscoco_category
        self.num_classes = num_classes
        self._size_warned: set[int] = set()
        self.category_to_label, self.label_to_category, self.category_names = self._build_mapping()
        self._check_num_classes(num_classes)
        self._check_image_files(check_images)
        self._report_sanitized_boxes()

    # ----------------------------------------------------------------- category mapping
    def _build_mapping(self) -> tuple[dict[int, int], dict[int, int], dict[int, str]]:
        file_categories = {int(c["id"]): str(c.get("name", c["id"])) for c in self.coco.dataset.get("categories", [])}
        if self.remap_mscoco_category:
            unknown = sorted(set(file_categories) - set(MSCOCO_CATEGORY_TO_LABEL))
            if unknown:
                raise ValueError(
                    f"{self.ann_file}: remap_mscoco_category is set but category ids {unknown} are not "
                    f"MS-COCO detection categories (valid ids: 1..90 without gaps of the 80-class list)"
                )
            names = {label: MSCOCO_CATEGORY_TO_NAME[cid] for label, cid in MSCOCO_LABEL_TO_CATEGORY.items()}
            return dict(MSCOCO_CATEGORY_TO_LABEL), dict(MSCOCO_LABEL_TO_CATEGORY), names
        if not file_categories:
            raise ValueError(f"{self.ann_file}: the 'categories' list is empty")
        category_to_label, label_to_category = contiguous_mapping(list(file_categories))
        names = {label: file_categories[cid] for label, cid in label_to_category.items()}
        return category_to_label, label_to_category, names

    def _check_num_classes(self, num_classes: int | None) -> None:
        if num_classes is None:
            return
        needed = max(self.label_to_category) + 1
        if num_classes < needed:
            raise ValueError(
                f"num_classes={num_classes} is smaller than the {needed} classes of {self.ann_file} "
                f"(remap_mscoco_category={self.remap_mscoco_category}); set num_classes >= {needed}"
            )

    def _check_image_files(self, check_files: bool) -> None:
        """Every listed image file exists (one stat each; ``check_files``)."""
        images = self.coco.dataset.get("images", [])
        if not check_files:
            return
        missing = [info for info in images if not (self.img_folder / info["file_name"]).is_file()]
        if missing:
            first = missing[0]
            raise ImageReadError(
                f"{len(missing)} of {len(images)} images listed in {self.ann_file} are missing, e.g. "
                f"{self.img_folder / first['file_name']} (image id {first['id']}); first missing: "
                f"{', '.join(str(info['file_name']) for info in missing[:5])}"
            )

    def _report_sanitized_boxes(self) -> None:
        """One warning with the counts of the boxes that loading will drop or clamp."""
        if not self.coco.dataset.get("annotations"):
            logger.warning(
                "%s holds no annotations: every one of its %d images is background only, so training on it "
                "teaches nothing and its AP is undefined (-1); check that the file is the intended one",
                self.ann_file,
                len(self.ids),
            )
            return
        anns = [a for a in self.coco.dataset.get("annotations", []) if not a.get("iscrowd", 0)]
        if not anns:
            return
        inf = float("inf")
        sizes = torch.tensor(
            [
                [self.coco.imgs[a["image_id"]].get("width") or inf, self.coco.imgs[a["image_id"]].get("height") or inf]
                for a in anns
            ],
            dtype=torch.float32,
        )
        raw = _raw_xyxy(anns)
        boxes = _clamped(raw.clone(), sizes)
        kept = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        dropped = int((~kept).sum())
        clamped = int((kept & (boxes != raw).any(dim=1)).sum())
        if dropped or clamped:
            logger.warning(
                "%s: of %d boxes, %d are dropped (zero or negative size, non-finite, or outside their image) "
                "and %d are clamped to their image",
                self.ann_file,
                len(anns),
                dropped,
                clamped,
            )

    # ----------------------------------------------------------------- loading
    def _load_image(self, image_id: int) -> Image.Image:
        file_name = self.coco.loadImgs(image_id)[0]["file_name"]
        path = self.img_folder / file_name
        try:
            return read_rgb(path)
        except OSError as err:
            raise ImageReadError(f"{err} (image id {image_id}, listed in {self.ann_file})") from err

    def load_item(self, index: int) -> tuple[Image.Image, dict[str, Any]]:
        """The decoded image and its target before transforms (boxes XYXY pixels)."""
        image_id = self.ids[index]
        image = self._load_image(image_id)
        anns = self._load_target(image_id)
        target = self._prepare_target(image, image_id, anns)
        return image, target

    def __getitem__(self, index: int) -> tuple[Any, dict[str, Any]]:
        image, target = self.load_item(index)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        h, w = F.get_size(image)
        target["size"] = torch.tensor([w, h], dtype=torch.int64)
        return image, target

    def _prepare_target(self, image: Image.Image, image_id: int, anns: list[dict[str, Any]]) -> dict[str, Any]:
        w, h = image.size
        self._check_recorded_size(image_id, w, h)
        # Crowd regions are not objects to detect (COCO ignores detections matched to them).
        anns = [a for a in anns if not a.get("iscrowd", 0)]
        boxes = _sanitized_xyxy(anns, w, h)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        labels = torch.tensor([self.category_to_label[int(a["category_id"])] for a in anns], dtype=torch.int64)
        area = torch.tensor([float(a.get("area", 0.0)) for a in anns], dtype=torch.float32)
        target: dict[str, Any] = {
            "boxes": tv_tensors.BoundingBoxes(boxes[keep], format="XYXY", canvas_size=(h, w)),
            "labels": labels[keep],
            "image_id": torch.tensor([image_id], dtype=torch.int64),
            "area": area[keep],
            "iscrowd": torch.zeros(int(keep.sum()), dtype=torch.int64),
            "orig_size": torch.tensor([w, h], dtype=torch.int64),
            "size": torch.tensor([w, h], dtype=torch.int64),
        }
        if self.return_masks:
            kept = [a for a, k in zip(anns, keep.tolist()) if k]
            target["masks"] = self._masks(kept, h, w)
        return target

    def _masks(self, anns: list[dict[str, Any]], h: int, w: int) -> tv_tensors.Mask:
        with warnings.catch_warnings():
            # pycocotools' decoder trips a numpy-2 "copy keyword" DeprecationWarning; harmless.
            warnings.simplefilter("ignore", DeprecationWarning)
            masks = [torch.from_numpy(self.coco.annToMask(a)).bool() for a in anns if a.get("segmentation")]
        if len(masks) != len(anns):
            ids = [a.get("id") for a in anns if not a.get("segmentation")]
            raise ValueError(f"{self.ann_file}: return_masks is set but annotations {ids} have no segmentation")
        data = torch.stack(masks) if masks else torch.zeros((0, h, w), dtype=torch.bool)
        return tv_tensors.Mask(data)

    def _check_recorded_size(self, image_id: int, w: int, h: int) -> None:
        """Warn (once per image) when the decoded image, EXIF orientation applied, is not the size
        the annotation file records: its boxes are then in another frame than the pixels."""
        info = self.coco.imgs[image_id]
        recorded = (info.get("width"), info.get("height"))
        if recorded in ((w, h), (None, None)) or image_id in self._size_warned:
            return
        self._size_warned.add(image_id)
        hint = (
            "; the recorded size is the transposed one: the file's EXIF orientation rotates it, and boxes are "
            "read in the displayed (rotated) frame, so annotate the image as it is displayed"
            if recorded == (h, w)
            else ""
        )
        logger.warning(
            "%s: image %s (image id %s) is %dx%d as displayed but the annotation file records %sx%s%s",
            self.ann_file,
            self.img_folder / info["file_name"],
            image_id,
            w,
            h,
            *recorded,
            hint,
        )

    def extra_repr(self) -> str:
        return (
            f"img_folder: {self.img_folder}\nann_file: {self.ann_file}\n"
            f"num_categories: {len(self.label_to_category)}\n"
            f"remap_mscoco_category: {self.remap_mscoco_category}\nreturn_masks: {self.return_masks}"
        )


def _raw_xyxy(anns: list[dict[str, Any]]) -> torch.Tensor:
    """COCO ``[x, y, w, h]`` boxes as XYXY ``[n, 4]`` float32; non-finite coordinates become 0
    (so such a box ends up zero-size and dropped)."""
    boxes = torch.as_tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
    boxes = torch.nan_to_num(boxes, nan=0.0, posinf=0.0, neginf=0.0)
    boxes[:, 2:] += boxes[:, :2]
    return boxes


def _clamped(boxes: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """XYXY ``boxes`` [n, 4] clamped in place to [0, w] x [0, h]; ``sizes`` [n, 2] or [1, 2] (w, h)."""
    boxes[:, 0::2] = torch.minimum(boxes[:, 0::2].clamp(min=0), sizes[:, :1])
    boxes[:, 1::2] = torch.minimum(boxes[:, 1::2].clamp(min=0), sizes[:, 1:])
    return boxes


def _sanitized_xyxy(anns: list[dict[str, Any]], w: int, h: int) -> torch.Tensor:
    """COCO ``[x, y, w, h]`` boxes as XYXY ``[n, 4]`` float32, clamped to the image; non-finite
    coordinates become zero-size boxes so the caller drops them."""
    return _clamped(_raw_xyxy(anns), torch.tensor([[w, h]], dtype=torch.float32))
