"""Faults mixed: flaky, slow and throttled phases, per-dataset faults, then recovery within two cycles.

The random mix (seeded) tests that nothing breaks; every assertion that a fault happened rests on a fault
injected on purpose, and each phase lasts at least one whole cycle, so no assertion depends on luck.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from exporter.collect.scheduler import Scheduler
from exporter.config.settings import Secrets, validate
from exporter.graph.errors import REASONS
from exporter.graph.parser import parse_dataset_quality
from tests.conftest import TOKEN

TRANSPORT_REASONS = {"transient", "timeout", "network", "invalid_response", "throttled"}


@pytest.mark.slow
def test_the_loop_survives_mixed_faults_and_recovers_within_two_cycles(start_simulator):
    sim = start_simulator(datasets=59, per_business=20, throttle_seconds=1.5, slow_seconds=1.5, fault_rate=0.3, seed=4)
    ids = sim.world.dataset_ids
    sim.set_fault(ids[1], "permission")
    sim.set_fault(ids[2], "not_found")
    config = validate(
        {
            "graph_api": {"base_url": sim.url, "timeout": "1s", "max_retries": 1},
            "collection": {"interval": "2s", "concurrency": 4, "throttle_wait": "1s", "stale_after": "1h"},
            "datasets": [{"id": i} for i in ids],
        },
        "faults.yaml",
    )
    scheduler = Scheduler(config, Secrets({"default": TOKEN}))
    expected = {i: parse_dataset_quality({"web": sim.world.quality(i, None)["web"]}).events for i in ids}
    seen_reasons: dict[str, set[str]] = {i: set() for i in ids}

    def check_snapshot():
        for state in scheduler.snapshot.datasets:
            dataset_id = state.target.dataset_id
            if state.quality is not None:  # data is only ever the dataset's own
                assert state.quality.events == expected[dataset_id], f"{dataset_id} serves someone else's data"
            if state.last_reason:
                seen_reasons[dataset_id].add(state.last_reason)
            assert set(state.failures) <= set(REASONS)

    async def phase(scenario: str, fault: str | None = None):
        """At least two seconds and one whole cycle (begun after the phase began) of `scenario`."""
        sim.set_scenario(scenario)
        sim.set_fault(ids[3], fault)
        started, cycles = time.monotonic(), scheduler.snapshot.cycles
        while time.monotonic() < started + 2 or scheduler.snapshot.cycles < cycles + 2:
            check_snapshot()
            assert time.monotonic() < started + 120, f"no whole cycle in the {scenario} phase"
            await asyncio.sleep(0.1)
        sim.set_fault(ids[3], None)

    async def go():
        stop = asyncio.Event()
        loop = asyncio.create_task(scheduler.run(stop))
        for scenario, fault in (("healthy", None), ("flaky", "transient_2"), ("slow", None), ("throttled", None)):
            await phase(scenario, fault)
            assert not loop.done(), "the loop died"
        await phase("flaky")
        sim.set_scenario("healthy")
        recovered_at = time.time()
        cycles = scheduler.snapshot.cycles
        while scheduler.snapshot.cycles < cycles + 2:  # two full cycles after the faults stopped
            check_snapshot()
            await asyncio.sleep(0.1)
        stop.set()
        await asyncio.wait_for(loop, 10)
        return recovered_at

    recovered_at = asyncio.run(go())
    states = {s.target.dataset_id: s for s in scheduler.snapshot.datasets}
    assert states[ids[1]].last_reason == "permission" and states[ids[2]].last_reason == "not_found"
    assert seen_reasons[ids[1]] <= {"permission"} | TRANSPORT_REASONS
    for dataset_id in ids[3:]:
        state = states[dataset_id]
        assert state.fetch_success and state.last_success > recovered_at, f"{dataset_id} is not fresh"
        assert seen_reasons[dataset_id] <= TRANSPORT_REASONS, seen_reasons[dataset_id]
    assert "transient" in seen_reasons[ids[3]]  # injected in the flaky phase, past the one retry
    assert all("throttled" in seen_reasons[i] for i in ids[3:])  # a whole cycle of the throttled phase
