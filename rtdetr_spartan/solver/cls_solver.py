"""Classification solver (ImageNet-style pretraining): the epoch loop of :meth:`ClsSolver.fit`
and the top-k evaluation of :meth:`ClsSolver.val`.

Follows the design of SpaRTAN (henry-pay/SpaRTAN, Apache-2.0): AdamW with the learning rate
scaled to the total batch, warm-up + cosine schedule, BatchNorm statistics averaged across ranks
after each epoch, top-1 selects ``best.pth``.
"""

from __future__ import annotations

import inspect
import logging
import time
from typing import Any, Mapping

import torch

from rtdetr_spartan.core import ConfigError, lookup
from rtdetr_spartan.data.dataloader import set_epoch
from rtdetr_spartan.misc import dist
from rtdetr_spartan.optim.no_decay import param_groups_for
from rtdetr_spartan.solver.base import BaseSolver
from rtdetr_spartan.solver.cls_engine import all_reduce_batchnorm_stats, evaluate, train_one_epoch
from rtdetr_spartan.solver.loaders import prepare_eval_loader, prepare_train_loader

__all__ = ["ClsSolver", "scaled_lr"]

logger = logging.getLogger(__name__)


def scaled_lr(base_lr: float, total_batch: int, base_lr_batch: int | None) -> float:
    """Linear scaling: ``base_lr * total_batch / base_lr_batch`` (``base_lr`` when unset)."""
    if base_lr_batch is None:
        return base_lr
    if base_lr_batch <= 0:
        raise ConfigError(f"base_lr_batch must be a positive batch size, got {base_lr_batch}")
    return base_lr * total_batch / base_lr_batch


