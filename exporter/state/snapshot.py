"""The immutable snapshot that /metrics and /status read: every dataset's state and the exporter's own, as one
cycle's bookkeeping left them. The collection loop swaps a new one in whole (exporter.state.recorder builds it),
so a scrape never sees half a cycle."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from exporter.config.targets import Target
from exporter.graph.parser import DatasetQuality

DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class UsageKey(NamedTuple):
    """One rate-limit usage reading's labels (the `api_usage_ratio` series)."""

    scope: str  # app, business_use_case or ad_account
    object_id: str
    type: str
    resource: str


@dataclass(frozen=True)
class DatasetState:
    target: Target
    quality: DatasetQuality | None  # the last good data, None once stale or before the first success
    fetch_success: bool | None  # None until the first fetch finished
    last_success: float | None
    last_reason: str | None = None
    last_message: str | None = None
    failures: Mapping[str, int] = field(default_factory=dict)
    last_fired: float | None = None
    server_last_fired: float | None = None
    # sources other than the primary one (`offline`): latest success, and failures by (source, reason)
    source_success: Mapping[str, bool] = field(default_factory=dict)
    source_failures: Mapping[tuple[str, str], int] = field(default_factory=dict)
    # the worst event's EMQ as fetched about a day and a week before the last success (exporter.state.recorder)
    worst_emq_day_ago: float | None = None
    worst_emq_week_ago: float | None = None


@dataclass(frozen=True)
class Histogram:
    buckets: tuple[int, ...]  # cumulative counts per DURATION_BUCKETS bound, then +Inf
    total: float
    count: int


@dataclass(frozen=True)
class Snapshot:
    generation: int
    created: float
    datasets: tuple[DatasetState, ...] = ()
    label_names: tuple[str, ...] = ()
    graph_api_version: str = ""
    interval: float = 0.0
    ready: bool = False
    cycle_duration: float | None = None
    last_cycle_end: float | None = None
    cycles: int = 0
    overruns: int = 0
    cycle_done: int = 0
    cycle_total: int = 0
    requests: Mapping[tuple[str, str], int] = field(default_factory=dict)
    durations: Mapping[str, Histogram] = field(default_factory=dict)
    api_errors: Mapping[tuple[str, str], int] = field(default_factory=dict)
    usage: Mapping[UsageKey, float] = field(default_factory=dict)
    reload_success: bool = True
    reload_timestamp: float | None = None
    throttled_until: Mapping[tuple[str, str], float] = field(default_factory=dict)
    discovery: Mapping[str, tuple[bool, float | None]] = field(default_factory=dict)
    tokens: Mapping[str, tuple[bool, float]] = field(default_factory=dict)
    max_series: int = 0
    max_bytes: int = 0
    unsupported_fields: Mapping[str, str] = field(default_factory=dict)  # field -> node type
    values_dropped: int = 0
    cycle_started: float | None = None  # while a cycle runs
    suspended: Mapping[str, str] = field(default_factory=dict)  # credential -> why Meta refuses its token
    discovery_truncated: tuple[str, ...] = ()  # edges whose listing held more than discovery[].max_pixels
    versions_upgraded: tuple[str, ...] = ()  # versions Meta answered with instead of the configured one
    # The exposition, built when the snapshot was published (exporter.exposition.publisher.Exposition); None until then.
    exposition: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Extras:
    """What the loop knows besides fetch results, handed to `publish` as it stands."""

    last_fired: Mapping[str, tuple[float | None, float | None]] = field(default_factory=dict)
    throttled_until: Mapping[tuple[str, str], float] = field(default_factory=dict)
    discovery: Mapping[str, tuple[bool, float | None]] = field(default_factory=dict)
    tokens: Mapping[str, tuple[bool, float]] = field(default_factory=dict)
    max_series: int = 0
    max_bytes: int = 0
    unsupported_fields: Mapping[str, str] = field(default_factory=dict)
    suspended: Mapping[str, str] = field(default_factory=dict)
    versions_upgraded: tuple[str, ...] = ()
    discovery_truncated: tuple[str, ...] = ()
