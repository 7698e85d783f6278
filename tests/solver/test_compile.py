"""``compile: true`` (tools' --compile): regional torch.compile of the model before DDP, the EMA
copy left eager, and the state dict's names unchanged."""

from __future__ import annotations

from pathlib import Path

from rtdetr_spartan.nn.compile import compile_units
from rtdetr_spartan.solver import DetSolver
from tests.train_utils import make_tiny_dataset, tiny_cfg


def _compiled(module: object) -> bool:
    return getattr(module, "_compiled_call_impl", None) is not None


def test_compile_wraps_the_blocks_and_leaves_the_ema_eager(tmp_path: Path) -> None:
    data = make_tiny_dataset(tmp_path / "data", train=2, val=1)
    state = DetSolver(tiny_cfg(data, tmp_path / "compiled", compile=True)).setup_train()
    units = compile_units(state.module)
    assert units and all(_compiled(unit) for unit in units)
    assert state.ema is not None and not any(_compiled(m) for m in state.ema.module.modules())
    eager = DetSolver(tiny_cfg(data, tmp_path / "eager")).setup_train()
    assert list(state.module.state_dict()) == list(eager.module.state_dict())
    assert not any(_compiled(m) for m in eager.module.modules())
