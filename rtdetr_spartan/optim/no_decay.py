"""Parameter groups that exempt normalization, scale and bias parameters from weight decay.

Follows the design of SpaRTAN (henry-pay/SpaRTAN, Apache-2.0): its ImageNet recipe decays only
the multi-dimensional weights; every 1-D parameter, every bias, and every parameter whose name
contains one of ``skip_names`` (``norm``; ``gamma``: the SMixer's centre-boost factors) gets
no decay. As in the reference, the multi-dimensional block layer scales (``scale_1``,
``scale_2``: ``[1, C, 1, 1]``) and the CMixer's ``complex`` rotation weights are decayed.

Select it from a config in place of a regex list (see :func:`~rtdetr_spartan.optim.param_groups.param_groups_from_config`)::

    optimizer:
      type: AdamW
      params: {type: no_weight_decay_groups, skip_names: [norm, gamma]}
      weight_decay: 0.03
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from rtdetr_spartan.core import register

__all__ = ["is_no_decay", "no_weight_decay_groups"]


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
