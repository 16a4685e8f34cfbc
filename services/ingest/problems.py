"""RFC 9457 problem details: every refusal says what went wrong in a body machines and people can read."""

from __future__ import annotations

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
    body: dict[str, object] = {
        "type": PROBLEM_TYPE_BASE + slug,
        "title": title,
        "status": status,
        "detail": detail,
    }
    if errors is not None:
        body["errors"] = list(errors)
    body.update(extra)
    return web.json_response(body, status=status, content_type="application/problem+json")
