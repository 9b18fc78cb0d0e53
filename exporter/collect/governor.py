"""The rate-limit governor: decides how many calls may go to each app and business right now.

Meta asks clients to watch the usage headers, slow down before 100 % and stop once throttled (throttled calls
still count). Each key (`("app", credential)` or `("business", business_id)`) has an allowance:

- usage unknown (Meta sends usage headers only once enough calls have been made): no limit of the
  governor's, so the configured concurrency and batch size apply;
- usage below the threshold: as many calls as fit below the threshold at the observed cost per call;
- usage at or above the threshold: none until `cooldown` has passed, then one probe call at a time;
- throttled: none until the announced `estimated_time_to_regain_access` (or `default_wait`), then one probe.

An optional hard budget caps calls in any rolling hour. The governor is used from the event loop's thread only.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from exporter.common.clock import SYSTEM_CLOCK, Clock
from exporter.graph.errors import BUSINESS_THROTTLE_CODES, GraphError
from exporter.graph.ratelimit import RateLimitUsage

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (scope, object id): ("app", credential name) or ("business", business id)
DEFAULT_STEP = 0.01  # assumed usage per call before any answer
MAX_ALLOWANCE = 1000  # calls in flight for one key when its usage hardly moves
MAX_WAIT = 86400.0  # the longest announced wait believed: a throttle of 1e300 s must not block a key for ever


@dataclass
class _State:
    usage: float | None = None
    step: float = 0.0  # the largest usage increase seen between two answers: the cost of one call
    observed: int = 0
    reserved: int = 0
    cool_until: float = 0.0
    blocked_until: float = 0.0
    blocked_wall: float = 0.0
    throttled_answers: int = 0  # answered throttled while already blocked (calls that were in flight), unlogged
    used: float = 0.0  # when a call was last reserved, observed or throttled under this key


class Governor:
    def __init__(
        self,
        *,
        threshold: float = 0.75,
        cooldown: float = 60.0,
        default_wait: float = 300.0,
        max_calls_per_hour: int | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self.default_wait = default_wait
        self.max_calls_per_hour = max_calls_per_hour
        self.clock = clock
        self._now = clock.monotonic
        self._wall = clock.time
        self._sleep = clock.sleep
        self._states: dict[Key, _State] = {}
        self._calls: deque[float] = deque()  # start times within the last hour, for the budget

    def _state(self, key: Key) -> _State:
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = _State()
        state.used = self._now()
        return state

    def forget_idle(self, older_than: float) -> None:
        """Forget keys not used for `older_than` seconds and holding nothing back (no reservation, wait or
        budget): usage headers can name any business, and each named one would otherwise be kept for ever."""
        cutoff = self._now() - older_than
        for key in [k for k, s in self._states.items() if s.used < cutoff and not s.reserved]:
            state = self._states[key]
            if state.blocked_until <= self._now() and state.cool_until <= self._now():
                del self._states[key]

    # ----- dispatch ------------------------------------------------------------------------------------
    def allowance(self, key: Key) -> int:
        state = self._state(key)
        now = self._now()
        if now < state.blocked_until or now < state.cool_until:
            return 0
        if state.usage is None:
            return MAX_ALLOWANCE - state.reserved
        if state.usage >= self.threshold:
            return 1 - state.reserved  # a probe, to read the usage again
        # Until an increase between two answers shows the cost of a call, spread the usage over the calls seen.
        step = state.step or (state.usage / state.observed if state.observed else DEFAULT_STEP)
        fits = MAX_ALLOWANCE if step < 1e-4 else math.floor((self.threshold - state.usage) / step + 1e-9)
        return max(min(fits, MAX_ALLOWANCE), 1) - state.reserved

    def budget_left(self) -> int | None:
        if self.max_calls_per_hour is None:
            return None
        cutoff = self._now() - 3600
        while self._calls and self._calls[0] <= cutoff:
            self._calls.popleft()
        return self.max_calls_per_hour - len(self._calls)

    def try_reserve(self, keys: Iterable[Key]) -> bool:
        """Reserve one call for every key if all allow it (and the hourly budget does)."""
        keys = tuple(keys)
        budget = self.budget_left()
        if (budget is not None and budget <= 0) or any(self.allowance(k) <= 0 for k in keys):
            return False
        for key in keys:
            self._state(key).reserved += 1
        if budget is not None:
            self._calls.append(self._now())
        return True

    async def acquire(self, keys: Iterable[Key], deadline: float) -> bool:
        """Wait until one call for every key may go, and reserve it; False if that moment is past `deadline`
        (monotonic). For the calls made outside a collection pass (discovery, metadata, token checks)."""
        keys = tuple(keys)
        while not self.try_reserve(keys):
            wake = self.next_release(keys)
            if wake >= deadline:
                return False
            await self._sleep(max(0.05, wake - self._now()))
        return True

    def release(self, keys: Iterable[Key]) -> None:
        for key in keys:
            state = self._state(key)
            state.reserved = max(0, state.reserved - 1)

    # ----- what the answers said -------------------------------------------------------------------------
    def observe(self, key: Key, usage: float, calls: int = 1) -> None:
        """The usage Meta reported after `calls` calls (a batch request's headers count all of its items)."""
        state = self._state(key)
        if state.usage is not None and usage > state.usage:
            state.step = max(state.step, (usage - state.usage) / max(calls, 1))
        state.usage = usage
        state.observed += calls
        if usage >= self.threshold and self._now() >= state.cool_until:
            state.cool_until = self._now() + self.cooldown
            log.info(
                "%s %s is at %.0f%% of its rate limit: next call in %.0fs, then one at a time until below %.0f%%",
                key[0],
                key[1],
                usage * 100,
                self.cooldown,
                self.threshold * 100,
            )

    def observe_usage(self, app: Key, usage: RateLimitUsage, calls: int = 1) -> list[str]:
        """Feed one answer's usage headers under `app` and the businesses they name; those businesses."""
        per_key, businesses = readings(app, usage)
        for key, ratio in per_key.items():
            self.observe(key, ratio, calls=calls)
        return businesses

    def throttled(self, key: Key, retry_after: float | None, *, quiet: bool = False) -> None:
        state = self._state(key)
        wait = retry_after if retry_after and retry_after > 0 else self.default_wait
        wait = min(wait, MAX_WAIT)
        already = self._now() < state.blocked_until
        state.blocked_until = max(state.blocked_until, self._now() + wait)
        state.blocked_wall = max(state.blocked_wall, self._wall() + wait)
        state.usage = max(state.usage or 0.0, 1.0)
        if already:  # the other calls of a batch in flight: said once, counted, not said again
            state.throttled_answers += 1
            return
        repeats, state.throttled_answers = state.throttled_answers, 0
        earlier = f" ({repeats} more answers were throttled the last time)" if repeats else ""
        if not quiet:
            log.warning(
                "%s %s is throttled: no calls for it for %.0fs, as Meta announced%s", key[0], key[1], wait, earlier
            )

    def throttle(self, app: Key, business: Key | None, error: GraphError) -> list[Key]:
        """Block what a throttling error names, for as long as it says; the keys blocked. A business throttle
        (800xx) blocks the businesses its usage headers name (several entries of one: the longest wait wins),
        else the call's business; codes 4, 17, 613 are the app's limit, shared by all its credentials."""
        if error.code not in BUSINESS_THROTTLE_CODES:
            self.throttled(app, error.retry_after)
            return [app]
        regain: dict[str, float] = {}
        for object_id, seconds in error.usage.regain_seconds:
            regain[object_id] = max(regain.get(object_id, 0.0), seconds)
        keys: list[Key] = [("business", b) for b in regain] or ([business] if business else [app])
        for key in keys:
            self.throttled(key, regain.get(key[1], error.retry_after))
        return keys

    def is_blocked(self, key: Key) -> bool:
        return self._now() < self._state(key).blocked_until

    # ----- for the loop and /metrics -----------------------------------------------------------------------
    def next_release(self, keys: Iterable[Key]) -> float:
        """The monotonic time at which a call that needs all of these keys may go (now if it may)."""
        now = self._now()
        release = max((max(self._state(k).blocked_until, self._state(k).cool_until) for k in keys), default=now)
        if self.max_calls_per_hour is not None and self._calls and (self.budget_left() or 0) <= 0:
            release = max(release, self._calls[0] + 3600)
        return max(release, now)

    def throttled_until(self) -> dict[Key, float]:
        now = self._now()
        return {k: s.blocked_wall for k, s in self._states.items() if s.blocked_until > now}

    def reconfigured(self, fresh: Governor) -> Governor:
        """`fresh` (built from a new config), keeping only the hourly budget's record of calls made.

        Usage and throttles start afresh: a reload is how an operator gets a key out of a wait that Meta
        announced wrongly, and the first answers restore what is true within one call per key.
        """
        fresh._calls = self._calls
        return fresh

    def reset_reservations(self) -> None:
        for state in self._states.values():
            state.reserved = 0


def readings(app: Key, usage: RateLimitUsage) -> tuple[dict[Key, float], list[str]]:
    """The highest reading per governor key in one answer's usage headers (X-App-Usage under `app`, each
    business of X-Business-Use-Case-Usage under its own), and the businesses they name."""
    per_key: dict[Key, float] = {}
    businesses: list[str] = []
    for sample in usage.samples:
        if sample.scope == "app":
            key = app
        elif sample.scope == "business_use_case":
            key = ("business", sample.object_id)
            if sample.object_id not in businesses:
                businesses.append(sample.object_id)
        else:
            continue
        per_key[key] = max(per_key.get(key, 0.0), sample.ratio)
    return per_key, businesses
