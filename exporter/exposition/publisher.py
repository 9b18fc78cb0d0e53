"""The exposition of a snapshot, built when the snapshot is published, so that a scrape only sends bytes.

Each dataset's lines are rendered once and kept until its data changes (a new fetch result, a failure, new
metadata); a publish renders the datasets that changed and joins the rest. The text format wants each
family's lines together, so the exposition is family after family: its header, then the datasets' pieces of
it in snapshot order. OpenMetrics is the same lines under its own headers, ended by `# EOF`. Both are kept as
runs of those pieces, never joined into one copy of the body.

Gzip is one member made of segments kept between publishes (exporter.exposition.deflate): a publish compresses
again only the blocks in which a dataset changed. One member, not several concatenated: Go's reader (Prometheus) reads
concatenated members, but httpx's and curl's decoders stop after the first.
"""

from __future__ import annotations

import logging
import struct
import threading
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any, NamedTuple

from prometheus_client import CollectorRegistry, gc_collector, platform_collector, process_collector
from prometheus_client.exposition import generate_latest as text_latest
from prometheus_client.openmetrics.exposition import generate_latest as om_latest

from exporter.exposition.deflate import FINAL_BLOCK, GZIP_HEADER, BlockDeflater, Segments, combined, deflate
from exporter.exposition.families import (
    DatasetHealthFamilies,
    DatasetInfoFamilies,
    Lines,
    OfflineFamilies,
    QualityFamilies,
    dataset_headers,
)
from exporter.exposition.fleet import fleet_families
from exporter.exposition.render import Family
from exporter.exposition.volume import VolumeFamilies
from exporter.state.snapshot import DatasetState, Snapshot

log = logging.getLogger(__name__)

# The classic text format: every Prometheus version reads it, and our names need none of 1.0.0's escaping.
TEXT = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
# Families described once per dataset ID, when a dataset is watched with several agent filters.
_PER_DATASET_ID = ("dataset_info", "last_fired_timestamp_seconds")


@dataclass(frozen=True)
class Body:
    """An answer's bytes as runs of chunks (a family's header, then its pieces, some empty)."""

    parts: tuple[Sequence[bytes], ...]
    length: int

    def chunks(self) -> list[bytes]:
        return list(filter(None, chain.from_iterable(self.parts)))  # in C: a fleet is 200,000 pieces

    def bytes(self) -> bytes:
        return b"".join(chain.from_iterable(self.parts))


@dataclass(frozen=True)
class Exposition:
    """One snapshot's families as text and as OpenMetrics (without its `# EOF`), plain and deflated."""

    text: Body
    openmetrics: Body
    text_gzip: Segments
    openmetrics_gzip: Segments

    def get(self, *, openmetrics: bool, compressed: bool, tail: bytes = b"") -> Body:
        """The body to send; `tail` (the process metrics) goes after the families, then OpenMetrics' `# EOF`."""
        tail = tail + b"# EOF\n" if openmetrics else tail
        if not compressed:
            body = self.openmetrics if openmetrics else self.text
            return Body((*body.parts, (tail,)), body.length + len(tail)) if tail else body
        parts, crc, size = self.openmetrics_gzip if openmetrics else self.text_gzip
        if tail:  # compressed here: keep it small
            parts, crc, size = (*parts, deflate(tail)), zlib.crc32(tail, crc), size + len(tail)
        chunks = (GZIP_HEADER, *parts, FINAL_BLOCK, struct.pack("<II", crc, size & 0xFFFFFFFF))
        return Body((chunks,), sum(map(len, chunks)))


class _Row(NamedTuple):
    """One dataset's lines, one bytes piece per family of each group, and what they were rendered from."""

    state: DatasetState
    fingerprint: tuple[Any, ...]
    quality: tuple[bytes, ...]
    offline: tuple[bytes, ...]
    rest: tuple[bytes, ...]  # info, then health
    diagnostics: tuple[tuple[str, bytes], ...]  # (slug, diagnostic_info line): described once across the fleet
    quality_series: int
    offline_series: int
    quality_bytes: int
    offline_bytes: int


def _fingerprint(state: DatasetState, label_names: tuple[str, ...]) -> tuple[Any, ...]:
    """Everything a dataset's lines depend on besides its quality record, which is compared by identity."""
    return (
        state.target,
        label_names,
        state.fetch_success,
        state.last_success,
        tuple(state.failures.items()),
        state.last_fired,
        state.server_last_fired,
        tuple(state.source_success.items()),
        tuple(state.source_failures.items()),
    )


def _encoded(groups: Lines) -> tuple[bytes, ...]:
    # "replace": whatever got past the parser, one label value can never make a family unrenderable
    return tuple("".join(lines).encode("utf-8", "replace") for lines in groups)


