"""DetSolver on a tiny RT-DETR and a generated shapes dataset (single process, CPU)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from torchvision.ops import box_convert

from rtdetr_spartan.core import ConfigError
from rtdetr_spartan.data import ImageReadError
from rtdetr_spartan.data.coco_eval import STAT_NAMES
from rtdetr_spartan.misc.checkpoint import load_checkpoint
from rtdetr_spartan.solver import TASKS, DetSolver, EpochResult, SolverHook, TrainState, build_solver
from rtdetr_spartan.solver.det_solver import check_finite_outputs, prediction_categories
from tests.train_utils import TINY_SPARTAN_CONFIG, dataset_overrides, make_tiny_dataset, read_json_lines, tiny_cfg


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("shapes"), train=4, val=3)


class RecordingHook(SolverHook):
    """Records what the loop hands its hooks, and what is on disk when they run."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def before_train(self, solver: Any, state: TrainState) -> None:
        self.calls.append(("before_train", solver.last_epoch))

    def after_epoch(self, solver: Any, state: TrainState, result: EpochResult, writer: Any) -> None:
        on_disk = load_checkpoint(solver.output_dir / "last.pth")["epoch"]
        self.calls.append(("after_epoch", (result.epoch, result.is_best, result.metric, on_disk, writer is not None)))

    def after_train(self, solver: Any, state: TrainState) -> None:
        self.calls.append(("after_train", solver.last_epoch))


