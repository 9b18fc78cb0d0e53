"""A pixel's event volume: the `stats` edge's answers -> records, and the volume a dataset publishes.

`GET /{pixel_id}/stats?aggregation=event&event_source=WEB_ONLY|SERVER_ONLY&start_time=…&end_time=…` ("the
number of pixel fires for the top 100 events broken down by hour", at most seven days back; `agent` filters by
partner agent as `agent_name` does for quality). The answer lists one result per hour:
`{"aggregation": "event", "start_time": "2026-12-07T10:00:00+0000", "data": [{"value": "Purchase", "count":
120}, …]}`. Sources: Marketing API reference "Ads Pixel Stats" (parameters, error codes 100 and 80004);
facebook-python-business-sdk `adspixel.py` (`get_stats`), `adspixelstatsresult.py` (aggregation, data,
start_time), `adspixelstats.py` (value, count, event, diagnostics_hourly_last_timestamp).

What a dataset publishes is the newest complete hour per event and source; an event seen in the last week and
absent from that hour is published as 0, not left out, so that "stopped sending" is a value an alert can see.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, NamedTuple

from exporter.common.text import MAX_NAME, bounded, encodable
from exporter.graph.parser import ResponseFormatError

EVENT_SOURCES = {"browser": "WEB_ONLY", "server": "SERVER_ONLY"}  # our label value -> Meta's event_source
HOUR = 3600
LAG = 600  # seconds after an hour ends before it counts as complete: Meta's hourly counts settle first
FIRST_HOURS = 24  # hours asked for when nothing is known of a dataset's volume yet (its events of the day)
LATER_HOURS = 3  # hours asked for afterwards: the newest complete one, and late counts of the two before
REMEMBERED = 7 * 24 * HOUR  # an event seen within this long is published as 0 once it has no volume
MAX_RESULTS = 200  # hourly results read from one answer
MAX_EVENTS = 200  # events per hourly result (Meta lists the top 100) and events remembered per source


class HourlyVolume(NamedTuple):
    """One source's answer: the counts of its newest complete hour, and every event seen in the window."""

    source: str  # browser or server
    hour_start: float
    counts: tuple[tuple[str, int], ...]
    seen: tuple[tuple[str, float, int], ...]  # (event, the newest hour it had volume in, its count then)


class EventVolume(NamedTuple):
    """What a dataset publishes: the newest complete hour's count per event and source, zeros included."""

    hour_start: float
    rows: tuple[tuple[str, str, int], ...]  # (event_name, source, count), sorted
    seen: tuple[tuple[str, str, float, int], ...]  # (event_name, source, last hour with volume, its count): zeros owed


def newest_complete_hour(now: float) -> float:
    return (now - LAG) // HOUR * HOUR - HOUR


def stats_params(source: str, now: float, hours: int, agent_name: str | None) -> dict[str, str]:
    """The query of one source's call: `hours` complete hours up to the newest."""
    end = newest_complete_hour(now) + HOUR
    params = {
        "aggregation": "event",
        "event_source": EVENT_SOURCES[source],
        "start_time": str(int(end - hours * HOUR)),
        "end_time": str(int(end)),
    }
    if agent_name:
        params["agent"] = agent_name
    return params


def parse_event_stats(body: Any, source: str, hour_start: float) -> HourlyVolume:
    """Parse one `stats` answer (aggregation=event). Items that are not the documented shape are skipped; an
    answer that is not a list of results raises ResponseFormatError."""
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        raise ResponseFormatError("", "not a stats answer: no data list")
    counts: dict[str, int] = {}
    seen: dict[str, tuple[float, int]] = {}
    for index, result in enumerate(body["data"][:MAX_RESULTS]):
        if not isinstance(result, dict) or result.get("aggregation", "event") != "event":
            continue
        start = _graph_time(result.get("start_time"))
        items = result.get("data")
        if start is None or not isinstance(items, list):
            raise ResponseFormatError(f"data[{index}]", "expected start_time and a data list")
        for item in items[:MAX_EVENTS]:
            name, count = _item(item)
            if name is None or count is None:
                continue
            if count > 0 and (name in seen or len(seen) < MAX_EVENTS):
                seen[name] = max(seen.get(name, (start, count)), (start, count))
            if start == hour_start and (name in counts or len(counts) < MAX_EVENTS):
                counts[name] = counts.get(name, 0) + count
    return HourlyVolume(
        source, hour_start, tuple(sorted(counts.items())), tuple(sorted((k, *v) for k, v in seen.items()))
    )


def merged_volume(previous: EventVolume | None, fresh: list[HourlyVolume]) -> EventVolume:
    """The volume to publish from this cycle's answers and what earlier cycles saw: every event seen within a
    week has a row, 0 where the newest hour has none. A source that did not answer this time keeps its rows."""
    hour_start = max((v.hour_start for v in fresh), default=previous.hour_start if previous else 0.0)
    answered = {v.source for v in fresh}
    seen: dict[tuple[str, str], tuple[float, int]] = {}
    for event, source, last, count in previous.seen if previous else ():
        if hour_start - last <= REMEMBERED:
            seen[event, source] = (last, count)
    rows: dict[tuple[str, str], int] = {}
    for event, source, count in previous.rows if previous else ():
        if source not in answered:
            rows[event, source] = count
    for volume in fresh:
        for event, last, count in volume.seen:
            seen[event, volume.source] = max(seen.get((event, volume.source), (last, count)), (last, count))
        for event, count in volume.counts:
            rows[event, volume.source] = count
    for source in answered:  # per source, the most recently seen events are remembered
        mine = sorted((k for k in seen if k[1] == source), key=lambda k: -seen[k][0])
        for key in mine[MAX_EVENTS:]:
            del seen[key]
        for key in mine[:MAX_EVENTS]:
            rows.setdefault(key, 0)
    return EventVolume(
        hour_start,
        tuple(sorted((event, source, count) for (event, source), count in rows.items())),
        tuple(sorted((event, source, *last) for (event, source), last in seen.items())),
    )


def _item(item: Any) -> tuple[str | None, int | None]:
    if not isinstance(item, dict):
        return None, None
    name, count = item.get("value"), item.get("count")
    if not isinstance(name, str) or not name:
        return None, None
    if isinstance(count, bool) or not isinstance(count, int | float) or not math.isfinite(count) or count < 0:
        return None, None
    return encodable(bounded(name, MAX_NAME)), int(min(count, 10**15))


def _graph_time(value: Any) -> float | None:
    """Graph's `2026-12-07T10:00:00+0000` as a Unix time; None when absent or not a time."""
    if not isinstance(value, str) or len(value) > 40:
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except ValueError:
        return None
