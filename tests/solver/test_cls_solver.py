"""ClsSolver and its engine: lr schedule and scaling, loss, exact resume, cross-rank reductions."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from rtdetr_spartan.core import YAMLConfig, merge_dict
from rtdetr_spartan.misc.checkpoint import load_checkpoint
from rtdetr_spartan.misc.dist import all_reduce_batchnorm_stats
from rtdetr_spartan.nn.criterion import SoftTargetCrossEntropy
from rtdetr_spartan.optim.param_groups import scaled_lr
from rtdetr_spartan.solver import TASKS
from rtdetr_spartan.solver.cls_solver import ClsSolver, topk_evaluate
from rtdetr_spartan.solver.loaders import ShardSampler
from tests.cls_utils import SHAPES_CLS_CONFIG, make_tiny_cls_dataset, tiny_overrides
from tests.train_utils import read_json_lines


def test_linear_lr_scaling() -> None:
    assert scaled_lr(2.5e-3, 2048, 2048) == pytest.approx(2.5e-3)
    assert scaled_lr(2.5e-3, 256, 2048) == pytest.approx(3.125e-4)
    assert scaled_lr(2.5e-3, 256, None) == 2.5e-3


def test_soft_target_loss() -> None:
    logits = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    soft = torch.softmax(torch.randn(4, 6, generator=torch.Generator().manual_seed(1)), -1)
    expected = -(soft * logits.log_softmax(-1)).sum(-1).mean()
    assert torch.allclose(SoftTargetCrossEntropy()(logits, soft), expected)
    labels = torch.tensor([0, 5, 2, 2])
    assert torch.allclose(
        SoftTargetCrossEntropy()(logits.half(), labels), nn.functional.cross_entropy(logits.half().float(), labels)
    )


# ----------------------------------------------------------------------------- exact resume
@pytest.fixture(scope="module")
def cls_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_cls_dataset(tmp_path_factory.mktemp("shapes_cls"))


def _config(data: Path, out: Path, **extra: object) -> YAMLConfig:
    overrides = merge_dict(
        tiny_overrides(data, epochs=2), {"output_dir": str(out), "use_ema": True, "ema": {"decay": 0.9, "warmups": 2}}
    )
    return YAMLConfig(SHAPES_CLS_CONFIG, **merge_dict(overrides, extra))


def test_classification_task_is_registered() -> None:
    assert TASKS["classification"] is ClsSolver


@pytest.mark.slow
def test_resume_continues_like_an_uninterrupted_run(cls_data: Path, tmp_path: Path) -> None:
    full = ClsSolver(_config(cls_data, tmp_path / "full"))
    full.fit()
    # The same run stopped after epoch 0 (as a crash would), then resumed from last.pth.
    part = ClsSolver(_config(cls_data, tmp_path / "part"))
    part.run_epoch(part.setup_train(), 0, writer=None)
    assert load_checkpoint(tmp_path / "part" / "last.pth")["epoch"] == 0
    resumed = ClsSolver(_config(cls_data, tmp_path / "part", resume=str(tmp_path / "part" / "last.pth")))
    resumed.fit()
    assert resumed.last_epoch == 1
    done, again = load_checkpoint(tmp_path / "full" / "last.pth"), load_checkpoint(tmp_path / "part" / "last.pth")
    assert all(torch.equal(done["model"][k], again["model"][k]) for k in done["model"])
    assert all(torch.equal(done["ema"]["module"][k], again["ema"]["module"][k]) for k in done["ema"]["module"])
    assert done["lr_scheduler"]["last_epoch"] == again["lr_scheduler"]["last_epoch"] == 2 * 2
    assert done["optimizer"]["param_groups"][0]["lr"] == again["optimizer"]["param_groups"][0]["lr"]
    full_log, part_log = read_json_lines(tmp_path / "full" / "log.txt"), read_json_lines(tmp_path / "part" / "log.txt")
    assert [r["epoch"] for r in part_log] == [0, 1]
    assert part_log[1]["train_loss"] == full_log[1]["train_loss"]
    assert part_log[1]["test_top1"] == full_log[1]["test_top1"]
    # lr 4e-3 is for a total batch of 64: batch 8 on one process trains with 5e-4, reached after warm-up
    assert done["optimizer"]["param_groups"][0]["initial_lr"] == pytest.approx(4e-3 * 8 / 64)
    assert full_log[0]["train_lr"] == pytest.approx(1e-4 + (5e-4 - 1e-4) / 2)  # last step of warm-up


# ----------------------------------------------------------------------------- two gloo ranks
def _eval_setup() -> tuple[nn.Module, TensorDataset]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 7))
    data = TensorDataset(torch.randn(11, 3, 2, 2), torch.randint(0, 7, (11,)))
    return model, data


def _rank_worker(rank: int, world: int, out: str) -> None:
    # A file rendezvous in the test's folder: no port to guess, none another process can take.
    tdist.init_process_group("gloo", init_method=f"file://{Path(out) / 'rendezvous'}", rank=rank, world_size=world)
    try:
        bn = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.BatchNorm1d(2))
        bn[1].running_mean.fill_(rank + 1.0)
        bn[1].running_var.fill_(2.0 * rank + 1.0)
        bn[2].running_mean.fill_(-3.0 * rank)
        count = all_reduce_batchnorm_stats(bn)
        model, data = _eval_setup()
        loader = DataLoader(data, batch_size=4, sampler=ShardSampler(data))
        stats = topk_evaluate(model, loader, torch.device("cpu"), topk=(1, 5))
        torch.save({"count": count, "bn": bn.state_dict(), "stats": stats}, Path(out) / f"rank{rank}.pt")
    finally:
        tdist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.distributed
def test_batchnorm_stats_and_accuracy_are_reduced_across_ranks(tmp_path: Path) -> None:
    mp.spawn(_rank_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    for result in ranks:
        assert result["count"] == 4
        assert torch.allclose(result["bn"]["1.running_mean"], torch.full((4,), 1.5))
        assert torch.allclose(result["bn"]["1.running_var"], torch.full((4,), 2.0))
        assert torch.allclose(result["bn"]["2.running_mean"], torch.full((2,), -1.5))
    model, data = _eval_setup()
    single = topk_evaluate(model, DataLoader(data, batch_size=4), torch.device("cpu"), topk=(1, 5))
    logits, labels = model(data.tensors[0]), data.tensors[1]
    assert single["top1"] == pytest.approx(100.0 * (logits.argmax(-1) == labels).float().mean().item())
    assert single["num_images"] == 11
    for result in ranks:  # each rank saw its shard, both report the whole set
        assert result["stats"] == pytest.approx(single)
