"""The `fields` expansion the exporter asks for, built from the enabled blocks."""

from __future__ import annotations

from collections.abc import Iterable

BLOCKS = (
    "event_match_quality",
    "match_key_feedback",
    "diagnostics",
    "event_coverage",
    "dedupe_key_feedback",
    "data_freshness",
    "acr",
    "event_potential_aly_acr_increase",
)
SOURCES = ("web", "offline")

_PCT = "{percentage}"
_EMQ_PARTS = {
    "event_match_quality": "composite_score",
    "match_key_feedback": f"match_key_feedback{{identifier,coverage{_PCT},potential_aly_acr_increase{_PCT}}}",
    "diagnostics": "diagnostics{name,description,solution,percentage,affected_event_count,total_event_count}",
}
_EVENT_PARTS = {
    "event_coverage": f"event_coverage{{percentage,goal_percentage,potential_aly_acr_increase{_PCT}}}",
    "dedupe_key_feedback": "dedupe_key_feedback{dedupe_key,"
    f"browser_events_with_dedupe_key{_PCT},server_events_with_dedupe_key{_PCT},"
    f"overall_browser_coverage_from_dedupe_key{_PCT}}}",
    "data_freshness": "data_freshness{upload_frequency}",
    "acr": f"acr{_PCT}",
    "event_potential_aly_acr_increase": f"event_potential_aly_acr_increase{_PCT}",
}
OFFLINE_FIELDS = "offline{event_name,composite{score},match_key{score,coverage},frequency{score},freshness{score}}"


def web_fields(blocks: Iterable[str]) -> str:
    """`web{event_name,...}` asking for exactly the enabled blocks (unknown block names raise ValueError)."""
    enabled = set(blocks)
    unknown = enabled - set(BLOCKS)
    if unknown:
        raise ValueError(f"unknown blocks: {', '.join(sorted(unknown))}")
    emq = [part for name, part in _EMQ_PARTS.items() if name in enabled]
    parts = ["event_name"]
    if emq:
        parts.append(f"event_match_quality{{{','.join(emq)}}}")
    parts += [part for name, part in _EVENT_PARTS.items() if name in enabled]
    return f"web{{{','.join(parts)}}}"
