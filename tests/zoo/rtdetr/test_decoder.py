from __future__ import annotations

import pytest
import torch

from rtdetr_spartan.zoo.rtdetr.criterion import SetCriterion
from rtdetr_spartan.zoo.rtdetr.decoder import RTDETRTransformer, generate_anchors
from rtdetr_spartan.zoo.rtdetr.matcher import HungarianMatcher
from tests.parity_utils import load_spec, matched_fraction, state_dict_spec

CLASSES, QUERIES, LAYERS = 5, 20, 3


def _decoder(eval_idx: int = -1, num_denoising: int = 12, layers: int = LAYERS) -> RTDETRTransformer:
    """Tiny decoder: two input levels (strides 8, 16) plus one extra stride-32 level."""
    torch.manual_seed(0)
    return RTDETRTransformer(
        num_classes=CLASSES,
        hidden_dim=32,
        num_queries=QUERIES,
        feat_channels=(16, 24),
        feat_strides=(8, 16),
        num_levels=3,
        nhead=4,
        num_decoder_layers=layers,
        dim_feedforward=64,
        num_denoising=num_denoising,
        eval_spatial_size=(64, 64),
        eval_idx=eval_idx,
    )


def _feats(batch: int = 2, height: int = 8, width: int = 8, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(batch, 16, height, width, generator=g),
        torch.randn(batch, 24, height // 2, width // 2, generator=g),
    ]


def _targets(counts: list[int], seed: int = 2) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "labels": torch.randint(0, CLASSES, (n,), generator=g),
            "boxes": torch.cat(
                [0.3 + 0.4 * torch.rand(n, 2, generator=g), 0.1 + 0.2 * torch.rand(n, 2, generator=g)], -1
            ),
        }
        for n in counts
    ]


def _criterion() -> SetCriterion:
    matcher = HungarianMatcher({"cost_class": 2, "cost_bbox": 5, "cost_giou": 2}, use_focal_loss=True)
    return SetCriterion(
        matcher,
        {"loss_vfl": 1, "loss_bbox": 5, "loss_giou": 2},
        ["vfl", "boxes"],
        alpha=0.75,
        gamma=2.0,
        num_classes=CLASSES,
    )


@pytest.mark.parametrize(
    ("name", "layers", "channels"),
    [("rtdetr_r18vd", 3, 256), ("rtdetr_r34vd", 4, 256), ("rtdetr_r50vd", 6, 256), ("rtdetr_r101vd", 6, 384)],
)
def test_state_dict_matches_reference_spec(name: str, layers: int, channels: int) -> None:
    entries, _ = load_spec(name)
    want = [(key.removeprefix("decoder."), shape, dtype) for key, shape, dtype in entries if key.startswith("decoder.")]
    decoder = RTDETRTransformer(
        num_classes=80,
        hidden_dim=256,
        num_queries=300,
        feat_channels=[channels] * 3,
        num_decoder_layers=layers,
        num_denoising=100,
        eval_spatial_size=[640, 640],
    )
    assert state_dict_spec(decoder) == want


def test_eval_outputs() -> None:
    decoder = _decoder().eval()
    with torch.no_grad():
        out = decoder(_feats())
    assert set(out) == {"pred_logits", "pred_boxes"}
    assert out["pred_logits"].shape == (2, QUERIES, CLASSES) and out["pred_boxes"].shape == (2, QUERIES, 4)
    assert ((out["pred_boxes"] >= 0) & (out["pred_boxes"] <= 1)).all()


def test_cached_anchors_equal_generated_ones() -> None:
    decoder = _decoder()
    anchors, valid = generate_anchors([(8, 8), (4, 4), (2, 2)], eps=1e-2)
    assert torch.equal(decoder.anchors, anchors) and torch.equal(decoder.valid_mask, valid)
    assert "anchors" not in decoder.state_dict()
    # First anchor of level 0: center (0.5/8, 0.5/8), side 0.05; last level side 0.2.
    torch.testing.assert_close(torch.sigmoid(anchors[0, 0]), torch.tensor([1 / 16, 1 / 16, 0.05, 0.05]))
    torch.testing.assert_close(torch.sigmoid(anchors[0, -1]), torch.tensor([0.75, 0.75, 0.2, 0.2]))
    assert valid.shape == (1, 84, 1) and valid.all()


def test_eval_at_another_size_builds_anchors_from_shapes() -> None:
    decoder = _decoder().eval()
    with torch.no_grad():
        out = decoder(_feats(height=12, width=16))
    assert out["pred_boxes"].shape == (2, QUERIES, 4) and torch.isfinite(out["pred_logits"]).all()


