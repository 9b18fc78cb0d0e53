"""The collection loop against the simulator over loopback."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
import weakref

import pytest

from exporter.collect import scheduler as scheduler_module
from exporter.collect.scheduler import Scheduler
from exporter.config.settings import Secrets, validate
from exporter.exposition.publisher import render
from exporter.graph.parser import parse_dataset_quality
from exporter.simulator import EXAMPLE_DATASET_ID
from tests.conftest import TOKEN, SteppedClock, run_cycle, until


def make(
    sim, datasets, *, interval="1h", stale_after="3h", concurrency=4, sources=("web",), extra_credentials=(), **more
):
    collection = {
        "interval": interval,
        "stale_after": stale_after,
        "concurrency": concurrency,
        "sources": list(sources),
    }
    raw = {
        "graph_api": {"base_url": sim.url, "timeout": "5s", "max_retries": 0},
        "credentials": {"default": {"token_env": "T"}, **{c: {"token_env": c.upper()} for c in extra_credentials}},
        "collection": collection | more,
        "datasets": datasets,
    }
    return validate(raw, "test.yaml")


def secrets(**extra):
    return Secrets({"default": TOKEN, **extra})


def by_id(snapshot):
    return {(s.target.dataset_id, s.target.agent_name): s for s in snapshot.datasets}


def test_a_cycle_fetches_every_target_with_the_simulators_values(simulator):
    ids = simulator.world.dataset_ids[:8]
    scheduler = Scheduler(
        make(simulator, [{"id": i} for i in ids] + [{"id": ids[3], "agent_name": "acmeplatform"}]), secrets()
    )
    snap = run_cycle(scheduler)
    states = by_id(snap)
    assert all(s.fetch_success for s in snap.datasets) and snap.ready and snap.cycles == 1
    for dataset_id in ids:
        expected = parse_dataset_quality({"web": simulator.world.quality(dataset_id, None)["web"]})
        assert states[dataset_id, ""].quality.events == expected.events
    agent_view = parse_dataset_quality({"web": simulator.world.quality(ids[3], "acmeplatform")["web"]})
    assert states[ids[3], "acmeplatform"].quality.events == agent_view.events


def test_one_bad_dataset_never_disturbs_the_others(simulator):
    ids = simulator.world.dataset_ids[:6]
    other_business = simulator.world.dataset_ids[30]
    simulator.set_fault(ids[1], "not_json")
    simulator.set_fault(ids[2], "permission")
    simulator.set_fault(ids[3], "not_found")
    simulator.set_fault(other_business, "throttle_business")  # throttles its whole business for 5 minutes
    datasets = [{"id": i} for i in [*ids, other_business, "404"]]
    scheduler = Scheduler(make(simulator, datasets, interval="2s"), secrets())
    states = by_id(run_cycle(scheduler))
    reasons = {i: states[i, ""].last_reason for i in [*ids, other_business, "404"]}
    assert reasons == {
        ids[0]: None,
        ids[1]: "invalid_response",
        ids[2]: "permission",
        ids[3]: "not_found",
        ids[4]: None,
        ids[5]: None,
        other_business: "throttled",  # not retried before the cycle ends: the wait was longer
        "404": "not_found",
    }
    assert states[ids[0], ""].fetch_success and states[ids[5], ""].quality.events
    assert "fbtrace_id=" in states[ids[2], ""].last_message


@pytest.mark.parametrize(("batch_size", "first_cycle_calls"), [(1, 5), (50, 4)])
def test_a_rejected_token_fails_only_its_datasets_and_is_not_used_again(start_simulator, batch_size, first_cycle_calls):
    sim = start_simulator(datasets=10, expired_tokens=("old-token",))
    ids = sim.world.dataset_ids
    datasets = [{"id": i} for i in ids[:4]] + [{"id": i, "credential": "client_b"} for i in ids[4:8]]
    config = make(sim, datasets, concurrency=1, extra_credentials=("client_b",), batch_size=batch_size)
    scheduler = Scheduler(config, secrets(client_b="old-token"))
    states = by_id(run_cycle(scheduler))
    assert [states[i, ""].fetch_success for i in ids[:8]] == [True] * 4 + [False] * 4
    assert {states[i, ""].last_reason for i in ids[4:8]} == {"auth"}
    # one by one: four good calls, one with the expired token, and no more; batched: one batch per credential,
    # and Meta refuses the expired token's batch as a whole before running any of its items
    assert sim.calls == first_cycle_calls
    calls = sim.calls
    run_cycle(scheduler)
    assert sim.calls == calls + 4
    scheduler.replace_config(scheduler.config, secrets(client_b=TOKEN))  # a reload with a fixed token

    async def reload_and_cycle():
        scheduler._apply_pending()
        await scheduler.run_cycle(scheduler.targets, paced=False)
        await scheduler.close()

    asyncio.run(reload_and_cycle())
    assert all(s.fetch_success for s in scheduler.snapshot.datasets)


def test_meta_answering_an_expired_version_with_a_newer_one_is_said_and_exposed(start_simulator, caplog):
    sim = start_simulator(datasets=4, upgrade_expired_versions=True)
    config = make(sim, [{"id": i} for i in sim.world.dataset_ids[:4]])
    config = validate({**_raw(config), "graph_api": {"base_url": sim.url, "version": "v24.0"}}, "test.yaml")
    with caplog.at_level(logging.WARNING):
        snapshot = run_cycle(Scheduler(config, secrets()))
    assert all(s.fetch_success for s in snapshot.datasets)
    assert snapshot.versions_upgraded == ("v25.0",)
    assert 'meta_dataset_quality_graph_api_version_upgraded{version="v25.0"} 1.0' in render(snapshot).decode()
    said = [r.getMessage() for r in caplog.records if "auto-upgraded" in r.getMessage()]
    assert len(said) == 1  # once, not once per answer


def _raw(config):
    return {"collection": {"interval": "1h"}, "datasets": [{"id": d.id} for d in config.datasets]}


def test_offline_source(simulator):
    with_offline = next(i for i in simulator.world.dataset_ids if simulator.world.quality(i, None)["offline"])
    scheduler = Scheduler(make(simulator, [{"id": with_offline}], sources=("web", "offline")), secrets())
    state = run_cycle(scheduler).datasets[0]
    assert state.quality.offline and state.quality.events


def test_paced_cycle_spreads_calls_over_the_interval_and_ends_with_its_last_answer(simulator):
    """Five requests over 90 % of five minutes: one a minute. The pass used to wait one more spacing after
    the last request (with one request, 90 % of the interval for nothing)."""
    ids = simulator.world.dataset_ids[:5]
    clock = SteppedClock()
    config = make(simulator, [{"id": i} for i in ids], interval="5m", batch_size=1, concurrency=1)
    scheduler = Scheduler(config, secrets(), clock=clock)

    async def go():
        cycle = asyncio.create_task(scheduler.run_cycle(scheduler.targets, paced=True))
        try:
            for sent in range(1, 6):
                await until(lambda: simulator.calls == sent, what=f"request {sent}")  # noqa: B023
                await asyncio.sleep(0.2)
                assert simulator.calls == sent  # the next one waits for its moment
                if sent < 5:
                    clock.advance(54)
            await asyncio.wait_for(cycle, 10)  # no more time passes: the cycle ends with the last answer
        finally:
            cycle.cancel()
            await scheduler.close()

    asyncio.run(go())
    assert scheduler.snapshot.cycles == 1 and all(s.fetch_success for s in scheduler.snapshot.datasets)


def test_overrun_is_counted(start_simulator):
    sim = start_simulator(datasets=3, latency=0.05)
    scheduler = Scheduler(
        make(sim, [{"id": i} for i in sim.world.dataset_ids], interval="10ms", concurrency=1), secrets()
    )
    assert run_cycle(scheduler).overruns == 1


def test_run_loop_repeats_applies_reloads_and_stops(simulator):
    ids = simulator.world.dataset_ids
    scheduler = Scheduler(make(simulator, [{"id": ids[0]}], interval="1h"), secrets())

    async def go():
        stop = asyncio.Event()
        loop_task = asyncio.create_task(scheduler.run(stop))
        while not scheduler.snapshot.ready:
            await asyncio.sleep(0.01)
        scheduler.replace_config(make(simulator, [{"id": ids[0]}, {"id": ids[1]}], interval="1h"), secrets())
        while (
            by_id(scheduler.snapshot).get((ids[1], ""), None) is None
            or not by_id(scheduler.snapshot)[ids[1], ""].fetch_success
        ):
            await asyncio.sleep(0.01)  # the added dataset is fetched at once, not an hour later
        stop.set()
        await asyncio.wait_for(loop_task, 10)

    asyncio.run(go())
    assert scheduler.snapshot.cycles == 1


def test_a_reload_that_lands_during_a_cycle_is_applied_when_it_ends(simulator):
    """The race CI once lost: the reload arrives after the cycle's last publish, before the loop waits."""
    ids = simulator.world.dataset_ids
    scheduler = Scheduler(make(simulator, [{"id": ids[0]}], interval="1h"), secrets())
    run_cycle_once = scheduler.run_cycle

    async def cycle_then_reload(targets, **kwargs):
        await run_cycle_once(targets, **kwargs)
        if kwargs.get("count", True):
            scheduler.replace_config(make(simulator, [{"id": ids[0]}, {"id": ids[1]}], interval="1h"), secrets())

    scheduler.run_cycle = cycle_then_reload

    async def go():
        stop = asyncio.Event()
        loop_task = asyncio.create_task(scheduler.run(stop))
        try:
            while by_id(scheduler.snapshot).get((ids[1], ""), None) is None or (
                by_id(scheduler.snapshot)[ids[1], ""].fetch_success is None
            ):
                assert not loop_task.done()
                await asyncio.sleep(0.01)
        finally:
            stop.set()
            await asyncio.wait_for(loop_task, 10)

    # Lost, the reload would wait out the hour-long interval; 60 s is a hang guard, not a timing claim.
    asyncio.run(asyncio.wait_for(go(), 60))
    assert by_id(scheduler.snapshot)[ids[1], ""].fetch_success
    assert scheduler.snapshot.cycles == 1


