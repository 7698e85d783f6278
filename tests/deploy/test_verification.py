"""Export verification in both directions, on the parity fixtures' synthetic weights (seed 7,
whose detections all score within ~2e-3 of each other, all above 0.5): a near-tie that the
runtimes break differently passes, real graph bugs fail, and the figures are reported.

The broken exports are made here, in the test: by editing the exported graph (GridSample's
``align_corners``, an offset on ``boxes``, shifted ``labels``) or the eager model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from rtdetr_spartan.deploy.compare import QuerySelection
from rtdetr_spartan.deploy.export import DeployModel, ExportVerificationError, export_onnx, sample_inputs, verify_onnx
from rtdetr_spartan.deploy.from_config import load_config, model_info_from_config
from rtdetr_spartan.deploy.verification import torch_run
from tests.deploy.deploy_utils import R18_CONFIG, SPARTAN_T_CONFIG
from tests.parity_utils import state_dict_spec, synthetic_state_dict

SIZE = 128  # smallest stride-32 size with >= 300 anchors (num_queries)
SEED = 7


def _seed7_model(config: Path) -> DeployModel:
    cfg = load_config(config)
    model = cfg.build("model")
    model.load_state_dict(synthetic_state_dict(state_dict_spec(model), seed=SEED))
    return DeployModel(model, cfg.build("postprocessor")).eval()


def _info(config: Path = R18_CONFIG, size: int = SIZE):
    return model_info_from_config(load_config(config), (size, size))


@pytest.fixture(scope="module")
def spartan_t(tmp_path_factory: pytest.TempPathFactory) -> tuple[DeployModel, Path]:
    """The issue's model: RT-DETR with SpaRTAN-T and seed-7 weights, exported and verified."""
    module = _seed7_model(SPARTAN_T_CONFIG)
    path = tmp_path_factory.mktemp("spartan_t") / "spartan_t.onnx"
    result = export_onnx(module, path, _info(SPARTAN_T_CONFIG))
    assert result.agreement is not None and result.agreement.passes()
    return module, path


@pytest.fixture(scope="module")
def r18(tmp_path_factory: pytest.TempPathFactory) -> tuple[DeployModel, Path]:
    """RT-DETR-R18 (the SpaRTAN-T detector's head) with seed-7 weights, exported and verified."""
    module = _seed7_model(R18_CONFIG)
    path = tmp_path_factory.mktemp("r18") / "r18.onnx"
    result = export_onnx(module, path, _info())
    assert result.agreement is not None and result.agreement.passes()
    return module, path


def _sample() -> tuple[torch.Tensor, torch.Tensor]:
    return sample_inputs((SIZE, SIZE), 2, seed=1)  # what export_onnx verifies on


def _edited(path: Path, out: Path, edit: Callable[[onnx.ModelProto], None]) -> Path:
    model = onnx.load(str(path))
    edit(model)
    onnx.save(model, str(out))
    return out


def _rewrite_output(model: onnx.ModelProto, name: str, op: str, constant: np.ndarray) -> None:
    """Graph output ``name`` becomes ``op(its old value, constant)``."""
    producer = next(node for node in model.graph.node if name in node.output)
    producer.output[list(producer.output).index(name)] = f"{name}_unedited"
    model.graph.initializer.append(onnx.numpy_helper.from_array(constant, f"{name}_constant"))
    model.graph.node.append(onnx.helper.make_node(op, [f"{name}_unedited", f"{name}_constant"], [name]))


def _nudge_selection(model: onnx.ModelProto, delta: np.ndarray) -> None:
    """Add ``delta`` [N, A] to the anchor scores that the query-selection TopK ranks."""
    index, topk = next((i, node) for i, node in enumerate(model.graph.node) if node.op_type == "TopK")
    model.graph.initializer.append(onnx.numpy_helper.from_array(delta.astype(np.float32), "nudge"))
    model.graph.node.insert(index, onnx.helper.make_node("Add", [topk.input[0], "nudge"], ["nudged_scores"]))
    topk.input[0] = "nudged_scores"


def _closest_to_boundary(selection: QuerySelection) -> tuple[list[int], list[float]]:
    """Per image, the selected anchor that some detection comes from whose selection score is
    closest above the first unselected one, and that margin."""
    anchors, margins = [], []
    queries = selection.anchors.shape[1]
    for image in range(selection.scores.shape[0]):
        first_unselected = np.sort(selection.scores[image])[::-1][queries]
        used = np.unique(selection.anchors[image][selection.detection_queries[image]])
        above = selection.scores[image][used] - first_unselected
        anchors.append(int(used[np.argmin(above)]))
        margins.append(float(above.min()))
    return anchors, margins


