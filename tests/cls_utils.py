"""Helpers for the pretraining tests: a tiny generated 4-class ImageFolder and the overrides that
shrink the shapes pretraining config to a few seconds on a CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rtdetr_spartan.data.shapes import make_classification_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]
SHAPES_CLS_CONFIG = REPO_ROOT / "configs" / "spartan" / "spartan_t_shapes_cls.yml"
PRETRAIN_TOOL = REPO_ROOT / "tools" / "pretrain.py"


def make_tiny_cls_dataset(root: Path, train: int = 16, val: int = 8, size: int = 40) -> Path:
    """``root/{train,val}/<shape>/*.jpg``, 4 classes, balanced."""
    make_classification_dataset(root, train=train, val=val, size=size, seed=0)
    return root


def tiny_overrides(root: Path, epochs: int = 2, batch_size: int = 8, image_size: int = 32) -> dict[str, Any]:
    """The shapes config on the dataset in ``root`` at ``image_size`` px, ``epochs`` epochs with one
    warm-up epoch, and the full ImageNet augmentation (RandAugment, RandomErasing, CutMix/MixUp on
    every batch) so that the tests run every step of the recipe. lr 4e-3 for a total batch of 64."""
    augment = {"size": image_size, "randaugment_magnitude": 7, "random_erasing": 0.25}
    return {
        "epochs": epochs,
        "print_freq": 1,
        "device": "cpu",
        "base_lr_batch": 64,
        "optimizer": {"lr": 4e-3},
        "lr_scheduler": {"warmup_epochs": 1},
        "train_dataloader": {
            "dataset": {"root": str(root / "train"), "transforms": augment},
            "collate_fn": {"prob": 1.0},
            "batch_size": batch_size,
        },
        "val_dataloader": {
            "dataset": {"root": str(root / "val"), "transforms": {"resize": image_size, "crop": image_size}},
            "batch_size": batch_size,
        },
    }