class ClsSolver(BaseSolver):
    """Trains a classifier for ``epochs`` epochs, evaluating top-1/top-5 after each one.

    Config keys beyond :class:`BaseSolver`'s: ``base_lr_batch`` (the total batch that
    ``optimizer.lr`` is meant for; every group's lr is scaled by ``total batch / base_lr_batch``),
    ``optimizer.params`` (a regex list or a registered group function such as
    ``no_weight_decay_groups``), and a scheduler with ``step_per: iteration`` (stepped after
    every optimizer step; any other scheduler steps once per epoch).
    """

    # ------------------------------------------------------------------------- setup
    def setup_train(self) -> None:
        """As :meth:`BaseSolver.setup_train`, with the training loader built before the
        optimization: the lr scaling needs the world size and batch, the scheduler its length."""
        self._setup_model()
        self.train_dataloader = prepare_train_loader(self.cfg.train_dataloader, self.seed)
        self._setup_optimization()
        self.val_dataloader = prepare_eval_loader(self.cfg.val_dataloader)
        self._resume_if_requested()
        self.output_dir.mkdir(parents=True, exist_ok=True)

    def _setup_optimization(self) -> None:
        optimizer_cfg = self.cfg.get("optimizer") or {}
        groups = param_groups_for(optimizer_cfg, self.module, self.cfg.yaml_cfg)
        logger.info(
            "optimizer parameter groups: %s",
            ", ".join(f"{len(g['params'])} tensors (weight_decay {g.get('weight_decay', 'default')})" for g in groups),
        )
        self.optimizer = self.cfg.build("optimizer", params=groups)
        self._scale_lr()
        self.lr_scheduler = self._build_scheduler() if self.cfg.get("lr_scheduler") else None
        self.scaler = None
        if self.amp_dtype == torch.float16:  # as BaseSolver: bfloat16 needs no loss scaling
            self.scaler = self.cfg.build("scaler") if self.cfg.get("scaler") else torch.amp.GradScaler("cuda")

    def _scale_lr(self) -> None:
        assert self.optimizer is not None and self.train_dataloader is not None
        batch = int(self.train_dataloader.batch_size or 1)
        total = batch * dist.get_world_size()
        base_lr_batch = self.cfg.get("base_lr_batch")
        base = float(self.optimizer.defaults["lr"])
        lr = scaled_lr(base, total, base_lr_batch)
        factor = lr / base if base else 1.0
        for group in self.optimizer.param_groups:
            group["lr"] *= factor
        self.optimizer.defaults["lr"] = lr
        logger.info(
            "lr %.6g = base lr %.6g x total batch %d (%d x %d processes) / base_lr_batch %s",
            lr,
            base,
            total,
            batch,
            dist.get_world_size(),
            base_lr_batch,
        )

    def _build_scheduler(self) -> Any:
        spec = self.cfg.get("lr_scheduler")
        name = spec if isinstance(spec, str) else spec.get("type") if isinstance(spec, Mapping) else None
        extra: dict[str, Any] = {"optimizer": self.optimizer}
        try:
            target = lookup(str(name))
        except KeyError as err:
            raise ConfigError(f"{self.cfg.path}: lr_scheduler: {err.args[0]}") from None
        if "iters_per_epoch" in inspect.signature(target).parameters:
            extra["iters_per_epoch"] = len(self.train_dataloader)  # type: ignore[arg-type]
        return self.cfg.build("lr_scheduler", **extra)

    @property
    def _steps_per_iteration(self) -> bool:
        return getattr(self.lr_scheduler, "step_per", "epoch") == "iteration"

    # ------------------------------------------------------------------------- evaluation
    def evaluate(self) -> dict[str, float]:
        """Top-k accuracy of the EMA (or plain) model on the validation set, on every rank."""
        assert self.val_dataloader is not None
        return evaluate(self.eval_module, self.val_dataloader, self.device, amp_dtype=self.amp_dtype)

    def val(self) -> dict[str, float]:
        """Evaluate only (``--test-only``)."""
        self.setup_eval()
        stats = self.evaluate()
        logger.info(
            "top-1 %.2f%%  top-5 %.2f%%  loss %.4f  (%d images)",
            stats["top1"],
            stats["top5"],
            stats["loss"],
            stats["num_images"],
        )
        self.append_log({f"test_{k}": v for k, v in stats.items()})
        return stats

    # ------------------------------------------------------------------------- training
    def _update_best(self, top1: float, epoch: int) -> bool:
        if self.best.get("value") is not None and top1 <= self.best["value"]:
            return False
        self.best = {"metric": "top1", "value": top1, "epoch": epoch}
        return True

    def _open_writer(self) -> Any:
        if not self.is_main:
            return None
        from torch.utils.tensorboard import SummaryWriter  # imported late: tensorboard is slow to load

        return SummaryWriter(log_dir=str(self.cfg.get("summary_dir") or self.output_dir / "summary"))

    def _log_epoch(
        self, epoch: int, train_stats: Mapping[str, float], test_stats: Mapping[str, float], writer: Any, seconds: float
    ) -> None:
        self.append_log(
            {
                **{f"train_{k}": v for k, v in train_stats.items()},
                **{f"test_{k}": v for k, v in test_stats.items()},
                "epoch": epoch,
                "best": self.best,
                "epoch_time_s": round(seconds, 3),
            }
        )
        logger.info(
            "epoch %d: loss %.4f  top-1 %.2f%%  top-5 %.2f%%  (best top-1 %.2f%% at epoch %d, %.1f s)",
            epoch,
            train_stats.get("loss", float("nan")),
            test_stats["top1"],
            test_stats["top5"],
            self.best["value"],
            self.best["epoch"],
            seconds,
        )
        if writer is not None:
            writer.add_scalar("Train/loss", train_stats.get("loss", float("nan")), epoch)
            for key in ("top1", "top5", "loss"):
                writer.add_scalar(f"Test/{key}", test_stats[key], epoch)
            writer.flush()

    def _train_epoch(self, epoch: int, writer: Any) -> None:
        assert self.train_dataloader is not None and self.optimizer is not None
        start = time.perf_counter()
        set_epoch(self.train_dataloader, epoch)
        per_iteration = self.lr_scheduler if self._steps_per_iteration else None
        train_stats = train_one_epoch(
            self.model,
            self.criterion,
            self.train_dataloader,
            self.optimizer,
            self.device,
            epoch,
            lr_scheduler=per_iteration,
            clip_max_norm=self.cfg.clip_max_norm,
            ema=self.ema,
            scaler=self.scaler,
            amp_dtype=self.amp_dtype,
            print_freq=int(self.cfg.get("print_freq", 50) or 0),
            writer=writer,
        )
        if self.lr_scheduler is not None and per_iteration is None:
            self.lr_scheduler.step()
        all_reduce_batchnorm_stats(self.module)
        if self.ema is not None:
            all_reduce_batchnorm_stats(self.ema.module)
        test_stats = self.evaluate()
        is_best = self._update_best(test_stats["top1"], epoch)
        self.last_epoch = epoch
        self.save_checkpoints(epoch, is_best)
        self._log_epoch(epoch, train_stats, test_stats, writer, time.perf_counter() - start)

    def fit(self) -> dict[str, Any]:
        """Train from ``last_epoch + 1`` to ``epochs``; returns the best top-1 record
        ``{"metric": "top1", "value", "epoch"}``."""
        self.setup_train()
        first = self.last_epoch + 1
        if first >= self.epochs:
            logger.warning("nothing to train: %d of epochs=%d already done", first, self.epochs)
        writer = self._open_writer()
        logger.info("training epochs %d..%d, output in %s", first, self.epochs - 1, self.output_dir)
        try:
            for epoch in range(first, self.epochs):
                self._train_epoch(epoch, writer)
        finally:
            if writer is not None:
                writer.close()
        return dict(self.best)
