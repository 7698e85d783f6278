"""Export verification in both directions: a near-tie that the runtimes break differently
passes, a wrong graph fails, and the figures are reported."""

from __future__ import annotations

import logging
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from rtdetr_spartan.deploy.compare import detection_difference
from rtdetr_spartan.deploy.export import DeployModel, ExportVerificationError, export_onnx, sample_inputs, verify_onnx
from rtdetr_spartan.deploy.from_config import build_deploy_model, load_config, model_info_from_config
from tests.deploy.deploy_utils import R18_CONFIG
from tests.parity_utils import state_dict_spec, synthetic_state_dict

SIZE = 128  # smallest stride-32 size with >= 300 anchors (num_queries)


class _EagerOnly(nn.Module):
    """``module`` whose eager outputs (what the verification compares against) are changed by
    ``edit`` while the traced graph stays ``module``'s: a stand-in for a runtime that breaks a
    tie, or computes something, differently from PyTorch."""

    def __init__(self, module: DeployModel, edit) -> None:
        super().__init__()
        self.module, self.edit = module, edit

    def forward(self, images: torch.Tensor, sizes: torch.Tensor) -> tuple[torch.Tensor, ...]:
        labels, boxes, scores = self.module(images, sizes)
        if torch.onnx.is_in_onnx_export():
            return labels, boxes, scores
        return self.edit(labels.clone(), boxes.clone(), scores.clone(), sizes)


def _flip_last(labels: torch.Tensor, boxes: torch.Tensor, scores: torch.Tensor, sizes: torch.Tensor):
    """The lowest-ranked detection of each image becomes another query's: other label, box
    moved by a tenth of the image (as the near-tied query selection of issue reports did)."""
    labels[:, -1] = (labels[:, -1] + 1) % 80
    boxes[:, -1] += 0.1 * sizes.repeat(1, 2)
    return labels, boxes, scores


def _shift_all(labels: torch.Tensor, boxes: torch.Tensor, scores: torch.Tensor, sizes: torch.Tensor):
    """Every box off by 1 % of the image: what a wrong scaling or sampling in the graph gives."""
    return labels, boxes + 0.01 * sizes.repeat(1, 2)[:, None, :], scores


@pytest.fixture(scope="module")
def r18() -> DeployModel:
    torch.manual_seed(0)
    return build_deploy_model(load_config(R18_CONFIG))


@pytest.fixture(scope="module")
def r18_sensitive() -> DeployModel:
    """R18 with the parity fixtures' weights (norm scales near 1, biases near 0): unlike the
    default initialisation, whose detections hardly depend on the image, its detections move
    with the features, so a sampling error in the graph shows."""
    cfg = load_config(R18_CONFIG)
    model = cfg.build("model")
    model.load_state_dict(synthetic_state_dict(state_dict_spec(model), seed=0))
    return DeployModel(model, cfg.build("postprocessor")).eval()


def _info():
    return model_info_from_config(load_config(R18_CONFIG), (SIZE, SIZE))


@pytest.mark.slow
def test_flipped_near_tie_passes_and_is_reported(r18: DeployModel, tmp_path: Path, caplog) -> None:
    wrapped = _EagerOnly(r18, _flip_last)
    with caplog.at_level(logging.INFO, logger="rtdetr_spartan.deploy.export"):
        result = export_onnx(wrapped, tmp_path / "m.onnx", _info())  # type: ignore[arg-type]
    agreement = result.agreement
    assert agreement is not None
    # batch 2 at one size: 600 detections, the two flipped ones unmatched, the rest within 1e-3
    assert (agreement.total, agreement.matched) == (600, 598)
    assert agreement.top_matched == agreement.top_total == 60
    assert result.max_abs_diff is not None and result.max_abs_diff < 1e-4
    assert "598/600 detections (99.7 %)" in caplog.text and "60/60 high-scoring" in caplog.text
    # the old all-detections check would have rejected this export
    images, sizes = sample_inputs((SIZE, SIZE), 2, seed=1)
    with torch.no_grad():
        ref = [t.numpy() for t in r18(images, sizes)]
        got = [t.numpy() for t in wrapped(images, sizes)]
    assert detection_difference(tuple(ref), tuple(got), sizes.numpy()) > 0.05


@pytest.mark.slow
def test_wrong_outputs_fail_with_the_figures(r18: DeployModel, tmp_path: Path) -> None:
    with pytest.raises(ExportVerificationError) as info:
        export_onnx(_EagerOnly(r18, _shift_all), tmp_path / "m.onnx", _info())  # type: ignore[arg-type]
    message = str(info.value)
    assert "m.onnx" in message and "0/600 detections (0.0 %)" in message and "0/60 high-scoring" in message


@pytest.mark.slow
def test_align_corners_changed_in_the_graph_fails(r18_sensitive: DeployModel, tmp_path: Path) -> None:
    """A real graph bug: GridSample (deformable attention) with align_corners flipped."""
    path = tmp_path / "m.onnx"
    result = export_onnx(r18_sensitive, path, _info())
    assert result.agreement is not None and result.agreement.passes(0.95)
    model = onnx.load(str(path))
    flipped = 0
    for node in model.graph.node:
        for attr in node.attribute:
            if node.op_type == "GridSample" and attr.name == "align_corners":
                attr.i, flipped = 1 - attr.i, flipped + 1
    assert flipped == 9  # 3 feature levels x 3 decoder layers
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    agreement = verify_onnx(broken, r18_sensitive, *sample_inputs((SIZE, SIZE), 2, seed=1))
    assert not agreement.passes(0.95), agreement.describe()
    assert agreement.matched_fraction < 0.8 and agreement.top_matched < 0.8 * agreement.top_total
