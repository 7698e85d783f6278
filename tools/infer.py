"""Detect objects in an image, a folder of images or a video; write annotated pictures and JSON.

    python tools/infer.py --onnx model.onnx -i street.jpg -o out/
    python tools/infer.py -c configs/rtdetr/rtdetr_r18vd_6x_coco.yml -r model.pth -i images/ -o out/

Writes one annotated picture per image (``<name>_frames/`` per video) and ``detections.json``
(per image: label, category id, class name, score, XYXY box and COCO XYWH bbox in pixels).
Video needs imageio with ffmpeg (or a torchvision with video support); without one, videos are
reported as errors and the rest is processed.
"""

from __future__ import annotations

import argparse
import logging

from rtdetr_spartan.deploy.infer import run_inference
from rtdetr_spartan.deploy.runtime import OnnxPredictor, Predictor, TorchPredictor


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--onnx", help="exported model (tools/export_onnx.py)")
    source.add_argument("-c", "--config", help="YAML config of a PyTorch model (with -r)")
    parser.add_argument("-r", "--resume", default=None, help="checkpoint for --config")
    parser.add_argument(
        "-u",
        "--update",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides, e.g. -u num_classes=4 (repeatable)",
    )
    parser.add_argument("-i", "--input", required=True, help="image, folder of images, or video")
    parser.add_argument("-o", "--output", required=True, help="folder for pictures and detections.json")
    parser.add_argument("--threshold", type=float, default=0.5, help="minimum score to keep a detection")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    parser.add_argument("--device", default="cpu", help="PyTorch device for --config")
    return parser


def _predictor(args: argparse.Namespace) -> Predictor:
    if args.onnx:
        return OnnxPredictor(args.onnx, threads=args.threads)
    if args.resume is None:
        logging.getLogger(__name__).warning("no -r checkpoint: detections come from untrained weights")
    return TorchPredictor.from_config(args.config, args.resume, args.update, device=args.device)


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    results = run_inference(_predictor(args), args.input, args.output, threshold=args.threshold)
    done = len(results["images"]) + len(results["videos"])
    return 0 if done and not results["errors"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
