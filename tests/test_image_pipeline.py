"""The image zoo and the fault host through the running stack: one CSV, every policy case, every failure reason.

One upload carries every case (real photographs in every awkward encoding, plus hosts that fail in every way
the brief names). The module fixture waits for it to finish once; each test then checks one aspect, per image,
in the three places a client sees results: the products API, the output CSV and the output images themselves.
"""

from __future__ import annotations

import asyncio
import csv
import io
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import numpy as np
import pytest
from PIL import Image, ImageChops, ImageStat
from pymongo import AsyncMongoClient

from services.compressor.compress import ImageRejected, compress
from services.compressor.frame_budget import set_pillow_backstop
from shared.cache import is_shared_object
from testkit.stack import MANAGEMENT, MANAGEMENT_HEADERS, service_env, service_settings
from tests.support import zoo
from tests.support.client import API, csv_text, upload, wait_final
from tests.support.photos import quantization, reference_quantization

SETTINGS = service_settings()  # what the running services were started with


@dataclass(frozen=True)
class Good:
    """A source that must come out as ``fmt`` showing ``sample.shows``."""

    key: str
    sample: zoo.Sample
    fmt: str
    content_type: str = "image/jpeg"
    route: str = "img"  # img | slow | redirect (PIXPRESS_MAX_REDIRECTS hops)
    flaky: int = 0  # 503s before the host answers


@dataclass(frozen=True)
class Bad:
    """A source that must fail with exactly ``reason``."""

    key: str
    path: str
    reason: str


def _local_reason(body: bytes) -> str:
    set_pillow_backstop(SETTINGS.max_image_pixels)  # as the compressor does at start
    try:
        compress(body, quality=SETTINGS.jpeg_quality, max_pixels=SETTINGS.max_image_pixels)
    except ImageRejected as exc:
        return str(exc)
    raise AssertionError("expected the compressor to reject these bytes")


GOODS = [
    Good("sideways-exif6.jpg", zoo.sideways_jpeg(), "JPEG"),
    Good("cmyk.jpg", zoo.cmyk_jpeg(), "JPEG"),
    Good("alpha.png", zoo.rgba_png(), "WEBP", "text/plain"),  # the type is decided by decoding, not the header
    Good("opaque-alpha.png", zoo.opaque_rgba_png(), "JPEG", "image/png"),
    Good("palette-trns.png", zoo.palette_png_trns(), "WEBP", "image/png"),
    Good("transparent.gif", zoo.transparent_gif(), "WEBP", "image/gif"),
    Good("grey.png", zoo.grayscale_png(), "JPEG", "image/png"),
    Good("grey16.png", zoo.grey16_png(), "JPEG", "image/png"),
    Good("rgb48.png", zoo.rgb48_png(), "JPEG", "image/png"),
    Good("progressive-icc.jpg", zoo.progressive_jpeg_with_icc(), "JPEG"),
    Good("photo.webp", zoo.webp(), "WEBP", "image/webp"),
    Good("photo.bmp", zoo.bmp(), "JPEG", "image/bmp"),
    Good("photo.tiff", zoo.tiff(), "JPEG", "application/octet-stream"),
    Good("tiny.png", zoo.tiny(), "JPEG", "image/png"),
    Good(
        "flaky.jpg",
        zoo.Sample(zoo.encode(zoo.rgb("retina.jpg"), "JPEG", quality=90), zoo.rgb("retina.jpg")),
        "JPEG",
        flaky=2,
    ),
    Good(
        "slow.jpg",
        zoo.Sample(zoo.encode(zoo.rgb("chelsea.png"), "JPEG", quality=90), zoo.rgb("chelsea.png")),
        "JPEG",
        route="slow",
    ),
    Good(
        "redirected.png",
        zoo.Sample(zoo.encode(zoo.rgb("camera.png"), "PNG"), zoo.rgb("camera.png")),
        "JPEG",
        "image/png",
        route="redirect",
    ),
]
ANIMATED_BODY, ANIMATED_FRAMES = zoo.animated_gif()
TRUNCATED = zoo.truncated_jpeg()
MAX_REDIRECTS = SETTINGS.max_redirects
ATTEMPTS = SETTINGS.image_max_attempts
# the slowest case, a host that never answers: every attempt waits read_timeout, with backoff (+30 % jitter between)
HANG_SECONDS = ATTEMPTS * SETTINGS.read_timeout + 1.3 * SETTINGS.retry_base_delay_ms / 1000 * (2 ** (ATTEMPTS - 1) - 1)
BADS = [
    Bad("missing", "/img/missing.jpg", "download failed: HTTP 404 from image host"),
    Bad("gone", "/status/410", "download failed: HTTP 410 from image host"),
    Bad("always-503", "/status/503", f"download failed: HTTP 503 from image host (after {ATTEMPTS} attempts)"),
    Bad(
        "hang",
        "/hang",
        f"download failed: timed out after {SETTINGS.read_timeout:g}s without data (after {ATTEMPTS} attempts)",
    ),
    Bad("huge", "/huge", f"download failed: image is larger than the limit of {SETTINGS.max_image_bytes} bytes"),
    Bad(
        "redirect-loop",
        f"/redirect/{MAX_REDIRECTS + 1}/redirected.png",
        f"download failed: more than {MAX_REDIRECTS} redirects",
    ),
    Bad("html", "/img/page.jpg", "not an image (no decoder recognises the bytes)"),
    Bad("truncated", "/img/truncated.jpg", _local_reason(TRUNCATED)),
    Bad("empty", "/img/empty.jpg", "download failed: empty response body (0 bytes)"),
    Bad("bomb", "/img/bomb.png", _local_reason(zoo.png_bomb())),
]


