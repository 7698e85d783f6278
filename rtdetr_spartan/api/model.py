"""What :class:`~rtdetr_spartan.api.Detector` and :class:`~rtdetr_spartan.api.Classifier`
share: the config with its overrides, the checkpoint in use, ``load``, ``train`` and ``val``,
all run by the solver exactly as ``rtdetr-spartan train`` / ``pretrain`` run it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, TypeVar

from rtdetr_spartan.api.config import ModelConfig
from rtdetr_spartan.core import YAMLConfig, merge_dict
from rtdetr_spartan.misc.checkpoint import CheckpointError, load_checkpoint
from rtdetr_spartan.solver import BaseSolver
from rtdetr_spartan.solver.cli import dataset_overrides, run_config
from rtdetr_spartan.solver.state import EpochResult, SolverHook, TrainState

__all__ = ["TaskModel"]

logger = logging.getLogger(__name__)

M = TypeVar("M", bound="TaskModel")


class _EpochRecorder(SolverHook):
    """Keeps the evaluation of the last epoch and of the best one (the solver's ``best.pth``)."""

    def __init__(self) -> None:
        self.final: dict[str, Any] = {}
        self.best: dict[str, Any] = {}

    def after_epoch(self, solver: BaseSolver, state: TrainState, result: EpochResult, writer: Any) -> None:
        record = {**result.eval_stats, "epoch": result.epoch, "metric": solver.metric_name, "value": result.metric}
        self.final = record
        if result.is_best:
            self.best = record


class TaskModel:
    """A config (``task``: the one the subclass needs) and the checkpoint its weights come from."""

    task: str = "detection"

    def __init__(self, config: str | Path | ModelConfig, *override_strings: str, **overrides: Any) -> None:
        if isinstance(config, ModelConfig):
            config.update(ModelConfig.merged(*override_strings, **overrides))
            self.config = config
        else:
            self.config = ModelConfig(config, ModelConfig.merged(*override_strings, **overrides))
        self.checkpoint: Path | None = None
        self._check_task(self.config.resolve())

    def _check_task(self, cfg: YAMLConfig) -> None:
        if cfg.task != self.task:
            other = "Classifier" if cfg.task == "classification" else "Detector"
            raise ValueError(
                f"{cfg.path}: task is '{cfg.task}'; {type(self).__name__} needs task: {self.task} (use {other})"
            )

    @classmethod
    def load(cls: type[M], checkpoint: str | Path, config: str | Path | None = None, **overrides: Any) -> M:
        """The model of a checkpoint written by training, rebuilt from the config it stores
        (``config``: a YAML file to use instead, e.g. for published weights that store none)."""
        path = Path(checkpoint)
        stored = load_checkpoint(path, expect_task=cls.task, purpose=f"{cls.__name__}.load").get("config")
        if config is not None:
            model_config = ModelConfig(config)
        elif isinstance(stored, dict):
            # A resumed run's settings are no part of the model: drop them from the stored config.
            kept = {k: v for k, v in stored.items() if k not in ("resume", "tuning", "overwrite")}
            model_config = ModelConfig(None, stored=kept, name=f"{path.stem}.yml")
        else:
            raise CheckpointError(
                f"checkpoint {path} stores no config (not written by this project's training); "
                f"give the model's YAML config: {cls.__name__}.load({str(path)!r}, config='configs/...yml')"
            )
        model = cls(model_config, **overrides)
        model.checkpoint = path
        return model

    # ------------------------------------------------------------------------- training
    def _data_overrides(self, data: str | Path | None) -> dict[str, Any]:
        return dataset_overrides(self.task, data) if data is not None else {}

    def _run_settings(
        self, batch_size: int | None, output_dir: str | Path | None, device: str | None
    ) -> dict[str, Any]:
        settings: dict[str, Any] = {}
        if batch_size is not None:
            settings["train_dataloader"] = {"batch_size": int(batch_size)}
        if output_dir is not None:
            settings["output_dir"] = str(output_dir)
        if device is not None:
            settings["device"] = device
        return settings

    def train(
        self,
        data: str | Path | None = None,
        epochs: int | None = None,
        batch_size: int | None = None,
        output_dir: str | Path | None = None,
        resume: str | Path | None = None,
        device: str | None = None,
        **overrides: Any,
    ) -> dict[str, Any]:
        """Train with the solver of ``rtdetr-spartan train`` (same checkpoints, logs and resume).

        ``data``: a dataset directory (layout detected); ``batch_size``: per process, as the
        config's; ``resume``: ``"auto"`` (``output_dir/last.pth`` when it exists) or a
        checkpoint; ``overrides``: config keys (dotted for nested ones). Under torchrun every
        rank calls it. Returns ``{"final": ..., "best": ...}``: the evaluation of the last and of
        the best epoch, each with ``epoch``, ``metric`` and ``value``. Later ``val`` /
        ``predict`` / ``export`` calls use ``best.pth`` and this dataset.
        """
        # overwrite, resume and device hold for this run only; the dataset and settings stay for val/predict.
        overwrite = overrides.pop("overwrite", None)
        kept = merge_dict(self._data_overrides(data), ModelConfig.merged(epochs=epochs, **overrides))
        kept = merge_dict(kept, self._run_settings(batch_size, output_dir, None))
        # A model with weights (Detector.load, an earlier train) fine-tunes from them unless resuming.
        tuning = str(self.checkpoint) if self.checkpoint is not None and resume is None else None
        run = ModelConfig.merged(resume=resume and str(resume), tuning=tuning, device=device, overwrite=overwrite)
        cfg = self.config.resolve(merge_dict(kept, run))
        if overwrite and tuning and Path(tuning).absolute().parent == cfg.output_dir.absolute():
            raise ValueError(
                f"overwrite=True would delete {tuning}, the weights this run starts from; train into another output_dir"
            )
        self.config.update(kept)
        recorder = _EpochRecorder()
        result = run_config(cfg, test_only=False, hooks=[recorder])
        best_path = cfg.output_dir / "best.pth"
        self.checkpoint = best_path if best_path.is_file() else cfg.output_dir / "last.pth"
        # The solver's "best" is a record (metric, value, epoch): the API gives that epoch's metrics too.
        return {
            "final": self._val_metrics(recorder.final or dict(result["final"])),
            "best": self._val_metrics(recorder.best or dict(result["best"])),
        }

    def val(
        self, data: str | Path | None = None, batch_size: int | None = None, device: str | None = None
    ) -> dict[str, Any]:
        """Evaluate the current weights (the checkpoint, else the config's initialisation) on
        the validation set of ``data`` (else the config's), as ``rtdetr-spartan val`` does."""
        extra = merge_dict(self._data_overrides(data), self._run_settings(None, None, device))
        if batch_size is not None:
            extra = merge_dict(extra, {"val_dataloader": {"batch_size": int(batch_size)}})
        extra.update(resume=str(self.checkpoint) if self.checkpoint else None, tuning=None, overwrite=False)
        if self.checkpoint is None:
            logger.warning("%s has no checkpoint: evaluating the config's initial weights", type(self).__name__)
        stats = run_config(self.config.resolve(extra), test_only=True)
        return self._val_metrics(stats)

    def _val_metrics(self, stats: dict[str, Any]) -> dict[str, Any]:
        """The solver's evaluation as the API returns it."""
        return stats