@pytest.mark.slow
@pytest.mark.parametrize("push", [1e-5, 5e-3])
def test_query_selection_flip_passes_only_as_a_near_tie(r18, tmp_path: Path, push: float) -> None:
    """A runtime whose anchor scores differ by a rounding-sized amount deselects a boundary
    anchor: its detections are excused, as proven ties. Pushed by more than the tolerance, the
    same flip fails (the selection scores themselves disagree)."""
    module, path = r18
    images, sizes = _sample()
    _, selection = torch_run(module, images, sizes)
    assert selection is not None
    anchors, margins = _closest_to_boundary(selection)
    assert max(margins) < 1e-4  # these weights' selection is near-tied at the boundary
    delta = np.zeros_like(selection.scores)
    for image, (anchor, margin) in enumerate(zip(anchors, margins)):
        delta[image, anchor] = -(margin + push)  # just below the first unselected anchor
    flipped = _edited(path, tmp_path / "flipped.onnx", lambda m: _nudge_selection(m, delta))
    agreement = verify_onnx(flipped, module, images, sizes)
    d = agreement.detections
    assert d.total == 600 and d.matched >= 590 and d.max_matched_diff < 1e-4
    if push < 1e-3:
        assert agreement.passes(), agreement.describe()
        excused = {(e.image, e.anchor) for e in agreement.excused if e.reason == "selection"}
        assert excused == {(0, anchors[0]), (1, anchors[1])}
        assert agreement.selection_diff is not None and agreement.selection_diff < 1e-4
    else:
        assert not agreement.passes() and agreement.excused == () and agreement.unexplained == d.total - d.matched
        assert agreement.selection_diff == pytest.approx(max(margins) + push, rel=1e-2)


def _flip_align_corners(model: onnx.ModelProto) -> None:
    flipped = 0
    for node in model.graph.node:
        for attr in node.attribute:
            if node.op_type == "GridSample" and attr.name == "align_corners":
                attr.i, flipped = 1 - attr.i, flipped + 1
    assert flipped == 9  # 3 feature levels x 3 decoder layers


def _shift_boxes(model: onnx.ModelProto) -> None:
    _rewrite_output(model, "boxes", "Add", np.array([2.0], dtype=np.float32))  # 1-1.5 % of the images


def _shift_labels(model: onnx.ModelProto) -> None:
    _rewrite_output(model, "labels", "Add", np.array([1], dtype=np.int64))  # class c reported as c + 1


@pytest.mark.slow
@pytest.mark.parametrize(
    ("bug", "least_unexplained"), [(_flip_align_corners, 5), (_shift_boxes, 590), (_shift_labels, 590)]
)
def test_graph_bugs_fail(
    spartan_t, tmp_path: Path, bug: Callable[[onnx.ModelProto], None], least_unexplained: int
) -> None:
    """With these weights the detections hardly depend on where deformable attention samples:
    align_corners moves most of them by 1e-4 to 1e-3 of the image, a few by more (measured: 10
    of 600 beyond 1e-3, none a tie); the offset and the class shift move every one."""
    module, path = spartan_t
    agreement = verify_onnx(_edited(path, tmp_path / "broken.onnx", bug), module, *_sample())
    assert not agreement.passes(), agreement.describe()
    assert agreement.unexplained >= least_unexplained, agreement.describe()
    assert agreement.selection_diff is not None and agreement.selection_diff < 1e-5  # the encoder is intact


class _EagerShifted(nn.Module):
    """``module`` whose eager boxes (what the verification compares against) are off by 1 % of
    the image while the traced graph stays ``module``'s."""

    def __init__(self, module: DeployModel) -> None:
        super().__init__()
        self.module = module

    def forward(self, images: torch.Tensor, sizes: torch.Tensor) -> tuple[torch.Tensor, ...]:
        labels, boxes, scores = self.module(images, sizes)
        if torch.onnx.is_in_onnx_export():
            return labels, boxes, scores
        return labels, boxes + 0.01 * sizes.repeat(1, 2)[:, None, :], scores


@pytest.mark.slow
def test_export_refuses_a_wrong_graph_with_the_figures(r18, tmp_path: Path) -> None:
    module, _ = r18
    with pytest.raises(ExportVerificationError) as info:
        export_onnx(_EagerShifted(module), tmp_path / "m.onnx", _info())  # type: ignore[arg-type]
    message = str(info.value)
    assert "m.onnx" in message and "0/600 detections match" in message and "600 unexplained" in message


@pytest.mark.slow
def test_seed7_spartan_t_at_640_passes_through_the_tool(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The issue's case: ``tools/export_onnx.py -c rtdetr_spartan_t_6x_coco.yml -r <seed-7
    weights>``. Whether a near-tie flips depends on the CPU; every detection is reproduced or
    excused as a proven tie, and an excuse names a tie of the selection or the final top-K."""
    from tools.export_onnx import main

    model = load_config(SPARTAN_T_CONFIG).build("model")
    weights = tmp_path / "seed7.pth"
    torch.save({"model": synthetic_state_dict(state_dict_spec(model), seed=SEED)}, weights)
    out = tmp_path / "spartan_t.onnx"
    with caplog.at_level("INFO", logger="rtdetr_spartan.deploy.export"):
        assert main(["-c", str(SPARTAN_T_CONFIG), "-r", str(weights), "-o", str(out)]) == 0
    assert out.is_file() and "600 detections match within 0.001" in caplog.text
    assert "0 unexplained" in caplog.text
    excuses = [r.getMessage() for r in caplog.records if "excused image" in r.getMessage()]
    assert all("query-selection tie" in e or "final top-K tie" in e for e in excuses)
