"""Dataset Quality API response JSON -> immutable typed records.

Every block is optional and unknown fields are ignored. A value of the wrong type (a percentage sent as the
string `"37.9"`, a score that is `true`) costs that value only: it is left out where it is found, in one pass,
and named by its path in `DatasetQuality.dropped`. Anything else that is not the documented shape raises
`ResponseFormatError`, which names the path of the offending value (e.g. `web[2]: expected an object, got str`).
What one answer can cost is bounded: events, items of each list, and the length of every string kept.
Percentages stay as the API sends them (0..100); converting to ratios is the exposition's job.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, NamedTuple

from exporter.common.text import MAX_NAME, bounded, encodable

if TYPE_CHECKING:
    from exporter.graph.stats import EventVolume


class ResponseFormatError(ValueError):
    """The API answered with something that is not the documented shape."""

    def __init__(self, path: str, problem: str, *, leaf: bool = False) -> None:
        super().__init__(f"{path or '<root>'}: {problem}")
        self.path = path
        self.problem = problem
        self.leaf = leaf  # a single value of the wrong type: the rest of the answer can still be read


MAX_DROPPED = 100  # wrongly typed values left out of one answer before it counts as not the documented shape
MAX_EVENTS = 1000  # events of one answer (Meta lists a dataset's events: tens; the rest are left out, said so)
MAX_ITEMS = 200  # match keys, diagnostics or dedupe keys of one event
MAX_TEXT = 2000  # characters of Meta's descriptive texts (a diagnostic's description and solution)
_DROPPED: ContextVar[list[str] | None] = ContextVar("dropped", default=None)  # the answer being parsed


# The records of one answer are named tuples rather than frozen dataclasses: a burst at 10,000 datasets builds
# about 700,000 of them, and a named tuple is built in one call where a frozen dataclass sets each field through
# object.__setattr__ (the parser takes about 13 % less time). They are as immutable, and read the same way.
class MatchKey(NamedTuple):
    identifier: str
    coverage: float | None = None
    potential_acr_increase: float | None = None


class Diagnostic(NamedTuple):
    slug: str
    name: str
    description: str = ""
    solution: str = ""
    percentage: float | None = None
    affected_event_count: float | None = None
    total_event_count: float | None = None


class DedupeKey(NamedTuple):
    dedupe_key: str
    browser_events: float | None = None
    server_events: float | None = None
    browser_coverage: float | None = None


class EventQuality(NamedTuple):
    event_name: str
    composite_score: float | None = None
    match_keys: tuple[MatchKey, ...] = ()
    diagnostics: tuple[Diagnostic, ...] = ()
    coverage: float | None = None
    coverage_goal: float | None = None
    coverage_potential_acr_increase: float | None = None
    dedupe_keys: tuple[DedupeKey, ...] = ()
    upload_frequency: str | None = None
    acr: float | None = None
    potential_acr_increase: float | None = None


class OfflineEvent(NamedTuple):
    event_name: str
    composite_score: float | None = None
    match_key_score: float | None = None
    frequency_score: float | None = None
    freshness_score: float | None = None
    match_key_coverage: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True, slots=True)
class DatasetQuality:
    events: tuple[EventQuality, ...] = ()
    offline: tuple[OfflineEvent, ...] = ()
    warnings: tuple[str, ...] = field(default=(), compare=False)
    dropped: tuple[str, ...] = field(default=(), compare=False)  # "path: problem" of each value left out
    volume: EventVolume | None = None  # from the pixel's `stats` edge, where that source is on (graph.stats)


@lru_cache(maxsize=4096)  # a fleet's diagnostics share a handful of titles
def diagnostic_slug(name: str) -> str:
    """A stable label value for a diagnostic title: lowercase, runs of non-alphanumerics become `_`."""
    return sys.intern(re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "unnamed")


def parse_dataset_quality(body: Any) -> DatasetQuality:
    """Parse a decoded `dataset_quality` response (`web` and/or `offline`), in one pass."""
    dropped: list[str] = []
    token = _DROPPED.set(dropped)
    try:
        quality = _parse(body)
    finally:
        _DROPPED.reset(token)
    if dropped:
        quality = DatasetQuality(quality.events, quality.offline, quality.warnings, tuple(dropped))
    return quality


def _leaf(path: str, problem: str) -> None:
    """A value of the wrong type, or one too many: left out, and named in `dropped`."""
    dropped = _DROPPED.get()
    if dropped is None:  # outside parse_dataset_quality
        raise ResponseFormatError(path, problem, leaf=True)
    if len(dropped) >= MAX_DROPPED:
        raise ResponseFormatError(path, f"{problem} (and {MAX_DROPPED} values of the wrong type before it)")
    dropped.append(f"{path or '<root>'}: {problem}")


def _parse(body: Any) -> DatasetQuality:
    root = _obj(body, "")
    if "web" not in root and "offline" not in root and set(root) - {"id"}:
        raise ResponseFormatError("", f"not a dataset_quality answer: no web or offline, but {', '.join(sorted(root))}")
    warnings: list[str] = []
    events: dict[str, EventQuality] = {}
    for i, item in enumerate(_list(root, "web", "")):
        if i == MAX_EVENTS:
            _leaf("web", f"more than {MAX_EVENTS} events; the rest are left out")
            break
        event = _event(_obj(item, f"web[{i}]"), f"web[{i}]", warnings)
        if event.event_name in events:
            warnings.append(f"web[{i}]: event {event.event_name!r} appears twice; merged into the first")
            event = _merge_events(events[event.event_name], event)
        events[event.event_name] = event
    offline: dict[str, OfflineEvent] = {}
    for i, item in enumerate(_list(root, "offline", "")):
        if i == MAX_EVENTS:
            _leaf("offline", f"more than {MAX_EVENTS} events; the rest are left out")
            break
        record = _offline(_obj(item, f"offline[{i}]"), f"offline[{i}]")
        if record.event_name in offline:
            warnings.append(f"offline[{i}]: event {record.event_name!r} appears twice; kept the first")
            continue
        offline[record.event_name] = record
    return DatasetQuality(tuple(events.values()), tuple(offline.values()), tuple(warnings))


# ----- blocks ------------------------------------------------------------------------------------------------
def _event(obj: dict[str, Any], path: str, warnings: list[str]) -> EventQuality:
    name = _str(obj, "event_name", path, required=True)
    assert name is not None
    emq = _opt_obj(obj, "event_match_quality", path)
    emq_path = f"{path}.event_match_quality"
    match_keys = diagnostics = ()
    score = None
    if emq is not None:
        score = _num(emq, "composite_score", emq_path, SCORE)
        match_keys = _unique(emq, "match_key_feedback", emq_path, _match_key, warnings)
        diagnostics = _unique(emq, "diagnostics", emq_path, _diagnostic, warnings)
    coverage = _opt_obj(obj, "event_coverage", path)
    cov_path = f"{path}.event_coverage"
    dedupe_field = "dedupe_key_feedback" if "dedupe_key_feedback" in obj else "dedup_key_feedback"
    dedupe = _unique(obj, dedupe_field, path, _dedupe_key, warnings)
    freshness = _opt_obj(obj, "data_freshness", path)
    return EventQuality(
        event_name=name,
        composite_score=score,
        match_keys=match_keys,
        diagnostics=diagnostics,
        coverage=_num(coverage, "percentage", cov_path) if coverage else None,
        coverage_goal=_num(coverage, "goal_percentage", cov_path) if coverage else None,
        coverage_potential_acr_increase=_percentage(coverage, "potential_aly_acr_increase", cov_path, LIFT)
        if coverage
        else None,
        dedupe_keys=dedupe,
        upload_frequency=_str(freshness, "upload_frequency", f"{path}.data_freshness") if freshness else None,
        acr=_percentage(obj, "acr", path, LIFT),
        potential_acr_increase=_percentage(obj, "event_potential_aly_acr_increase", path, LIFT),
    )


def _match_key(obj: dict[str, Any], path: str) -> MatchKey:
    return MatchKey(
        identifier=_str(obj, "identifier", path, required=True) or "",
        coverage=_percentage(obj, "coverage", path),
        potential_acr_increase=_percentage(obj, "potential_aly_acr_increase", path, LIFT),
    )


def _diagnostic(obj: dict[str, Any], path: str) -> Diagnostic:
    name = _str(obj, "name", path, required=True) or ""
    return Diagnostic(
        slug=diagnostic_slug(name),
        name=name,
        description=_str(obj, "description", path, limit=MAX_TEXT) or "",
        solution=_str(obj, "solution", path, limit=MAX_TEXT) or "",
        percentage=_num(obj, "percentage", path),
        affected_event_count=_num(obj, "affected_event_count", path, COUNT),
        total_event_count=_num(obj, "total_event_count", path, COUNT),
    )


def _dedupe_key(obj: dict[str, Any], path: str) -> DedupeKey:
    return DedupeKey(
        dedupe_key=_str(obj, "dedupe_key", path, required=True) or "",
        browser_events=_percentage(obj, "browser_events_with_dedupe_key", path),
        server_events=_percentage(obj, "server_events_with_dedupe_key", path),
        browser_coverage=_percentage(obj, "overall_browser_coverage_from_dedupe_key", path),
    )


def _offline(obj: dict[str, Any], path: str) -> OfflineEvent:
    name = _str(obj, "event_name", path, required=True) or ""
    match_key = _opt_obj(obj, "match_key", path)
    coverage = _opt_obj(match_key, "coverage", f"{path}.match_key") if match_key else None
    pairs: list[tuple[str, float]] = []
    for key in sorted(coverage or {})[:MAX_ITEMS]:
        value = _num(coverage, key, f"{path}.match_key.coverage")
        if value is not None:
            pairs.append((encodable(bounded(key, MAX_NAME)), value))
    return OfflineEvent(
        event_name=name,
        composite_score=_score(obj, "composite", path),
        match_key_score=_score(obj, "match_key", path),
        frequency_score=_score(obj, "frequency", path),
        freshness_score=_score(obj, "freshness", path),
        match_key_coverage=tuple(pairs),
    )


def _merge_events(first: EventQuality, second: EventQuality) -> EventQuality:
    """Fill what the first occurrence lacks from the second; list blocks keep first-seen keys."""
    merged: list[Any] = []
    a: Any
    b: Any
    for a, b in zip(first, second, strict=True):
        if isinstance(a, tuple):
            seen = {_key(x) for x in a}
            merged.append(a + tuple(x for x in b if _key(x) not in seen))
        else:
            merged.append(a if a is not None else b)
    return EventQuality(*merged)


def _key(item: MatchKey | Diagnostic | DedupeKey) -> str:
    kind = type(item)
    if kind is MatchKey:
        return item.identifier  # type: ignore[union-attr]
    return item.slug if kind is Diagnostic else item.dedupe_key  # type: ignore[union-attr]


def _unique(
    parent: dict[str, Any],
    key: str,
    path: str,
    parse: Callable[[dict[str, Any], str], MatchKey | Diagnostic | DedupeKey],
    warnings: list[str],
) -> tuple[Any, ...]:
    """Parse the list `parent[key]` with `parse`, keeping the first item for each key (`_key`)."""
    items = _list(parent, key, path)
    if not items:
        return ()
    list_path = f"{path}.{key}"
    out: dict[str, Any] = {}
    dropped = _DROPPED.get()
    for i, item in enumerate(items):
        if i == MAX_ITEMS:
            _leaf(list_path, f"more than {MAX_ITEMS} items; the rest are left out")
            break
        before = len(dropped) if dropped is not None else 0
        try:  # items parse with paths relative to themselves: the full path is only built for an error
            record = parse(_obj(item, ""), "")
        except ResponseFormatError as exc:
            raise ResponseFormatError(f"{list_path}[{i}]{exc.path}", exc.problem, leaf=exc.leaf) from None
        if dropped is not None and len(dropped) > before:  # what the item left out, named by its whole path
            dropped[before:] = [f"{list_path}[{i}]{entry}" for entry in dropped[before:]]
        k = _key(record)
        if k in out:
            warnings.append(f"{list_path}: {k!r} appears twice; kept the first")
            continue
        out[k] = record
    return tuple(out.values())


# ----- typed access --------------------------------------------------------------------------------------
def _describe(value: Any) -> str:
    return type(value).__name__ if value is not None else "null"


def _obj(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ResponseFormatError(path, f"expected an object, got {_describe(value)}")
    return value


def _opt_obj(parent: dict[str, Any] | None, key: str, path: str) -> dict[str, Any] | None:
    value = None if parent is None else parent.get(key)
    if value is None or type(value) is dict:
        return value
    _leaf(f"{path}.{key}" if path else key, f"expected an object, got {_describe(value)}")
    return None


def _list(parent: dict[str, Any], key: str, path: str) -> list[Any]:
    value = parent.get(key)
    if value is None:
        return []
    if not isinstance(value, list):  # a list inside an event is one value; `web` itself is the whole answer
        problem = f"expected a list, got {_describe(value)}"
        if not path:
            raise ResponseFormatError(key, problem)
        _leaf(f"{path}.{key}", problem)
        return []
    return value


def _str(
    parent: dict[str, Any] | None, key: str, path: str, required: bool = False, limit: int = MAX_NAME
) -> str | None:
    """A string field, cut to `limit` characters; interned, because label values and Meta's texts repeat across
    a fleet. A lone surrogate (legal JSON, `"\\ud800"`) cannot be written as UTF-8: it becomes U+FFFD here, where
    strings enter."""
    value = None if parent is None else parent.get(key)
    if type(value) is str and value:
        if len(value) > limit:
            value = bounded(value, limit)
        return sys.intern(value if value.isascii() else encodable(value))
    if value is None:
        if required:
            raise ResponseFormatError(f"{path}.{key}", "missing")
        return None
    if not isinstance(value, str):
        if required:
            raise ResponseFormatError(f"{path}.{key}", f"expected a string, got {_describe(value)}")
        _leaf(f"{path}.{key}", f"expected a string, got {_describe(value)}")
        return None
    if required and not value:
        raise ResponseFormatError(f"{path}.{key}", "empty")
    return sys.intern(value)


# The documented ranges: shares are percentages of events (0..100), scores 0..10, counts from 0. Lifts
# (ACR and potential increases) are percentages of conversions and may pass 100; ten times that is no lift.
SHARE, SCORE, COUNT, LIFT = (0.0, 100.0), (0.0, 10.0), (0.0, math.inf), (0.0, 1000.0)


def _num(parent: dict[str, Any] | None, key: str, path: str, bounds: tuple[float, float] = SHARE) -> float | None:
    value = None if parent is None else parent.get(key)
    if value is None:
        return None
    kind = type(value)
    if kind is float:
        if not math.isfinite(value):
            _leaf(f"{path}.{key}", f"expected a finite number, got {value!r}")
            return None
    elif kind is int:
        try:
            value = float(value)
        except OverflowError:
            _leaf(f"{path}.{key}", "number too large")
            return None
    else:
        shown = repr(value) if isinstance(value, str | bool) else _describe(value)
        _leaf(f"{path}.{key}", f"expected a number, got {shown[:40]}")
        return None
    low, high = bounds
    if not low <= value <= high:
        _leaf(f"{path}.{key}", f"{value:g} is outside its range {low:g} to {high:g}")
        return None
    return value


def _percentage(
    parent: dict[str, Any] | None, key: str, path: str, bounds: tuple[float, float] = SHARE
) -> float | None:
    block = None if parent is None else parent.get(key)
    if block is None:
        return None
    if type(block) is not dict:
        _leaf(f"{path}.{key}", f"expected an object, got {_describe(block)}")
        return None
    value = block.get("percentage")
    if type(value) is float and bounds[0] <= value <= bounds[1]:
        return value  # the common case, without building the path that only an error needs
    return _num(block, "percentage", f"{path}.{key}", bounds)


def _score(parent: dict[str, Any], key: str, path: str) -> float | None:
    block = _opt_obj(parent, key, path)
    return _num(block, "score", f"{path}.{key}", SCORE) if block is not None else None
