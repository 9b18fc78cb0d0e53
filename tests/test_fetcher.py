"""Batching and the rate-limit governor in a collection cycle, against the simulator."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter

import pytest

from exporter.collect.credentials import Credentials
from exporter.collect.fetcher import PARSE_STEP, Fetcher
from exporter.collect.governor import Governor
from exporter.collect.scheduler import Scheduler
from exporter.config.settings import Secrets, validate
from exporter.config.targets import Target
from exporter.graph import BatchAnswer, GraphError, GraphResponse
from exporter.graph.ratelimit import RateLimitUsage
from exporter.state.recorder import Recorder
from tests.conftest import TOKEN, run_cycle


def config_for(sim, collection=None, **sections):
    raw = {
        "graph_api": {"base_url": sim.url, "timeout": "5s", "max_retries": 0},
        "collection": {"interval": "1h", **(collection or {})},
        **sections,
    }
    return validate(raw, "test.yaml")


@pytest.mark.parametrize("usage_headers_after", [0, 10**9])
def test_batches_of_fifty_with_or_without_usage_headers(start_simulator, usage_headers_after):
    """Meta sends usage headers only once enough calls have been made: without any reading the configured batch
    size and concurrency apply (the governor used to allow 10 calls in flight until a reading came, for ever
    when none came: batches of 10, a fifth of the throughput)."""
    sim = start_simulator(datasets=119, usage_headers_after=usage_headers_after)
    datasets = [{"id": i} for i in sim.world.dataset_ids]
    snap = run_cycle(Scheduler(config_for(sim, {"concurrency": 2}, datasets=datasets), Secrets({"default": TOKEN})))
    assert all(s.fetch_success for s in snap.datasets) and len(snap.datasets) == 120
    assert sorted(sim.batch_sizes) == [20, 50, 50]
    assert snap.requests[("batch", "200")] == 3
    assert bool(snap.usage) == (usage_headers_after == 0)


def test_sources_share_batches_and_are_merged(start_simulator):
    sim = start_simulator(datasets=20)
    datasets = [{"id": i} for i in sim.world.dataset_ids]
    config = config_for(sim, {"sources": ["web", "offline"]}, datasets=datasets)
    snap = run_cycle(Scheduler(config, Secrets({"default": TOKEN})))
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
        snap = run_cycle(Scheduler(config, Secrets({"default": TOKEN})), prepare=True)
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
    snap = run_cycle(scheduler, prepare=True)  # the metadata read tells which business owns each dataset
    states = {s.target.dataset_id: s for s in snap.datasets}
    assert all(states[i].fetch_success for i in b.pixel_ids[:5])
    assert {states[i].last_reason for i in a.pixel_ids[:5]} == {"throttled"}
    a_calls = [throttled for business, throttled in sim.outcomes if business == a.id]
    assert a_calls[-1] is True and a_calls.count(True) == 1  # after the throttle, not one more call for it
    assert ("business", a.id) in snap.throttled_until
    assert snap.usage[("business_use_case", b.id, "ads_management", "call_count")] >= 0


def test_a_throttle_stops_the_calls_it_governs_when_meta_counts_them_under_another_business(start_simulator):
    """Meta's usage header names the business of the token's system user (an agency's, for client pixels), not
    each pixel's owner: calls are reserved, observed and throttled under the business the answers name. Calls
    used to be reserved under the owners, so the agency's throttle stopped nothing and each call was throttled."""
    sim = start_simulator(datasets=49, per_business=25, usage_object="token")
    a, b = list(sim.world.businesses.values())
    ids = [*a.pixel_ids[1:4], *b.pixel_ids[:3], a.pixel_ids[0], *a.pixel_ids[4:6], *b.pixel_ids[3:6]]
    datasets = [{"id": i} for i in ids]
    config = config_for(sim, {"interval": "3s", "batch_size": 1, "concurrency": 1}, datasets=datasets)
    scheduler = Scheduler(config, Secrets({"default": TOKEN}))
    sim.set_fault(a.pixel_ids[0], "throttle_business")  # throttles the agency's business, which counts them all
    snap = run_cycle(scheduler, prepare=True)  # the metadata read names each pixel's owner
    agency_calls = [throttled for business, throttled in sim.outcomes if business == sim.world.agency_id]
    assert agency_calls.count(True) == 1  # after the throttle, not one more call counted under it
    assert ("business", sim.world.agency_id) in snap.throttled_until
    states = {s.target.dataset_id: s for s in snap.datasets}
    assert {states[i].last_reason for i in ids[6:]} == {"throttled"} and all(states[i].fetch_success for i in ids[:6])
    assert scheduler.business_of[("default", b.id)] == sim.world.agency_id  # learnt from the answers


def test_a_batch_reading_is_attributed_to_the_items_of_each_business():
    """A batch of 49 items of one business and one of another: the second business's rise is the cost of one
    call (it used to be divided by all 50, so that business seemed to take 50 times less per call)."""
    from exporter.graph.ratelimit import parse_rate_limit_headers

    def usage(a, b):
        entry = lambda pct: [{"type": "ads_management", "call_count": pct}]  # noqa: E731
        return parse_rate_limit_headers({"X-Business-Use-Case-Usage": json.dumps({"A": entry(a), "B": entry(b)})})

    readings = [usage(10, 10), usage(20, 20)]

    class Client(ScriptedClient):
        async def batch(self, calls, **kw):
            self.batches.append([c.params["dataset_id"] for c in calls])
            return BatchAnswer([ok() for _ in calls], readings.pop(0))

    targets = [Target(str(i), business_id="A") for i in range(49)] + [Target("b", business_id="B")]
    governor = Governor()
    recorder, done = Recorder(), []
    fetcher = Fetcher(
        Client([]), governor, recorder, credentials=credentials(), sources=("web",), blocks=("acr",),
        batch_size=50, concurrency=1, business_of={}, on_done=lambda t, ok: done.append(ok),
    )  # fmt: skip
    asyncio.run(fetcher.run(targets, spacing=0, deadline=float("inf")))
    asyncio.run(fetcher.run(targets, spacing=0, deadline=float("inf")))
    assert all(done)
    assert governor.allowance(("business", "B")) == 5  # (75 % - 20 %) / 10 % per call
    assert governor.allowance(("business", "A")) == 269  # (75 % - 20 %) / (10 % / 49) per call


def test_credentials_of_one_app_share_its_budget(start_simulator):
    """X-App-Usage and code 4 count an app's calls, whichever of its tokens made them: a throttle with one
    credential holds the other's calls too (it used to be kept per credential, and each was throttled)."""
    sim = start_simulator(datasets=20, tokens=(TOKEN, "client-b-token"), app_calls_per_window=6,
                          app_secret="app-secret", usage_headers_after=10**9)  # fmt: skip
    ids = sim.world.dataset_ids[:20]
    raw = {
        "graph_api": {"base_url": sim.url, "timeout": "5s", "max_retries": 0, "app_id": sim.settings.app_id,
                      "app_secret_env": "SECRET"},
        "collection": {"interval": "3s", "batch_size": 1, "concurrency": 1},
        "credentials": {"default": {"token_env": "A"}, "client_b": {"token_env": "B"}},
        "datasets": [{"id": i, "credential": "default" if n % 2 else "client_b"} for n, i in enumerate(ids)],
    }  # fmt: skip
    scheduler = Scheduler(validate(raw, "test.yaml"), Secrets({"default": TOKEN, "client_b": "client-b-token"},
                                                                 "app-secret"))  # fmt: skip
    snap = run_cycle(scheduler)
    assert snap.api_errors[("4", "throttled")] == 1  # one throttled answer: then no call of that app
    assert sum(s.fetch_success for s in snap.datasets) == 6
    assert set(snap.throttled_until) == {("app", sim.settings.app_id)}


def test_a_batch_that_times_out_is_re_sent_in_smaller_batches_not_whole(start_simulator):
    """A read timeout used to make the client send the same 10 items twice more (30 calls, 10 failures); the
    items go back to the queue instead and are re-sent through the governor in batches half the size."""
    sim = start_simulator(datasets=12, slow_seconds=3)
    ids = sim.world.dataset_ids[:10]
    sim.set_fault(ids[0], "stall")  # any request carrying it stalls: a stuck backend or proxy
    raw = {
        "graph_api": {"base_url": sim.url, "timeout": "0.5s", "max_retries": 2},
        "collection": {"interval": "1h", "concurrency": 1},
        "datasets": [{"id": i} for i in ids],
    }
    snap = run_cycle(Scheduler(validate(raw, "test.yaml"), Secrets({"default": TOKEN})))
    sizes = list(sim.batch_sizes)
    assert sizes[0] == 10 and max(sizes[1:]) <= 5 and sum(sizes) <= 25
    ok_count = sum(s.fetch_success for s in snap.datasets)
    assert ok_count >= 7 and {s.last_reason for s in snap.datasets if not s.fetch_success} == {"timeout"}


def test_a_source_meta_refuses_as_nonexisting_is_no_longer_asked(start_simulator, caplog):
    """Most apps have no access to the offline beta: Meta answers `offline` as a nonexisting field. The source
    used to be asked again with an empty `fields=`, which fetched the web answer a second time and reported
    the offline source fetched."""
    sim = start_simulator(datasets=6)
    sim.withdraw_field("AdsDatasetQuality", "offline")
    ids = sim.world.dataset_ids[:6]
    config = config_for(sim, {"sources": ["web", "offline"], "concurrency": 1}, datasets=[{"id": i} for i in ids])
    with caplog.at_level(logging.WARNING):
        snap = run_cycle(Scheduler(config, Secrets({"default": TOKEN})))
    assert all(s.fetch_success for s in snap.datasets)  # web is unaffected
    assert all(s.source_success.get("offline") is False for s in snap.datasets)
    assert all(not any(s.source_failures.values()) for s in snap.datasets)  # not asked: no failure counted
    assert dict(snap.unsupported_fields) == {"offline": "AdsDatasetQuality"}
    asked = [r for r in sim.requests if "BATCH-ITEM" in r and "offline" in r]
    assert len(asked) <= 6 and not any("fields=&" in r or r.endswith("fields=") for r in sim.requests)


def test_hourly_budget_is_respected(start_simulator):
    sim = start_simulator(datasets=30)
    datasets = [{"id": i} for i in sim.world.dataset_ids]
    config = config_for(sim, {"max_calls_per_hour": 12, "interval": "2s"}, datasets=datasets)
    snap = run_cycle(Scheduler(config, Secrets({"default": TOKEN})))
    assert sim.calls == 12
    assert sum(1 for s in snap.datasets if s.fetch_success) == 12
    assert {s.last_reason for s in snap.datasets if not s.fetch_success} == {"throttled"}


class ScriptedClient:
    """Answers batches from a script: a narrow stand-in for null items, which the simulator draws at random."""

    def __init__(self, script):
        self.script = list(script)
        self.batches = []

    backoff_delay = staticmethod(lambda attempt: 0.01)

    async def batch(self, calls, **kw):
        self.batches.append([c.params["dataset_id"] for c in calls])
        return BatchAnswer([self.script.pop(0) for _ in calls], RateLimitUsage())

    async def get(self, path, params, token, *, endpoint):
        outcome = (await self.batch([type("C", (), {"params": params})()])).outcomes[0]
        if isinstance(outcome, GraphError):
            raise outcome
        return outcome


def credentials(token=TOKEN):
    return Credentials(validate({}, "test.yaml"), Secrets({"default": token}))


def run_fetcher(client, targets, batch_size=50):
    recorder, done = Recorder(), []
    fetcher = Fetcher(
        client, Governor(), recorder, credentials=credentials(), sources=("web",), blocks=("acr",),
        batch_size=batch_size, concurrency=1, business_of={}, on_done=lambda t, ok: done.append((t.dataset_id, ok)),
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


def test_a_whole_batch_failure_is_logged_once_and_re_sent_in_halves(caplog):
    class FailingClient(ScriptedClient):
        async def batch(self, calls, **kw):
            assert kw.get("retry") is False  # the client never re-sends a whole batch: every item is a call
            self.batches.append(calls)
            raise GraphError("transient", "service unavailable")

    client = FailingClient([])
    with caplog.at_level(logging.WARNING):
        _, done = run_fetcher(client, [Target(str(i)) for i in range(20)])
    assert sorted(ok for _, ok in done) == [False] * 20
    lines = [r for r in caplog.records if "service unavailable" in r.getMessage()]
    assert len(lines) == len(client.batches)  # one line per failed request, not one per dataset
    assert [len(b) for b in client.batches] == [20, 10, 10, 5, 5, 5, 5]  # each try in batches half the size


# ----- what Meta's real API does, played by the strict simulator -----------------------------------------------
def two_credentials(sim, ids, good, bad, **collection):
    datasets = [{"id": i, "credential": "default" if n % 2 else "client_b"} for n, i in enumerate(ids)]
    raw = {
        "graph_api": {"base_url": sim.url, "timeout": "5s", "max_retries": 0},
        "collection": {"interval": "1h", **collection},
        "credentials": {"default": {"token_env": "A"}, "client_b": {"token_env": "B"}},
        "datasets": datasets,
    }
    return Scheduler(validate(raw, "test.yaml"), Secrets({"default": good, "client_b": bad}))


def test_a_rejected_token_never_fails_another_credentials_datasets(start_simulator):
    sim = start_simulator(datasets=30, expired_tokens=("expired-client-token",))
    ids = sim.world.dataset_ids[:20]
    scheduler = two_credentials(sim, ids, TOKEN, "expired-client-token", concurrency=1)
    snap = run_cycle(scheduler)
    states = {s.target.dataset_id: s for s in snap.datasets}
    assert all(states[i].fetch_success for n, i in enumerate(ids) if n % 2)
    assert {states[i].last_reason for n, i in enumerate(ids) if not n % 2} == {"auth"}
    assert set(scheduler.credentials.suspended) == {"client_b"}
    items = [line for line in sim.requests if line.startswith("BATCH-ITEM")]
    assert items and not any("access_token" in line for line in items)  # one credential per batch, at the top


def test_a_transient_item_error_is_retried_in_the_same_cycle(start_simulator):
    sim = start_simulator(datasets=10)
    ids = sim.world.dataset_ids[:8]
    sim.set_fault(ids[3], "transient_once")
    raw = {
        "graph_api": {"base_url": sim.url, "timeout": "5s", "max_retries": 2},
        "collection": {"interval": "1h", "concurrency": 1},
        "datasets": [{"id": i} for i in ids],
    }
    snap = run_cycle(Scheduler(validate(raw, "test.yaml"), Secrets({"default": TOKEN})))
    assert all(s.fetch_success for s in snap.datasets)
    assert sum(f"dataset_id={ids[3]}" in line for line in sim.requests) == 2
    assert snap.requests[("batch", "200")] == 1 and snap.requests[("dataset_quality", "200")] == 1  # a later request


def test_the_governor_reads_the_batch_responses_usage_headers(start_simulator):
    sim = start_simulator(datasets=20, per_business=10)  # items carry no usage headers: the simulator's default
    scheduler = Scheduler(
        config_for(sim, {"concurrency": 1}, datasets=[{"id": i} for i in sim.world.dataset_ids]),
        Secrets({"default": TOKEN}),
    )
    snap = run_cycle(scheduler)
    assert all(s.fetch_success for s in snap.datasets)
    assert scheduler.governor._state(("app", "default")).usage is not None
    assert all(scheduler.governor._state(("business", b)).usage is not None for b in sim.world.businesses)
    assert {k[1] for k in snap.usage if k[0] == "business_use_case"} == set(sim.world.businesses)


def test_a_field_meta_refuses_is_left_out_and_the_data_arrives_in_the_same_cycle(start_simulator, caplog):
    sim = start_simulator(datasets=12)
    sim.withdraw_field("AdsPixelCAPIIntegrationQuality", "acr")
    sim.withdraw_field("AdsPixelCAPIIntegrationQuality", "dedupe_key_feedback")  # and the page's `dedup_` too
    scheduler = Scheduler(
        config_for(sim, {"concurrency": 2}, datasets=[{"id": i} for i in sim.world.dataset_ids]),
        Secrets({"default": TOKEN}),
    )
    with caplog.at_level(logging.WARNING):
        snap = run_cycle(scheduler)
    assert all(s.fetch_success for s in snap.datasets)
    assert any(e.events and e.events[0].composite_score is not None for e in (s.quality for s in snap.datasets))
    assert all(e.acr is None and not e.dedupe_keys for s in snap.datasets for e in s.quality.events)
    assert dict(snap.unsupported_fields) == {
        "acr": "AdsPixelCAPIIntegrationQuality",
        "dedupe_key_feedback": "AdsPixelCAPIIntegrationQuality",
        "dedup_key_feedback": "AdsPixelCAPIIntegrationQuality",
    }
    refused = [r for r in caplog.records if "Meta refuses the field" in r.getMessage()]
    assert len(refused) == 3 and any("nonexisting field (acr) on node type" in r.getMessage() for r in refused)
    sim.withdraw_field("AdsPixelCAPIIntegrationQuality", "acr", withdrawn=False)
    scheduler.replace_config(scheduler.config, scheduler.secrets)  # a reload asks for every field again
    scheduler._apply_pending()
    snap = run_cycle(scheduler)
    assert any(e.acr is not None for s in snap.datasets for e in s.quality.events)
    assert dict(snap.unsupported_fields) == {
        "dedupe_key_feedback": "AdsPixelCAPIIntegrationQuality",
        "dedup_key_feedback": "AdsPixelCAPIIntegrationQuality",
    }


def test_a_wrongly_typed_value_costs_the_value_and_a_wrapped_body_is_invalid(start_simulator, caplog):
    sim = start_simulator(datasets=10)
    ids = sim.world.dataset_ids
    with_acr = [i for i in ids[1:] if any("acr" in e for e in sim.world.quality(i, None)["web"])][:1]
    with_emq = [i for i in ids[1:] if any("event_match_quality" in e for e in sim.world.quality(i, None)["web"])]
    string_pct, wrong_leaf, wrapped = with_acr[0], next(i for i in with_emq if i != with_acr[0]), ids[-1]
    sim.set_fault(string_pct, "string_percentage")
    sim.set_fault(wrong_leaf, "wrong_leaf")
    sim.set_fault(wrapped, "wrapped_body")
    config = config_for(sim, datasets=[{"id": i} for i in (string_pct, wrong_leaf, wrapped)])
    with caplog.at_level(logging.WARNING):
        snap = run_cycle(Scheduler(config, Secrets({"default": TOKEN})))
    states = {s.target.dataset_id: s for s in snap.datasets}
    assert states[string_pct].fetch_success and states[wrong_leaf].fetch_success
    assert states[wrapped].last_reason == "invalid_response" and "no web or offline" in states[wrapped].last_message
    assert snap.values_dropped == 2
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert ".acr.percentage: expected a number, got '" in logged
    assert ".event_match_quality.composite_score: expected a number, got True" in logged


def test_a_policy_block_rests_the_credential_and_is_never_retried_at_once(start_simulator):
    sim = start_simulator(datasets=10)
    ids = sim.world.dataset_ids[:6]
    sim.set_fault(ids[0], "policy_block")
    config = config_for(sim, {"interval": "2s", "batch_size": 1, "concurrency": 1}, datasets=[{"id": i} for i in ids])
    scheduler = Scheduler(config, Secrets({"default": TOKEN}))
    snap = run_cycle(scheduler)
    states = {s.target.dataset_id: s for s in snap.datasets}
    assert states[ids[0]].last_reason == "blocked" and states[ids[0]].failures["blocked"] == 1
    assert sum(f"dataset_id={ids[0]}" in line for line in sim.requests) == 1
    assert scheduler.governor.is_blocked(("app", "default"))
    assert {states[i].last_reason for i in ids[1:]} == {"throttled"}  # waiting out the block, not sent


def test_a_throttle_announced_only_in_error_data_as_a_string_is_honoured(start_simulator):
    sim = start_simulator(datasets=10, per_business=5)
    a, b = list(sim.world.businesses.values())[:2]
    sim.set_fault(a.pixel_ids[1], "throttle_business_error_data_string")
    datasets = [{"id": i} for i in (*a.pixel_ids[1:4], *b.pixel_ids[:3])]
    config = config_for(sim, {"interval": "3s", "batch_size": 1, "concurrency": 1}, datasets=datasets)
    snap = run_cycle(Scheduler(config, Secrets({"default": TOKEN})), prepare=True)
    until = snap.throttled_until[("business", a.id)]
    assert 400 < until - time.time() <= 420  # the 7 minutes of error_data, not the default 5
    assert all(s.fetch_success for s in snap.datasets if s.target.dataset_id in b.pixel_ids)


# ----- errors nobody expected ------------------------------------------------------------------------------------
def test_an_unexpected_error_in_a_request_ends_its_datasets_as_other_and_frees_the_governor(caplog):
    """httpx.DecodingError is no GraphError: it used to be lost with its task, leaving datasets unsettled."""
    import httpx

    from exporter.graph import GraphClient

    def answer(request):
        if b"dataset_id%3D1%26" in request.content or b"dataset_id=1&" in request.content:
            raise httpx.DecodingError("bad gzip")
        return httpx.Response(200, json=[{"code": 200, "headers": [], "body": '{"web": []}'}] * 2)

    async def go():
        async with GraphClient("http://graph.test", transport=httpx.MockTransport(answer), max_retries=0) as client:
            governor = Governor()
            recorder, done = Recorder(), []
            fetcher = Fetcher(
                client, governor, recorder, credentials=credentials(), sources=("web",), blocks=("acr",),
                batch_size=2, concurrency=1, business_of={},
                on_done=lambda t, ok: done.append((t.dataset_id, ok)),
            )  # fmt: skip
            started = time.monotonic()
            await fetcher.run([Target(str(i)) for i in range(1, 5)], spacing=0, deadline=started + 60)
            return governor, done, time.monotonic() - started

    with caplog.at_level(logging.ERROR):
        governor, done, took = asyncio.run(go())
    assert sorted(done) == [("1", False), ("2", False), ("3", True), ("4", True)]
    assert took < 30  # nothing waited for the deadline
    assert governor._state(("app", "default")).reserved == 0
    assert sum(bool("failed unexpectedly" in r.getMessage() and r.exc_info) for r in caplog.records) == 1


def test_a_bug_in_handling_one_answer_fails_that_dataset_only(start_simulator, monkeypatch):
    import exporter.collect.fetcher as fetcher_module

    sim = start_simulator(datasets=10)
    ids = sim.world.dataset_ids[:6]
    real = fetcher_module.parse_dataset_quality
    calls = []

    def parse(body):
        calls.append(body)
        if len(calls) == 3:
            raise KeyError("a bug")
        return real(body)

    monkeypatch.setattr(fetcher_module, "parse_dataset_quality", parse)
    snap = run_cycle(Scheduler(config_for(sim, datasets=[{"id": i} for i in ids]), Secrets({"default": TOKEN})))
    failed = [s for s in snap.datasets if not s.fetch_success]
    assert len(failed) == 1 and failed[0].last_reason == "other" and "KeyError" in failed[0].last_message
    assert sum(s.fetch_success for s in snap.datasets) == 5


def test_an_unexpected_error_in_housekeeping_never_stops_collection(simulator, monkeypatch, caplog):
    from exporter.collect.housekeeping import Housekeeping

    async def broken(*args, **kwargs):
        raise RuntimeError("metadata bug")

    monkeypatch.setattr(Housekeeping, "refresh_metadata", broken)
    ids = simulator.world.dataset_ids[:3]
    with caplog.at_level(logging.ERROR):
        snap = run_cycle(
            Scheduler(config_for(simulator, datasets=[{"id": i} for i in ids]), Secrets({"default": TOKEN})),
            prepare=True,
        )
    assert all(s.fetch_success for s in snap.datasets)
    assert any("the metadata refresh failed unexpectedly" in r.getMessage() and r.exc_info for r in caplog.records)


def test_a_cycle_gives_up_at_once_on_calls_the_rate_limit_holds_past_its_deadline(start_simulator, monkeypatch):
    """Every waiting call is throttled (its business for 5 minutes) while its app is free: the fetcher must
    see that nothing can go before the deadline, not wait for it in a loop of short sleeps."""
    sim = start_simulator(datasets=10, per_business=25)
    ids = sim.world.dataset_ids[:6]
    sim.set_fault(ids[0], "throttle_business")
    config = config_for(sim, {"interval": "30s", "batch_size": 1, "concurrency": 1}, datasets=[{"id": i} for i in ids])
    scheduler = Scheduler(config, Secrets({"default": TOKEN}))
    asked = []
    real = Governor.next_release
    monkeypatch.setattr(Governor, "next_release", lambda self, keys: asked.append(keys) or real(self, keys))
    snap = run_cycle(scheduler, prepare=True)
    assert {s.last_reason for s in snap.datasets} == {"throttled"}
    assert all("before this cycle ends" in s.last_message for s in snap.datasets[1:])
    assert len(asked) <= 3  # one look, then the give-up; the old code looked every 50 ms until the deadline


def test_a_cycle_under_constant_throttling_ends_at_its_deadline(start_simulator):
    """Short throttles that keep coming back used to be probed call after call, holding the cycle open for
    minutes past a 2 s interval; past the deadline a throttled call now waits for the next cycle."""
    sim = start_simulator(datasets=59, per_business=20, throttle_seconds=1.0, scenario="throttled")
    config = config_for(
        sim,
        {"interval": "2s", "concurrency": 4, "throttle_wait": "1s"},
        datasets=[{"id": i} for i in sim.world.dataset_ids],
    )
    scheduler = Scheduler(config, Secrets({"default": TOKEN}))

    async def go():
        try:
            await asyncio.wait_for(scheduler.run_cycle(scheduler.targets, paced=False), 30)  # a hang guard
        finally:
            await scheduler.close()

    asyncio.run(go())
    assert {s.last_reason for s in scheduler.snapshot.datasets} == {"throttled"}


# ----- answers parsed while the next request is out ------------------------------------------------------------
def _fetcher_against(sim, recorder, done, **kw):
    from exporter.graph import GraphClient

    client = GraphClient(sim.url, max_retries=0)
    fetcher = Fetcher(
        client, Governor(), recorder, credentials=credentials(), sources=("web",), blocks=("acr",),
        business_of={}, on_done=lambda t, ok: done.append((t.dataset_id, ok)), **kw,
    )  # fmt: skip
    return client, fetcher


def _watch(monkeypatch, on_send, on_parse):
    """Call `on_send(items)` as each batch request is made, and `on_parse()` before each answer is parsed."""
    import exporter.collect.fetcher as fetcher_module
    from exporter.graph import GraphClient

    real_parse, real_batch = fetcher_module.parse_dataset_quality, GraphClient.batch

    def parse(body):
        on_parse()
        return real_parse(body)

    async def batch(self, calls, **kw):
        on_send(len(calls))
        return await real_batch(self, calls, **kw)

    monkeypatch.setattr(fetcher_module, "parse_dataset_quality", parse)
    monkeypatch.setattr(GraphClient, "batch", batch)


def test_the_next_request_leaves_before_a_batchs_answers_are_all_parsed(start_simulator, monkeypatch):
    """A batch's answers take the loop about 10 ms to parse at 50 per batch: the slot they came through is
    free first, so the next request is on its way meanwhile (one slot here: it could not be otherwise)."""
    sim = start_simulator(datasets=40, latency=0.01)
    events: list[str] = []
    sizes: list[int] = []

    def sent(items):
        events.append("send")
        sizes.append(items)

    _watch(monkeypatch, sent, lambda: events.append("parse"))

    async def go():
        recorder, done = Recorder(), []
        client, fetcher = _fetcher_against(sim, recorder, done, batch_size=20, concurrency=1)
        async with client:
            await fetcher.run(
                [Target(i) for i in sim.world.dataset_ids[:40]], spacing=0, deadline=time.monotonic() + 60
            )
        return done

    done = asyncio.run(go())
    assert len(done) == 40 and all(ok for _, ok in done)
    second = events.index("send", 1)
    assert sizes[0] > PARSE_STEP  # the first batch is smaller while usage is unknown, but not that small
    assert events[:1] == ["send"] and 0 < events[1:second].count("parse") < sizes[0]  # amid the first answers
    assert events.count("parse") == 40


def test_answers_already_received_are_recorded_when_the_pass_is_cancelled(start_simulator, monkeypatch):
    """A reload or shutdown cancels the pass: a batch's answers that arrived are never thrown away half parsed
    (parsing gives way to the loop between answers, and a cancellation lands there)."""
    import contextlib

    sim = start_simulator(datasets=20, latency=0.01)
    pass_task: list[asyncio.Task] = []
    sent: list[int] = []

    def cancel_the_pass():
        if pass_task:
            pass_task.pop().cancel()  # at the first answer of the first batch

    _watch(monkeypatch, sent.append, cancel_the_pass)

    async def go():
        recorder, done = Recorder(), []
        client, fetcher = _fetcher_against(sim, recorder, done, batch_size=20, concurrency=1)
        async with client:
            task = asyncio.ensure_future(
                fetcher.run([Target(i) for i in sim.world.dataset_ids[:20]], spacing=0, deadline=time.monotonic() + 60)
            )
            pass_task.append(task)
            with contextlib.suppress(asyncio.CancelledError):
                await task
            batches = list(fetcher._in_flight)  # cancelled by the pass on its way out, still parsing
            assert batches
            results = await asyncio.gather(*batches, return_exceptions=True)
        return done, task, results

    done, task, results = asyncio.run(go())
    assert task.cancelled() and all(isinstance(r, asyncio.CancelledError) for r in results)
    assert sent and sent[0] > PARSE_STEP
    assert len(done) == sent[0] and all(ok for _, ok in done)


def test_a_bug_in_reading_one_answers_headers_fails_that_dataset_only(start_simulator, monkeypatch):
    """Rate-limit headers are read before the slot is free, apart from the parsing: a bug there still costs
    one dataset, not its batch."""
    sim = start_simulator(datasets=10)
    ids = sim.world.dataset_ids[:6]
    real = Fetcher._observe

    def observe(self, call, usage):
        if call.target.dataset_id == ids[2]:
            raise KeyError("a bug")
        return real(self, call, usage)

    monkeypatch.setattr(Fetcher, "_observe", observe)
    snap = run_cycle(Scheduler(config_for(sim, datasets=[{"id": i} for i in ids]), Secrets({"default": TOKEN})))
    failed = [s for s in snap.datasets if not s.fetch_success]
    assert [s.target.dataset_id for s in failed] == [ids[2]] and failed[0].last_reason == "other"
    assert "KeyError" in failed[0].last_message and sum(s.fetch_success for s in snap.datasets) == 5
