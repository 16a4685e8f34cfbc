"""Hostile images (issue 11): small files whose *later* frames decode to gigabytes, made with Pillow.

The first frame of each is tiny, so a pixel limit that looks at the first frame only lets them through.
"""

from __future__ import annotations

import struct
from functools import cache

from PIL import Image

from tests.support.photos import encode, photo

HUGE = 15000  # a 15000x15000 frame: 225 million pixels, 0.9 GB as RGBA


@cache
def tiff_with_huge_second_page() -> bytes:
    """Page 1 is 1x1, page 2 is 15000x15000 (deflate-compressed zeros: the file stays small)."""
    first = Image.new("L", (1, 1))
    second = Image.new("L", (HUGE, HUGE))
    body = encode(first, "TIFF", save_all=True, append_images=[second], compression="tiff_deflate")
    del second
    return body


@cache
def mpo_with_huge_second_frame() -> bytes:
    """A real photograph as frame 1 (as a stereo camera writes it) and a 15000x15000 JPEG as frame 2."""
    first = photo("rocket.jpg").convert("RGB").resize((64, 42))
    second = Image.new("L", (HUGE, HUGE))
    body = encode(first, "MPO", save_all=True, append_images=[second], quality=50)
    del second
    return body


def gif_with_a_frame_larger_than_its_screen() -> bytes:
    """A GIF whose logical screen and first frame are 1x1 and whose second frame claims 16000x16000.

    Pillow grows the canvas to hold a frame that does not fit the screen, so decoding frame 2 allocates
    256 million pixels. Written byte by byte: Pillow's GIF writer never produces such a file.
    """

    def frame(width: int, height: int) -> bytes:
        descriptor = b"," + struct.pack("<HHHHB", 0, 0, width, height, 0)
        return descriptor + b"\x02\x02\x4c\x01\x00"  # LZW min code size 2, one sub-block (clear, pixel 0, end)

    header = b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    loop = b"!\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"
    return header + loop + frame(1, 1) + b"!\xf9\x04\x00\x0a\x00\x00\x00" + frame(16000, 16000) + b";"


def animated_gif_too_wide_for_webp() -> bytes:
    """Two frames of 20000x2 (40,000 pixels each, far under any pixel limit): the animated WebP it must become
    cannot be encoded (WebP's limit is 16383 pixels a side), and Pillow's encoder raises ``RuntimeError``."""
    frames = [Image.new("RGB", (20000, 2), color) for color in ((255, 0, 0), (0, 0, 255))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
