"""Real photographs (the sample photos scikit-image ships in its wheel) and edge cases made from them."""

from __future__ import annotations

import io
from functools import cache
from pathlib import Path

import skimage
from PIL import Image

DATA_DIR = Path(skimage.__file__).parent / "data"
PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "hubble_deep_field.jpg",
    "motorcycle_left.png",
    "retina.jpg",
)


@cache
def photo_bytes(name: str) -> bytes:
    return (DATA_DIR / name).read_bytes()


@cache
def photo(name: str) -> Image.Image:
    image = Image.open(DATA_DIR / name)
    image.load()
    return image


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **params)
    return out.getvalue()


def photo_as_jpeg(name: str, quality: int = 92) -> bytes:
    return encode(photo(name).convert("RGB"), "JPEG", quality=quality)


def reference_quantization(image: Image.Image, quality: int = 50) -> dict[int, list[int]]:
    """The quantisation tables Pillow writes at ``quality``; compressed outputs must carry the same."""
    return Image.open(io.BytesIO(encode(image.convert("RGB"), "JPEG", quality=quality))).quantization