@pytest.fixture(scope="module")
def one_epoch(shapes: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A 1-epoch run; returns its output dir and fit()'s result (a RecordingHook's calls
    under ``"hook_calls"``)."""
    out = tmp_path_factory.mktemp("run1")
    solver = DetSolver(tiny_cfg(shapes, out))
    hook = RecordingHook()
    solver.register_hook(hook)
    result = solver.fit()
    return out, {**result, "hook_calls": hook.calls}


def test_tasks_registry_and_unknown_task(shapes: Path, tmp_path: Path) -> None:
    assert TASKS["detection"] is DetSolver
    with pytest.raises(ValueError, match="task 'segmentation' has no solver.*detection"):
        build_solver(tiny_cfg(shapes, tmp_path, task="segmentation"))


def test_fit_writes_checkpoints_log_and_eval_files(one_epoch: tuple[Path, dict[str, Any]]) -> None:
    out, best = one_epoch
    for name in ("last.pth", "best.pth", "log.txt", "eval/results.json", "eval/summary.json"):
        assert (out / name).is_file(), name
    assert not list(out.glob("checkpoint*.pth"))  # checkpoint_freq 0 in the tiny config
    (record,) = read_json_lines(out / "log.txt")
    assert record["epoch"] == 0 and len(record["test_coco_eval_bbox"]) == 12
    assert best["best"] == {"metric": "AP", "value": record["test_coco_eval_bbox"][0], "epoch": 0}
    # fit() returns the last epoch's metrics: the 12 COCO statistics by name, per class
    final = best["final"]
    assert [final[name] for name in STAT_NAMES] == record["test_coco_eval_bbox"]
    assert final["num_images"] == 3 and {row["category_id"] for row in final["per_class"]} == {3, 7, 11, 20}
    # the logged total is the sum of the weighted criterion terms (main, auxiliary, denoising)
    terms = [v for k, v in record.items() if k.startswith("train_loss_")]
    assert len(terms) > 10 and record["train_loss"] == pytest.approx(sum(terms), rel=1e-5)
    summary = json.loads((out / "eval" / "summary.json").read_text())
    assert len(summary["stats"]) == 12 and summary["num_images"] == 3
    assert {row["category_id"] for row in summary["per_class"]} == {3, 7, 11, 20}


@pytest.mark.slow
def test_fit_with_the_spartan_backbone(shapes: Path, tmp_path: Path) -> None:
    solver = DetSolver(tiny_cfg(shapes, tmp_path, config=TINY_SPARTAN_CONFIG))
    best = solver.fit()["best"]
    assert type(solver.module.backbone).__name__ == "SpaRTAN" and best["epoch"] == 0
    (record,) = read_json_lines(tmp_path / "log.txt")
    terms = [v for k, v in record.items() if k.startswith("train_loss_")]
    assert (
        record["train_loss"] == pytest.approx(sum(terms), rel=1e-5) and (tmp_path / "eval" / "results.json").is_file()
    )


def test_checkpoint_holds_the_full_state(one_epoch: tuple[Path, dict[str, Any]], shapes: Path) -> None:
    out, _ = one_epoch
    ckpt = load_checkpoint(out / "last.pth")
    for key in ("model", "ema", "optimizer", "lr_scheduler", "rng", "config", "best"):
        assert key in ckpt, key
    assert ckpt["epoch"] == 0 and ckpt["ema"]["updates"] == 2
    assert ckpt["config"]["val_dataloader"]["dataset"]["img_folder"] == str(shapes / "val")
    (rng,) = ckpt["rng"]  # one process
    assert {"python", "numpy", "torch", "data"} <= set(rng)
    assert ckpt["lr_scheduler"]["last_epoch"] == 1
    # plain tensors and Python values only: loadable without unpickling arbitrary code
    safe = torch.load(out / "last.pth", map_location="cpu", weights_only=True)
    assert safe["epoch"] == 0 and isinstance(safe["rng"][0]["numpy"][1], list)


def test_results_are_original_pixels_and_category_ids(
    one_epoch: tuple[Path, dict[str, Any]], shapes: Path, tmp_path: Path
) -> None:
    """Recompute the detections of one validation image with the saved EMA weights."""
    out, _ = one_epoch
    results = json.loads((out / "eval" / "results.json").read_text())
    cfg = tiny_cfg(shapes, tmp_path)
    model = cfg.model.eval()
    model.load_state_dict(load_checkpoint(out / "best.pth")["ema"]["module"])
    dataset = cfg.val_dataloader.dataset
    image, target = dataset[0]
    assert image.shape[-1] == 64 and target["orig_size"].tolist() == [96, 96]
    with torch.no_grad():
        (det,) = cfg.postprocessor(model(image[None]), target["orig_size"][None])
    image_id = int(target["image_id"])
    mine = [r for r in results if r["image_id"] == image_id]
    assert len(mine) == len(det["scores"])
    expected_xywh = box_convert(det["boxes"], "xyxy", "xywh")
    expected_ids = [dataset.label_to_category[int(label)] for label in det["labels"]]
    assert [r["category_id"] for r in mine] == expected_ids
    torch.testing.assert_close(torch.tensor([r["bbox"] for r in mine]), expected_xywh, rtol=1e-4, atol=1e-3)
    assert {r["category_id"] for r in results} <= {3, 7, 11, 20}


def _final_weights(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    ckpt = load_checkpoint(path)
    return {"model": ckpt["model"], "ema": ckpt["ema"]["module"]}


@pytest.mark.slow
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(shapes: Path, tmp_path: Path) -> None:
    DetSolver(tiny_cfg(shapes, tmp_path / "straight", epochs=2, checkpoint_freq=1)).fit()
    DetSolver(tiny_cfg(shapes, tmp_path / "split", epochs=1)).fit()
    resumed = DetSolver(tiny_cfg(shapes, tmp_path / "resumed", epochs=2, resume=str(tmp_path / "split" / "last.pth")))
    resumed.fit()
    straight = _final_weights(tmp_path / "straight" / "last.pth")
    split = _final_weights(tmp_path / "resumed" / "last.pth")
    for part in ("model", "ema"):
        assert straight[part].keys() == split[part].keys()
        for name, tensor in straight[part].items():
            assert torch.allclose(tensor.float(), split[part][name].float(), rtol=1e-5, atol=1e-6), (part, name)
    assert [load_checkpoint(tmp_path / "straight" / f"checkpoint{e:04d}.pth")["epoch"] for e in (0, 1)] == [0, 1]
    best = load_checkpoint(tmp_path / "straight" / "best.pth")
    assert best["epoch"] == best["best"]["epoch"]  # best.pth is the state of the best epoch
    # The run really continued: epoch 1 only, from the stored optimizer and EMA state.
    assert [r["epoch"] for r in read_json_lines(tmp_path / "resumed" / "log.txt")] == [1]
    assert load_checkpoint(tmp_path / "resumed" / "last.pth")["ema"]["updates"] == 4


def test_tuning_loads_matching_weights_and_skips_the_rest(
    shapes: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    other = tiny_cfg(shapes, tmp_path, num_classes=6).model  # class heads of another size
    torch.save({"model": other.state_dict()}, tmp_path / "other.pth")
    solver = DetSolver(tiny_cfg(shapes, tmp_path / "out", tuning=str(tmp_path / "other.pth")))
    with caplog.at_level("INFO"):
        solver.setup_eval()
    own = solver.module.state_dict()
    name = "backbone.conv1.conv1_1.conv.weight"
    assert torch.equal(own[name], other.state_dict()[name])
    assert torch.equal(solver.eval_module.state_dict()[name], other.state_dict()[name])  # the EMA copy
    assert "shape mismatch" in caplog.text and "decoder.enc_score_head.weight" in caplog.text


def test_resume_accepts_published_weight_layouts(
    one_epoch: tuple[Path, dict[str, Any]], shapes: Path, tmp_path: Path
) -> None:
    """``{'ema': {'module': sd}}`` (published RT-DETR files) and ``{'model': sd}`` evaluate with -r."""
    trained = load_checkpoint(one_epoch[0] / "last.pth")
    name = "decoder.enc_score_head.weight"
    torch.save({"ema": {"module": trained["ema"]["module"]}}, tmp_path / "ema_only.pth")
    torch.save({"model": trained["model"], "last_epoch": 5}, tmp_path / "model_only.pth")
    for file, expected in (("ema_only.pth", trained["ema"]["module"]), ("model_only.pth", trained["model"])):
        solver = DetSolver(tiny_cfg(shapes, tmp_path / "out", resume=str(tmp_path / file)))
        solver.setup_eval()
        assert torch.equal(solver.module.state_dict()[name], expected[name])
        assert torch.equal(solver.eval_module.state_dict()[name], expected[name])  # EMA follows the file
    assert solver.last_epoch == 5


def test_resume_and_tuning_together_is_a_config_error(shapes: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'resume' .* and 'tuning' .* exclude each other"):
        DetSolver(tiny_cfg(shapes, tmp_path, resume="a.pth", tuning="b.pth"))


def test_non_finite_outputs_name_the_tensor() -> None:
    outputs = {"pred_logits": torch.zeros(1, 2, 3), "pred_boxes": torch.full((1, 2, 4), math.nan)}
    with pytest.raises(FloatingPointError, match=r"non-finite model outputs \(rank 0: pred_boxes\)"):
        check_finite_outputs(outputs)
    check_finite_outputs({"pred_logits": torch.zeros(1, 2, 3), "pred_boxes": torch.zeros(1, 2, 4)})


def test_detection_needs_a_postprocessor(shapes: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="detection needs a 'postprocessor'"):
        DetSolver(tiny_cfg(shapes, tmp_path, postprocessor=None)).val()


def test_nan_loss_raises_naming_epoch_and_iteration(shapes: Path, tmp_path: Path) -> None:
    # An absurd learning rate blows the weights up after the first step.
    cfg = tiny_cfg(shapes, tmp_path, optimizer={"lr": 1e30}, clip_max_norm=0.0)
    with pytest.raises(FloatingPointError, match=r"at epoch 0, iteration 1\b"):
        DetSolver(cfg).fit()
    assert not (tmp_path / "last.pth").exists()


def test_corrupt_image_error_names_the_file(shapes: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(shapes, data)
    broken = sorted((data / "train").iterdir())[1]
    broken.write_bytes(b"this is not a jpeg")
    with pytest.raises(ImageReadError, match=broken.name):
        DetSolver(tiny_cfg(data, tmp_path / "out")).fit()


def test_val_only_writes_eval_files(shapes: Path, tmp_path: Path) -> None:
    metrics = DetSolver(tiny_cfg(shapes, tmp_path)).val()
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert [metrics[name] for name in STAT_NAMES] == summary["stats"] and len(summary["stats"]) == 12
    assert metrics["per_class"] == summary["per_class"] and metrics["num_images"] == summary["num_images"] == 3
    assert isinstance(json.loads((tmp_path / "eval" / "results.json").read_text()), list)
    assert not (tmp_path / "last.pth").exists()


def test_hooks_run_around_the_epochs(one_epoch: tuple[Path, dict[str, Any]]) -> None:
    _, result = one_epoch
    before, (name, (epoch, is_best, metric, on_disk, has_writer)), after = result["hook_calls"]
    assert before == ("before_train", -1) and after == ("after_train", 0)
    assert name == "after_epoch" and (epoch, is_best, on_disk, has_writer) == (0, True, 0, True)
    assert metric == result["best"]["value"] == result["final"]["AP"]


def test_failing_evaluation_keeps_the_trained_epoch(shapes: Path, tmp_path: Path) -> None:
    """A validation image that cannot be read fails the run, but last.pth already holds the epoch."""
    data = tmp_path / "data"
    shutil.copytree(shapes, data)
    broken = sorted((data / "val").iterdir())[0]
    broken.write_bytes(b"this is not a jpeg")
    out = tmp_path / "out"
    with pytest.raises(ImageReadError, match=broken.name):
        DetSolver(tiny_cfg(data, out)).fit()
    last = load_checkpoint(out / "last.pth")
    assert last["epoch"] == 0 and last["ema"]["updates"] == 2 and last["best"]["epoch"] == -1
    assert not (out / "best.pth").exists() and not (out / "log.txt").exists()


def test_fresh_run_into_a_finished_run_is_refused(shapes: Path, tmp_path: Path) -> None:
    (tmp_path / "last.pth").write_bytes(b"an earlier run")
    with pytest.raises(ConfigError, match=rf"{tmp_path / 'last.pth'} exists: .* -r auto .* --overwrite"):
        DetSolver(tiny_cfg(shapes, tmp_path)).setup_train()
    assert (tmp_path / "last.pth").read_bytes() == b"an earlier run"
    with pytest.raises(ConfigError, match="'resume' .* and 'overwrite' exclude each other"):
        DetSolver(tiny_cfg(shapes, tmp_path, resume="auto", overwrite=True))


def test_overwrite_replaces_the_earlier_run(shapes: Path, tmp_path: Path) -> None:
    for name in ("last.pth", "best.pth", "checkpoint0003.pth", "log.txt", ".last.pth.x1.tmp"):
        (tmp_path / name).write_bytes(b"old")
    state = DetSolver(tiny_cfg(shapes, tmp_path, overwrite=True)).setup_train()
    assert isinstance(state, TrainState)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.slow  # a training run
def test_auto_resume_starts_fresh_then_continues(shapes: Path, tmp_path: Path) -> None:
    first = DetSolver(tiny_cfg(shapes, tmp_path, resume="auto", epochs=1))
    assert first.fit()["best"]["epoch"] == 0 and first.last_epoch == 0
    (tmp_path / ".last.pth.killed.tmp").write_bytes(b"partial")  # a kill during a save
    second = DetSolver(tiny_cfg(shapes, tmp_path, resume="auto", epochs=2))
    second.fit()
    assert second.last_epoch == 1 and [r["epoch"] for r in read_json_lines(tmp_path / "log.txt")] == [0, 1]
    assert not (tmp_path / ".last.pth.killed.tmp").exists()
    assert load_checkpoint(tmp_path / "last.pth")["ema"]["updates"] == 4


def test_no_weight_decay_groups_for_detection(shapes: Path, tmp_path: Path) -> None:
    params = {"type": "no_weight_decay_groups", "skip_names": ["norm"]}
    state = DetSolver(tiny_cfg(shapes, tmp_path, optimizer={"params": params, "weight_decay": 0.01})).setup_train()
    decay, no_decay = state.optimizer.param_groups
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert all(not n.endswith("bias") and "norm" not in n for n in decay["names"])
    assert "backbone.conv1.conv1_1.norm.weight" in no_decay["names"]
    trainable = sum(1 for p in state.module.parameters() if p.requires_grad)
    assert len(decay["params"]) + len(no_decay["params"]) == trainable


def test_training_scores_labels_by_the_training_datasets_categories(shapes: Path, tmp_path: Path) -> None:
    """A validation file that lists a subset of the categories maps contiguous labels to other
    ids than the training file; scoring in training uses the labels the model learned."""
    val = json.loads((shapes / "annotations" / "instances_val.json").read_text())
    dropped = sorted(c["id"] for c in val["categories"])[0]
    val["categories"] = [c for c in val["categories"] if c["id"] != dropped]
    val["annotations"] = [a for a in val["annotations"] if a["category_id"] != dropped]
    subset = tmp_path / "val_subset.json"
    subset.write_text(json.dumps(val))
    overrides = dataset_overrides(shapes)
    overrides["val_dataloader"]["dataset"]["ann_file"] = str(subset)
    solver = DetSolver(tiny_cfg(shapes, tmp_path / "out", val_dataloader=overrides["val_dataloader"]))
    state = solver.setup_train()
    train_mapping = state.train_loader.dataset.label_to_category
    assert dropped in train_mapping.values()
    assert state.val_loader.dataset.label_to_category != train_mapping  # the subset's own order differs
    assert prediction_categories(state) == train_mapping
    assert prediction_categories(solver.setup_eval()) == state.val_loader.dataset.label_to_category
