"""The pixel `stats` edge as the simulator serves it: hourly event counts per event and source.

Meta's reference "Ads Pixel Stats": `GET /{pixel}/stats` with `aggregation` (an enum, default `event`),
`event_source` (WEB_ONLY or SERVER_ONLY), `start_time` and `end_time` (Unix or ISO 8601, up to seven days back)
and `agent`; the answer is a list of results `{aggregation, start_time, data: [{value, count}]}`, one per hour,
paged like other edges. Written apart from the exporter's reading of it (exporter.graph.stats).
"""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime
from typing import Any

AGGREGATIONS = (  # the documented enum
    "browser_type", "custom_data_field", "device_os", "device_type", "event", "host", "match_keys", "had_pii",
    "pixel_fire", "event_detection_method", "url", "event_value_count", "url_by_rule", "event_total_counts",
    "event_source", "event_processing_results",
)  # fmt: skip
EVENT_SOURCES = ("WEB_ONLY", "SERVER_ONLY")
WEEK = 7 * 86400
PAGE = 25  # hourly results per page
# per event: (browser fires per hour, share of them also sent from the server)
RATES = {"PageView": (900, 0.0), "ViewContent": (400, 0.3), "AddToCart": (120, 0.6), "InitiateCheckout": (60, 0.8),
         "Purchase": (40, 0.9), "Lead": (30, 0.9), "CompleteRegistration": (20, 0.8), "Search": (150, 0.2)}  # fmt: skip
# scenario: (the source it hits, the event it hits or None for all, what remains of their counts)
STOPS = {
    "server_purchase_stopped": ("SERVER_ONLY", "Purchase", 0.0),  # a deploy dropped the server's Purchase
    "server_partly_stopped": ("SERVER_ONLY", None, 0.3),  # one checkout path no longer sends from the server
    "browser_stopped": ("WEB_ONLY", None, 0.0),  # the pixel is gone from the site
}


class BadRequest(ValueError):
    """A parameter Meta would refuse with error 100."""


def window(params: dict[str, str], now: float) -> tuple[str, str, int, int]:
    """(aggregation, event_source, start hour, end) from a query, checked as Meta checks it."""
    aggregation = params.get("aggregation", "event")
    if aggregation not in AGGREGATIONS:
        raise BadRequest(f"(#100) Param aggregation must be one of {{{', '.join(AGGREGATIONS)}}}")
    source = params.get("event_source", "")
    if source and source not in EVENT_SOURCES:
        raise BadRequest("(#100) Param event_source must be WEB_ONLY or SERVER_ONLY")
    end = _time(params.get("end_time"), "end_time") if params.get("end_time") else int(now)
    start = _time(params.get("start_time"), "start_time") if params.get("start_time") else end - 86400
    if start >= end:
        raise BadRequest("(#100) start_time must be before end_time")
    if start < now - WEEK or end > now + 3600:
        raise BadRequest("(#100) You can get the data up to seven days from the request time")
    return aggregation, source, start // 3600 * 3600, end


def hourly_results(
    seed: int, pixel_id: str, events: list[str], source: str, start: int, end: int, stopped: dict[str, float]
) -> list[dict[str, Any]]:
    """One result per hour from `start` (oldest first), with each event's fires in that hour. `stopped`: the
    scenarios of this pixel and when they began (their hours count nothing, from the hour before on)."""
    results = []
    for hour in range(start, end, 3600):
        if hour + 3600 > time.time() + 3600:
            break
        data = []
        for event in events:
            count = hourly_count(seed, pixel_id, event, source, hour)
            for scenario, since in stopped.items():
                stop_source, stop_event, remains = STOPS[scenario]
                if stop_source in (source, "") and stop_event in (event, None) and hour >= since // 3600 * 3600 - 7200:
                    count = int(count * remains)
            if count:
                data.append({"value": event, "count": count})
        if data:
            results.append({"aggregation": "event", "start_time": _graph_time(hour), "data": data})
    return results


def hourly_count(seed: int, pixel_id: str, event: str, source: str, hour: int) -> int:
    """How many of `event` the pixel sends from `source` (WEB_ONLY, SERVER_ONLY, or "" for both) in `hour`."""
    browser, server_share = RATES.get(event, (10, 0.5))
    rng = random.Random(f"{seed}:{pixel_id}:{event}:rate")
    scale = rng.choice((0.05, 0.3, 1.0, 3.0))  # small and large shops
    per_hour = browser * scale * (1.0 if source != "SERVER_ONLY" else server_share)
    if source == "":
        per_hour *= 1 + server_share
    daily = 0.6 + 0.8 * abs(((hour // 3600) % 24) - 12) / 12  # quieter at night
    jitter = random.Random(f"{seed}:{pixel_id}:{event}:{source}:{hour}").uniform(0.85, 1.15)
    return int(per_hour * daily * jitter)


def _time(value: str | None, name: str) -> int:
    assert value is not None
    if value.isdigit():
        return int(value)
    try:
        return int(datetime.fromisoformat(value).timestamp())
    except ValueError:
        raise BadRequest(f"(#100) Param {name} must be a Unix or ISO 8601 timestamp") from None


def _graph_time(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S+0000")