def test_stop_during_a_slow_cycle_returns_promptly(start_simulator):
    sim = start_simulator(datasets=3, scenario="slow", fault_rate=1.0, slow_seconds=30)
    scheduler = Scheduler(make(sim, [{"id": EXAMPLE_DATASET_ID}]), secrets())

    async def go():
        stop = asyncio.Event()
        task = asyncio.create_task(scheduler.run(stop))
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.wait_for(task, 10)  # a hang guard, not a performance assertion

    asyncio.run(go())
    assert not scheduler.snapshot.ready


def test_a_cycle_leaves_nothing_frozen_and_its_cyclic_garbage_collected(simulator, monkeypatch):
    """Parsed records are frozen out of the collector's sight during a cycle; that must not become a leak."""

    class Node:
        pass

    monkeypatch.setattr(scheduler_module, "FREEZE_EVERY", 1)
    garbage: list[weakref.ref] = []
    frozen_during: list[int] = []

    def progress(done, total, failed):
        node = Node()
        node.self = node  # a reference cycle: only the collector can free it, and it may be frozen next
        garbage.append(weakref.ref(node))
        frozen_during.append(gc.get_freeze_count())

    ids = simulator.world.dataset_ids[:6]
    scheduler = Scheduler(make(simulator, [{"id": i} for i in ids]), secrets(), progress=progress)
    run_cycle(scheduler)
    assert len(garbage) == 6 and max(frozen_during) > 0  # the freeze did happen during the cycle
    assert gc.get_freeze_count() == 0
    assert all(ref() is None for ref in garbage)


