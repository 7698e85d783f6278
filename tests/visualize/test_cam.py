from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from rtdetr_spartan.deploy.from_config import load_config
from rtdetr_spartan.visualize import CamLogger, UnknownLayerError, classifier_cam, resolve_layers, tokens_to_map
from rtdetr_spartan.visualize.cam import DetectionScores, detector_cam
from rtdetr_spartan.visualize.layers import (
    check_layer_outputs,
    check_spatial_layers,
    classifier_layers,
    stage_layers,
)

ROOT = Path(__file__).resolve().parents[2]
CLS_CONFIG = ROOT / "configs/spartan/spartan_t_shapes_cls.yml"
DET_CONFIG = ROOT / "configs/rtdetr/rtdetr_spartan_t_shapes.yml"


class ColourNet(nn.Module):
    """Feature 0 is the red channel, feature 1 the green one; class c's logit is feature c's mean."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 2, 1)
        with torch.no_grad():
            self.features.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).view(2, 3, 1, 1))
            self.features.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 3, H, W] -> logits [B, 2]."""
        return torch.relu(self.features(x)).mean((2, 3))


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_cam_follows_the_target_class(method: str) -> None:
    model = ColourNet()
    image = torch.zeros(1, 3, 32, 32)
    image[0, 0, :, :16] = 1.0  # red left half
    image[0, 1, :, 16:] = 0.8  # green right half
    cams = {c: classifier_cam(model, image, ["features"], method, class_index=c).cams["features"] for c in (0, 1)}
    assert cams[0].shape == (32, 32) and 0 <= cams[0].min() and cams[0].max() <= 1
    assert cams[0][:, :16].mean() > 0.9 and cams[0][:, 16:].max() < 0.1  # red: the left half
    assert cams[1][:, 16:].mean() > 0.9 and cams[1][:, :16].max() < 0.1
    result = classifier_cam(model, image, ["features"], method)
    assert (result.target, result.predicted) == (0, 0) and result.probability == pytest.approx(1 / (1 + np.exp(-0.1)))
    with pytest.raises(ValueError, match="class 2 is out of range: the model has 2 classes"):
        classifier_cam(model, image, ["features"], method, class_index=2)


def test_unknown_layer_lists_close_names() -> None:
    model = load_config(CLS_CONFIG).build("model")
    with pytest.raises(UnknownLayerError, match=r"no layer 'layers.2.smixr'; close names: layers.2.smixer"):
        resolve_layers(model, ["layers.2.smixr"])
    with pytest.raises(UnknownLayerError, match="top-level layers: conv, layers"):
        resolve_layers(model, ["backbone.zzz"])
    assert classifier_layers(model) == ("conv", "layers.2", "layers.2.smixer", "layers.2.cmixer", "layers.22")


def test_layers_without_a_feature_map_are_refused() -> None:
    model = load_config(CLS_CONFIG).build("model").eval()
    image = torch.rand(1, 3, 64, 64)
    shapes = check_layer_outputs(model, ["conv", "layers.22"], lambda: model(image))
    assert shapes == {"conv": (1, 32, 16, 16), "layers.22": (1, 256, 2, 2)}
    model.add_module("spare", torch.nn.Conv2d(3, 3, 1))  # held, never called in the forward
    with pytest.raises(ValueError, match="'spare' is not called"):
        check_layer_outputs(model, ["spare"], lambda: model(image))
    with pytest.raises(ValueError, match=r"'linear' outputs a tensor of shape \(1, 4\)"):
        check_layer_outputs(model, ["linear"], lambda: model(image))


def test_tokens_become_maps() -> None:
    tokens = torch.arange(2 * 20 * 3, dtype=torch.float32).reshape(2, 20, 3)  # 4 x 5 grid of a 128 x 160 input
    maps = tokens_to_map(128, 160)(tokens)
    assert maps.shape == (2, 3, 4, 5)
    assert torch.equal(maps[1, 2, 3, 4], tokens[1, 19, 2]) and torch.equal(maps[0, 1, 1, 0], tokens[0, 5, 1])
    square = torch.zeros(1, 8, 2, 2)
    assert tokens_to_map(64, 64)(square) is square
    with pytest.raises(ValueError, match="7 tokens match no stride"):
        tokens_to_map(64, 64)(torch.zeros(1, 7, 3))


