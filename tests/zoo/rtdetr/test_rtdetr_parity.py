"""Full RT-DETR parity with the reference: state dict, eval outputs and postprocessed results."""

from __future__ import annotations

import pytest
import torch

from rtdetr_spartan.nn.backbones.presnet import PResNet
from rtdetr_spartan.zoo.rtdetr.decoder import RTDETRTransformer
from rtdetr_spartan.zoo.rtdetr.hybrid_encoder import HybridEncoder
from rtdetr_spartan.zoo.rtdetr.postprocessor import RTDETRPostProcessor
from rtdetr_spartan.zoo.rtdetr.rtdetr import RTDETR
from tests.parity_utils import (
    load_expected,
    load_spec,
    matched_fraction,
    state_dict_spec,
    synthetic_scenes,
    synthetic_state_dict,
)

# Reference configs rtdetr_r{18,50}vd_6x_coco.yml: (depth, freeze_at, freeze_norm,
# encoder in_channels, encoder expansion, decoder layers).
CONFIGS = {
    "rtdetr_r18vd": (18, -1, False, [128, 256, 512], 0.5, 3),
    "rtdetr_r50vd": (50, 0, True, [512, 1024, 2048], 1.0, 6),
}


def _build(name: str) -> RTDETR:
    depth, freeze_at, freeze_norm, in_channels, expansion, layers = CONFIGS[name]
    backbone = PResNet(
        depth=depth,
        variant="d",
        num_stages=4,
        return_idx=[1, 2, 3],
        act="relu",
        freeze_at=freeze_at,
        freeze_norm=freeze_norm,
    )
    encoder = HybridEncoder(
        in_channels=in_channels,
        feat_strides=[8, 16, 32],
        hidden_dim=256,
        nhead=8,
        dim_feedforward=1024,
        dropout=0.0,
        enc_act="gelu",
        use_encoder_idx=[2],
        num_encoder_layers=1,
        pe_temperature=10000,
        expansion=expansion,
        depth_mult=1.0,
        act="silu",
        eval_spatial_size=[640, 640],
    )
    decoder = RTDETRTransformer(
        num_classes=80,
        hidden_dim=256,
        num_queries=300,
        position_embed_type="sine",
        feat_channels=[256, 256, 256],
        feat_strides=[8, 16, 32],
        num_levels=3,
        num_decoder_points=4,
        nhead=8,
        num_decoder_layers=layers,
        dim_feedforward=1024,
        dropout=0.0,
        activation="relu",
        num_denoising=100,
        label_noise_ratio=0.5,
        box_noise_scale=1.0,
        learnt_init_query=False,
        eval_spatial_size=[640, 640],
        eval_idx=-1,
        eps=1e-2,
        aux_loss=True,
    )
    return RTDETR(backbone, encoder, decoder)


def _results_match(
    results: list[dict[str, torch.Tensor]], reference: list[dict[str, torch.Tensor]], top: int = 100
) -> float:
    """Share of our top detections found among the reference's (same label, box within 0.05 px,
    score within 1e-5). Near-equal scores may order differently, or another of two near-tied
    queries may be kept, hence a set comparison."""
    found = total = 0
    for ours, ref in zip(results, reference, strict=True):
        for label, box, score in zip(ours["labels"][:top], ours["boxes"][:top], ours["scores"][:top]):
            close = (
                (ref["labels"] == label)
                & ((ref["scores"] - score).abs() <= 1e-5)
                & ((ref["boxes"] - box).abs().amax(-1) <= 0.05)
            )
            found += int(close.any())
            total += 1
    return found / total


@pytest.mark.parametrize("name", list(CONFIGS))
def test_reference_parity(name: str) -> None:
    entries, params = load_spec(name)
    model = _build(name)
    assert state_dict_spec(model) == entries
    assert sum(p.numel() for p in model.parameters()) == params
    model.load_state_dict(synthetic_state_dict(entries, 0), strict=True)
    model.eval()

    expected = load_expected(f"{name}_seed0")
    batch, _, height, width = expected["input_shape"]
    with torch.inference_mode():
        outputs = model(synthetic_scenes(batch, height, width, seed=0))
    fraction = matched_fraction(
        expected["pred_logits"], expected["pred_boxes"], outputs["pred_logits"], outputs["pred_boxes"], atol=1e-4
    )
    assert fraction >= 0.98, f"only {fraction:.3f} of the reference queries reproduced"

    postprocessor = RTDETRPostProcessor(num_classes=80, use_focal_loss=True, num_top_queries=300)
    results = postprocessor(outputs, expected["orig_target_sizes"])
    assert all(r["scores"].shape == (300,) for r in results)
    assert _results_match(results, expected["results"]) >= 0.98