def test_a_cycles_data_is_published_before_its_closing_collection(simulator, monkeypatch):
    """The full collection that ends a cycle walks the whole heap (0.3 s at 10,000 datasets): the cycle's
    snapshot and its exposition are published before it, not kept from the scrapes that long."""
    ids = simulator.world.dataset_ids[:6]
    scheduler = Scheduler(make(simulator, [{"id": i} for i in ids]), secrets())
    published_when_collecting: list[bool] = []

    class WatchedCollector:
        freeze, unfreeze, get_freeze_count = gc.freeze, gc.unfreeze, gc.get_freeze_count

        @staticmethod
        def collect(*args: int) -> int:
            snapshot = scheduler.snapshot
            published_when_collecting.append(
                snapshot.exposition is not None and all(state.fetch_success for state in snapshot.datasets)
            )
            return gc.collect(*args)

    monkeypatch.setattr(scheduler_module, "gc", WatchedCollector)
    run_cycle(scheduler)
    assert published_when_collecting == [True]


def test_a_reload_outcome_is_published_on_the_loop_thread_and_visible_on_return(simulator):
    """note_reload comes from a web or signal thread; publishing there would race a running cycle."""
    scheduler = Scheduler(make(simulator, [{"id": simulator.world.dataset_ids[0]}]), secrets())
    publish = scheduler._publish
    threads: list[int] = []

    def recording_publish():
        threads.append(threading.get_ident())
        return publish()

    scheduler._publish = recording_publish
    loop_thread: list[int] = []
    stop_holder: list[asyncio.Event] = []

    async def loop_main():
        loop_thread.append(threading.get_ident())
        stop = asyncio.Event()
        stop_holder.append(stop)
        await scheduler.run(stop)

    runner = threading.Thread(target=asyncio.run, args=(loop_main(),))
    runner.start()
    try:
        deadline = time.monotonic() + 60  # a hang guard
        while not scheduler.snapshot.ready:
            assert time.monotonic() < deadline and runner.is_alive()
            time.sleep(0.01)
        threads.clear()
        scheduler.note_reload(False)
        assert scheduler.snapshot.reload_success is False  # visible as soon as note_reload returns
        scheduler.note_reload(True)
        assert scheduler.snapshot.reload_success is True and scheduler.snapshot.reload_timestamp is not None
        assert threads and set(threads) == {loop_thread[0]} != {threading.get_ident()}
    finally:
        scheduler._loop.call_soon_threadsafe(stop_holder[0].set)
        runner.join(30)
    assert not runner.is_alive()
    scheduler.note_reload(False)  # the loop has gone: published directly
    assert scheduler.snapshot.reload_success is False