def test_detector_cam_of_top_detections_and_stage_layers() -> None:
    torch.manual_seed(0)
    cfg = load_config(DET_CONFIG)
    detector = DetectionScores(cfg.build("model"), cfg.build("postprocessor").deploy()).eval()
    image = torch.rand(1, 3, 160, 160)
    stages = stage_layers(detector, "model.backbone", image)
    assert stages == ["model.backbone.layers.6", "model.backbone.layers.19", "model.backbone.layers.22"]
    result = detector_cam(detector, image, [stages[1], "model.encoder.encoder.0"], "gradcam", top_k=3)
    assert len(result.labels) == len(result.boxes) == 3
    assert result.scores == sorted(result.scores, reverse=True)
    for cam in result.cams.values():
        assert cam.shape == (160, 160) and cam.min() >= 0 and cam.max() == pytest.approx(1.0, abs=1e-6)
    eigen = detector_cam(detector, image, [stages[2]], "eigencam", top_k=2)
    assert eigen.cams[stages[2]].shape == (160, 160)
    assert detector_cam(detector, image, [stages[2]], top_k=3, threshold=1.1).cams == {}
    # only spatial layers: decoder outputs are queries (100 of them, as many as a 10x10 level)
    with pytest.raises(
        ValueError, match=r"'decoder.decoder.layers.0' is not a spatial layer: .*backbone.\*, encoder.\*"
    ):
        detector_cam(detector, image, ["model.decoder.decoder.layers.0"], top_k=1)
    for top_k in (0, -3):
        with pytest.raises(ValueError, match=f"top_k .*must be >= 1.*got {top_k}"):
            detector_cam(detector, image, [stages[2]], top_k=top_k)


def test_spatial_layers_are_backbone_and_encoder_maps_or_level_tokens() -> None:
    levels = [(20, 20), (10, 10), (5, 5)]
    check_spatial_layers({"model.backbone.layers.6": torch.Size([1, 64, 20, 20])}, levels)
    check_spatial_layers({"model.encoder.encoder.0": torch.Size([1, 25, 256])}, levels)
    with pytest.raises(ValueError, match=r"'encoder.x' outputs 30 tokens, which match no feature level \(20x20, 10x10"):
        check_spatial_layers({"model.encoder.x": torch.Size([1, 30, 256])}, levels)
    with pytest.raises(ValueError, match="'postprocessor' is not a spatial layer"):
        check_spatial_layers({"postprocessor": torch.Size([1, 64, 20, 20])}, levels)


class Recorder(SummaryWriter):
    """A real TensorBoard writer that also remembers what it was given."""

    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        self.images: list[tuple[str, tuple[int, ...], int]] = []

    def add_image(self, tag, img_tensor, global_step=None, walltime=None, dataformats="CHW") -> None:
        self.images.append((tag, tuple(np.asarray(img_tensor).shape), global_step))
        super().add_image(tag, img_tensor, global_step, walltime, dataformats)


@pytest.mark.slow
def test_cam_logger_every_n_epochs(tmp_path: Path) -> None:
    from rtdetr_spartan.visualize.run import classifier_transform

    cfg = load_config(CLS_CONFIG)
    model = cfg.build("model").train()
    folder = tmp_path / "val"
    for cls, color in (("circle", (255, 0, 0)), ("square", (0, 255, 0))):
        (folder / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (64, 64), color).save(folder / cls / f"{i}.png")
    settings = {"every_n_epochs": 2, "images": [str(folder)], "max_images": 2, "layers": ["layers.22"]}
    cam_logger = CamLogger.from_config(settings, classifier_transform(cfg))
    assert cam_logger is not None and [p.parent.name for p in cam_logger.images] == ["circle", "square"]
    writer = Recorder(str(tmp_path / "tb"))
    for epoch in range(4):
        cam_logger(model, writer, epoch)
    writer.close()
    tags = [(tag, step) for tag, _, step in writer.images]
    assert tags == [("cam/circle/0", 1), ("cam/square/2", 1), ("cam/circle/0", 3), ("cam/square/2", 3)]
    assert all(len(shape) == 3 and shape[2] == 3 for _, shape, _ in writer.images)
    assert model.training and all(p.grad is None for p in model.parameters())
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert CamLogger.from_config({"every_n_epochs": 0, "images": ["x.png"]}, classifier_transform(cfg)) is None
    assert CamLogger.from_config(None, classifier_transform(cfg)) is None
    with pytest.raises(ValueError, match=r"CamLoggingHook: unknown keys \['every'\]"):
        CamLogger.from_config({"every_n_epochs": 1, "every": 2}, classifier_transform(cfg))
    direct = CamLogger([folder / "circle" / "1.png"], every_n_epochs=1, layers=["layers.22"])  # ImageNet transform
    figures = direct(model, writer, epoch=0)
    assert list(figures) == ["cam/circle/1"] and figures["cam/circle/1"].ndim == 3
    with pytest.raises(FileNotFoundError, match="missing.png"):
        CamLogger([tmp_path / "missing.png"], 1)


def test_figure_names_are_unique_and_never_an_input(tmp_path: Path) -> None:
    from rtdetr_spartan.misc.images import OutputOverwritesInputError
    from rtdetr_spartan.visualize.run import figure_stems

    images = [tmp_path / n for n in ("a.jpg", "a.png", "b.png")]
    # the same rule as inference's output names (misc.images.unique_names)
    assert figure_stems(images, tmp_path / "out") == {images[0]: "a", images[1]: "a_2", images[2]: "b"}
    with pytest.raises(
        OutputOverwritesInputError, match=r"output .*b_cam.png would replace the input file .*b_cam.png"
    ):
        figure_stems([tmp_path / "b.png", tmp_path / "b_cam.png"], tmp_path)
