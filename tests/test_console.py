"""The console in a real browser (Debian's chromium driven by Playwright) against the running stack.

What a person does: upload a CSV of real photographs through the page, watch it finish without reloading, look at
the previews, find the failed image and why, download the output CSV. What a reviewer checks: markup from a CSV
stays text, the page talks to pixpress only (never to the image hosts), no Content-Security-Policy violation, and
the API key is asked for once per tab and sent with every call. Screenshots go to each test's tmp_path.
"""

from __future__ import annotations

import asyncio
import csv
import io
import re
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest
from playwright.async_api import Browser, FilePayload, Page, expect
from pydantic import SecretStr

from shared.settings import Settings
from tests.support.apps import serve_api
from tests.support.browser import PHONE, chromium, watched_page
from tests.support.client import API, csv_text, upload, wait_final
from tests.support.photos import photo_bytes, unique_jpeg, unique_png
from tests.support.servers import ImageHost, WebhookReceiver

REQUEST_PAGE = re.compile(r"/console/requests/([0-9a-f-]{36})$")
LOADED = "(image) => image.complete && image.naturalWidth > 0"  # an <img> without src is complete, but 0 wide


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as running:
        yield running


def unique_photo(name: str) -> bytes:
    """A photograph in its own format with bytes no earlier test or run produced: the output cache would otherwise
    reuse an output stored by another test (or, on a long-lived stack, by an older version that kept no formats),
    and these tests check what a first compression shows."""
    return unique_png(name) if name.endswith(".png") else unique_jpeg(name)


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


async def upload_through_the_page(page: Page, base: str, csv: str, webhook_url: str | None = None) -> None:
    await page.goto(f"{base}/")
    file: FilePayload = {"name": "catalog.csv", "mimeType": "text/csv", "buffer": csv.encode()}
    await page.set_input_files("#csv-file", files=[file])
    if webhook_url is not None:
        await page.get_by_label("Webhook URL").fill(webhook_url)
    await page.get_by_role("button", name="Upload").click()


async def see_every_preview(page: Page, alt: str, expected: int) -> None:
    """Waits for ``expected`` previews (the products list is read again when the request ends, a moment after the
    status says so), brings each on screen in turn (they load only there) and waits until it has pixels; the list
    may be drawn again meanwhile, so the locator is resolved afresh on every look."""
    previews = page.locator(f'img[alt^="{alt}"]')
    await expect(previews).to_have_count(expected)
    for index in range(expected):
        preview = previews.nth(index)
        for _ in range(150):  # 15 s each
            await preview.scroll_into_view_if_needed()
            if await preview.evaluate(LOADED):
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail(f"{alt} preview {index} did not load: {await preview.evaluate('(image) => image.outerHTML')}")


