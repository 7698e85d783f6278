"""Optimizer parameter groups selected by regular expressions over parameter names.

Follows RT-DETR's ``get_optim_params`` (lyuwenyu/RT-DETR, Apache-2.0): each entry of the
optimizer config's ``params`` list holds a regex under ``params`` plus its own options (``lr``,
``weight_decay``, ...); a trainable parameter joins a group when ``re.findall(regex, name)``
finds anything. Trainable parameters that no group selects form a last group with the
optimizer's defaults.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import torch


def param_groups_from_config(optimizer_cfg: Mapping[str, Any], model: torch.nn.Module) -> list[dict[str, Any]]:
    """Parameter groups for ``model`` as the optimizer config's ``params`` list selects them.

    A parameter selected by two groups is an error naming it and both patterns (torch would
    refuse it anyway, with a less helpful message).
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    specs = optimizer_cfg.get("params")
    if not specs:
        return [{"params": [p for _, p in named]}]
    if not isinstance(specs, list):
        raise ValueError(f"optimizer.params must be a list of groups, got {type(specs).__name__}")
    owner: dict[str, str] = {}
    groups: list[dict[str, Any]] = []
    for index, spec in enumerate(specs):
        if not isinstance(spec, Mapping) or "params" not in spec:
            raise ValueError(f"optimizer.params[{index}] needs a 'params' regex, got {spec!r}")
        pattern = str(spec["params"])
        chosen = []
        for name, param in named:
            if re.findall(pattern, name):
                if name in owner:
                    raise ValueError(
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
