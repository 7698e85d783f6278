# Follows the design of RT-DETR (lyuwenyu/RT-DETR, Apache-2.0).
"""The one training loop: device, DDP, AMP, EMA, optimizer, checkpoints, resume, logging and hooks.

A solver is built from a :class:`~rtdetr_spartan.core.YAMLConfig`. Runtime keys it reads
(all optional): ``device`` (``cpu`` | ``cuda``; default cuda when available), ``seed``,
``output_dir``, ``epochs``, ``use_amp`` + ``amp_dtype`` (``float16`` with a GradScaler on CUDA;
``bfloat16``, the only choice on the CPU), ``sync_bn``, ``find_unused_parameters``, ``use_ema``,
``checkpoint_freq``, ``compile`` (regional ``torch.compile`` of the model's repeated blocks),
``base_lr_batch`` (every group's lr is scaled by ``total batch / base_lr_batch``), ``resume`` (a
checkpoint to continue from, or ``auto``: ``OUTPUT_DIR/last.pth`` when it exists), ``overwrite``
(start a fresh run in a folder that holds one), ``tuning`` (a checkpoint whose matching weights
initialise the model) and ``hooks`` (registered :class:`SolverHook` s).

Each epoch of :meth:`BaseSolver.fit`: the one epoch loop (:mod:`rtdetr_spartan.solver.loop`) runs
the task's :meth:`~BaseSolver.train_step`, ``last.pth`` is written, the task evaluates (:meth:`evaluate`) and names its metric (:meth:`metric`); a new best
rewrites ``last.pth`` and links ``best.pth`` to it; ``checkpointNNNN.pth`` every
``checkpoint_freq`` epochs; then ``log.txt``, TensorBoard and the hooks. A failure in evaluation
or logging never loses the trained epoch. Checkpoints hold model, EMA, optimizer, scheduler and
scaler states, the epoch, the best metric, every rank's RNG states, the task, the package
version and the resolved config, so a resumed run continues exactly as an uninterrupted one.
They load as data only (``misc.checkpoint.load_checkpoint``); :mod:`rtdetr_spartan.solver.checkpointing`
writes and restores them. A resumed run must have the checkpoint's settings except ``epochs``,
which extends it (:mod:`rtdetr_spartan.solver.resume`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from rtdetr_spartan.core import ConfigError, YAMLConfig, create
from rtdetr_spartan.data.dataloader import set_epoch
from rtdetr_spartan.misc import dist
from rtdetr_spartan.misc.allocator import retain_freed_memory
from rtdetr_spartan.misc.checkpoint import load_model_weights, publish_link, remove_stale_temp_files, save_atomic
from rtdetr_spartan.misc.logger import append_json_line
from rtdetr_spartan.nn.compile import compile_regional
from rtdetr_spartan.solver.checkpointing import restore_state, training_checkpoint
from rtdetr_spartan.solver.device import resolve_amp_dtype, select_device
from rtdetr_spartan.solver.loaders import check_batch_sizes, prepare_eval_loader, prepare_train_loader
from rtdetr_spartan.solver.loop import LoopSettings, TrainStep, train_one_epoch, write_epoch_scalars
from rtdetr_spartan.solver.optimization import build_optimizer, build_scheduler, check_learning_rates
from rtdetr_spartan.solver.resume import read_resume_checkpoint, resume_source, summary_dir
from rtdetr_spartan.solver.rng import preserved_rng, set_rng_state
from rtdetr_spartan.solver.state import EpochResult, EvalState, SolverHook, TrainState

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

__all__ = ["BaseSolver"]

logger = logging.getLogger(__name__)


class BaseSolver:
    """The training loop and the run's checkpointed state; a task subclass supplies
    :meth:`train_step`, :meth:`evaluate`, :meth:`metric` and the epoch's log fields.

    ``last_epoch`` is the index of the last finished epoch (``-1`` before training); training
    continues at ``last_epoch + 1``.
    """

    metric_name = "metric"

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
        if cfg.get("resume") and cfg.get("overwrite"):
            raise ConfigError(
                f"{cfg.path}: 'resume' ({cfg.get('resume')}) and 'overwrite' exclude each other: "
                "resume continues the run in output_dir, overwrite replaces it"
            )
        check_batch_sizes(cfg)
        check_learning_rates(cfg)
        self.seed = int(cfg.get("seed") or 0)
        self.epochs = cfg.epochs
        self.checkpoint_freq = int(cfg.get("checkpoint_freq", 1) or 0)
        self.print_freq = int(cfg.get("print_freq", 50) or 0)
        self.last_epoch = -1
        self.best: dict[str, Any] = {"metric": None, "value": None, "epoch": -1}
        self.hooks: list[SolverHook] = [self._build_hook(i, spec) for i, spec in enumerate(cfg.get("hooks") or [])]
        self._state: EvalState | None = None
        self._pending_rng: dict[str, Any] | None = None

    # ------------------------------------------------------------------------- task interface
    def train_step(self, state: TrainState) -> TrainStep:
        """The task's ``batch -> outputs`` and ``outputs, batch -> named losses`` on ``state``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement train_step()")

    def evaluate(self, state: EvalState) -> dict[str, Any]:
        """Evaluate ``state.eval_module`` on the validation set; the same result on every rank."""
        raise NotImplementedError(f"{type(self).__name__} does not implement evaluate()")

    def metric(self, eval_stats: Mapping[str, Any]) -> float:
        """The number that selects ``best.pth`` (higher is better)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement metric()")

    def after_train_epoch(self, state: TrainState) -> None:
        """Called after the training part of every epoch, before its checkpoint (collective)."""

    def epoch_record(self, eval_stats: Mapping[str, Any]) -> dict[str, Any]:
        """The evaluation fields of the epoch's ``log.txt`` line."""
        return {f"test_{k}": v for k, v in eval_stats.items()}

    def epoch_scalars(self, eval_stats: Mapping[str, Any]) -> dict[str, float]:
        """The evaluation scalars written to TensorBoard as ``Test/<name>``."""
        return {k: float(v) for k, v in eval_stats.items() if isinstance(v, (int, float))}

    def describe(self, eval_stats: Mapping[str, Any]) -> str:
        """One line summarising an evaluation."""
        return f"{self.metric_name} {self.metric(eval_stats):.4f}"

    def val(self) -> dict[str, Any]:
        """Evaluate only (``--test-only``); returns the task's metrics (:meth:`evaluate`)."""
        stats = self.evaluate(self.setup_eval())
        logger.info("%s", self.describe(stats))
        return stats

    # ------------------------------------------------------------------------- the loop
    def register_hook(self, hook: SolverHook) -> None:
        self.hooks.append(hook)

    def fit(self) -> dict[str, Any]:
        """Train from ``last_epoch + 1`` (0, or after the resumed epoch) to ``epochs``.

        Returns ``{"final": the last epoch's evaluation metrics (as :meth:`evaluate`; empty when
        no epoch was left to train), "best": the best-metric record {"metric", "value", "epoch"}}``.
        """
        state = self.setup_train()
        final: dict[str, Any] = {}
        first = self.last_epoch + 1
        if first >= self.epochs:
            logger.warning("nothing to train: %d of epochs=%d already done", first, self.epochs)
        writer = self.open_summary_writer()
        logger.info("training epochs %d..%d, output in %s", first, self.epochs - 1, self.output_dir)
        try:
            for hook in self.hooks:
                hook.before_train(self, state)
            for epoch in range(first, self.epochs):
                final = self.run_epoch(state, epoch, writer).eval_stats
            for hook in self.hooks:
                hook.after_train(self, state)
        finally:
            if writer is not None:
                writer.close()
        return {"final": final, "best": dict(self.best)}

    def run_epoch(self, state: TrainState, epoch: int, writer: SummaryWriter | None) -> EpochResult:
        """Train, checkpoint, evaluate, publish best/periodic checkpoints, log and run the hooks."""
        start = time.perf_counter()
        set_epoch(state.train_loader, epoch)
        settings = LoopSettings(self.device, self.amp_dtype, self.cfg.clip_max_norm, self.print_freq)
        train_stats = train_one_epoch(state, self.train_step(state), epoch, settings, writer)
        if state.lr_scheduler is not None and state.iteration_scheduler is None:
            state.lr_scheduler.step()
        self.after_train_epoch(state)
        self.last_epoch = epoch
        # The trained epoch is on disk before evaluation or logging can fail.
        last = self.save_checkpoint(state, "last.pth")
        with preserved_rng(self.device):  # so the checkpoint's RNG states stay those of this run
            eval_stats = self.evaluate(state)
        value = self.metric(eval_stats)
        is_best = self.update_best(self.metric_name, value, epoch)
        if is_best:  # last.pth again, now recording this epoch as the best
            self.save_checkpoint(state, "last.pth")
            self.publish(last, "best.pth")
        if self.checkpoint_freq > 0 and (epoch + 1) % self.checkpoint_freq == 0:
            self.publish(last, f"checkpoint{epoch:04d}.pth")
        result = EpochResult(epoch, train_stats, dict(eval_stats), value, is_best, time.perf_counter() - start)
        self.log_epoch(state, result, writer)
        for hook in self.hooks:
            hook.after_epoch(self, state, result, writer)
        return result

    def update_best(self, metric: str, value: float, epoch: int) -> bool:
        """Record ``value`` if it beats the best so far (higher is better); ``True`` if it did."""
        if self.best.get("value") is not None and value <= self.best["value"]:
            return False
        self.best = {"metric": metric, "value": value, "epoch": epoch}
        return True

    def log_epoch(self, state: TrainState, result: EpochResult, writer: SummaryWriter | None) -> None:
        """The epoch's ``log.txt`` line, log message and TensorBoard scalars (rank 0)."""
        self.append_log(
            {
                **{f"train_{k}": v for k, v in result.train_stats.items()},
                **self.epoch_record(result.eval_stats),
                "epoch": result.epoch,
                "n_parameters": sum(p.numel() for p in state.module.parameters() if p.requires_grad),
                "best": self.best,
                "epoch_time_s": round(result.seconds, 3),
            }
        )
        logger.info(
            "epoch %d: %s (best %s %.4f at epoch %d, %.1f s)",
            result.epoch,
            self.describe(result.eval_stats),
            self.metric_name,
            self.best["value"],
            self.best["epoch"],
            result.seconds,
        )
        if writer is not None:
            write_epoch_scalars(writer, result.epoch, result.train_stats, self.epoch_scalars(result.eval_stats))

    def open_summary_writer(self) -> SummaryWriter | None:
        """A TensorBoard ``SummaryWriter`` on rank 0 (in :attr:`summary_dir`)."""
        if not self.is_main:
            return None
        from torch.utils.tensorboard import SummaryWriter  # imported late: tensorboard is slow to load

        return SummaryWriter(log_dir=str(self.summary_dir))

    @property
    def is_main(self) -> bool:
        return dist.is_main_process()

    @property
    def state(self) -> EvalState:
        """The state built by the last :meth:`setup_train` / :meth:`setup_eval`."""
        if self._state is None:
            raise RuntimeError("the solver is not set up yet; call setup_train() or setup_eval()")
        return self._state

    @property
    def module(self) -> nn.Module:
        """The model without its DDP wrapper."""
        return self.state.module

    @property
    def eval_module(self) -> nn.Module:
        return self.state.eval_module

    # ------------------------------------------------------------------------- setup
    def _build_hook(self, index: int, spec: Any) -> SolverHook:
        hook = create(spec, self.cfg.yaml_cfg, path=f"hooks[{index}]")
        if not isinstance(hook, SolverHook):
            raise ConfigError(f"{self.cfg.path}: hooks[{index}] built a {type(hook).__name__}, expected a SolverHook")
        return hook

    def _build_eval_state(self) -> EvalState:
        """Model (tuning weights, device, EMA, compile, SyncBN, DDP), criterion, postprocessor, val loader."""
        dist.seed_everything(self.seed)
        model = self.cfg.model
        tuning = self.cfg.get("tuning")
        if tuning:
            # Before the EMA copy is made, so that it starts from the tuned weights.
            report = load_model_weights(
                model, tuning, strict=False, expect_task=self.cfg.task, purpose=f"tuning (-t) a {self.cfg.task} model"
            )
            logger.info("tuning from %s: %s", tuning, report.describe())
        model = model.to(self.device)
        ema = self.cfg.build("ema", model=model) if self.cfg.use_ema else None
        if self.cfg.get("compile", False):
            compile_regional(model)  # after the EMA deep copy, which must stay an eager module
        sync_bn, find_unused = bool(self.cfg.get("sync_bn", False)), bool(self.cfg.get("find_unused_parameters", False))
        state = EvalState(
            model=dist.wrap_model(model, self.device, sync_bn, find_unused),
            criterion=self.cfg.criterion.to(self.device),
            postprocessor=self.cfg.postprocessor.to(self.device) if self.cfg.get("postprocessor") else None,
            ema=ema,
            val_loader=prepare_eval_loader(self.cfg.val_dataloader),
        )
        n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        logger.info(
            "model: %d trainable parameters, device %s, amp %s, ema %s, compiled %s",
            n_params,
            self.device,
            self.amp_dtype,
            ema is not None,
            bool(self.cfg.get("compile", False)),
        )
        return state

    def setup_train(self) -> TrainState:
        """Everything :meth:`fit` needs; with ``resume`` set, the full state of that checkpoint."""
        resume = resume_source(self.cfg, training=True)
        # Read before anything is built: a refused file or changed settings fail at once.
        checkpoint = read_resume_checkpoint(self.cfg, resume, training=True) if resume is not None else None
        if self.is_main:
            remove_stale_temp_files(self.output_dir)
        if self.device.type == "cpu":
            retain_freed_memory()  # no zero-filled pages for each step's activations
        base = self._build_eval_state()
        train_loader = prepare_train_loader(self.cfg.train_dataloader, self.seed)
        optimizer = build_optimizer(self.cfg, base.module, train_loader)
        scaler = None
        if self.amp_dtype == torch.float16:  # bfloat16 needs no loss scaling
            scaler = self.cfg.build("scaler") if self.cfg.get("scaler") else torch.amp.GradScaler("cuda")
        state = TrainState.extend(
            base,
            train_loader=train_loader,
            optimizer=optimizer,
            lr_scheduler=build_scheduler(self.cfg, optimizer, train_loader),
            scaler=scaler,
        )
        self._state = state
        if resume is not None and checkpoint is not None:
            self._resume(state, checkpoint, resume)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        return state

    def setup_eval(self) -> EvalState:
        """What :meth:`val` needs; with ``resume`` set, the model and EMA weights of that checkpoint."""
        resume = resume_source(self.cfg, training=False)
        checkpoint = read_resume_checkpoint(self.cfg, resume, training=False) if resume is not None else None
        state = self._build_eval_state()
        self._state = state
        if resume is not None and checkpoint is not None:
            self._resume(state, checkpoint, resume)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        return state

    @property
    def summary_dir(self) -> Path:
        """Where TensorBoard event files go (``summary_dir``, default ``OUTPUT_DIR/summary``)."""
        return summary_dir(self.cfg)

    def _resume(self, state: EvalState, checkpoint: Mapping[str, Any], path: Path) -> None:
        logger.info("resuming from %s", path)
        self.load_state_dict(state, checkpoint, source=str(path))
        if isinstance(state, TrainState):
            self.restore_rng(state)
        logger.info("resumed after epoch %d (best %s %s)", self.last_epoch, self.best["metric"], self.best["value"])

    # ------------------------------------------------------------------------- state
    def state_dict(self, state: TrainState) -> dict[str, Any]:
        """The full training state (:func:`~rtdetr_spartan.solver.checkpointing.training_checkpoint`);
        collective in distributed runs."""
        return training_checkpoint(self.cfg, state, self.device, self.last_epoch, self.best)

    def load_state_dict(self, state: EvalState, checkpoint: Mapping[str, Any], source: str = "checkpoint") -> None:
        """Restore what ``checkpoint`` holds into ``state`` and this run's epoch and best record
        (:func:`~rtdetr_spartan.solver.checkpointing.restore_state`); RNG states are kept for
        :meth:`restore_rng`."""
        restored = restore_state(self.cfg, state, checkpoint, source, self.seed)
        self.last_epoch = restored.last_epoch
        self.best = restored.best or self.best
        self._pending_rng = restored.rng

    def restore_rng(self, state: TrainState) -> None:
        """Apply the RNG states read by :meth:`load_state_dict` (including the data generator)."""
        if self._pending_rng is not None:
            set_rng_state(self._pending_rng, self.device, state.train_loader.generator)
            self._pending_rng = None

    # ------------------------------------------------------------------------- files
    def save_checkpoint(self, state: TrainState, name: str) -> Path:
        """Write the training state to ``OUTPUT_DIR/name``; collective, rank 0 writes."""
        checkpoint = self.state_dict(state)
        path = self.output_dir / name
        if self.is_main:
            save_atomic(checkpoint, path)
        dist.barrier()
        return path

    def publish(self, source: Path, name: str) -> Path:
        """``OUTPUT_DIR/name`` as a hard link to (or copy of) ``source``; collective, rank 0 writes.

        A later ``last.pth`` is written to a new file and renamed, so it never changes the link.
        """
        target = self.output_dir / name
        if self.is_main:
            publish_link(source, target)
        dist.barrier()
        return target

    def append_log(self, record: Mapping[str, Any]) -> None:
        """One JSON line in ``OUTPUT_DIR/log.txt`` (rank 0)."""
        if self.is_main:
            append_json_line(self.output_dir / "log.txt", record)
