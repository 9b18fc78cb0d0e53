"""Simulated rate limits: calls per rolling window, per app (token) and per business.

A call over the limit throttles its key for `block_seconds`; calls made while throttled still count
(as Meta's do) and get the throttling error with the remaining time announced in minutes.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Usage:
    percent: int
    throttled_for: float  # seconds left; 0 when not throttled

    @property
    def regain_minutes(self) -> int:
        # Meta's estimate is in whole minutes; a block of under half a minute reads 0.
        return round(self.throttled_for / 60)


class RollingQuota:
    def __init__(self, limit: int, window: float, block_seconds: float) -> None:
        self.limit = max(1, limit)
        self.window = window
        self.block_seconds = block_seconds
        self._calls: dict[str, deque[float]] = {}
        self._throttled_until: dict[str, float] = {}

    def _count(self, key: str, now: float) -> deque[float]:
        calls = self._calls.setdefault(key, deque())
        while calls and calls[0] <= now - self.window:
            calls.popleft()
        return calls

    def hit(self, key: str, now: float) -> Usage:
        """Count one call; return the usage after it (throttled_for > 0 means this call is refused)."""
        calls = self._count(key, now)
        calls.append(now)
        until = self._throttled_until.get(key, 0.0)
        if until <= now and len(calls) > self.limit:
            until = now + self.block_seconds
            self._throttled_until[key] = until
        return Usage(self._percent(calls), max(0.0, until - now))

    def force_throttle(self, key: str, now: float) -> None:
        if self._throttled_until.get(key, 0.0) <= now:
            self._throttled_until[key] = now + self.block_seconds

    def _percent(self, calls: deque[float]) -> int:
        return math.floor(len(calls) * 100 / self.limit)

    def reset(self) -> None:
        self._calls.clear()
        self._throttled_until.clear()
