"""The recorder the collection loop fills as answers come, and freezes into a Snapshot at each publish.

Mutable and used from the collection loop's thread only; `publish()` builds a new immutable Snapshot, reusing a
dataset's state object while nothing about it changed (the publisher then skips it by identity).
"""

from __future__ import annotations

import bisect
import math
import time
from array import array
from collections import Counter
from collections.abc import Callable
from types import MappingProxyType

from exporter.common.text import scrub
from exporter.config.targets import Target
from exporter.graph.errors import REASONS
from exporter.graph.parser import DatasetQuality
from exporter.graph.ratelimit import RateLimitUsage
from exporter.state.snapshot import DURATION_BUCKETS, DatasetState, Extras, Histogram, Snapshot, UsageKey

HOURS_KEPT = 8 * 24  # hourly samples of each target's worst EMQ, for /status's change over a day and a week
USAGE_KEPT_INTERVALS = 2  # rate-limit usage not seen again for this many intervals is dropped
MAX_USAGE_SERIES = 1000  # usage readings kept at once (the least recently seen goes): headers can name anything
MAX_ERROR_CODES = 64  # Graph error codes counted apart; a new one beyond these is counted as "other"


class _Trend:
    """A target's worst EMQ once an hour for eight days, in a ring of 4-byte floats (NaN where none was fetched):
    about 800 bytes a target, whatever the interval."""

    __slots__ = ("hour", "values")

    def __init__(self) -> None:
        self.values = array("f", [math.nan]) * HOURS_KEPT
        self.hour = -1

    def add(self, now: float, worst: float | None) -> None:
        hour = int(now // 3600)
        for skipped in range(max(self.hour + 1, hour - HOURS_KEPT + 1), hour):  # hours with no fetch forget theirs
            self.values[skipped % HOURS_KEPT] = math.nan
        self.values[hour % HOURS_KEPT] = math.nan if worst is None else worst
        self.hour = max(self.hour, hour)

    def ago(self, now: float, hours: int) -> float | None:
        """The value about `hours` ago: that hour's, or the nearest within two hours (intervals over an hour)."""
        target = int(now // 3600) - hours
        for hour in (target, target - 1, target + 1, target - 2, target + 2):
            if 0 < self.hour - hour < HOURS_KEPT and not math.isnan(value := self.values[hour % HOURS_KEPT]):
                return round(float(value), 2)
        return None


class _TargetRecord:
    __slots__ = (
        "changed",
        "failures",
        "last_message",
        "last_reason",
        "last_success",
        "published",
        "quality",
        "source_failures",
        "source_success",
        "success",
        "trend",
    )

    def __init__(self) -> None:
        self.quality: DatasetQuality | None = None
        self.success: bool | None = None
        self.last_success: float | None = None
        self.last_reason: str | None = None
        self.last_message: str | None = None
        self.failures: Counter[str] = Counter({reason: 0 for reason in REASONS})
        self.source_success: dict[str, bool] = {}
        self.source_failures: Counter[tuple[str, str]] = Counter()
        self.published: DatasetState | None = None  # kept while nothing changes: the publisher skips it by identity
        self.changed = True
        self.trend = _Trend()


class Recorder:
    """Accumulates what the loop learns; implements the Graph client's RequestObserver."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._now = clock
        self._records: dict[tuple[str, str], _TargetRecord] = {}
        self._requests: Counter[tuple[str, str]] = Counter()
        self._durations: dict[str, list[float]] = {}
        self._api_errors: Counter[tuple[str, str]] = Counter()
        self._usage: dict[UsageKey, tuple[float, float]] = {}  # key -> (ratio, when seen)
        self._generation = 0
        self.cycles = 0
        self.overruns = 0
        self.cycle_duration: float | None = None
        self.last_cycle_end: float | None = None
        self.cycle_done = 0
        self.cycle_total = 0
        self.reload_success = True
        self.reload_timestamp: float | None = None
        self.values_dropped = 0
        self.cycle_started: float | None = None

    # ----- RequestObserver -------------------------------------------------------------------------------
    def on_request(self, endpoint: str, status: str, seconds: float) -> None:
        self._requests[endpoint, status] += 1
        counts = self._durations.setdefault(endpoint, [0.0] * (len(DURATION_BUCKETS) + 2))
        counts[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1
        counts[-1] += seconds

    def on_graph_error(self, code: int, reason: str) -> None:
        key = (str(code), reason)
        if key not in self._api_errors and len(self._api_errors) >= MAX_ERROR_CODES:
            key = ("other", reason)
        self._api_errors[key] += 1

    def on_usage(self, usage: RateLimitUsage) -> None:
        now = self._now()
        for s in usage.samples:
            key = UsageKey(s.scope, s.object_id, s.type, s.resource)
            self._usage.pop(key, None)  # re-inserted last: the dict is ordered from least to most recently seen
            self._usage[key] = (s.ratio, now)
        while len(self._usage) > MAX_USAGE_SERIES:
            del self._usage[next(iter(self._usage))]

    # ----- results ---------------------------------------------------------------------------------------
    def _record(self, target: Target) -> _TargetRecord:
        record = self._records.setdefault(target.key, _TargetRecord())
        record.changed = True
        return record

    def success(self, target: Target, quality: DatasetQuality) -> None:
        record = self._record(target)
        record.quality, record.success, record.last_success = quality, True, self._now()
        scores = [e.composite_score for e in quality.events if e.composite_score is not None]
        record.trend.add(record.last_success, min(scores) if scores else None)
        record.last_reason = record.last_message = None

    def failure(self, target: Target, reason: str, message: str) -> None:
        record = self._record(target)
        record.success, record.last_reason, record.last_message = False, reason, scrub(message)
        record.failures[reason] += 1

    def source_outcome(
        self, target: Target, source: str, reason: str | None, message: str | None, *, asked: bool = True
    ) -> None:
        """The outcome of a source other than the primary one; `reason` None for a success. A source that was
        not `asked` (Meta refuses all its fields) is no success, and no failure to count either."""
        record = self._record(target)
        record.source_success[source] = asked and reason is None
        if not record.source_failures:
            record.source_failures.update({(source, r): 0 for r in REASONS})
        if reason is not None:
            record.source_failures[source, reason] += 1

    def quality_of(self, target: Target) -> DatasetQuality | None:
        record = self._records.get(target.key)
        return record.quality if record else None

    def forget_except(self, keys: set[tuple[str, str]]) -> None:
        """Drop the state of targets no longer watched (after a reload)."""
        for key in set(self._records) - keys:
            del self._records[key]

    def _recent_usage(self, since: float) -> dict[UsageKey, float]:
        """Usage of apps and businesses still called: one no longer called (a removed credential or dataset)
        leaves after two intervals, rather than holding MetaDatasetAPIUsageHigh on forever."""
        for key in [k for k, (_, seen) in self._usage.items() if seen < since]:
            del self._usage[key]
        return {key: ratio for key, (ratio, _) in self._usage.items()}

    # ----- publishing ------------------------------------------------------------------------------------
    def publish(
        self,
        targets: tuple[Target, ...],
        *,
        stale_after: float,
        label_names: tuple[str, ...],
        graph_api_version: str,
        interval: float,
        extras: Extras | None = None,
    ) -> Snapshot:
        now = self._now()
        extras = extras or Extras()
        states = []
        for target in targets:
            record = self._records.get(target.key) or self._records.setdefault(target.key, _TargetRecord())
            quality = record.quality
            if record.success is False and record.last_success is not None and now - record.last_success > stale_after:
                quality = None  # no success for longer than stale_after: its quality series disappear
            fired = extras.last_fired.get(target.dataset_id, (None, None))
            kept = record.published
            if (
                not record.changed
                and kept is not None
                and kept.target is target
                and kept.quality is quality
                and (kept.last_fired, kept.server_last_fired) == fired
            ):
                states.append(kept)  # the same object: nothing about this target changed since the last publish
                continue
            record.changed = False
            record.published = DatasetState(
                target,
                quality,
                record.success,
                record.last_success,
                record.last_reason,
                record.last_message,
                MappingProxyType(dict(record.failures)),
                *fired,
                MappingProxyType(dict(record.source_success)),
                MappingProxyType(dict(record.source_failures)),
                record.trend.ago(now, 24),
                record.trend.ago(now, 7 * 24),
            )
            states.append(record.published)
        self._generation += 1
        return Snapshot(
            generation=self._generation,
            created=now,
            datasets=tuple(states),
            label_names=label_names,
            graph_api_version=graph_api_version,
            interval=interval,
            ready=self.cycles > 0,
            cycle_duration=self.cycle_duration,
            last_cycle_end=self.last_cycle_end,
            cycles=self.cycles,
            overruns=self.overruns,
            cycle_done=self.cycle_done,
            cycle_total=self.cycle_total,
            requests=MappingProxyType(dict(self._requests)),
            durations=MappingProxyType({e: _histogram(c) for e, c in self._durations.items()}),
            api_errors=MappingProxyType(dict(self._api_errors)),
            usage=MappingProxyType(self._recent_usage(now - USAGE_KEPT_INTERVALS * interval)),
            reload_success=self.reload_success,
            reload_timestamp=self.reload_timestamp,
            throttled_until=MappingProxyType(dict(extras.throttled_until)),
            discovery=MappingProxyType(dict(extras.discovery)),
            tokens=MappingProxyType(dict(extras.tokens)),
            max_series=extras.max_series,
            max_bytes=extras.max_bytes,
            unsupported_fields=MappingProxyType(dict(extras.unsupported_fields)),
            values_dropped=self.values_dropped,
            cycle_started=self.cycle_started,
            suspended=MappingProxyType(dict(extras.suspended)),
            versions_upgraded=extras.versions_upgraded,
            discovery_truncated=extras.discovery_truncated,
        )


def _histogram(counts: list[float]) -> Histogram:
    cumulative, running = [], 0
    for value in counts[:-1]:
        running += int(value)
        cumulative.append(running)
    return Histogram(tuple(cumulative), counts[-1], running)
