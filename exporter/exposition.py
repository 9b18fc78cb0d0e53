"""The exposition of a snapshot, built when the snapshot is published, so that a scrape only copies bytes.

Publishing is incremental. Each dataset's lines are rendered once and kept until its data changes (a new
fetch result, a failure, new metadata); a publish renders the datasets that changed and joins the rest. The
gzip encoding is kept the same way (exporter.deflate): each family's pieces are compressed in blocks of about
eight datasets, a block again only when one of its datasets changed, and a scrape sends one gzip member made
of the kept segments. One member, not several concatenated ones: Go's
reader (Prometheus) reads concatenated members, but httpx's and curl's decoders stop after the first.

The text format wants each family's lines together: the exposition is family after family, each made of its
header and the datasets' pieces in snapshot order. OpenMetrics is the same lines with its own headers and
`# EOF`.
"""

from __future__ import annotations

import logging
import operator
import struct
import threading
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain, compress
from typing import Any

from prometheus_client import CollectorRegistry, gc_collector, platform_collector, process_collector
from prometheus_client.exposition import generate_latest as text_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.exposition import generate_latest as om_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from exporter.deflate import (
    FINAL_BLOCK,
    GZIP_HEADER,
    BlockDeflater,
    block_mark,
    crc32_combine,
    deflate,
    fleet_ends,
)
from exporter.families import (
    DatasetHealthFamilies,
    DatasetInfoFamilies,
    Lines,
    OfflineFamilies,
    QualityFamilies,
    dataset_headers,
)
from exporter.fleet import fleet_families, origins
from exporter.render import PREFIX, Family
from exporter.snapshot import DatasetState, Snapshot

log = logging.getLogger(__name__)

# The classic text format: every Prometheus version reads it, and our names need none of 1.0.0's escaping.
TEXT = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


@dataclass(frozen=True)
class Deflated:
    """A body as raw deflate segments, with the CRC-32 and length of what they hold."""

    segments: tuple[bytes, ...]
    crc: int
    size: int

    def gzip(self, tail: bytes = b"") -> Body:
        """One gzip member of these segments and `tail` (compressed here: keep it small)."""
        crc, size, segments = self.crc, self.size, list(self.segments)
        if tail:
            segments.append(deflate(tail))
            crc, size = zlib.crc32(tail, crc), size + len(tail)
        chunks = [GZIP_HEADER, *segments, FINAL_BLOCK, struct.pack("<II", crc, size & 0xFFFFFFFF)]
        return _body(chunks)


@dataclass(frozen=True)
class Body:
    """An answer's bytes as runs of chunks: a family's header, then its pieces as the publisher keeps them
    (one per dataset, some empty). A publish hands its columns over as they are; the chunks are laid end to
    end when a scrape asks for them, not at every publish."""

    parts: tuple[Sequence[bytes], ...]
    length: int

    def chunks(self) -> list[bytes]:
        return list(filter(None, chain.from_iterable(self.parts)))  # in C: a fleet is 300,000 pieces

    def bytes(self) -> bytes:
        return b"".join(chain.from_iterable(self.parts))


def _body(chunks: list[bytes]) -> Body:
    return Body((tuple(chunks),), sum(map(len, chunks)))


@dataclass(frozen=True)
class Exposition:
    """One snapshot's families as text and as OpenMetrics (without its `# EOF`), plain and deflated."""

    text: Body
    openmetrics: Body
    text_deflated: Deflated
    openmetrics_deflated: Deflated

    def get(self, *, openmetrics: bool, compressed: bool, tail: bytes = b"") -> Body:
        """The body to send; `tail` (the process metrics) goes after the families, then OpenMetrics' `# EOF`."""
        tail = tail + b"# EOF\n" if openmetrics else tail
        if compressed:
            return (self.openmetrics_deflated if openmetrics else self.text_deflated).gzip(tail)
        body = self.openmetrics if openmetrics else self.text
        return Body((*body.parts, (tail,)), body.length + len(tail)) if tail else body


