"""Name registry for config-buildable classes and functions.

Follows the design of RT-DETR's workspace (lyuwenyu/RT-DETR, Apache-2.0): a class is
registered under its name; its constructor arguments come from the YAML section of the same
name; arguments listed in ``__inject__`` are themselves built from a registered name or a
``{type: Name, ...}`` dict, and arguments listed in ``__share__`` are read from the top level
of the config (``num_classes``, ``eval_spatial_size``, ...).

Unlike the reference, the registry only maps names to objects: it never stores config values,
so building is pure (see :mod:`rtdetr_spartan.core.workspace`).
"""

from __future__ import annotations

import difflib
from typing import Any, Callable, TypeVar

T = TypeVar("T")

_REGISTRY: dict[str, Any] = {}


def register(obj: T | None = None, *, name: str | None = None, force: bool = False) -> Any:
    """Register a class or function under its ``__name__`` (or ``name``).

    Usable as ``@register``, ``@register()`` or ``@register(name="Alias")``, or called directly
    on an existing object (``register(torch.optim.AdamW)``). Registering a different object
    under a taken name raises unless ``force`` is set.
    """

    def _do(target: T) -> T:
        key = name or str(getattr(target, "__name__", ""))
        known = _REGISTRY.get(key)
        if known is not None and known is not target and not force:
            raise KeyError(f"'{key}' is already registered as {known.__module__}.{known.__qualname__}")
        _REGISTRY[key] = target
        return target

    if obj is None:
        return _do
    return _do(obj)


def lookup(name: str) -> Any:
    """The object registered as ``name``; the error lists the closest registered names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY.keys(), n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise KeyError(f"no '{name}' in the registry{hint}") from None


def is_registered(name: Any) -> bool:
    return isinstance(name, str) and name in _REGISTRY


def registered_names() -> list[str]:
    return sorted(_REGISTRY)


def inject_names(obj: Callable[..., Any]) -> tuple[str, ...]:
    """Constructor arguments built from other registered objects."""
    return tuple(getattr(obj, "__inject__", ()))


def share_names(obj: Callable[..., Any]) -> tuple[str, ...]:
    """Constructor arguments read from the top level of the config."""
    return tuple(getattr(obj, "__share__", ()))
