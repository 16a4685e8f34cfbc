"""A real browser for the console's tests: Debian's chromium (scripts/install.sh installs it), headless, driven by
Playwright for Python. Playwright's own browser download (`playwright install`) is never used.

:class:`Watched` wraps a page and records what a person would notice or a reviewer would worry about: dialogs
(an ``alert`` from injected markup), errors in the console (a Content-Security-Policy violation is one), uncaught
script errors, and every URL the page asked for (so a test can prove it talked to pixpress only).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from playwright.async_api import Browser, ConsoleMessage, Dialog, Page, Request, async_playwright

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            yield browser
        finally:
            await browser.close()


@dataclass
class Watched:
    page: Page
    dialogs: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    requested: list[str] = field(default_factory=list)
    navigations: list[str] = field(default_factory=list)
    pending: set[asyncio.Future[None]] = field(default_factory=set)  # dialog dismissals under way

    def origins(self) -> set[str]:
        """Where the page sent requests over the network (``blob:`` previews are in the page's own memory)."""
        parts = [urlsplit(url) for url in self.requested]
        return {f"{part.scheme}://{part.netloc}" for part in parts if part.scheme in ("http", "https")}

    def assert_clean(self) -> None:
        """Nothing was injected and nothing broke: no dialog, no console error, no uncaught exception."""
        assert self.dialogs == [], self.dialogs
        assert self.console_errors == [], self.console_errors
        assert self.page_errors == [], self.page_errors


@asynccontextmanager
async def watched_page(browser: Browser, viewport: dict[str, int] = DESKTOP) -> AsyncIterator[Watched]:
    context = await browser.new_context(viewport=viewport, accept_downloads=True)  # type: ignore[arg-type]
    page = await context.new_page()
    watched = Watched(page)

    def on_dialog(dialog: Dialog) -> None:
        watched.dialogs.append(f"{dialog.type}: {dialog.message}")
        dismissal = asyncio.ensure_future(dialog.dismiss())
        watched.pending.add(dismissal)
        dismissal.add_done_callback(watched.pending.discard)

    def on_console(message: ConsoleMessage) -> None:
        # a failed fetch the page handles itself (a preview whose original is gone) is logged by Chromium as
        # "Failed to load resource"; that is the network, not the page, so it is not counted
        if message.type == "error" and "Failed to load resource" not in message.text:
            watched.console_errors.append(message.text)

    def on_request(request: Request) -> None:
        watched.requested.append(request.url)

    page.on("dialog", on_dialog)
    page.on("console", on_console)
    page.on("pageerror", lambda error: watched.page_errors.append(str(error)))
    page.on("request", on_request)
    page.on("framenavigated", lambda frame: watched.navigations.append(frame.url) if frame == page.main_frame else None)
    try:
        yield watched
    finally:
        await context.close()
