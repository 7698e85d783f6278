"""CAMs of SpaRTAN's layers: those of the SpaRTAN authors' visualization config (stem, a
block, its two mixers) and the layers inside the mixers (``cmixer.theta``, ``smixer.proj_in``,
a conv of a ``ConvNormAct``), which the forward calls as modules, so their hooks fire."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rtdetr_spartan.deploy.from_config import load_config
from rtdetr_spartan.visualize import classifier_cam
from rtdetr_spartan.visualize.layers import check_layer_outputs, classifier_layers
from tests.nn.spartan_helpers import randomize

ROOT = Path(__file__).resolve().parents[2]
CLS_CONFIG = ROOT / "configs/spartan/spartan_t_shapes_cls.yml"
INNER = (
    "layers.4.cmixer.theta",
    "layers.4.cmixer.proj",
    "layers.8.cmixer.conv.conv",  # grouped: the rotation folded into its taps
    "layers.0.smixer.proj_in",
    "layers.0.smixer.h_conv.conv",
    "layers.0.smixer.l_conv.0.conv",
)


def test_authors_and_inner_layers_give_maps_and_cams() -> None:
    model = randomize(load_config(CLS_CONFIG).build("model"), seed=0).eval()  # layer scales near 1
    image = torch.rand(1, 3, 64, 64)
    layers = (*classifier_layers(model), *INNER)
    shapes = check_layer_outputs(model, layers, lambda: model(image))
    assert shapes["layers.4.cmixer.theta"] == (1, 256, 8, 8)  # stage 2: 64 channels, expansion 4
    assert shapes["layers.8.cmixer.conv.conv"] == (1, 256, 4, 4)  # stage 3: 128 channels, expansion 2
    assert shapes["layers.0.smixer.proj_in"] == (1, 16, 16, 16)
    result = classifier_cam(model, image, ["layers.4.cmixer.theta", "layers.0.smixer.h_conv.conv"], class_index=1)
    for cam in result.cams.values():
        assert cam.shape == (64, 64) and np.isfinite(cam).all() and cam.max() > cam.min()


@pytest.mark.slow
def test_visualize_tool_draws_inner_layers(tmp_path: Path) -> None:
    from tools.visualize import main

    image = tmp_path / "im.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "out"
    argv = ["-c", str(CLS_CONFIG), "-i", str(image), "-o", str(out), "--layers", "layers.2.cmixer", *INNER[:2]]
    assert main(argv) == 0
    figure = np.asarray(Image.open(out / "im_cam.png"))
    assert figure.shape[1] > 3 * figure.shape[0] > 0 and figure.std() > 10  # image + 3 maps side by side
