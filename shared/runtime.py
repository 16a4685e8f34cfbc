"""The life cycle every service shares: logging, a health endpoint, SIGTERM handling and orderly shutdown."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from shared.api_models import Health, json_body
from shared.metrics import metrics_routes

HealthCheck = Callable[[], Awaitable[dict[str, bool]]]

log = structlog.get_logger()


def health_routes(check: HealthCheck) -> list[web.RouteDef]:
    """``GET /healthz``: 200 when every dependency answers, 503 naming the ones that do not; and ``GET /metrics``."""

    async def healthz(_request: web.Request) -> web.Response:
        health = Health.of(await check())
        return web.json_response(json_body(health), status=200 if health.status == "ok" else 503)

    return [web.get("/healthz", healthz), *metrics_routes()]


async def start_health_server(check: HealthCheck, host: str, port: int) -> web.AppRunner | None:
    """Workers have no API, so they expose only the health and metrics routes; port 0 turns them off."""
    if port == 0:
        return None
    app = web.Application()
    app.add_routes(health_routes(check))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


def install_stop_signals() -> asyncio.Event:
    """SIGTERM and SIGINT set an event instead of killing the loop, so in-flight work can finish.

    SIGUSR1 logs where every task is waiting: the one view of a stuck async service that a profiler lacks.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, _dump_tasks)
    return stop


def _dump_tasks() -> None:
    for task in asyncio.all_tasks():
        frames: list[str] = []
        awaitable: Any = task.get_coro()  # a coroutine, then whatever each one awaits
        while awaitable is not None and len(frames) < 50:  # follow the await chain, not just the top frame
            frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "ag_frame", None)
            if frame is not None:
                frames.append(f"{frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
            awaitable = getattr(awaitable, "cr_await", None) or getattr(awaitable, "ag_await", None)
        log.warning("task_stack", task=task.get_name(), frames=frames)
