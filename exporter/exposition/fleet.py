"""What the exporter's own families are: its build, API requests, rate limits, housekeeping and cycles, one
collector class per group, filling `render.Family` writers from a snapshot at every publish. They are small;
the per-dataset families are exporter.exposition.families. Nothing here calls the API.
"""

from __future__ import annotations

import operator
from collections import Counter
from collections.abc import Iterable, Iterator

from prometheus_client.utils import floatToGoString

from exporter import __version__
from exporter.exposition.render import Family, add, counter, gauge, single
from exporter.graph import versions
from exporter.state.snapshot import DURATION_BUCKETS, Snapshot

_ORIGIN = operator.attrgetter("target.origin")


class BuildInfoFamilies:
    """Which build, calling which Graph API version, and when Meta stops serving that version.

    meta_dataset_quality_build_info{version="0.1.0",graph_api_version="v27.0"} 1
    """

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Family]:
        snap = self.snapshot
        build = gauge(
            "build_info",
            "The exporter's version and the Graph API version it calls; always 1.",
            [
                "version",
                "graph_api_version",
            ],
        )
        build.add([__version__, snap.graph_api_version], 1)
        expiry = gauge(
            "graph_api_version_expiry_timestamp_seconds",
            "When Meta stops serving the configured Graph API version to the Marketing API (absent until Meta "
            "names a date).",
            ["version"],
        )
        add(expiry, [snap.graph_api_version], versions.expiry(snap.graph_api_version))
        upgraded = gauge(
            "graph_api_version_upgraded",
            "1 while Meta answers calls for the configured Graph API version with this newer one (it upgrades "
            "calls to an expired version instead of refusing them): the configured version is no longer served.",
            ["version"],
        )
        for version in snap.versions_upgraded:
            upgraded.add([version], 1.0)
        yield from (build, expiry, upgraded)


