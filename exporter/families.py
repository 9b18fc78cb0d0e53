"""What the metric families are: the metric contract (../shared/reference/metrics.md), one collector class per
group, each filling `render.Family` writers from the snapshot it is given. Nothing here calls the API.

The groups split along what a publish can reuse: the per-dataset collectors (quality, offline, the
dataset's info and health) read only the datasets of the snapshot they are given, so exporter.exposition runs
them one dataset at a time and keeps each dataset's lines until its data changes; the fleet collectors
(build, API, rate limits, cycles) are small and run at every publish.
"""

from __future__ import annotations

import operator
from collections import Counter
from collections.abc import Iterable, Iterator

from prometheus_client.utils import floatToGoString

from exporter import __version__
from exporter.graph import versions
from exporter.graph.errors import REASONS
from exporter.parser import EventQuality
from exporter.render import Family, SeriesBudget, add, add_pairs, counter, gauge, pair, pairs, single
from exporter.snapshot import DURATION_BUCKETS, Snapshot

CACHED = "Cached from the last successful fetch."
UPLOAD_INTERVALS = {"real_time": 0.0, "hourly": 3600.0, "daily": 86400.0, "weekly": 604800.0}
EVENT_LABELS = ["dataset_id", "agent_name", "event_name"]


class _QualitySeries:
    """A group of quality families; their series count against the snapshot's series budget."""

    def __init__(self, snapshot: Snapshot, budget: SeriesBudget | None = None) -> None:
        self.snapshot = snapshot
        self.budget = budget or SeriesBudget(0)

    def gauge(self, name: str, doc: str, labels: list[str]) -> Family:
        return gauge(name, doc, labels, self.budget)


class QualityCollector(_QualitySeries):
    """Per-event quality gauges from `web[]`, one family per API field.

    meta_dataset_quality_event_match_quality_score{dataset_id="123",agent_name="",event_name="Purchase"} 7.2
    meta_dataset_quality_match_key_coverage_ratio{dataset_id="123",...,match_key="email"} 0.999
    meta_dataset_quality_upload_frequency{dataset_id="123",agent_name="",event_name="Lead",upload_frequency="hourly"} 1
    """

    def collect(self) -> Iterator[Family]:
        gauge = self.gauge

        def pct(field: str, doc: str) -> str:
            return f"{doc} API field {field}, as a ratio (percentage / 100). {CACHED}"

        f = {
            "emq": gauge(
                "event_match_quality_score",
                f"Event Match Quality, 0 to 10. API field event_match_quality.composite_score. {CACHED}",
                EVENT_LABELS,
            ),
            "key_cov": gauge(
                "match_key_coverage_ratio",
                pct("match_key_feedback[].coverage.percentage", "Share of events carrying this match key."),
                [*EVENT_LABELS, "match_key"],
            ),
            "key_acr": gauge(
                "match_key_potential_acr_increase_ratio",
                pct("match_key_feedback[].potential_aly_acr_increase.percentage", "Potential ACR lift from this key."),
                [*EVENT_LABELS, "match_key"],
            ),
            "diag_affected": gauge(
                "diagnostic_affected_events",
                f"Events affected by the diagnostic. API field diagnostics[].affected_event_count. {CACHED}",
                [*EVENT_LABELS, "diagnostic"],
            ),
            "diag_total": gauge(
                "diagnostic_events",
                f"Events checked by the diagnostic. API field diagnostics[].total_event_count. {CACHED}",
                [*EVENT_LABELS, "diagnostic"],
            ),
            "diag_ratio": gauge(
                "diagnostic_affected_ratio",
                pct("diagnostics[].percentage", "Share of events affected by the diagnostic."),
                [*EVENT_LABELS, "diagnostic"],
            ),
            "coverage": gauge(
                "event_coverage_ratio",
                pct("event_coverage.percentage", "Share of Pixel events covered by the Conversions API (7 days)."),
                EVENT_LABELS,
            ),
            "coverage_goal": gauge(
                "event_coverage_goal_ratio",
                pct("event_coverage.goal_percentage", "Meta's goal for event coverage."),
                EVENT_LABELS,
            ),
            "coverage_acr": gauge(
                "event_coverage_potential_acr_increase_ratio",
                pct("event_coverage.potential_aly_acr_increase.percentage", "Potential ACR lift from coverage."),
                EVENT_LABELS,
            ),
            "dedupe_browser": gauge(
                "dedupe_key_browser_events_ratio",
                pct("browser_events_with_dedupe_key.percentage", "Share of browser events with this dedupe key."),
                [*EVENT_LABELS, "dedupe_key"],
            ),
            "dedupe_server": gauge(
                "dedupe_key_server_events_ratio",
                pct("server_events_with_dedupe_key.percentage", "Share of server events with this dedupe key."),
                [*EVENT_LABELS, "dedupe_key"],
            ),
            "dedupe_coverage": gauge(
                "dedupe_key_browser_coverage_ratio",
                pct("overall_browser_coverage_from_dedupe_key.percentage", "Browser events deduplicated by this key."),
                [*EVENT_LABELS, "dedupe_key"],
            ),
            "frequency": gauge(
                "upload_frequency",
                f"1 for the current upload frequency, 0 for the other known ones. API field "
                f"data_freshness.upload_frequency. {CACHED}",
                [*EVENT_LABELS, "upload_frequency"],
            ),
            "interval": gauge(
                "upload_interval_seconds",
                f"Upload frequency as seconds between uploads (real_time 0). API field "
                f"data_freshness.upload_frequency. {CACHED}",
                EVENT_LABELS,
            ),
            "acr": gauge(
                "acr_ratio",
                pct("acr.percentage", "Additional conversions reported thanks to the Conversions API (7 days)."),
                EVENT_LABELS,
            ),
            "event_acr": gauge(
                "event_potential_acr_increase_ratio",
                pct("event_potential_aly_acr_increase.percentage", "Potential ACR lift for an event not yet sent."),
                EVENT_LABELS,
            ),
        }
        for state in self.snapshot.datasets:
            if state.quality is None:
                continue
            samples: dict[str, list[Sample]] = {key: [] for key in f}
            dataset = pairs(EVENT_LABELS[:2], [state.target.dataset_id, state.target.agent_name])
            for event in state.quality.events:
                _event_samples(samples, dataset, pair("event_name", event.event_name), event)
            for key, family in f.items():
                family.new_scope()
                family.add_values(samples[key], percent=key in PERCENT_FIELDS)
        yield from f.values()


