"""What the per-dataset metric families are (the metric contract, docs/metrics.md), one class
per group: quality, offline, the dataset's info and its health. Nothing here calls the API.

Each group names its families (`Spec`) and writes one dataset's sample lines at a time, straight from its
records: exporter.exposition.publisher keeps each dataset's lines until its data changes, and a burst cycle at 10,000
datasets writes two million of them. The exporter's own families (build, API, rate limits, cycles) are
exporter.exposition.fleet.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from exporter.exposition.render import (
    NUMBERS,
    SHARES,
    Family,
    number,
    pair,
    pairs,
    sample_start,
    share,
)
from exporter.graph.errors import REASONS
from exporter.state.snapshot import DatasetState

CACHED = "Cached from the last successful fetch."
UPLOAD_INTERVALS = {"real_time": 0.0, "hourly": 3600.0, "daily": 86400.0, "weekly": 604800.0}
DATASET_LABELS = ("dataset_id", "agent_name")
EVENT_LABELS = (*DATASET_LABELS, "event_name")
DIAGNOSTIC_LABELS = ("diagnostic", "name", "description", "solution")


class Spec(NamedTuple):
    """A family's name (without the prefix), help text, label names and type."""

    name: str
    doc: str
    labels: tuple[str, ...]
    kind: str = "gauge"

    def family(self) -> Family:
        """The family with no samples: its header."""
        return Family(self.name, self.doc, list(self.labels), kind=self.kind)

    @property
    def start(self) -> str:
        """How each of its sample lines begins."""
        return sample_start(self.name, self.kind)


Lines = list[list[str]]  # a dataset's sample lines, one list per family of a group, in the group's order


def _pct(field: str, doc: str) -> str:
    return f"{doc} API field {field}, as a ratio (percentage / 100). {CACHED}"