JITTER = (1.0, 1.1, 1.2, 1.3)  # services.compressor.worker.retry_delay_ms


async def delay_publishes() -> dict[str, int]:
    """Messages ever published to each image delay queue, from the RabbitMQ management API."""
    async with (
        aiohttp.ClientSession(headers=MANAGEMENT_HEADERS) as session,
        session.get(f"{MANAGEMENT}/queues", params={"columns": "name,message_stats"}) as answer,
    ):
        assert answer.status == 200, await answer.text()
        queues = await answer.json()
    return {
        q["name"]: (q.get("message_stats") or {}).get("publish", 0)
        for q in queues
        if q["name"].startswith("pixpress.delay.image.todo.")
    }


@dataclass
class Run:
    host: zoo.ZooHost
    request_id: str
    status: dict
    rows: list[tuple[str, str, list[str]]]
    products: dict[str, dict]  # serial -> product record from the API
    table: dict[str, dict[str, str]]  # serial -> output CSV row
    outputs: dict[str, bytes]  # output URL -> body
    delay_publishes_before: dict[str, int]


def _good_url(host: zoo.ZooHost, good: Good) -> str:
    host.add(good.key, good.sample.body, good.content_type)
    if good.flaky:
        host.flaky[good.key] = good.flaky
    if good.route == "slow":
        return host.url(f"/slow/{good.key}")
    if good.route == "redirect":
        return host.url(f"/redirect/{MAX_REDIRECTS}/{good.key}")
    return host.url(f"/img/{good.key}")


@pytest.fixture(scope="module")
async def run(stack: str) -> AsyncIterator[Run]:
    host = zoo.ZooHost()
    await host.start()
    try:
        host.add("page.jpg", zoo.HTML_PAGE, "image/jpeg")
        host.add("truncated.jpg", TRUNCATED, "image/jpeg")
        host.add("empty.jpg", b"", "image/jpeg")
        host.add("bomb.png", zoo.png_bomb(), "image/png")
        host.add("animated.gif", ANIMATED_BODY, "image/gif")
        rows: list[tuple[str, str, list[str]]] = [(f"G-{g.key}", f"good {g.key}", [_good_url(host, g)]) for g in GOODS]
        rows.append(("G-animated.gif", "animated", [host.url("/img/animated.gif")]))
        rows += [(f"B-{b.key}", f"bad {b.key}", [host.url(b.path)]) for b in BADS]
        # one row mixing outcomes: slots must stay in input order with the failures left empty
        rows.append(("MIX", "mixed", [host.url("/img/missing.jpg"), host.url("/img/tiny.png"), host.url("/hang")]))
        budget = HANG_SECONDS + 90  # generous: only a broken pipeline (or a badly overloaded machine) needs it
        timeout = aiohttp.ClientTimeout(total=60)
        delays_before = await delay_publishes()
        async with aiohttp.ClientSession(timeout=timeout) as http:
            response = await upload(http, csv_text(rows))
            assert response.status == 200, await response.text()
            request_id = (await response.json())["request_id"]
            status = await wait_final(http, request_id, timeout=budget)
            async with http.get(f"{API}/requests/{request_id}/products", params={"limit": "500"}) as answer:
                assert answer.status == 200, await answer.text()
                page = await answer.json()
            assert page["total"] == len(rows) == len(page["items"])
            products = {item["serial_number"]: item for item in page["items"]}
            assert "output_csv_url" in status, status
            async with http.get(status["output_csv_url"]) as answer:
                assert answer.status == 200
                table = {r["Serial Number"]: r for r in csv.DictReader(io.StringIO(await answer.text()))}
            outputs: dict[str, bytes] = {}
            for item in page["items"]:
                for url in item["output_image_urls"]:
                    if url:
                        async with http.get(url) as answer:
                            assert answer.status == 200, url
                            outputs[url] = await answer.read()
        yield Run(host, request_id, status, rows, products, table, outputs, delays_before)
    finally:
        await host.stop()


