"""One pass over a set of targets: batch requests, the rate-limit governor, retries, results to the recorder.

Calls (one per target and source) wait in a queue. A batch takes the next calls the governor allows, so
datasets of a throttled or hot business wait while the others go ahead. `null` batch items and throttled
calls go back to the queue (a throttled one only once its business or app may be called again); a call
that cannot be made before the deadline fails with reason `throttled` without being sent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from exporter.governor import Governor, Key
from exporter.graph import OFFLINE_FIELDS, BatchCall, GraphClient, GraphError, GraphResponse, web_fields
from exporter.graph.errors import BUSINESS_THROTTLE_CODES
from exporter.graph.ratelimit import RateLimitUsage
from exporter.parser import DatasetQuality, ResponseFormatError, parse_dataset_quality
from exporter.snapshot import Recorder
from exporter.targets import Target

log = logging.getLogger(__name__)

NULL_RETRIES = 2
THROTTLE_RETRIES = 3
Done = Callable[[Target, bool], None]


@dataclass
class _Call:
    target: Target
    source: str
    attempts: int = 0
    keys: tuple[Key, ...] = ()


@dataclass
class _Assembly:
    waiting: int
    parts: list[DatasetQuality] = field(default_factory=list)
    failed: bool = False


class Fetcher:
    def __init__(
        self,
        client: GraphClient,
        governor: Governor,
        recorder: Recorder,
        *,
        tokens: dict[str, str],
        sources: tuple[str, ...],
        blocks: tuple[str, ...],
        batch_size: int,
        concurrency: int,
        business_of: dict[str, str],
        rejected: dict[str, str],
        on_done: Done,
    ) -> None:
        self.client = client
        self.governor = governor
        self.recorder = recorder
        self.tokens = tokens
        self.sources = sources
        self.fields = {"web": web_fields(blocks), "offline": OFFLINE_FIELDS}
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.business_of = business_of
        self.rejected = rejected
        self.on_done = on_done
        self._queue: deque[_Call] = deque()
        self._assembly: dict[tuple[str, str], _Assembly] = {}

    # ----- the pass ----------------------------------------------------------------------------------------
    async def run(self, targets: Iterable[Target], *, spacing: float, deadline: float) -> None:
        for target in targets:
            self._assembly[target.key] = _Assembly(waiting=len(self.sources))
            self._queue.extend(_Call(target, source) for source in self.sources)
        self.governor.reset_reservations()
        semaphore = asyncio.Semaphore(self.concurrency)
        in_flight: set[asyncio.Task[None]] = set()
        started, sent = time.monotonic(), 0
        last_wait_log = 0.0
        try:
            while self._queue or in_flight:
                if spacing:
                    delay = started + sent * spacing - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                await semaphore.acquire()  # before taking: the batch then reflects every answer so far
                batch = self._take()
                if batch:
                    sent += 1
                    task = asyncio.create_task(self._send(batch, semaphore))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                    continue
                semaphore.release()
                if in_flight:
                    await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                    continue
                if not self._queue:
                    break
                wake = self.governor.next_release(k for c in self._queue for k in self._keys(c.target))
                now = time.monotonic()
                if wake >= deadline:
                    self._give_up("the rate limit allows no call for it before this cycle ends")
                    break
                if now - last_wait_log > 30:
                    last_wait_log = now
                    log.info(
                        "%d calls wait %.0fs for their business or app to regain headroom under Meta's rate limits",
                        len(self._queue),
                        wake - now,
                    )
                await asyncio.sleep(max(0.05, wake - now))
        finally:
            for task in in_flight:
                task.cancel()

    def _keys(self, target: Target) -> tuple[Key, ...]:
        business = target.business_id or self.business_of.get(target.dataset_id)
        return (("app", target.credential), ("business", business)) if business else (("app", target.credential),)

    def _take(self) -> list[_Call]:
        batch: list[_Call] = []
        skipped: list[_Call] = []
        while self._queue and len(batch) < self.batch_size:
            call = self._queue.popleft()
            assembly = self._assembly[call.target.key]
            if assembly.failed:
                continue
            rejected = self.rejected.get(call.target.credential)
            if rejected:
                self._fail(call, "auth", f"credential {call.target.credential!r} was rejected: {rejected}")
                continue
            call.keys = self._keys(call.target)
            if self.governor.try_reserve(call.keys):
                batch.append(call)
            else:
                skipped.append(call)
        self._queue.extendleft(reversed(skipped))
        return batch

    def _give_up(self, why: str) -> None:
        for call in self._queue:
            if not self._assembly[call.target.key].failed:
                self._fail(call, "throttled", f"not fetched this cycle: {why}")
        self._queue.clear()

    # ----- one request -----------------------------------------------------------------------------------
    async def _send(self, batch: list[_Call], semaphore: asyncio.Semaphore) -> None:
        outcomes: list[GraphResponse | GraphError | None]
        try:
            if len(batch) == 1:
                call = batch[0]
                try:
                    params, token = self._params(call), self._token(call)
                    outcomes = [await self.client.get("dataset_quality", params, token, endpoint="dataset_quality")]
                except GraphError as exc:
                    outcomes = [exc]
            else:
                try:
                    outcomes = list(
                        await self.client.batch(
                            [BatchCall("dataset_quality", self._params(c), self._token(c)) for c in batch]
                        )
                    )
                except GraphError as exc:
                    log.warning("a batch of %d requests failed as a whole: %s", len(batch), exc)
                    outcomes = [exc] * len(batch)
        finally:
            semaphore.release()
        whole = len(batch) > 1 and outcomes.count(outcomes[0]) == len(batch) and isinstance(outcomes[0], GraphError)
        for call, outcome in zip(batch, outcomes, strict=True):
            self.governor.release(call.keys)
            self._settle(call, outcome, quiet=whole)

    def _token(self, call: _Call) -> str:
        return self.tokens[call.target.credential]

    def _params(self, call: _Call) -> dict[str, str]:
        params = {"dataset_id": call.target.dataset_id, "fields": self.fields[call.source]}
        if call.target.agent_name:
            params["agent_name"] = call.target.agent_name
        return params

    def _settle(self, call: _Call, outcome: GraphResponse | GraphError | None, *, quiet: bool = False) -> None:
        if outcome is None:
            call.attempts += 1
            if call.attempts > NULL_RETRIES:
                self._fail(call, "timeout", "Meta returned no answer (null) for this batch item three times")
            else:
                self._queue.append(call)  # Meta ran out of time: retry in a later batch
            return
        self._observe(call, outcome.usage)
        if isinstance(outcome, GraphError):
            if outcome.reason == "throttled":
                self._throttled(call, outcome)
                return
            if outcome.reason == "auth" and call.target.credential not in self.rejected:
                self.rejected[call.target.credential] = str(outcome)
                log.error(
                    "credential %r was rejected (%s); no more calls with it until the config is reloaded",
                    call.target.credential,
                    outcome,
                )
            elif outcome.reason == "version":
                log.error("the configured Graph API version is no longer served: %s", outcome)
            self._fail(call, outcome.reason, str(outcome), quiet=quiet)
            return
        try:
            quality = parse_dataset_quality(outcome.body)
        except ResponseFormatError as exc:
            self._fail(call, "invalid_response", str(exc))
            return
        assembly = self._assembly[call.target.key]
        if assembly.failed:
            return
        assembly.parts.append(quality)
        assembly.waiting -= 1
        if assembly.waiting == 0:
            merged = DatasetQuality(
                events=tuple(e for p in assembly.parts for e in p.events),
                offline=tuple(e for p in assembly.parts for e in p.offline),
                warnings=tuple(w for p in assembly.parts for w in p.warnings),
            )
            for warning in merged.warnings:
                log.info("%s: %s", call.target.describe(), warning)
            self.recorder.success(call.target, merged)
            self.on_done(call.target, True)

    def _observe(self, call: _Call, usage: RateLimitUsage) -> None:
        per_key: dict[Key, float] = {}
        businesses = set()
        for sample in usage.samples:
            if sample.scope == "app":
                key: Key = ("app", call.target.credential)
            elif sample.scope == "business_use_case":
                key = ("business", sample.object_id)
                businesses.add(sample.object_id)
            else:
                continue
            per_key[key] = max(per_key.get(key, 0.0), sample.ratio)
        if len(businesses) == 1 and not call.target.business_id:
            self.business_of[call.target.dataset_id] = next(iter(businesses))
        for key, ratio in per_key.items():
            self.governor.observe(key, ratio)

    def _throttled(self, call: _Call, error: GraphError) -> None:
        if error.code in BUSINESS_THROTTLE_CODES:
            regain = dict(error.usage.regain_seconds)
            keys = [("business", b) for b in regain] or [k for k in self._keys(call.target) if k[0] == "business"]
            for key in keys or [("app", call.target.credential)]:
                self.governor.throttled(key, regain.get(key[1], error.retry_after))
        else:
            self.governor.throttled(("app", call.target.credential), error.retry_after)
        call.attempts += 1
        if call.attempts > THROTTLE_RETRIES:
            self._fail(call, "throttled", str(error))
        else:
            self._queue.append(call)  # never retried at once: the governor holds it until access returns

    def _fail(self, call: _Call, reason: str, message: str, *, quiet: bool = False) -> None:
        assembly = self._assembly[call.target.key]
        if assembly.failed:
            return
        assembly.failed = True
        self.recorder.failure(call.target, reason, message)
        if not quiet and reason not in ("auth", "throttled"):  # those are logged once per credential or key
            log.warning("%s: fetch failed: %s", call.target.describe(), message)
        self.on_done(call.target, False)
