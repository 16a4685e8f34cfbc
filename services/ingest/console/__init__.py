"""The console: pages for people, served by ingest at ``/`` (docs/console.md).

The pages are shells: Jinja2 templates (autoescaped) that hold no data about any request, plus a little plain
JavaScript that reads the API with the user's key and builds the page with ``textContent`` and DOM nodes, never by
parsing markup. So the shells and their assets are open like ``/docs``; every datum comes from the API routes, which
need ``X-API-Key`` when the server has one (the script asks for it once per tab; docs/security.md says where it is
kept). Every asset is a file of this package: no CDN, no web fonts; the page works on a machine with no internet.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web

from services.ingest.problems import request_id_of
from services.ingest.routes import CONSOLE_HOME, CONSOLE_REQUEST, DOCS_PATH

ASSETS = "/console/assets/{name}"
_STATIC = Path(__file__).parent / "static"
_CONTENT_TYPES = {
    "console.css": "text/css",
    "common.js": "text/javascript",
    "home.js": "text/javascript",
    "request.js": "text/javascript",
    "icon.svg": "image/svg+xml",
}
# Scripts and styles from this server only (no inline script or style attribute anywhere); images from this server
# (the icon, thumbnails) or blob: URLs (thumbnails are fetched with the API key, then shown from memory); the page
# talks to this server only; nothing may frame it.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
    "form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
_PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # request ids in the URL stay here
    "Cache-Control": "no-cache",
}


def setup_templates(app: web.Application) -> None:
    aiohttp_jinja2.setup(
        app,
        loader=jinja2.PackageLoader("services.ingest.console", "templates"),
        autoescape=True,  # every {{ }} is HTML-escaped; nothing in the templates turns it off
        undefined=jinja2.StrictUndefined,
    )


def _page(request: web.Request, template: str, **context: object) -> web.Response:
    response = aiohttp_jinja2.render_template(template, request, {"docs_path": DOCS_PATH, **context})
    response.headers.update(_PAGE_HEADERS)
    return response


async def home(request: web.Request) -> web.Response:
    return _page(request, "home.html", page="home")


async def request_page(request: web.Request) -> web.Response:
    """The shell of one request's page: it names the id from its own URL and reads nothing (it is open, so it must
    not tell whether the request exists)."""
    return _page(request, "request.html", page="request", request_id=request_id_of(request))


async def asset(request: web.Request) -> web.FileResponse:
    name = request.match_info["name"]
    content_type = _CONTENT_TYPES.get(name)
    if content_type is None:
        raise web.HTTPNotFound()
    headers = {"Content-Type": content_type, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}
    return web.FileResponse(_STATIC / name, headers=headers)


def console_routes() -> list[web.RouteDef]:
    return [web.get(CONSOLE_HOME, home), web.get(CONSOLE_REQUEST, request_page), web.get(ASSETS, asset)]


OPEN_RESOURCES = frozenset({CONSOLE_HOME, CONSOLE_REQUEST, ASSETS})  # served without the API key
