"""COCO box mAP of an exported model through onnxruntime or OpenVINO.

    python tools/eval_onnx.py --onnx model.onnx --ann annotations/instances_val2017.json --images val2017/
    python tools/eval_onnx.py --onnx model.onnx --runtime openvino --ann ... --images ...

Same dataset class, validation preprocessing and CocoEvaluator as evaluation in training, so
the numbers compare one to one with the PyTorch model's. Label ``i`` is scored as the category
id the model stores for it (ONNX metadata, written at export), so a file holding a subset of the
model's categories is scored right; only a model exported without ids (names ``class_<i>``)
takes the ``i``-th sorted category id of the annotation file. Class names that differ from the
annotation file's are a warning; a model none of whose classes is in the file, or a file with
annotated categories the model does not know, is an error (exit code 1).
"""

from __future__ import annotations

import argparse
import logging

from rtdetr_spartan.data.coco_eval import BACKENDS, STAT_NAMES
from rtdetr_spartan.deploy.evaluate import CategoryMismatchError, evaluate_predictor
from rtdetr_spartan.deploy.loading import RUNTIMES, load_predictor
from rtdetr_spartan.deploy.openvino_runtime import PRECISIONS


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--onnx", required=True, help="exported model (tools/export_onnx.py)")
    parser.add_argument("--ann", required=True, help="COCO annotation JSON")
    parser.add_argument("--images", required=True, help="folder of the annotation file's images")
    parser.add_argument("--backend", choices=BACKENDS, default="faster_coco_eval")
    parser.add_argument("--batch-size", type=int, default=4, help="images per inference run (>= 1)")
    parser.add_argument("--runtime", choices=RUNTIMES, default="onnxruntime")
    parser.add_argument("--threads", type=int, default=None, help="inference threads (default: all cores)")
    parser.add_argument(
        "--precision", choices=PRECISIONS, default="float32", help="openvino: bfloat16 on CPUs that support it"
    )
    parser.add_argument("--summary", default=None, help="also write the statistics as JSON here")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.runtime != "openvino" and args.precision != "float32":
        parser.error("--precision needs --runtime openvino")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be a positive number of images, got {args.batch_size}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1 (omit it to use all cores), got {args.threads}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logger = logging.getLogger(__name__)
    predictor = load_predictor(args.onnx, args.runtime, threads=args.threads, precision=args.precision)
    try:
        evaluator = evaluate_predictor(
            predictor, args.ann, args.images, backend=args.backend, batch_size=args.batch_size
        )
    except CategoryMismatchError as err:
        logger.error("%s", err)
        return 1
    logger.info("%s", ", ".join(f"{name} {value:.4f}" for name, value in zip(STAT_NAMES, evaluator.stats)))
    if args.summary:
        logger.info("summary written to %s", evaluator.write_summary(args.summary))
    return 0


if __name__ == "__main__":
    from rtdetr_spartan.misc.cli_errors import run_main

    raise SystemExit(run_main(main))