async def test_photos_uploaded_through_the_page_finish_live_with_previews_failures_and_the_output_csv(
    stack: str, browser: Browser, image_host: ImageHost, webhook: WebhookReceiver, tmp_path: Path
):
    image_host.hold = asyncio.Event()  # nothing is downloaded until the page has shown the request running
    names = ("astronaut.png", "rocket.jpg", "chelsea.png", "coffee.png")
    urls = {name: image_host.add(name, unique_photo(name), f"image/{name.rsplit('.', 1)[1]}") for name in names}
    missing = image_host.url("/img/discontinued.jpg")
    rows = [
        ("CAT-1", "Astronaut poster", [urls["astronaut.png"], urls["rocket.jpg"]]),
        ("CAT-2", "Cat mug", [urls["chelsea.png"], missing]),
        ("CAT-3", "Coffee cup", [urls["coffee.png"]]),
    ]
    async with watched_page(browser) as watched:
        page = watched.page
        await upload_through_the_page(page, API, csv_text(rows), webhook.url("/hook"))
        await page.wait_for_url(REQUEST_PAGE)
        navigations = len(watched.navigations)
        status = page.locator("#status")
        await expect(status).to_have_text(re.compile("^(Queued|Processing)$"))
        image_host.hold.set()
        await expect(status).to_have_text("Completed", timeout=90_000)
        assert len(watched.navigations) == navigations, "the page was reloaded or left"

        await expect(page.locator("#images-done")).to_have_text("4")
        await expect(page.locator("#images-failed")).to_have_text("1")
        await expect(page.locator("#images-total")).to_have_text("5")
        await expect(page.locator("#savings")).to_contain_text("%")
        await see_every_preview(page, "Compressed", 4)
        await see_every_preview(page, "Original", 4)
        captions = page.locator("figcaption")
        await expect(captions.filter(has_text=re.compile(r"^Original · PNG · "))).to_have_count(3)
        await expect(captions.filter(has_text=re.compile(r"^Compressed · JPEG · .* \(−\d+ %\)$"))).to_have_count(4)
        failed = page.locator(".image.failed")
        await expect(failed).to_have_count(1)
        await expect(failed.locator(".error")).to_have_text(re.compile(r"^Failed: download failed: HTTP 404"))
        await expect(failed.locator(".url")).to_have_text(missing)
        await expect(page.locator("#webhook-summary")).to_contain_text("delivered", timeout=30_000)
        await page.screenshot(path=tmp_path / "request-desktop.png", full_page=True)

        # with the keyboard alone: Tab to the filter, Space to tick it
        await page.locator("body").focus()
        for _ in range(40):
            await page.keyboard.press("Tab")
            if await page.evaluate("document.activeElement.id") == "only-failed":
                break
        else:
            pytest.fail("Tab never reached the failed-only filter")
        await page.keyboard.press("Space")
        await expect(page.locator(".product")).to_have_count(1)
        await expect(page.locator(".product .name")).to_have_text("Cat mug")
        await page.get_by_label("Only products with failed images").uncheck()
        await expect(page.locator(".product")).to_have_count(3)

        async with page.expect_download() as download_info:
            await page.get_by_role("link", name="Download the output CSV").click()
        download = await download_info.value
        table = list(csv.reader(io.StringIO((await download.path()).read_text(encoding="utf-8"))))
        assert [row[0] for row in table[1:]] == ["CAT-1", "CAT-2", "CAT-3"]
        cat_mug = table[2]
        assert cat_mug[3].split(",")[0].startswith("http") and cat_mug[3].split(",")[1] == ""
        assert "HTTP 404" in cat_mug[4]

        watched.assert_clean()
        request_id = REQUEST_PAGE.search(page.url).group(1)  # type: ignore[union-attr]
        output_csv_origin = origin(await page.locator("#download").get_attribute("href") or "")
        # the browser talked to pixpress (and fetched the output CSV from its storage), never to the image host
        assert watched.origins() <= {origin(API), output_csv_origin}, watched.origins()

    async with watched_page(browser, viewport=PHONE) as phone:
        await phone.page.goto(f"{API}/console/requests/{request_id}")
        await expect(phone.page.locator("#status")).to_have_text("Completed")
        await see_every_preview(phone.page, "Compressed", 4)
        width = await phone.page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"the page is {width}px wide on a {PHONE['width']}px phone"
        await phone.page.screenshot(path=tmp_path / "request-phone.png", full_page=True)
        phone.assert_clean()


async def test_markup_from_a_csv_is_shown_as_text(stack: str, browser: Browser, image_host: ImageHost, tmp_path: Path):
    photo = image_host.add("rocket.jpg", photo_bytes("rocket.jpg"))
    name = "<img src=x onerror=alert(1)>"
    serial = "<script>alert(2)</script>"
    hostile_url = image_host.url("/img/none.jpg?<svg/onload=alert(3)>")
    async with watched_page(browser) as watched:
        page = watched.page
        await upload_through_the_page(page, API, csv_text([(serial, name, [photo, hostile_url])]))
        await page.wait_for_url(REQUEST_PAGE)
        await expect(page.locator("#status")).to_have_text("Completed", timeout=90_000)
        await expect(page.get_by_text(name, exact=True)).to_be_visible()
        await expect(page.get_by_text(serial, exact=True)).to_be_visible()
        await expect(page.locator(".url").filter(has_text="<svg/onload=alert(3)>")).to_have_count(1)
        await see_every_preview(page, "Compressed", 1)
        assert await page.locator('img[src="x"], svg, .product script').count() == 0
        await page.screenshot(path=tmp_path / "markup-as-text.png", full_page=True)
        watched.assert_clean()


async def test_a_refused_csv_shows_its_problems_as_a_table(stack: str, browser: Browser, tmp_path: Path):
    refused = "Serial Number,Product Name,Input Image Urls\nA-1,<b>Mug</b>,\nA-1,Cup,ftp://example.com/x.jpg\n"
    async with watched_page(browser) as watched:
        page = watched.page
        await upload_through_the_page(page, API, refused)
        problems = page.locator("#problems")
        await expect(problems).to_be_visible()
        await expect(page.locator("#upload-status")).to_have_text("Refused (HTTP 400).")
        cells = await page.locator("#problems-rows tr").evaluate_all(
            "(rows) => rows.map((row) => [...row.cells].map((cell) => cell.textContent))"
        )
        assert ["1", "Input Image Urls"] in [row[:2] for row in cells], cells
        assert ["2", "Serial Number"] in [row[:2] for row in cells], cells
        assert ["2", "Input Image Urls"] in [row[:2] for row in cells], cells
        assert all(row[2] for row in cells)
        assert await problems.locator("b").count() == 0
        assert page.url == f"{API}/", "a refused upload stays on the upload page"
        await page.screenshot(path=tmp_path / "refused.png", full_page=True)
        watched.assert_clean()


