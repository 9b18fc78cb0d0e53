"""The pixel's stats edge: the query, the parse, the zeros an event that stopped is owed, over loopback too."""

from __future__ import annotations

import time
from urllib.parse import parse_qs, urlsplit

import pytest

from exporter.collect.scheduler import Scheduler
from exporter.config.settings import ConfigError, Secrets, validate
from exporter.exposition.publisher import render
from exporter.graph.parser import ResponseFormatError
from exporter.graph.stats import (
    HOUR,
    LAG,
    REMEMBERED,
    EventVolume,
    HourlyVolume,
    merged_volume,
    newest_complete_hour,
    parse_event_stats,
    stats_params,
)
from tests.conftest import TOKEN, graph_get, run_cycle

H = 1_765_101_600.0  # 2025-12-07T10:00:00Z, an hour's start


def graph_time(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+0000", time.gmtime(seconds))


def answer(*hours: tuple[float, dict[str, int]]) -> dict:
    return {
        "data": [
            {
                "aggregation": "event",
                "start_time": graph_time(start),
                "data": [{"value": k, "count": v} for k, v in counts.items()],
            }
            for start, counts in hours
        ]
    }


def test_the_query_asks_for_complete_hours_of_one_source_and_the_agent():
    now = H + 2 * HOUR + LAG + 1  # 12:10:01: the 11:00 hour is complete and settled
    assert newest_complete_hour(now) == H + HOUR
    params = stats_params("server", now, 3, "acmeplatform")
    assert params == {
        "aggregation": "event",
        "event_source": "SERVER_ONLY",
        "start_time": str(int(H - HOUR)),
        "end_time": str(int(H + 2 * HOUR)),
        "agent": "acmeplatform",
    }
    assert newest_complete_hour(H + 2 * HOUR + LAG - 1) == H  # 12:09:59: 11:00 is not settled yet
    assert "agent" not in stats_params("browser", now, 1, None)


def test_the_newest_hour_is_counted_and_every_hour_tells_what_was_seen():
    body = answer((H - HOUR, {"Purchase": 3, "Lead": 2}), (H, {"Purchase": 5, "AddToCart": 0}))
    volume = parse_event_stats(body, "server", H)
    assert volume.counts == (("AddToCart", 0), ("Purchase", 5))
    assert volume.seen == (("Lead", H - HOUR, 2), ("Purchase", H, 5))  # a count of 0 is not a sighting


def test_items_that_are_not_the_documented_shape_are_skipped_and_a_body_that_is_not_raises():
    body = answer((H, {"Purchase": 5}))
    body["data"][0]["data"] += [{"value": "Lead", "count": "7"}, {"value": "", "count": 1}, {"count": 2}, "x",
                                {"value": "Big", "count": 1e300}, {"value": "Neg", "count": -1}]  # fmt: skip
    body["data"].append(
        {"aggregation": "device_os", "start_time": graph_time(H), "data": [{"value": "iOS", "count": 9}]}
    )
    volume = parse_event_stats(body, "browser", H)
    assert dict(volume.counts) == {"Purchase": 5, "Big": 10**15}
    for bad in ([], {"data": {}}, {"data": [{"start_time": "yesterday", "data": []}]}):
        with pytest.raises(ResponseFormatError):
            parse_event_stats(bad, "browser", H)


def test_an_answer_holds_at_most_so_many_events():
    body = answer((H, {f"E{n}": 1 for n in range(5000)}))
    volume = parse_event_stats(body, "browser", H)
    assert len(volume.counts) == 200 and len(volume.seen) == 200


def test_an_event_seen_in_the_week_is_zero_when_the_newest_hour_has_none():
    first = merged_volume(
        None, [HourlyVolume("server", H, (("Purchase", 5),), (("Lead", H - HOUR, 2), ("Purchase", H, 5)))]
    )
    assert first.rows == (("Lead", "server", 0), ("Purchase", "server", 5))
    later = merged_volume(first, [HourlyVolume("server", H + HOUR, (), ())])  # the server sent nothing since
    assert later.rows == (("Lead", "server", 0), ("Purchase", "server", 0)) and later.hour_start == H + HOUR
    forgotten = merged_volume(later, [HourlyVolume("server", H + REMEMBERED + HOUR, (), ())])
    assert forgotten.rows == ()  # a week without a sighting: no longer owed a zero


def test_a_source_that_did_not_answer_keeps_its_rows():
    both = merged_volume(
        None,
        [
            HourlyVolume("server", H, (("Purchase", 5),), (("Purchase", H, 5),)),
            HourlyVolume("browser", H, (("Purchase", 7),), (("Purchase", H, 7),)),
        ],
    )
    only_browser = merged_volume(
        both, [HourlyVolume("browser", H + HOUR, (("Purchase", 8),), (("Purchase", H + HOUR, 8),))]
    )
    assert only_browser.rows == (("Purchase", "browser", 8), ("Purchase", "server", 5))


def test_what_a_dataset_remembers_is_bounded():
    seen = tuple((f"E{n}", H - n, 1) for n in range(300))
    volume = merged_volume(EventVolume(H, (), ()), [HourlyVolume("server", H, (), seen[:200])])
    volume = merged_volume(volume, [HourlyVolume("server", H, (), seen[200:])])
    assert len(volume.rows) == 200 and ("E0", "server", 0) in volume.rows  # the most recently seen stay


def test_stats_goes_with_a_quality_source():
    validate({"collection": {"sources": ["web", "stats"]}}, "t.yaml")
    with pytest.raises(ConfigError, match="stats goes with web or offline"):
        validate({"collection": {"sources": ["stats"]}}, "t.yaml")


# ----- over loopback, against the simulator ----------------------------------------------------------------------
def test_the_simulator_refuses_what_meta_refuses(simulator):
    pixel = simulator.world.dataset_ids[1]
    now = int(time.time())
    for params in ({"aggregation": "events"}, {"event_source": "SERVER"},
                   {"start_time": str(now - 8 * 86400), "end_time": str(now)}, {"start_time": "yesterday"}):  # fmt: skip
        status, _, body = graph_get(simulator, f"{pixel}/stats", **params)
        assert status == 400 and body["error"]["code"] == 100, params
    status, _, body = graph_get(simulator, f"{pixel}/stats", aggregation="event", event_source="WEB_ONLY",
                                start_time=str(now - 7 * 86400 + 60), end_time=str(now))  # fmt: skip
    assert status == 200 and len(body["data"]) == 25 and "next" in body["paging"]  # a week is paged
    assert all(r["aggregation"] == "event" and r["start_time"].endswith("+0000") for r in body["data"])
    assert graph_get(simulator, "123/stats")[2]["error"]["code"] == 100  # no such pixel: (#100) as for a node


def config_for(sim, datasets, **collection):
    raw = {
        "graph_api": {"base_url": sim.url, "timeout": "5s", "max_retries": 0},
        "collection": {"interval": "1h", "sources": ["web", "stats"], **collection},
        "datasets": datasets,
    }
    return validate(raw, "test.yaml")


def test_stats_calls_are_batched_with_the_quality_calls_and_carry_the_agent(start_simulator):
    sim = start_simulator(datasets=10)
    ids = sim.world.dataset_ids[1:4]
    datasets = [{"id": i} for i in ids] + [{"id": ids[0], "agent_name": "acmeplatform"}]
    snap = run_cycle(Scheduler(config_for(sim, datasets), Secrets({"default": TOKEN})))
    assert all(s.fetch_success for s in snap.datasets)
    items = [r.removeprefix("BATCH-ITEM ") for r in sim.requests if r.startswith("BATCH-ITEM")]
    stats = [urlsplit(i) for i in items if "/stats?" in i]
    assert len(items) == 4 * 3 and len(stats) == 4 * 2  # one batch: a quality and two stats calls per target
    sources = sorted(parse_qs(u.query)["event_source"][0] for u in stats)
    assert sources == ["SERVER_ONLY"] * 4 + ["WEB_ONLY"] * 4
    agents = [parse_qs(u.query).get("agent") for u in stats]
    assert agents.count(["acmeplatform"]) == 2 and agents.count(None) == 6
    first = parse_qs(stats[0].query)
    assert int(first["end_time"][0]) - int(first["start_time"][0]) == 24 * HOUR  # nothing known yet: a day
    exposition = render(snap).decode()
    assert f'events_received_hour_start_timestamp_seconds{{agent_name="",dataset_id="{ids[1]}"}}' in exposition


def test_a_server_event_that_stops_is_published_as_zero_and_the_others_are_left_alone(start_simulator):
    sim = start_simulator(datasets=30)
    with_purchase = [i for i in sim.world.dataset_ids[1:] if any(
        e["event_name"] == "Purchase" for e in sim.world.quality(i, None)["web"])][:2]  # fmt: skip
    scheduler = Scheduler(config_for(sim, [{"id": i} for i in with_purchase]), Secrets({"default": TOKEN}))

    def purchases(snapshot):
        return {
            (s.target.dataset_id, source): count
            for s in snapshot.datasets
            for event, source, count in s.quality.volume.rows
            if event == "Purchase"
        }

    before = purchases(run_cycle(scheduler))
    assert before and all(count > 0 for count in before.values())
    sim.set_scenario("server_purchase_stopped", with_purchase[0])
    calls = len(sim.requests)
    after = purchases(run_cycle(scheduler))
    stopped, other = with_purchase
    assert after[stopped, "server"] == 0 and after[stopped, "browser"] == before[stopped, "browser"]
    assert after[other, "server"] == before[other, "server"]
    later = [urlsplit(r.removeprefix("BATCH-ITEM ")) for r in list(sim.requests)[calls:] if "/stats?" in r]
    span = {int(parse_qs(u.query)["end_time"][0]) - int(parse_qs(u.query)["start_time"][0]) for u in later}
    assert span == {3 * HOUR}  # once the day is known, the newest hours only
    assert f'dataset_id="{stopped}",event_name="Purchase",source="server"}} 0.0' in render(scheduler.snapshot).decode()
