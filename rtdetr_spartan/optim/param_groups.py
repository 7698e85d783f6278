"""Optimizer parameter groups from the optimizer config's ``params``: the one construction path
for every task.

``params`` is one of:

- nothing: one group of every trainable parameter, with the optimizer's defaults;
- a list of regex groups, as RT-DETR's ``get_optim_params`` (lyuwenyu/RT-DETR, Apache-2.0):
  each entry holds a regex under ``params`` plus its own options (``lr``, ``weight_decay``, ...);
  a trainable parameter joins a group when ``re.findall(regex, name)`` finds anything, and the
  parameters no group selects form a last group with the optimizer's defaults;
- the name of a registered group function (``no_weight_decay_groups``), or a
  ``{type: name, ...}`` dict of one with its options.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from rtdetr_spartan.core import ConfigError, create

__all__ = ["param_groups_from_config", "scaled_lr"]


def _regex_groups(specs: list[Any], named: list[tuple[str, torch.nn.Parameter]]) -> list[dict[str, Any]]:
    owner: dict[str, str] = {}
    groups: list[dict[str, Any]] = []
    for index, spec in enumerate(specs):
        if not isinstance(spec, Mapping) or "params" not in spec:
            raise ConfigError(f"optimizer.params[{index}] needs a 'params' regex, got {spec!r}")
        pattern = str(spec["params"])
        chosen = []
        for name, param in named:
            if re.findall(pattern, name):
                if name in owner:
                    raise ConfigError(
                        f"parameter '{name}' is selected by optimizer.params pattern "
                        f"{owner[name]!r} and again by {pattern!r}"
                    )
                owner[name] = pattern
                chosen.append(param)
        groups.append({**{k: v for k, v in spec.items() if k != "params"}, "params": chosen})
    rest = [p for n, p in named if n not in owner]
    if rest:
        groups.append({"params": rest})
    return groups


def param_groups_from_config(
    optimizer_cfg: Mapping[str, Any], model: torch.nn.Module, cfg: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Parameter groups for ``model`` as ``optimizer_cfg['params']`` selects them (see the module
    docstring); ``cfg`` is the whole config, for the ``__share__`` keys of a group function.

    A parameter selected by two regex groups is an error naming it and both patterns.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    spec = optimizer_cfg.get("params")
    if not spec:
        return [{"params": [p for _, p in named]}]
    if isinstance(spec, str) or (isinstance(spec, Mapping) and "type" in spec):
        built = create(
            spec if isinstance(spec, Mapping) else {"type": spec}, cfg or {}, path="optimizer.params", model=model
        )
        if not isinstance(built, list):
            raise ConfigError(
                f"optimizer.params: {spec!r} returned {type(built).__name__}, expected a list of parameter groups"
            )
        return built
    if not isinstance(spec, list):
        raise ConfigError(
            "optimizer.params must be a list of regex groups or a registered group function "
            f"(e.g. no_weight_decay_groups), got {type(spec).__name__}"
        )
    return _regex_groups(spec, named)


def scaled_lr(base_lr: float, total_batch: int, base_lr_batch: int | None) -> float:
    """Linear scaling: ``base_lr * total_batch / base_lr_batch`` (``base_lr`` when unset)."""
    if base_lr_batch is None:
        return base_lr
    if base_lr_batch <= 0:
        raise ConfigError(f"base_lr_batch must be a positive batch size, got {base_lr_batch}")
    return base_lr * total_batch / base_lr_batch
