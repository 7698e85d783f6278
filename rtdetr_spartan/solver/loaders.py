# Follows the design of RT-DETR (lyuwenyu/RT-DETR, Apache-2.0).
"""Rebuild config-built DataLoaders for the run: samplers for distributed training and a seeded
generator, so that data order and worker seeds are reproducible and can be resumed.

Batch size is per process: with ``torchrun --nproc-per-node=N`` the total batch is
``batch_size x N``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sized
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.utils.data as data

from rtdetr_spartan.core import ConfigError
from rtdetr_spartan.misc.dist import get_rank, get_world_size, is_dist_initialized

if TYPE_CHECKING:
    from rtdetr_spartan.core import YAMLConfig

__all__ = ["ShardSampler", "check_batch_sizes", "prepare_eval_loader", "prepare_train_loader"]


class ShardSampler(data.Sampler[int]):
    """Contiguous shard of ``range(len(dataset))`` for this rank, without padding.

    Unlike ``DistributedSampler`` it never repeats samples, so every image is evaluated exactly
    once; ranks may get one sample more or less than each other.
    """

    def __init__(self, dataset: Sized, num_replicas: int | None = None, rank: int | None = None) -> None:
        self.num_replicas = get_world_size() if num_replicas is None else num_replicas
        self.rank = get_rank() if rank is None else rank
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank {self.rank} is outside 0..{self.num_replicas - 1}")
        per_rank = math.ceil(len(dataset) / self.num_replicas)
        self.start = min(len(dataset), per_rank * self.rank)
        self.stop = min(len(dataset), self.start + per_rank)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start


def _rebuild(
    loader: data.DataLoader, sampler: data.Sampler[int] | None, shuffle: bool, generator: torch.Generator | None
) -> data.DataLoader:
    """A loader like ``loader`` (same dataset, batching, collate, workers) with a new sampler."""
    if loader.batch_size is None:
        raise ValueError(
            f"{type(loader).__name__} over {type(loader.dataset).__name__} uses a custom "
            "batch_sampler; the solver needs a loader built with batch_size"
        )
    cls = type(loader) if type(loader).__init__ is data.DataLoader.__init__ else data.DataLoader
    extra: dict[str, Any] = {}
    if loader.num_workers > 0:
        extra = {"prefetch_factor": loader.prefetch_factor, "persistent_workers": loader.persistent_workers}
    return cls(
        loader.dataset,
        batch_size=loader.batch_size,
        shuffle=shuffle if sampler is None else None,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        generator=generator,
        **extra,
    )


def prepare_train_loader(loader: data.DataLoader, seed: int) -> data.DataLoader:
    """The training loader for this process.

    Shuffling follows the config's loader (a ``RandomSampler`` means shuffle). One process:
    shuffled by a generator seeded with ``seed``. Distributed: ``DistributedSampler`` seeded with
    ``seed`` (the same on every rank; call ``set_epoch`` each epoch). The returned
    loader's ``generator`` (seed + rank) also drives worker seeds; save its state to resume.
    """
    shuffle = isinstance(loader.sampler, data.RandomSampler)
    generator = torch.Generator().manual_seed(int(seed) + get_rank())
    sampler: data.Sampler[int] | None = None
    if is_dist_initialized():
        # Pads the last round with repeated samples so every rank runs the same number of steps.
        sampler = data.DistributedSampler(loader.dataset, shuffle=shuffle, seed=int(seed))
    return _rebuild(loader, sampler, shuffle, generator)


def prepare_eval_loader(loader: data.DataLoader) -> data.DataLoader:
    """The evaluation loader: in order, and sharded without repeats when distributed."""
    if not is_dist_initialized():
        return loader
    return _rebuild(loader, ShardSampler(cast(Sized, loader.dataset)), False, None)


def check_batch_sizes(cfg: YAMLConfig) -> None:
    """Each loader's ``batch_size`` (per process), when the config sets it, is an integer >= 1;
    checked before anything is built."""
    for key in ("train_dataloader", "val_dataloader"):
        spec = cfg.get(key)
        if not isinstance(spec, Mapping) or spec.get("batch_size") is None:
            continue
        value = spec["batch_size"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{cfg.path}: {key}.batch_size (per process) must be an integer >= 1, got {value!r}")
