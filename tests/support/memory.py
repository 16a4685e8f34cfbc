"""Resident memory of the running compressors, sampled while something happens (psutil on their real pids)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import psutil

from tests.support import stack

MIB = 2**20


@dataclass
class RssSampler:
    """Samples every compressor's RSS every ``interval`` seconds between ``start`` and ``stop``."""

    interval: float = 0.05
    before: dict[str, int] = field(default_factory=dict)
    peak: dict[str, int] = field(default_factory=dict)
    after: dict[str, int] = field(default_factory=dict)
    _task: asyncio.Task | None = None

    @staticmethod
    def _now() -> dict[str, int]:
        sizes = {}
        for name, pid in stack.processes().items():
            if name.startswith("compressor"):
                with contextlib.suppress(psutil.Error):
                    sizes[f"{name}:{pid}"] = psutil.Process(pid).memory_info().rss
        return sizes

    async def start(self) -> None:
        self.before = await asyncio.to_thread(self._now)
        self.peak = dict(self.before)
        self._task = asyncio.create_task(self._sample())

    async def _sample(self) -> None:
        processes = {key: psutil.Process(int(key.rsplit(":", 1)[1])) for key in self.before}
        while True:
            for key, process in processes.items():
                with contextlib.suppress(psutil.Error):
                    self.peak[key] = max(self.peak.get(key, 0), process.memory_info().rss)
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.after = await asyncio.to_thread(self._now)

    def growth(self) -> dict[str, int]:
        """Peak minus start per compressor process that ran throughout (a restarted one has a new key)."""
        return {key: self.peak[key] - self.before[key] for key in self.before if key in self.peak}

    def report(self) -> str:
        lines = []
        for key in self.before:
            after = self.after.get(key)
            lines.append(
                f"{key}: before {self.before[key] / MIB:.0f} MiB, peak {self.peak.get(key, 0) / MIB:.0f} MiB, "
                f"after {'gone' if after is None else f'{after / MIB:.0f} MiB'}"
            )
        return "\n".join(lines)
