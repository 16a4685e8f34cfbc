"""The ``pixpress`` command against the running stack, as a subprocess with its output piped (not a terminal), the
way a script or a CI job runs it: exit codes 0, 1 and 2, what it prints compared with what the API answers, the
progress lines a log gets, a refused upload's table, the output CSV it downloads, a failed image's reason, the
request list, and the API key.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import aiohttp
import pytest
from pydantic import SecretStr

from shared.settings import Settings
from tests.support.apps import serve_api
from tests.support.cli import pixpress
from tests.support.client import API, csv_text, upload, wait_final
from tests.support.photos import encode, photo, unique_jpeg, unique_png
from tests.support.servers import ImageHost

CONTROL = re.compile(rb"[\x00-\x08\x0b-\x1f\x7f]")  # anything but \t and \n: \r, escape sequences, bells


async def api_json(http: aiohttp.ClientSession, url: str) -> dict:
    async with http.get(url) as answer:
        assert answer.status == 200, await answer.text()
        return await answer.json()


@pytest.fixture
def photos_csv(tmp_path: Path, image_host: ImageHost) -> Path:
    """Two products, three real photographs and one image the host does not have (404)."""
    jpeg = image_host.add("coffee.jpg", encode(photo("coffee.png"), "JPEG", quality=90))
    png = image_host.add("chelsea.png", encode(photo("chelsea.png"), "PNG"))
    webp = image_host.add("astronaut.webp", encode(photo("astronaut.png"), "WEBP", quality=90))
    missing = image_host.url("/img/missing.jpg")
    path = tmp_path / "products.csv"
    path.write_text(csv_text([("P1", "Mug", [jpeg, missing]), ("P2", "Poster", [png, webp])]))
    return path


async def test_upload_wait_exits_0_prints_only_the_id_and_logs_plain_progress(
    stack: str, http: aiohttp.ClientSession, photos_csv: Path
):
    ran = await pixpress("upload", str(photos_csv), "--wait", "--every", "0", api=API)
    assert ran.code == 0, ran.err
    request_id = ran.out.strip()
    assert str(uuid.UUID(request_id)) == request_id and ran.out == request_id + "\n"  # stdout: the id, alone
    assert not CONTROL.search(ran.stderr), ran.stderr  # no \r, no escape sequences in a log
    lines = ran.err.splitlines()
    assert re.fullmatch(r"(Queued|Processing): \d+/4 images \(\d+ done, \d+ failed\).*", lines[0]), lines
    assert "Completed: 4/4 images (3 done, 1 failed)" in lines
    status = await api_json(http, f"{API}/status/{request_id}")
    assert status["status"] == "Completed"
    assert f"output CSV: {status['output_csv_url']}" in lines


async def test_upload_wait_exits_1_when_the_request_failed(stack: str, image_host: ImageHost, tmp_path: Path):
    path = tmp_path / "gone.csv"
    path.write_text(csv_text([("G1", "Gone", [image_host.url("/img/nothing-here.jpg")])]))
    ran = await pixpress("upload", str(path), "--wait", api=API)
    assert ran.code == 1, ran.err
    assert "Failed: 0 of 1 images done, 1 failed" in ran.err
    status = await pixpress("status", ran.out.strip(), api=API)
    assert status.code == 1 and "Failed" in status.out


async def test_a_refused_upload_prints_the_apis_problems_as_a_table_and_exits_2(
    stack: str, http: aiohttp.ClientSession, tmp_path: Path
):
    broken = "Serial Number,Product Name,Input Image Urls\r\n,No serial,https://img.example/a.jpg\r\nS2,,ftp://x/y\r\n"
    path = tmp_path / "broken.csv"
    path.write_text(broken)
    ran = await pixpress("upload", str(path), api=API)
    assert ran.code == 2 and ran.stdout == b""
    problem = await (await upload(http, broken)).json(content_type=None)
    assert len(problem["errors"]) >= 3
    assert problem["title"] in ran.err and problem["detail"] in ran.err
    table_rows = [line for line in ran.err.splitlines() if line.startswith("│")]
    cells = [[cell.strip() for cell in row.strip("│").split("│")] for row in table_rows]
    assert [(int(row), column, message) for row, column, message in cells] == [
        (error["row"], error["column"] or "-", error["message"]) for error in problem["errors"]
    ]


async def test_status_json_is_the_status_the_api_answers(stack: str, http: aiohttp.ClientSession, photos_csv: Path):
    request_id = (await pixpress("upload", str(photos_csv), api=API)).out.strip()
    await wait_final(http, request_id)
    ran = await pixpress("status", request_id, "--json", api=API)
    assert ran.code == 0, ran.err
    assert json.loads(ran.stdout) == await api_json(http, f"{API}/status/{request_id}")
    shown = await pixpress("status", request_id, api=API)
    assert shown.code == 0 and "Completed" in shown.out and "3 / 1" in shown.out


async def test_download_writes_the_bytes_of_the_output_csv(
    stack: str, http: aiohttp.ClientSession, photos_csv: Path, tmp_path: Path
):
    request_id = (await pixpress("upload", str(photos_csv), "--wait", api=API)).out.strip()
    status = await api_json(http, f"{API}/status/{request_id}")
    async with http.get(status["output_csv_url"]) as answer:
        expected = await answer.read()
    target = tmp_path / "out.csv"
    ran = await pixpress("download", request_id, "-o", str(target), api=API)
    assert ran.code == 0, ran.err
    assert target.read_bytes() == expected and expected.startswith(b"Serial Number,")
    to_stdout = await pixpress("download", request_id, "-o", "-", api=API)
    assert to_stdout.code == 0 and to_stdout.stdout == expected


async def test_download_before_the_output_exists_exits_2(stack: str, image_host: ImageHost, tmp_path: Path):
    path = tmp_path / "slow.csv"
    path.write_text(csv_text([("H1", "Hanging", [image_host.url("/hang")])]))
    request_id = (await pixpress("upload", str(path), api=API)).out.strip()
    ran = await pixpress("download", request_id, "-o", str(tmp_path / "never.csv"), api=API)
    assert ran.code == 2, ran.err
    assert "not ready" in ran.err.lower() and not (tmp_path / "never.csv").exists()


async def test_failures_lists_a_missing_images_reason(stack: str, image_host: ImageHost, photos_csv: Path):
    request_id = (await pixpress("upload", str(photos_csv), "--wait", api=API)).out.strip()
    ran = await pixpress("failures", request_id, "--json", api=API)
    assert ran.code == 0, ran.err
    failed = json.loads(ran.stdout)
    assert [(item["row"], item["serial_number"], item["url"]) for item in failed] == [
        (1, "P1", image_host.url("/img/missing.jpg"))
    ]
    assert "404" in failed[0]["error"]
    table = await pixpress("failures", request_id, api=API)
    assert table.code == 0 and "missing.jpg" in table.out and failed[0]["error"] in table.out


async def test_ls_shows_the_newest_requests_as_the_api_lists_them(
    stack: str, http: aiohttp.ClientSession, photos_csv: Path
):
    newest = (await pixpress("upload", str(photos_csv), "--wait", api=API)).out.strip()
    ran = await pixpress("ls", "--limit", "3", "--json", api=API)
    assert ran.code == 0, ran.err
    listed = json.loads(ran.stdout)
    assert listed == (await api_json(http, f"{API}/requests?limit=3"))["items"]
    assert listed[0]["request_id"] == newest
    table = await pixpress("ls", "--limit", "3", api=API)
    assert table.code == 0 and newest in table.out and "Completed" in table.out


async def test_ls_pages_past_one_page_of_the_api(stack: str, http: aiohttp.ClientSession, image_host: ImageHost):
    missing = image_host.url("/img/absent.jpg")
    total = 0
    path: str | None = "/requests?limit=100"
    while path and total <= 100:
        page = await api_json(http, f"{API}{path}")
        total += len(page["items"])
        path = page.get("next")
    for n in range(max(0, 101 - total)):  # more than one page of 100 exists
        await upload(http, csv_text([(f"L{n}", "Listed", [missing])]))
    ran = await pixpress("ls", "--limit", "101", "--json", api=API)
    assert ran.code == 0, ran.err
    listed = [item["request_id"] for item in json.loads(ran.stdout)]
    assert len(listed) == 101 == len(set(listed))


async def test_an_unknown_id_exits_2(stack: str):
    ran = await pixpress("status", str(uuid.uuid4()), api=API)
    assert ran.code == 2 and "not found" in ran.err
    malformed = await pixpress("status", "not-an-id", api=API)
    assert malformed.code == 2


async def test_the_api_key_comes_from_the_option_or_the_environment(stack: str):
    async with serve_api(Settings(api_key=SecretStr("cli-key"))) as client:
        api = str(client.make_url("/"))
        refused = await pixpress("ls", "--limit", "1", api=api)
        assert refused.code == 2 and "Unauthorized" in refused.err
        by_option = await pixpress("--api-key", "cli-key", "ls", "--limit", "1", "--json", api=api)
        assert by_option.code == 0 and len(json.loads(by_option.stdout)) == 1
        by_environment = await pixpress("ls", "--limit", "1", "--json", api=api, env={"PIXPRESS_API_KEY": "cli-key"})
        assert by_environment.code == 0 and json.loads(by_environment.stdout) == json.loads(by_option.stdout)


async def test_status_says_how_many_images_of_a_catalog_uploaded_again_were_reused(
    stack: str, image_host: ImageHost, tmp_path: Path
):
    """The output cache (docs/cache.md) in `pixpress status` and the `--wait` summary: the second upload of a catalog
    reuses both outputs, one because the host answered 304, one because the bytes were the same."""
    tagged = image_host.add("cli-tagged.png", unique_png("chelsea.png"), "image/png", validators="etag")
    untagged = image_host.add("cli-untagged.jpg", unique_jpeg("coffee.png"))
    path = tmp_path / "again.csv"
    path.write_text(csv_text([("C1", "Cat", [tagged]), ("C2", "Coffee", [untagged])]))
    first = await pixpress("upload", str(path), "--wait", api=API)
    assert first.code == 0, first.err
    assert "reused" not in first.err
    again = await pixpress("upload", str(path), "--wait", api=API)
    assert again.code == 0, again.err
    assert "2 of 2 images done, 0 failed" in again.err and "2 reused" in again.err
    status = await pixpress("status", again.out.strip(), api=API)
    assert status.code == 0
    assert re.search(r"reused\s+2 \(1 unchanged at the host, 1 same bytes\)", status.out), status.out
