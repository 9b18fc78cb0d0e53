from __future__ import annotations

import json
import os
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

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
