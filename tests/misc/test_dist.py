"""Distributed helpers: single-process fallbacks, and two real gloo processes on the CPU."""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import random
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as tdist

from rtdetr_spartan.misc import dist
from rtdetr_spartan.misc.meters import MetricLogger

SPAWN_TIMEOUT_S = 120


def test_single_process_fallbacks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert dist.init_distributed() is False
    assert (dist.get_rank(), dist.get_world_size(), dist.get_local_rank()) == (0, 1, 0)
    assert dist.is_main_process() and not dist.is_dist_initialized()
    losses = {"b": torch.tensor(2.0, requires_grad=True), "a": torch.tensor(1.0)}
    reduced = dist.reduce_dict(losses)
    assert list(reduced) == ["a", "b"] and not reduced["b"].requires_grad
    assert dist.all_gather_object({"x": 1}) == [{"x": 1}]
    assert dist.any_rank(True) and not dist.any_rank(False)
    dist.barrier()
    dist.cleanup()


def test_world_size_without_rendezvous_variables_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(RuntimeError, match="RANK.*torchrun"):
        dist.init_distributed(device="cpu")


def test_seed_everything_seeds_every_generator() -> None:
    assert dist.seed_everything(11) == 11
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    dist.seed_everything(11)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def _worker(rank: int, port: int, results: Any) -> None:
    """One rank of a 2-process gloo group joined through torchrun's variables, as a client of
    the parent's store (as torchrun's agent serves it); puts ``(rank, findings)`` or ``(rank, error)``."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE="2",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        TORCHELASTIC_USE_AGENT_STORE="True",
        OMP_NUM_THREADS="1",
    )
    try:
        assert dist.init_distributed(device="cpu")
        # rank 1 lacks key "b" (like denoising losses on a rank without boxes)
        losses = {"a": torch.tensor(1.0 + 2 * rank)} | ({"b": torch.tensor(2.0)} if rank == 0 else {})
        meters = MetricLogger()
        meters.update(x=float(rank + 1))
        meters.synchronize_between_processes()
        findings = {
            "rank": dist.get_rank(),
            "world": dist.get_world_size(),
            "reduced": {k: v.item() for k, v in dist.reduce_dict(losses).items()},
            "summed": {k: v.item() for k, v in dist.reduce_dict(losses, average=False).items()},
            "gathered": dist.all_gather_object(f"r{rank}"),
            "any_rank1": dist.any_rank(rank == 1),
            "any_none": dist.any_rank(False),
            "seed": dist.seed_everything(5),
            "draw": torch.rand(1).item(),
            "global_avg": meters.meters["x"].global_avg,
        }
        dist.barrier()
        dist.cleanup()
        results.put((rank, findings))
    except Exception as err:  # reported to the parent, which fails the test with it
        results.put((rank, repr(err)))


@pytest.mark.slow
@pytest.mark.distributed
def test_two_gloo_processes() -> None:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    # The parent holds the rendezvous store on a port the system picked (port 0): nothing can
    # take it between choosing and binding.
    store = tdist.TCPStore("127.0.0.1", 0, world_size=2, is_master=True, wait_for_workers=False)
    procs = [ctx.Process(target=_worker, args=(rank, store.port, results)) for rank in range(2)]
    for proc in procs:
        proc.start()
    found: dict[int, Any] = {}
    try:
        for _ in procs:
            rank, value = results.get(timeout=SPAWN_TIMEOUT_S)
            found[rank] = value
    except queue.Empty:
        pytest.fail(f"distributed workers did not answer within {SPAWN_TIMEOUT_S} s (got {found})")
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
    for rank in range(2):
        assert isinstance(found[rank], dict), found[rank]
        got = found[rank]
        assert (got["rank"], got["world"]) == (rank, 2)
        assert got["reduced"] == {"a": 2.0, "b": 1.0}
        assert got["summed"] == {"a": 4.0, "b": 2.0}
        assert got["gathered"] == ["r0", "r1"]
        assert got["any_rank1"] is True and got["any_none"] is False
        assert got["seed"] == 5 + rank
        assert got["global_avg"] == 1.5
    torch.manual_seed(5)
    assert found[0]["draw"] == torch.rand(1).item() != found[1]["draw"]
