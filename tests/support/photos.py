"""Real photographs (the sample photos scikit-image ships in its wheel) and edge cases made from them."""

from __future__ import annotations

import io

from PIL import Image
from PIL.JpegImagePlugin import JpegImageFile

from testkit.photos import DATA_DIR, PHOTOS, photo, photo_bytes

__all__ = [
    "DATA_DIR",
    "PHOTOS",
    "encode",
    "photo",
    "photo_as_jpeg",
    "photo_bytes",
    "quantization",
    "reference_quantization",
]


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **params)
    return out.getvalue()


def photo_as_jpeg(name: str, quality: int = 92) -> bytes:
    return encode(photo(name).convert("RGB"), "JPEG", quality=quality)


def reference_quantization(image: Image.Image, quality: int = 50) -> dict[int, list[int]]:
    """The quantisation tables Pillow writes at ``quality``; compressed outputs must carry the same."""
    return quantization(Image.open(io.BytesIO(encode(image.convert("RGB"), "JPEG", quality=quality))))


def quantization(image: Image.Image) -> dict[int, list[int]]:
    """The quantisation tables of a JPEG as Pillow read them (entries in zigzag order, as the file stores them)."""
    assert isinstance(image, JpegImageFile), f"not a JPEG: {image.format}"
    return image.quantization
