"""Re-encode one image at quality 50 following the brief's image policy.

Policy, in one place:
* JPEG stays JPEG and WebP stays WebP. PNG, GIF, BMP, TIFF (no quality knob) become JPEG when opaque and
  WebP when any pixel is transparent, so transparency is never flattened.
* Animated GIF/WebP become animated WebP at quality 50 with every frame and its duration kept (GIF has no
  quality setting; WebP keeps animation and alpha). The pixel budget counts every frame.
* Dimensions never change. EXIF orientation is applied to the pixels, then every metadata block except the
  ICC profile is dropped (EXIF, GPS, XMP, comments). CMYK is converted to sRGB through its ICC profile when it
  has one; 16-bit greyscale is scaled (not clipped) to 8 bits.
* "Is it an image" is decided by decoding the whole thing, never by URL or Content-Type.
"""

from __future__ import annotations

import io
import re
import struct
from dataclasses import dataclass, replace

from PIL import Image, ImageCms, ImageFile, ImageOps, ImageSequence, UnidentifiedImageError

from services.compressor.frame_budget import count_pixels, set_pillow_backstop
from services.compressor.jpeg_fast import requantize_or_none

ImageFile.LOAD_TRUNCATED_IMAGES = False
DEFAULT_MAX_PIXELS = 100_000_000
DEFAULT_MAX_FRAMES = 1000
# our budget (frame_budget.count_pixels) decides first and says why; Pillow's bomb check is the backstop
set_pillow_backstop(DEFAULT_MAX_PIXELS)

_LOSSY_KEEP = {"JPEG": "JPEG", "MPO": "JPEG", "WEBP": "WEBP"}
_ACCEPTED = {"JPEG", "MPO", "WEBP", "PNG", "GIF", "BMP", "TIFF"}
_SRGB = ImageCms.createProfile("sRGB")


class ImageRejected(Exception):
    """The bytes are not an image we can process; the reason goes to the product record."""


@dataclass(frozen=True)
class Compressed:
    data: bytes
    format: str  # "JPEG" or "WEBP"
    width: int
    height: int
    codec: str = "pillow"  # "dct": re-quantised in the DCT domain (services/compressor/jpeg_fast.py)
    source_format: str = ""  # what the input decoded as (Pillow's name), shown in the console

    @property
    def extension(self) -> str:
        return "jpg" if self.format == "JPEG" else "webp"

    @property
    def content_type(self) -> str:
        return "image/jpeg" if self.format == "JPEG" else "image/webp"


def compress(
    data: bytes,
    *,
    quality: int = 50,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_frames: int = DEFAULT_MAX_FRAMES,
    jpeg_fast_path: bool = True,
) -> Compressed:
    """Decode ``data`` fully and re-encode it; raises :class:`ImageRejected` with a human reason.

    Whatever the bytes make the codec do (a bomb, a codec error, running out of memory) ends as
    :class:`ImageRejected` on the first try: the same bytes would fail the same way on every redelivery.
    With ``jpeg_fast_path`` a JPEG within the limits goes through the DCT-domain path first; whatever it
    declines takes the pixel path below.
    """
    if not data:
        raise ImageRejected("empty body (0 bytes)")
    try:
        source = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageRejected("not an image (no decoder recognises the bytes)") from None
    except Exception as exc:  # whatever a header makes Pillow raise fails this image
        raise _rejection(exc, max_pixels, reading="header") from None
    with source:
        fmt = source.format or ""
        if fmt not in _ACCEPTED:
            raise ImageRejected(f"unsupported image format {fmt or 'unknown'}")
        try:
            _check_budget(source, data, max_pixels, max_frames)
            if fmt in ("JPEG", "MPO") and jpeg_fast_path:  # of an MPO, only the primary image (what viewers show)
                fast = requantize_or_none(data, quality=quality, max_pixels=max_pixels)
                if fast is not None:
                    width, height = source.size
                    return Compressed(fast, "JPEG", width, height, codec="dct", source_format=fmt)
            if (getattr(source, "n_frames", 1) or 1) > 1:
                return replace(_animated(source, quality), source_format=fmt)
            return replace(_still(source, fmt, quality), source_format=fmt)
        except ImageRejected:
            raise
        except Exception as exc:  # see the docstring
            raise _rejection(exc, max_pixels, reading="data") from None


def _check_budget(source: Image.Image, data: bytes, max_pixels: int, max_frames: int) -> None:
    """Refuse before decoding anything when the frames together would exceed the limits."""
    count = count_pixels(source, data, max_pixels, max_frames)
    if count.frames > max_frames:
        raise ImageRejected(f"image has more than {max_frames} frames (the frame limit)")
    if count.pixels > max_pixels:
        width, height = count.largest
        frames = f"{count.frames}{'' if count.complete else '+'} frame(s)"
        raise ImageRejected(
            f"image has {frames} of up to {width}x{height} totalling {'at least ' if not count.complete else ''}"
            f"{count.pixels} pixels, over the {max_pixels} pixel limit"
        )


