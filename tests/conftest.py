from __future__ import annotations

import json
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
