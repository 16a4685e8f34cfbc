"""An image zoo made from real photographs, and an image host with the extra faults the pipeline test needs.

Every builder returns the bytes a real-world host would serve, plus (where it matters) the picture a viewer
should see, so a test can compare the pipeline's output with what the input *displays as*.
"""

from __future__ import annotations

import asyncio
import io
import struct
import time
import zlib
from collections import defaultdict
from dataclasses import dataclass
from functools import cache

import numpy as np
from aiohttp import web
from PIL import Image, ImageCms, ImageDraw

from tests.support.photos import encode, photo
from tests.support.servers import ImageHost

ORIENTATION = 0x0112
GPS_IFD = 0x8825


@dataclass(frozen=True)
class Sample:
    """The bytes served and the picture they should display as (RGB or RGBA, EXIF orientation applied)."""

    body: bytes
    shows: Image.Image


def rgb(name: str) -> Image.Image:
    return photo(name).convert("RGB")


@cache
def srgb_profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


# --- stills ----------------------------------------------------------------------------------------------------


def sideways_jpeg() -> Sample:
    """A camera shot stored rotated 90° counter-clockwise with EXIF orientation 6 (rotate 90° CW to display),
    carrying GPS coordinates and a comment that must not survive."""
    upright = rgb("rocket.jpg")
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    exif[GPS_IFD] = {1: "N", 2: (52.0, 22.0, 0.0), 3: "E", 4: (4.0, 53.0, 0.0)}
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    body = encode(stored, "JPEG", quality=92, exif=exif.tobytes(), comment=b"shot at home")
    return Sample(body, upright)


def cmyk_jpeg() -> Sample:
    source = rgb("coffee.png")
    return Sample(encode(source.convert("CMYK"), "JPEG", quality=92), source)


