"""The exposition of a snapshot, rendered once per snapshot and format and kept as bytes, gzip included.

A scrape then costs a copy of bytes. The text is kept as one buffer per metric family, so a large fleet's
exposition is never copied whole; OpenMetrics is the same text with `# EOF` at the end.
"""

from __future__ import annotations

import threading
import zlib
from dataclasses import dataclass

from exporter.metrics import families
from exporter.snapshot import Snapshot

# The classic text format: every Prometheus version reads it, and our names need none of 1.0.0's escaping.
TEXT = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


@dataclass(frozen=True)
class Rendered:
    chunks: tuple[bytes | bytearray, ...]
    length: int

    def bytes(self) -> bytes:
        return b"".join(self.chunks)


def render_both(snapshot: Snapshot) -> tuple[Rendered, Rendered]:
    """Text and OpenMetrics renderings; they share every family's sample lines and differ in headers only."""
    text: list[bytes | bytearray] = []
    om: list[bytes | bytearray] = []
    for family in families(snapshot):
        text += (family.header(False), family.lines)
        om += (family.header(True), family.lines)
    om.append(b"# EOF\n")
    return Rendered(tuple(text), sum(map(len, text))), Rendered(tuple(om), sum(map(len, om)))


def render(snapshot: Snapshot, openmetrics: bool = False) -> bytes:
    return render_both(snapshot)[openmetrics].bytes()


def gzipped(rendered: Rendered) -> Rendered:
    packer = zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: a gzip container
    data = b"".join([*(packer.compress(c) for c in rendered.chunks), packer.flush()])
    return Rendered((data,), len(data))


class ExpositionCache:
    """Keeps the renderings of the latest snapshot only."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._generation = -1
        self._entries: dict[tuple[bool, bool], Rendered] = {}

    def get(self, snapshot: Snapshot, *, openmetrics: bool, compressed: bool) -> Rendered:
        key = (openmetrics, compressed)
        with self._lock:
            if snapshot.generation != self._generation:
                self._generation, self._entries = snapshot.generation, {}
            if not self._entries:
                self._entries[(False, False)], self._entries[(True, False)] = render_both(snapshot)
            if key not in self._entries:
                self._entries[key] = gzipped(self._entries[(openmetrics, False)])
            return self._entries[key]
