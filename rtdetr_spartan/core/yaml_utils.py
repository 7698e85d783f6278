"""YAML loading with ``__include__`` composition and typed ``key.sub=value`` overrides.

Follows the config language of RT-DETR (lyuwenyu/RT-DETR, Apache-2.0): a file may list other
files under ``__include__`` (paths relative to the including file); included files are merged
first, in order, and the including file's own keys win. Dicts are merged recursively; any other
value (lists included) is replaced.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import yaml

INCLUDE_KEY = "__include__"


def merge_dict(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """A new dict: ``base`` deep-merged with ``update`` (``update`` wins). Inputs are not modified."""
    merged = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_dict(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as err:
        raise FileNotFoundError(f"cannot read config file {path}: {err.strerror}") from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(f"invalid YAML in {path}: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping at the top level, got {type(data).__name__}")
    return data


def _include_list(value: Any, path: Path) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise ValueError(f"{path}: '{INCLUDE_KEY}' must be a path or a list of paths, got {value!r}")


def load_yaml(
    path: str | Path,
    transform: Callable[[dict[str, Any], Path], dict[str, Any]] | None = None,
    _stack: tuple[Path, ...] = (),
) -> dict[str, Any]:
    """Load ``path`` with its ``__include__`` files resolved (recursively, cycles rejected).

    ``transform(cfg, file)`` is applied to each file's own keys before merging (used to rename
    deprecated keys file by file, so that a deprecated key still wins over included files).
    """
    path = Path(path).resolve()
    if path in _stack:
        chain = " -> ".join(str(p) for p in (*_stack, path))
        raise ValueError(f"__include__ cycle: {chain}")
    own = _read_yaml(path)
    if transform is not None:
        own = transform(own, path)
    merged: dict[str, Any] = {}
    for rel in _include_list(own.pop(INCLUDE_KEY, None), path):
        target = (path.parent / rel).resolve()
        if not target.is_file():
            raise FileNotFoundError(f"{path} includes '{rel}', but {target} does not exist")
        merged = merge_dict(merged, load_yaml(target, transform, (*_stack, path)))
    return merge_dict(merged, own)


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``['a.b=1', 'c=[1, 2]']`` -> ``{'a': {'b': 1}, 'c': [1, 2]}``; values are parsed as YAML."""
    result: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override '{item}' must look like key.sub=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as err:
            raise ValueError(f"override '{item}': value is not valid YAML ({err})") from err
        nested: Any = value
        for part in reversed(key.strip().split(".")):
            if not part:
                raise ValueError(f"override '{item}' has an empty key segment")
            nested = {part: nested}
        result = merge_dict(result, nested)
    return result


def add_overrides_argument(
    parser: argparse.ArgumentParser, example: str = "num_classes=4", subject: str = "config"
) -> None:
    """The ``-u/--update KEY=VALUE ...`` option every tool takes (repeatable, parsed later by
    :func:`parse_overrides`); its help names ``subject`` and shows ``example``."""
    parser.add_argument(
        "-u",
        "--update",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help=f"{subject} overrides, e.g. -u {example} (repeatable)",
    )
