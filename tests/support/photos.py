"""Real photographs (the sample photos scikit-image ships in its wheel) and edge cases made from them."""

from __future__ import annotations

import io
import uuid

from PIL import Image, PngImagePlugin
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
    "unique_jpeg",
    "unique_png",
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


def unique_jpeg(name: str) -> bytes:
    """A photograph as a q90 JPEG whose bytes no other test (or earlier run) produced."""
    return encode(photo(name).convert("RGB"), "JPEG", quality=90, comment=uuid.uuid4().hex.encode())


def unique_png(name: str, alpha: bool = False) -> bytes:
    """A photograph as a PNG whose bytes no other test produced (outputs are cached by the source's bytes)."""
    info = PngImagePlugin.PngInfo()
    info.add_text("run", uuid.uuid4().hex)
    image = photo(name).convert("RGBA" if alpha else "RGB")
    if alpha:
        image.putalpha(Image.linear_gradient("L").resize(image.size))  # real transparency: the output is WebP
    return encode(image, "PNG", pnginfo=info)
