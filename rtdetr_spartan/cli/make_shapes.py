"""Write a generated shapes dataset: COCO detection (default), YOLO detection, or ImageFolder
classification.

python tools/make_shapes.py --out data/shapes --train 400 --val 100 --size 256 --seed 0
python tools/make_shapes.py --out data/shapes_yolo --layout yolo --train 400 --val 100
python tools/make_shapes.py --out data/shapes_cls --classification --train 800 --val 200 --size 64
"""

from __future__ import annotations

import argparse
import logging

from rtdetr_spartan.data.shapes import (
    IMAGE_FORMATS,
    make_classification_dataset,
    make_detection_dataset,
    make_yolo_dataset,
)

LAYOUTS: tuple[str, ...] = ("coco", "yolo")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--train", type=int, default=400, help="number of training images")
    parser.add_argument("--val", type=int, default=100, help="number of validation images")
    parser.add_argument(
        "--size", type=int, default=None, help="image side in pixels (default 256, 64 with --classification)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--format", dest="image_format", choices=sorted(IMAGE_FORMATS), default="jpg", help="image files"
    )
    parser.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="coco",
        help="detection: COCO (annotations/instances_<split>.json) or YOLO (data.yaml, images/, labels/)",
    )
    parser.add_argument("--max-objects", type=int, default=4, help="detection: most shapes per image")
    parser.add_argument("--classification", action="store_true", help="write an ImageFolder tree instead of COCO")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.classification and args.layout != "coco":
        parser.error("--layout applies to detection datasets; --classification writes an ImageFolder tree")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.classification:
        make_classification_dataset(args.out, args.train, args.val, args.size or 64, args.seed, args.image_format)
    elif args.layout == "yolo":
        make_yolo_dataset(
            args.out, args.train, args.val, args.size or 256, args.seed, args.image_format, args.max_objects
        )
    else:
        make_detection_dataset(
            args.out, args.train, args.val, args.size or 256, args.seed, args.image_format, args.max_objects
        )
    return 0


if __name__ == "__main__":
    from rtdetr_spartan.misc.cli_errors import run_main

    raise SystemExit(run_main(main))