class Publisher:
    """Builds each published snapshot's exposition, rendering again only the datasets whose data changed.
    Used from one thread at a time."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str], _Row] = {}
        self._headers: dict[tuple[str, bool], tuple[bytes, Segments]] = {}
        self._deflater = BlockDeflater()
        self.rendered = 0  # datasets rendered by the last publish (tests read it)
        self.compressed = 0  # pieces compressed by the last publish, in every family (tests read it)

    def publish(self, snapshot: Snapshot, defer: Callable[[], None] | None = None) -> Exposition:
        """The snapshot's exposition; `defer` is called before each dataset that must be rendered and before
        each family is assembled (a render thread uses it to give way to the collection loop)."""
        try:
            return self._publish(snapshot, defer or _nothing)
        except BaseException:
            # a publish that raised midway may have kept part of what it did: the next starts afresh
            self._rows = {}
            self._deflater.forget()
            raise

    def _publish(self, snapshot: Snapshot, defer: Callable[[], None]) -> Exposition:
        self.rendered = 0
        first: dict[tuple[str, str], DatasetState] = {}
        for state in snapshot.datasets:  # a target listed twice: the first wins
            first.setdefault(state.target.key, state)
        rows = [self._row(snapshot, state, defer) for state in first.values()]
        self._rows = {row.state.target.key: row for row in rows}
        quality, offline, dropped, limit = _within_budget(rows, snapshot.max_series, snapshot.max_bytes)
        if dropped:
            log.warning("%s reached: %d quality series left out of this snapshot", limit, dropped)
        quality_headers, offline_headers, rest_headers = dataset_headers(snapshot.label_names)
        rest_headers += [spec.family() for spec in VolumeFamilies.specs]
        sections: list[tuple[Family, Sequence[bytes]]] = []
        sections += zip(quality_headers, _columns(quality, len(quality_headers)), strict=True)
        sections += zip(offline_headers, _columns(offline, len(offline_headers)), strict=True)
        rest = _columns([row.rest for row in rows], len(rest_headers))
        for header, column in zip(rest_headers, rest, strict=True):
            if header.name.endswith("diagnostic_info"):
                column = _described(rows)
            elif header.name.endswith(_PER_DATASET_ID):
                column = _once_per_dataset_id(rows, column)
            sections.append((header, column))
        sections += ((family, (family.lines,)) for family in fleet_families(snapshot, dropped))
        return self._assemble(sections, defer)

    def _row(self, snapshot: Snapshot, state: DatasetState, defer: Callable[[], None]) -> _Row:
        known = self._rows.get(state.target.key)
        if known is not None and known.state is state and known.fingerprint[1] == snapshot.label_names:
            return known  # the usual case: the recorder kept the dataset's state as it was
        fingerprint = _fingerprint(state, snapshot.label_names)
        if known is not None and known.state.quality is state.quality and known.fingerprint == fingerprint:
            return known
        defer()
        self.rendered += 1
        quality, offline = QualityFamilies.lines(state), OfflineFamilies.lines(state)
        info, described = DatasetInfoFamilies.lines(state, snapshot.label_names)
        quality_pieces, offline_pieces = _encoded(quality), _encoded(offline)
        return _Row(
            state,
            fingerprint,
            quality_pieces,
            offline_pieces,
            _encoded(info + DatasetHealthFamilies.lines(state) + VolumeFamilies.lines(state)),
            tuple((slug, line.encode("utf-8", "replace")) for slug, line in described),
            sum(map(len, quality)),
            sum(map(len, offline)),
            sum(map(len, quality_pieces)),
            sum(map(len, offline_pieces)),
        )

    def _assemble(self, sections: list[tuple[Family, Sequence[bytes]]], defer: Callable[[], None]) -> Exposition:
        text: list[Sequence[bytes]] = []
        om: list[Sequence[bytes]] = []
        text_gzip: list[Segments] = []
        om_gzip: list[Segments] = []
        for family, pieces in sections:
            defer()
            body = self._deflater.family(family.name, pieces)
            for out, packed, openmetrics in ((text, text_gzip, False), (om, om_gzip, True)):
                raw, header = self._header(family, openmetrics)
                out += ((raw,), pieces)  # pieces are never changed in place once handed over
                packed += (header, body)
        self.compressed = self._deflater.finish()
        return Exposition(_body(text), _body(om), _joined(text_gzip), _joined(om_gzip))

    def _header(self, family: Family, openmetrics: bool) -> tuple[bytes, Segments]:
        key = (family.name + family.kind + family.doc, openmetrics)
        known = self._headers.get(key)
        if known is None:
            raw = family.header(openmetrics)
            known = self._headers[key] = (raw, Segments((deflate(raw),), zlib.crc32(raw), len(raw)))
        return known


def _nothing() -> None:
    pass


def _body(parts: list[Sequence[bytes]]) -> Body:
    return Body(tuple(parts), sum(len(piece) for part in parts for piece in part))


def _joined(segments: list[Segments]) -> Segments:
    return Segments(tuple(chain.from_iterable(s.parts for s in segments)), *combined(segments))


def _columns(rows: Sequence[tuple[bytes, ...]], width: int) -> list[tuple[bytes, ...]]:
    """Rows of per-family pieces (one per dataset) as one column per family, transposed in C."""
    return list(zip(*rows, strict=True)) if rows else [() for _ in range(width)]


def _within_budget(
    rows: list[_Row], max_series: int, max_bytes: int
) -> tuple[list[tuple[bytes, ...]], list[tuple[bytes, ...]], int, str]:
    """Quality then offline lines in snapshot order, as long as limits.max_series and limits.max_bytes allow
    (0: no limit). The dataset that crosses the series limit is rendered again with what is left; one that
    crosses the byte limit is left out whole (a label value Meta sends may be long); the rest are left out.
    The rows' pieces, how many series were left out, and which limit left them out."""
    quality, offline = [row.quality for row in rows], [row.offline for row in rows]
    series = sum(row.quality_series + row.offline_series for row in rows)
    size = sum(row.quality_bytes + row.offline_bytes for row in rows)
    series_over, bytes_over = 0 < max_series < series, 0 < max_bytes < size
    if not series_over and not bytes_over:
        return quality, offline, 0, ""
    limit = f"limits.max_series ({max_series})" if series_over else f"limits.max_bytes ({max_bytes})"
    series_left = max_series if max_series > 0 else series
    bytes_left = max_bytes if max_bytes > 0 else size
    dropped = 0
    for part, group in ((quality, QualityFamilies), (offline, OfflineFamilies)):
        for index, row in enumerate(rows):
            if group is QualityFamilies:
                count, length = row.quality_series, row.quality_bytes
            else:
                count, length = row.offline_series, row.offline_bytes
            if count <= series_left and length <= bytes_left:
                series_left, bytes_left = series_left - count, bytes_left - length
                continue
            if length > bytes_left:
                part[index], bytes_left = _encoded([[] for _ in group.specs]), 0
                dropped += count
                continue
            dropped += count - series_left
            part[index] = _encoded(_first_series(group.lines(row.state), series_left))
            series_left = 0
    return quality, offline, dropped, limit


