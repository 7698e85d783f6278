"""Command-line arguments and the run shared by the training tools (tools/train.py,
tools/pretrain.py) and the Python API: ``solver_args_parser``, ``run_tool`` and ``run_config``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Sequence

from rtdetr_spartan.core import ConfigError, YAMLConfig, add_overrides_argument, merge_dict, parse_overrides
from rtdetr_spartan.core.yaml_utils import load_yaml
from rtdetr_spartan.data.layouts import classification_overrides, detect_layout, detection_overrides
from rtdetr_spartan.misc import dist
from rtdetr_spartan.misc.logger import close_logging, setup_logging
from rtdetr_spartan.solver import build_solver
from rtdetr_spartan.solver.resume import describe_removed, remove_previous_run, summary_dir
from rtdetr_spartan.solver.state import SolverHook

logger = logging.getLogger(__name__)


def solver_args_parser(description: str, config_help: str, outputs_help: str) -> argparse.ArgumentParser:
    """The flags every solver tool takes: config, resume/tuning, overwrite, test-only, AMP,
    compile, seed, output directory, device and ``-u`` overrides (repeatable)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", required=True, help=config_help)
    start = parser.add_mutually_exclusive_group()
    start.add_argument(
        "-r",
        "--resume",
        help="checkpoint to resume (model, EMA, optimizer, scheduler, epoch, RNG) with the settings it was written "
        "with (others are refused, except -u epochs=N, which extends the run and rebuilds the lr schedule); 'auto': "
        "OUTPUT_DIR/last.pth when it exists, else a fresh run (the setting for torchrun --max-restarts)",
    )
    start.add_argument("-t", "--tuning", help="checkpoint whose matching weights initialise the model")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start a fresh run in an output directory that holds an earlier one: its checkpoints, log.txt and "
        "TensorBoard events are deleted and train.log emptied",
    )
    parser.add_argument("--test-only", action="store_true", help="evaluate on the validation set only")
    parser.add_argument(
        "--amp", action="store_true", help="mixed precision (fp16 + GradScaler on CUDA; bf16 autocast on the CPU)"
    )
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the model's repeated blocks (regional compilation)"
    )
    parser.add_argument("--seed", type=int, help="random seed (each rank adds its rank)")
    parser.add_argument("--output-dir", help=outputs_help)
    parser.add_argument(
        "--data",
        metavar="DIR",
        help="dataset directory, its layout detected: COCO, Roboflow COCO or YOLO for detection, an ImageFolder "
        "root (train/, val/) for classification; sets the dataloaders' datasets and num_classes (-u wins)",
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    add_overrides_argument(parser, "epochs=12 train_dataloader.batch_size=4")
    return parser


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Config values from the command line; ``-u`` overrides come first, named flags win."""
    named = {
        "resume": args.resume,
        "tuning": args.tuning,
        "seed": args.seed,
        "output_dir": args.output_dir,
        "device": args.device,
    }
    overrides = merge_dict(parse_overrides(args.update), {k: v for k, v in named.items() if v is not None})
    for flag, key in (("amp", "use_amp"), ("compile", "compile"), ("overwrite", "overwrite")):
        if getattr(args, flag):
            overrides[key] = True
    return overrides


def dataset_overrides(task: str, data: str | Path) -> dict[str, Any]:
    """The overrides that point a ``task`` config at the dataset directory ``data`` (its layout
    detected by :mod:`rtdetr_spartan.data.layouts`)."""
    if task == "classification":
        return classification_overrides(data)
    return detection_overrides(detect_layout(data))


def load_tool_config(args: argparse.Namespace) -> YAMLConfig:
    """The config of ``args``: ``--data``'s dataset overrides, then ``-u`` and the named flags."""
    overrides = config_overrides(args)
    if getattr(args, "data", None):
        task = str(overrides.get("task") or load_yaml(Path(args.config)).get("task", "detection"))
        overrides = merge_dict(dataset_overrides(task, args.data), overrides)
    return YAMLConfig(args.config, **overrides)


def run_solver(cfg: Any, test_only: bool, hooks: Sequence[SolverHook] = ()) -> dict[str, Any]:
    """Build the config's solver (with ``hooks``) and evaluate (``test_only``: the metrics) or
    train (``fit``'s result, ``{"final": metrics, "best": record}``)."""
    solver = build_solver(cfg)
    for hook in hooks:
        solver.register_hook(hook)
    if test_only:
        return solver.val()
    return solver.fit()


def clear_for_overwrite(cfg: YAMLConfig, test_only: bool) -> list[Path] | None:
    """With ``--overwrite`` on a fresh training run: remove the earlier run's files (checkpoints,
    logs, TensorBoard events) before this run's log file is opened; returns what rank 0 removed,
    ``None`` when nothing was to be done. Collective."""
    if not cfg.get("overwrite") or test_only or cfg.get("resume"):
        return None
    removed = remove_previous_run(cfg.output_dir, summary_dir(cfg)) if dist.is_main_process() else []
    dist.barrier()  # no rank looks for last.pth before it is gone
    return removed


def run_config(cfg: YAMLConfig, test_only: bool = False, hooks: Sequence[SolverHook] = ()) -> dict[str, Any]:
    """Run a loaded config as the training tools do: start torch.distributed for the config's
    device (NCCL for CUDA, gloo for the CPU; nothing outside torchrun), log to its output
    directory, then train or evaluate (``run_solver``). Logging and the process group are closed
    however the run ends. Every rank calls it."""
    setup_logging()  # console only until the output directory exists
    try:
        dist.init_distributed(device=cfg.get("device"))
        removed = clear_for_overwrite(cfg, test_only)
        setup_logging(cfg.output_dir)
        if removed:
            logger.warning("overwrite: removed the earlier run's %s", describe_removed(removed, cfg.output_dir))
        logger.info("config %s, task %s, world size %d", cfg.path, cfg.task, dist.get_world_size())
        result = run_solver(cfg, test_only, hooks)
        if not test_only:
            best = result.get("best", result)
            logger.info(
                "best %s %s at epoch %s; checkpoints in %s",
                best.get("metric"),
                best.get("value"),
                best.get("epoch"),
                cfg.output_dir,
            )
        return result
    finally:
        close_logging()
        dist.cleanup()


def run_tool(args: argparse.Namespace, task: str | None = None, other_tool: str = "") -> dict[str, Any]:
    """What a solver tool's ``main`` does with its parsed ``args``: load the config with the
    dataset of ``--data`` and the command-line overrides (``task``: the one it must declare, else
    ``other_tool`` is suggested), then :func:`run_config`."""
    setup_logging()
    try:
        cfg = load_tool_config(args)
        if task is not None and cfg.task != task:
            raise ConfigError(
                f"{args.config}: task is '{cfg.task}', this tool needs task: {task} (use {other_tool} for other tasks)"
            )
    except BaseException:
        close_logging()
        raise
    return run_config(cfg, args.test_only)
