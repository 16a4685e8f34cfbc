"""RFC 9457 problem details: every refusal says what went wrong in a body machines and people can read."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from shared.api_models import Problem, RequestIdProblem, json_body

PROBLEM_JSON = "application/problem+json"
_KEPT_HEADERS = ("Allow",)  # what a 405 must still say

log = structlog.get_logger()


def problem(status: int, slug: str, title: str, detail: str, **members: object) -> web.Response:
    """A refusal as ``application/problem+json``; ``members`` are the extension fields of
    :class:`~shared.api_models.Problem` (``errors``, ``row_numbering``, ``limit_bytes``)."""
    return problem_response(Problem.of(status, slug, title, detail, **members))


def problem_response(body: Problem) -> web.Response:
    return web.json_response(json_body(body), status=body.status, content_type=PROBLEM_JSON)


def request_id_error(error_class: type[web.HTTPError], slug: str, title: str, message: str) -> web.HTTPError:
    """A refusal about a request id, raised from a helper to abort its handler; carries the seed's ``error``."""
    body = RequestIdProblem.of(error_class.status_code, slug, title, message, error=message)
    return error_class(text=json.dumps(json_body(body)), content_type=PROBLEM_JSON)


def request_id_of(request: web.Request) -> str:
    """The ``{request_id}`` of the matched route in canonical form, or a 400 refusal."""
    raw = request.match_info["request_id"]
    try:
        return str(uuid.UUID(raw))  # not version=4: that would rewrite the version bits, not check them
    except ValueError:
        # problem+json like every other refusal; `error` is the seed's member, kept for its clients
        message = "malformed request id; expected a UUID"
        raise request_id_error(web.HTTPBadRequest, "malformed-request-id", "Malformed request id", message) from None


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refusals aiohttp makes itself (no route: 404, wrong method: 405, body over ``client_max_size``: 413) and
    unexpected errors (500) answer problem+json like every refusal of ours, not aiohttp's ``text/plain``.

    Errors of the HTTP parser itself (a malformed request line) are answered before any middleware runs and
    stay aiohttp's plain 400.
    """
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == PROBLEM_JSON:
            raise
        detail = _DETAILS.get(exc.status, exc.reason)
        if exc.status == 405 and "Allow" in exc.headers:
            detail = f"{request.method} is not allowed here; allowed: {exc.headers['Allow']}"
        response = problem(exc.status, _slug(exc.reason), exc.reason, detail)
        for name in _KEPT_HEADERS:
            if name in exc.headers:
                response.headers[name] = exc.headers[name]
        return response
    except Exception:
        log.exception("request_failed", path=request.path)
        return problem(500, "internal-error", "Internal Server Error", "the server failed; the error is logged")


_DETAILS = {
    404: "no such route; see /docs",
    413: "the request body is larger than this route accepts",
}


def _slug(reason: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", reason.lower()).strip("-")
