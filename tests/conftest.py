from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.common.clock import Clock
from exporter.exposition.publisher import render
from exporter.simulator import Simulator, SimulatorSettings

FIXTURES = Path(__file__).parent / "fixtures"
TOKEN = "sim-token"


@pytest.fixture
def start_simulator() -> Iterator[Callable[..., Simulator]]:
    """Start simulators on free loopback ports; all are stopped after the test."""
    started: list[Simulator] = []

    def start(**settings: Any) -> Simulator:
        sim = Simulator(SimulatorSettings(**settings))
        sim.start("127.0.0.1", 0)
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.stop()


@pytest.fixture
def simulator(start_simulator: Callable[..., Simulator]) -> Simulator:
    return start_simulator(datasets=40, seed=7)


def http(
    method: str, url: str, *, data: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """A plain urllib request that returns (status, headers, body) for error statuses too."""
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def graph_get(sim: Simulator, path: str, token: str | None = TOKEN, **params: str) -> tuple[int, dict[str, str], Any]:
    query = urllib.parse.urlencode(params)
    headers = {"Authorization": f"OAuth {token}"} if token else {}
    status, head, body = http("GET", f"{sim.url}/{path}?{query}", headers=headers)
    return status, head, json.loads(body)


def load_fixture(name: str) -> Any:
    return json.loads((FIXTURES / "api" / name).read_text("utf-8"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition: Callable[[], object], timeout: float = 30, what: str = "condition") -> object:
    """Poll `condition` from a test's own thread until it is truthy; its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def until(condition: Callable[[], object], timeout: float = 30, what: str = "condition") -> None:
    """`wait_for` inside the event loop a scheduler runs on."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def run_cycle(scheduler: Any, targets: Any = None, *, paced: bool = False, prepare: bool = False) -> Any:
    """One collection cycle of `scheduler` (after discovery and metadata if `prepare`); its snapshot."""

    async def go() -> None:
        try:
            if prepare:
                await scheduler.prepare()
            await scheduler.run_cycle(targets or scheduler.targets, paced=paced)
        finally:
            await scheduler.close()

    asyncio.run(go())
    return scheduler.snapshot


class SteppedClock(Clock):
    """The system's time plus however far a test moved it on: a one-minute back-off or a five-minute interval
    passes in one `advance`, and whatever slept through that moment wakes. HTTP timeouts keep real time."""

    def __init__(self) -> None:
        self.offset = 0.0
        self._moved: asyncio.Event | None = None

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    def time(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        """Call on the event loop the sleepers run on."""
        self.offset += seconds
        if self._moved is not None:
            self._moved.set()
            self._moved = None

    async def sleep(self, seconds: float) -> None:
        wake = self.monotonic() + seconds
        while (left := wake - self.monotonic()) > 0:
            if self._moved is None:
                self._moved = asyncio.Event()
            moved = self._moved
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(moved.wait(), left)


# ----- nothing a test starts outlives it ------------------------------------------------------------------------
LEAK_GRACE = 10.0  # seconds a finished test's threads, processes and sockets get to wind down


def _child_processes() -> set[int]:
    me = str(os.getpid())
    children = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[1] == me and fields[0] != "Z":
                children.add(int(entry.name))
    return children


def _listening_ports() -> set[int]:
    """TCP ports this process listens on (sockets in LISTEN state whose inode is one of our descriptors)."""
    inodes = set()
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if parts[3] == "0A" and parts[9] in inodes:  # 0A: LISTEN
                ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return ports


def _threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t is not threading.main_thread()}


@pytest.fixture(autouse=True)
def nothing_left_behind() -> Iterator[None]:
    """Fail a test that leaves a thread, a child process or a listening port behind (after a grace period)."""
    threads, children, ports = _threads(), _child_processes(), _listening_ports()
    yield
    deadline = time.monotonic() + LEAK_GRACE
    while True:
        left = (
            sorted(t.name for t in _threads() - threads if t.is_alive()),
            sorted(_child_processes() - children),
            sorted(_listening_ports() - ports),
        )
        if not any(left) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not any(left), f"left behind: threads {left[0]}, child processes {left[1]}, listening ports {left[2]}"


class SnapshotCollector:
    """A snapshot's families for a prometheus_client registry (`get_sample_value`), read back from the
    exposition by prometheus_client's own parser."""

    def __init__(self, source: Callable[[], Any]) -> None:
        self.source = source

    def collect(self) -> Iterator[Any]:
        yield from text_string_to_metric_families(render(self.source()).decode())
