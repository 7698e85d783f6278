"""``YAMLConfig``: a loaded, validated config that lazily builds every training component.

Follows RT-DETR's ``YAMLConfig`` (lyuwenyu/RT-DETR, Apache-2.0): the same keys
(``model``, ``criterion``, ``postprocessor``, ``optimizer``, ``lr_scheduler``, ``ema``,
``scaler``, ``train_dataloader``, ``val_dataloader``, ...) and keyword overrides deep-merged into
the loaded file, e.g. ``YAMLConfig(path, PResNet={'pretrained': False})``. The model, criterion,
postprocessor and loaders are cached properties; components built on runtime arguments (the EMA
of the model, the optimizer on its parameters, the scaler) are built by the solver with
:meth:`YAMLConfig.build`.
"""

from __future__ import annotations

import copy
import difflib
import logging
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from rtdetr_spartan.core.registry import registered_names
from rtdetr_spartan.core.value_types import ValueTypeError, coerce
from rtdetr_spartan.core.workspace import ConfigError, create
from rtdetr_spartan.core.yaml_utils import load_yaml, merge_dict

logger = logging.getLogger(__name__)

# Reference key names still accepted, with a warning.
DEPRECATED_KEYS = {"epoches": "epochs"}
# Keys that are no longer read, and what replaced them.
MOVED_KEYS = {
    "cam_logging": "the CAM hook is a registered hook now: 'hooks: [CamLoggingHook]' with its settings "
    "(every_n_epochs, images, max_images, layers, method, class_names) under a 'CamLoggingHook:' section",
}

# Top-level keys that are settings rather than registered sections.
RUNTIME_KEYS = frozenset(
    {
        "task",
        "num_classes",
        "use_focal_loss",
        "remap_mscoco_category",
        "eval_spatial_size",
        "model",
        "criterion",
        "postprocessor",
        "optimizer",
        "lr_scheduler",
        "lr_warmup_scheduler",
        "ema",
        "use_ema",
        "scaler",
        "use_amp",
        "amp_dtype",
        "sync_bn",
        "find_unused_parameters",
        "epochs",
        "clip_max_norm",
        "output_dir",
        "train_dataloader",
        "val_dataloader",
        "evaluator",
        "seed",
        "print_freq",
        "log_step",
        "checkpoint_freq",
        "checkpoint_step",
        "summary_dir",
        "device",
        "tuning",
        "resume",
        "batch_size_reference",
        "bn_sync_every_epoch",
        "base_lr_batch",
        "label_smoothing",
        "mixup",
        "num_top_queries",
        "eval_backend",
        "num_workers",
        "compile",
        "overwrite",
        "hooks",
    }
)


# Types of the top-level settings (checked, and losslessly converted, at load time) and their
# lower bounds; registered constructors' arguments are checked against their annotations.
SETTING_TYPES: dict[str, Any] = {
    "task": str,
    "num_classes": int,
    "use_focal_loss": bool,
    "remap_mscoco_category": bool,
    "eval_spatial_size": tuple[int, int] | None,
    "use_ema": bool,
    "use_amp": bool,
    "sync_bn": bool,
    "find_unused_parameters": bool,
    "epochs": int,
    "clip_max_norm": float,
    "output_dir": str,
    "seed": int | None,
    "print_freq": int,
    "checkpoint_freq": int,
    "base_lr_batch": int | None,
    "num_workers": int,
    "compile": bool,
    "overwrite": bool,
}
SETTING_MINIMA: dict[str, float] = {
    "num_classes": 1,
    "epochs": 1,
    "clip_max_norm": 0,
    "print_freq": 1,
    "checkpoint_freq": 0,
    "base_lr_batch": 1,
    "num_workers": 0,
}


