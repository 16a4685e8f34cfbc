"""Where the native stack (scripts/stack.sh) runs and how to reach it.

Names and ports come from ``scripts/stack.env``, the file stack.sh itself sources (parsed by scripts/stackctl.py,
which stack.sh calls), so they are written once.
The services' configuration is what ``stack.sh up`` handed them (``<state>/service.env``), not what this
process happens to have in its environment.
"""

from __future__ import annotations

import base64
import os
from functools import cache
from pathlib import Path
from unittest import mock

import aiohttp

from scripts import stackctl
from shared.settings import Settings

REPO = Path(__file__).resolve().parents[1]
STATE = Path(os.environ.get("PIXPRESS_STATE_DIR", REPO / ".run"))


@cache
def layout() -> dict[str, str]:
    """scripts/stack.env: program names and ports."""
    return stackctl.layout()


def port(name: str) -> int:
    """A port from scripts/stack.env, e.g. ``port("RABBITMQ_MANAGEMENT")``."""
    return int(layout()[f"{name}_PORT"])


def servers() -> list[str]:
    return layout()["SERVERS"].split()


def services() -> list[str]:
    """The services other than the compressors (those are ``compressor-1`` ... ``compressor-N``)."""
    return layout()["SERVICES"].split()


def _credentials() -> tuple[str, str]:
    return layout()["RABBITMQ_USER"], layout()["RABBITMQ_PASSWORD"]


MANAGEMENT = f"http://127.0.0.1:{port('RABBITMQ_MANAGEMENT')}/api"
MANAGEMENT_HEADERS = {"Authorization": "Basic " + base64.b64encode(":".join(_credentials()).encode()).decode()}


def amqp_url(vhost: str, user: str | None = None, password: str | None = None) -> str:
    """The stack's RabbitMQ, in ``vhost``, as its default user unless told otherwise."""
    default_user, default_password = _credentials()
    return f"amqp://{user or default_user}:{password or default_password}@127.0.0.1:{port('RABBITMQ')}/{vhost}"


async def create_vhost(http: aiohttp.ClientSession, name: str) -> None:
    """A RabbitMQ virtual host where the default user may do everything (management API)."""
    async with http.put(f"{MANAGEMENT}/vhosts/{name}", headers=MANAGEMENT_HEADERS) as answer:
        answer.raise_for_status()
    permissions = {"configure": ".*", "write": ".*", "read": ".*"}
    user = _credentials()[0]
    async with http.put(
        f"{MANAGEMENT}/permissions/{name}/{user}", json=permissions, headers=MANAGEMENT_HEADERS
    ) as answer:
        answer.raise_for_status()


async def delete_vhost(http: aiohttp.ClientSession, name: str) -> None:
    """Delete a virtual host with all its queues; one that is already gone is fine."""
    async with http.delete(f"{MANAGEMENT}/vhosts/{name}", headers=MANAGEMENT_HEADERS) as answer:
        if answer.status != 404:
            answer.raise_for_status()


def service_env() -> dict[str, str]:
    """The PIXPRESS_* environment the running services got (``scripts/stack.sh up`` writes it to
    ``<state>/service.env``), overlaid on this process's own PIXPRESS_* where the file has none."""
    values = {k: v for k, v in os.environ.items() if k.startswith("PIXPRESS_")}
    env_file = STATE / "service.env"
    if env_file.is_file():
        values.update(stackctl.read_assignments(env_file.read_text()))
    return values


def service_settings() -> Settings:
    """The services' validated ``Settings``: their environment parsed exactly as they parse it (JSON lists,
    booleans, durations), with the defaults for whatever they were not given."""
    others = {k: v for k, v in os.environ.items() if not k.startswith("PIXPRESS_")}
    with mock.patch.dict(os.environ, {**others, **service_env()}, clear=True):
        return Settings()
