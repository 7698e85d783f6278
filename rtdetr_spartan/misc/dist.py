# Follows the design of RT-DETR (lyuwenyu/RT-DETR, Apache-2.0).
"""Distributed helpers for ``torchrun`` launches (``env://``) that degrade to no-ops in one process.

``init_distributed`` reads the variables ``torchrun`` sets (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``); without them, or with ``WORLD_SIZE=1``, the
program runs as a single process and every helper here behaves as if ``world_size == 1``.
Backend: NCCL when the run uses CUDA, gloo on the CPU.
"""

from __future__ import annotations

import datetime
import logging
import os
import random
from typing import Any, Mapping

import numpy as np
import torch
import torch.distributed as tdist
from torch import nn

__all__ = [
    "all_gather_object",
    "all_reduce_batchnorm_stats",
    "any_rank",
    "barrier",
    "cleanup",
    "collective_device",
    "get_local_rank",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_dist_initialized",
    "is_main_process",
    "reduce_dict",
    "seed_everything",
    "wrap_model",
]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = datetime.timedelta(minutes=30)


def is_dist_initialized() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def get_rank() -> int:
    return tdist.get_rank() if is_dist_initialized() else 0


def get_world_size() -> int:
    return tdist.get_world_size() if is_dist_initialized() else 1


def get_local_rank() -> int:
    """This process's index on its machine (``LOCAL_RANK`` from torchrun, else 0)."""
    return int(os.environ.get("LOCAL_RANK", "0")) if is_dist_initialized() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def _env_world_size() -> int:
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable WORLD_SIZE must be an integer, got {raw!r}") from None


def init_distributed(device: str | None = None, timeout: datetime.timedelta = DEFAULT_TIMEOUT) -> bool:
    """Join the process group described by torchrun's environment; ``True`` when distributed.

    ``device``: ``"cpu"`` forces gloo; ``"cuda"`` (or ``None`` with CUDA available) uses NCCL and
    binds this process to ``cuda:LOCAL_RANK``. Calling it again after a successful init is a no-op.
    """
    if is_dist_initialized():
        return True
    if _env_world_size() <= 1:
        return False
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(
            f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} is not set; launch with torchrun"
        )
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if restart is None:
        tdist.init_process_group(backend=backend, init_method="env://", timeout=timeout)
    else:
        # Under torchrun every attempt of an elastic restart rendezvouses through the agent's store,
        # which keeps the keys of the failed attempt: without a per-attempt prefix a restarted rank
        # can read a dead peer's address and gloo's connect fails ("Connection refused") or hangs.
        store, rank, world_size = next(tdist.rendezvous("env://", timeout=timeout))
        store = tdist.PrefixStore(f"rtdetr_spartan/attempt_{restart}", store)
        tdist.init_process_group(backend=backend, store=store, rank=rank, world_size=world_size, timeout=timeout)
    logger.info("distributed: rank %d of %d, backend %s", get_rank(), get_world_size(), backend)
    return True


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if is_dist_initialized():
        tdist.barrier()


def cleanup() -> None:
    """Leave the process group, if one was joined."""
    if is_dist_initialized():
        tdist.destroy_process_group()


def collective_device() -> torch.device:
    """Where tensors for a collective must live: the current GPU under NCCL, else the CPU."""
    if is_dist_initialized() and tdist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@torch.no_grad()
def reduce_dict(data: Mapping[str, torch.Tensor], average: bool = True) -> dict[str, torch.Tensor]:
    """All-reduce a dict of scalar tensors over the ranks; mean when ``average``.

    Ranks may hold different keys (e.g. no denoising losses on a rank whose batch has no
    boxes): the result has the union of the keys, a missing key counting as 0 on that rank.
    Values come back detached, as float32 on this rank's collective device.
    """
    if get_world_size() < 2:
        return {k: data[k].detach() for k in sorted(data)}
    keys = sorted(set().union(*all_gather_object(sorted(data))))
    if not keys:
        return {}
    device = collective_device()
    zero = torch.zeros((), device=device)
    values = torch.stack([data[k].detach().reshape(()).float().to(device) if k in data else zero for k in keys])
    tdist.all_reduce(values)
    if average:
        values /= get_world_size()
    return dict(zip(keys, values))


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is true on at least one rank (collective; the same answer everywhere)."""
    if get_world_size() < 2:
        return bool(flag)
    value = torch.tensor(1.0 if flag else 0.0, device=collective_device())
    tdist.all_reduce(value, op=tdist.ReduceOp.MAX)
    return bool(value.item() > 0)


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in one process."""
    if get_world_size() < 2:
        return [obj]
    gathered: list[Any] = [None] * get_world_size()
    tdist.all_gather_object(gathered, obj)
    return gathered


def seed_everything(seed: int, per_rank: bool = True) -> int:
    """Seed python ``random``, NumPy and torch (CPU and CUDA) with ``seed`` (+ rank when
    ``per_rank``, so that random augmentation differs between ranks). Returns the seed used."""
    used = int(seed) + (get_rank() if per_rank else 0)
    random.seed(used)
    np.random.seed(used % 2**32)
    torch.manual_seed(used)
    return used


def wrap_model(model: nn.Module, device: torch.device, sync_bn: bool = False, find_unused: bool = False) -> nn.Module:
    """``model`` in ``DistributedDataParallel`` when distributed (first converted to
    ``SyncBatchNorm`` with ``sync_bn`` on CUDA); ``model`` itself in one process."""
    if not is_dist_initialized():
        return model
    if sync_bn and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    elif sync_bn:
        logger.warning("sync_bn: SyncBatchNorm needs CUDA; BatchNorm stays per process on %s", device)
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=find_unused)


@torch.no_grad()
def all_reduce_batchnorm_stats(module: nn.Module) -> int:
    """Average the running mean/var of every BatchNorm layer of ``module`` over all ranks.

    Each rank's BatchNorm statistics drift apart (different data, no SyncBatchNorm on the CPU);
    averaging them after an epoch makes every rank evaluate and save the same model (SpaRTAN's
    recipe). Returns the number of tensors averaged (0 in one process).
    """
    if get_world_size() < 2:
        return 0
    tensors = [
        buf
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        for buf in (m.running_mean, m.running_var)
        if buf is not None
    ]
    if not tensors:
        return 0
    flat = torch.cat([t.reshape(-1).float() for t in tensors]).to(collective_device())
    tdist.all_reduce(flat)
    flat /= get_world_size()
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()
    return len(tensors)