def _decoded(run: Run, serial: str, slot: int = 0) -> tuple[str, Image.Image]:
    url = run.products[serial]["output_image_urls"][slot]
    assert url, f"{serial}: no output, error {run.products[serial]['image_errors'][slot]!r}"
    image = Image.open(io.BytesIO(run.outputs[url]))
    image.load()
    return url, image


def _mean_difference(out: Image.Image, shows: Image.Image) -> float:
    """Mean absolute difference per channel over the pixels that are visible in ``shows``."""
    mask = shows.getchannel("A").point(lambda a: 255 if a == 255 else 0) if shows.mode == "RGBA" else None
    diff = ImageChops.difference(out.convert("RGB"), shows.convert("RGB"))
    return max(ImageStat.Stat(diff, mask=mask).mean)


# --- the request as a whole --------------------------------------------------------------------------------------


def test_request_completes_with_exact_counts_and_honest_savings(run: Run):
    progress = run.status["progress"]
    goods = len(GOODS) + 1 + 1  # + animated + the tiny image in the mixed row
    bads = len(BADS) + 2  # + the 404 and the hang in the mixed row
    assert run.status["status"] == "Completed"
    assert progress["images_total"] == goods + bads == progress["images_settled"]
    assert (progress["images_done"], progress["images_failed"]) == (goods, bads)
    assert progress["percent"] == 100.0
    inputs = {g.key: g.sample.body for g in GOODS} | {"animated.gif": ANIMATED_BODY}
    bytes_in = sum(len(body) for body in inputs.values()) + len(inputs["tiny.png"])  # tiny twice: the mixed row
    assert progress["bytes_in"] == bytes_in  # successful images only: a rejected download saves nothing
    # per slot: with the output cache the two tiny.png slots share one output URL
    slots = [url for product in run.products.values() for url in product["output_image_urls"] if url]
    assert progress["bytes_out"] == sum(len(run.outputs[url]) for url in slots)
    assert 0 < progress["bytes_out"] < progress["bytes_in"]
    assert progress["savings_percent"] == round(100 * (1 - progress["bytes_out"] / progress["bytes_in"]), 2)
    assert 50 < progress["savings_percent"] < 100


def test_output_csv_has_a_slot_per_url_and_every_reason(run: Run):
    assert list(run.table) == [serial for serial, _name, _urls in run.rows]
    for serial, _name, urls in run.rows:
        line, product = run.table[serial], run.products[serial]
        assert line["Input Image Urls"].split(",") == urls
        assert line["Output Image Urls"].split(",") == [u or "" for u in product["output_image_urls"]]
        reasons = [f"image {i + 1}: {e}" for i, e in enumerate(product["image_errors"]) if e]
        assert line["Errors"] == "; ".join(reasons)
        assert product["pending"] == 0


