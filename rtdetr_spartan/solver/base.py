# Follows the design of RT-DETR (lyuwenyu/RT-DETR, Apache-2.0).
"""Task-independent training machinery: device, DDP, AMP, EMA, checkpoints, resume and tuning.

A solver is built from a :class:`~rtdetr_spartan.core.YAMLConfig`. Runtime keys it reads
(all optional): ``device`` (``cpu`` | ``cuda``; default cuda when available), ``seed``,
``output_dir``, ``epochs``, ``use_amp`` + ``amp_dtype`` (``float16`` with a GradScaler on CUDA;
``bfloat16``, the only choice on the CPU), ``sync_bn``, ``find_unused_parameters``, ``use_ema``,
``checkpoint_freq``, ``resume`` (a checkpoint to continue from) and ``tuning`` (a checkpoint
whose matching weights initialise the model).

Checkpoints (rank 0 writes them): ``last.pth`` after every epoch, ``best.pth`` when the
validation metric improves and ``checkpointNNNN.pth`` every ``checkpoint_freq`` epochs. Each
holds model, EMA, optimizer, scheduler and scaler states, the epoch, the best metric, every
rank's RNG states (python, NumPy, torch CPU/CUDA and the data-order generator) and the
resolved config, so a resumed run continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import copy
import datetime
import json
import logging
import math
import os
import random
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

import rtdetr_spartan
from rtdetr_spartan.core import ConfigError, YAMLConfig
from rtdetr_spartan.misc import dist
from rtdetr_spartan.misc.checkpoint import extract_state_dict, load_checkpoint, load_model_weights, save_atomic
from rtdetr_spartan.optim import param_groups_from_config, unwrap_model
from rtdetr_spartan.solver.loaders import prepare_eval_loader, prepare_train_loader

__all__ = ["BaseSolver", "select_device"]

logger = logging.getLogger(__name__)

AMP_DTYPES: dict[str, torch.dtype] = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def select_device(requested: str | None) -> torch.device:
    """``cpu``, ``cuda`` or ``None`` (CUDA when available); distributed CUDA runs use
    ``cuda:LOCAL_RANK``."""
    name = (requested or ("cuda" if torch.cuda.is_available() else "cpu")).lower()
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ConfigError(f"device: expected 'cpu' or 'cuda', got {requested!r}")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device: {requested!r} requested but CUDA is not available")
        if dist.is_dist_initialized():
            return torch.device("cuda", dist.get_local_rank())
    return torch.device(name)


def resolve_amp_dtype(cfg: YAMLConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or ``None`` without AMP. CPU AMP is bfloat16 only (opt-in)."""
    if not cfg.use_amp:
        return None
    default = "float16" if device.type == "cuda" else "bfloat16"
    name = str(cfg.get("amp_dtype") or default)
    if name not in AMP_DTYPES:
        raise ConfigError(f"amp_dtype: expected one of {sorted(AMP_DTYPES)}, got {name!r}")
    if device.type == "cpu" and name != "bfloat16":
        raise ConfigError(f"amp_dtype: {name} autocast is not supported on the CPU; use bfloat16")
    return AMP_DTYPES[name]


def _numpy_rng_state() -> tuple[str, list[int], int, int, float]:
    """NumPy's global RNG state with plain Python values (its key as a list, not an array), so
    that checkpoints load with ``torch.load(weights_only=True)``; ``np.random.set_state``
    accepts it unchanged."""
    name, key, pos, has_gauss, cached = np.random.get_state()
    return str(name), key.tolist(), int(pos), int(has_gauss), float(cached)


def _rng_state(device: torch.device, data_generator: torch.Generator | None) -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "numpy": _numpy_rng_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    if data_generator is not None:
        state["data"] = data_generator.get_state()
    return state


def _set_rng_state(state: Mapping[str, Any], device: torch.device, data_generator: torch.Generator | None) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
    if data_generator is not None and "data" in state:
        data_generator.set_state(state["data"])