Sample = tuple[str, float | None]  # (label pairs, value)
PERCENT_FIELDS = frozenset(
    {"key_cov", "key_acr", "diag_ratio", "coverage", "coverage_goal", "coverage_acr", "acr", "event_acr"}
    | {"dedupe_browser", "dedupe_server", "dedupe_coverage"}
)


def _event_samples(samples: dict[str, list[Sample]], dataset: str, event_pair: str, event: EventQuality) -> None:
    """One event's samples, by family. `dataset` (agent_name, dataset_id) and `event_pair` are written once;
    the labels are sorted by name, so `diagnostic` and `dedupe_key` go between them and `match_key` after."""
    labels = f"{dataset},{event_pair}"
    samples["emq"].append((labels, event.composite_score))
    key_cov, key_acr = samples["key_cov"].append, samples["key_acr"].append
    for key in event.match_keys:
        key_labels = f"{labels},{pair('match_key', key.identifier)}"
        key_cov((key_labels, key.coverage))
        key_acr((key_labels, key.potential_acr_increase))
    affected, total, share = samples["diag_affected"].append, samples["diag_total"].append, samples["diag_ratio"].append
    for diag in event.diagnostics:
        diag_labels = f"{dataset},{pair('diagnostic', diag.slug)},{event_pair}"
        affected((diag_labels, diag.affected_event_count))
        total((diag_labels, diag.total_event_count))
        share((diag_labels, diag.percentage))
    samples["coverage"].append((labels, event.coverage))
    samples["coverage_goal"].append((labels, event.coverage_goal))
    samples["coverage_acr"].append((labels, event.coverage_potential_acr_increase))
    browser, server, both = (samples[k].append for k in ("dedupe_browser", "dedupe_server", "dedupe_coverage"))
    for dedupe in event.dedupe_keys:
        key_labels = f"{dataset},{pair('dedupe_key', dedupe.dedupe_key)},{event_pair}"
        browser((key_labels, dedupe.browser_events))
        server((key_labels, dedupe.server_events))
        both((key_labels, dedupe.browser_coverage))
    current = event.upload_frequency
    if current is not None:
        frequency = samples["frequency"].append
        for known in UPLOAD_INTERVALS:
            frequency((f'{labels},upload_frequency="{known}"', 1.0 if known == current else 0.0))
        if current not in UPLOAD_INTERVALS:  # an unknown value gets its own series
            frequency((f"{labels},{pair('upload_frequency', current)}", 1.0))
        samples["interval"].append((labels, UPLOAD_INTERVALS.get(current)))
    samples["acr"].append((labels, event.acr))
    samples["event_acr"].append((labels, event.potential_acr_increase))


