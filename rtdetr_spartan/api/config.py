"""A model's config for the Python API: the YAML file (or a checkpoint's stored config) and the
overrides given to the constructor and to ``train``, resolved into one :class:`YAMLConfig`.

The deploy, benchmark and tool functions take a config *file*, so :meth:`ModelConfig.file`
writes the resolved config once per state into a private temporary folder; every function
then builds exactly what the tools build from that file.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from rtdetr_spartan.core import YAMLConfig, merge_dict, parse_overrides

__all__ = ["ModelConfig", "keyword_overrides"]


def keyword_overrides(values: Mapping[str, Any]) -> dict[str, Any]:
    """``{"epochs": 2, "train_dataloader.batch_size": 4}`` -> nested overrides; ``None`` values
    are left out (an argument not given)."""
    result: dict[str, Any] = {}
    for key, value in values.items():
        if value is None:
            continue
        nested: Any = value
        for part in reversed(key.split(".")):
            if not part:
                raise ValueError(f"override {key!r} has an empty key segment; write keys as 'section.key'")
            nested = {part: nested}
        result = merge_dict(result, nested)
    return result


def _plain(value: Any) -> Any:
    """``value`` with tuples as lists and paths as strings, as YAML's safe dumper writes them."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


class ModelConfig:
    """A YAML config ``path`` (or, from a checkpoint, the resolved ``stored`` config dict) with
    nested ``overrides``; :meth:`resolve` adds more for one call, :meth:`update` keeps them."""

    def __init__(
        self,
        path: str | Path | None,
        overrides: Mapping[str, Any] | None = None,
        stored: Mapping[str, Any] | None = None,
        name: str = "config.yml",
    ) -> None:
        if path is None and stored is None:
            raise ValueError("a model config needs a YAML file or a checkpoint's stored config")
        self.path = Path(path) if path is not None else None
        self.stored = copy.deepcopy(dict(stored)) if stored is not None else None
        self.overrides: dict[str, Any] = copy.deepcopy(dict(overrides or {}))
        self.name = self.path.name if self.path is not None else name
        self._folder: Path | None = None

    @staticmethod
    def merged(*strings: str, **values: Any) -> dict[str, Any]:
        """``-u``-style ``strings`` (``"a.b=1"``), then keyword ``values`` (dotted keys) on top."""
        return merge_dict(parse_overrides(strings), keyword_overrides(values))

    def update(self, overrides: Mapping[str, Any]) -> None:
        """Keep ``overrides`` for every later call (a ``train``'s dataset, for ``val`` after it)."""
        self.overrides = merge_dict(self.overrides, overrides)

    def resolve(self, extra: Mapping[str, Any] | None = None) -> YAMLConfig:
        """The config with the kept overrides and ``extra`` on top (checked as the tools check it)."""
        overrides = merge_dict(self.overrides, extra or {})
        if self.path is not None:
            return YAMLConfig(self.path, **overrides)
        assert self.stored is not None
        return YAMLConfig(self._write(self.stored, "stored_" + self.name), **overrides)

    def _write(self, config: Mapping[str, Any], name: str) -> Path:
        if self._folder is None:
            self._folder = Path(tempfile.mkdtemp(prefix="rtdetr-spartan-config-"))
            weakref.finalize(self, shutil.rmtree, self._folder, True)
        target = self._folder / name
        target.write_text(yaml.safe_dump(_plain(config), sort_keys=False))
        return target
