"""The Python API's Classifier on a tiny generated ImageFolder: train / val / predict top-k /
load through the pretraining solver, and a detector taking its backbone weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rtdetr_spartan import Classifier, Detector
from rtdetr_spartan.misc.checkpoint import CheckpointError, extract_state_dict, load_checkpoint
from tests.cls_utils import SHAPES_CLS_CONFIG, make_tiny_cls_dataset
from tests.train_utils import TINY_SPARTAN_CONFIG

CLASSES = ["circle", "square", "star", "triangle"]


def _tiny(**overrides: object) -> Classifier:
    """The shapes pretraining config at 32 px, batch 8, one epoch, on the CPU."""
    return Classifier(
        SHAPES_CLS_CONFIG,
        "print_freq=1",
        "train_dataloader.dataset.transforms.size=32",
        "val_dataloader.dataset.transforms.resize=32",
        "val_dataloader.dataset.transforms.crop=32",
        "val_dataloader.batch_size=8",
        "lr_scheduler.warmup_epochs=0",
        device="cpu",
        **overrides,
    )


@pytest.fixture(scope="module")
def cls_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_cls_dataset(tmp_path_factory.mktemp("api_cls"))


@pytest.fixture(scope="module")
def trained(cls_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Classifier, dict]:
    clf = _tiny()
    metrics = clf.train(data=cls_data, epochs=1, batch_size=8, output_dir=tmp_path_factory.mktemp("cls") / "out")
    return clf, metrics


def test_predict_top_k_on_an_untrained_classifier(cls_data: Path) -> None:
    clf = _tiny(**{"val_dataloader.dataset.root": str(cls_data / "val")})
    images = sorted((cls_data / "val" / "circle").iterdir())[:2]
    results = clf.predict([*images, np.array(Image.open(images[0]).convert("RGB"))], top_k=3)
    assert len(results) == 3 and [r.source for r in results] == [str(images[0]), str(images[1]), None]
    for result in results:
        assert len(result.labels) == 3 and result.scores == sorted(result.scores, reverse=True)
        assert 0.0 < sum(result.scores) <= 1.0 + 1e-6
        assert result.names == [CLASSES[i] for i in result.labels]
    assert results[0].labels == results[2].labels
    assert results[0].to_dict()["top_k"][0] == {
        "label": results[0].labels[0],
        "name": results[0].names[0],
        "score": results[0].scores[0],
    }
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        clf.predict(images[0], top_k=0)


@pytest.mark.slow
def test_train_val_load_predict(trained: tuple[Classifier, dict], cls_data: Path) -> None:
    clf, metrics = trained
    assert clf.checkpoint is not None and clf.checkpoint.name == "best.pth"
    assert metrics["best"]["metric"] == "top1" and metrics["final"]["epoch"] == 0
    stats = clf.val()
    assert stats["num_images"] == 8 and 0.0 <= stats["top1"] <= stats["top5"] <= 100.0
    assert stats["top1"] == pytest.approx(metrics["best"]["top1"])
    loaded = Classifier.load(clf.checkpoint)
    assert loaded.val(data=cls_data)["top1"] == pytest.approx(stats["top1"])
    image = sorted((cls_data / "val" / "star").iterdir())[0]
    (a,) = clf.predict(image, top_k=4)
    (b,) = loaded.predict(image, top_k=4)
    assert a.labels == b.labels and a.scores == pytest.approx(b.scores, abs=1e-6)
    assert sorted(a.names) == CLASSES


@pytest.mark.slow
def test_a_detector_takes_the_classifiers_backbone(trained: tuple[Classifier, dict]) -> None:
    clf, _ = trained
    det = Detector(TINY_SPARTAN_CONFIG, backbone_weights=clf.checkpoint)
    backbone = det.config.resolve().build("model").backbone.state_dict()
    saved = extract_state_dict(load_checkpoint(clf.checkpoint))
    shared = [name for name in backbone if name in saved]
    assert len(shared) > 10 and all(torch.equal(backbone[name], saved[name]) for name in shared)
    with pytest.raises(CheckpointError, match="classification"):
        Detector.load(clf.checkpoint)
