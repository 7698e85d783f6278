"""COCO box mAP of an exported model through onnxruntime.

    python tools/eval_onnx.py --onnx model.onnx --ann annotations/instances_val2017.json --images val2017/

Same dataset class, validation preprocessing and CocoEvaluator as evaluation in training, so
the numbers compare one to one with the PyTorch model's. Label ``i`` is the ``i``-th sorted
category id of the annotation file, or the COCO id when the model remaps COCO categories
(stored in the ONNX metadata at export).
"""

from __future__ import annotations

import argparse
import logging

from rtdetr_spartan.data.coco_eval import BACKENDS, STAT_NAMES
from rtdetr_spartan.deploy.evaluate import evaluate_predictor
from rtdetr_spartan.deploy.runtime import OnnxPredictor


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--onnx", required=True, help="exported model (tools/export_onnx.py)")
    parser.add_argument("--ann", required=True, help="COCO annotation JSON")
    parser.add_argument("--images", required=True, help="folder of the annotation file's images")
    parser.add_argument("--backend", choices=BACKENDS, default="faster_coco_eval")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    parser.add_argument("--summary", default=None, help="also write the statistics as JSON here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    predictor = OnnxPredictor(args.onnx, threads=args.threads)
    evaluator = evaluate_predictor(predictor, args.ann, args.images, backend=args.backend, batch_size=args.batch_size)
    logger = logging.getLogger(__name__)
    logger.info("%s", ", ".join(f"{name} {value:.4f}" for name, value in zip(STAT_NAMES, evaluator.stats)))
    if args.summary:
        logger.info("summary written to %s", evaluator.write_summary(args.summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