@dataclass(slots=True)
class _DatasetLines:
    """One dataset's lines per family, and what they were rendered from."""

    state: DatasetState
    fingerprint: tuple[Any, ...]
    # Tuples, not a list and a set: the cyclic collector stops tracking tuples of strings and bytes, and a row
    # is kept for as long as its dataset's state.
    diagnostics: tuple[tuple[str, bytes], ...]  # (slug, line) of diagnostic_info, deduplicated across the fleet
    slugs: tuple[str, ...]
    quality_lines: tuple[bytes, ...] = ()  # the families' lines, in order, as bytes
    offline_lines: tuple[bytes, ...] = ()
    rest_lines: tuple[bytes, ...] = ()
    quality_count: int = 0
    offline_count: int = 0
    block_mark: int = 1  # where compressed blocks may end after this dataset (exporter.deflate.block_mark)

    @property
    def series(self) -> int:
        return self.quality_count + self.offline_count


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


def _first_series(groups: Lines, limit: int) -> Lines:
    """The first `limit` series, family after family, as they would have been counted while written."""
    kept = []
    for lines in groups:
        kept.append(lines[:limit])
        limit -= len(kept[-1])
    return kept


class Publisher:
    """Builds each published snapshot's exposition, re-rendering only the datasets whose data changed.

    Used from one thread at a time (the collection loop's).
    """

    def __init__(self) -> None:
        self._headers: dict[tuple[str, bool], tuple[bytes, bytes, int]] = {}  # (family, om) -> raw, deflated, crc
        self.rendered = 0  # datasets rendered by the last publish (tests read it)
        self.compressed = 0  # pieces compressed by the last publish, in every family (tests read it)
        self._templates: dict[tuple[str, ...], tuple[list[Family], list[Family], list[Family]]] = {}
        self._forget()

    def _forget(self) -> None:
        """Forget every publish: the next one renders from scratch."""
        self._lines: dict[tuple[str, str], _DatasetLines] = {}
        self._aligned = False  # whether the last publish left no dataset out (its rows are then one per dataset)
        self._rows: list[_DatasetLines] = []  # the last publish's datasets, and their label names
        self._label_names: tuple[str, ...] | None = None
        self._unique_ids = True  # whether no dataset is watched twice (with several agent filters)
        self._origins: Counter[str] = Counter()  # the last publish's targets by origin
        self._kept_columns: dict[str, list[Column]] = {}  # the last publish's columns of aligned rows
        self._series = 0  # the last publish's quality and offline series
        self._ends: tuple[list[int], list[int]] | None = None  # where the last publish's blocks ended, and finer ones
        self._diagnostics: list[bytes] = []  # the last publish's diagnostic_info pieces
        self._deflater = BlockDeflater()

    def _template(self, snapshot: Snapshot) -> tuple[list[Family], list[Family], list[Family]]:
        """The per-dataset families' headers, in order: they depend on the user's label names only."""
        key = snapshot.label_names
        if key not in self._templates:
            self._templates[key] = dataset_headers(key)
        return self._templates[key]

    def publish(self, snapshot: Snapshot, defer: Callable[[], None] | None = None) -> Exposition:
        """The snapshot's exposition; `defer` is called before each dataset that must be rendered and before
        each family is assembled (a render thread uses it to give way to the collection loop)."""
        try:
            return self._publish(snapshot, defer)
        except BaseException:
            self._forget()  # a publish that raised midway may have kept part of what it did: start afresh
            raise

    def _publish(self, snapshot: Snapshot, defer: Callable[[], None] | None) -> Exposition:
        self.rendered = 0
        was_aligned, previous = self._aligned, self._rows
        lines, changed = self._dataset_rows(snapshot, defer)
        self._rows = lines
        if not was_aligned:
            changed = None  # which datasets' lines are not those of the last publish: found once for every family
        budget = self._within_budget(snapshot, lines)
        template_quality, template_offline, template_rest = self._template(snapshot)
        # Blocks end after the same datasets in every family (after more of them in FINE_FAMILIES), so a changed
        # dataset costs one block per family.
        if changed is None or self._ends is None:
            self._ends = fleet_ends([entry.block_mark for entry in lines])
        ends, fine_ends = self._ends  # the same targets as the last publish: the same ends
        dropped = budget[2] if budget else 0
        self._aligned = not dropped
        sections: list[Section] = []
        for kind, templates in (("quality", template_quality), ("offline", template_offline)):
            rows = None if budget is None else budget[0 if kind == "quality" else 1]
            columns = self._columns(kind, lines, rows, len(templates), None if dropped else changed)
            for family, column in zip(templates, columns, strict=True):
                # limits.max_series left datasets out: the families find their own blocks
                blocks = None if dropped else fine_ends if family.name in FINE_FAMILIES else ends
                sections.append((family, column, blocks, changed))
        sections += self._dataset_rest(template_rest, lines, ends, changed, previous)
        fleet = fleet_families(snapshot, dropped, self._origins)
        if dropped:
            log.warning(
                "limits.max_series (%d) reached: %d quality series left out of this snapshot",
                snapshot.max_series,
                dropped,
            )
        return self._assemble(sections, fleet, defer)

    def _dataset_rows(
        self, snapshot: Snapshot, defer: Callable[[], None] | None
    ) -> tuple[list[_DatasetLines], list[int] | None]:
        """Each dataset's lines in snapshot order, the first of a key winning, and which rows are not the last
        publish's (None: not known, the targets changed)."""
        datasets, previous = snapshot.datasets, self._rows
        if len(datasets) == len(previous) and snapshot.label_names == self._label_names:
            # The usual case: the last publish's targets, some with new states. A state kept as it was has its
            # target; those of new states are checked one by one. Found in C.
            new_states = list(compress(range(len(previous)), map(operator.is_not, map(_STATE, previous), datasets)))
            if all(datasets[index].target is previous[index].state.target for index in new_states):
                rows, changed, series = previous.copy(), [], self._series
                for index in new_states:
                    entry = self._dataset(snapshot, datasets[index], defer)
                    if entry is not rows[index]:
                        series += entry.series - rows[index].series
                        rows[index] = self._lines[entry.state.target.key] = entry
                        changed.append(index)
                self._series = series
                return rows, changed
        unique = {state.target.key: state for state in reversed(datasets)}
        states = [state for state in datasets if unique[state.target.key] is state]
        rows = [self._dataset(snapshot, state, defer) for state in states]
        self._origins = origins(snapshot)
        self._lines = {entry.state.target.key: entry for entry in rows}
        self._label_names = snapshot.label_names
        self._unique_ids = len({entry.state.target.dataset_id for entry in rows}) == len(rows)
        self._series = sum(entry.series for entry in rows)
        return rows, None

    # ----- one dataset ------------------------------------------------------------------------------------
    def _dataset(self, snapshot: Snapshot, state: DatasetState, defer: Callable[[], None] | None) -> _DatasetLines:
        cached = self._lines.get(state.target.key)
        if cached is not None and cached.state is state and cached.fingerprint[1] == snapshot.label_names:
            return cached  # the usual case: the loop kept the dataset's state as it was
        fingerprint = _fingerprint(state, snapshot.label_names)
        if cached is not None and cached.state.quality is state.quality and cached.fingerprint == fingerprint:
            return cached
        if defer is not None:
            defer()
        self.rendered += 1
        quality, offline = QualityFamilies.lines(state), OfflineFamilies.lines(state)
        info, described = DatasetInfoFamilies.lines(state, snapshot.label_names)
        diagnostics = tuple((slug, line.encode("utf-8", "replace")) for slug, line in described)
        return _DatasetLines(
            state,
            fingerprint,
            diagnostics,
            tuple(slug for slug, _ in diagnostics),
            _encoded(quality),
            _encoded(offline),
            _encoded(info + DatasetHealthFamilies.lines(state)),
            sum(map(len, quality)),
            sum(map(len, offline)),
            block_mark("\0".join(state.target.key)),
        )

    def _within_budget(
        self, snapshot: Snapshot, lines: list[_DatasetLines]
    ) -> tuple[list[tuple[bytes, ...]], list[tuple[bytes, ...]], int] | None:
        """Quality then offline series in snapshot order, as long as limits.max_series allows (0: no limit);
        the dataset that crosses the limit is rendered again with what is left, and the rest are left out.
        None when every series fits (the usual case: no per-dataset accounting)."""
        if snapshot.max_series <= 0 or self._series <= snapshot.max_series:
            return None
        left, dropped = snapshot.max_series, 0
        kept: dict[str, list[tuple[bytes, ...]]] = {"quality": [], "offline": []}
        for part in ("quality", "offline"):
            for entry in lines:
                count = entry.quality_count if part == "quality" else entry.offline_count
                if count <= left:
                    kept[part].append(entry.quality_lines if part == "quality" else entry.offline_lines)
                    left -= count
                elif left == 0:
                    dropped += count
                else:
                    group = QualityFamilies if part == "quality" else OfflineFamilies
                    kept[part].append(_encoded(_first_series(group.lines(entry.state), left)))
                    dropped += count - left
                    left = 0
        return kept["quality"], kept["offline"], dropped

    def _dataset_rest(
        self,
        headers: list[Family],
        lines: list[_DatasetLines],
        ends: list[int],
        changed: list[int] | None,
        previous: list[_DatasetLines],
    ) -> list[Section]:
        """Info and health families; a dataset watched with several agent filters is described once, and a
        diagnostic's text is the first seen for its slug."""
        sections: list[Section] = []
        columns = self._columns("rest", lines, None, len(headers), changed)
        unique_ids = self._unique_ids
        for index, header in enumerate(headers):
            name = header.name
            pieces: Sequence[bytes]
            aligned: list[int] | None = None  # pieces that are not one per dataset find their own blocks
            if name.endswith("diagnostic_info"):
                pieces = self._diagnostics = self._described(lines, changed, previous)
            elif name.endswith(("dataset_info", "last_fired_timestamp_seconds")) and not unique_ids:
                seen_ids: set[str] = set()
                kept = []
                for entry, piece in zip(lines, columns[index], strict=True):
                    if entry.state.target.dataset_id not in seen_ids:
                        seen_ids.add(entry.state.target.dataset_id)
                        kept.append(piece)
                pieces = kept
            else:
                pieces, aligned = columns[index], ends
            sections.append((header, pieces, aligned, changed if aligned else None))
        return sections

    def _described(
        self, lines: list[_DatasetLines], changed: list[int] | None, previous: list[_DatasetLines]
    ) -> list[bytes]:
        """diagnostic_info's pieces: each diagnostic described once, by the first dataset that has it. The
        last publish's, when the datasets that changed describe the same diagnostics as before."""
        if changed is not None and all(lines[index].diagnostics == previous[index].diagnostics for index in changed):
            return self._diagnostics
        seen_slugs: set[str] = set()
        kept: list[bytes] = []
        for entry in lines:
            if seen_slugs.issuperset(entry.slugs):
                continue  # most datasets: every diagnostic already described
            fresh = [line for slug, line in entry.diagnostics if slug not in seen_slugs]
            seen_slugs.update(entry.slugs)
            kept.append(b"".join(fresh))
        return kept

    def _columns(
        self,
        kind: str,
        lines: list[_DatasetLines],
        rows: list[tuple[bytes, ...]] | None,
        width: int,
        changed: list[int] | None,
    ) -> list[Column]:
        """The datasets' pieces of `kind` (or `rows` of them, when limits.max_series cut some) as one column
        per family (`_transpose`), copied from the last publish's columns where only the `changed` rows
        differ (one row per dataset in both): copying a column costs less than transposing the fleet again.
        `changed` None: the rows are not known to match the last publish's."""
        pieces_of = _PIECES[kind]
        kept = self._kept_columns.get(kind)
        if changed is None or kept is None or len(kept) != width or (kept and len(kept[0]) != len(lines)):
            columns = _transpose(list(map(pieces_of, lines)) if rows is None else rows, width)
        else:
            rows_changed = [(index, pieces_of(lines[index])) for index in changed]
            columns = []
            for position, column in enumerate(kept):
                moved = [(index, row[position]) for index, row in rows_changed if row[position] != column[index]]
                if moved:
                    copy = list(column)
                    for index, piece in moved:
                        copy[index] = piece
                    column = tuple(copy)
                columns.append(column)  # a column whose pieces hold the same bytes is kept as it was
        self._kept_columns[kind] = columns
        return columns

    # ----- the whole -------------------------------------------------------------------------------------
    def _assemble(self, sections: list[Section], fleet: list[Family], defer: Callable[[], None] | None) -> Exposition:
        text: list[Sequence[bytes]] = []
        om: list[Sequence[bytes]] = []
        text_gz: list[bytes] = []
        om_gz: list[bytes] = []
        text_crc = om_crc = text_size = om_size = 0
        for family, pieces, ends, changed in [*sections, *((f, [bytes(f.lines)], None, None) for f in fleet)]:
            if defer is not None:
                defer()
            header, header_gz, header_crc = self._header(family, False)
            text.append((header,))
            text_gz.append(header_gz)
            text_crc = crc32_combine(text_crc, header_crc, len(header))
            text_size += len(header)
            header, header_gz, header_crc = self._header(family, True)
            om.append((header,))
            om_gz.append(header_gz)
            om_crc = crc32_combine(om_crc, header_crc, len(header))
            om_size += len(header)
            compressed = self._deflater.family(family.name, pieces, ends, changed)
            text_gz += compressed.segments
            om_gz += compressed.segments
            body_crc, body_size = compressed.crc, compressed.size
            text.append(pieces)  # never changed in place once handed over (Publisher._columns copies)
            om.append(pieces)
            text_crc = crc32_combine(text_crc, body_crc, body_size)
            om_crc = crc32_combine(om_crc, body_crc, body_size)
            text_size += body_size
            om_size += body_size
        self.compressed = self._deflater.finish()
        plain, openmetrics = Body(tuple(text), text_size), Body(tuple(om), om_size)
        return Exposition(
            plain,
            openmetrics,
            Deflated(tuple(text_gz), text_crc, plain.length),
            Deflated(tuple(om_gz), om_crc, openmetrics.length),
        )

    def _header(self, family: Family, openmetrics: bool) -> tuple[bytes, bytes, int]:
        key = (family.name + family.kind + family.doc, openmetrics)
        known = self._headers.get(key)
        if known is None:
            raw = family.header(openmetrics)
            known = self._headers[key] = (raw, deflate(raw), zlib.crc32(raw))
        return known


