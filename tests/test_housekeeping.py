"""Discovery, pixel metadata, token checks and sharding against the simulator over loopback."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from exporter.collect.governor import Governor
from exporter.collect.housekeeping import Gateway, Housekeeping, graph_time, in_shard
from exporter.collect.scheduler import Scheduler
from exporter.config.settings import Secrets, validate
from exporter.graph import GraphClient, GraphError
from exporter.simulator import EXAMPLE_DATASET_ID
from tests.conftest import TOKEN, http


def config_for(sim, **sections):
    raw = {"graph_api": {"base_url": sim.url, "timeout": "5s", "max_retries": 0}, **sections}
    return validate(raw, "test.yaml")


def prepared(sim, config, secrets=None, suspended=()):
    scheduler = Scheduler(config, secrets or Secrets({"default": TOKEN}))
    for name in suspended:  # as after a 190 answer to a whole request
        scheduler.credentials.suspend(name, GraphError("auth", "expired", code=190, subcode=463))

    async def go():
        try:
            await scheduler.prepare()
        finally:
            await scheduler.close()

    asyncio.run(go())
    return scheduler


def test_discovery_follows_every_edge_to_the_end(start_simulator):
    sim = start_simulator(datasets=120, per_business=40)
    world = sim.world
    business = next(iter(world.businesses.values()))
    config = config_for(
        sim,
        discovery=[
            {"business_id": business.id, "labels": {"customer": "acme"}},
            {"business_id": world.agency_id, "edges": ["client_pixels"]},
            {"ad_account_id": f"act_{business.ad_account_id}"},
        ],
    )
    scheduler = prepared(sim, config)
    available = [i for i in world.dataset_ids if not world.pixels[i].is_unavailable]
    assert {t.dataset_id for t in scheduler.targets} == set(available)  # every page, unavailable ones skipped
    assert len(scheduler.targets) == len(available)  # each dataset watched once across three sources
    first = next(t for t in scheduler.targets if t.dataset_id == business.pixel_ids[1])
    assert (first.origin, first.business_id, first.labels) == ("discovery", business.id, (("customer", "acme"),))
    assert first.name == world.pixels[first.dataset_id].name
    snap = scheduler.snapshot
    assert snap.discovery[f"{business.id}/owned_pixels"][0] is True
    assert snap.discovery[f"act_{business.ad_account_id}/adspixels"][0] is True
    assert snap.discovery[f"{world.agency_id}/client_pixels"][0] is True
    state = next(s for s in snap.datasets if s.target.dataset_id == business.pixel_ids[1])
    assert abs(state.last_fired - (time.time() - world.pixels[business.pixel_ids[1]].last_fired_ago)) < 120
    _, _, body = http("GET", sim.url + "/_sim/requests")
    assert TOKEN not in body.decode()  # paging.next was followed with the token in the header


def test_include_exclude_and_configured_datasets_win(start_simulator):
    sim = start_simulator(datasets=30, per_business=50)
    business = next(iter(sim.world.businesses.values()))
    config = config_for(
        sim,
        discovery=[{"business_id": business.id, "edges": ["owned_pixels"], "include": "^Shop", "exclude": "7$"}],
        datasets=[{"id": EXAMPLE_DATASET_ID, "name": "Mine"}],
    )
    scheduler = prepared(sim, config)
    by_id = {t.dataset_id: t for t in scheduler.targets}
    assert by_id[EXAMPLE_DATASET_ID].origin == "config" and by_id[EXAMPLE_DATASET_ID].name == "Mine"
    others = [t for t in scheduler.targets if t.origin == "discovery"]
    assert others and all(t.name.startswith("Shop") and not t.name.endswith("7") for t in others)


def test_failed_or_empty_refresh_keeps_the_last_list_and_a_vanished_pixel_leaves(start_simulator):
    sim = start_simulator(datasets=20, per_business=50)
    business = next(iter(sim.world.businesses.values()))
    source = {"business_id": business.id, "edges": ["owned_pixels"], "refresh": "1s"}
    scheduler = Scheduler(config_for(sim, discovery=[source]), Secrets({"default": TOKEN}))

    async def refresh():
        scheduler.housekeeping.forget_schedule()
        await scheduler.prepare()

    async def go():
        await refresh()
        found = {t.dataset_id for t in scheduler.targets}
        sim.set_scenario("throttled")  # every call fails
        await refresh()
        assert {t.dataset_id for t in scheduler.targets} == found
        assert scheduler.snapshot.discovery[f"{business.id}/owned_pixels"][0] is False
        sim.set_scenario("healthy")
        # discovery's calls go through the governor, which honours the throttle: a reload ends that wait
        scheduler.governor = scheduler.governor.reconfigured(scheduler._make_governor())
        gone = business.pixel_ids[3]
        sim.world.businesses[business.id] = type(business)(
            business.id, business.name, business.ad_account_id, tuple(i for i in business.pixel_ids if i != gone)
        )
        await refresh()
        assert {t.dataset_id for t in scheduler.targets} == found - {gone}
        assert scheduler.snapshot.discovery[f"{business.id}/owned_pixels"][0] is True
        sim.world.businesses[business.id] = type(business)(business.id, business.name, business.ad_account_id, ())
        await refresh()  # an empty answer is suspicious: the last list stays
        assert {t.dataset_id for t in scheduler.targets} == found - {gone}
        assert scheduler.snapshot.discovery[f"{business.id}/owned_pixels"][0] is False
        await scheduler.close()

    asyncio.run(go())


def test_metadata_names_configured_datasets_and_gives_last_fired(simulator):
    ids = simulator.world.dataset_ids[1:4]
    scheduler = prepared(simulator, config_for(simulator, datasets=[{"id": i} for i in ids]))
    for target in scheduler.targets:
        pixel = simulator.world.pixels[target.dataset_id]
        assert (target.name, target.business_id, target.business_name) == (
            pixel.name,
            pixel.business_id,
            pixel.business_name,
        )
    states = {s.target.dataset_id: s for s in scheduler.snapshot.datasets}
    for dataset_id in ids:
        pixel = simulator.world.pixels[dataset_id]
        assert states[dataset_id].last_fired is not None
        assert (states[dataset_id].server_last_fired is None) == (pixel.server_last_fired_ago is None)
        if pixel.server_last_fired_ago is not None:
            assert abs(states[dataset_id].server_last_fired - (time.time() - pixel.server_last_fired_ago)) < 120
    kinds = Counter(line.split()[0] for line in simulator.requests)
    assert (kinds["POST"], kinds["BATCH-ITEM"]) == (1, 3)
    assert scheduler.snapshot.requests[("metadata", "200")] >= 2  # the batch and the ads_dataset page(s)
    assert ("batch", "200") not in scheduler.snapshot.requests
    # server_last_fired_time is a field of AdsDataset, read from the owning business's ads_dataset edge (paged)
    gets = [line for line in simulator.requests if line.startswith("GET")]
    business = simulator.world.pixels[ids[0]].business_id
    assert gets and all(f"/{business}/ads_dataset?" in line for line in gets)
    assert all("server_last_fired_time" not in line for line in simulator.requests if "ads_dataset" not in line)


def test_one_failing_edge_keeps_the_other_edges_pixels(start_simulator):
    """A business that is no agency refuses client_pixels; its owned_pixels must still be watched."""
    sim = start_simulator(datasets=30, per_business=50)
    business = next(iter(sim.world.businesses.values()))
    scheduler = prepared(sim, config_for(sim, discovery=[{"business_id": business.id}]))
    available = {i for i in business.pixel_ids if not sim.world.pixels[i].is_unavailable}
    assert {t.dataset_id for t in scheduler.targets} == available
    discovery = scheduler.snapshot.discovery
    assert discovery[f"{business.id}/owned_pixels"][0] is True
    assert discovery[f"{business.id}/client_pixels"] == (False, None)


def test_token_checks(start_simulator):
    sim = start_simulator(datasets=3, app_secret="app-secret-value", expired_tokens=("old-token",))
    config = config_for(
        sim,
        graph_api={"base_url": sim.url, "app_id": sim.settings.app_id, "app_secret_env": "SECRET"},
        credentials={"default": {"token_env": "A"}, "client_b": {"token_env": "B"}},
    )
    scheduler = prepared(sim, config, Secrets({"default": TOKEN, "client_b": "old-token"}, "app-secret-value"))
    tokens = scheduler.snapshot.tokens
    assert tokens["default"] == (True, 0.0)
    assert tokens["client_b"][0] is False and tokens["client_b"][1] > 0
    assert not any("old-token" in line or TOKEN in line for line in sim.requests if not line.startswith("BATCH-ITEM"))
    assert scheduler.snapshot.requests[("debug_token", "200")] == 1  # a batch, counted as what it carries


def test_token_series_leave_with_their_credential_or_with_the_token_checks(start_simulator):
    sim = start_simulator(datasets=3, app_secret="app-secret-value")
    graph = {"base_url": sim.url, "app_id": sim.settings.app_id, "app_secret_env": "SECRET"}
    both = {"default": {"token_env": "A"}, "client_b": {"token_env": "B"}}
    scheduler = prepared(
        sim,
        config_for(sim, graph_api=graph, credentials=both),
        Secrets({"default": TOKEN, "client_b": TOKEN}, "app-secret-value"),
    )
    assert set(scheduler.snapshot.tokens) == {"default", "client_b"}

    async def reload(config, secrets):
        scheduler.replace_config(config, secrets)
        scheduler._apply_pending()
        await scheduler.prepare()
        await scheduler.close()
        return scheduler.snapshot

    one = {"default": {"token_env": "A"}}
    snap = asyncio.run(reload(config_for(sim, graph_api=graph, credentials=one), Secrets({"default": TOKEN}, "x")))
    assert set(snap.tokens) == {"default"}
    snap = asyncio.run(reload(config_for(sim, credentials=one), Secrets({"default": TOKEN})))
    assert snap.tokens == {}  # token checks turned off: no series left saying what they last said


def test_no_token_checks_without_app_credentials(simulator):
    scheduler = prepared(simulator, config_for(simulator))
    assert scheduler.snapshot.tokens == {}


def test_shards_split_a_fleet_without_overlap(start_simulator):
    ids = [str(100_000_000_000_000 + i) for i in range(3000)]
    parts = [{i for i in ids if in_shard(i, index, 3)} for index in range(3)]
    assert set().union(*parts) == set(ids) and sum(map(len, parts)) == len(ids)
    assert all(800 < len(p) < 1200 for p in parts)  # roughly even
    sim = start_simulator(datasets=10)
    datasets = [{"id": i} for i in sim.world.dataset_ids]
    seen = []
    for index in range(2):
        scheduler = Scheduler(config_for(sim, datasets=datasets, shard={"index": index, "count": 2}), Secrets({}))
        seen.append({t.dataset_id for t in scheduler.targets})
    assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == set(sim.world.dataset_ids)


@pytest.mark.parametrize(
    ("text", "expected"), [("2026-11-29T12:00:00+0000", 1795953600.0), ("soon", None), (None, None)]
)
def test_graph_time(text, expected):
    assert graph_time(text) == expected


def test_housekeeping_is_not_rerun_before_it_is_due(simulator):
    housekeeping = Housekeeping()
    config = config_for(simulator, datasets=[{"id": EXAMPLE_DATASET_ID}])

    async def go():
        async with GraphClient(simulator.url) as client:
            for _ in range(3):
                await housekeeping.refresh_metadata(Gateway(client, Governor(), str), config, {"default": TOKEN})

    asyncio.run(go())
    assert simulator.calls == 1


def test_a_rejected_credential_is_still_token_checked(start_simulator):
    sim = start_simulator(datasets=3, app_secret="app-secret-value", expired_tokens=("old-token",))
    config = config_for(
        sim,
        graph_api={"base_url": sim.url, "app_id": sim.settings.app_id, "app_secret_env": "SECRET"},
        collection={"token_check_interval": "1s"},
    )
    secrets = Secrets({"default": "old-token"}, "app-secret-value")
    scheduler = prepared(sim, config, secrets, suspended=["default"])
    assert scheduler.snapshot.tokens["default"][0] is False


def test_a_pixel_field_meta_refuses_costs_that_field_in_discovery_and_metadata(start_simulator):
    sim = start_simulator(datasets=30, per_business=50)
    sim.withdraw_field("AdsPixel", "last_fired_time")
    business = next(iter(sim.world.businesses.values()))
    config = config_for(
        sim,
        discovery=[{"business_id": business.id, "edges": ["owned_pixels"]}],
        datasets=[{"id": EXAMPLE_DATASET_ID, "credential": "default"}],
    )
    scheduler = prepared(sim, config)
    available = {i for i in business.pixel_ids if not sim.world.pixels[i].is_unavailable}
    assert {t.dataset_id for t in scheduler.targets} == available | {EXAMPLE_DATASET_ID}
    assert scheduler.snapshot.discovery[f"{business.id}/owned_pixels"][0] is True
    assert dict(scheduler.snapshot.unsupported_fields) == {"last_fired_time": "AdsPixel"}
    named = next(t for t in scheduler.targets if t.dataset_id == EXAMPLE_DATASET_ID)
    assert named.name == sim.world.pixels[EXAMPLE_DATASET_ID].name  # metadata arrived without the field


def test_discovery_and_metadata_calls_wait_for_the_governor(start_simulator, monkeypatch):
    """Housekeeping's calls count against the same limits: a throttled business's edges are not read (they used
    to be called regardless, each call counted by Meta while throttled)."""
    import exporter.collect.housekeeping as discovery

    monkeypatch.setattr(discovery, "GOVERNOR_WAIT", 0.2, raising=False)
    sim = start_simulator(datasets=20, per_business=50)
    business = next(iter(sim.world.businesses.values()))
    config = config_for(sim, discovery=[{"business_id": business.id, "edges": ["owned_pixels"]}])
    scheduler = Scheduler(config, Secrets({"default": TOKEN}))
    scheduler.governor.throttled(("business", business.id), 300)

    async def go():
        try:
            await scheduler.prepare()
        finally:
            await scheduler.close()

    asyncio.run(go())
    assert sim.calls == 0
    assert scheduler.snapshot.discovery[f"{business.id}/owned_pixels"][0] is False


def test_a_paging_next_that_loops_ends_the_listing_as_a_failure(start_simulator):
    sim = start_simulator(datasets=20, per_business=50)
    business = next(iter(sim.world.businesses.values()))
    sim.set_fault(business.id, "paging_loop")
    config = config_for(sim, discovery=[{"business_id": business.id, "edges": ["owned_pixels"]}])
    scheduler = prepared(sim, config)
    assert scheduler.snapshot.discovery[f"{business.id}/owned_pixels"][0] is False
    assert sim.calls <= 3  # the first page, the page `next` named, and the same page named again: stop


# ----- round 2 of the adversarial probe (issue 26) ----------------------------------------------------------------
def test_endless_pages_of_new_pixels_stop_at_max_pixels_and_say_so(start_simulator):
    sim = start_simulator(datasets=10, per_business=50)
    business = next(iter(sim.world.businesses.values()))
    sim.set_fault(business.id, "endless_pages")
    config = config_for(sim, discovery=[{"business_id": business.id, "edges": ["owned_pixels"], "max_pixels": 250}])
    scheduler = prepared(sim, config)
    edge = f"{business.id}/owned_pixels"
    assert len(scheduler.targets) == 250 and sim.calls <= 5  # three pages of 100, not for ever
    assert scheduler.snapshot.discovery[edge][0] is True and scheduler.snapshot.discovery_truncated == (edge,)
    from exporter.exposition.publisher import render

    assert f'meta_dataset_quality_discovery_truncated{{source="{edge}"}} 1.0' in render(scheduler.snapshot).decode()


def test_a_pixel_name_of_megabytes_is_cut(start_simulator):
    sim = start_simulator(datasets=10, per_business=50)
    business = next(iter(sim.world.businesses.values()))
    sim.set_fault(business.pixel_ids[0], "huge_name")
    config = config_for(sim, discovery=[{"business_id": business.id, "edges": ["owned_pixels"]}])
    scheduler = prepared(sim, config)
    named = next(t for t in scheduler.targets if t.dataset_id == business.pixel_ids[0])
    assert len(named.name) < 300 and named.name.endswith("…[cut]")


def test_discovery_never_holds_back_the_configured_datasets(start_simulator):
    """A broken or slow edge used to hold the first cycle: /-/ready stayed 503 and configured datasets had no data.
    The first cycle fetches them while discovery runs, and what discovery finds right after."""
    sim = start_simulator(datasets=20, per_business=10, slow_seconds=1.5)
    first, second = list(sim.world.businesses.values())[:2]
    sim.set_fault(second.id, "slow_edge")
    config = config_for(
        sim,
        discovery=[{"business_id": second.id, "edges": ["owned_pixels"]}],
        datasets=[{"id": i} for i in first.pixel_ids[:3]],
        collection={"interval": "1h"},
    )
    scheduler = Scheduler(config, Secrets({"default": TOKEN}))

    async def go():
        stop = asyncio.Event()
        task = asyncio.create_task(scheduler.run(stop))
        try:
            while not scheduler.snapshot.ready:
                await asyncio.sleep(0.02)
            at_ready = scheduler.snapshot
            while not any(s.target.origin == "discovery" and s.fetch_success for s in scheduler.snapshot.datasets):
                await asyncio.sleep(0.05)
            return at_ready
        finally:
            stop.set()
            await task

    at_ready = asyncio.run(go())
    fetched = {s.target.dataset_id for s in at_ready.datasets if s.fetch_success}
    assert fetched == set(first.pixel_ids[:3])  # ready with the configured datasets, before the slow edge answered