def _rejection(exc: Exception, max_pixels: int, reading: str) -> ImageRejected:
    """The reason a client reads for what the codec raised."""
    if isinstance(exc, Image.DecompressionBombError):  # Pillow's backstop: it names the pixels, not the size
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"of {found.group(1)} pixels, " if found else ""
        return ImageRejected(f"image has a frame {size}over the {max_pixels} pixel limit")
    if isinstance(exc, MemoryError):
        return ImageRejected("decoding needs more memory than the compressor has")
    if isinstance(exc, (OSError, SyntaxError, ValueError, EOFError, struct.error)):
        if reading == "header":
            return ImageRejected(f"cannot read image header: {exc}")
        return ImageRejected(f"image data is corrupt or truncated: {exc}")
    return ImageRejected(f"the image codec failed on this file ({type(exc).__name__}: {exc})")


def _still(source: Image.Image, fmt: str, quality: int) -> Compressed:
    source.load()
    icc = source.info.get("icc_profile")
    ImageOps.exif_transpose(source, in_place=True)  # in place: no copy of the (usually upright) pixels
    image: Image.Image = source
    image, icc = _to_8bit_colour(image, icc)
    transparent = _has_transparency(image)
    target = _LOSSY_KEEP.get(fmt) or ("WEBP" if transparent else "JPEG")
    if target == "JPEG":
        image = image.convert("RGBA").convert("RGB") if transparent else image
        if image.mode == "LA":
            image = image.convert("L")
        elif image.mode not in ("L", "RGB"):
            image = image.convert("RGB")
    else:
        image = image.convert("RGBA" if transparent else "RGB") if image.mode not in ("RGB", "RGBA") else image
    image.info = {}
    out = io.BytesIO()
    params: dict[str, object] = {"quality": quality}
    if icc:
        params["icc_profile"] = icc
    if target == "JPEG":
        params["optimize"] = True
    else:
        params["method"] = 4
    image.save(out, format=target, **params)
    return Compressed(out.getvalue(), target, image.width, image.height)


def _animated(source: Image.Image, quality: int) -> Compressed:
    frames: list[Image.Image] = []
    durations: list[int] = []
    for frame in ImageSequence.Iterator(source):
        durations.append(int(frame.info.get("duration", source.info.get("duration", 100)) or 100))
        frames.append(frame.convert("RGBA"))
    out = io.BytesIO()
    frames[0].save(
        out,
        format="WEBP",
        save_all=True,
        append_images=frames[1:],
        duration=durations,
        loop=int(source.info.get("loop", 0) or 0),
        quality=quality,
        method=4,
    )
    return Compressed(out.getvalue(), "WEBP", source.width, source.height)


def _to_8bit_colour(image: Image.Image, icc: bytes | None) -> tuple[Image.Image, bytes | None]:
    """Bring CMYK, 16-bit and odd modes into a mode the encoders take, with the right colours."""
    if image.mode == "CMYK":
        if icc:
            try:
                source_profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
                converted = ImageCms.profileToProfile(image, source_profile, _SRGB, outputMode="RGB")
                if converted is not None:  # None only with inPlace=True
                    return converted, None
            except (ImageCms.PyCMSError, OSError):
                pass
        return image.convert("RGB"), None
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        scaled = image.convert("I").point(lambda value: value * (1 / 256)) if _is_16bit(image) else image
        return scaled.convert("L"), icc
    if image.mode == "F":
        return image.convert("L"), icc
    if image.mode == "1":
        return image.convert("L"), icc
    if image.mode in ("P", "PA"):
        return image.convert("RGBA" if _palette_transparent(image) else "RGB"), icc
    if image.mode in ("LA", "La"):
        return image.convert("RGBA") if image.mode == "La" else image, icc
    if image.mode == "RGBa":
        return image.convert("RGBA"), icc
    if image.mode in ("YCbCr", "LAB", "HSV"):
        return image.convert("RGB"), icc
    return image, icc


def _is_16bit(image: Image.Image) -> bool:
    if image.mode.startswith("I;16"):
        return True
    _low, high = image.getextrema()  # a single-band mode: two numbers
    return isinstance(high, int | float) and high > 255


def _palette_transparent(image: Image.Image) -> bool:
    return image.mode == "PA" or "transparency" in image.info


def _has_transparency(image: Image.Image) -> bool:
    """True when at least one pixel is not fully opaque (an all-opaque alpha channel does not count)."""
    if image.mode in ("RGBA", "LA"):
        low, _high = image.getchannel("A").getextrema()
        return isinstance(low, int | float) and low < 255
    return "transparency" in image.info
