"""The DCT-domain JPEG path (services/compressor/jpeg_fast.py and its C module) against the pixel path.

Quality guard on real photographs in every layout the path takes (4:2:0, 4:4:4, progressive, greyscale): the
output decodes, has the quality-50 tables, is within 5 % of the pixel path's size and loses at most 0.3 dB of PSNR
against it. Then the rules: what it keeps and drops, what it declines, the "never larger" rule, and its Huffman
counts against libjpeg's own. The fuzz test is in test_jpeg_fast_path_fuzz.py.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageCms, JpegImagePlugin

from services.compressor import jpeg_fast
from services.compressor.compress import compress
from tests.support.photos import encode, photo, quantization, reference_quantization

pytestmark = pytest.mark.pure  # no server of the stack: `make test-fast` runs it

QUALITY = 50
PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png")
# How the sources are made: Pillow's own defaults are 4:2:0 baseline.
LAYOUTS = {
    "420": {"quality": 90},
    "444": {"quality": 90, "subsampling": 0},
    "progressive": {"quality": 90, "progressive": True},
    "grey": {"quality": 90},
}
SAMPLING_444 = 0


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def psnr(reference: Image.Image, test: Image.Image) -> float:
    a = np.asarray(reference, dtype=np.float64)
    b = np.asarray(test.convert(reference.mode), dtype=np.float64)
    return float(10 * np.log10(255.0**2 / np.mean((a - b) ** 2)))


def source_jpeg(name: str, layout: str) -> tuple[bytes, Image.Image]:
    image = photo(name).convert("L" if layout == "grey" else "RGB")
    data = encode(image, "JPEG", **LAYOUTS[layout])
    return data, decoded(data)


def pixel_path(data: bytes, layout: str) -> bytes:
    """What the pixel path makes of ``data`` with the fast path's output settings.

    For 4:2:0, progressive and grey sources that is exactly ``compress`` without the fast path. A 4:4:4 source keeps
    4:4:4 on the fast path (coefficients cannot be re-sampled in the DCT domain), while the pixel path writes
    4:2:0: the like-for-like comparison is Pillow's q50 encode with the chroma layout kept
    (test_444_source_keeps_its_layout measures the difference to today's 4:2:0 output)."""
    if layout != "444":
        return compress(data, quality=QUALITY, jpeg_fast_path=False).data
    out = io.BytesIO()
    decoded(data).save(out, "JPEG", quality=QUALITY, optimize=True, subsampling=SAMPLING_444)
    return out.getvalue()


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("name", PHOTOS)
def test_fast_output_matches_the_pixel_path_in_tables_size_and_quality(name: str, layout: str):
    data, source = source_jpeg(name, layout)
    result = compress(data, quality=QUALITY)
    assert result.codec == "dct" and result.format == "JPEG"
    fast = decoded(result.data)
    pixel = decoded(pixel_path(data, layout))
    assert fast.format == "JPEG" and fast.size == source.size == (result.width, result.height)
    assert fast.mode == source.mode
    reference = reference_quantization(source, QUALITY)
    assert quantization(fast) == ({0: reference[0]} if layout == "grey" else reference)
    ratio = len(result.data) / len(pixel_path(data, layout))
    assert 0.95 <= ratio <= 1.05, f"fast path {len(result.data)} bytes is {ratio:.3f}x the pixel path's"
    assert psnr(source, fast) >= psnr(source, pixel) - 0.3


def test_444_source_keeps_its_layout():
    data, _source = source_jpeg("coffee.png", "444")
    fast = decoded(compress(data, quality=QUALITY).data)
    today = decoded(compress(data, quality=QUALITY, jpeg_fast_path=False).data)
    assert JpegImagePlugin.get_sampling(fast) == SAMPLING_444
    assert JpegImagePlugin.get_sampling(today) == 2  # the pixel path's 4:2:0


def test_icc_kept_exif_gps_xmp_and_comment_dropped():
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x0112] = 1
    exif[0x010F] = "camera maker"
    exif[0x8825] = {1: "N", 2: (52.0, 22.0, 0.0)}
    data = encode(
        photo("chelsea.png").convert("RGB"),
        "JPEG",
        quality=90,
        icc_profile=profile,
        exif=exif.tobytes(),
        comment=b"secret location",
        xmp=b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description tiff:Orientation="1"/></x:xmpmeta>',
    )
    source = decoded(data)
    assert source.info.get("comment") and source.info.get("xmp") and source.getexif()
    result = compress(data, quality=QUALITY)
    out = decoded(result.data)
    assert result.codec == "dct"
    assert out.info.get("icc_profile") == profile
    assert not out.getexif()
    assert "exif" not in out.info and "comment" not in out.info and "xmp" not in out.info


