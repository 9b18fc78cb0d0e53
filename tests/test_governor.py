"""The governor's decisions, with a fake clock."""

from __future__ import annotations

import logging

import pytest

from exporter.governor import Governor

APP, BIZ = ("app", "default"), ("business", "42")


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock()


def governor(clock, **kw):
    return Governor(clock=clock, wall_clock=lambda: 1_700_000_000 + clock.now, **kw)


def reserve_all(gov, key, limit=1000):
    n = 0
    while n < limit and gov.try_reserve([key]):
        n += 1
    return n


def test_unknown_usage_allows_a_few_calls_in_flight(clock):
    gov = governor(clock, initial_allowance=10)
    assert reserve_all(gov, BIZ) == 10
    gov.release([BIZ])
    assert gov.try_reserve([BIZ])


def test_allowance_follows_the_observed_cost_per_call(clock):
    gov = governor(clock, threshold=0.75)
    gov.observe(BIZ, 0.10)
    gov.observe(BIZ, 0.15)  # 5 % per call
    assert gov.allowance(BIZ) == 12  # (75 - 15) / 5
    assert reserve_all(gov, BIZ) == 12


def test_hot_key_cools_down_then_probes_one_call_at_a_time(clock):
    gov = governor(clock, threshold=0.75, cooldown=60)
    gov.observe(BIZ, 0.80)
    assert gov.allowance(BIZ) == 0
    assert gov.next_release([BIZ]) == 160
    clock.now = 161
    assert reserve_all(gov, BIZ) == 1  # one probe
    gov.release([BIZ])
    gov.observe(BIZ, 0.30)  # usage fell: back to normal
    assert gov.allowance(BIZ) > 1


def test_throttle_blocks_for_the_announced_time_then_probes(clock):
    gov = governor(clock, default_wait=300)
    gov.throttled(BIZ, 120)
    assert gov.allowance(BIZ) == 0 and not gov.try_reserve([APP, BIZ])
    assert gov.throttled_until() == {BIZ: 1_700_000_000 + 220}
    assert gov.next_release([BIZ]) == 220
    clock.now = 221
    assert gov.throttled_until() == {}
    assert reserve_all(gov, BIZ) == 1


def test_throttle_without_an_announced_wait_uses_the_default(clock):
    gov = governor(clock, default_wait=300)
    gov.throttled(APP, None)
    assert gov.next_release([APP]) == 400


def test_one_blocked_key_does_not_hold_back_others(clock):
    gov = governor(clock)
    gov.throttled(("business", "1"), 100)
    assert gov.try_reserve([APP, ("business", "2")])
    assert not gov.try_reserve([APP, ("business", "1")])
    assert gov.next_release([("business", "2")]) == 100  # now
    assert gov.next_release([("business", "1"), ("business", "2")]) == 200  # a call needs all of its keys


def test_next_release_of_a_throttled_business_is_not_now_because_its_app_is_free(clock):
    """The give-up of a cycle compares this with its deadline: 'now' made `once` wait out a whole interval."""
    gov = governor(clock)
    gov.throttled(("business", "1"), 300)
    assert gov.next_release([APP, ("business", "1")]) == 400


def test_hourly_budget(clock):
    gov = governor(clock, max_calls_per_hour=3, initial_allowance=100)
    assert reserve_all(gov, APP) == 3
    for _ in range(3):
        gov.release([APP])
    assert not gov.try_reserve([APP])
    assert gov.next_release([APP]) == 3700
    clock.now = 3701
    assert gov.try_reserve([APP])


def test_a_reload_resets_throttles_but_keeps_the_hourly_budget(clock):
    gov = governor(clock, max_calls_per_hour=2)
    gov.throttled(BIZ, 1e300)  # Meta announced an absurd wait
    assert gov.try_reserve([APP])
    fresh = gov.reconfigured(governor(clock, threshold=0.5, max_calls_per_hour=2))
    assert fresh.threshold == 0.5 and fresh.allowance(BIZ) > 0  # the operator's way out of a wrong wait
    assert fresh.budget_left() == 1


def test_an_announced_wait_is_clamped_to_a_day(clock):
    gov = governor(clock)
    gov.throttled(BIZ, 1e300)
    assert gov.next_release([BIZ]) == clock.now + 86400
    assert gov.throttled_until()[BIZ] == 1_700_000_000 + clock.now + 86400


def test_a_throttle_is_said_once_with_the_count_of_answers_it_cost(clock, caplog):
    gov = governor(clock)
    with caplog.at_level(logging.WARNING):
        for _ in range(24):  # a batch's items in flight, all answered throttled in the same moment
            gov.throttled(BIZ, 60)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "is throttled" in lines[0]
    clock.now += 61
    with caplog.at_level(logging.WARNING):
        gov.throttled(BIZ, 60)
    assert "(23 more answers were throttled the last time)" in caplog.records[-1].getMessage()
