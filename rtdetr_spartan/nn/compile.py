"""Regional compilation: compile each repeated block instead of the whole model.

Whole-model ``torch.compile`` of a detector traces hundreds of modules into one graph, which
takes minutes (and, for SpaRTAN on the CPU, ran slower than eager). PyTorch's regional
compilation recipe compiles the repeated unit once; every instance of the same class then
reuses the compiled code, so compile time is bounded by the number of distinct block shapes.

A class opts in with ``compile_unit: ClassVar[bool] = True``.
"""

from __future__ import annotations

import logging

from torch import nn

logger = logging.getLogger(__name__)


def compile_units(model: nn.Module) -> list[nn.Module]:
    """The submodules of ``model`` whose class is marked as a compile unit (outermost only)."""
    units: list[nn.Module] = []
    covered: set[int] = set()
    for module in model.modules():
        if id(module) in covered:
            continue
        if getattr(type(module), "compile_unit", False):
            units.append(module)
            covered.update(id(sub) for sub in module.modules())
    return units


def compile_regional(model: nn.Module, *, dynamic: bool | None = False, fullgraph: bool = False) -> nn.Module:
    """Compile every compile unit of ``model`` in place and return ``model``.

    ``dynamic=False`` (the default) specialises each block to its input shape: with torch's
    automatic dynamic shapes (``None``) inductor failed on SpaRTAN's second block shape
    (``cannot determine truth value of Relational``). Multi-scale training therefore compiles a
    block once per input size, up to dynamo's recompile limit, past which that size runs eager.

    Parameters and the state dict are untouched (``nn.Module.compile`` wraps only the call),
    so checkpoints written from a compiled model load into an eager one and back.

    Raises:
        ValueError: the model holds no compile unit (nothing would be compiled).
    """
    units = compile_units(model)
    if not units:
        raise ValueError(f"{type(model).__name__} holds no module marked compile_unit; nothing to compile")
    for unit in units:
        unit.compile(dynamic=dynamic, fullgraph=fullgraph)
    logger.info("regional compilation: %d blocks of %d kinds", len(units), len({type(u) for u in units}))
    return model


__all__ = ["compile_regional", "compile_units"]
