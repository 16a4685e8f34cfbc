"""Real photographs: the sample photos scikit-image ships in its wheel (no download, the same bytes everywhere)."""

from __future__ import annotations

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
