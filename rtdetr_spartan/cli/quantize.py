"""INT8 post-training quantization of an exported detector (NNCF, for OpenVINO on the CPU).

    python tools/quantize.py --onnx model.onnx -c configs/rtdetr/rtdetr_spartan_t_shapes.yml -o int8/
    python tools/quantize.py --onnx model.onnx --images calibration_images/ -o int8/ --subset 100
    python tools/eval_onnx.py --onnx int8/model_int8.xml --runtime openvino --ann ... --images ...

Calibrates on --subset images (default 300) of the config's validation dataset (else its
training dataset) or of a folder, preprocessed as the predictors preprocess them, and writes
OUT_DIR/model_int8.xml + .bin carrying the export's metadata (classes, input size, category
ids). The decoder (query selection, deformable attention, box refinement, score heads) and the
postprocessor stay in float: quantizing them collapses RT-DETR's accuracy. The last line of
stdout is one JSON object describing the result.
"""

from __future__ import annotations

import argparse
import json
import logging

from rtdetr_spartan.core import add_overrides_argument
from rtdetr_spartan.deploy.quantize import (
    DEFAULT_SUBSET,
    MODEL_TYPES,
    PRESETS,
    calibration_from_config,
    calibration_from_folder,
    quantize_openvino,
    read_model_info,
)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--onnx", required=True, help="exported model (tools/export_onnx.py) or a saved float IR .xml")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("-c", "--config", help="YAML config whose validation (else training) images calibrate")
    source.add_argument("--images", help="folder of calibration images")
    add_overrides_argument(parser, "val_dataloader.dataset.img_folder=data/val")
    parser.add_argument("-o", "--output-dir", required=True, help="folder for model_int8.xml / .bin")
    parser.add_argument("--subset", type=int, default=DEFAULT_SUBSET, help="calibration images (a seeded sample)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the calibration sample")
    parser.add_argument("--runtime", choices=("openvino",), default="openvino", help="target runtime (NNCF)")
    parser.add_argument(
        "--preset", choices=PRESETS, default="mixed", help="NNCF preset: mixed (asymmetric activations) or performance"
    )
    parser.add_argument(
        "--model-type",
        choices=MODEL_TYPES,
        default="transformer",
        help="NNCF scheme: transformer (default; convs and matrix products only) or cnn (also element-wise ops)",
    )
    parser.add_argument(
        "--keep-float",
        nargs="+",
        action="extend",
        default=[],
        metavar="PREFIX",
        help="more node-name prefixes to keep in float, e.g. /model/encoder/ (the decoder always is); "
        "for SpaRTAN on a CPU with bf16 (AMX, AVX512_BF16) use /model/backbone/: its quantized backbone is "
        "slower than bf16 there (docs/results.md)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.subset < 1:
        parser.error(f"--subset must be >= 1 calibration image, got {args.subset}")
    if args.update and not args.config:
        parser.error("-u/--update applies to -c/--config")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("nncf").setLevel(logging.WARNING)  # NNCF logs one INFO line per ignored node
    if args.config:
        from rtdetr_spartan.deploy.from_config import load_config

        info = read_model_info(args.onnx)
        cfg = load_config(args.config, args.update)
        images = calibration_from_config(cfg.yaml_cfg, info, args.subset, args.seed, source=args.config)
    else:
        images = calibration_from_folder(args.images, args.subset, args.seed)
    result = quantize_openvino(
        args.onnx,
        images,
        args.output_dir,
        preset=args.preset,
        model_type=args.model_type,
        extra_float_scopes=args.keep_float,
    )
    print(json.dumps(result.to_dict()), flush=True)
    return 0


if __name__ == "__main__":
    from rtdetr_spartan.misc.cli_errors import run_main

    raise SystemExit(run_main(main))