def test_a_failing_offline_source_keeps_the_web_data_and_its_own_last_data(start_simulator):
    sim = start_simulator(datasets=30)
    with_offline = [i for i in sim.world.dataset_ids if sim.world.quality(i, None)["offline"]][:2]
    scheduler = Scheduler(make(sim, [{"id": i} for i in with_offline], sources=("web", "offline")), secrets())
    first = by_id(run_cycle(scheduler))[with_offline[0], ""]
    assert first.quality.offline and first.source_success == {"offline": True}
    sim.set_fault(with_offline[0], "offline_refused")
    states = by_id(run_cycle(scheduler))
    state = states[with_offline[0], ""]
    assert state.fetch_success and state.quality.events  # web is the dataset's success
    assert state.quality.offline == first.quality.offline  # the last good offline data stays
    assert state.source_success == {"offline": False}
    assert state.source_failures[("offline", "permission")] == 1 and state.failures["permission"] == 0
    assert states[with_offline[1], ""].source_success == {"offline": True}


def test_a_reload_looks_up_only_what_it_changed(start_simulator):
    sim = start_simulator(datasets=60, per_business=20, app_secret="sim-app-secret")
    a, b = list(sim.world.businesses.values())[:2]
    ids = sim.world.dataset_ids

    def config(datasets, sources):
        raw = {
            "graph_api": {"base_url": sim.url, "timeout": "5s", "max_retries": 0, "app_id": sim.settings.app_id,
                          "app_secret_env": "APP_SECRET"},
            "datasets": [{"id": i} for i in datasets],
            "discovery": [{"business_id": s, "edges": ["owned_pixels"]} for s in sources],
        }  # fmt: skip
        return validate(raw, "test.yaml")

    with_app = Secrets({"default": TOKEN}, "sim-app-secret")
    scheduler = Scheduler(config([ids[45]], [a.id]), with_app)

    async def reload_to(new_config, new_secrets):
        scheduler.replace_config(new_config, new_secrets)
        scheduler._apply_pending()
        before = len(sim.requests)
        await scheduler.prepare()
        return list(sim.requests)[before:]

    async def go():
        try:
            await scheduler.prepare()
            same = await reload_to(config([ids[45]], [a.id]), with_app)
            assert same == []  # nothing changed: not one call
            added = await reload_to(config([ids[45], ids[46]], [a.id, b.id]), with_app)
            assert any(f"/{b.id}/owned_pixels" in line for line in added)  # the new source
            assert not any(f"/{a.id}/owned_pixels" in line for line in added)  # the known one
            items = [line for line in added if line.startswith("BATCH-ITEM")]
            assert len(items) == 1 and ids[46] in items[0]  # metadata of the new dataset only
            assert not any("debug_token" in line for line in added)  # the tokens did not change
            rotated = await reload_to(
                config([ids[45], ids[46]], [a.id, b.id]), Secrets({"default": "new-token"}, "sim-app-secret")
            )
            assert any("debug_token" in line for line in rotated)  # a changed token is checked again
        finally:
            await scheduler.close()

    sim.valid_tokens.add("new-token")
    asyncio.run(go())


