from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from rtdetr_spartan.deploy.video import VideoError, VideoReader, VideoWriter


def _frame(index: int, size: tuple[int, int]) -> Image.Image:
    """Grey with a white bar whose position encodes ``index``."""
    pixels = np.full((size[1], size[0], 3), 60, dtype=np.uint8)
    pixels[:, 4 * index : 4 * index + 4] = 255
    return Image.fromarray(pixels)


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".mov", ".avi"])
def test_round_trip_keeps_frames_rate_and_size(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"clip{suffix}"
    rate = Fraction(30000, 1001)
    with VideoWriter(path, 96, 64, rate) as writer:
        for i in range(12):
            writer.write(_frame(i, (96, 64)))
    assert writer.frames == 12
    with VideoReader(path) as reader:
        assert (reader.info.width, reader.info.height, reader.info.fps) == (96, 64, rate)
        frames = list(reader)
    assert [index for index, _, _ in frames] == list(range(12))
    assert [t for _, t, _ in frames] == pytest.approx([i * 1001 / 30000 for i in range(12)])
    for index, _, image in frames:  # lossy, but the bar is where it was
        column = np.asarray(image.convert("L"), dtype=np.float32).mean(axis=0)
        assert int(np.argmax(column)) // 4 == index


@pytest.mark.parametrize("size", [(75, 41), (64, 41), (75, 48)])
def test_odd_sizes_are_written_as_yuv420p_padded_by_one_pixel(tmp_path: Path, size: tuple[int, int]) -> None:
    """Players and browsers play 4:2:0 H.264 (not 4:4:4): odd sides grow by a copied edge pixel."""
    width, height = size
    with VideoWriter(tmp_path / "odd.mp4", width, height, 10) as writer:
        for i in range(3):
            writer.write(_frame(i, size))
    padded = (width + width % 2, height + height % 2)
    with av.open(str(tmp_path / "odd.mp4")) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.pix_fmt == "yuv420p"
        decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    assert len(decoded) == 3 and all(pixels.shape == (padded[1], padded[0], 3) for pixels in decoded)
    last = decoded[-1].astype(np.int16)
    original = np.asarray(_frame(2, size), dtype=np.int16)
    assert np.abs(last[:height, :width] - original).mean() < 4  # lossy, but the picture is where it was
    # the added column / row repeats its neighbour, so no dark line shows at the edge
    assert np.abs(last[:, -1] - last[:, -2]).mean() < 4 and np.abs(last[-1] - last[-2]).mean() < 4


def test_a_zero_frame_video_says_it_has_no_frames(tmp_path: Path) -> None:
    path = tmp_path / "empty.mkv"
    with av.open(str(path), mode="w") as container:  # a header with a stream, and no frame
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height = 64, 48
        container.start_encoding()
    with pytest.raises(VideoError, match=r"video .*empty.mkv has no frames"):
        VideoReader(path)


def test_a_cut_video_streams_the_frames_before_the_cut(tmp_path: Path) -> None:
    """Frames come one at a time as they decode: a file cut in half gives its first frames."""
    rng = np.random.default_rng(0)
    with VideoWriter(tmp_path / "long.mkv", 64, 48, 25) as writer:
        for _ in range(40):
            writer.write(Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)))
    data = (tmp_path / "long.mkv").read_bytes()
    (tmp_path / "cut.mkv").write_bytes(data[: len(data) // 2])
    with VideoReader(tmp_path / "cut.mkv") as reader:
        frames = iter(reader)
        assert next(frames)[0] == 0
        count = 1 + sum(1 for _ in frames)
    assert 5 < count < 40


def test_wrong_frame_size_and_bad_files_are_errors(tmp_path: Path) -> None:
    with VideoWriter(tmp_path / "a.mp4", 64, 48, 25) as writer:
        with pytest.raises(ValueError, match=r"frame of size \(65, 48\) for video .*a.mp4 of size \(64, 48\)"):
            writer.write(_frame(0, (65, 48)))
    (tmp_path / "junk.mkv").write_bytes(b"\x1a\x45\xdf\xa3" + bytes(range(256)) * 4)
    with pytest.raises(VideoError, match="cannot open video .*junk.mkv"):
        VideoReader(tmp_path / "junk.mkv")
    assert issubclass(VideoError, OSError)