def test_mixed_row_keeps_slot_order(run: Run):
    product = run.products["MIX"]
    assert [bool(u) for u in product["output_image_urls"]] == [False, True, False]
    assert product["image_errors"][0] == "download failed: HTTP 404 from image host"
    assert product["image_errors"][1] is None
    assert product["image_errors"][2] == BADS[3].reason
    assert run.table["MIX"]["Errors"] == f"image 1: {BADS[0].reason}; image 3: {BADS[3].reason}"
    _, out = _decoded(run, "MIX", 1)
    assert out.format == "JPEG" and out.size == (1, 1)


# --- every good source -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("good", GOODS, ids=[g.key for g in GOODS])
def test_policy_format_size_pixels_and_metadata(run: Run, good: Good):
    serial = f"G-{good.key}"
    assert run.products[serial]["image_errors"] == [None]
    assert run.table[serial]["Errors"] == ""
    url, out = _decoded(run, serial)
    source = Image.open(io.BytesIO(good.sample.body))
    shows = good.sample.shows
    assert out.format == good.fmt
    assert url.endswith(".jpg" if good.fmt == "JPEG" else ".webp")
    # content-addressed with the output cache on (docs/cache.md), else under the request
    key = "images/" + url.split("/images/", 1)[1]
    assert is_shared_object(key) if SETTINGS.cache else key.startswith(f"images/{run.request_id}/")
    assert out.size == shows.size  # dimensions as displayed (orientation applied), never resized
    transparent = shows.mode == "RGBA" and shows.getchannel("A").getextrema() != (255, 255)
    if transparent:
        assert out.mode == "RGBA"
        assert ImageChops.difference(out.getchannel("A"), shows.getchannel("A")).getbbox() is None  # alpha exact
    else:
        assert out.mode in ("RGB", "L")
    # right colours and right way up: a q50 re-encode of what the source shows
    limit = 3 if shows.size == (1, 1) else 9
    assert _mean_difference(out, shows) < limit
    if good.fmt == "JPEG":
        reference = reference_quantization(shows, SETTINGS.jpeg_quality)
        assert quantization(out) == ({0: reference[0]} if out.mode == "L" else reference)
    # the ICC profile survives (CMYK is converted to sRGB, so its source profile does not apply any more)
    if source.mode != "CMYK":
        assert out.info.get("icc_profile") == source.info.get("icc_profile")
    assert not out.getexif() and "comment" not in out.info and "xmp" not in out.info


def test_grey_and_16_bit_sources_come_out_grey_and_scaled(run: Run):
    for serial, name in (("G-grey.png", "camera.png"), ("G-grey16.png", "moon.png")):
        _, out = _decoded(run, serial)
        assert out.mode == "L", serial
        original = np.asarray(zoo.photo(name), dtype=np.int16)
        produced = np.asarray(out, dtype=np.int16)
        assert abs(produced.mean() - original.mean()) < 2, serial  # scaled by 1/257, not clipped to white
    _, colour = _decoded(run, "G-rgb48.png")
    assert colour.mode == "RGB"


def test_animated_gif_becomes_animated_webp_with_every_frame(run: Run):
    _, out = _decoded(run, "G-animated.gif")
    assert out.format == "WEBP" and getattr(out, "is_animated", False)
    assert getattr(out, "n_frames", 1) == len(ANIMATED_FRAMES) == len(zoo.ANIMATION_DURATIONS)
    assert out.size == ANIMATED_FRAMES[0].size
    for i, (frame, duration) in enumerate(zip(ANIMATED_FRAMES, zoo.ANIMATION_DURATIONS, strict=True)):
        out.seek(i)
        out.load()
        assert out.info["duration"] == duration, i
        assert _mean_difference(out, frame) < 9, i  # frame i is photo i, in order
    assert run.table["G-animated.gif"]["Output Image Urls"].endswith(".webp")


# --- faults ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", BADS, ids=[b.key for b in BADS])
def test_failure_reason_in_products_api_and_csv(run: Run, bad: Bad):
    serial = f"B-{bad.key}"
    product = run.products[serial]
    assert product["output_image_urls"] == [None]
    assert product["image_errors"] == [bad.reason]
    assert run.table[serial]["Output Image Urls"] == ""
    assert run.table[serial]["Errors"] == f"image 1: {bad.reason}"


def test_truncated_reason_names_the_truncation(run: Run):
    assert run.products["B-truncated"]["image_errors"][0].startswith("image data is corrupt or truncated: ")
    assert "truncated" in run.products["B-truncated"]["image_errors"][0].split(": ", 1)[1]