async def test_the_console_asks_for_the_api_key_once_per_tab_and_sends_it_with_every_call(
    stack: str, browser: Browser, image_host: ImageHost, tmp_path: Path
):
    key = "console-test-key"
    photo = image_host.add("chelsea.png", photo_bytes("chelsea.png"), "image/png")
    async with serve_api(Settings(api_key=SecretStr(key))) as client:
        base = str(client.make_url("")).rstrip("/")
        async with watched_page(browser) as watched:
            page = watched.page
            await page.goto(f"{base}/")
            form = page.locator("#key-form")
            await expect(form).to_be_visible()
            await page.get_by_label("X-API-Key").fill("wrong-key")
            await page.get_by_role("button", name="Use this key").click()
            await expect(page.locator("#key-message")).to_have_text("That key was refused; type it again.")
            await page.get_by_label("X-API-Key").fill(key)
            await page.get_by_role("button", name="Use this key").click()
            await expect(form).to_be_hidden()

            await upload_through_the_page(page, base, csv_text([("K-1", "Keyed cat", [photo])]))
            await page.wait_for_url(REQUEST_PAGE)
            await expect(page.locator("#status")).to_have_text("Completed", timeout=90_000)
            await expect(form).to_be_hidden()  # the key came along from the other page of this tab
            await see_every_preview(page, "Compressed", 1)  # previews are fetched with the key too
            assert await page.evaluate("sessionStorage.getItem('pixpress-api-key')") == key
            assert await page.evaluate("localStorage.length") == 0
            assert await page.context.cookies() == []
            await page.screenshot(path=tmp_path / "keyed.png", full_page=True)
            request_url = page.url
            watched.assert_clean()

        async with watched_page(browser) as other_tab:
            await other_tab.page.goto(request_url)
            await expect(other_tab.page.locator("#key-form")).to_be_visible()
            await expect(other_tab.page.locator("#status")).to_have_text("…")  # the shell shows nothing without it


async def test_the_requests_list_shows_the_newest_first_and_follows_open_ones_live(
    stack: str, browser: Browser, http: aiohttp.ClientSession, image_host: ImageHost, tmp_path: Path
):
    done_url = image_host.add("coffee.png", photo_bytes("coffee.png"), "image/png")
    finished = (await (await upload(http, csv_text([("L-1", "Listed cup", [done_url])]))).json())["request_id"]
    await wait_final(http, finished)
    image_host.hold = asyncio.Event()
    held_url = image_host.add("chelsea.png", photo_bytes("chelsea.png"), "image/png")
    running = (await (await upload(http, csv_text([("L-2", "Listed cat", [held_url])]))).json())["request_id"]
    async with watched_page(browser) as watched:
        page = watched.page
        await page.goto(f"{API}/")
        rows = page.locator("#requests-rows tr")
        newest, older = rows.nth(0), rows.nth(1)
        await expect(newest.get_by_role("link", name=f"Request {running}")).to_be_visible()
        await expect(older.get_by_role("link", name=f"Request {finished}")).to_be_visible()
        await expect(newest.locator(".badge")).to_have_text(re.compile("^(Queued|Processing)$"))
        await expect(older.locator(".badge")).to_have_text("Completed")
        await expect(older.locator("td").nth(2)).to_have_text("1 / 0 / 1")
        navigations = len(watched.navigations)
        image_host.hold.set()
        await expect(newest.locator(".badge")).to_have_text("Completed", timeout=60_000)
        await expect(newest.locator("td").nth(2)).to_have_text("1 / 0 / 1")
        assert await newest.locator("progress").evaluate("(bar) => bar.value") == 100
        assert len(watched.navigations) == navigations, "the list was reloaded"
        await page.screenshot(path=tmp_path / "requests.png", full_page=True)
        await newest.get_by_role("link", name=f"Request {running}").click()
        await page.wait_for_url(re.compile(f"/console/requests/{running}$"))
        watched.assert_clean()

    async with watched_page(browser, viewport=PHONE) as phone:
        await phone.page.goto(f"{API}/")
        await expect(phone.page.get_by_role("link", name=f"Request {running}")).to_be_visible()
        width = await phone.page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"the page is {width}px wide on a {PHONE['width']}px phone"
        # and nothing hides in a sideways-scrolling box: every request's figures are on screen
        table = phone.page.locator("table.requests")
        assert await table.evaluate("(table) => table.scrollWidth <= table.parentElement.clientWidth")
        await expect(phone.page.locator("#requests-rows td[data-label='Saved']").first).to_be_in_viewport()
        await phone.page.screenshot(path=tmp_path / "requests-phone.png", full_page=True)


