"""Pure object building from a loaded config: ``create(spec, cfg)``.

Follows RT-DETR's ``create`` semantics (lyuwenyu/RT-DETR, Apache-2.0):
- a registered *name* builds the class with the config section of that name as keyword
  arguments; a ``{type: Name, ...}`` dict builds ``Name`` with that section deep-merged with the
  dict's other keys;
- arguments listed in the class's ``__share__`` come from the top level of the config when it
  has them (top level wins, as in the reference);
- arguments listed in ``__inject__`` that hold a registered name or a ``{type: ...}`` dict are
  built recursively; a registered function is passed as the function itself.

Unlike the reference, nothing global is modified, every value is deep-copied before use, and
a keyword that the constructor does not take, or a value that does not fit the parameter's
annotation (``lr: abc`` for ``lr: float``), is an error naming its key path.
"""

from __future__ import annotations

import copy
import difflib
import inspect
from typing import Any, Mapping

from rtdetr_spartan.core.registry import inject_names, is_registered, lookup, share_names
from rtdetr_spartan.core.value_types import ValueTypeError, coerce, parameter_hints


class ConfigError(ValueError):
    """A config value cannot be built; the message names its key path."""


def _signature_params(target: Any) -> tuple[list[str], bool]:
    """Keyword names a callable accepts (without ``self``) and whether it takes ``**kwargs``."""
    func = target.__init__ if inspect.isclass(target) else target
    params = list(inspect.signature(func).parameters.values())
    if inspect.isclass(target) and params and params[0].name == "self":
        params = params[1:]
    names = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return names, any(p.kind is p.VAR_KEYWORD for p in params)


def _check_keys(target: Any, kwargs: Mapping[str, Any], inline: Mapping[str, Any], name: str, path: str) -> None:
    """Reject keywords the constructor does not take, naming the YAML key that holds them:
    ``path.key`` for keys written inline in a ``{type: ...}`` dict, ``Name.key`` for keys of the
    top-level section ``Name``."""
    names, open_ended = _signature_params(target)
    if open_ended:
        return
    for key in kwargs:
        if key not in names:
            where = f"{path}.{key}" if key in inline or path == name else f"{name}.{key} (building {path})"
            close = difflib.get_close_matches(key, names, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ConfigError(f"{where}: {target.__name__} takes no argument '{key}'{hint} (valid: {', '.join(names)})")


def _check_types(
    target: Any, kwargs: dict[str, Any], inline: Mapping[str, Any], name: str, path: str, skip: set[str]
) -> None:
    """Check (and losslessly convert, e.g. ``'1e-4'`` to a float) the config values against the
    constructor's annotations; ``skip``: injected and code-supplied arguments."""
    hints = parameter_hints(target)
    shared = set(share_names(target))
    for key, value in kwargs.items():
        if key in skip or key not in hints:
            continue
        try:
            kwargs[key] = coerce(value, hints[key])
        except ValueTypeError as err:
            if key in shared:
                where = f"{key} (top-level, building {path})"
            else:
                where = f"{path}.{key}" if key in inline or path == name else f"{name}.{key} (building {path})"
            raise ConfigError(f"{where}: {err}, for {target.__name__}({key})") from None


def _lookup(name: str, path: str) -> Any:
    try:
        return lookup(name)
    except KeyError as err:
        raise ConfigError(f"{path}: {err.args[0]}") from None


def _build_injected(value: Any, cfg: Mapping[str, Any], path: str) -> Any:
    if isinstance(value, str):
        if not is_registered(value):
            _lookup(value, path)  # raises with close names
        return create(value, cfg, path=path)
    if isinstance(value, Mapping):
        if "type" not in value:
            raise ConfigError(f"{path}: an injected dict needs a 'type' key, got keys {sorted(value)}")
        return create(dict(value), cfg, path=path)
    return copy.deepcopy(value)


def create(spec: str | Mapping[str, Any], cfg: Mapping[str, Any], path: str | None = None, **extra: Any) -> Any:
    """Build ``spec`` (a registered name or a ``{type: Name, ...}`` dict) from config ``cfg``.

    ``extra`` are runtime arguments supplied by code (e.g. ``params`` for an optimizer); they win
    over config values. ``path`` is the key path used in error messages.
    """
    if isinstance(spec, str):
        name, own = spec, {}
    elif isinstance(spec, Mapping) and "type" in spec:
        name = str(spec["type"])
        own = {k: v for k, v in spec.items() if k != "type"}
    else:
        raise ConfigError(f"{path or '<config>'}: expected a registered name or a dict with 'type', got {spec!r}")
    path = path or name
    target = _lookup(name, path)
    if not inspect.isclass(target) and not own and not extra:
        return target  # a registered function is passed as itself (e.g. collate_fn)

    section = cfg.get(name)
    kwargs: dict[str, Any] = copy.deepcopy(dict(section)) if isinstance(section, Mapping) else {}
    kwargs.update(copy.deepcopy(own))
    for key in share_names(target):
        if key in cfg:
            kwargs[key] = copy.deepcopy(cfg[key])
    _check_keys(target, kwargs, own, name, path)
    _check_types(target, kwargs, own, name, path, skip=set(inject_names(target)) | set(extra))
    for key in inject_names(target):
        if key in kwargs and kwargs[key] is not None:
            key_path = f"{path}.{key}" if key in own or path == name else f"{name}.{key}"
            kwargs[key] = _build_injected(kwargs[key], cfg, key_path)
    kwargs.update(extra)
    try:
        return target(**kwargs)
    except TypeError as err:
        raise ConfigError(f"{path}: cannot build {name}: {err}") from err
