from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rtdetr_spartan.data.shapes import make_detection_dataset
from rtdetr_spartan.deploy.from_config import load_config
from rtdetr_spartan.visualize import UnknownLayerError
from tools.visualize import main

ROOT = Path(__file__).resolve().parents[2]
CLS_CONFIG = ROOT / "configs/spartan/spartan_t_shapes_cls.yml"
DET_CONFIG = ROOT / "configs/rtdetr/rtdetr_spartan_t_shapes.yml"


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("visualize")
    torch.manual_seed(0)
    checkpoint = root / "cls.pth"
    torch.save({"model": load_config(CLS_CONFIG).build("model").state_dict()}, checkpoint)
    images = root / "images"
    images.mkdir()
    for i, size in enumerate([(80, 64), (64, 96)]):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(
            images / f"im{i}.png"
        )
    (images / "notes.txt").write_text("not an image")
    return {"checkpoint": checkpoint, "images": images, "root": root}


def test_classifier_cams_to_png_and_tensorboard(classifier: dict[str, Path], tmp_path: Path) -> None:
    argv = ["-c", str(CLS_CONFIG), "-r", str(classifier["checkpoint"]), "-i", str(classifier["images"])]
    argv += ["-o", str(tmp_path / "out"), "--tensorboard", str(tmp_path / "tb"), "--class", "2"]
    assert main([*argv, "--layers", "conv", "layers.6"]) == 0
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["im0_cam.png", "im1_cam.png"]
    figure = np.asarray(Image.open(tmp_path / "out" / "im0_cam.png"))
    assert figure.shape[1] > 2 * figure.shape[0] > 0 and figure.std() > 10  # image + 2 maps side by side
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert sorted(events.Tags()["images"]) == ["cam/im0", "cam/im1"]


@pytest.mark.slow
def test_default_layers_and_methods(classifier: dict[str, Path], tmp_path: Path) -> None:
    image = classifier["images"] / "im1.png"
    for method in ("gradcam++", "eigencam"):
        out = tmp_path / method
        assert main(["-c", str(CLS_CONFIG), "-i", str(image), "-o", str(out), "--method", method]) == 0
        figure = np.asarray(Image.open(out / "im1_cam.png"))
        assert figure.shape[1] > figure.shape[0] > 0 and figure.std() > 10  # image beside its map


def test_bad_names_and_classes_are_errors(classifier: dict[str, Path], tmp_path: Path) -> None:
    base = ["-c", str(CLS_CONFIG), "-i", str(classifier["images"] / "im0.png"), "-o", str(tmp_path)]
    with pytest.raises(UnknownLayerError, match="'layers.2.cmixr'; close names: layers.2.cmixer"):
        main([*base, "--layers", "layers.2.cmixr"])
    with pytest.raises(ValueError, match="class 7 is out of range: the model has 4 classes"):
        main([*base, "--class", "7"])
    with pytest.raises(FileNotFoundError, match="no images"):
        main(["-c", str(CLS_CONFIG), "-i", str(tmp_path), "-o", str(tmp_path / "o")])


@pytest.mark.slow
def test_detector_cam_and_feature_grids(tmp_path: Path) -> None:
    make_detection_dataset(tmp_path / "shapes", train=0, val=1, size=160)
    image = tmp_path / "shapes" / "val" / "000000.jpg"
    assert main(["-c", str(DET_CONFIG), "-i", str(image), "-o", str(tmp_path / "out"), "--top-k", "3"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["000000_cam.png", "000000_features.png"]
    features = np.asarray(Image.open(tmp_path / "out" / "000000_features.png"))
    cam = np.asarray(Image.open(tmp_path / "out" / "000000_cam.png"))
    assert features.shape[0] > cam.shape[0]  # three stage rows against one row of CAMs
    with pytest.raises(UnknownLayerError, match="close names: backbone.layers.19"):
        main(["-c", str(DET_CONFIG), "-i", str(image), "-o", str(tmp_path / "o"), "--layers", "backbone.layer.19"])
    with pytest.raises(ValueError, match="--class is for classifiers"):
        main(["-c", str(DET_CONFIG), "-i", str(image), "-o", str(tmp_path / "o"), "--class", "1"])
    with pytest.raises(ValueError, match="'decoder.decoder.layers.0' is not a spatial layer"):
        main(
            ["-c", str(DET_CONFIG), "-i", str(image), "-o", str(tmp_path / "o"), "--layers", "decoder.decoder.layers.0"]
        )


@pytest.mark.parametrize("top_k", ["0", "-3"])
def test_top_k_below_one_is_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str], top_k: str) -> None:
    with pytest.raises(SystemExit):
        main(["-c", str(DET_CONFIG), "-i", str(tmp_path), "-o", str(tmp_path / "o"), "--top-k", top_k])
    assert f"argument --top-k: must be >= 1 (the detections the CAM explains), got {top_k}" in capsys.readouterr().err


def test_images_are_read_in_their_displayed_orientation(classifier: dict[str, Path], tmp_path: Path) -> None:
    """An EXIF-rotated photo is shown (and explained) upright: its figure equals that of the
    same pixels turned by hand."""
    stored = Image.open(classifier["images"] / "im0.png").convert("RGB")  # 80x64
    exif = stored.getexif()
    exif[0x0112] = 6
    folder = tmp_path / "in"
    folder.mkdir()
    stored.save(folder / "phone.png", exif=exif.tobytes())
    stored.transpose(Image.Transpose.ROTATE_270).save(folder / "upright.png")
    argv = ["-c", str(CLS_CONFIG), "-r", str(classifier["checkpoint"]), "-i", str(folder), "-o", str(tmp_path / "o")]
    assert main([*argv, "--layers", "layers.6"]) == 0
    phone = np.asarray(Image.open(tmp_path / "o" / "phone_cam.png"), dtype=np.int16)
    upright = np.asarray(Image.open(tmp_path / "o" / "upright_cam.png"), dtype=np.int16)
    assert phone.shape == upright.shape and np.abs(phone - upright).max() <= 2
