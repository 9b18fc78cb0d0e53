"""The collection loop's event loop: it tells other threads when it waits for I/O."""

from __future__ import annotations

import asyncio
import threading

from exporter.collect import eventloop as collection_loop


def test_the_waiting_event_is_set_only_while_the_loop_waits_in_its_selector():
    seen: dict[str, bool] = {}

    async def main() -> str:
        waiting = collection_loop.idle_signal()
        assert waiting is not None
        seen["while running a task"] = waiting.is_set()
        observed = threading.Event()

        def watch() -> None:  # another thread, while the loop sleeps
            seen["while sleeping"] = waiting.wait(5)
            observed.set()

        watcher = threading.Thread(target=watch)
        watcher.start()
        while not observed.is_set():
            await asyncio.sleep(0.01)
        watcher.join()
        seen["after waking"] = waiting.is_set()
        return "done"

    assert collection_loop.run(main()) == "done"
    assert seen == {"while running a task": False, "while sleeping": True, "after waking": False}


def test_any_other_loop_has_no_waiting_signal():
    async def main() -> object:
        return collection_loop.idle_signal()

    assert asyncio.run(main()) is None
