from __future__ import annotations

import pytest
import torch
from torch import nn

from rtdetr_spartan.zoo.rtdetr.box_ops import box_cxcywh_to_xyxy
from rtdetr_spartan.zoo.rtdetr.denoising import (
    build_contrastive_denoising_group,
    denoising_attention_mask,
)
from rtdetr_spartan.zoo.rtdetr.utils import inverse_sigmoid
from tests.parity_utils import load_expected

CLASSES = 7


def _targets(counts: list[int], size: float = 0.1) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(sum(counts))
    return [
        {
            "labels": torch.randint(0, CLASSES, (n,), generator=g),
            "boxes": torch.cat([0.4 + 0.2 * torch.rand(n, 2, generator=g), torch.full((n, 2), size)], -1),
        }
        for n in counts
    ]


def _embed() -> nn.Embedding:
    torch.manual_seed(0)
    return nn.Embedding(CLASSES + 1, 8, padding_idx=CLASSES)


def _loop_mask(slots: int, groups: int, queries: int) -> torch.Tensor:
    """The reference's mask construction, written out group by group."""
    num_dn = 2 * slots * groups
    mask = torch.zeros(num_dn + queries, num_dn + queries, dtype=torch.bool)
    mask[num_dn:, :num_dn] = True
    for i in range(groups):
        rows = slice(2 * slots * i, 2 * slots * (i + 1))
        mask[rows, 2 * slots * (i + 1) : num_dn] = True
        mask[rows, : 2 * slots * i] = True
    return mask


@pytest.mark.parametrize(("slots", "groups"), [(1, 1), (3, 33), (5, 2), (2, 50)])
def test_attention_mask_matches_reference_construction(slots: int, groups: int) -> None:
    assert torch.equal(denoising_attention_mask(slots, groups, 11), _loop_mask(slots, groups, 11))


def test_layout_matches_reference_dn_meta() -> None:
    fixture = load_expected("criterion_r18vd_seed0")
    want = fixture["outputs"]["dn_meta"]
    content, boxes, mask, meta = build_contrastive_denoising_group(
        fixture["targets"], 80, 300, nn.Embedding(81, 4, padding_idx=80), num_denoising=100
    )
    assert meta["dn_num_group"] == want["dn_num_group"] == 33
    assert meta["dn_num_split"] == want["dn_num_split"]
    for got, ref in zip(meta["dn_positive_idx"], want["dn_positive_idx"], strict=True):
        assert torch.equal(got, ref)
    assert content.shape == (2, 198, 4) and boxes.shape == (2, 198, 4) and mask.shape == (498, 498)


def test_without_noise_queries_copy_the_targets() -> None:
    targets = _targets([2, 1])
    embed = _embed()
    content, boxes, _, meta = build_contrastive_denoising_group(
        targets, CLASSES, 5, embed, num_denoising=6, label_noise_ratio=0.0, box_noise_scale=0.0
    )
    assert meta["dn_num_group"] == 3 and meta["dn_num_split"] == [12, 5]
    labels = torch.tensor([[*targets[0]["labels"].tolist()], [targets[1]["labels"].item(), CLASSES]])
    for group in range(3):
        for half in (0, 2):  # positive and negative copy
            cols = slice(4 * group + half, 4 * group + half + 2)
            torch.testing.assert_close(content[:, cols], embed(labels))
            torch.testing.assert_close(boxes[0, cols], inverse_sigmoid(targets[0]["boxes"]))
            torch.testing.assert_close(boxes[1, cols.start], inverse_sigmoid(targets[1]["boxes"][0]))


def test_box_noise_bounds() -> None:
    targets = _targets([4], size=0.1)
    torch.manual_seed(1)
    _, boxes, _, meta = build_contrastive_denoising_group(
        targets, CLASSES, 5, _embed(), num_denoising=40, label_noise_ratio=0.0, box_noise_scale=1.0
    )
    noisy = torch.sigmoid(boxes[0]).reshape(meta["dn_num_group"], 2, 4, 4)
    shift = (box_cxcywh_to_xyxy(noisy) - box_cxcywh_to_xyxy(targets[0]["boxes"])).abs()
    half = 0.05
    assert shift[:, 0].max() <= half + 1e-4  # positives move less than half the box side
    # Negatives move 1..2 half sides; boxes whose corners crossed collapse to zero size, skip those.
    kept = (noisy[:, 1, :, 2:] > 1e-3).all(-1)
    assert kept.float().mean() > 0.5
    assert shift[:, 1][kept].min() >= half - 1e-4 and shift[:, 1].max() <= 2 * half + 1e-4


def test_label_noise_spares_padding() -> None:
    targets = _targets([3, 0])
    embed = _embed()
    torch.manual_seed(2)
    content, _, _, _ = build_contrastive_denoising_group(
        targets, CLASSES, 5, embed, num_denoising=30, label_noise_ratio=1.0, box_noise_scale=0.0
    )
    torch.testing.assert_close(content[1], embed.weight[CLASSES].expand(60, -1))
    changed = (content[0] != embed(targets[0]["labels"]).tile(20, 1)).any(-1).float().mean().item()
    assert 0.2 < changed < 0.8  # about half flipped (some flips redraw the same class)


def test_empty_batch_still_builds_one_padding_group() -> None:
    empty = [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}] * 2
    content, boxes, mask, meta = build_contrastive_denoising_group(empty, CLASSES, 5, _embed(), num_denoising=100)
    assert content.shape == (2, 2, 8) and boxes.shape == (2, 2, 4) and mask.shape == (7, 7)
    assert meta["dn_num_group"] == 1 and meta["dn_num_split"] == [2, 5]
    assert [len(idx) for idx in meta["dn_positive_idx"]] == [0, 0]
    assert torch.isfinite(boxes).all()
