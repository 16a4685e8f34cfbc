"""The image policy of the brief's section 3, on real photographs and edge cases made from them."""

from __future__ import annotations

import io
import resource

import pytest
from PIL import Image, ImageChops, ImageCms, ImageSequence, ImageStat

from services.compressor.compress import ImageRejected, compress
from services.compressor.frame_budget import count_pixels
from tests.support import bombs, zoo
from tests.support.photos import encode, photo, photo_as_jpeg, photo_bytes, quantization, reference_quantization

pytestmark = pytest.mark.pure  # no server of the stack: `make test-fast` runs it


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
    assert quantization(out) == reference_quantization(photo("rocket.jpg"))
    assert len(result.data) < len(source)


def test_opaque_png_photo_becomes_jpeg_at_quality_50():
    result = compress(photo_bytes("astronaut.png"))
    out = decoded(result.data)
    assert out.format == "JPEG" and out.size == (512, 512)
    assert quantization(out) == reference_quantization(photo("astronaut.png"))


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
    assert out.getchannel("A").getpixel((10, 10)) == 0
    assert out.getchannel("A").getpixel((300, 200)) == 255


def test_palette_png_with_trns_becomes_webp_with_alpha():
    palette = photo("coffee.png").convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    index = palette.getpixel((0, 0))
    out = decoded(compress(encode(palette, "PNG", transparency=index)).data)
    assert out.format == "WEBP" and out.mode == "RGBA"
    assert out.getchannel("A").getpixel((0, 0)) == 0


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
    frames = getattr(Image.open(io.BytesIO(source)), "n_frames", 1)
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
    bomb = zoo.png_bomb()  # 30000 x 30000: 900 million pixels in about 100 KB
    assert len(bomb) < 2_000_000
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ImageRejected, match="pixel limit"):
        compress(bomb, max_pixels=100_000_000)
    # ru_maxrss is in KiB; decoding it, even at one byte a pixel, would have added 900 MB
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 100 * 1024


# --- multi-frame bombs and codec failures (issue 11): every frame counted before anything is decoded ------


@pytest.mark.parametrize(
    "build",
    [bombs.tiff_with_huge_second_page, bombs.mpo_with_huge_second_frame, bombs.gif_with_a_frame_larger_than_its_screen],
    ids=["tiff-page-2", "mpo-frame-2", "gif-frame-beyond-screen"],
)
def test_a_huge_later_frame_is_refused_before_decoding(build):
    data = build()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ImageRejected, match="pixel limit"):
        compress(data, max_pixels=100_000_000)
    # ru_maxrss is in KiB; decoding the frame would have added hundreds of MiB
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 100 * 1024


def test_frames_are_summed_not_just_counted():
    """Ten 100x100 frames are 100,000 pixels: refused under a 99,999 limit, accepted at 100,000."""
    frames = [Image.new("RGB", (100, 100), (i * 20, 0, 0)) for i in range(10)]
    data = encode(frames[0], "PNG", save_all=True, append_images=frames[1:])
    with pytest.raises(ImageRejected, match="over the 99999 pixel limit"):
        compress(data, max_pixels=99_999)
    assert compress(data, max_pixels=100_000).format == "WEBP"


def test_the_frame_limit_is_checked_before_decoding():
    frames = [Image.new("RGB", (2, 2), (i, 0, 0)) for i in range(12)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    with pytest.raises(ImageRejected, match="more than 10 frames"):
        compress(data, max_frames=10)


def test_gif_frame_sizes_read_from_the_bytes_match_what_pillow_decodes():
    """The GIF descriptor walk is hand-written; it must agree with Pillow's canvas, frame by frame."""
    source = photo_bytes("no_time_for_that_tiny.gif")
    with Image.open(io.BytesIO(source)) as image:
        decoded = [frame.size for frame in ImageSequence.Iterator(image)]
    with Image.open(io.BytesIO(source)) as image:
        counted = count_pixels(image, source, max_pixels=10**12, max_frames=10**6)
    assert counted.frames == len(decoded)
    assert counted.pixels == sum(w * h for w, h in decoded)


def test_a_multi_page_tiff_within_the_limit_still_compresses():
    pages = [photo(name).convert("RGB").resize((60, 40)) for name in ("coffee.png", "rocket.jpg")]
    data = encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])
    assert compress(data).format == "WEBP"


def test_pages_of_different_sizes_fail_with_the_encoders_reason():
    """Animated WebP frames share one canvas size; such a TIFF is refused on the first try, not crash-looped."""
    pages = [photo("coffee.png").convert("RGB").resize((60, 40)), photo("rocket.jpg").convert("RGB").resize((30, 20))]
    data = encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])
    with pytest.raises(ImageRejected, match="Invalid frame dimensions"):
        compress(data)


def test_a_codec_failure_is_a_rejection_with_a_reason_not_a_crash():
    """The animated WebP this GIF must become is wider than WebP allows; Pillow raises RuntimeError."""
    with pytest.raises(ImageRejected, match=r"codec failed.*RuntimeError"):
        compress(bombs.animated_gif_too_wide_for_webp())