def test_stop_during_a_reloads_discovery_returns_promptly(simulator, monkeypatch):
    from exporter.collect.housekeeping import Housekeeping

    ids = simulator.world.dataset_ids
    business = next(iter(simulator.world.businesses.values()))
    scheduler = Scheduler(make(simulator, [{"id": ids[0]}]), secrets())
    real = Housekeeping.discover
    slow = asyncio.Event()

    async def discover(self, client, config, tokens):
        if config.discovery:
            slow.set()
            await asyncio.sleep(600)  # a discovery of a huge business, or a hung edge
        await real(self, client, config, tokens)

    monkeypatch.setattr(Housekeeping, "discover", discover)

    async def go():
        stop = asyncio.Event()
        task = asyncio.create_task(scheduler.run(stop))
        while not scheduler.snapshot.ready:
            await asyncio.sleep(0.01)
        with_discovery = validate(
            {"graph_api": {"base_url": simulator.url}, "datasets": [{"id": ids[0]}],
             "discovery": [{"business_id": business.id, "edges": ["owned_pixels"]}]},
            "test.yaml",
        )  # fmt: skip
        scheduler.replace_config(with_discovery, secrets())
        await asyncio.wait_for(slow.wait(), 10)
        stop.set()
        await asyncio.wait_for(task, 5)  # SIGTERM sets `stop`; the process must be gone within 5 s

    asyncio.run(go())


@pytest.mark.parametrize(
    ("held_back", "advice"), [(0.0, "collection.concurrency"), (0.2, "rate limits held calls back")]
)
def test_the_overrun_warning_gives_advice_that_matches_its_cause(simulator, monkeypatch, caplog, held_back, advice):
    from exporter.collect.fetcher import Fetcher

    async def slow_run(self, targets, *, spacing, deadline):
        self.held_back = held_back
        await asyncio.sleep(0.25)

    monkeypatch.setattr(Fetcher, "run", slow_run)
    scheduler = Scheduler(make(simulator, [{"id": EXAMPLE_DATASET_ID}], interval="100ms", stale_after="1s"), secrets())
    with caplog.at_level(logging.WARNING):
        run_cycle(scheduler)
    (line,) = [r.getMessage() for r in caplog.records if "overran" in r.getMessage()]
    assert advice in line
    assert ("concurrency" in line) == (held_back == 0.0) or "would not help" in line