async def test_a_catalog_uploaded_again_shows_which_images_were_reused_and_how(
    stack: str, browser: Browser, http: aiohttp.ClientSession, image_host: ImageHost, tmp_path: Path
):
    """The output cache (docs/cache.md) on the request page: the second upload of a catalog counts its reused
    images, and each one says how it was reused: the host with an ETag answers 304 (revalidated), the one without
    validators serves the same bytes again (same_bytes). Formats and sizes are shown for reused images too."""
    tagged = image_host.add("astronaut.png", unique_photo("astronaut.png"), "image/png", validators="etag")
    untagged = image_host.add("rocket.jpg", unique_photo("rocket.jpg"), "image/jpeg")
    catalog = csv_text([("R-1", "Reused poster", [tagged]), ("R-2", "Reused rocket", [untagged])])
    first = (await (await upload(http, catalog)).json())["request_id"]
    assert (await wait_final(http, first))["status"] == "Completed"
    async with watched_page(browser) as watched:
        page = watched.page
        await upload_through_the_page(page, API, catalog)
        await page.wait_for_url(REQUEST_PAGE)
        await expect(page.locator("#status")).to_have_text("Completed", timeout=90_000)
        await expect(page.locator("#images-cached")).to_have_text("2")
        await expect(page.locator("#images-cached-how")).to_have_text("1 unchanged at the host, 1 same bytes as before")
        await expect(page.locator(".reuse .badge.reused")).to_have_count(2)
        poster = page.locator(".product").filter(has_text="Reused poster")
        rocket = page.locator(".product").filter(has_text="Reused rocket")
        await expect(poster.locator(".reuse")).to_have_text(re.compile(r"^reused unchanged at the host \(HTTP 304\)"))
        await expect(rocket.locator(".reuse")).to_have_text(re.compile(r"^reused same bytes as an image compressed"))
        await expect(poster.locator("figcaption").first).to_have_text(re.compile(r"^Original · PNG · \d"))
        compressed = re.compile(r"^Compressed · JPEG · .* \(−\d+ %\)$")
        await expect(rocket.locator("figcaption").nth(1)).to_have_text(compressed)
        await see_every_preview(page, "Compressed", 2)
        await page.screenshot(path=tmp_path / "reused.png", full_page=True)
        watched.assert_clean()


async def test_a_webhook_delivered_after_the_request_ended_shows_up_without_a_reload(
    stack: str, browser: Browser, image_host: ImageHost, webhook: WebhookReceiver, tmp_path: Path
):
    """The webhook is sent only once the request has ended, and retried for minutes if need be: the page must keep
    following it after Completed. The receiver holds the delivery open until the page has shown Completed with the
    webhook still pending, then answers."""
    webhook.hold = asyncio.Event()
    photo = image_host.add("late-hook.png", unique_photo("chelsea.png"), "image/png")
    async with watched_page(browser) as watched:
        page = watched.page
        await upload_through_the_page(page, API, csv_text([("W-1", "Late webhook", [photo])]), webhook.url("/hook"))
        await page.wait_for_url(REQUEST_PAGE)
        await expect(page.locator("#status")).to_have_text("Completed", timeout=90_000)
        summary = page.locator("#webhook-summary")
        await expect(summary).to_contain_text("pending (0 attempts")
        for _ in range(100):  # the delivery is in flight, held by the receiver
            if webhook.deliveries:
                break
            await asyncio.sleep(0.1)
        assert webhook.deliveries, "the notifier never called the webhook"
        navigations = len(watched.navigations)
        webhook.hold.set()
        await expect(summary).to_contain_text("delivered (1 attempt", timeout=15_000)
        await expect(page.locator("#webhook-rows tr")).to_have_count(1)
        assert len(watched.navigations) == navigations, "the page was reloaded or left"
        await page.screenshot(path=tmp_path / "late-webhook.png", full_page=True)
        watched.assert_clean()
