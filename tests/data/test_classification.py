from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from rtdetr_spartan.core import create
from rtdetr_spartan.data.classification import (
    ClassificationEvalTransforms,
    ClassificationTrainTransforms,
    ImageFolderDataset,
    MixUpCutMixCollate,
    classification_collate_fn,
)
from rtdetr_spartan.data.coco import ImageReadError
from rtdetr_spartan.data.dataloader import DataLoader
from rtdetr_spartan.data.shapes import SHAPE_CATEGORIES, make_classification_dataset


@pytest.fixture(scope="module")
def cls_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shapes_cls")
    make_classification_dataset(out, train=16, val=8, size=48, seed=0)
    return out


def test_dataset_reads_image_folder(cls_root: Path) -> None:
    ds = ImageFolderDataset(cls_root / "train", transforms=ClassificationEvalTransforms(resize=40, crop=32))
    assert len(ds) == 16 and ds.num_classes == len(SHAPE_CATEGORIES)
    assert sorted(ds.category_names.values()) == sorted(name for _, name in SHAPE_CATEGORIES)
    image, label = ds[5]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert ds.category_names[label] == Path(ds.samples[5][0]).parent.name
    raw, _ = ImageFolderDataset(cls_root / "val")[0]
    assert isinstance(raw, Image.Image)


def test_missing_and_empty_roots_name_the_folder(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        ImageFolderDataset(missing)
    (tmp_path / "empty" / "n01440764").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="1 of 1 class folders hold no images: n01440764.*<class>"):
        ImageFolderDataset(tmp_path / "empty")
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "a.JPEG")  # val split not sorted into folders
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "flat")):
        ImageFolderDataset(tmp_path / "flat")


def test_empty_class_folders_are_named(tmp_path: Path) -> None:
    for name in ("cat", "dog", "eel", "fox"):
        (tmp_path / name).mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "cat" / "a.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "fox" / "b.png")
    (tmp_path / "eel" / "notes.txt").write_text("not an image")
    with pytest.raises(FileNotFoundError) as info:
        ImageFolderDataset(tmp_path)
    message = str(info.value)
    assert "2 of 4 class folders hold no images: dog, eel" in message and "holds no class folders" not in message


def test_non_image_with_image_extension_is_named(tmp_path: Path) -> None:
    (tmp_path / "cat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "cat" / "a.png")
    fake = tmp_path / "cat" / "b.jpg"
    fake.write_text("<html>not a jpeg</html>")
    ds = ImageFolderDataset(tmp_path)
    assert ds[0][0].size == (8, 8)
    with pytest.raises(ImageReadError, match=str(fake)):
        ds[1]


def test_train_transforms_shapes_and_options() -> None:
    image = Image.new("RGB", (70, 50), (200, 30, 90))
    torch.manual_seed(0)
    full = ClassificationTrainTransforms(size=32, randaugment_magnitude=7, random_erasing=1.0)
    out = full(image)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    plain = ClassificationTrainTransforms(size=32, hflip=0.0, randaugment_magnitude=None, mean=(0, 0, 0), std=(1, 1, 1))
    assert torch.allclose(plain(image), torch.tensor([200, 30, 90]).div(255).view(3, 1, 1).expand(3, 32, 32))
    names = [type(t).__name__ for t in full.transforms]
    assert names == [
        "ToImage",
        "RandomResizedCrop",
        "RandomHorizontalFlip",
        "RandAugment",
        "ToDtype",
        "Normalize",
        "RandomErasing",
    ]
    with pytest.raises(ValueError, match="interpolation 'cubic'"):
        ClassificationTrainTransforms(interpolation="cubic")


def test_eval_transforms_resize_then_center_crop() -> None:
    image = Image.new("RGB", (80, 40))
    image.paste((255, 255, 255), (0, 0, 14, 40))  # white left strip: cropped away
    out = ClassificationEvalTransforms(resize=32, crop=32, mean=(0, 0, 0), std=(1, 1, 1))(image)
    assert out.shape == (3, 32, 32) and out.max() == 0.0


def _batch(n: int = 8, classes: int = 4) -> list[tuple[torch.Tensor, int]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.rand(3, 16, 16, generator=g), i % classes) for i in range(n)]


def test_collate_mixes_with_soft_targets_and_uses_both_methods() -> None:
    items = _batch()
    plain_images, labels = classification_collate_fn(items)
    collate = MixUpCutMixCollate(num_classes=4, mixup_alpha=0.2, cutmix_alpha=1.0)
    torch.manual_seed(0)
    kinds = set()
    for _ in range(20):
        images, targets = collate(items)
        assert targets.shape == (8, 4) and torch.allclose(targets.sum(1), torch.ones(8))
        rolled = plain_images.roll(1, 0)
        is_cut = ((images == plain_images) | (images == rolled)).all()
        kinds.add("cutmix" if is_cut else "mixup")
    assert kinds == {"cutmix", "mixup"}
    assert labels.dtype == torch.int64 and labels.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]


def test_collate_without_mixing() -> None:
    items = _batch()
    images, labels = MixUpCutMixCollate(num_classes=4, mixup_alpha=0.0, cutmix_alpha=0.0)(items)
    assert labels.dtype == torch.int64 and labels.shape == (8,)
    _, onehot = MixUpCutMixCollate(num_classes=4, prob=0.0)(items)
    assert torch.equal(onehot.argmax(1), labels) and torch.equal(onehot.sum(1), torch.ones(8))
    with pytest.raises(ValueError, match="alphas must be >= 0"):
        MixUpCutMixCollate(num_classes=4, mixup_alpha=-1.0)


def test_dataloader_built_from_config(cls_root: Path) -> None:
    cfg = {
        "num_classes": 4,
        "train_dataloader": {
            "type": "DataLoader",
            "batch_size": 4,
            "shuffle": True,
            "drop_last": True,
            "dataset": {
                "type": "ImageFolderDataset",
                "root": str(cls_root / "train"),
                "transforms": {
                    "type": "ClassificationTrainTransforms",
                    "size": 32,
                    "randaugment_magnitude": 7,
                    "random_erasing": 0.25,
                },
            },
            "collate_fn": {"type": "MixUpCutMixCollate", "mixup_alpha": 0.2, "cutmix_alpha": 1.0},
        },
    }
    loader = create(cfg["train_dataloader"], cfg)
    assert isinstance(loader, DataLoader) and loader.collate_fn.num_classes == 4
    images, targets = next(iter(loader))
    assert images.shape == (4, 3, 32, 32) and targets.shape == (4, 4)
