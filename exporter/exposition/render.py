"""How samples are written: label pairs, numbers, and `Family`, a writer for one family's lines.

Each sample becomes its line at once, so a fleet's millions of series never exist as objects. Labels are
sorted by name, as prometheus_client writes them. Numbers are written as prometheus_client writes them, each
value formatted once (a fleet repeats a few thousand). The per-dataset groups (exporter.exposition.families) write their
lines with these helpers directly; `Family` serves the fleet's small families and every family's header.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from decimal import Decimal

from prometheus_client.utils import floatToGoString

PREFIX = "meta_dataset_quality_"


def _escape(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def pairs(names: Iterable[str], values: Iterable[str]) -> str:
    """A label set as the exposition writes it: sorted by name, as prometheus_client and Go's client do."""
    return ",".join(f'{name}="{_escape(value)}"' for name, value in sorted(zip(names, values, strict=True)))


def sample_start(name: str, kind: str = "gauge") -> str:
    """How a sample line of the family `name` (without the prefix) begins, up to its first label."""
    return f"{PREFIX}{name}{'_total' if kind == 'counter' else ''}{{"


def pair(name: str, value: str) -> str:
    return f'{name}="{_escape(value)}"'


NUMBERS: dict[float, str] = {}  # the same few thousand values recur across a fleet: format each once
_RATIOS: dict[float, float] = {}
SHARES: dict[float, str] = {}  # a percentage -> its ratio as text (a hot loop may look here before `share`)
_MEMO_LIMIT = 1 << 16


def number(value: float) -> str:
    text = NUMBERS.get(value)
    if text is None:
        if value == 0:  # never remembered (0.0 == -0.0 as keys, printed apart), and common: 0 of 1 flags
            return "-0.0" if math.copysign(1.0, value) < 0 else "0.0"
        text = floatToGoString(value)
        if value == value and len(NUMBERS) < _MEMO_LIMIT:  # not NaN, which never finds itself
            NUMBERS[value] = text
    return text


def share(percentage: float) -> str:
    """A percentage as the text of its ratio (see `ratio`), formatted once per value."""
    text = SHARES.get(percentage)
    if text is None:
        text = number(ratio(percentage))
        if percentage and percentage == percentage and len(SHARES) < _MEMO_LIMIT:
            SHARES[percentage] = text
    return text


class Family:
    """One metric family, rendered as it is filled: each sample becomes its exposition line at once. A repeated
    label set is ignored, so no input can produce a duplicate series."""

    def __init__(self, name: str, doc: str, labels: list[str], *, kind: str = "gauge") -> None:
        self.name, self.doc, self.kind, self.labelnames = PREFIX + name, doc, kind, labels
        self._parts: list[str] = []
        self._seen: set[str] = set()
        self._sample_name = self.name + "_total" if kind == "counter" else self.name
        self._open = sample_start(name, kind)

    def add(self, labels: list[str], value: float) -> None:
        self.add_pairs(pairs(self.labelnames, labels), value)

    def add_pairs(self, label_pairs: str, value: float) -> None:
        """Add a sample whose labels are already written, sorted by name (see `pairs`)."""
        if label_pairs in self._seen:
            return
        self._seen.add(label_pairs)
        if label_pairs:
            self._parts.append(f"{self._open}{label_pairs}}} {number(value)}\n")
        else:
            self._parts.append(f"{self._sample_name} {number(value)}\n")

    def add_histogram(self, labels: list[str], buckets: Iterable[tuple[str, int]], total: float, count: int) -> None:
        own = pairs(self.labelnames, labels)
        names = [*self.labelnames, "le"]
        for bound, cumulative in buckets:
            self._parts.append(f"{self.name}_bucket{{{pairs(names, [*labels, bound])}}} {number(cumulative)}\n")
        self._parts.append(f"{self.name}_count{{{own}}} {number(count)}\n")
        self._parts.append(f"{self.name}_sum{{{own}}} {number(total)}\n")

    @property
    def lines(self) -> bytes:
        # "replace": whatever got past the parser, one label value can never make a family unrenderable
        return "".join(self._parts).encode("utf-8", "replace")

    def header(self, openmetrics: bool = False) -> bytes:
        # The classic text format names a counter's family with its `_total`; OpenMetrics without.
        name = self.name if openmetrics or self.kind != "counter" else self._sample_name
        doc = self.doc.replace("\\", "\\\\").replace("\n", "\\n")
        return f"# HELP {name} {doc}\n# TYPE {name} {self.kind}\n".encode()


def gauge(name: str, doc: str, labels: list[str]) -> Family:
    return Family(name, doc, labels)


def counter(name: str, doc: str, labels: list[str]) -> Family:
    return Family(name, doc, labels, kind="counter")


def single(name: str, doc: str, value: float | None, kind: str = "gauge") -> Iterator[Family]:
    if value is not None:
        family = Family(name, doc, [], kind=kind)
        family.add([], value)
        yield family


def add(family: Family, labels: list[str], value: float | None) -> None:
    """Add a sample unless there is no value."""
    if value is not None:
        family.add(labels, value)


def ratio(percentage: float) -> float:
    known = _RATIOS.get(percentage)
    if known is None:
        # A decimal shift of the value as sent: 99.9 becomes exactly 0.999 (99.9 / 100 is 0.9990000000000001).
        known = float(Decimal(repr(float(percentage))).scaleb(-2))
        if percentage and percentage == percentage and len(_RATIOS) < _MEMO_LIMIT:
            _RATIOS[percentage] = known
    return known
