"""How metric families are written: the exposition's lines as bytes, one family at a time.

Each sample becomes its line at once, in a byte buffer, so a fleet's millions of series never exist as
objects. A repeated label set is ignored, so no input can produce a duplicate series; with a budget,
quality series past `limits.max_series` are counted, not written.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
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


class Family:
    """One metric family, rendered as it is filled.

    Each sample becomes its exposition line at once, in a byte buffer, so a fleet's millions of series never
    exist as objects. A repeated label set is ignored; with a budget, quality series beyond it are counted,
    not written.
    """

    def __init__(
        self, name: str, doc: str, labels: list[str], budget: SeriesBudget | None = None, *, kind: str = "gauge"
    ) -> None:
        self.name, self.doc, self.kind, self.labelnames = PREFIX + name, doc, kind, labels
        self.budget = budget
        self.lines = bytearray()
        self.count = 0  # samples written
        self._seen: set[tuple[str, ...]] = set()
        self._orders: dict[int, list[int]] = {}
        self._sample_name = self.name + "_total" if kind == "counter" else self.name

    def new_scope(self) -> None:
        """Label sets of different datasets never collide: forget the ones seen so far (saves memory)."""
        self._seen.clear()

    def add(self, labels: list[str], value: float) -> None:
        key = tuple(labels)
        if key in self._seen:
            return
        self._seen.add(key)  # a repeat is ignored, and never counted as dropped twice
        if self.budget is None or self.budget.take():
            self._write(self._sample_name, self.labelnames, key, value)

    def add_histogram(self, labels: list[str], buckets: Iterable[tuple[str, int]], total: float, count: int) -> None:
        for bound, cumulative in buckets:
            self._write(self.name + "_bucket", [*self.labelnames, "le"], (*labels, bound), cumulative)
        self._write(self.name + "_count", self.labelnames, tuple(labels), count)
        self._write(self.name + "_sum", self.labelnames, tuple(labels), total)

    def _write(self, name: str, names: list[str], values: tuple[str, ...], value: float) -> None:
        if names:
            order = self._orders.get(len(names))
            if order is None:  # label names in sorted order, as Prometheus's own clients write them
                order = self._orders[len(names)] = sorted(range(len(names)), key=names.__getitem__)
            pairs = ",".join(f'{names[i]}="{_escape(values[i])}"' for i in order)
            # "replace": whatever got past the parser, one label value can never make a family unrenderable
            self.lines += f"{name}{{{pairs}}} {floatToGoString(value)}\n".encode("utf-8", "replace")
        else:
            self.lines += f"{name} {floatToGoString(value)}\n".encode()
        self.count += 1

    def freeze(self) -> None:
        """Keep the lines as bytes: expositions then share them instead of copying them."""
        self.lines = bytes(self.lines)  # type: ignore[assignment]
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


def ratio(percentage: float) -> float:
    # A decimal shift of the value as sent, so 99.9 becomes exactly 0.999 (99.9 / 100 is 0.9990000000000001).
    return float(Decimal(repr(percentage)).scaleb(-2))
