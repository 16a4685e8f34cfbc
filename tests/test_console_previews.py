"""How previews are made (services/ingest/thumbnails.py) and what the console's pages are built from, without the
stack: real photographs and edge cases made with Pillow; the templates and assets as the package ships them."""

from __future__ import annotations

import io
import re
from pathlib import Path

import jinja2
import pytest
from PIL import Image

from services.ingest import console
from services.ingest.thumbnails import THUMB_SIDE, ThumbnailError, make_thumbnail
from tests.support.photos import encode, photo, photo_as_jpeg, photo_bytes

pytestmark = pytest.mark.pure

CONSOLE = Path(console.__file__).parent
MAX_PIXELS = 100_000_000


def preview_of(data: bytes) -> Image.Image:
    preview = Image.open(io.BytesIO(make_thumbnail(data, MAX_PIXELS)))
    assert preview.format == "WEBP"
    return preview


def test_a_large_jpeg_is_decoded_at_a_reduced_scale_and_fits_the_box(monkeypatch: pytest.MonkeyPatch):
    big = encode(photo("astronaut.png").convert("RGB").resize((4096, 2048)), "JPEG", quality=90)
    decoded_sizes: list[tuple[int, int]] = []
    original_load = Image.Image.load

    def spy(image: Image.Image) -> object:
        decoded_sizes.append(image.size)
        return original_load(image)

    monkeypatch.setattr(Image.Image, "load", spy)
    preview = preview_of(big)
    assert preview.size == (THUMB_SIDE, THUMB_SIDE // 2)
    assert decoded_sizes and max(decoded_sizes[0]) <= 4096 // 8, decoded_sizes  # draft: libjpeg's 1/8 scale


def test_exif_orientation_is_applied():
    wide = photo("rocket.jpg").convert("RGB")  # 640x427
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    preview = preview_of(encode(wide, "JPEG", exif=exif.tobytes()))
    assert preview.height > preview.width


def test_transparency_is_kept():
    image = photo("chelsea.png").convert("RGBA")
    image.putalpha(128)
    preview = preview_of(encode(image, "PNG"))
    assert preview.mode == "RGBA" and preview.getchannel("A").getextrema() == (128, 128)


@pytest.mark.parametrize("name", ["coffee.png", "retina.jpg"])
def test_real_photographs_keep_their_aspect(name: str):
    source = photo(name)
    preview = preview_of(photo_bytes(name))
    assert max(preview.size) == THUMB_SIDE
    assert abs(preview.width / preview.height - source.width / source.height) < 0.02


def test_too_many_pixels_and_non_images_are_refused_without_decoding():
    with pytest.raises(ThumbnailError, match="pixel limit"):
        make_thumbnail(photo_as_jpeg("coffee.png"), max_pixels=1000)
    with pytest.raises(ThumbnailError, match="not an image"):
        make_thumbnail(b"<html>not an image</html>", MAX_PIXELS)
    with pytest.raises(ThumbnailError, match="cannot decode"):
        make_thumbnail(photo_as_jpeg("coffee.png")[:2000], MAX_PIXELS)


def test_templates_escape_what_they_are_given():
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(CONSOLE / "templates"), autoescape=True)
    page = environment.get_template("request.html").render(
        request_id="<img src=x onerror=alert(1)>", page="request", docs_path="/docs"
    )
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page


def test_templates_have_no_inline_script_or_style_and_use_only_served_assets():
    """The Content-Security-Policy allows scripts and styles from files of this server only."""
    served = set(console._CONTENT_TYPES)
    assert served == {path.name for path in (CONSOLE / "static").iterdir()}
    for template in (CONSOLE / "templates").iterdir():
        text = template.read_text(encoding="utf-8")
        assert not re.search(r"<script(?![^>]*\ssrc=)", text), template.name
        assert "<style" not in text and " style=" not in text and re.search(r"\son[a-z]+=", text) is None
        for asset in re.findall(r"/console/assets/([\w.-]+)", text):
            assert asset in served, (template.name, asset)
    assert "'unsafe-inline'" not in console.CSP and "script-src 'self'" in console.CSP


def test_the_scripts_never_parse_markup():
    for script in (CONSOLE / "static").glob("*.js"):
        text = script.read_text(encoding="utf-8")
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
            assert sink not in text, (script.name, sink)