class BaseSolver:
    """Builds the run's components from ``cfg`` and owns their checkpointed state.

    Subclasses implement :meth:`train_epoch` (one epoch of :meth:`fit`) and :meth:`val`.
    ``last_epoch`` is the index of the last finished epoch (``-1`` before training); training
    continues at ``last_epoch + 1``.
    """

    def __init__(self, cfg: YAMLConfig) -> None:
        self.cfg = cfg
        self.device = select_device(cfg.get("device"))
        self.amp_dtype = resolve_amp_dtype(cfg, self.device)
        self.output_dir = cfg.output_dir
        if cfg.get("resume") and cfg.get("tuning"):
            raise ConfigError(
                f"{cfg.path}: 'resume' ({cfg.get('resume')}) and 'tuning' ({cfg.get('tuning')}) "
                "exclude each other: resume continues a run, tuning starts a new one"
            )
        self.seed = int(cfg.get("seed") or 0)
        self.epochs = cfg.epochs
        self.checkpoint_freq = int(cfg.get("checkpoint_freq", 1) or 0)
        self.last_epoch = -1
        self.best: dict[str, Any] = {"metric": None, "value": None, "epoch": -1}
        self.model: nn.Module | None = None
        self.criterion: nn.Module | None = None
        self.postprocessor: nn.Module | None = None
        self.ema: Any = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.lr_scheduler: Any = None
        self.scaler: torch.amp.GradScaler | None = None
        self.train_dataloader: torch.utils.data.DataLoader | None = None
        self.val_dataloader: torch.utils.data.DataLoader | None = None
        self._pending_rng: dict[str, Any] | None = None

    # ------------------------------------------------------------------------- interface
    def val(self) -> dict[str, Any]:
        """Evaluate only (``--test-only``)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement val()")

    def train_epoch(self, epoch: int, writer: Any) -> None:
        """Train, evaluate, checkpoint and log one epoch (the task's part of :meth:`fit`)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement train_epoch()")

    def fit(self) -> dict[str, Any]:
        """Train from ``last_epoch + 1`` (0, or after the resumed epoch) to ``epochs``; returns
        the best-metric record ``{"metric", "value", "epoch"}``."""
        self.setup_train()
        first = self.last_epoch + 1
        if first >= self.epochs:
            logger.warning("nothing to train: %d of epochs=%d already done", first, self.epochs)
        writer = self.open_summary_writer()
        logger.info("training epochs %d..%d, output in %s", first, self.epochs - 1, self.output_dir)
        try:
            for epoch in range(first, self.epochs):
                self.train_epoch(epoch, writer)
        finally:
            if writer is not None:
                writer.close()
        return dict(self.best)

    def update_best(self, metric: str, value: float, epoch: int) -> bool:
        """Record ``value`` if it beats the best so far (higher is better); ``True`` if it did."""
        if self.best.get("value") is not None and value <= self.best["value"]:
            return False
        self.best = {"metric": metric, "value": value, "epoch": epoch}
        return True

    def open_summary_writer(self) -> Any:
        """A TensorBoard ``SummaryWriter`` on rank 0 (``summary_dir`` or ``OUTPUT_DIR/summary``)."""
        if not self.is_main:
            return None
        from torch.utils.tensorboard import SummaryWriter  # imported late: tensorboard is slow to load

        return SummaryWriter(log_dir=str(self.cfg.get("summary_dir") or self.output_dir / "summary"))

    @property
    def is_main(self) -> bool:
        return dist.is_main_process()

    @property
    def module(self) -> nn.Module:
        """The model without its DDP wrapper."""
        if self.model is None:
            raise RuntimeError("the solver's model is not built yet; call setup_train() or setup_eval()")
        return unwrap_model(self.model)

    @property
    def eval_module(self) -> nn.Module:
        """The weights to evaluate: the EMA copy when EMA is on, else the model."""
        return self.ema.module if self.ema is not None else self.module

    # ------------------------------------------------------------------------- setup
    def _setup_model(self) -> None:
        """Model (tuning weights, device, SyncBN, DDP), criterion, postprocessor and EMA."""
        dist.seed_everything(self.seed)
        model = self.cfg.model
        tuning = self.cfg.get("tuning")
        if tuning:
            # Before the EMA copy is made, so that it starts from the tuned weights.
            report = load_model_weights(model, tuning, strict=False)
            logger.info("tuning from %s: %s", tuning, report.describe())
        model = model.to(self.device)
        self.model = self._wrap_distributed(model)
        self.criterion = self.cfg.criterion.to(self.device)
        self.postprocessor = self.cfg.postprocessor.to(self.device)
        self.ema = self.cfg.build("ema", model=model) if self.cfg.use_ema else None
        n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        logger.info(
            "model: %d trainable parameters, device %s, amp %s, ema %s",
            n_params,
            self.device,
            self.amp_dtype,
            self.ema is not None,
        )

    def _wrap_distributed(self, model: nn.Module) -> nn.Module:
        if not dist.is_dist_initialized():
            return model
        if self.cfg.get("sync_bn", False):
            if self.device.type == "cuda":
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            else:
                logger.warning("sync_bn: SyncBatchNorm needs CUDA; BatchNorm stays per process on %s", self.device)
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(
            model, device_ids=device_ids, find_unused_parameters=bool(self.cfg.get("find_unused_parameters", False))
        )

    def _setup_optimization(self) -> None:
        groups = param_groups_from_config(self.cfg.get("optimizer") or {}, self.module)
        self.optimizer = self.cfg.build("optimizer", params=groups)
        self.lr_scheduler = (
            self.cfg.build("lr_scheduler", optimizer=self.optimizer) if self.cfg.get("lr_scheduler") else None
        )
        self.scaler = None
        if self.amp_dtype == torch.float16:
            self.scaler = self.cfg.build("scaler") if self.cfg.get("scaler") else torch.amp.GradScaler("cuda")

    def setup_train(self) -> None:
        """Everything :meth:`fit` needs; with ``resume`` set, the full state of that checkpoint."""
        self._setup_model()
        self._setup_optimization()
        self.train_dataloader = prepare_train_loader(self.cfg.train_dataloader, self.seed)
        self.val_dataloader = prepare_eval_loader(self.cfg.val_dataloader)
        self._resume_if_requested()
        self.output_dir.mkdir(parents=True, exist_ok=True)

    def setup_eval(self) -> None:
        """What :meth:`val` needs; with ``resume`` set, the model and EMA weights of that checkpoint."""
        self._setup_model()
        self.val_dataloader = prepare_eval_loader(self.cfg.val_dataloader)
        self._resume_if_requested()
        self.output_dir.mkdir(parents=True, exist_ok=True)

    def _resume_if_requested(self) -> None:
        resume = self.cfg.get("resume")
        if resume:
            logger.info("resuming from %s", resume)
            self.load_state_dict(load_checkpoint(resume), source=str(resume))
            self.restore_rng()

    # ------------------------------------------------------------------------- state
    def _data_generator(self) -> torch.Generator | None:
        return getattr(self.train_dataloader, "generator", None)

    def state_dict(self) -> dict[str, Any]:
        """The full training state. Collective in distributed runs (gathers every rank's RNG)."""
        state: dict[str, Any] = {
            "model": self.module.state_dict(),
            "epoch": self.last_epoch,
            "best": dict(self.best),
            "rng": dist.all_gather_object(_rng_state(self.device, self._data_generator())),
            "config": copy.deepcopy(self.cfg.yaml_cfg),
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "version": rtdetr_spartan.__version__,
        }
        for name in ("ema", "optimizer", "lr_scheduler", "scaler"):
            component = getattr(self, name)
            if component is not None:
                state[name] = component.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any], source: str = "checkpoint") -> None:
        """Restore what ``state`` holds into the components built so far.

        The model must match exactly (use tuning to load partially). A file without a ``model``
        entry (published RT-DETR weights: ``{'ema': {'module': ...}}``) loads its EMA weights
        into the model. Components the file lacks start fresh (an EMA restarts from the loaded
        model). RNG states are kept for :meth:`restore_rng`, called once the data loaders exist.
        """
        weights = state["model"] if "model" in state else extract_state_dict(state)
        load_model_weights(self.module, {"model": weights}, strict=True)
        for name in ("ema", "optimizer", "lr_scheduler", "scaler"):
            component = getattr(self, name)
            if component is None:
                continue
            if name in state:
                component.load_state_dict(state[name])
                continue
            logger.warning("%s: no '%s' state; %s starts fresh", source, name, name)
            if name == "ema":
                self.ema = self.cfg.build("ema", model=self.module)
        # Reference RT-DETR checkpoints call the finished epoch 'last_epoch'.
        self.last_epoch = int(state.get("epoch", state.get("last_epoch", -1)))
        self.best = dict(state.get("best") or self.best)
        self._pending_rng = self._rng_for_this_rank(state.get("rng"), source)

    def _rng_for_this_rank(self, saved: Any, source: str) -> dict[str, Any] | None:
        if not saved:
            return None
        if len(saved) != dist.get_world_size():
            logger.warning(
                "%s: saved by %d processes, resumed with %d; random streams are reseeded "
                "(data order and augmentation differ from an uninterrupted run)",
                source,
                len(saved),
                dist.get_world_size(),
            )
            dist.seed_everything(self.seed + self.last_epoch + 1)
            return None
        return saved[dist.get_rank()]

    def restore_rng(self) -> None:
        """Apply the RNG states read by :meth:`load_state_dict` (including the data generator)."""
        if self._pending_rng is not None:
            _set_rng_state(self._pending_rng, self.device, self._data_generator())
            self._pending_rng = None

    # ------------------------------------------------------------------------- files
    def save_checkpoints(self, epoch: int, is_best: bool) -> list[Path]:
        """Write ``last.pth`` (+ ``best.pth``, ``checkpointNNNN.pth``); collective, rank 0 writes.

        The state is serialized once; the other names are hard links to (or copies of) that file,
        so a later ``last.pth`` (written to a new file and renamed) never changes them.
        """
        state = self.state_dict()
        last = self.output_dir / "last.pth"
        extra = ["best.pth"] if is_best else []
        if self.checkpoint_freq > 0 and (epoch + 1) % self.checkpoint_freq == 0:
            extra.append(f"checkpoint{epoch:04d}.pth")
        paths = [last] + [self.output_dir / name for name in extra]
        if self.is_main:
            save_atomic(state, last)
            for path in paths[1:]:
                _publish_copy(last, path)
        dist.barrier()
        return paths

    def append_log(self, record: Mapping[str, Any]) -> None:
        """One JSON line in ``OUTPUT_DIR/log.txt`` (rank 0)."""
        if self.is_main:
            with (self.output_dir / "log.txt").open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(_json_safe(record)) + "\n")


def _publish_copy(source: Path, target: Path) -> None:
    """Atomically make ``target`` a hard link to ``source`` (a copy where links are unsupported)."""
    staging = target.with_name(f".{target.name}.staging")
    staging.unlink(missing_ok=True)
    try:
        os.link(source, staging)
    except OSError:
        shutil.copyfile(source, staging)
    os.replace(staging, target)


def _json_safe(value: Any) -> Any:
    """Floats that JSON cannot hold (NaN, inf) become ``None``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value
