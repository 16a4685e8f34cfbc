"""Following a request until it ends: a live bar on a terminal, plain lines in a log.

On a terminal (stderr is a TTY) rich draws a bar that redraws itself in place: images settled of the total, the
rate over the last seconds, the time left, and how many failed. Anywhere else (CI logs, ``2>file``, a pipe) a
redrawn bar would write carriage returns and escape sequences into the log, one copy per redraw; there a line is
written when the status changes and at most every ``every`` seconds otherwise, and nothing else.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import Protocol

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeRemainingColumn
from rich.text import Text

from shared.api_models import StatusView
from shared.messages import RequestStatus

FINAL = (RequestStatus.COMPLETED, RequestStatus.FAILED)


class Watcher(Protocol):
    def update(self, status: StatusView) -> None: ...

    def close(self) -> None: ...


class RateColumn(ProgressColumn):
    """Images per second, as rich estimates it from recent updates."""

    def render(self, task: Task) -> Text:
        return Text("- images/s" if task.speed is None else f"{task.speed:.1f} images/s")


class LiveBar:
    """The bar on a terminal."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            TextColumn("{task.description:<10}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("images"),
            RateColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[failed]} failed"),
            console=console,
            transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task("Queued", total=None, failed=0)

    def update(self, status: StatusView) -> None:
        progress = status.progress
        self.progress.update(
            self.task,
            description=status.status.value,
            total=progress.images_total or None,
            completed=progress.images_settled,
            failed=progress.images_failed,
        )

    def close(self) -> None:
        self.progress.stop()  # idempotent


class PlainLines:
    """Lines for a log: one on every change of status, else one every ``every`` seconds at most."""

    def __init__(self, every: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self.clock = clock
        self.first: tuple[float, int] | None = None  # when we first saw the request, and how many were settled then
        self.last_line = float("-inf")
        self.last_status: RequestStatus | None = None

    def update(self, status: StatusView) -> None:
        now = self.clock()
        settled = status.progress.images_settled
        if self.first is None:
            self.first = (now, settled)
        changed = status.status != self.last_status
        if not changed and now - self.last_line < self.every:
            return
        self.last_line, self.last_status = now, status.status
        click.echo(self.line(status, now), err=True)

    def line(self, status: StatusView, now: float) -> str:
        progress = status.progress
        text = f"{status.status.value}: {progress.images_settled}/{progress.images_total} images"
        text += f" ({progress.images_done} done, {progress.images_failed} failed)"
        assert self.first is not None
        elapsed, gained = now - self.first[0], progress.images_settled - self.first[1]
        if status.status in FINAL or elapsed <= 0 or gained <= 0:
            return text
        rate = gained / elapsed
        remaining = timedelta(seconds=round((progress.images_total - progress.images_settled) / rate))
        return f"{text}, {rate:.1f} images/s, ETA {remaining}"

    def close(self) -> None:
        pass


def watcher_for(console: Console, every: float) -> Watcher:
    """The bar when a person watches (the console is a terminal), else plain lines at most every ``every`` s."""
    return LiveBar(console) if console.is_terminal else PlainLines(every)