def _check_settings(cfg: dict[str, Any], path: Path) -> None:
    """Every top-level setting present has its type (``-u epochs=1.5`` is an error, not one
    epoch) and lies above its minimum; values are replaced by their converted form."""
    for key, hint in SETTING_TYPES.items():
        if key not in cfg:
            continue
        try:
            value = coerce(cfg[key], hint)
        except ValueTypeError as err:
            raise ConfigError(f"{path}: top-level setting {key}: {err}") from None
        low = SETTING_MINIMA.get(key)
        if low is not None and value is not None and value < low:
            raise ConfigError(f"{path}: top-level setting {key} must be >= {low:g}, got {value!r}")
        cfg[key] = value


def _rename_deprecated(cfg: dict[str, Any], path: Path) -> dict[str, Any]:
    for old, new in DEPRECATED_KEYS.items():
        if old in cfg:
            logger.warning("%s: '%s' is deprecated, use '%s'", path, old, new)
            value = cfg.pop(old)
            cfg.setdefault(new, value)
    return cfg


def _check_top_level(cfg: dict[str, Any], path: Path) -> None:
    """A top-level key close to a known name but not one is almost always a typo; a key that
    moved is an error naming its replacement."""
    known = set(RUNTIME_KEYS) | set(registered_names())
    for key in cfg:
        if key in MOVED_KEYS:
            raise ConfigError(f"{path}: top-level key '{key}' is no longer read: {MOVED_KEYS[key]}")
        if key in known:
            continue
        close = difflib.get_close_matches(key, known, n=3, cutoff=0.8)
        if close:
            raise ConfigError(
                f"{path}: unknown top-level key '{key}'; did you mean {', '.join(repr(c) for c in close)}?"
            )
        logger.warning("%s: top-level key '%s' is not used by any registered component", path, key)


class YAMLConfig:
    """A config file plus overrides; components are built on first access and cached.

    ``build(key)`` builds a fresh, independent object every call; the properties
    (``cfg.model`` ...) build once per ``YAMLConfig``.
    """

    def __init__(self, cfg_path: str | Path, **overrides: Any) -> None:
        self.path = Path(cfg_path)
        cfg = merge_dict(load_yaml(self.path, _rename_deprecated), overrides)
        self.yaml_cfg: dict[str, Any] = _rename_deprecated(cfg, self.path)
        _check_top_level(self.yaml_cfg, self.path)
        _check_settings(self.yaml_cfg, self.path)

    def get(self, key: str, default: Any = None) -> Any:
        return copy.deepcopy(self.yaml_cfg.get(key, default))

    def build(self, key: str, **extra: Any) -> Any:
        """Build the component named by top-level ``key`` (a registered name or a typed dict)."""
        if key not in self.yaml_cfg or self.yaml_cfg[key] is None:
            raise ConfigError(f"{self.path}: no '{key}' in the config")
        return create(self.yaml_cfg[key], self.yaml_cfg, path=key, **extra)

    # Settings -------------------------------------------------------------------------------
    @property
    def epochs(self) -> int:
        return int(self.yaml_cfg.get("epochs", 1))

    @property
    def output_dir(self) -> Path:
        return Path(self.yaml_cfg.get("output_dir", "outputs"))

    @property
    def clip_max_norm(self) -> float:
        return float(self.yaml_cfg.get("clip_max_norm", 0.0))

    @property
    def use_ema(self) -> bool:
        return bool(self.yaml_cfg.get("use_ema", False))

    @property
    def use_amp(self) -> bool:
        return bool(self.yaml_cfg.get("use_amp", False))

    @property
    def task(self) -> str:
        return str(self.yaml_cfg.get("task", "detection"))

    # Components ----------------------------------------------------------------------------
    @cached_property
    def model(self) -> torch.nn.Module:
        return self.build("model")

    @cached_property
    def criterion(self) -> torch.nn.Module:
        return self.build("criterion")

    @cached_property
    def postprocessor(self) -> torch.nn.Module:
        return self.build("postprocessor")

    @cached_property
    def train_dataloader(self) -> Any:
        return self.build("train_dataloader")

    @cached_property
    def val_dataloader(self) -> Any:
        return self.build("val_dataloader")
