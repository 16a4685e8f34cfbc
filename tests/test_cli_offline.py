"""The ``pixpress`` command without the stack: exit codes for an API that is absent, failing or not pixpress,
bad arguments, answers from a newer server, text from a CSV that tries to drive the terminal, the plain progress
lines, and that the command line is a client only (it imports nothing from services/).

The APIs here are small local aiohttp servers the tests start, answering what the test needs.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from pixpress_cli.progress import PlainLines
from shared.api_models import StatusView
from tests.support.cli import PIXPRESS, pixpress
from tests.support.servers import LocalServer

pytestmark = pytest.mark.pure

REQUEST = str(uuid.uuid4())
STATUS: dict[str, Any] = {
    "request_id": REQUEST,
    "status": "Processing",
    "created_at": "2026-12-03T10:00:00Z",
    "updated_at": "2026-12-03T10:00:05Z",
    "progress": {
        "products_total": 2,
        "images_total": 4,
        "images_done": 1,
        "images_failed": 1,
        "images_settled": 2,
        "percent": 50.0,
        "bytes_in": 1000,
        "bytes_out": 300,
        "savings_percent": 70.0,
        "images_cached": 0,
        "images_revalidated": 0,
    },
}


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class FakeApi(LocalServer):
    """Answers every GET with what ``answer`` returns for the request."""

    def __init__(self, answer: Callable[[web.Request], web.Response]) -> None:
        super().__init__()

        async def handle(request: web.Request) -> web.Response:
            return answer(request)

        self.app.router.add_route("*", "/{tail:.*}", handle)


@pytest.fixture
async def fake_api() -> AsyncIterator[Callable[[Callable[[web.Request], web.Response]], Any]]:
    servers: list[FakeApi] = []

    async def start(answer: Callable[[web.Request], web.Response]) -> str:
        server = FakeApi(answer)
        await server.start()
        servers.append(server)
        return server.url("")

    yield start
    for server in servers:
        await server.stop()


async def test_an_api_nobody_listens_on_exits_3():
    ran = await pixpress("status", REQUEST, api=f"http://127.0.0.1:{unused_port()}")
    assert ran.code == 3, ran
    assert "Connection refused" in ran.err and ran.stdout == b""


@pytest.mark.parametrize("code", [500, 503])
async def test_an_api_that_fails_exits_3(fake_api, code: int):
    api = await fake_api(lambda _request: web.json_response({"title": "Broken", "detail": "down"}, status=code))
    ran = await pixpress("status", REQUEST, api=api)
    assert ran.code == 3, ran
    assert str(code) in ran.err


async def test_an_answer_that_is_not_pixpress_exits_3(fake_api):
    api = await fake_api(lambda _request: web.Response(text="<html>a login page</html>", content_type="text/html"))
    ran = await pixpress("status", REQUEST, api=api)
    assert ran.code == 3, ran
    assert "not pixpress" in ran.err


@pytest.mark.parametrize(
    "args",
    [
        ["status"],  # no id
        ["ls", "--limit", "0"],
        ["upload", "/nonexistent/file.csv"],
        ["frobnicate"],
    ],
)
async def test_bad_arguments_exit_2(args: list[str]):
    ran = await pixpress(*args, api=f"http://127.0.0.1:{unused_port()}")
    assert ran.code == 2, ran


def test_help_names_the_exit_codes():
    text = subprocess.run([PIXPRESS, "--help"], capture_output=True, text=True, check=True).stdout
    codes = ("0  the request Completed", "1  the request Failed", "2  refused or unusable input", "3  cannot reach")
    for line in codes:
        assert line in text, text


async def test_fields_a_newer_server_adds_are_ignored_and_json_shows_the_body_as_sent(fake_api):
    newer = {**STATUS, "priority": "high", "progress": {**STATUS["progress"], "images_skipped": 0}}
    api = await fake_api(lambda _request: web.json_response(newer))
    shown = await pixpress("status", REQUEST, api=api)
    assert shown.code == 0, shown
    assert "Processing" in shown.out and "2 of 4 settled" in shown.out
    as_json = await pixpress("status", REQUEST, "--json", api=api)
    assert as_json.code == 0 and json.loads(as_json.stdout) == newer


async def test_text_from_a_csv_cannot_drive_the_terminal(fake_api):
    """A product's serial number and an image's error carry escape sequences and a bidirectional override: they
    are shown as visible escapes, and nothing that a terminal would act on reaches the output."""
    hostile = "SKU[bold red]\x1b]0;owned\x07\x1b[2J\u202egnp.exe"
    page = {
        "request_id": REQUEST,
        "offset": 0,
        "limit": 500,
        "total": 1,
        "items": [
            {
                "row": 1,
                "serial_number": hostile,
                "product_name": "Product",
                "extra": {},
                "input_image_urls": ["http://img.example/a.jpg"],
                "output_image_urls": [None],
                "image_errors": [f"download failed: {hostile}"],
                "image_cache": [None],
                "pending": 0,
                "images": [
                    {
                        "index": 0,
                        "input_url": "http://img.example/a.jpg",
                        "state": "failed",
                        "output_url": None,
                        "error": f"download failed: {hostile}",
                        "format_in": None,
                        "format_out": None,
                        "bytes_in": None,
                        "bytes_out": None,
                        "cache": None,
                        "thumbnails": {"original": f"/requests/{REQUEST}/images/1/0/thumb?v=original"},
                    }
                ],
            }
        ],
        "failed": False,
    }
    failed = {**STATUS, "status": "Failed"}
    api = await fake_api(lambda request: web.json_response(page if request.path.endswith("/products") else failed))
    table = await pixpress("failures", REQUEST, api=api)
    as_json = await pixpress("failures", REQUEST, "--json", api=api)
    for ran in (table, as_json):
        assert ran.code == 0, ran
        for output in (ran.stdout, ran.stderr):
            assert b"\x1b" not in output and b"\x07" not in output and "\u202e".encode() not in output
    assert "\\x1b]0;owned\\x07\\x1b[2J\\u202egnp.exe" in table.out and "[bold red]" in table.out
    assert json.loads(as_json.stdout)[0]["serial_number"] == hostile  # escaped by JSON, and nothing lost


def test_plain_progress_lines_say_rate_and_eta_and_come_on_change_or_every_interval(capsys):
    now = [0.0]
    lines = PlainLines(every=10, clock=lambda: now[0])

    def status(state: str, settled: int) -> StatusView:
        body = {**STATUS, "status": state, "progress": {**STATUS["progress"], "images_total": 100}}
        body["progress"].update(images_settled=settled, images_done=settled, images_failed=0)
        return StatusView.model_validate(body)

    lines.update(status("Queued", 0))
    now[0] = 1
    lines.update(status("Processing", 0))
    now[0] = 5
    lines.update(status("Processing", 20))  # within 10 s of the last line: nothing
    now[0] = 11
    lines.update(status("Processing", 40))
    now[0] = 12
    lines.update(status("Completed", 100))
    printed = capsys.readouterr().err.splitlines()
    assert printed == [
        "Queued: 0/100 images (0 done, 0 failed)",
        "Processing: 0/100 images (0 done, 0 failed)",
        "Processing: 40/100 images (40 done, 0 failed), 3.6 images/s, ETA 0:00:16",
        "Completed: 100/100 images (100 done, 0 failed)",
    ]


def test_the_command_line_imports_nothing_from_the_services():
    probe = (
        "import sys, pixpress_cli.commands, pixpress_cli.entry;"
        "print(sorted(m for m in sys.modules if m == 'services' or m.startswith('services.')))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_without_the_cli_extra_the_command_says_what_to_install():
    """The service image installs no extras: there the command explains instead of printing a traceback."""
    probe = "import sys; sys.modules['click'] = None; from pixpress_cli.entry import main; main()"
    ran = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False)
    assert ran.returncode == 2
    assert "pip install 'pixpress[cli]'" in ran.stderr and "Traceback" not in ran.stderr
