"""Detect objects in an image, a video or a folder of them; write annotated pictures, videos and JSON.

    python tools/infer.py --onnx model.onnx -i street.jpg -o out/
    python tools/infer.py --onnx model.onnx --runtime openvino -i traffic.mp4 -o out/
    python tools/infer.py -c configs/rtdetr/rtdetr_r18vd_6x_coco.yml -r model.pth -i images/ -o out/

Writes one annotated picture per image, one annotated MP4 per video (same frame rate and size,
decoded and encoded frame by frame) and ``detections.json``: per image, and per video frame, the
label, category id, class name, score, XYXY box (clipped to the image) and COCO XYWH bbox in
pixels. An input that cannot be read is listed under ``errors`` and the others go on (exit code 1).
Inputs are never written over: an output folder that is the input folder or holds an input is an
error, and two inputs that would give one output name (``clip.avi``, ``clip_avi.mp4``) get
distinct names (``clip_avi_2.mp4``), both listed in ``detections.json``.
"""

from __future__ import annotations

import argparse
import logging

from rtdetr_spartan.core import add_overrides_argument
from rtdetr_spartan.deploy.infer import run_inference
from rtdetr_spartan.deploy.loading import RUNTIMES, load_predictor
from rtdetr_spartan.deploy.openvino_runtime import PRECISIONS
from rtdetr_spartan.deploy.predictor import Predictor
from rtdetr_spartan.deploy.torch_predictor import TorchPredictor


def _score(text: str) -> float:
    """A detection score threshold: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a score threshold lies in [0, 1], got {value:g}")
    return value


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--onnx", help="exported model (tools/export_onnx.py)")
    source.add_argument("-c", "--config", help="YAML config of a PyTorch model (with -r)")
    parser.add_argument("-r", "--resume", default=None, help="checkpoint for --config")
    add_overrides_argument(parser, "num_classes=4")
    parser.add_argument("-i", "--input", required=True, help="image, folder of images, or video")
    parser.add_argument(
        "-o", "--output", required=True, help="folder for pictures and detections.json (not the input folder)"
    )
    parser.add_argument("--threshold", type=_score, default=0.5, help="minimum score to keep a detection, in [0, 1]")
    parser.add_argument("--runtime", choices=RUNTIMES, default="onnxruntime", help="runtime for --onnx")
    parser.add_argument("--threads", type=int, default=None, help="--onnx: inference threads (default: all cores)")
    parser.add_argument(
        "--precision", choices=PRECISIONS, default="float32", help="openvino: bfloat16 on CPUs that support it"
    )
    parser.add_argument("--save-ir", default=None, metavar="DIR", help="openvino: also save the model as IR here")
    parser.add_argument("--device", default="cpu", help="PyTorch device for --config")
    return parser


def _predictor(args: argparse.Namespace) -> Predictor:
    if args.onnx:
        return load_predictor(
            args.onnx, args.runtime, threads=args.threads, precision=args.precision, save_ir=args.save_ir
        )
    if args.resume is None:
        logging.getLogger(__name__).warning("no -r checkpoint: detections come from untrained weights")
    return TorchPredictor.from_config(args.config, args.resume, args.update, device=args.device)


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.runtime != "openvino" and (args.precision != "float32" or args.save_ir):
        parser.error("--precision and --save-ir need --onnx with --runtime openvino")
    if args.config and args.runtime != "onnxruntime":
        parser.error("--runtime applies to --onnx models; --config runs in PyTorch")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    results = run_inference(_predictor(args), args.input, args.output, threshold=args.threshold)
    done = len(results["images"]) + len(results["videos"])
    return 0 if done and not results["errors"] else 1


if __name__ == "__main__":
    from rtdetr_spartan.misc.cli_errors import run_main

    raise SystemExit(run_main(main))
