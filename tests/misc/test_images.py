from __future__ import annotations

from PIL import Image

from rtdetr_spartan.deploy.types import Detection
from rtdetr_spartan.misc.images import class_color, draw_detections


def test_boxes_are_drawn_in_class_colors_on_a_copy() -> None:
    image = Image.new("RGB", (200, 150), (128, 128, 128))
    dets = [
        Detection(label=0, category_id=1, name="person", score=0.9, box=(20.0, 40.0, 120.0, 140.0)),
        Detection(label=5, category_id=6, name="bus", score=0.6, box=(130.0, 10.0, 190.0, 60.0)),
    ]
    out = draw_detections(image, dets, line_width=2)
    assert out is not image and image.getpixel((20, 90)) == (128, 128, 128)
    assert out.size == image.size and out.mode == "RGB"
    assert out.getpixel((20, 90)) == class_color(0)  # left edge of the first box
    assert out.getpixel((190, 35)) == class_color(5)  # right edge of the second box
    assert out.getpixel((70, 90)) == (128, 128, 128)  # inside stays untouched
    # caption background above the first box, in its class colour, with text pixels in it
    caption = [out.getpixel((x, y)) for x in range(21, 60) for y in range(28, 39)]
    assert class_color(0) in caption and len(set(caption)) > 1


def test_caption_stays_inside_for_a_box_at_the_top() -> None:
    image = Image.new("L", (64, 64), 0)
    out = draw_detections(image, [Detection(1, 2, "bicycle", 0.5, (0.0, 0.0, 40.0, 40.0))])
    assert out.mode == "RGB" and out.getpixel((5, 5)) == class_color(1)


def test_class_colors_differ_between_neighbouring_labels() -> None:
    colors = [class_color(i) for i in range(10)]
    assert len(set(colors)) == 10


def test_the_most_confident_caption_is_drawn_on_top() -> None:
    image = Image.new("RGB", (100, 100), (0, 0, 0))
    box = (10.0, 30.0, 90.0, 90.0)  # same box, two classes: the captions overlap
    dets = [Detection(0, 1, "a", 0.9, box), Detection(3, 4, "b", 0.4, box)]
    for order in (dets, dets[::-1]):
        out = draw_detections(image, order, line_width=2)
        assert out.getpixel((10, 60)) == class_color(0)
        caption = {out.getpixel((x, y)) for x in range(11, 30) for y in range(18, 29)}
        assert class_color(0) in caption and class_color(3) not in caption
