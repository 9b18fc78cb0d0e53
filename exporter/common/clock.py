"""Time as the collection stage reads it and waits on it.

The scheduler, the fetcher, the governor, the credentials and housekeeping read and wait through one `Clock`,
so that a test can move their time on (a one-minute back-off, a five-minute interval) without waiting for it.
HTTP timeouts are not the clock's: they stay on the event loop's own time."""

from __future__ import annotations

import asyncio
import time


class Clock:
    """The system's clocks."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM_CLOCK = Clock()
