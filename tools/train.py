# Follows the design of RT-DETR (lyuwenyu/RT-DETR, Apache-2.0).
"""Train or evaluate a model from a YAML config.

    python tools/train.py -c configs/rtdetr/rtdetr_r18vd_6x_coco.yml
    python tools/train.py -c CFG -r output/x/last.pth             # resume everything
    python tools/train.py -c CFG -t weights.pth                     # fine-tune from matching weights
    python tools/train.py -c CFG -r output/x/best.pth --test-only   # evaluate only
    torchrun --nproc-per-node=2 tools/train.py -c CFG               # DDP (NCCL on GPU, gloo on CPU)

``batch_size`` in the config is per process: the total batch is batch_size x world size.
"""
from __future__ import annotations

import argparse
import logging
from typing import Any

from rtdetr_spartan.core import YAMLConfig, merge_dict, parse_overrides
from rtdetr_spartan.misc import dist
from rtdetr_spartan.misc.logger import close_logging, setup_logging
from rtdetr_spartan.solver import build_solver

logger = logging.getLogger("rtdetr_spartan.tools.train")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", required=True, help="YAML config file")
    start = parser.add_mutually_exclusive_group()
    start.add_argument("-r", "--resume", help="checkpoint to resume (model, optimizer, epoch, RNG, ...)")
    start.add_argument("-t", "--tuning", help="checkpoint whose matching weights initialise the model")
    parser.add_argument("--test-only", action="store_true", help="evaluate on the validation set only")
    parser.add_argument("--amp", action="store_true",
                        help="mixed precision (fp16 + GradScaler on CUDA; bf16 autocast on the CPU)")
    parser.add_argument("--seed", type=int, help="random seed (each rank adds its rank)")
    parser.add_argument("--output-dir", help="where checkpoints, logs and eval files go")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    parser.add_argument("-u", "--update", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. -u epochs=12 train_dataloader.batch_size=4")
    return parser


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Config values from the command line; ``-u`` overrides come first, named flags win."""
    overrides = parse_overrides(args.update)
    named = {"resume": args.resume, "tuning": args.tuning, "seed": args.seed,
             "output_dir": args.output_dir, "device": args.device}
    overrides = merge_dict(overrides, {k: v for k, v in named.items() if v is not None})
    if args.amp:
        overrides["use_amp"] = True
    return overrides


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    cfg = YAMLConfig(args.config, **config_overrides(args))
    try:
        # After the config: its 'device' decides the backend (NCCL for CUDA, gloo for the CPU).
        dist.init_distributed(device=cfg.get("device"))
        setup_logging(cfg.output_dir)
        logger.info("config %s, task %s, world size %d", args.config, cfg.task, dist.get_world_size())
        solver = build_solver(cfg)
        if args.test_only:
            solver.val()
        else:
            solver.fit()
    finally:
        close_logging()
        dist.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
