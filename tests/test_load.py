"""Fifty concurrent scrapers while the snapshot keeps changing: no errors, complete bodies, no mixing."""

from __future__ import annotations

import gzip
import http.client
import threading
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.config.targets import Target
from exporter.graph.parser import DatasetQuality, EventQuality, MatchKey
from exporter.state.snapshot import DatasetState, Snapshot
from exporter.web.server import WebServer

CLIENTS, SECONDS = 50, 4.0
DATASETS = 60


def snapshot(generation: int) -> Snapshot:
    """Every quality value in the snapshot is its generation: a response mixing two would show two values."""
    marker = float(generation)
    events = tuple(
        EventQuality(f"Event {n}", composite_score=marker, match_keys=(MatchKey("email", marker * 100),))
        for n in range(5)
    )
    states = tuple(DatasetState(Target(str(1000 + d)), DatasetQuality(events), True, 1.0) for d in range(DATASETS))
    return Snapshot(generation=generation, created=0, datasets=states, graph_api_version="v25.0", ready=True)


class SwappingApp:
    def __init__(self):
        self.snapshot = snapshot(1)

    def reload(self):
        return True, ""


@pytest.mark.slow
def test_concurrent_scrapes_during_snapshot_swaps():
    app = SwappingApp()
    server = WebServer(app, "127.0.0.1", 0)
    server.start()
    stop = threading.Event()
    errors: list[str] = []
    generations: list[float] = []
    lock = threading.Lock()

    def swapper():
        generation = 1
        while not stop.is_set():
            generation += 1
            app.snapshot = snapshot(generation)
            time.sleep(0.005)

    def scraper(index: int):
        conn = http.client.HTTPConnection("127.0.0.1", server.address[1], timeout=30)
        compressed = index % 2 == 0
        while not stop.is_set():
            try:
                conn.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"} if compressed else {})
                response = conn.getresponse()
                body = response.read()
                if response.status != 200:
                    raise AssertionError(f"status {response.status}")
                text = (gzip.decompress(body) if compressed else body).decode()
                values = {
                    s.value
                    for f in text_string_to_metric_families(text)
                    if f.name
                    in (
                        "meta_dataset_quality_event_match_quality_score",
                        "meta_dataset_quality_match_key_coverage_ratio",
                    )
                    for s in f.samples
                }
                if len(values) != 1:
                    raise AssertionError(f"one response mixes snapshots: {sorted(values)[:5]}")
                with lock:
                    generations.append(values.pop())
            except Exception as exc:  # every failure is collected and reported below
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", server.address[1], timeout=30)
        conn.close()

    threads = [threading.Thread(target=swapper)] + [threading.Thread(target=scraper, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    time.sleep(SECONDS)  # bounded in time; loopback only
    stop.set()
    for thread in threads:
        thread.join(30)
    server.stop()
    assert not errors, errors[:5]
    assert len(generations) >= CLIENTS  # every client completed scrapes
    assert len(set(generations)) > 1  # and the snapshot really changed under them