def circle_alpha(size: tuple[int, int]) -> Image.Image:
    """Opaque everywhere except a fully transparent disc and a half-transparent band."""
    alpha = Image.new("L", size, 255)
    draw = ImageDraw.Draw(alpha)
    w, h = size
    draw.ellipse((w // 8, h // 8, w // 2, h // 2 + h // 8), fill=0)
    draw.rectangle((0, h - h // 6, w, h), fill=128)
    return alpha


def rgba_png() -> Sample:
    image = rgb("chelsea.png").convert("RGBA")
    image.putalpha(circle_alpha(image.size))
    return Sample(encode(image, "PNG"), image)


def opaque_rgba_png() -> Sample:
    """RGBA whose alpha is 255 everywhere: opaque by the policy, so JPEG."""
    image = rgb("astronaut.png").convert("RGBA")
    return Sample(encode(image, "PNG"), image)


def _palette_with_hole(name: str, colors: int) -> tuple[Image.Image, int]:
    """A photo quantised to ``colors`` - 1 colours, with the last index reserved for a transparent disc."""
    source = rgb(name)
    palette = source.quantize(colors=colors - 1, method=Image.Quantize.MEDIANCUT)
    hole = colors - 1
    entries = palette.getpalette() or []
    palette.putpalette(entries[: 3 * hole] + [0, 0, 0] * (colors - len(entries[: 3 * hole]) // 3))
    mask = Image.new("L", source.size, 0)
    w, h = source.size
    ImageDraw.Draw(mask).ellipse((w // 4, h // 4, w // 2, h // 2), fill=255)
    palette.paste(hole, mask=mask)
    return palette, hole


def _shows_palette(palette: Image.Image, hole: int) -> Image.Image:
    shows = palette.convert("RGB").convert("RGBA")
    shows.putalpha(Image.fromarray(np.where(np.asarray(palette) == hole, 0, 255).astype(np.uint8)))
    return shows


def palette_png_trns() -> Sample:
    palette, hole = _palette_with_hole("coffee.png", 128)
    return Sample(encode(palette, "PNG", transparency=hole), _shows_palette(palette, hole))


def transparent_gif() -> Sample:
    palette, hole = _palette_with_hole("astronaut.png", 256)
    return Sample(encode(palette, "GIF", transparency=hole), _shows_palette(palette, hole))


def grayscale_png() -> Sample:
    source = photo("camera.png")
    assert source.mode == "L"
    return Sample(encode(source, "PNG"), source.convert("RGB"))


def grey16_png() -> Sample:
    """16-bit greyscale (the full 0..65535 range), as scanners and medical/astro tools write them."""
    source = photo("moon.png")
    wide = (np.asarray(source, dtype=np.uint16) * 257).astype(np.uint16)
    return Sample(encode(Image.fromarray(wide), "PNG"), source.convert("RGB"))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def rgb48_png() -> Sample:
    """16 bits per channel RGB PNG (Pillow cannot write one, so the chunks are written here)."""
    source = rgb("chelsea.png")
    wide = np.asarray(source, dtype=np.uint16) * 257
    h, w, _ = wide.shape
    rows = np.ascontiguousarray(wide.astype(">u2").reshape(h, w * 3)).view(np.uint8)  # big-endian samples
    raw = np.hstack([np.zeros((h, 1), dtype=np.uint8), rows]).tobytes()  # filter type 0 per row
    body = (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
        + _png_chunk(b"IDAT", zlib.compress(raw, 6))
        + _png_chunk(b"IEND", b"")
    )
    return Sample(body, source)


def progressive_jpeg_with_icc() -> Sample:
    source = rgb("hubble_deep_field.jpg")
    body = encode(source, "JPEG", quality=90, progressive=True, optimize=True, icc_profile=srgb_profile())
    return Sample(body, source)


def webp() -> Sample:
    source = rgb("coffee.png")
    return Sample(encode(source, "WEBP", quality=92), source)


def bmp() -> Sample:
    source = rgb("astronaut.png")
    return Sample(encode(source, "BMP"), source)


def tiff() -> Sample:
    source = rgb("motorcycle_left.png")
    return Sample(encode(source, "TIFF", compression="tiff_lzw"), source)


def tiny() -> Sample:
    source = rgb("coffee.png").crop((300, 200, 301, 201))
    return Sample(encode(source, "PNG"), source)


# --- animation -------------------------------------------------------------------------------------------------

ANIMATION_DURATIONS = (120, 200, 80, 400)


def animation_frames() -> list[Image.Image]:
    box = (0, 0, 320, 240)
    names = ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg")
    return [rgb(name).crop(box) for name in names]


def animated_gif() -> tuple[bytes, list[Image.Image]]:
    """Four different photos as four frames with different durations; returns the bytes and the frames as
    a GIF decoder shows them (GIF quantises, so compare against the decoded frames, not the photos)."""
    frames = animation_frames()
    body = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=list(ANIMATION_DURATIONS), loop=0)
    shown = []
    with Image.open(io.BytesIO(body)) as gif:
        for i in range(getattr(gif, "n_frames", 1)):
            gif.seek(i)
            shown.append(gif.convert("RGB"))
    return body, shown


# --- bad sources -----------------------------------------------------------------------------------------------

HTML_PAGE = b"<!doctype html><html><head><title>Not found</title></head><body><h1>Oops</h1></body></html>\n"


def truncated_jpeg() -> bytes:
    whole = encode(rgb("chelsea.png"), "JPEG", quality=90)
    return whole[: len(whole) // 2]


@cache
def png_bomb(width: int = 30_000, height: int = 30_000) -> bytes:
    """A valid 1-bit PNG of ``width`` x ``height`` black pixels: about 100 KB on disk, 900 megapixels decoded."""
    row = b"\x00" * (1 + (width + 7) // 8)
    packer = zlib.compressobj(9)
    parts = [packer.compress(row * 1000) for _ in range(height // 1000)]
    parts.append(packer.compress(row * (height % 1000)))
    parts.append(packer.flush())
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
        + _png_chunk(b"IDAT", b"".join(parts))
        + _png_chunk(b"IEND", b"")
    )


class ZooHost(ImageHost):
    """ImageHost plus ``/slow/<name>`` (waits ``slow_first_byte`` s, then trickles the body in pieces), hit
    times per image (``times``) and a hit count for ``/hang``."""

    slow_first_byte = 1.0
    slow_pieces = 4
    slow_gap = 0.2

    def __init__(self) -> None:
        super().__init__()
        self.times: defaultdict[str, list[float]] = defaultdict(list)
        self.app.add_routes([web.get("/slow/{name}", self._slow)])

    async def _image(self, request: web.Request) -> web.StreamResponse:
        self.times[request.match_info["name"]].append(time.monotonic())
        return await super()._image(request)

    async def _hang(self, request: web.Request) -> web.Response:
        self.hits["hang"] += 1
        return await super()._hang(request)

    async def _slow(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.hits[f"slow/{name}"] += 1
        body, content_type = self.bodies[name]
        await asyncio.sleep(self.slow_first_byte)
        response = web.StreamResponse(headers={"Content-Type": content_type, "Content-Length": str(len(body))})
        await response.prepare(request)
        step = -(-len(body) // self.slow_pieces)
        for start in range(0, len(body), step):
            await response.write(body[start : start + step])
            await asyncio.sleep(self.slow_gap)
        await response.write_eof()
        return response
