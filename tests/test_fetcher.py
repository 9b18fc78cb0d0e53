"""Batching and the rate-limit governor in a collection cycle, against the simulator."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

from exporter.config import Secrets, validate
from exporter.fetcher import Fetcher
from exporter.governor import Governor
from exporter.graph import GraphError, GraphResponse
from exporter.graph.ratelimit import RateLimitUsage
from exporter.scheduler import Scheduler
from exporter.snapshot import Recorder
from exporter.targets import Target
from tests.conftest import TOKEN


def config_for(sim, collection=None, **sections):
    raw = {
        "graph_api": {"base_url": sim.url, "timeout": "5s", "max_retries": 0},
        "collection": {"interval": "1h", **(collection or {})},
        **sections,
    }
    return validate(raw, "test.yaml")


def cycle(scheduler, prepare=False):
    async def go():
        try:
            if prepare:
                await scheduler.prepare()
            await scheduler.run_cycle(scheduler.targets, paced=False)
        finally:
            await scheduler.close()

    asyncio.run(go())
    return scheduler.snapshot


def test_batches_of_fifty(start_simulator):
    sim = start_simulator(datasets=119)
    datasets = [{"id": i} for i in sim.world.dataset_ids]
    snap = cycle(Scheduler(config_for(sim, {"concurrency": 2}, datasets=datasets), Secrets({"default": TOKEN})))
    assert all(s.fetch_success for s in snap.datasets) and len(snap.datasets) == 120
    posts = [line for line in sim.requests if line.startswith("POST")]
    assert len(posts) == 4  # the first request carries 10 (usage still unknown), then 50, 50 and 9
    assert snap.requests[("batch", "200")] == 4


def test_sources_share_batches_and_are_merged(start_simulator):
    sim = start_simulator(datasets=20)
    datasets = [{"id": i} for i in sim.world.dataset_ids]
    config = config_for(sim, {"sources": ["web", "offline"]}, datasets=datasets)
    snap = cycle(Scheduler(config, Secrets({"default": TOKEN})))
    with_offline = [s for s in snap.datasets if s.quality.offline]
    assert all(s.fetch_success for s in snap.datasets) and with_offline
    assert all(s.quality.events for s in with_offline if sim.world.quality(s.target.dataset_id, None)["web"])


def test_a_fleet_larger_than_the_quota_is_collected_without_repeated_throttling(start_simulator, caplog):
    # two businesses of 25 datasets, each allowed 20 calls per 6-second window
    sim = start_simulator(
        datasets=49, per_business=25, business_calls_per_window=20, quota_window=6, throttle_seconds=6
    )
    discovery = [{"business_id": b, "edges": ["owned_pixels"]} for b in sim.world.businesses]
    config = config_for(sim, {"concurrency": 2, "cooldown": "2s", "interval": "2m"}, discovery=discovery)
    with caplog.at_level(logging.INFO):
        snap = cycle(Scheduler(config, Secrets({"default": TOKEN})), prepare=True)
    assert len(snap.datasets) > 40 and all(s.fetch_success for s in snap.datasets)
    last: dict[str, bool] = {}
    for business, throttled in sim.outcomes:
        assert not (throttled and last.get(business)), f"business {business} throttled twice in a row"
        last[business] = throttled
    counted = Counter(business for business, _ in sim.outcomes)
    assert all(n > 20 for n in counted.values())  # more calls than one window allows: it took several windows
    assert any("of its rate limit" in r.getMessage() for r in caplog.records)  # the log says why it waits


def test_throttled_business_waits_while_others_go_ahead(start_simulator):
    sim = start_simulator(datasets=49, per_business=25)
    a, b = list(sim.world.businesses.values())
    sim.set_fault(a.pixel_ids[0], "throttle_business")  # throttles business a for the simulator's 5 minutes
    datasets = [{"id": i} for i in (*a.pixel_ids[:5], *b.pixel_ids[:5])]
    config = config_for(sim, {"interval": "3s", "batch_size": 1, "concurrency": 1}, datasets=datasets)
    scheduler = Scheduler(config, Secrets({"default": TOKEN}))
    snap = cycle(scheduler, prepare=True)  # the metadata read tells which business owns each dataset
    states = {s.target.dataset_id: s for s in snap.datasets}
    assert all(states[i].fetch_success for i in b.pixel_ids[:5])
    assert {states[i].last_reason for i in a.pixel_ids[:5]} == {"throttled"}
    a_calls = [throttled for business, throttled in sim.outcomes if business == a.id]
    assert a_calls[-1] is True and a_calls.count(True) == 1  # after the throttle, not one more call for it
    assert ("business", a.id) in snap.throttled_until
    assert snap.usage[("business_use_case", b.id, "ads_management", "call_count")] >= 0


def test_hourly_budget_is_respected(start_simulator):
    sim = start_simulator(datasets=30)
    datasets = [{"id": i} for i in sim.world.dataset_ids]
    config = config_for(sim, {"max_calls_per_hour": 12, "interval": "2s"}, datasets=datasets)
    snap = cycle(Scheduler(config, Secrets({"default": TOKEN})))
    assert sim.calls == 12
    assert sum(1 for s in snap.datasets if s.fetch_success) == 12
    assert {s.last_reason for s in snap.datasets if not s.fetch_success} == {"throttled"}


class ScriptedClient:
    """Answers batches from a script: a narrow stand-in for null items, which the simulator draws at random."""

    def __init__(self, script):
        self.script = list(script)
        self.batches = []

    async def batch(self, calls):
        self.batches.append([c.params["dataset_id"] for c in calls])
        return [self.script.pop(0) for _ in calls]

    async def get(self, path, params, token, *, endpoint):
        outcome = (await self.batch([type("C", (), {"params": params})()]))[0]
        if isinstance(outcome, GraphError):
            raise outcome
        return outcome


def run_fetcher(client, targets, batch_size=50):
    recorder, done = Recorder(), []
    fetcher = Fetcher(
        client, Governor(), recorder, tokens={"default": TOKEN}, sources=("web",), blocks=("acr",),
        batch_size=batch_size, concurrency=1, business_of={}, rejected={}, on_done=lambda t, ok: done.append((t.dataset_id, ok)),
    )  # fmt: skip
    asyncio.run(fetcher.run(targets, spacing=0, deadline=float("inf")))
    return recorder, done


def ok(body=None):
    return GraphResponse(body or {"web": []}, RateLimitUsage(), "v25.0")


def test_null_items_are_retried_in_a_later_batch_then_given_up():
    client = ScriptedClient([ok(), None, None, ok(), None, None])
    _, done = run_fetcher(client, [Target("1"), Target("2"), Target("3")])
    assert client.batches == [["1", "2", "3"], ["2", "3"], ["3"]]
    assert sorted(done) == [("1", True), ("2", True), ("3", False)]


def test_invalid_body_fails_one_target_only():
    client = ScriptedClient([ok({"web": "nope"}), ok({"web": [{"event_name": "Lead"}]})])
    _, done = run_fetcher(client, [Target("1"), Target("2")])
    assert sorted(done) == [("1", False), ("2", True)]


def test_a_whole_batch_failure_is_logged_once(caplog):
    class FailingClient(ScriptedClient):
        async def batch(self, calls):
            self.batches.append(calls)
            raise GraphError("transient", "service unavailable")

    client = FailingClient([])
    with caplog.at_level(logging.WARNING):
        _, done = run_fetcher(client, [Target(str(i)) for i in range(20)])
    assert sorted(ok for _, ok in done) == [False] * 20
    lines = [r for r in caplog.records if "service unavailable" in r.getMessage()]
    assert len(lines) == len(client.batches) == 2  # one line per failed request, not one per dataset