def test_permanent_failures_are_not_retried_and_transient_ones_are_bounded(run: Run):
    hits = run.host.hits
    assert hits["missing.jpg"] == 2  # its own row and the mixed row, once each
    assert hits["status-410"] == 1
    assert hits["status-503"] == ATTEMPTS
    assert hits["hang"] == 2 * ATTEMPTS  # its own row and the mixed row
    assert hits["page.jpg"] == hits["truncated.jpg"] == hits["empty.jpg"] == hits["bomb.png"] == 1


def test_503_then_200_succeeds_after_backoff_through_the_broker(run: Run):
    key = "flaky.jpg"
    assert run.host.hits[key] == 3
    first, second, third = run.host.times[key]
    base = SETTINGS.retry_base_delay_ms / 1000
    # exponential backoff with up to +30 % jitter, waited in a RabbitMQ TTL queue (not a requeue loop)
    assert 0.95 * base <= second - first <= 1.3 * base + 3
    assert 1.9 * base <= third - second <= 2.6 * base + 3
    _, out = _decoded(run, f"G-{key}")
    assert out.format == "JPEG"


async def test_retries_wait_in_rabbitmq_delay_queues(run: Run):
    """Every retry of this request was parked in a ``pixpress.delay.image.todo.<ms>`` TTL queue: the publish
    counters of those queues grew by at least the number of retries the zoo needs."""
    retries = 2 + (ATTEMPTS - 1) + 2 * (ATTEMPTS - 1)  # flaky.jpg, always-503, the two hangs
    base = SETTINGS.retry_base_delay_ms
    names = {f"pixpress.delay.image.todo.{int(base * 2 ** (a - 1) * j)}" for a in range(1, ATTEMPTS) for j in JITTER}
    published = run.delay_publishes_before
    deadline = time.monotonic() + 12  # the management API refreshes its counters every 5 s
    while time.monotonic() < deadline:
        published = await delay_publishes()
        if sum(published.values()) - sum(run.delay_publishes_before.values()) >= retries:
            break
        await asyncio.sleep(1)
    grown = {name for name in published if published[name] > run.delay_publishes_before.get(name, 0)}
    assert sum(published.values()) - sum(run.delay_publishes_before.values()) >= retries, published
    assert grown and grown <= names, (grown, names)  # only the delays the backoff formula can produce


def test_slow_and_redirected_sources_arrive_whole(run: Run):
    assert run.host.hits["slow/slow.jpg"] == 1
    assert run.host.hits["redirected.png"] == 1  # the redirect loop case never reaches it
    for serial in ("G-slow.jpg", "G-redirected.png"):
        _, out = _decoded(run, serial)
        assert out.format == "JPEG"


# JPEGs the DCT-domain path takes (services/compressor/jpeg_fast.py); it leaves sideways-exif6.jpg (EXIF orientation 6)
# and cmyk.jpg to the pixel path, like every other format
DCT_JPEGS = {"flaky.jpg", "slow.jpg", "progressive-icc.jpg"}


async def test_each_result_records_the_codec_that_made_it(run: Run):
    """The compressor's result message carries the codec, and the aggregator stores it with the result."""
    env = service_env()
    client: AsyncMongoClient = AsyncMongoClient(env.get("PIXPRESS_MONGO_URL", "mongodb://127.0.0.1:27017/"))
    try:
        db = client[env.get("PIXPRESS_MONGO_DB", "pixpress")]
        codecs = {
            (doc["row"], doc["index"]): doc.get("codec")
            async for doc in db.results.find({"request_id": run.request_id}, {"row": 1, "index": 1, "codec": 1})
        }
    finally:
        await client.close()
    by_serial = {serial: codecs.get((row, 0)) for row, (serial, _name, _urls) in enumerate(run.rows, start=1)}
    fast = "dct" if SETTINGS.jpeg_fast_path else "pillow"
    for good in GOODS:
        expected = fast if good.key in DCT_JPEGS else "pillow"
        assert by_serial[f"G-{good.key}"] == expected, good.key
    for bad in BADS:
        assert by_serial[f"B-{bad.key}"] is None, bad.key  # failures were encoded by nothing
