"""The whole pipeline on generated data, on a laptop CPU: one command.

    python tools/quickstart.py                         # ~15 min on 2 cores: AP50 >= 0.6
    python tools/quickstart.py --fast                  # every stage on tiny data, < 3 min
    python tools/quickstart.py --output-dir outputs/qs --data-dir data --seed 1

Stages: generate the shapes datasets (once; reused later) -> pretrain SpaRTAN-T as a
classifier -> train RT-DETR-SpaRTAN-T from that backbone -> export ONNX and compare onnxruntime
with PyTorch -> COCO mAP of the ONNX model -> annotated validation pictures and latency ->
training-curve PNGs. OUTPUT_DIR/summary.json holds AP, AP50, the ONNX difference, latency,
wall time and the paths of everything written; OUTPUT_DIR/train.log the full log.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from rtdetr_spartan.core import add_overrides_argument
from rtdetr_spartan.misc.logger import close_logging, setup_logging
from rtdetr_spartan.pipeline import default_settings, fast_settings, run_quickstart

REPO_ROOT = Path(__file__).resolve().parents[2]
DETECTION_CONFIG = REPO_ROOT / "configs" / "rtdetr" / "rtdetr_spartan_t_shapes.yml"
PRETRAIN_CONFIG = REPO_ROOT / "configs" / "spartan" / "spartan_t_shapes_cls.yml"

logger = logging.getLogger("rtdetr_spartan.tools.quickstart")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="outputs/quickstart", help="where everything is written")
    parser.add_argument("--data-dir", default="data", help="where the generated datasets go (reused)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the datasets and of training")
    parser.add_argument("--fast", action="store_true", help="tiny datasets, one epoch per stage (smoke test)")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads of PyTorch (default: one per core); 1 is faster when other processes keep the cores busy",
    )
    parser.add_argument("--detection-config", default=str(DETECTION_CONFIG), help="RT-DETR config")
    parser.add_argument("--pretrain-config", default=str(PRETRAIN_CONFIG), help="SpaRTAN classifier config")
    parser.add_argument("--pretrain-epochs", type=int, help="0 trains the detector from scratch")
    parser.add_argument("--detector-epochs", type=int)
    add_overrides_argument(parser, "optimizer.lr=0.0002", subject="detector config")
    parser.add_argument(
        "--pretrain-update",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="pretraining config overrides",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    preset = fast_settings if args.fast else default_settings
    settings = preset(args.output_dir, args.data_dir, args.detection_config, args.pretrain_config, args.seed)
    changes = {"pretrain_epochs": args.pretrain_epochs, "detector_epochs": args.detector_epochs, "device": args.device}
    settings = settings.replace(
        **{k: v for k, v in changes.items() if v is not None},
        detector_overrides=(*settings.detector_overrides, *args.update),
        pretrain_overrides=(*settings.pretrain_overrides, *args.pretrain_update),
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    setup_logging(settings.output_dir)
    try:
        logger.info(
            "quickstart%s: output in %s, datasets in %s",
            " (fast)" if args.fast else "",
            settings.output_dir,
            settings.data_dir,
        )
        run_quickstart(settings)
    finally:
        close_logging()
    return 0


if __name__ == "__main__":
    from rtdetr_spartan.misc.cli_errors import run_main

    raise SystemExit(run_main(main))
