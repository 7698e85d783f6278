"""Check config values against type annotations, so a mistyped override is an error naming the key.

Only what a YAML file can hold is checked (numbers, booleans, strings, null, lists, dicts);
annotations this module does not understand accept anything. Lossless conversions are made:
a string that parses as a number for an ``int`` / ``float`` (YAML reads ``1e-4`` as a string),
an integral float (``12.0``) for an ``int``.
"""

from __future__ import annotations

import collections.abc
import functools
import inspect
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

__all__ = ["ValueTypeError", "coerce", "describe", "parameter_hints"]

_SEQUENCES = (list, tuple, collections.abc.Sequence, collections.abc.MutableSequence)
_MAPPINGS = (dict, collections.abc.Mapping, collections.abc.MutableMapping)


class ValueTypeError(TypeError):
    """A value does not fit its annotation; the message says what was expected."""


def describe(hint: Any) -> str:
    """A short readable form of ``hint``: ``int``, ``float | None``, ``list[int]``."""
    if hint is type(None):
        return "None"
    if get_origin(hint) in (Union, types.UnionType):
        return " | ".join(describe(arg) for arg in get_args(hint))
    if isinstance(hint, type) and not get_args(hint):
        return hint.__name__
    return str(hint).replace("typing.", "").replace("collections.abc.", "")


def _fail(value: Any, hint: Any) -> ValueTypeError:
    return ValueTypeError(f"expected {describe(hint)}, got {value!r} ({type(value).__name__})")


def _coerce_int(value: Any, hint: Any) -> int:
    if isinstance(value, bool):
        raise _fail(value, hint)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise _fail(value, hint)


def _coerce_float(value: Any, hint: Any) -> float | int:
    if isinstance(value, bool):
        raise _fail(value, hint)
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise _fail(value, hint)


def _coerce_sequence(value: Any, hint: Any) -> Any:
    if not isinstance(value, (list, tuple)):
        raise _fail(value, hint)
    args = get_args(hint)
    if not args:
        return value
    if get_origin(hint) is tuple and not (len(args) == 2 and args[1] is Ellipsis):
        if len(value) != len(args):
            raise _fail(value, hint)
        item_hints = list(args)
    else:
        item_hints = [args[0]] * len(value)
    items = []
    for index, (item, item_hint) in enumerate(zip(value, item_hints)):
        try:
            items.append(coerce(item, item_hint))
        except ValueTypeError as err:
            raise ValueTypeError(f"{_fail(value, hint)} (item {index}: {err})") from None
    return type(value)(items)


def _coerce_union(value: Any, hint: Any) -> Any:
    for arg in get_args(hint):
        try:
            return coerce(value, arg)
        except ValueTypeError:
            continue
    raise _fail(value, hint)


def coerce(value: Any, hint: Any) -> Any:
    """``value`` if it fits ``hint`` (converted where lossless); raises :class:`ValueTypeError`."""
    origin = get_origin(hint)
    if hint is Any or hint is inspect.Parameter.empty or isinstance(hint, (str, typing.TypeVar)):
        return value
    if origin in (Union, types.UnionType):
        return _coerce_union(value, hint)
    if origin is Literal:
        if value in get_args(hint):
            return value
        raise _fail(value, hint)
    if hint is type(None) or hint is None:
        if value is None:
            return None
        raise _fail(value, hint)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _fail(value, hint)
    if hint is int:
        return _coerce_int(value, hint)
    if hint is float:
        return _coerce_float(value, hint)
    if hint is str:
        if isinstance(value, str):
            return value
        raise _fail(value, hint)
    if hint is Path:
        if isinstance(value, (str, Path)):
            return value
        raise _fail(value, hint)
    if origin in _SEQUENCES or hint in _SEQUENCES:
        return _coerce_sequence(value, hint)
    if origin in _MAPPINGS or hint in _MAPPINGS:
        if isinstance(value, collections.abc.Mapping):
            return value
        raise _fail(value, hint)
    if isinstance(hint, type) and origin is None:
        if isinstance(value, hint):
            return value
        raise _fail(value, hint)
    return value  # an annotation not checked here (Callable[...], Protocols, ...)


@functools.cache
def parameter_hints(target: Any) -> dict[str, Any]:
    """Resolved annotations of ``target``'s constructor (or function) parameters; those that
    cannot be resolved (a name only imported for type checking, ...) are left out."""
    func = target.__init__ if inspect.isclass(target) else target
    try:
        hints = typing.get_type_hints(func)
    except Exception:  # some annotation does not resolve: resolve the others one by one
        hints = {}
        namespace = getattr(func, "__globals__", {})
        for name, param in inspect.signature(func).parameters.items():
            annotation = param.annotation
            if isinstance(annotation, str):
                try:
                    # what typing.get_type_hints does for each string annotation
                    annotation = eval(annotation, dict(namespace))
                except Exception:
                    continue
            if annotation is not inspect.Parameter.empty:
                hints[name] = annotation
    hints.pop("return", None)
    return hints