class QualityFamilies:
    """Per-event quality gauges from `web[]`, one family per API field.

    meta_dataset_quality_event_match_quality_score{agent_name="",dataset_id="123",event_name="Purchase"} 7.2
    meta_dataset_quality_match_key_coverage_ratio{...,event_name="Purchase",match_key="email"} 0.999
    meta_dataset_quality_upload_frequency{...,event_name="Lead",upload_frequency="hourly"} 1.0
    """

    specs = (
        Spec(
            "event_match_quality_score",
            f"Event Match Quality, 0 to 10. API field event_match_quality.composite_score. {CACHED}",
            EVENT_LABELS,
        ),
        Spec(
            "match_key_coverage_ratio",
            _pct("match_key_feedback[].coverage.percentage", "Share of events carrying this match key."),
            (*EVENT_LABELS, "match_key"),
        ),
        Spec(
            "match_key_potential_acr_increase_ratio",
            _pct("match_key_feedback[].potential_aly_acr_increase.percentage", "Potential ACR lift from this key."),
            (*EVENT_LABELS, "match_key"),
        ),
        Spec(
            "diagnostic_affected_events",
            f"Events affected by the diagnostic. API field diagnostics[].affected_event_count. {CACHED}",
            (*EVENT_LABELS, "diagnostic"),
        ),
        Spec(
            "diagnostic_events",
            f"Events checked by the diagnostic. API field diagnostics[].total_event_count. {CACHED}",
            (*EVENT_LABELS, "diagnostic"),
        ),
        Spec(
            "diagnostic_affected_ratio",
            _pct("diagnostics[].percentage", "Share of events affected by the diagnostic."),
            (*EVENT_LABELS, "diagnostic"),
        ),
        Spec(
            "event_coverage_ratio",
            _pct("event_coverage.percentage", "Share of Pixel events covered by the Conversions API (7 days)."),
            EVENT_LABELS,
        ),
        Spec(
            "event_coverage_goal_ratio",
            _pct("event_coverage.goal_percentage", "Meta's goal for event coverage."),
            EVENT_LABELS,
        ),
        Spec(
            "event_coverage_potential_acr_increase_ratio",
            _pct("event_coverage.potential_aly_acr_increase.percentage", "Potential ACR lift from coverage."),
            EVENT_LABELS,
        ),
        Spec(
            "dedupe_key_browser_events_ratio",
            _pct("browser_events_with_dedupe_key.percentage", "Share of browser events with this dedupe key."),
            (*EVENT_LABELS, "dedupe_key"),
        ),
        Spec(
            "dedupe_key_server_events_ratio",
            _pct("server_events_with_dedupe_key.percentage", "Share of server events with this dedupe key."),
            (*EVENT_LABELS, "dedupe_key"),
        ),
        Spec(
            "dedupe_key_browser_coverage_ratio",
            _pct("overall_browser_coverage_from_dedupe_key.percentage", "Browser events deduplicated by this key."),
            (*EVENT_LABELS, "dedupe_key"),
        ),
        Spec(
            "upload_frequency",
            f"1 for the current upload frequency, 0 for the other known ones. API field "
            f"data_freshness.upload_frequency. {CACHED}",
            (*EVENT_LABELS, "upload_frequency"),
        ),
        Spec(
            "upload_interval_seconds",
            f"Upload frequency as seconds between uploads (real_time 0). API field data_freshness.upload_frequency. "
            f"{CACHED}",
            EVENT_LABELS,
        ),
        Spec(
            "acr_ratio",
            _pct("acr.percentage", "Additional conversions reported thanks to the Conversions API (7 days)."),
            EVENT_LABELS,
        ),
        Spec(
            "event_potential_acr_increase_ratio",
            _pct("event_potential_aly_acr_increase.percentage", "Potential ACR lift for an event not yet sent."),
            EVENT_LABELS,
        ),
    )
    _starts = tuple(spec.start for spec in specs)
    _frequencies = tuple((known, pair("upload_frequency", known)) for known in UPLOAD_INTERVALS)

    @classmethod
    def lines(cls, state: DatasetState) -> Lines:
        """The dataset's lines: written in one pass over its events, each value formatted once (the hot path of
        a publish). Labels are sorted by name: `diagnostic` and `dedupe_key` go between the dataset's labels
        and `event_name`, `match_key` and `upload_frequency` after it."""
        out: Lines = [[] for _ in cls.specs]
        if state.quality is None:
            return out
        (emq, key_cov, key_acr, affected, checked, diag_share, coverage, goal, coverage_acr, browser, server,
         both, frequency, interval, acr, event_acr) = (lines.append for lines in out)  # fmt: skip
        (emq_at, key_cov_at, key_acr_at, affected_at, checked_at, diag_share_at, coverage_at, goal_at,
         coverage_acr_at, browser_at, server_at, both_at, frequency_at, interval_at, acr_at,
         event_acr_at) = cls._starts  # fmt: skip
        as_number, as_share = NUMBERS.get, SHARES.get  # a miss (or a zero) falls through to number/share
        dataset = dataset_pairs(state)
        for event in state.quality.events:
            event_pair = pair("event_name", event.event_name)
            labels = f"{dataset},{event_pair}"
            end = labels + "} "
            if (v := event.composite_score) is not None:
                emq(f"{emq_at}{end}{as_number(v) or number(v)}\n")
            for key in event.match_keys:
                key_end = f"{labels},{pair('match_key', key.identifier)}}} "
                if (v := key.coverage) is not None:
                    key_cov(f"{key_cov_at}{key_end}{as_share(v) or share(v)}\n")
                if (v := key.potential_acr_increase) is not None:
                    key_acr(f"{key_acr_at}{key_end}{as_share(v) or share(v)}\n")
            for diag in event.diagnostics:
                diag_end = f"{dataset},{pair('diagnostic', diag.slug)},{event_pair}}} "
                if (v := diag.affected_event_count) is not None:
                    affected(f"{affected_at}{diag_end}{as_number(v) or number(v)}\n")
                if (v := diag.total_event_count) is not None:
                    checked(f"{checked_at}{diag_end}{as_number(v) or number(v)}\n")
                if (v := diag.percentage) is not None:
                    diag_share(f"{diag_share_at}{diag_end}{as_share(v) or share(v)}\n")
            if (v := event.coverage) is not None:
                coverage(f"{coverage_at}{end}{as_share(v) or share(v)}\n")
            if (v := event.coverage_goal) is not None:
                goal(f"{goal_at}{end}{as_share(v) or share(v)}\n")
            if (v := event.coverage_potential_acr_increase) is not None:
                coverage_acr(f"{coverage_acr_at}{end}{as_share(v) or share(v)}\n")
            for dedupe in event.dedupe_keys:
                key_end = f"{dataset},{pair('dedupe_key', dedupe.dedupe_key)},{event_pair}}} "
                if (v := dedupe.browser_events) is not None:
                    browser(f"{browser_at}{key_end}{as_share(v) or share(v)}\n")
                if (v := dedupe.server_events) is not None:
                    server(f"{server_at}{key_end}{as_share(v) or share(v)}\n")
                if (v := dedupe.browser_coverage) is not None:
                    both(f"{both_at}{key_end}{as_share(v) or share(v)}\n")
            current = event.upload_frequency
            if current is not None:
                for known, known_pair in cls._frequencies:
                    frequency(f"{frequency_at}{labels},{known_pair}}} {'1.0' if known == current else '0.0'}\n")
                if current in UPLOAD_INTERVALS:
                    interval(f"{interval_at}{end}{number(UPLOAD_INTERVALS[current])}\n")
                else:  # an unknown value gets its own series, and no interval
                    frequency(f"{frequency_at}{labels},{pair('upload_frequency', current)}}} 1.0\n")
            if (v := event.acr) is not None:
                acr(f"{acr_at}{end}{as_share(v) or share(v)}\n")
            if (v := event.potential_acr_increase) is not None:
                event_acr(f"{event_acr_at}{end}{as_share(v) or share(v)}\n")
        events = state.quality.events
        if _distinct(events, _EVENT_NAME) and all(map(_keys_distinct, events)):
            return out  # the parser's records always: no label set twice
        return [_first_of_each(lines) for lines in out]