class ExporterHealthFamilies:
    """The exporter's own health: targets, API requests, rate-limit usage, housekeeping, cycles, reloads.

    meta_dataset_quality_api_requests_total{endpoint="dataset_quality",status="200"} 42
    meta_dataset_quality_cycle_duration_seconds 12.5
    """

    def __init__(self, snapshot: Snapshot, origins: Counter[str] | None = None) -> None:
        self.snapshot = snapshot
        self.origins = origins  # the snapshot's targets by origin, if already counted

    def collect(self) -> Iterator[Family]:
        snap = self.snapshot
        targets = gauge("targets", "Datasets (with agent filter) being watched, by origin.", ["origin"])
        by_origin: dict[str, int] = {"config": 0, "discovery": 0}
        by_origin.update(self.origins if self.origins is not None else origins(snap))
        for origin, count in by_origin.items():
            targets.add([origin], count)
        yield targets
        yield from self._api(snap)
        yield from self._housekeeping(snap)
        yield from self._cycle(snap)

    def _api(self, snap: Snapshot) -> Iterable[Family]:
        requests = counter(
            "api_requests",
            "HTTP requests made to the Graph API, by endpoint and HTTP status (error: no response).",
            ["endpoint", "status"],
        )
        for (endpoint, status), count in sorted(snap.requests.items()):
            requests.add([endpoint, status], count)
        yield requests
        durations = Family(
            "api_request_duration_seconds", "Latency of Graph API requests.", ["endpoint"], kind="histogram"
        )
        bounds = [*(floatToGoString(b) for b in DURATION_BUCKETS), "+Inf"]
        for endpoint, hist in sorted(snap.durations.items()):
            durations.add_histogram([endpoint], zip(bounds, hist.buckets, strict=True), hist.total, hist.count)
        yield durations
        errors = counter(
            "api_errors", "Graph API error objects received, by error.code and reason.", ["code", "reason"]
        )
        for (code, reason), count in sorted(snap.api_errors.items()):
            errors.add([code, reason], count)
        yield errors
        usage = gauge(
            "api_usage_ratio",
            "Latest rate-limit usage from the X-App-Usage, X-Business-Use-Case-Usage and X-Ad-Account-Usage headers.",
            ["scope", "object_id", "type", "resource"],
        )
        for labels, ratio in sorted(snap.usage.items()):
            usage.add(list(labels), ratio)
        yield usage

    def _housekeeping(self, snap: Snapshot) -> Iterable[Family]:
        throttled = gauge(
            "api_throttled_until_timestamp_seconds",
            "While an app or business is throttled: when Meta expects access back.",
            ["scope", "object_id"],
        )
        for (scope, object_id), until in sorted(snap.throttled_until.items()):
            throttled.add(["business_use_case" if scope == "business" else scope, object_id], until)
        success = gauge("discovery_success", "1 if the latest discovery from this source succeeded.", ["source"])
        last = gauge(
            "discovery_last_success_timestamp_seconds", "When discovery from this source last succeeded.", ["source"]
        )
        for source, (ok, when) in sorted(snap.discovery.items()):
            success.add([source], 1.0 if ok else 0.0)
            add(last, [source], when)
        truncated = gauge(
            "discovery_truncated",
            "1 while the latest listing of this source held more pixels than discovery[].max_pixels (the rest are "
            "left out).",
            ["source"],
        )
        for source in snap.discovery_truncated:
            truncated.add([source], 1.0)
        valid = gauge("token_valid", "1 if debug_token says this credential's token is valid.", ["credential"])
        expiry = gauge(
            "token_expiry_timestamp_seconds",
            "When this credential's token expires (debug_token expires_at); 0: never.",
            ["credential"],
        )
        for name, (ok, expires) in sorted(snap.tokens.items()):
            valid.add([name], 1.0 if ok else 0.0)
            expiry.add([name], expires)
        unsupported = gauge(
            "api_field_unsupported",
            "1 while a field Meta answered as nonexisting is left out of requests (until a reload or a day).",
            ["field", "node_type"],
        )
        for name, node_type in sorted(snap.unsupported_fields.items()):
            unsupported.add([name, node_type], 1.0)
        suspended = gauge(
            "credential_suspended",
            "1 while Meta refuses this credential's token and no call uses it; reason: expired, invalid (a new "
            "token is needed), user_action (the user must act on facebook.com) or rejected. Checked again with "
            "back-off; the series goes when Meta accepts the token.",
            ["credential", "reason"],
        )
        for name, reason in sorted(snap.suspended.items()):
            suspended.add([name, reason], 1.0)
        yield from (throttled, success, last, truncated, valid, expiry, unsupported, suspended)

    def _cycle(self, snap: Snapshot) -> Iterable[Family]:
        yield from single(
            "cycle_duration_seconds", "How long the last complete collection cycle took.", snap.cycle_duration
        )
        yield from single("cycle_interval_seconds", "The configured collection interval.", snap.interval)
        yield from single(
            "cycle_started_timestamp_seconds",
            "While a collection cycle runs: when it started (absent between cycles). A cycle that never ends "
            "shows here, not in cycle_duration_seconds.",
            snap.cycle_started,
        )
        yield from single(
            "last_cycle_timestamp_seconds", "When the last collection cycle completed.", snap.last_cycle_end
        )
        yield from single(
            "cycle_progress_ratio",
            "Share of the current cycle's targets already fetched (1 between cycles).",
            snap.cycle_done / snap.cycle_total if snap.cycle_total else 1.0,
        )
        yield from single("cycles", "Collection cycles completed.", snap.cycles, "counter")
        yield from single(
            "response_values_dropped",
            "Values of the wrong type in dataset_quality answers, left out (each logged with its JSON path).",
            snap.values_dropped,
            "counter",
        )
        yield from single("cycle_overruns", "Cycles that took longer than the interval.", snap.overruns, "counter")
        yield from single(
            "config_last_reload_successful",
            "1 if the last configuration reload worked (or none was asked for), 0 if it was refused.",
            1.0 if snap.reload_success else 0.0,
        )
        yield from single(
            "config_last_reload_success_timestamp_seconds",
            "When the configuration was last loaded successfully.",
            snap.reload_timestamp,
        )


def origins(snapshot: Snapshot) -> Counter[str]:
    """The snapshot's targets by origin, counted in C."""
    return Counter(map(_ORIGIN, snapshot.datasets))


def fleet_families(snapshot: Snapshot, dropped: int, by_origin: Counter[str] | None = None) -> list[Family]:
    """The families of the exporter as a whole, `series_dropped` last; `by_origin`: the snapshot's `origins`."""
    return [
        *BuildInfoFamilies(snapshot).collect(),
        *ExporterHealthFamilies(snapshot, by_origin).collect(),
        *single(
            "series_dropped",
            "Quality series left out of the last snapshot by limits.max_series or limits.max_bytes.",
            dropped,
        ),
    ]
