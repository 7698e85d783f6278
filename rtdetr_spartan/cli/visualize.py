"""Grad-CAM and feature maps of a classifier or detector on images: PNG figures (and TensorBoard).

    python tools/visualize.py -c configs/spartan/spartan_t_shapes_cls.yml -r best.pth -i images/ -o vis/
    python tools/visualize.py -c configs/rtdetr/rtdetr_spartan_t_shapes.yml -r best.pth -i val/ -o vis/ \\
        --method gradcam++ --layers backbone.layers.19 encoder.encoder.0 --tensorboard runs/vis

Classifier (``task: classification``): per image, the preprocessed image beside the CAM of the
predicted class (or ``--class``) at each layer; default layers those of the SpaRTAN authors'
visualization (``conv``, ``layers.2``, ``layers.2.smixer``, ``layers.2.cmixer``) and the last.
Detector: per image, the top ``--top-k`` detections beside the CAM of their scores at each layer
(default: the backbone's output stages), and a grid of each stage's most active channels.
Layer names are ``model.named_modules()`` names; a wrong one is an error listing close names.
A detector's layers must be spatial: the backbone's, or the encoder's maps and tokens of one
feature level (``decoder.*`` outputs object queries, which have no place in the image).
"""

from __future__ import annotations

import argparse
import logging

from rtdetr_spartan.core import add_overrides_argument
from rtdetr_spartan.deploy.from_config import load_config
from rtdetr_spartan.visualize.cam import METHODS
from rtdetr_spartan.visualize.run import visualize


def _positive(text: str) -> int:
    """A count of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (the detections the CAM explains), got {value}")
    return value


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", required=True, help="YAML config of the model")
    parser.add_argument("-r", "--resume", default=None, help="checkpoint (without: untrained weights, a warning)")
    add_overrides_argument(parser)
    parser.add_argument("-i", "--input", required=True, help="image or folder of images")
    parser.add_argument("-o", "--output", required=True, help="folder for the PNG figures")
    parser.add_argument("--layers", nargs="+", default=[], metavar="NAME", help="layers to draw CAMs of")
    parser.add_argument("--method", choices=sorted(METHODS), default="gradcam")
    parser.add_argument("--class", dest="class_index", type=int, default=None, help="classifier: class to explain")
    parser.add_argument(
        "--top-k", type=_positive, default=5, help="detector: detections whose scores the CAM explains (>= 1)"
    )
    parser.add_argument("--tensorboard", default=None, metavar="DIR", help="also write the figures to TensorBoard")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.config, args.update)
    written = visualize(
        cfg,
        args.resume,
        args.input,
        args.output,
        layers=args.layers,
        method=args.method,
        class_index=args.class_index,
        top_k=args.top_k,
        tensorboard=args.tensorboard,
    )
    return 0 if written else 1


if __name__ == "__main__":
    from rtdetr_spartan.misc.cli_errors import run_main

    raise SystemExit(run_main(main))