class OfflineCollector(_QualitySeries):
    """Beta offline-event scores (only present when the `offline` source is enabled).

    meta_dataset_quality_offline_composite_score{dataset_id="123",agent_name="",event_name="Purchase"} 8.7
    meta_dataset_quality_offline_match_key_coverage_ratio{...,event_name="Purchase",match_key="email"} 0.88
    """

    def collect(self) -> Iterator[Family]:
        gauge = self.gauge

        def score(name: str, field: str) -> Family:
            doc = f"Offline events (beta), 28-day score 0 to 10. API field offline[].{field}.score. {CACHED}"
            return gauge(f"offline_{name}_score", doc, EVENT_LABELS)

        composite, match_key = score("composite", "composite"), score("match_key", "match_key")
        frequency, freshness = score("frequency", "frequency"), score("freshness", "freshness")
        coverage = gauge(
            "offline_match_key_coverage_ratio",
            f"Offline events (beta): match key coverage as a ratio. API field offline[].match_key.coverage. {CACHED}",
            [*EVENT_LABELS, "match_key"],
        )
        offline = (composite, match_key, frequency, freshness, coverage)
        for state in self.snapshot.datasets:
            if state.quality is None:
                continue
            for family in offline:
                family.new_scope()
            dataset = pairs(EVENT_LABELS[:2], [state.target.dataset_id, state.target.agent_name])
            for event in state.quality.offline:
                labels = f"{dataset},{pair('event_name', event.event_name)}"
                add_pairs(composite, labels, event.composite_score)
                add_pairs(match_key, labels, event.match_key_score)
                add_pairs(frequency, labels, event.frequency_score)
                add_pairs(freshness, labels, event.freshness_score)
                for key, value in event.match_key_coverage:
                    add_pairs(coverage, f"{labels},{pair('match_key', key)}", value, percent=True)
        yield from offline


class DatasetInfoCollector:
    """Descriptive series of datasets: which datasets, which diagnostics, when their pixels last fired.

    meta_dataset_quality_dataset_info{dataset_id="123",dataset_name="Acme",...,origin="config",customer="acme"} 1
    meta_dataset_quality_diagnostic_info{diagnostic="server_sending_mismatched_ip_addresses",name="...",...} 1
    meta_dataset_quality_build_info{version="0.1.0",graph_api_version="v25.0"} 1
    """

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Family]:
        snap = self.snapshot
        names = ["dataset_id", "dataset_name", "business_id", "business_name", "origin", *snap.label_names]
        info = gauge(
            "dataset_info", "A watched dataset, with its name, business and the user's labels; always 1.", names
        )
        diagnostics = gauge(
            "diagnostic_info",
            "A diagnostic seen in the fleet, with Meta's title, description and solution text; always 1.",
            ["diagnostic", "name", "description", "solution"],
        )
        seen_datasets: set[str] = set()
        seen_diagnostics: set[str] = set()
        for state in snap.datasets:
            t = state.target
            if t.dataset_id not in seen_datasets:  # one info series per dataset, whatever its agent filters
                seen_datasets.add(t.dataset_id)
                own = dict(t.labels)
                info.add(
                    [t.dataset_id, t.name, t.business_id, t.business_name, t.origin]
                    + [own.get(n, "") for n in snap.label_names],
                    1,
                )
            for event in state.quality.events if state.quality else ():
                for diag in event.diagnostics:
                    if diag.slug not in seen_diagnostics:  # the first text seen for a slug wins
                        seen_diagnostics.add(diag.slug)
                        diagnostics.add([diag.slug, diag.name, diag.description, diag.solution], 1)
        fired = gauge(
            "dataset_last_fired_timestamp_seconds",
            "When the pixel last received an event (pixel field last_fired_time), where known.",
            ["dataset_id"],
        )
        server_fired = gauge(
            "dataset_server_last_fired_timestamp_seconds",
            "When the dataset last received a server (Conversions API) event (server_last_fired_time), where known.",
            ["dataset_id"],
        )
        for state in snap.datasets:
            add(fired, [state.target.dataset_id], state.last_fired)
            add(server_fired, [state.target.dataset_id], state.server_last_fired)
        yield from (fired, server_fired, info, diagnostics)


