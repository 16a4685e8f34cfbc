"""RFC 9457 problem details: every refusal says what went wrong in a body machines and people can read."""

from __future__ import annotations

import json
from collections.abc import Sequence

from aiohttp import web

PROBLEM_TYPE_BASE = "https://pixpress.dev/problems/"


def problem(
    status: int,
    slug: str,
    title: str,
    detail: str,
    errors: Sequence[dict[str, object]] | None = None,
    **extra: object,
) -> web.Response:
    return web.json_response(
        problem_body(status, slug, title, detail, errors, **extra),
        status=status,
        content_type="application/problem+json",
    )


def problem_error(
    error_class: type[web.HTTPError], slug: str, title: str, detail: str, **extra: object
) -> web.HTTPError:
    """The same body as an exception, for code that must abort a handler from a helper."""
    body = problem_body(error_class.status_code, slug, title, detail, **extra)
    return error_class(text=json.dumps(body), content_type="application/problem+json")


def problem_body(
    status: int,
    slug: str,
    title: str,
    detail: str,
    errors: Sequence[dict[str, object]] | None = None,
    **extra: object,
) -> dict[str, object]:
    body: dict[str, object] = {
        "type": PROBLEM_TYPE_BASE + slug,
        "title": title,
        "status": status,
        "detail": detail,
    }
    if errors is not None:
        body["errors"] = list(errors)
    body.update(extra)
    return body
