"""Pretrain a backbone as an image classifier (ImageNet layout) from a YAML config.

    python tools/pretrain.py -c configs/spartan/spartan_t_imagenet.yml
    python tools/pretrain.py -c CFG -r output/x/last.pth                 # resume everything
    python tools/pretrain.py -c CFG -r output/x/last.pth -u epochs=400   # extend a run (lr schedule rebuilt)
    torchrun --max-restarts=3 --nproc-per-node=8 tools/pretrain.py -c CFG -r auto   # elastic restarts
    python tools/pretrain.py -c CFG -r output/x/best.pth --test-only     # top-1/top-5 only
    python tools/pretrain.py -c CFG --data data/imagenet                  # an ImageFolder root (train/, val/)
    torchrun --nproc-per-node=8 tools/pretrain.py -c CFG                  # DDP (NCCL on GPU, gloo on CPU)
    torchrun --nnodes=2 --node-rank=0 --nproc-per-node=8 \\
        --master-addr=HOST --master-port=29500 tools/pretrain.py -c CFG   # two machines

``batch_size`` in the config is per process; the lr is scaled to the total batch
(``lr x batch_size x processes / base_lr_batch``). The detector loads the result with
``SpaRTAN: {pretrained: OUTPUT_DIR/best.pth}``. The same tool is ``rtdetr-spartan pretrain``.
"""

from __future__ import annotations

import argparse

from rtdetr_spartan.solver.cli import run_tool, solver_args_parser

TASK = "classification"


def get_args_parser() -> argparse.ArgumentParser:
    return solver_args_parser(__doc__, "YAML config file (task: classification)", "where checkpoints and logs go")


def main(argv: list[str] | None = None) -> int:
    run_tool(get_args_parser().parse_args(argv), TASK, "tools/train.py")
    return 0


if __name__ == "__main__":
    from rtdetr_spartan.misc.cli_errors import run_main

    raise SystemExit(run_main(main))
