"""How metric families are written: the exposition's lines, one family at a time.

Each sample becomes its line at once, as text encoded once per family, so a fleet's millions of series never
exist as objects. Labels are sorted by name, as prometheus_client writes them; callers that write many lines
with the same labels (a dataset's, an event's) write those pairs once and pass them in (`add_pairs`). A
repeated label set is ignored, so no input can produce a duplicate series; with a budget, quality series past
`limits.max_series` are counted, not written.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from decimal import Decimal

from prometheus_client.utils import floatToGoString

PREFIX = "meta_dataset_quality_"


class SeriesBudget:
    """How many quality series may still be added (limits.max_series; 0 is no limit), and how many were not."""

    def __init__(self, limit: int) -> None:
        self.left = limit if limit > 0 else -1
        self.dropped = 0

    def take(self) -> bool:
        if self.left == 0:
            self.dropped += 1
            return False
        self.left -= 1
        return True


def _escape(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def pairs(names: Iterable[str], values: Iterable[str]) -> str:
    """A label set as the exposition writes it: sorted by name, as prometheus_client and Go's client do."""
    return ",".join(f'{name}="{_escape(value)}"' for name, value in sorted(zip(names, values, strict=True)))


def pair(name: str, value: str) -> str:
    return f'{name}="{_escape(value)}"'


_NUMBERS: dict[float, str] = {}  # the same few thousand values recur across a fleet: format each once
_RATIOS: dict[float, float] = {}
_SHARES: dict[float, str] = {}  # a percentage -> its ratio as text
_MEMO_LIMIT = 1 << 16


def number(value: float) -> str:
    text = _NUMBERS.get(value)
    if text is None:
        if value == 0:  # never remembered (0.0 == -0.0 as keys, printed apart), and common: 0 of 1 flags
            return "-0.0" if math.copysign(1.0, value) < 0 else "0.0"
        text = floatToGoString(value)
        if value == value and len(_NUMBERS) < _MEMO_LIMIT:  # not NaN, which never finds itself
            _NUMBERS[value] = text
    return text


def share(percentage: float) -> str:
    """A percentage as the text of its ratio (see `ratio`), formatted once per value."""
    text = _SHARES.get(percentage)
    if text is None:
        text = number(ratio(percentage))
        if percentage and percentage == percentage and len(_SHARES) < _MEMO_LIMIT:
            _SHARES[percentage] = text
    return text


