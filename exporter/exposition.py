"""Renders a snapshot to the text or OpenMetrics exposition, once per snapshot and format, gzip included.

Scrapes then cost a dictionary lookup: the bytes are built when the first scrape of a new snapshot asks.
"""

from __future__ import annotations

import gzip
import threading

from prometheus_client import CollectorRegistry
from prometheus_client import exposition as text_format
from prometheus_client.openmetrics import exposition as openmetrics_format

from exporter.metrics import SnapshotCollector
from exporter.snapshot import Snapshot

# The classic text format: every Prometheus version reads it, and our names need none of 1.0.0's escaping.
TEXT = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS = openmetrics_format.CONTENT_TYPE_LATEST


def render(snapshot: Snapshot, openmetrics: bool = False) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(lambda: snapshot))
    return (openmetrics_format if openmetrics else text_format).generate_latest(registry)


def wants_openmetrics(accept: str) -> bool:
    return "application/openmetrics-text" in accept


class ExpositionCache:
    """Keeps the rendered bytes of the latest snapshot only."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._generation = -1
        self._entries: dict[tuple[bool, bool], bytes] = {}

    def get(self, snapshot: Snapshot, *, openmetrics: bool, compressed: bool) -> bytes:
        key = (openmetrics, compressed)
        with self._lock:
            if snapshot.generation != self._generation:
                self._generation, self._entries = snapshot.generation, {}
            if key not in self._entries:
                plain = self._entries.get((openmetrics, False))
                if plain is None:
                    plain = self._entries[(openmetrics, False)] = render(snapshot, openmetrics)
                if compressed:
                    self._entries[key] = gzip.compress(plain, compresslevel=6, mtime=0)
            return self._entries[key]
