"""Stream video frames in and out with PyAV (FFmpeg): decode one frame, process it, encode it.

Nothing holds more than the frame at hand, so memory stays the same whatever the video's length.
Videos are written as MP4 (H.264 via libx264 where the FFmpeg build has it, else MPEG-4 part 2)
at the input's frame rate and size, in yuv420p (4:2:0 chroma), the format players and browsers
play. 4:2:0 needs even sides and H.264 can crop only by pairs of pixels, so an odd-sized video is
written one pixel wider and/or taller, the extra column or row repeating its neighbour.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Iterator, cast

import av
import numpy as np
from av.video.stream import VideoStream
from PIL import Image

__all__ = ["VideoError", "VideoInfo", "VideoReader", "VideoWriter"]

logger = logging.getLogger(__name__)

_FALLBACK_RATE = Fraction(25)


class VideoError(OSError):
    """A video that cannot be opened, decoded or written; the message names the file."""


@dataclass(frozen=True)
class VideoInfo:
    """``fps`` as an exact fraction; ``frames`` as the container states it (0 when unknown)."""

    width: int
    height: int
    fps: Fraction
    frames: int


class VideoReader:
    """RGB frames of a video file's first video stream, decoded one at a time.

    Use as a context manager; iterating yields ``(index, index / fps in seconds, PIL image)``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._container = av.open(str(self.path), mode="r")
        except av.EOFError as err:  # a header and nothing after it (a zero-frame Matroska file)
            raise VideoError(f"video {self.path} has no frames (the file ends before its first frame)") from err
        except (av.FFmpegError, OSError, ValueError) as err:
            raise VideoError(f"cannot open video {self.path}: {err}") from err
        if not self._container.streams.video:
            self._container.close()
            raise VideoError(f"video {self.path} has no video stream")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        rate = self._stream.average_rate or self._stream.guessed_rate
        if not rate:
            logger.warning("%s states no frame rate; assuming %s fps", self.path, _FALLBACK_RATE)
        self.info = VideoInfo(
            width=int(self._stream.codec_context.width),
            height=int(self._stream.codec_context.height),
            fps=Fraction(rate) if rate else _FALLBACK_RATE,
            frames=int(self._stream.frames or 0),
        )

    def __iter__(self) -> Iterator[tuple[int, float, Image.Image]]:
        index = 0
        try:
            for frame in self._container.decode(self._stream):
                # index / fps rather than the frame's stamp, which some containers (AVI with
                # B-frames) give out of order
                yield index, index / float(self.info.fps), frame.to_image()
                index += 1
        except (av.FFmpegError, ValueError) as err:
            raise VideoError(f"cannot decode video {self.path} after {index} frames: {err}") from err

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


def _codec() -> str:
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


class VideoWriter:
    """Encode RGB PIL images of ``width`` x ``height`` into an MP4 file at ``fps`` (yuv420p; an
    odd side is written one pixel longer, see the module docstring); a context manager."""

    def __init__(self, path: str | Path, width: int, height: int, fps: Fraction | float) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        codec = _codec()
        try:
            self._container = av.open(str(self.path), mode="w")
            rate = Fraction(fps).limit_denominator(1001 * 1000)
            self._stream = cast(VideoStream, self._container.add_stream(codec, rate=rate))
        except (av.FFmpegError, OSError, ValueError) as err:
            raise VideoError(f"cannot write video {self.path}: {err}") from err
        self._time_base = 1 / rate
        self.width, self.height = int(width), int(height)
        # yuv420p needs even sides: odd ones are padded by one pixel (see the module docstring)
        self._stream.width, self._stream.height = self.width + self.width % 2, self.height + self.height % 2
        self._stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            self._stream.options = {"crf": "20", "preset": "veryfast"}
        self.frames = 0

    def write(self, image: Image.Image) -> None:
        """Append one frame (resized never: it must have the writer's size)."""
        if image.size != (self.width, self.height):
            raise ValueError(f"frame of size {image.size} for video {self.path} of size {(self.width, self.height)}")
        pixels = np.asarray(image.convert("RGB"))
        pad = ((0, self._stream.height - self.height), (0, self._stream.width - self.width), (0, 0))
        if any(after for _, after in pad):
            pixels = np.pad(pixels, pad, mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")
        frame.pts = self.frames  # constant frame rate: frame i at i / fps
        frame.time_base = self._time_base
        self._container.mux(self._stream.encode(frame))
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder and finish the file."""
        try:
            self._container.mux(self._stream.encode(None))
        finally:
            self._container.close()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