class Family:
    """One metric family, rendered as it is filled.

    Each sample becomes its exposition line at once, so a fleet's millions of series never exist as objects;
    `freeze` encodes the lines once. A repeated label set is ignored; with a budget, quality series beyond it
    are counted, not written.
    """

    def __init__(
        self, name: str, doc: str, labels: list[str], budget: SeriesBudget | None = None, *, kind: str = "gauge"
    ) -> None:
        self.name, self.doc, self.kind, self.labelnames = PREFIX + name, doc, kind, labels
        self.budget = budget if budget is not None and budget.left >= 0 else None  # None: no limit to check
        self._parts: list[str] = []
        self._frozen: bytes | None = None
        self.count = 0  # samples written
        self._seen: set[str] = set()
        self._sample_name = self.name + "_total" if kind == "counter" else self.name
        self._open = self._sample_name + "{"

    def new_scope(self) -> None:
        """Label sets of different datasets never collide: forget the ones seen so far (saves memory)."""
        self._seen.clear()

    def add(self, labels: list[str], value: float) -> None:
        self.add_pairs(pairs(self.labelnames, labels), value)

    def add_pairs(self, label_pairs: str, value: float) -> None:
        """Add a sample whose labels are already written, sorted by name (see `pairs`)."""
        if label_pairs in self._seen:
            return
        self._seen.add(label_pairs)  # a repeat is ignored, and never counted as dropped twice
        if self.budget is None or self.budget.take():
            if label_pairs:
                self._parts.append(f"{self._open}{label_pairs}}} {number(value)}\n")
            else:
                self._parts.append(f"{self._sample_name} {number(value)}\n")
            self.count += 1

    def add_values(self, samples: Sequence[tuple[str, float | None]], *, percent: bool = False) -> None:
        """Add a scope's samples at once, each (label pairs as `pairs` writes them, value): the cheap way to
        write many lines. A sample without a value is left out; `percent` values become ratios. With a
        budget, an empty label set or a repeated one, they are added one by one (`add_pairs`), the first of
        a label set winning."""
        memo, text = (_SHARES, share) if percent else (_NUMBERS, number)
        start = self._open
        lines = [f"{start}{label_pairs}}} {memo.get(v) or text(v)}\n" for label_pairs, v in samples if v is not None]
        seen = {label_pairs for label_pairs, v in samples if v is not None}
        if self.budget is None and not self._seen and len(seen) == len(lines) and "" not in seen:
            self._parts += lines
            self._seen = seen
            self.count += len(lines)
            return
        for label_pairs, value in samples:
            if value is not None:
                self.add_pairs(label_pairs, ratio(value) if percent else value)

    def add_histogram(self, labels: list[str], buckets: Iterable[tuple[str, int]], total: float, count: int) -> None:
        own = pairs(self.labelnames, labels)
        names = [*self.labelnames, "le"]
        written = len(self._parts)
        for bound, cumulative in buckets:
            self._parts.append(f"{self.name}_bucket{{{pairs(names, [*labels, bound])}}} {number(cumulative)}\n")
        self._parts.append(f"{self.name}_count{{{own}}} {number(count)}\n")
        self._parts.append(f"{self.name}_sum{{{own}}} {number(total)}\n")
        self.count += len(self._parts) - written

    @property
    def lines(self) -> bytes:
        if self._frozen is not None:
            return self._frozen
        # "replace": whatever got past the parser, one label value can never make a family unrenderable
        return "".join(self._parts).encode("utf-8", "replace")

    def freeze(self) -> None:
        """Encode the lines once and keep them as bytes: expositions then share them instead of copying them."""
        self._frozen = self.lines
        self._parts = []
        self._seen.clear()

    def header(self, openmetrics: bool = False) -> bytes:
        # The classic text format names a counter's family with its `_total`; OpenMetrics without.
        name = self.name if openmetrics or self.kind != "counter" else self._sample_name
        doc = self.doc.replace("\\", "\\\\").replace("\n", "\\n")
        return f"# HELP {name} {doc}\n# TYPE {name} {self.kind}\n".encode()


def gauge(name: str, doc: str, labels: list[str], budget: SeriesBudget | None = None) -> Family:
    return Family(name, doc, labels, budget)


def counter(name: str, doc: str, labels: list[str]) -> Family:
    return Family(name, doc, labels, kind="counter")


def single(name: str, doc: str, value: float | None, kind: str = "gauge") -> Iterator[Family]:
    if value is not None:
        family = Family(name, doc, [], kind=kind)
        family.add([], value)
        yield family


def add(family: Family, labels: list[str], value: float | None, percent: bool = False) -> None:
    """Add a sample unless the API did not send the value; percentages become ratios."""
    if value is not None:
        family.add(labels, ratio(value) if percent else value)


def add_pairs(family: Family, label_pairs: str, value: float | None, percent: bool = False) -> None:
    """`add` with the labels already written (see `pairs`)."""
    if value is not None:
        family.add_pairs(label_pairs, ratio(value) if percent else value)


def ratio(percentage: float) -> float:
    known = _RATIOS.get(percentage)
    if known is None:
        # A decimal shift of the value as sent: 99.9 becomes exactly 0.999 (99.9 / 100 is 0.9990000000000001).
        known = float(Decimal(repr(float(percentage))).scaleb(-2))
        if percentage and percentage == percentage and len(_RATIOS) < _MEMO_LIMIT:
            _RATIOS[percentage] = known
    return known
