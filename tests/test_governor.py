"""The governor's decisions, with a fake clock."""

from __future__ import annotations

import logging

import pytest

from exporter.collect.governor import Governor

APP, BIZ = ("app", "default"), ("business", "42")


class Clock:
    def __init__(self):
        self.now = 100.0

    def monotonic(self):
        return self.now

    def time(self):
        return 1_700_000_000 + self.now

    async def sleep(self, seconds):
        self.now += seconds


@pytest.fixture
def clock():
    return Clock()


def governor(clock, **kw):
    return Governor(clock=clock, **kw)


def reserve_all(gov, key, limit=1000):
    n = 0
    while n < limit and gov.try_reserve([key]):
        n += 1
    return n


def test_unknown_usage_sets_no_limit_of_its_own(clock):
    """Meta sends usage headers only once enough calls have been made: until a reading arrives, the configured
    concurrency and batch size decide, not the governor (it allowed 10 calls before, a fifth of one batch)."""
    gov = governor(clock)
    assert reserve_all(gov, BIZ) == 1000
    gov.observe(BIZ, 0.50)  # a reading, and the allowance follows it
    gov.observe(BIZ, 0.55)
    gov.reset_reservations()
    assert reserve_all(gov, BIZ) == 4


def test_acquire_waits_for_a_throttled_key_and_gives_up_past_its_deadline(clock):
    import asyncio

    gov = governor(clock)
    gov.throttled(BIZ, 30)
    assert asyncio.run(gov.acquire([BIZ], deadline=clock.now + 10)) is False
    clock.now += 31
    assert asyncio.run(gov.acquire([BIZ], deadline=clock.now + 10)) is True


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
    gov = governor(clock, max_calls_per_hour=3)
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


def test_a_business_throttle_with_several_entries_waits_for_the_longest(clock):
    from exporter.graph import GraphError
    from exporter.graph.ratelimit import RateLimitUsage

    gov = governor(clock)
    usage = RateLimitUsage(regain_seconds=(("42", 600.0), ("42", 60.0)))  # two use cases of one business
    blocked = gov.throttle(APP, BIZ, GraphError("throttled", "too many", code=80004, usage=usage))
    assert blocked == [BIZ] and gov.next_release([BIZ]) == clock.now + 600
    assert gov.next_release([APP]) == clock.now  # a business's throttle is not its app's


def test_an_app_throttle_blocks_the_app_whichever_credential_was_throttled(clock):
    from exporter.graph import GraphError

    gov = governor(clock)
    blocked = gov.throttle(("app", "1000"), BIZ, GraphError("throttled", "(#4) limit", code=4, retry_after=120))
    assert blocked == [("app", "1000")] and gov.next_release([("app", "1000"), BIZ]) == clock.now + 120


def test_keys_not_used_for_a_while_are_forgotten_unless_they_hold_something_back(clock):
    gov = governor(clock)
    for n in range(5000):  # businesses named once by usage headers, never again
        gov.observe(("business", str(n)), 0.1)
    gov.throttled(("business", "held"), 10_000)  # still throttled when the others are forgotten
    clock.now += 7200
    gov.forget_idle(3600)
    assert set(gov._states) == {("business", "held")}
