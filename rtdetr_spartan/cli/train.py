# Follows the design of RT-DETR (lyuwenyu/RT-DETR, Apache-2.0).
"""Train or evaluate a model from a YAML config.

    python tools/train.py -c configs/rtdetr/rtdetr_r18vd_6x_coco.yml
    python tools/train.py -c CFG -r output/x/last.pth             # resume everything
    python tools/train.py -c CFG -r auto                            # resume OUTPUT_DIR/last.pth if any
    python tools/train.py -c CFG -r output/x/last.pth -u epochs=120  # extend a run (lr schedule rebuilt)
    python tools/train.py -c CFG --overwrite                        # fresh run over an earlier one
    python tools/train.py -c CFG -t weights.pth                     # fine-tune from matching weights
    python tools/train.py -c CFG -r output/x/best.pth --test-only   # evaluate only (= rtdetr-spartan val)
    python tools/train.py -c CFG --data datasets/my_yolo            # a dataset directory: COCO, Roboflow or YOLO
    torchrun --nproc-per-node=2 tools/train.py -c CFG               # DDP (NCCL on GPU, gloo on CPU)
    torchrun --max-restarts=3 --nproc-per-node=2 tools/train.py -c CFG -r auto   # elastic restarts

``batch_size`` in the config is per process: the total batch is batch_size x world size.
The same tool is ``rtdetr-spartan train`` (``torchrun --nproc-per-node=2 -m rtdetr_spartan train -c CFG``).
"""

from __future__ import annotations

import argparse

from rtdetr_spartan.solver.cli import run_tool, solver_args_parser


def get_args_parser() -> argparse.ArgumentParser:
    return solver_args_parser(__doc__, "YAML config file", "where checkpoints, logs and eval files go")


def main(argv: list[str] | None = None) -> int:
    run_tool(get_args_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    from rtdetr_spartan.misc.cli_errors import run_main

    raise SystemExit(run_main(main))
