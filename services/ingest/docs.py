"""``GET /docs``: Swagger UI, served from the swagger-ui-bundle-v2 package (no CDN: it works offline).

The page is a shell. It carries nothing about this server's API (Swagger UI's own assets and a loader), so it is
open like ``/healthz``; the document it shows comes from ``/openapi.json``, which needs the API key when the
server has one. A browser cannot add ``X-API-Key`` to a navigation, so the loader asks for the key when
``/openapi.json`` answers 401, keeps it in memory only (gone when the tab closes), sends it to read the document,
and hands it to Swagger UI for "Try it out". docs/security.md says the same.

Why Swagger UI from that package: pydantic generates JSON Schema 2020-12, so the document is OpenAPI 3.1, which
Swagger UI renders from version 5 on; swagger-ui-bundle (connexion's) still ships 4.15, the -v2 fork ships the
current release with the same layout. Only the two files the page loads are served.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web
from swagger_ui_bundle import swagger_ui_path

from services.ingest.routes import DOCS_PATH, OPENAPI_PATH

ASSETS = "/docs/assets/{name}"
LOADER = "/docs/pixpress-docs.js"
_SWAGGER_UI = Path(swagger_ui_path)
_SERVED_ASSETS = frozenset({"swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png"})
# scripts only from here; Swagger UI sets inline styles and draws icons from data: URLs; it talks to this server only
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)

_PAGE = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>pixpress API</title>
<link rel="icon" type="image/png" href="/docs/assets/favicon-32x32.png">
<link rel="stylesheet" href="/docs/assets/swagger-ui.css">
</head>
<body>
<form id="key-form" hidden style="max-width:460px;margin:40px auto;font-family:sans-serif">
<p id="key-message">This server needs an API key to show its documentation.</p>
<label>X-API-Key <input id="key" type="password" autocomplete="off" required></label>
<button type="submit">Show the documentation</button>
</form>
<div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script src="{LOADER}"></script>
</body>
</html>
"""

_LOADER_JS = f"""// Loads {OPENAPI_PATH} into Swagger UI, with the API key the user types when the server asks for one.
(function () {{
  "use strict";
  const form = document.getElementById("key-form");
  const input = document.getElementById("key");
  const message = document.getElementById("key-message");
  let apiKey = null;

  function ask(text) {{
    message.textContent = text;
    form.hidden = false;
    input.focus();
  }}

  async function load() {{
    let response;
    try {{
      response = await fetch("{OPENAPI_PATH}", {{headers: apiKey ? {{"X-API-Key": apiKey}} : {{}}}});
    }} catch (error) {{
      ask("The server did not answer: " + error);
      return;
    }}
    if (response.status === 401) {{
      ask(apiKey ? "That key was refused; try again." : "This server needs an API key to show its documentation.");
      return;
    }}
    if (!response.ok) {{
      ask("{OPENAPI_PATH} answered HTTP " + response.status + ".");
      return;
    }}
    form.hidden = true;
    const ui = SwaggerUIBundle({{
      spec: await response.json(),
      dom_id: "#swagger-ui",
      deepLinking: true,
      validatorUrl: null,
    }});
    if (apiKey) {{
      ui.preauthorizeApiKey("ApiKey", apiKey);
    }}
  }}

  form.addEventListener("submit", (event) => {{
    event.preventDefault();
    apiKey = input.value;
    input.value = "";
    load();
  }});
  load();
}})();
"""


async def _page(_request: web.Request) -> web.Response:
    response = web.Response(text=_PAGE, content_type="text/html")
    response.headers["Content-Security-Policy"] = _CSP
    return response


async def _loader(_request: web.Request) -> web.Response:
    return web.Response(text=_LOADER_JS, content_type="text/javascript")


async def _asset(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name not in _SERVED_ASSETS:
        raise web.HTTPNotFound()
    return web.FileResponse(_SWAGGER_UI / name)


def docs_routes() -> list[web.RouteDef]:
    return [web.get(DOCS_PATH, _page), web.get(LOADER, _loader), web.get(ASSETS, _asset)]


OPEN_RESOURCES = frozenset({DOCS_PATH, LOADER, ASSETS})  # served without the API key