def test_large_icc_profile_in_several_chunks_survives():
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    padded = profile + bytes(150_000)  # more than two 64 KB APP2 chunks; Pillow splits and rejoins it
    data = encode(photo("astronaut.png").convert("RGB"), "JPEG", quality=90, icc_profile=padded)
    result = compress(data, quality=QUALITY)
    assert result.codec == "dct"
    assert decoded(result.data).info.get("icc_profile") == padded


def _with_exif_orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return encode(photo("rocket.jpg").convert("RGB"), "JPEG", quality=90, exif=exif.tobytes())


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (encode(photo("coffee.png").convert("CMYK"), "JPEG", quality=90), "colour space"),
        (_with_exif_orientation(6), "EXIF orientation"),
        (_with_exif_orientation(3), "EXIF orientation"),
        (
            encode(
                photo("rocket.jpg").convert("RGB"),
                "JPEG",
                quality=90,
                xmp=b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description tiff:Orientation="8"/></x:xmpmeta>',
            ),
            "XMP orientation",
        ),
        (encode(photo("rocket.jpg").convert("RGB"), "JPEG", quality=90, keep_rgb=True), "colour space"),
    ],
    ids=["cmyk", "exif-6", "exif-3", "xmp-8", "rgb-without-ycbcr"],
)
def test_declines_what_it_does_not_handle_and_the_pixel_path_takes_it(data: bytes, reason: str):
    with pytest.raises(jpeg_fast.NotEligible, match=reason):
        jpeg_fast.requantize(data, QUALITY, 100_000_000)
    result = compress(data, quality=QUALITY)
    assert result.codec == "pillow" and decoded(result.data).format == "JPEG"


def test_exif_orientation_1_is_taken():
    assert compress(_with_exif_orientation(1), quality=QUALITY).codec == "dct"


def test_pixel_limit_applies_before_any_work():
    data = encode(Image.new("L", (4000, 3000)), "JPEG", quality=90)
    with pytest.raises(jpeg_fast.NotEligible, match="pixel limit"):
        jpeg_fast.requantize(data, QUALITY, 4000 * 3000 - 1)
    assert len(jpeg_fast.requantize(data, QUALITY, 4000 * 3000)) > 0


