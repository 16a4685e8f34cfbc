"""JPEG in, quality-q JPEG out without decoding to pixels: the DCT-domain path of the compressor.

The work is in the C extension ``_jpegdct`` (services/compressor/_jpegdct.c, built by ``pip install`` against the
system libjpeg-turbo): it reads the quantised coefficients, re-quantises them to the standard tables at quality q
and writes them with optimised Huffman tables, the ICC profile kept and every other marker dropped. It costs about
half of Pillow's decode + encode of the same photo (docs/jpeg-fast-path.md has the numbers and the rules).

This module only says whether the path produced an output. Everything it declines goes to the pixel path, which
keeps the last word on what is an image: a JPEG this path finds corrupt (a libjpeg warning stops it) may still be
one Pillow decodes, and the pixel path's rejection reasons stay the ones clients see.
"""

from __future__ import annotations

from services.compressor._jpegdct import JpegError, NotEligible, requantize

__all__ = ["JpegError", "NotEligible", "requantize", "requantize_or_none"]


def requantize_or_none(data: bytes, *, quality: int, max_pixels: int) -> bytes | None:
    """The re-quantised JPEG, or None when this path declines (not eligible, or corrupt data) for the pixel path."""
    try:
        return requantize(data, quality, max_pixels)
    except (NotEligible, JpegError):
        return None
