"""Real photographs (the sample photos scikit-image ships in its wheel) and edge cases made from them."""

from __future__ import annotations

import io

from PIL import Image

from testkit.photos import DATA_DIR, PHOTOS, photo, photo_bytes

__all__ = ["DATA_DIR", "PHOTOS", "encode", "photo", "photo_as_jpeg", "photo_bytes", "reference_quantization"]


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **params)
    return out.getvalue()


def photo_as_jpeg(name: str, quality: int = 92) -> bytes:
    return encode(photo(name).convert("RGB"), "JPEG", quality=quality)


def reference_quantization(image: Image.Image, quality: int = 50) -> dict[int, list[int]]:
    """The quantisation tables Pillow writes at ``quality``; compressed outputs must carry the same."""
    return Image.open(io.BytesIO(encode(image.convert("RGB"), "JPEG", quality=quality))).quantization