def test_no_answer_can_poison_the_fleet(start_simulator):
    """A lone surrogate, values out of range and a token echoed back: each costs its value or its dataset,
    and /metrics and /status still render for the whole fleet."""
    from exporter.exposition.publisher import render
    from exporter.web.status import status_html, status_json

    token = "EAAB" + "q" * 40
    sim = start_simulator(datasets=6, tokens=(token,))
    ids = sim.world.dataset_ids
    sim.set_fault(ids[1], "surrogate_name")
    sim.set_fault(ids[2], "out_of_range")
    sim.set_fault(ids[3], "token_echo")
    scheduler = Scheduler(make(sim, [{"id": i} for i in ids[:5]]), Secrets({"default": token}))
    snap = run_cycle(scheduler)
    states = by_id(snap)
    assert states[ids[1], ""].fetch_success and any("\ufffd" in e.event_name for e in states[ids[1], ""].quality.events)
    assert states[ids[2], ""].fetch_success and snap.values_dropped == 4  # EMQ 42, 250 %, -0.5 %, ACR 1e298
    assert states[ids[3], ""].last_reason == "auth" and token not in states[ids[3], ""].last_message
    text = render(snap).decode()  # strict UTF-8
    assert 'event_name="Purchase \ufffd lone"' in text
    for page in (status_html(snap), status_json(snap)):
        assert token.encode() not in page
        page.decode()


def test_a_mid_cycle_render_runs_beside_the_fetching_not_in_its_way(start_simulator, monkeypatch):
    from exporter.exposition.publisher import Publisher

    sim = start_simulator(datasets=30, seed=7, latency=0.02)
    monkeypatch.setattr(scheduler_module, "BURST_PUBLISH_EVERY", 0.0)  # publish whenever no render is running
    ids = sim.world.dataset_ids
    scheduler = Scheduler(make(sim, [{"id": i} for i in ids], concurrency=2, batch_size=1), secrets())
    real = Publisher.publish
    renders = []  # (thread, datasets fetched when the render began, when it ended)

    def slow(self, snapshot, defer=None):
        before = scheduler.recorder.cycle_done
        time.sleep(0.3)  # a long render, handing the GIL over as a render does
        renders.append((threading.current_thread().name, before, scheduler.recorder.cycle_done))
        return real(self, snapshot, defer)

    monkeypatch.setattr(Publisher, "publish", slow)
    snap = run_cycle(scheduler)
    mid_cycle = [(before, after) for thread, before, after in renders if thread == "render"]
    assert mid_cycle and any(after > before for before, after in mid_cycle)  # fetching went on meanwhile
    assert renders[-1][0] == threading.current_thread().name  # the cycle's last publish: every dataset in it
    text = snap.exposition.get(openmetrics=False, compressed=False).bytes().decode()
    assert all(f'dataset_id="{i}"' in text for i in ids) and all(s.fetch_success for s in snap.datasets)


def test_a_burst_renders_once_its_last_requests_are_out(start_simulator, monkeypatch):
    """In a burst, once what is left to fetch fits in the requests in flight, a render begins without waiting
    for the clock: the cycle's last publish is left with the last answers only. A paced cycle does not."""
    from exporter.exposition.publisher import Publisher

    sim = start_simulator(datasets=30, seed=7, latency=0.02)
    monkeypatch.setattr(scheduler_module, "BURST_PUBLISH_EVERY", 3600.0)  # no mid-cycle render by the clock
    real = Publisher.publish
    fetched_at_render: list[int] = []  # per mid-cycle render: the datasets its snapshot has results for

    def watched(self, snapshot, defer=None):
        if threading.current_thread().name == "render":
            fetched_at_render.append(sum(1 for s in snapshot.datasets if s.fetch_success is not None))
        return real(self, snapshot, defer)

    monkeypatch.setattr(Publisher, "publish", watched)
    datasets = [{"id": i} for i in sim.world.dataset_ids]
    burst = Scheduler(make(sim, datasets, concurrency=2, batch_size=2), secrets())  # 4 datasets in flight
    run_cycle(burst)
    total = len(burst.targets)
    assert len(fetched_at_render) == 1 and total - 4 <= fetched_at_render[0] < total
    assert all(s.fetch_success for s in burst.snapshot.datasets)
    fetched_at_render.clear()
    paced = Scheduler(make(sim, datasets, interval="2s", concurrency=2, batch_size=2), secrets())
    run_cycle(paced, paced=True)
    assert fetched_at_render == [] and all(s.fetch_success for s in paced.snapshot.datasets)


