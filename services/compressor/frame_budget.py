"""How many pixels decoding an image will allocate, counted from its headers before anything is decoded.

A multi-frame file can put its bomb after the first frame: a TIFF whose first page is 1x1 and second page
15000x15000, an MPO whose second JPEG is huge, a GIF whose later frame is far larger than its logical screen
(Pillow grows the canvas to hold it). Multiplying the first frame's size by the frame count misses all of
them, so every frame's own size is read here:

* TIFF and MPO: seeking to a page or frame parses its header (IFD, SOF) and decodes nothing.
* GIF: Pillow would decode the earlier frames to seek, so the image descriptors are read from the bytes;
  each frame costs the canvas as Pillow composes it (the logical screen grown to every frame so far).
* Animated WebP and APNG: every frame is the canvas size (libwebp and Pillow refuse frames outside it), so
  width x height x frames is exact.

Pillow's own decompression-bomb check stays on as a backstop (:func:`set_pillow_backstop`) for whatever
this count might miss: it refuses any single frame over the pixel limit while it is being opened or seeked.
"""

from __future__ import annotations

import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

from PIL import Image

_SEEK_FOR_SIZE = {"TIFF", "MPO"}

# the budget below reports what is over the limit; Pillow's warning for images above half of it is noise
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def set_pillow_backstop(max_pixels: int) -> None:
    """Make Pillow raise ``DecompressionBombError`` for any single frame over ``max_pixels``.

    Pillow raises above twice ``MAX_IMAGE_PIXELS`` (and only warns above it), hence the half. One value per
    process: every compressor thread uses the same setting.
    """
    Image.MAX_IMAGE_PIXELS = max(max_pixels // 2, 1)


@dataclass(frozen=True)
class FrameCount:
    frames: int
    pixels: int  # summed over the frames counted, each at the size Pillow decodes it
    largest: tuple[int, int]
    complete: bool  # False when counting stopped early because a limit was already passed


def count_pixels(image: Image.Image, data: bytes, max_pixels: int, max_frames: int) -> FrameCount:
    """Frames and decoded pixels of ``image`` (opened from ``data``), stopping as soon as a limit is passed.

    Leaves ``image`` at its first frame. Raises what Pillow raises for a corrupt header (``OSError``,
    ``EOFError``, ``SyntaxError``, ``ValueError``, ``struct.error``) or its ``DecompressionBombError``.
    """
    frames = 0
    pixels = 0
    largest = (0, 0)
    for width, height in _frame_sizes(image, data):
        frames += 1
        pixels += width * height
        if width * height > largest[0] * largest[1]:
            largest = (width, height)
        if pixels > max_pixels or frames > max_frames:
            return FrameCount(frames, pixels, largest, complete=False)
    return FrameCount(frames, pixels, largest, complete=True)


def _frame_sizes(image: Image.Image, data: bytes) -> Iterator[tuple[int, int]]:
    if image.format == "GIF":
        yield from _gif_canvases(data)
    elif image.format in _SEEK_FOR_SIZE:
        try:
            for index in range(getattr(image, "n_frames", 1) or 1):
                image.seek(index)
                yield image.size
        finally:
            image.seek(0)
    else:
        for _ in range(getattr(image, "n_frames", 1) or 1):
            yield image.size


def _gif_canvases(data: bytes) -> Iterator[tuple[int, int]]:
    """The canvas size Pillow decodes each GIF frame at, read from the image descriptors alone."""
    if len(data) < 13:
        return
    width, height = struct.unpack_from("<HH", data, 6)
    flags = data[10]
    position = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # global colour table
    end = len(data)
    while position < end:
        block = data[position]
        if block == 0x21:  # extension: introducer, label, data sub-blocks
            position = _skip_sub_blocks(data, position + 2)
        elif block == 0x2C:  # image descriptor: left, top, width, height, flags
            if position + 10 > end:
                return
            left, top, frame_width, frame_height, flags = struct.unpack_from("<HHHHB", data, position + 1)
            width, height = max(width, left + frame_width), max(height, top + frame_height)
            yield width, height
            position += 10 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # local colour table
            position = _skip_sub_blocks(data, position + 1)  # LZW minimum code size, then the image data
        else:  # the trailer (0x3B), or bytes Pillow would stop at too
            return


def _skip_sub_blocks(data: bytes, position: int) -> int:
    end = len(data)
    while position < end:
        size = data[position]
        position += 1
        if size == 0:
            break
        position += size
    return position