def _first_series(groups: Lines, limit: int) -> Lines:
    """The first `limit` series, family after family, as they would have been counted while written."""
    kept = []
    for lines in groups:
        kept.append(lines[:limit])
        limit -= len(kept[-1])
    return kept


def _described(rows: list[_Row]) -> tuple[bytes, ...]:
    """diagnostic_info's pieces: each diagnostic described once, by the first dataset that has it."""
    seen: set[str] = set()
    kept = []
    for row in rows:
        fresh = [line for slug, line in row.diagnostics if slug not in seen]
        seen.update(slug for slug, _ in row.diagnostics)
        kept.append(b"".join(fresh))
    return tuple(kept)


def _once_per_dataset_id(rows: list[_Row], column: tuple[bytes, ...]) -> tuple[bytes, ...]:
    """A family's pieces with a dataset watched under several agent filters described by its first row."""
    seen: set[str] = set()
    kept = []
    for row, piece in zip(rows, column, strict=True):
        dataset_id = row.state.target.dataset_id
        kept.append(b"" if dataset_id in seen else piece)
        seen.add(dataset_id)
    return tuple(kept)


def render_exposition(snapshot: Snapshot) -> Exposition:
    """A snapshot's exposition from scratch (`once`, tests, a snapshot published without one)."""
    return Publisher().publish(snapshot)


def render(snapshot: Snapshot, openmetrics: bool = False) -> bytes:
    return render_exposition(snapshot).get(openmetrics=openmetrics, compressed=False).bytes()


# ----- the standard collectors ---------------------------------------------------------------------------------
class ProcessMetrics:
    """process_* and python_* of prometheus_client's standard collectors: the exporter's own memory, CPU and
    file descriptors. They change from moment to moment, so they are rendered at each scrape (about forty
    samples, well under a millisecond), unlike the published families."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        process_collector.ProcessCollector(registry=self.registry)
        platform_collector.PlatformCollector(registry=self.registry)
        gc_collector.GCCollector(registry=self.registry)
        self._lock = threading.Lock()

    def text(self, openmetrics: bool) -> bytes:
        with self._lock:
            if openmetrics:
                return om_latest(self.registry).removesuffix(b"# EOF\n")
            return text_latest(self.registry)