class OfflineFamilies:
    """Beta offline-event scores (only present when the `offline` source is enabled).

    meta_dataset_quality_offline_composite_score{agent_name="",dataset_id="123",event_name="Purchase"} 8.7
    meta_dataset_quality_offline_match_key_coverage_ratio{...,event_name="Purchase",match_key="email"} 0.88
    """

    specs = (
        *(
            Spec(
                f"offline_{name}_score",
                f"Offline events (beta), 28-day score 0 to 10. API field offline[].{name}.score. {CACHED}",
                EVENT_LABELS,
            )
            for name in ("composite", "match_key", "frequency", "freshness")
        ),
        Spec(
            "offline_match_key_coverage_ratio",
            f"Offline events (beta): match key coverage as a ratio. API field offline[].match_key.coverage. {CACHED}",
            (*EVENT_LABELS, "match_key"),
        ),
    )
    _starts = tuple(spec.start for spec in specs)

    @classmethod
    def lines(cls, state: DatasetState) -> Lines:
        out: Lines = [[] for _ in cls.specs]
        if state.quality is None or not state.quality.offline:
            return out
        composite, match_key, frequency, freshness, coverage = out
        composite_at, match_key_at, frequency_at, freshness_at, coverage_at = cls._starts
        dataset = dataset_pairs(state)
        for event in state.quality.offline:
            labels = f"{dataset},{pair('event_name', event.event_name)}"
            for lines, start, value in (
                (composite, composite_at, event.composite_score),
                (match_key, match_key_at, event.match_key_score),
                (frequency, frequency_at, event.frequency_score),
                (freshness, freshness_at, event.freshness_score),
            ):
                if value is not None:
                    lines.append(f"{start}{labels}}} {number(value)}\n")
            for key, value in event.match_key_coverage:
                coverage.append(f"{coverage_at}{labels},{pair('match_key', key)}}} {share(value)}\n")
        offline = state.quality.offline
        if not _distinct(offline, _EVENT_NAME) or not all(_distinct(e.match_key_coverage, _FIRST) for e in offline):
            return [_first_of_each(lines) for lines in out]
        return out