def test_a_render_defers_to_a_busy_loop_until_the_loop_waits_for_it(simulator):
    """Before each dataset it renders, a mid-cycle render waits while the loop has work (its selector is not
    waiting); the loop's own wait for the render (`result`) hurries it."""
    from exporter.config.targets import Target
    from exporter.exposition.publisher import Publisher
    from exporter.state.snapshot import DatasetState, Snapshot

    quality = parse_dataset_quality(simulator.world.quality(simulator.world.dataset_ids[0], None))
    states = tuple(DatasetState(Target(str(100 + i)), quality, True, 1.0) for i in range(20))
    snapshot = Snapshot(generation=1, created=0.0, datasets=states)
    loop_waiting = threading.Event()  # the loop is busy: not waiting in its selector

    publisher = Publisher()
    render = scheduler_module._Render(publisher, snapshot, loop_waiting)
    time.sleep(0.2)
    assert publisher.rendered == 0 and not render.done()  # no dataset rendered while the loop works
    loop_waiting.set()  # the loop waits for I/O: the render goes on
    deadline = time.monotonic() + 10
    while not render.done() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert render.done() and publisher.rendered == 20
    assert render.result().exposition is not None

    loop_waiting.clear()
    hurried = scheduler_module._Render(Publisher(), snapshot, loop_waiting)
    time.sleep(0.1)
    assert not hurried.done()
    result = hurried.result()  # the loop waits for it, and not in its selector: it must not wait back
    text = result.exposition.get(openmetrics=False, compressed=False).bytes()
    assert text.count(b"meta_dataset_quality_fetch_success{") == 20


def test_mid_cycle_renders_defer_to_a_collection_loop_only(start_simulator, monkeypatch):
    """On the exporter's CollectionLoop (exporter.collect.eventloop) mid-cycle renders get a way to give way to the loop;
    on any other loop they render at once. Closing the scheduler leaves no render thread behind."""
    from exporter.collect import eventloop as collection_loop
    from exporter.exposition.publisher import Publisher

    sim = start_simulator(datasets=12, seed=3, latency=0.02)
    monkeypatch.setattr(scheduler_module, "BURST_PUBLISH_EVERY", 0.0)
    real = Publisher.publish
    deferring: list[bool] = []  # per mid-cycle render: whether it was handed a `defer`

    def watched(self, snapshot, defer=None):
        if threading.current_thread().name == "render":
            deferring.append(defer is not None)
        return real(self, snapshot, defer)

    monkeypatch.setattr(Publisher, "publish", watched)
    for runner, expected in ((collection_loop.run, True), (asyncio.run, False)):
        deferring.clear()
        scheduler = Scheduler(make(sim, [{"id": i} for i in sim.world.dataset_ids], batch_size=1), secrets())

        async def go(scheduler=scheduler):
            try:
                await scheduler.run_cycle(scheduler.targets, paced=False)
            finally:
                await scheduler.close()

        runner(go())
        assert deferring and set(deferring) == {expected}
        assert all(s.fetch_success for s in scheduler.snapshot.datasets)
    assert not [t for t in threading.enumerate() if t.name == "render"]


def test_closing_the_scheduler_finishes_a_render_the_loop_never_waited_for(simulator):
    """A cycle cut short can leave a render that defers to a loop which no longer runs: close() hurries it,
    and swaps its snapshot in."""
    scheduler = Scheduler(make(simulator, [{"id": i} for i in simulator.world.dataset_ids[:3]]), secrets())
    never = threading.Event()
    scheduler._rendering = scheduler_module._Render(scheduler.publisher, scheduler._recorded(), never)
    asyncio.run(scheduler.close())
    assert scheduler._rendering is None
    assert not [t for t in threading.enumerate() if t.name == "render"]