class BuildCollector:
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
        yield from (build, expiry)


_REASONS = [(name, pair("reason", name)) for name in REASONS]
_ORIGIN = operator.attrgetter("target.origin")


class DatasetHealthCollector:
    """Fetch outcomes per dataset (and per source besides web).

    meta_dataset_quality_fetch_success{dataset_id="123",agent_name=""} 1
    meta_dataset_quality_fetch_failures_total{dataset_id="123",agent_name="",reason="auth"} 0
    meta_dataset_quality_source_fetch_success{dataset_id="123",agent_name="",source="offline"} 0
    """

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Family]:
        snap = self.snapshot
        key = ["dataset_id", "agent_name"]
        success = gauge("fetch_success", "1 if the latest fetch of this dataset succeeded, else 0.", key)
        last = gauge("last_success_timestamp_seconds", "When this dataset's data was last fetched successfully.", key)
        failures = counter("fetch_failures", "Failed fetches of this dataset, by reason.", [*key, "reason"])
        for state in snap.datasets:
            dataset = pairs(key, [state.target.dataset_id, state.target.agent_name])
            if state.fetch_success is not None:
                success.add_pairs(dataset, 1.0 if state.fetch_success else 0.0)
            add_pairs(last, dataset, state.last_success)
            # `reason` sorts after the dataset's labels
            failures.add_values([(f"{dataset},{reason}", state.failures.get(name, 0)) for name, reason in _REASONS])
        yield from (success, last, failures)
        yield from self._other_sources(snap)

    def _other_sources(self, snap: Snapshot) -> Iterable[Family]:
        """Sources besides web (the offline beta) succeed and fail on their own; web alone sets fetch_success."""
        key = ["dataset_id", "agent_name", "source"]
        success = gauge("source_fetch_success", "1 if the latest fetch of this source (offline) succeeded.", key)
        failures = counter(
            "source_fetch_failures", "Failed fetches of this source (offline), by reason.", [*key, "reason"]
        )
        for state in snap.datasets:
            labels = [state.target.dataset_id, state.target.agent_name]
            for source, ok in sorted(state.source_success.items()):
                success.add([*labels, source], 1.0 if ok else 0.0)
            for (source, reason), count in sorted(state.source_failures.items()):
                failures.add([*labels, source, reason], count)
        yield from (success, failures)


class FleetHealthCollector:
    """The exporter's own health: targets, API requests, rate-limit usage, housekeeping, cycles, reloads.

    meta_dataset_quality_api_requests_total{endpoint="dataset_quality",status="200"} 42
    meta_dataset_quality_cycle_duration_seconds 12.5
    """

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Family]:
        snap = self.snapshot
        targets = gauge("targets", "Datasets (with agent filter) being watched, by origin.", ["origin"])
        by_origin: dict[str, int] = {"config": 0, "discovery": 0}
        by_origin.update(Counter(map(_ORIGIN, snap.datasets)))  # counted in C: it runs at every publish
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
        yield from (throttled, success, last, valid, expiry, unsupported)

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


def dataset_families(snapshot: Snapshot, budget: SeriesBudget) -> tuple[list[Family], list[Family], list[Family]]:
    """The per-dataset families of the snapshot's datasets: (quality, offline, the rest), each in order. Quality
    and offline series count against `budget`."""
    quality = list(QualityCollector(snapshot, budget).collect())
    offline = list(OfflineCollector(snapshot, budget).collect())
    rest = [*DatasetInfoCollector(snapshot).collect(), *DatasetHealthCollector(snapshot).collect()]
    return quality, offline, rest


def fleet_families(snapshot: Snapshot, dropped: int) -> list[Family]:
    """The families of the exporter as a whole, `series_dropped` last."""
    return [
        *BuildCollector(snapshot).collect(),
        *FleetHealthCollector(snapshot).collect(),
        *single("series_dropped", "Quality series left out of the last snapshot by limits.max_series.", dropped),
    ]
