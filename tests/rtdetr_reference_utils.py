"""The reference RT-DETR configurations (PResNet and HybridEncoder arguments per model) and their
synthetic-weight backbone runs, shared by the backbone and encoder parity tests."""

from __future__ import annotations

import functools
from typing import Any

import torch

from rtdetr_spartan.nn.backbones.presnet import PResNet
from tests.parity_utils import load_expected, load_spec, synthetic_scenes, synthetic_state_dict

# Reference configs (configs/rtdetr/include/rtdetr_r50vd.yml and the rtdetr_r*vd_6x_coco.yml
# files that override it): PResNet and HybridEncoder kwargs per model.
BACKBONE_COMMON: dict[str, Any] = dict(variant="d", num_stages=4, return_idx=(1, 2, 3))
ENCODER_COMMON: dict[str, Any] = dict(
    feat_strides=(8, 16, 32),
    use_encoder_idx=(2,),
    num_encoder_layers=1,
    nhead=8,
    dropout=0.0,
    enc_act="gelu",
    pe_temperature=10000,
    depth_mult=1.0,
    act="silu",
    eval_spatial_size=(640, 640),
)
REFERENCE_CONFIGS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    # name: (PResNet kwargs, HybridEncoder kwargs)
    "rtdetr_r18vd": (
        dict(depth=18, freeze_at=-1, freeze_norm=False),
        dict(in_channels=(128, 256, 512), hidden_dim=256, dim_feedforward=1024, expansion=0.5),
    ),
    "rtdetr_r34vd": (
        dict(depth=34, freeze_at=-1, freeze_norm=False),
        dict(in_channels=(128, 256, 512), hidden_dim=256, dim_feedforward=1024, expansion=0.5),
    ),
    "rtdetr_r50vd": (
        dict(depth=50, freeze_at=0, freeze_norm=True),
        dict(in_channels=(512, 1024, 2048), hidden_dim=256, dim_feedforward=1024, expansion=1.0),
    ),
    "rtdetr_r101vd": (
        dict(depth=101, freeze_at=0, freeze_norm=True),
        dict(in_channels=(512, 1024, 2048), hidden_dim=384, dim_feedforward=2048, expansion=1.0),
    ),
}
PARITY_MODELS = ("rtdetr_r18vd", "rtdetr_r50vd")


def build_backbone(name: str, **overrides: Any) -> PResNet:
    return PResNet(**{**BACKBONE_COMMON, **REFERENCE_CONFIGS[name][0], **overrides})


def sub_spec(name: str, prefix: str) -> list[tuple[str, tuple[int, ...], str]]:
    """The spec entries under ``prefix`` with the prefix stripped, in reference order."""
    entries, _ = load_spec(name)
    return [(k.removeprefix(prefix), s, d) for k, s, d in entries if k.startswith(prefix)]


def sub_weights(name: str, prefix: str) -> dict[str, torch.Tensor]:
    """Synthetic weights (seed 0) of the full model restricted to ``prefix``."""
    entries, _ = load_spec(name)
    state = synthetic_state_dict(entries, 0)
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


@functools.cache
def reference_backbone_run(name: str) -> tuple[dict, tuple[torch.Tensor, ...]]:
    """(expected fixture, backbone outputs) for the parity input; cached for the encoder tests."""
    model = build_backbone(name)
    model.load_state_dict(sub_weights(name, "backbone."), strict=True)
    model.eval()
    expected = load_expected(f"{name}_seed0")
    images = synthetic_scenes(expected["input_shape"][0], 640, 640, seed=0)
    with torch.no_grad():
        return expected, tuple(model(images))