# A family's pieces, one per dataset. A tuple, not a list: the cyclic collector stops tracking a tuple of bytes,
# while it walks a list's every reference in each full collection (at 10,000 datasets, 400,000 of them).
Column = tuple[bytes, ...]
# a family, its pieces, where its blocks end if one per dataset, and which datasets changed since the last publish
Section = tuple[Family, Sequence[bytes], list[int] | None, list[int] | None]
# (exporter.deflate.FINE_BLOCK)
FINE_FAMILIES = frozenset(
    PREFIX + name for name in ("match_key_coverage_ratio", "match_key_potential_acr_increase_ratio")
)
_PIECES = {kind: operator.attrgetter(f"{kind}_lines") for kind in ("quality", "offline", "rest")}
_STATE = operator.attrgetter("state")


def _transpose(rows: list[tuple[bytes, ...]], width: int) -> list[Column]:
    """Rows of per-family pieces (one per dataset) as one column per family: zip transposes them in C."""
    return list(zip(*rows, strict=True)) if rows else [() for _ in range(width)]


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


# ----- for prometheus_client registries (tests: get_sample_value) ---------------------------------------------
class SnapshotCollector(Collector):
    """A snapshot's families, read back from the exposition by prometheus_client's own parser."""

    def __init__(self, source: Callable[[], Snapshot]) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        yield from text_string_to_metric_families(render(self.source()).decode())
