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

from rtdetr_spartan.core import YAMLConfig
from rtdetr_spartan.misc import dist
from rtdetr_spartan.misc.logger import close_logging, setup_logging
from rtdetr_spartan.solver.cli import config_overrides, run_solver, solver_args_parser

logger = logging.getLogger("rtdetr_spartan.tools.train")


def get_args_parser() -> argparse.ArgumentParser:
    return solver_args_parser(__doc__, "YAML config file", "where checkpoints, logs and eval files go")


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    cfg = YAMLConfig(args.config, **config_overrides(args))
    try:
        # After the config: its 'device' decides the backend (NCCL for CUDA, gloo for the CPU).
        dist.init_distributed(device=cfg.get("device"))
        setup_logging(cfg.output_dir)
        logger.info("config %s, task %s, world size %d", args.config, cfg.task, dist.get_world_size())
        run_solver(cfg, args.test_only)
    finally:
        close_logging()
        dist.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
