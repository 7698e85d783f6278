"""Loader preparation: seeded, resumable shuffling and non-repeating evaluation shards."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from rtdetr_spartan.solver.loaders import ShardSampler, prepare_eval_loader, prepare_train_loader


def _order(loader: DataLoader) -> list[int]:
    return [int(i) for batch in loader for i in batch]


@pytest.mark.parametrize(
    ("length", "replicas", "expected"),
    [
        (7, 3, [[0, 1, 2], [3, 4, 5], [6]]),
        (2, 3, [[0], [1], []]),
        (4, 1, [[0, 1, 2, 3]]),
    ],
)
def test_shards_cover_every_sample_once(length: int, replicas: int, expected: list[list[int]]) -> None:
    shards = [list(ShardSampler(range(length), num_replicas=replicas, rank=r)) for r in range(replicas)]
    assert shards == expected
    assert [len(ShardSampler(range(length), num_replicas=replicas, rank=r)) for r in range(replicas)] == [
        len(s) for s in expected
    ]


def test_shard_rank_out_of_range() -> None:
    with pytest.raises(ValueError, match="rank 2 is outside 0..1"):
        ShardSampler(range(4), num_replicas=2, rank=2)


def test_train_loader_shuffles_reproducibly_and_resumably() -> None:
    config_loader = DataLoader(list(range(10)), batch_size=3, shuffle=True, drop_last=True)
    first = prepare_train_loader(config_loader, seed=4)
    assert (first.batch_size, first.drop_last) == (3, True)
    epoch0 = _order(first)
    state = first.generator.get_state()
    epoch1 = _order(first)
    assert epoch0 != epoch1 and sorted(epoch0) != epoch0
    again = prepare_train_loader(config_loader, seed=4)
    assert _order(again) == epoch0
    again.generator.set_state(state)  # what a resumed run does
    assert _order(again) == epoch1
    assert _order(prepare_train_loader(config_loader, seed=5)) != epoch0


def test_unshuffled_config_stays_in_order_and_eval_loader_is_untouched() -> None:
    sequential = DataLoader(list(range(5)), batch_size=2, shuffle=False)
    assert _order(prepare_train_loader(sequential, seed=0)) == [0, 1, 2, 3, 4]
    assert prepare_eval_loader(sequential) is sequential
    assert isinstance(prepare_train_loader(sequential, seed=0).generator, torch.Generator)
