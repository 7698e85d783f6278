"""Export a config's detector (with its postprocessor) to ONNX, then check and verify it.

    python tools/export_onnx.py -c configs/rtdetr/rtdetr_r18vd_6x_coco.yml -r model.pth -o model.onnx
    python tools/export_onnx.py -c CFG -r CKPT -o model.onnx --dynamic-size --simplify

Inputs ``images`` [N, 3, H, W] float in [0, 1] and ``orig_target_sizes`` [N, 2] (w, h); outputs
``labels``, ``boxes`` (XYXY pixels), ``scores``. The file's metadata stores the input size,
class names and category ids. --size H W must be positive multiples of the model's largest
stride (32 for these models). The export fails unless onnxruntime reproduces every detection of
PyTorch's on a sample within --tolerance, or proves it a near-tie: the decoder's query
selection or the final top-K broke a tie differently (the check reads both runtimes' selection).
"""

from __future__ import annotations

import argparse
import logging

import torch

from rtdetr_spartan.core import add_overrides_argument
from rtdetr_spartan.deploy.from_config import export_from_config
from rtdetr_spartan.deploy.sizes import InputSizeError


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", required=True, help="YAML config of the model")
    parser.add_argument("-r", "--resume", default=None, help="checkpoint with trained weights (EMA preferred)")
    parser.add_argument("-o", "--output", default="model.onnx", help="ONNX file to write")
    add_overrides_argument(parser, "num_classes=4 remap_mscoco_category=False")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=None,
        metavar=("H", "W"),
        help="input size to export at (default: the config's eval_spatial_size)",
    )
    batch = parser.add_mutually_exclusive_group()
    batch.add_argument(
        "--dynamic-batch", dest="dynamic_batch", action="store_true", default=True, help="symbolic batch axis (default)"
    )
    batch.add_argument("--static", dest="dynamic_batch", action="store_false", help="fixed batch of 1")
    parser.add_argument("--dynamic-size", action="store_true", help="symbolic image height and width as well")
    parser.add_argument(
        "--size-dtype", choices=("int64", "float32"), default="int64", help="dtype of the orig_target_sizes input"
    )
    parser.add_argument("--simplify", action="store_true", help="simplify with onnxslim/onnxsim (or onnxscript)")
    parser.add_argument(
        "--check", action=argparse.BooleanOptionalAction, default=True, help="run the full onnx.checker (default on)"
    )
    parser.add_argument(
        "--verify",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="compare onnxruntime with PyTorch on a sample (default on)",
    )
    parser.add_argument("--tolerance", type=float, default=1e-3, help="largest difference of a reproduced detection")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = export_from_config(
            args.config,
            args.output,
            checkpoint=args.resume,
            overrides=args.update,
            input_size=tuple(args.size) if args.size else None,
            opset=args.opset,
            dynamic_batch=args.dynamic_batch,
            dynamic_size=args.dynamic_size,
            simplify=args.simplify,
            check=args.check,
            verify=args.verify,
            tolerance=args.tolerance,
            orig_size_dtype=getattr(torch, args.size_dtype),
        )
    except InputSizeError as error:
        source = "argument --size" if args.size else f"{args.config}: eval_spatial_size"
        parser.error(error.message(source))
    logging.getLogger(__name__).info("wrote %s", result.path)
    return 0


if __name__ == "__main__":
    from rtdetr_spartan.misc.cli_errors import run_main

    raise SystemExit(run_main(main))