class DatasetInfoFamilies:
    """Descriptive series of a dataset: which dataset, which diagnostics, when its pixel last fired.

    meta_dataset_quality_dataset_last_fired_timestamp_seconds{dataset_id="123"} 1.7e+09
    meta_dataset_quality_dataset_info{business_id="9",business_name="Acme",customer="acme",dataset_id="123",...} 1.0
    meta_dataset_quality_diagnostic_info{description="...",diagnostic="server_sending_mismatched_ip_addresses",...} 1.0

    A dataset watched with several agent filters is described once, and a diagnostic's text is the first seen
    for its slug: exporter.exposition.publisher picks those across the fleet.
    """

    @staticmethod
    def specs(label_names: tuple[str, ...]) -> tuple[Spec, ...]:
        return (
            Spec(
                "dataset_last_fired_timestamp_seconds",
                "When the pixel last received an event (pixel field last_fired_time), where known.",
                ("dataset_id",),
            ),
            Spec(
                "dataset_server_last_fired_timestamp_seconds",
                "When the dataset last received a server (Conversions API) event (server_last_fired_time), where "
                "known.",
                ("dataset_id",),
            ),
            Spec(
                "dataset_info",
                "A watched dataset, with its name, business and the user's labels; always 1.",
                ("dataset_id", "dataset_name", "business_id", "business_name", "origin", *label_names),
            ),
            Spec(
                "diagnostic_info",
                "A diagnostic seen in the fleet, with Meta's title, description and solution text; always 1.",
                ("diagnostic", "name", "description", "solution"),
            ),
        )

    @staticmethod
    def lines(state: DatasetState, label_names: tuple[str, ...]) -> tuple[Lines, list[tuple[str, str]]]:
        """The lines, and the diagnostic_info lines as (slug, line), the first of each slug."""
        fired_at, server_fired_at, info_at, diagnostic_at = _INFO_STARTS
        t = state.target
        dataset = pair("dataset_id", t.dataset_id)
        fired = [f"{fired_at}{dataset}}} {number(state.last_fired)}\n"] if state.last_fired is not None else []
        server_fired = (
            [f"{server_fired_at}{dataset}}} {number(state.server_last_fired)}\n"]
            if state.server_last_fired is not None
            else []
        )
        own = dict(t.labels)
        info = pairs(
            ("dataset_id", "dataset_name", "business_id", "business_name", "origin", *label_names),
            (t.dataset_id, t.name, t.business_id, t.business_name, t.origin, *(own.get(n, "") for n in label_names)),
        )
        diagnostics: dict[str, str] = {}
        for event in state.quality.events if state.quality else ():
            for diag in event.diagnostics:
                if diag.slug not in diagnostics:  # the first text seen for a slug wins
                    text = pairs(DIAGNOSTIC_LABELS, (diag.slug, diag.name, diag.description, diag.solution))
                    diagnostics[diag.slug] = f"{diagnostic_at}{text}}} 1.0\n"
        described = list(diagnostics.items())
        return [fired, server_fired, [f"{info_at}{info}}} 1.0\n"], [line for _, line in described]], described


_INFO_STARTS = tuple(spec.start for spec in DatasetInfoFamilies.specs(()))


