"""SIGUSR1 on a running service logs where every one of its asyncio tasks waits, and the service runs on.

This is the operator's view into a service that is alive but stuck (shared/runtime.py): a profiler shows
threads, not the await chains of tasks. Sent to the real processes of the running stack.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal

import pytest

from testkit.stack import STATE
from tests.support import stack

LOGS = STATE / "logs"


def new_log_records(path: os.PathLike[str], offset: int) -> list[dict]:
    with open(path, "rb") as log:
        log.seek(offset)
        lines = log.read().decode(errors="replace").splitlines()
    records = []
    for line in lines:
        if line.startswith("{"):
            records.append(json.loads(line))
    return records


@pytest.mark.parametrize(
    ("service", "waiting_in"),
    [
        ("ingest", "services/ingest/main.py"),
        ("aggregator", "services/aggregator/sweeper.py"),
        ("notifier", "services/notifier/main.py"),
        ("compressor-1", "services/compressor/main.py"),
    ],
)
async def test_sigusr1_logs_every_task_stack_and_the_service_keeps_running(
    stack_api: str, service: str, waiting_in: str
) -> None:
    pid = stack.processes()[service]
    log_path = LOGS / f"{service}.log"
    offset = log_path.stat().st_size

    os.kill(pid, signal.SIGUSR1)

    stacks: list[dict] = []
    for _ in range(50):
        await asyncio.sleep(0.1)
        stacks = [r for r in new_log_records(log_path, offset) if r.get("event") == "task_stack"]
        if any(waiting_in in frame for r in stacks for frame in r["frames"]):
            break
    assert stacks, f"no task_stack record in {log_path} after SIGUSR1"
    frames = [frame for record in stacks for frame in record["frames"]]
    # the await chain is followed down from each task's coroutine: the service's own code appears with its
    # file, line and function, not just asyncio's internals
    assert any(waiting_in in frame for frame in frames), frames
    assert all(record["level"] == "warning" and record["task"] for record in stacks)
    # the signal did not stop or restart it
    await asyncio.sleep(0.5)
    assert stack.processes().get(service) == pid
