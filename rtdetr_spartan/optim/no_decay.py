"""Parameter groups that exempt normalization, scale and bias parameters from weight decay.

Follows the design of SpaRTAN (henry-pay/SpaRTAN, Apache-2.0): its ImageNet recipe decays only
the multi-dimensional weights; every 1-D parameter, every bias, and every parameter whose name
contains one of ``skip_names`` (``norm``; ``gamma``: the SMixer's centre-boost factors) gets
no decay. As in the reference, the multi-dimensional block layer scales (``scale_1``,
``scale_2``: ``[1, C, 1, 1]``) and the CMixer's ``complex`` rotation weights are decayed.

Select it from a config in place of a regex list (see :func:`param_groups_for`)::

    optimizer:
      type: AdamW
      params: {type: no_weight_decay_groups, skip_names: [norm, gamma]}
      weight_decay: 0.03
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from rtdetr_spartan.core import ConfigError, create, register
from rtdetr_spartan.optim.param_groups import param_groups_from_config

__all__ = ["is_no_decay", "no_weight_decay_groups", "param_groups_for"]


def is_no_decay(name: str, param: torch.Tensor, skip_names: Sequence[str] = ("norm", "gamma")) -> bool:
    """Whether parameter ``name`` is exempt from weight decay: 1-D (scalars included), a bias,
    or a name containing any of ``skip_names``."""
    return param.ndim <= 1 or name.endswith("bias") or any(s in name for s in skip_names)


@register()
def no_weight_decay_groups(
    model: torch.nn.Module, skip_names: Sequence[str] = ("norm", "gamma")
) -> list[dict[str, Any]]:
    """Two groups over the trainable parameters of ``model``: ``[decay, no_decay]``.

    The second group sets ``weight_decay: 0``; the first uses the optimizer's default. Each group
    keeps its parameter names under ``names`` (torch optimizers keep extra group keys), so logs
    and tests can tell which parameter went where. An empty group is dropped.
    """
    decay: tuple[list[str], list[torch.nn.Parameter]] = ([], [])
    no_decay: tuple[list[str], list[torch.nn.Parameter]] = ([], [])
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        names, params = no_decay if is_no_decay(name, param, tuple(skip_names)) else decay
        names.append(name)
        params.append(param)
    groups = []
    if decay[1]:
        groups.append({"params": decay[1], "names": decay[0]})
    if no_decay[1]:
        groups.append({"params": no_decay[1], "names": no_decay[0], "weight_decay": 0.0})
    return groups


def param_groups_for(
    optimizer_cfg: Mapping[str, Any], model: torch.nn.Module, cfg: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Parameter groups as ``optimizer.params`` selects them.

    ``params`` may name a registered group function (``no_weight_decay_groups``) or be a
    ``{type: name, ...}`` dict of one with its options; anything else (a regex list, or nothing)
    goes to :func:`param_groups_from_config`.
    """
    spec = optimizer_cfg.get("params")
    if isinstance(spec, str) or (isinstance(spec, Mapping) and "type" in spec):
        built = create(
            spec if isinstance(spec, Mapping) else {"type": spec}, cfg or {}, path="optimizer.params", model=model
        )
        if not isinstance(built, list):
            raise ConfigError(
                f"optimizer.params: {spec!r} returned {type(built).__name__}, expected a list of parameter groups"
            )
        return built
    return param_groups_from_config(optimizer_cfg, model)