def test_corrupt_data_is_a_jpeg_error_and_the_pixel_path_decides():
    data, _ = source_jpeg("rocket.jpg", "420")
    truncated = data[: len(data) // 2]
    with pytest.raises(jpeg_fast.JpegError):
        jpeg_fast.requantize(truncated, QUALITY, 100_000_000)
    assert jpeg_fast.requantize_or_none(truncated, quality=QUALITY, max_pixels=100_000_000) is None


def test_mpo_comes_out_as_a_jpeg_of_its_primary_image():
    """A multi-picture JPEG (a primary image plus a preview, as some cameras write) is a JPEG that viewers show as
    its primary image; the fast path reads only that image and drops the MPF marker that lists the others."""
    primary = photo("chelsea.png").convert("RGB")
    out = io.BytesIO()
    primary.save(out, "MPO", save_all=True, append_images=[primary.resize((160, 120))], quality=90)
    source = decoded(out.getvalue())
    assert source.format == "MPO" and getattr(source, "n_frames", 1) == 2
    result = compress(out.getvalue(), quality=QUALITY)
    image = decoded(result.data)
    assert result.codec == "dct" and image.format == "JPEG" and image.size == primary.size
    assert quantization(image) == reference_quantization(primary, QUALITY)
    assert psnr(primary, image) > 30


def test_setting_off_takes_the_pixel_path():
    data, _ = source_jpeg("rocket.jpg", "420")
    assert compress(data, quality=QUALITY, jpeg_fast_path=False).codec == "pillow"
    assert compress(encode(photo("rocket.jpg"), "PNG"), quality=QUALITY).codec == "pillow"


# --- never larger than needed -------------------------------------------------------------------------------------


def test_a_coarser_source_keeps_its_coefficients_and_tables_and_gets_no_larger():
    """Every entry of a q30 source is coarser than q50's: the output keeps the source's tables and its
    coefficients as they are (so it decodes to exactly the source's pixels), stripped and Huffman-optimised."""
    _data, source = source_jpeg("coffee.png", "420")
    coarse = encode(source, "JPEG", quality=30)
    out = jpeg_fast.requantize(coarse, QUALITY, 100_000_000)
    assert quantization(decoded(out)) == quantization(decoded(coarse))
    assert np.array_equal(np.asarray(decoded(out)), np.asarray(decoded(coarse)))
    assert len(out) <= len(coarse)
    assert len(out) < len(compress(coarse, quality=QUALITY, jpeg_fast_path=False).data)


def test_each_entry_is_the_coarser_of_the_source_and_the_quality_50_entry():
    q50 = reference_quantization(photo("chelsea.png"), QUALITY)
    # a source table that is fine in one half and coarse in the other
    luma = [1 if k < 32 else 120 for k in range(64)]
    chroma = [2 if k % 2 else 200 for k in range(64)]
    data = encode(photo("chelsea.png").convert("RGB"), "JPEG", qtables=[luma, chroma])
    out = quantization(decoded(jpeg_fast.requantize(data, QUALITY, 100_000_000)))
    # Pillow lists entries in zigzag order, as the file stores them
    source = quantization(decoded(data))
    assert out[0] == [max(a, b) for a, b in zip(source[0], q50[0], strict=True)]
    assert out[1] == [max(a, b) for a, b in zip(source[1], q50[1], strict=True)]


# --- the Huffman counts ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "params"),
    [
        ((512, 512), {"quality": 90}),
        ((509, 337), {"quality": 90}),  # odd sizes: dummy blocks at the right and bottom edges of 4:2:0 MCUs
        ((97, 61), {"quality": 95, "subsampling": 1}),  # 4:2:2
        ((301, 203), {"quality": 90, "subsampling": 0}),
        ((301, 203), {"quality": 85, "progressive": True}),
        ((8, 8), {"quality": 90}),
    ],
)
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_own_huffman_counts_give_the_bytes_libjpeg_optimize_coding_gives(size, params, mode):
    image = photo("astronaut.png").convert(mode).resize(size)
    data = encode(image, "JPEG", **params)
    ours = jpeg_fast.requantize(data, QUALITY, 100_000_000)
    libjpeg = jpeg_fast.requantize(data, QUALITY, 100_000_000, libjpeg_huffman=True)
    assert ours == libjpeg


@pytest.mark.parametrize("quality", [10, 50, 75, 95])
def test_other_qualities_get_the_tables_pillow_writes(quality: int):
    data, source = source_jpeg("astronaut.png", "420")
    out = decoded(jpeg_fast.requantize(data, quality, 100_000_000))
    expected = reference_quantization(source, quality)
    src_tables = quantization(source)
    # the coarser-entry rule applies where the q90 source is coarser than the target (only at high qualities)
    assert quantization(out) == {
        slot: [max(a, b) for a, b in zip(expected[slot], src_tables[slot], strict=True)] for slot in expected
    }
