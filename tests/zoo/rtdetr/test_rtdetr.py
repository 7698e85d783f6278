from __future__ import annotations

import torch

from rtdetr_spartan.nn.backbones.presnet import PResNet
from rtdetr_spartan.zoo.rtdetr.criterion import SetCriterion
from rtdetr_spartan.zoo.rtdetr.decoder import RTDETRTransformer
from rtdetr_spartan.zoo.rtdetr.hybrid_encoder import HybridEncoder
from rtdetr_spartan.zoo.rtdetr.matcher import HungarianMatcher
from rtdetr_spartan.zoo.rtdetr.rtdetr import RTDETR
from tests.parity_utils import matched_fraction

CLASSES = 4


def _model(multi_scale: list[int] | None = None) -> RTDETR:
    torch.manual_seed(0)
    backbone = PResNet(depth=18, return_idx=[1, 2, 3], freeze_at=-1, freeze_norm=False)
    encoder = HybridEncoder(
        in_channels=backbone.out_channels,
        feat_strides=backbone.out_strides,
        hidden_dim=32,
        nhead=4,
        dim_feedforward=64,
        expansion=0.5,
    )
    decoder = RTDETRTransformer(
        num_classes=CLASSES,
        hidden_dim=32,
        num_queries=10,
        feat_channels=encoder.out_channels,
        feat_strides=encoder.out_strides,
        nhead=4,
        num_decoder_layers=2,
        dim_feedforward=64,
        num_denoising=8,
        eval_spatial_size=[64, 64],
    )
    return RTDETR(backbone, encoder, decoder, multi_scale=multi_scale)


def _targets() -> list[dict[str, torch.Tensor]]:
    return [
        {"labels": torch.tensor([1, 3]), "boxes": torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.7, 0.6, 0.3, 0.2]])},
        {"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])},
    ]


def test_state_dict_order_is_backbone_decoder_encoder() -> None:
    prefixes = []
    for key in _model().state_dict():
        if key.split(".")[0] not in prefixes:
            prefixes.append(key.split(".")[0])
    assert prefixes == ["backbone", "decoder", "encoder"]


def test_training_forward_with_multi_scale() -> None:
    model = _model(multi_scale=[32, 64]).train()
    seen = set()
    matcher = HungarianMatcher({"cost_class": 2, "cost_bbox": 5, "cost_giou": 2}, use_focal_loss=True)
    criterion = SetCriterion(
        matcher, {"loss_vfl": 1, "loss_bbox": 5, "loss_giou": 2}, ["vfl", "boxes"], alpha=0.75, num_classes=CLASSES
    )
    hook = model.backbone.register_forward_pre_hook(lambda _, args: seen.add(tuple(args[0].shape[-2:])))
    torch.manual_seed(3)
    with torch.no_grad():
        for _ in range(6):
            losses = criterion(model(torch.rand(2, 3, 48, 48), _targets()), _targets())
    hook.remove()
    assert seen == {(32, 32), (64, 64)}
    assert all(torch.isfinite(v) for v in losses.values())


def test_no_resize_in_eval() -> None:
    model = _model(multi_scale=[96]).eval()
    seen = []
    model.backbone.register_forward_pre_hook(lambda _, args: seen.append(tuple(args[0].shape[-2:])))
    with torch.no_grad():
        model(torch.rand(1, 3, 64, 64))
    assert seen == [(64, 64)]


def test_deploy_fuses_and_keeps_outputs() -> None:
    model = _model().eval()
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        before = model(images)
        deployed = model.deploy()
        after = deployed(images)
    assert deployed is model and not model.training
    keys = list(model.state_dict())
    assert not any(".bottlenecks." in k and ".conv1." in k for k in keys)  # RepVGG branches fused
    assert "encoder.fpn_blocks.0.bottlenecks.0.conv.weight" in keys
    # fusing changes the floats slightly: near-tied queries may be selected in another order
    fraction = matched_fraction(before["pred_logits"], before["pred_boxes"], after["pred_logits"], after["pred_boxes"])
    assert fraction >= 0.95, f"only {fraction:.3f} of the queries reproduced after fusing"


def test_encoder_levels_must_match_the_backbone() -> None:
    """A SpaRTAN variant with other widths needs HybridEncoder.in_channels to follow: the
    detector refuses the mismatch at build time, naming the setting and the values."""
    from pathlib import Path

    import pytest

    from rtdetr_spartan.core import ConfigError, YAMLConfig

    config = Path(__file__).resolve().parents[3] / "configs" / "rtdetr" / "rtdetr_spartan_t_6x_coco.yml"
    wider = {"depths": [1, 1, 1, 1], "widths": [48, 96, 192, 384], "expand_ratios": [4, 4, 2, 2]}
    with pytest.raises(
        ConfigError, match=r"HybridEncoder.in_channels=\[64, 128, 256\] does not match .*\[96, 192, 384\]"
    ):
        YAMLConfig(config, SpaRTAN={"variant": wider}).build("model")
    model = YAMLConfig(config, SpaRTAN={"variant": wider}, HybridEncoder={"in_channels": [96, 192, 384]}).build("model")
    out = model.eval()(torch.rand(1, 3, 160, 160))
    assert out["pred_logits"].shape[0] == 1
