"""The image policy of the brief's section 3, on real photographs and edge cases made from them."""

from __future__ import annotations

import io

import pytest
from PIL import Image, ImageChops, ImageCms, ImageStat

from services.compressor.compress import ImageRejected, compress
from tests.support.photos import encode, photo, photo_as_jpeg, photo_bytes, reference_quantization


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_jpeg_photo_stays_jpeg_with_quality_50_tables_and_same_size():
    source = photo_bytes("rocket.jpg")
    result = compress(source)
    out = decoded(result.data)
    assert (result.format, out.format) == ("JPEG", "JPEG")
    assert out.size == photo("rocket.jpg").size
    assert out.quantization == reference_quantization(photo("rocket.jpg"))
    assert len(result.data) < len(source)


def test_opaque_png_photo_becomes_jpeg_at_quality_50():
    result = compress(photo_bytes("astronaut.png"))
    out = decoded(result.data)
    assert out.format == "JPEG" and out.size == (512, 512)
    assert out.quantization == reference_quantization(photo("astronaut.png"))


def test_webp_stays_webp():
    result = compress(encode(photo("coffee.png"), "WEBP", quality=95))
    out = decoded(result.data)
    assert out.format == "WEBP" and out.size == photo("coffee.png").size


def test_transparent_png_becomes_webp_with_alpha_kept():
    rgba = photo("chelsea.png").convert("RGBA")
    alpha = Image.new("L", rgba.size, 255)
    alpha.paste(0, (0, 0, 100, 100))
    rgba.putalpha(alpha)
    out = decoded(compress(encode(rgba, "PNG")).data)
    assert out.format == "WEBP" and out.mode == "RGBA"
    assert out.getpixel((10, 10))[3] == 0
    assert out.getpixel((300, 200))[3] == 255


def test_palette_png_with_trns_becomes_webp_with_alpha():
    palette = photo("coffee.png").convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    index = palette.getpixel((0, 0))
    out = decoded(compress(encode(palette, "PNG", transparency=index)).data)
    assert out.format == "WEBP" and out.mode == "RGBA"
    assert out.getpixel((0, 0))[3] == 0


def test_orientation_6_comes_out_upright_without_exif_and_gps():
    image = photo("rocket.jpg")
    stored = image.transpose(Image.Transpose.ROTATE_90)  # how a camera stores a sideways shot
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x8825] = {1: "N", 2: (52.0, 22.0, 0.0)}  # GPS IFD
    data = encode(stored, "JPEG", quality=95, exif=exif.tobytes(), comment=b"secret location")
    out = decoded(compress(data).data)
    assert out.size == image.size
    assert out.getexif().get(0x0112) in (None, 1)
    assert "exif" not in out.info and not out.info.get("comment")
    # upright: the output matches the original photo far better than the sideways copy would
    upright = ImageStat.Stat(ImageChops.difference(out.convert("L"), image.convert("L"))).mean[0]
    assert upright < 12


def test_icc_profile_survives():
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    data = encode(photo("chelsea.png"), "PNG", icc_profile=profile)
    assert decoded(compress(data).data).info.get("icc_profile") == profile


def test_cmyk_jpeg_comes_out_rgb_with_close_colours():
    rgb = photo("coffee.png").convert("RGB")
    out = decoded(compress(encode(rgb.convert("CMYK"), "JPEG", quality=95)).data)
    assert out.mode == "RGB"
    means, expected = ImageStat.Stat(out).mean, ImageStat.Stat(rgb).mean
    assert all(abs(a - b) < 12 for a, b in zip(means, expected, strict=True)), (means, expected)


def test_grayscale_and_16_bit_png():
    gray = photo("astronaut.png").convert("L")
    out = decoded(compress(encode(gray, "PNG")).data)
    assert out.mode == "L" and out.format == "JPEG"
    wide = gray.convert("I").point(lambda v: v * 257).convert("I;16")  # the same photo, 16 bits a sample
    wide_png = encode(wide, "PNG")
    assert decoded(wide_png).mode.startswith("I")
    out16 = decoded(compress(wide_png).data)
    assert out16.mode == "L"
    mean_in, mean_out = ImageStat.Stat(gray).mean[0], ImageStat.Stat(out16).mean[0]
    assert abs(mean_in - mean_out) < 4  # scaled, not clipped to white


def test_progressive_jpeg_input():
    data = encode(photo("astronaut.png"), "JPEG", quality=90, progressive=True)
    assert decoded(compress(data).data).size == (512, 512)


def test_animated_gif_becomes_animated_webp_with_all_frames():
    source = photo_bytes("no_time_for_that_tiny.gif")
    frames = Image.open(io.BytesIO(source)).n_frames
    out = decoded(compress(source).data)
    assert out.format == "WEBP" and getattr(out, "n_frames", 1) == frames > 1


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "empty"),
        (b"<html><body>not an image</body></html>", "not an image"),
        (photo_as_jpeg("rocket.jpg")[:5000], "truncated"),
    ],
)
def test_non_images_are_rejected_with_a_reason(data: bytes, fragment: str):
    with pytest.raises(ImageRejected, match=fragment):
        compress(data)


def test_decompression_bomb_is_rejected_before_decoding():
    bomb = encode(Image.new("L", (30000, 30000)), "PNG")
    assert len(bomb) < 2_000_000
    with pytest.raises(ImageRejected, match="pixel limit"):
        compress(bomb, max_pixels=100_000_000)
