from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DistributedSampler

from rtdetr_spartan.core import lookup
from rtdetr_spartan.data.coco import CocoDetection
from rtdetr_spartan.data.dataloader import BatchImageCollateFunction, DataLoader, default_collate_fn, set_epoch
from rtdetr_spartan.data.transforms import Compose

VAL_OPS = [
    {"type": "Resize", "size": [48, 48]},
    {"type": "ToImage"},
    {"type": "ToDtype"},
    {"type": "ConvertBoxes", "fmt": "cxcywh", "normalize": True},
]


def val_dataset(root: Path) -> CocoDetection:
    return CocoDetection(root / "val", root / "annotations" / "instances_val.json", transforms=Compose(VAL_OPS))


def test_registered() -> None:
    assert lookup("DataLoader") is DataLoader and DataLoader.__inject__ == ["dataset", "collate_fn"]
    assert lookup("default_collate_fn") is default_collate_fn
    assert lookup("BatchImageCollateFunction") is BatchImageCollateFunction


def test_batches_equal_stacked_items(shapes_root: Path) -> None:
    ds = val_dataset(shapes_root)
    loader = DataLoader(ds, batch_size=3, shuffle=False, collate_fn=default_collate_fn)
    images, targets = next(iter(loader))
    assert images.shape == (3, 3, 48, 48) and images.dtype == torch.float32
    assert isinstance(targets, list) and len(targets) == 3
    for i in range(3):
        image, target = ds[i]
        torch.testing.assert_close(images[i], image.as_subclass(torch.Tensor))
        assert targets[i]["image_id"].item() == target["image_id"].item()
        torch.testing.assert_close(targets[i]["boxes"], target["boxes"])
    assert sum(len(t) for _, t in loader) == len(ds)
    assert "batch_size: 3" in repr(loader)


def test_set_epoch_reaches_distributed_sampler(shapes_root: Path) -> None:
    ds = val_dataset(shapes_root)
    sampler = DistributedSampler(ds, num_replicas=2, rank=0, shuffle=True, seed=0)
    collate = BatchImageCollateFunction(scales=(32,), stop_epoch=5)
    loader = DataLoader(ds, batch_size=2, sampler=sampler, collate_fn=collate)
    orders = []
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        assert sampler.epoch == epoch and collate.epoch == epoch
        orders.append(list(sampler))
    assert orders[0] != orders[1]  # shuffling follows the epoch
    set_epoch(loader, 6)
    assert sampler.epoch == 6 and collate.epoch == 6


def test_multi_scale_collate_until_stop_epoch() -> None:
    items = [(torch.rand(3, 40, 40), {"image_id": torch.tensor([i])}) for i in range(2)]
    collate = BatchImageCollateFunction(scales=(24, 32), stop_epoch=2)
    torch.manual_seed(0)
    sizes = {collate(items)[0].shape[-1] for _ in range(20)}
    assert sizes == {24, 32}
    collate.set_epoch(2)
    images, targets = collate(items)
    assert images.shape == (2, 3, 40, 40) and [t["image_id"].item() for t in targets] == [0, 1]
    torch.testing.assert_close(images, torch.stack([x for x, _ in items]))
    assert BatchImageCollateFunction()(items)[0].shape == (2, 3, 40, 40)