def test_training_outputs_and_eval_idx() -> None:
    """Matching queries never see the denoising queries, so in training every layer's output
    equals what the eval path returns for that ``eval_idx`` (input BN kept in eval mode)."""
    decoder = _decoder()
    decoder.train()
    decoder.input_proj.eval()
    feats, targets = _feats(), _targets([3, 1])
    out = decoder(feats, targets)
    assert len(out["aux_outputs"]) == LAYERS and len(out["dn_aux_outputs"]) == LAYERS
    # 3 boxes at most -> 12 // 3 = 4 groups of 3 positive + 3 negative queries.
    assert out["dn_meta"]["dn_num_group"] == 4 and out["dn_meta"]["dn_num_split"] == [24, QUERIES]
    assert out["dn_aux_outputs"][0]["pred_logits"].shape == (2, 24, CLASSES)
    per_layer = out["aux_outputs"][: LAYERS - 1] + [out]
    for layer in range(LAYERS):
        evaluator = _decoder(eval_idx=layer).eval()
        evaluator.load_state_dict(decoder.state_dict())
        with torch.no_grad():
            want = evaluator(feats)
        got = per_layer[layer]
        fraction = matched_fraction(
            want["pred_logits"], want["pred_boxes"], got["pred_logits"], got["pred_boxes"], 1e-5
        )
        assert fraction >= 0.95, f"layer {layer}: only {fraction:.3f} of the eval queries reproduced"


def _train_step(
    decoder: RTDETRTransformer, targets: list[dict[str, torch.Tensor]]
) -> tuple[dict[str, torch.Tensor], set[str]]:
    decoder.zero_grad(set_to_none=True)
    losses = _criterion()(decoder(_feats(), targets), targets)
    sum(losses.values()).backward()
    return losses, {name for name, p in decoder.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("counts", [[0, 0], [2, 0]])
def test_empty_images_keep_the_denoising_branch(counts: list[int]) -> None:
    """A batch without boxes must backpropagate through the same parameters as any other
    batch, or distributed training waits forever for the missing gradients."""
    decoder = _decoder().train()
    normal_losses, normal_grads = _train_step(decoder, _targets([3, 1]))
    losses, grads = _train_step(decoder, _targets(counts))
    assert set(losses) == set(normal_losses)
    assert {f"loss_vfl_dn_{i}" for i in range(LAYERS)} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    assert grads == normal_grads
    assert "denoising_class_embed.weight" in grads
    if sum(counts) == 0:
        for i in range(LAYERS):
            assert losses[f"loss_bbox_dn_{i}"].item() == 0.0 and losses[f"loss_giou_dn_{i}"].item() == 0.0


@pytest.mark.slow
def test_export_keeps_feature_sizes_dynamic() -> None:
    class Head(torch.nn.Module):
        def __init__(self, decoder: RTDETRTransformer) -> None:
            super().__init__()
            self.decoder = decoder

        def forward(self, fine: torch.Tensor, coarse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            out = self.decoder([fine, coarse])
            return out["pred_logits"], out["pred_boxes"]

    head = Head(_decoder(layers=1)).eval()
    h, w = torch.export.Dim("h", min=4, max=64), torch.export.Dim("w", min=4, max=64)
    program = torch.export.export(head, tuple(_feats()), dynamic_shapes=({2: 2 * h, 3: 2 * w}, {2: h, 3: w}))
    for height, width in ((8, 8), (12, 20)):
        feats = _feats(height=height, width=width, seed=3)
        with torch.no_grad():
            got, want = program.module()(*feats), head(*feats)
        # other kernels, other rounding: near-tied queries may be selected in another order
        assert got[0].shape == want[0].shape and got[1].shape == want[1].shape
        assert matched_fraction(want[0], want[1], got[0], got[1], atol=1e-5) >= 0.95


def test_bad_arguments_are_reported() -> None:
    with pytest.raises(ValueError, match="position_embed_type"):
        RTDETRTransformer(position_embed_type="rope")
    with pytest.raises(ValueError, match="eval_idx"):
        RTDETRTransformer(num_decoder_layers=3, eval_idx=5)
    decoder = _decoder()
    with pytest.raises(ValueError, match="expected 2 feature maps"):
        decoder.eval()(_feats()[:1])
    with pytest.raises(ValueError, match="needs targets"):
        decoder.train()(_feats())
