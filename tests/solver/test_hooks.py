"""Registered hooks built from the config's ``hooks:`` key: the CAM logging hook of pretraining."""

from __future__ import annotations

from pathlib import Path

import pytest

from rtdetr_spartan.core import ConfigError, YAMLConfig, merge_dict
from rtdetr_spartan.solver import CamLoggingHook, ClsSolver
from tests.cls_utils import SHAPES_CLS_CONFIG, make_tiny_cls_dataset, tiny_overrides


def test_cam_hook_is_built_from_the_hooks_key(tmp_path: Path) -> None:
    cfg = YAMLConfig(
        SHAPES_CLS_CONFIG,
        output_dir=str(tmp_path),
        hooks=["CamLoggingHook"],
        CamLoggingHook={"every_n_epochs": 3, "images": ["a.png"], "layers": ["layers.1"]},
    )
    (hook,) = ClsSolver(cfg).hooks
    assert isinstance(hook, CamLoggingHook)
    assert hook.settings["every_n_epochs"] == 3 and hook.settings["layers"] == ["layers.1"]
    with pytest.raises(ConfigError, match=r"hooks\[0\].*CamLoggingHook.*every"):
        ClsSolver(
            YAMLConfig(SHAPES_CLS_CONFIG, output_dir=str(tmp_path), hooks=[{"type": "CamLoggingHook", "every": 2}])
        )


@pytest.mark.slow
def test_pretraining_logs_cams_through_the_hook(tmp_path: Path) -> None:
    """The run's TensorBoard events hold one CAM image per logged image at the due epochs only."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = make_tiny_cls_dataset(tmp_path / "data", train=8, val=4)
    images = sorted((data / "val").rglob("*.jpg"))[:2]
    overrides = merge_dict(
        tiny_overrides(data, epochs=2),
        {
            "output_dir": str(tmp_path / "run"),
            "hooks": [{"type": "CamLoggingHook", "every_n_epochs": 2, "images": [str(p) for p in images]}],
            "CamLoggingHook": {"layers": ["layers.1"]},
        },
    )
    ClsSolver(YAMLConfig(SHAPES_CLS_CONFIG, **overrides)).fit()
    events = EventAccumulator(str(tmp_path / "run" / "summary"), size_guidance={"images": 0})
    events.Reload()
    tags = [tag for tag in events.Tags()["images"] if tag.startswith("cam/")]
    assert sorted(tags) == sorted(f"cam/{p.parent.name}/{p.stem}" for p in images)
    assert all([event.step for event in events.Images(tag)] == [1] for tag in tags)  # epoch 1 only


def test_missing_cam_images_fail_before_the_first_epoch(tmp_path: Path) -> None:
    data = make_tiny_cls_dataset(tmp_path / "data", train=8, val=4)
    overrides = merge_dict(
        tiny_overrides(data, epochs=1),
        {
            "output_dir": str(tmp_path / "run"),
            "hooks": [{"type": "CamLoggingHook", "every_n_epochs": 1, "images": [str(tmp_path / "missing.png")]}],
        },
    )
    with pytest.raises(FileNotFoundError, match=r"CamLoggingHook.images: .*missing.png"):
        ClsSolver(YAMLConfig(SHAPES_CLS_CONFIG, **overrides)).fit()
    assert not (tmp_path / "run" / "last.pth").exists()