class DatasetHealthFamilies:
    """Fetch outcomes per dataset (and per source besides web, which alone sets fetch_success).

    meta_dataset_quality_fetch_success{agent_name="",dataset_id="123"} 1.0
    meta_dataset_quality_fetch_failures_total{agent_name="",dataset_id="123",reason="auth"} 0.0
    meta_dataset_quality_source_fetch_success{agent_name="",dataset_id="123",source="offline"} 0.0
    meta_dataset_quality_target_info{agent_name="",credential="default",dataset_id="123"} 1.0
    """

    specs = (
        Spec("fetch_success", "1 if the latest fetch of this dataset succeeded, else 0.", DATASET_LABELS),
        Spec(
            "last_success_timestamp_seconds",
            "When this dataset's data was last fetched successfully.",
            DATASET_LABELS,
        ),
        Spec("fetch_failures", "Failed fetches of this dataset, by reason.", (*DATASET_LABELS, "reason"), "counter"),
        Spec(
            "source_fetch_success",
            "1 if the latest fetch of this source (offline) succeeded.",
            (*DATASET_LABELS, "source"),
        ),
        Spec(
            "source_fetch_failures",
            "Failed fetches of this source (offline), by reason.",
            (*DATASET_LABELS, "source", "reason"),
            "counter",
        ),
        Spec(
            "target_info",
            "The credential (its name in the config) this dataset is fetched with; always 1.",
            (*DATASET_LABELS, "credential"),
        ),
    )
    _starts = tuple(spec.start for spec in specs)

    @classmethod
    def lines(cls, state: DatasetState) -> Lines:
        success_at, last_at, failures_at, source_success_at, source_failures_at, target_at = cls._starts
        dataset = dataset_pairs(state)
        success = [] if state.fetch_success is None else [f"{success_at}{dataset}}} {_flag(state.fetch_success)}\n"]
        last = [] if state.last_success is None else [f"{last_at}{dataset}}} {number(state.last_success)}\n"]
        failures = [  # `reason` sorts after the dataset's labels
            f"{failures_at}{dataset},{reason}}} {number(state.failures.get(name, 0))}\n" for name, reason in _REASONS
        ]
        source_success = [
            f"{source_success_at}{dataset},{pair('source', source)}}} {_flag(ok)}\n"
            for source, ok in sorted(state.source_success.items())
        ]
        source_failures = [
            f"{source_failures_at}{dataset},{pair('reason', reason)},{pair('source', source)}}} {number(count)}\n"
            for (source, reason), count in sorted(state.source_failures.items())
        ]
        t = state.target  # labels in name order, as everywhere: credential sorts between the dataset's two
        credential = (
            f"{pair('agent_name', t.agent_name)},{pair('credential', t.credential)},{pair('dataset_id', t.dataset_id)}"
        )
        target = [f"{target_at}{credential}}} 1.0\n"]
        return [success, last, failures, source_success, source_failures, target]


def dataset_headers(label_names: tuple[str, ...]) -> tuple[list[Family], list[Family], list[Family]]:
    """The per-dataset families with no samples, in order (quality, offline, the rest): their headers."""
    rest = (*DatasetInfoFamilies.specs(label_names), *DatasetHealthFamilies.specs)
    return (
        [s.family() for s in QualityFamilies.specs],
        [s.family() for s in OfflineFamilies.specs],
        [s.family() for s in rest],
    )


def dataset_pairs(state: DatasetState) -> str:
    return f"{pair('agent_name', state.target.agent_name)},{pair('dataset_id', state.target.dataset_id)}"


def _flag(ok: bool) -> str:
    return "1.0" if ok else "0.0"


def _distinct(records: Sequence[Any], key: Callable[[Any], Any]) -> bool:
    return len(records) < 2 or len(set(map(key, records))) == len(records)


def _keys_distinct(event: Any) -> bool:
    return (
        _distinct(event.match_keys, _IDENTIFIER)
        and _distinct(event.diagnostics, _SLUG)
        and _distinct(event.dedupe_keys, _DEDUPE)
    )


def _first_of_each(lines: list[str]) -> list[str]:
    """The first line of each label set: records the parser did not build may repeat a key. A line's labels
    end at its last `} `, since the number after them holds neither character."""
    seen: set[str] = set()
    kept = []
    for line in lines:
        labels = line.rpartition("} ")[0]
        if labels not in seen:
            seen.add(labels)
            kept.append(line)
    return kept


_EVENT_NAME = operator.attrgetter("event_name")
_IDENTIFIER = operator.attrgetter("identifier")
_SLUG = operator.attrgetter("slug")
_DEDUPE = operator.attrgetter("dedupe_key")
_FIRST = operator.itemgetter(0)
_REASONS = [(name, pair("reason", name)) for name in REASONS]
