"""The collection loop's event loop: an asyncio loop that tells other threads when it is waiting for I/O.

The exposition of a mid-cycle snapshot is rendered on a thread of its own (exporter.collect.scheduler), and both
threads share one GIL. Left to itself, the render takes the GIL half of the time the loop wants it, and a
burst cycle's answers wait to be read while it runs. With this loop the render works only while the loop
waits in its selector, and gets out of the way at its next dataset or family once the loop has work again:
the renders fill the loop's idle time (bench/README.md, section 2).
"""

from __future__ import annotations

import asyncio
import selectors
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class _WatchedSelector(selectors.DefaultSelector):
    """The platform's default selector, with an event that is set while a `select` call waits."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = threading.Event()

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        self.waiting.set()
        try:
            return super().select(timeout)
        finally:
            self.waiting.clear()


class CollectionLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        selector = _WatchedSelector()
        super().__init__(selector)
        self.waiting: threading.Event = selector.waiting  # set while the loop has nothing to do but wait


def idle_signal() -> threading.Event | None:
    """The running loop's `waiting` event, or None when it is not a CollectionLoop (then nothing defers to it)."""
    loop = asyncio.get_running_loop()
    return loop.waiting if isinstance(loop, CollectionLoop) else None


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run` on a CollectionLoop."""
    with asyncio.Runner(loop_factory=CollectionLoop) as runner:
        return runner.run(main)
