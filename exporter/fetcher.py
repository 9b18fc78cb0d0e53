"""One pass over a set of targets: batch requests, the rate-limit governor, retries, results to the recorder.

Calls (one per target and source) wait in a queue. A batch takes the next calls of one credential that the
governor allows, so datasets of a throttled or hot business wait while the others go ahead. `null` batch
items, transient item errors (after a back-off) and throttled calls go back to the queue (a throttled one
only once its business or app may be called again); a call that cannot be made before the deadline fails
with reason `throttled` without being sent. A field Meta calls nonexisting is left out of the expansion and
the call sent again at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

from exporter.governor import Governor, Key
from exporter.graph import OFFLINE_FIELDS, BatchAnswer, BatchCall, GraphClient, GraphError, GraphResponse, web_fields
from exporter.graph.errors import BUSINESS_THROTTLE_CODES
from exporter.graph.fields import UnsupportedFields, nonexisting_field
from exporter.graph.ratelimit import RateLimitUsage
from exporter.parser import DatasetQuality, ResponseFormatError, parse_dataset_quality
from exporter.snapshot import Recorder
from exporter.targets import Target

log = logging.getLogger(__name__)

NULL_RETRIES = 2
THROTTLE_RETRIES = 3
PARSE_STEP = 5  # answers parsed between two turns of the loop
FIELD_RETRIES = 5  # fields left out for one call: more would mean Meta refuses what we no longer ask for
BLOCKED_WAIT = 900.0  # a policy block (code 368) lasts minutes to days: the credential rests at least this long
Done = Callable[[Target, bool], None]


@dataclass
class _Call:
    target: Target
    source: str
    attempts: int = 0
    transient_attempts: int = 0
    field_attempts: int = 0
    keys: tuple[Key, ...] = ()


@dataclass
class _Assembly:
    """A dataset's calls, one per source, until all have answered. The primary source (`web`) decides the
    dataset's success; another source (`offline`, a beta) fails on its own and keeps its last good data."""

    waiting: int
    parts: dict[str, DatasetQuality] = field(default_factory=dict)
    other_failures: dict[str, tuple[str, str]] = field(default_factory=dict)  # source -> (reason, message)
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
        unsupported: UnsupportedFields | None = None,
        item_retries: int = 2,
        until_reload: str = "until the config is reloaded",
    ) -> None:
        self.client = client
        self.governor = governor
        self.recorder = recorder
        self.tokens = tokens
        self.sources = sources
        self.primary = "web" if "web" in sources else sources[0]
        self.fields = {"web": web_fields(blocks), "offline": OFFLINE_FIELDS}
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.business_of = business_of
        self.rejected = rejected
        self.on_done = on_done
        self.unsupported = unsupported or UnsupportedFields()
        self.item_retries = item_retries
        self.until_reload = until_reload
        self._queue: deque[_Call] = deque()
        self._assembly: dict[tuple[str, str], _Assembly] = {}
        self._in_flight: set[asyncio.Task[None]] = set()
        self.held_back = 0.0  # seconds this pass waited for Meta's rate limits (for the overrun's advice)
        self._deadline = float("inf")

    # ----- the pass ----------------------------------------------------------------------------------------
    async def run(self, targets: Iterable[Target], *, spacing: float, deadline: float) -> None:
        for target in targets:
            self._assembly[target.key] = _Assembly(waiting=len(self.sources))
            self._queue.extend(_Call(target, source) for source in self.sources)
        self.governor.reset_reservations()
        self._deadline = deadline
        semaphore = asyncio.Semaphore(self.concurrency)
        in_flight = self._in_flight
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
                    self._track(self._send(batch, semaphore))
                    continue
                semaphore.release()
                if in_flight:
                    await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                    continue
                if not self._queue:
                    break
                # The earliest moment any waiting call may go: each call needs every one of its keys.
                needs = {self._keys(c.target) for c in self._queue}
                wake = min(self.governor.next_release(keys) for keys in needs)
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
                self.held_back += max(0.05, wake - now)
                await asyncio.sleep(max(0.05, wake - now))
        finally:
            for task in in_flight:
                task.cancel()

    def _track(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    def _keys(self, target: Target) -> tuple[Key, ...]:
        business = target.business_id or self.business_of.get(target.dataset_id)
        return (("app", target.credential), ("business", business)) if business else (("app", target.credential),)

    def _take(self) -> list[_Call]:
        """The next calls the governor allows, all of one credential (a batch carries one token)."""
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
            if batch and call.target.credential != batch[0].target.credential:
                skipped.append(call)
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
        """One request for a batch; every call in it ends with an outcome, whatever is raised on the way."""
        try:
            await self._send_and_settle(batch, semaphore)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug, or an error no layer below turned into a GraphError
            log.exception("a request for %d datasets failed unexpectedly", len(batch))
            for call in batch:
                self.governor.release(call.keys)
                call.keys = ()  # released: a second release must not free another call's reservation
                self._fail(call, "other", _unexpected(exc), quiet=True)

    async def _send_and_settle(self, batch: list[_Call], semaphore: asyncio.Semaphore) -> None:
        """Send one request; settle what it teaches the pass (errors, retries, rate-limit usage) before the slot
        is free, so the next batch reflects it; parse the answers after, while the next request is on its way."""
        answers: list[tuple[_Call, GraphResponse]] = []
        try:
            outcomes = await self._request(batch)
            whole = len(batch) > 1 and outcomes.count(outcomes[0]) == len(batch) and isinstance(outcomes[0], GraphError)
            for call in batch:
                self.governor.release(call.keys)
                call.keys = ()
            for call, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, GraphResponse):
                    self._guarded(self._observe, call, outcome.usage)  # a failure fails the call: its answer,
                    answers.append((call, outcome))  # parsed, is then left out (Fetcher._accept)
                else:
                    self._guarded(self._settle, call, outcome, quiet=whole, retried=whole or len(batch) == 1)
        finally:
            semaphore.release()
        await self._parse_answers(answers)

    async def _request(self, batch: list[_Call]) -> list[GraphResponse | GraphError | None]:
        if len(batch) == 1:
            call = batch[0]
            try:
                params, token = self._params(call), self._token(call)
                return [await self.client.get("dataset_quality", params, token, endpoint="dataset_quality")]
            except GraphError as exc:
                return [exc]
        try:
            answer: BatchAnswer = await self.client.batch(
                [BatchCall("dataset_quality", self._params(c), self._token(c)) for c in batch]
            )
        except GraphError as exc:
            log.warning("a batch of %d requests failed as a whole: %s", len(batch), exc)
            return [exc] * len(batch)
        self._observe(batch[0], answer.usage, calls=len(batch), learn=False)
        return answer.outcomes

    async def _parse_answers(self, answers: list[tuple[_Call, GraphResponse]]) -> None:
        """Parse a few answers at a time, letting the loop send the next request and read other answers in
        between (a batch of 50 takes the loop about 10 ms). An answer once received is always recorded: a
        cancellation (a reload, shutdown) waits until the rest are parsed."""
        cancelled = False
        for index, (call, response) in enumerate(answers):
            if index % PARSE_STEP == 0 and not cancelled:
                try:
                    await asyncio.sleep(0)
                except asyncio.CancelledError:
                    cancelled = True
            self._guarded(self._accept, call, response)
        if cancelled:
            raise asyncio.CancelledError

    def _guarded(self, settle: Callable[..., None], call: _Call, *args: Any, **kwargs: Any) -> None:
        try:
            settle(call, *args, **kwargs)
        except Exception as exc:
            log.exception("%s: its answer could not be handled", call.target.describe())
            self._fail(call, "other", _unexpected(exc), quiet=True)

    def _token(self, call: _Call) -> str:
        return self.tokens[call.target.credential]

    def _params(self, call: _Call) -> dict[str, str]:
        params = {"dataset_id": call.target.dataset_id, "fields": self.unsupported.apply(self.fields[call.source])}
        if call.target.agent_name:
            params["agent_name"] = call.target.agent_name
        return params

    def _settle(self, call: _Call, outcome: GraphError | None, *, quiet: bool = False, retried: bool = False) -> None:
        """Record a call's failure or send it again (an answer is `_accept`'s). `retried`: the client already
        retried transient errors."""
        if outcome is None:
            call.attempts += 1
            if call.attempts > NULL_RETRIES:
                self._fail(call, "timeout", "Meta returned no answer (null) for this batch item three times")
            else:
                self._queue.append(call)  # Meta ran out of time: retry in a later batch
            return
        self._observe(call, outcome.usage)
        if outcome.reason == "throttled":
            self._throttled(call, outcome)
            return
        if outcome.retryable and not retried and call.transient_attempts < self.item_retries:
            self._retry_later(call, outcome)
            return
        if outcome.reason == "blocked":
            self._blocked(call, outcome)
            return
        refused = nonexisting_field(str(outcome)) if outcome.code == 100 else None
        if refused and call.field_attempts < FIELD_RETRIES:
            self._without_field(call, *refused, outcome)
            return
        if outcome.reason == "auth" and call.target.credential not in self.rejected:
            self.rejected[call.target.credential] = str(outcome)
            log.error(
                "credential %r was rejected (%s); no more calls with it %s",
                call.target.credential,
                outcome,
                self.until_reload,
            )
        elif outcome.reason == "version":
            log.error("the configured Graph API version is no longer served: %s", outcome)
        self._fail(call, outcome.reason, str(outcome), quiet=quiet)

    def _accept(self, call: _Call, response: GraphResponse) -> None:
        """A successful answer: parsed, and the dataset's part of it recorded."""
        try:
            quality = parse_dataset_quality(response.body)
        except ResponseFormatError as exc:
            self._fail(call, "invalid_response", str(exc))
            return
        if quality.dropped:
            self.recorder.values_dropped += len(quality.dropped)
            log.warning(
                "%s: %d values of the wrong type left out: %s",
                call.target.describe(),
                len(quality.dropped),
                "; ".join(quality.dropped[:5]),
            )
        assembly = self._assembly[call.target.key]
        if assembly.failed:
            return
        assembly.parts[call.source] = quality
        self._part_done(call.target, assembly)

    def _part_done(self, target: Target, assembly: _Assembly) -> None:
        assembly.waiting -= 1
        if assembly.waiting:
            return
        parts = list(assembly.parts.values())
        offline = tuple(e for p in parts for e in p.offline)
        if "offline" in assembly.other_failures:
            previous = self.recorder.quality_of(target)
            offline = previous.offline if previous else ()  # the last good offline data stays
        merged = DatasetQuality(
            events=tuple(e for p in parts for e in p.events),
            offline=offline,
            warnings=tuple(w for p in parts for w in p.warnings),
        )
        for warning in merged.warnings:
            log.info("%s: %s", target.describe(), warning)
        self.recorder.success(target, merged)
        for source in self.sources:
            if source != self.primary:
                self.recorder.source_outcome(target, source, *assembly.other_failures.get(source, (None, None)))
        self.on_done(target, True)

    def _retry_later(self, call: _Call, error: GraphError) -> None:
        """A transient error in one batch item: back off as a single GET would, then join a later batch."""
        delay = self.client.backoff_delay(call.transient_attempts)
        call.transient_attempts += 1
        log.debug("%s: %s; retrying in %.1fs", call.target.describe(), error.reason, delay)

        async def requeue() -> None:
            await asyncio.sleep(delay)
            self._queue.append(call)

        self._track(requeue())

    def _blocked(self, call: _Call, error: GraphError) -> None:
        """Code 368, a policy block of the app or user: rest the credential like a throttle, fail the dataset."""
        key: Key = ("app", call.target.credential)
        wait = max(BLOCKED_WAIT, self.governor.default_wait)
        if not self.governor.is_blocked(key):
            log.error(
                "credential %r is temporarily blocked by Meta for policy reasons; no calls with it for %.0fs: %s",
                call.target.credential,
                wait,
                error,
            )
        self.governor.throttled(key, wait, quiet=True)
        self._fail(call, "blocked", str(error), quiet=True)

    def _without_field(self, call: _Call, name: str, node_type: str, error: GraphError) -> None:
        """Meta says a field we ask for does not exist: ask without it, at once, for this and every later call."""
        self.unsupported.refuse(name, node_type, error)
        call.field_attempts += 1
        self._queue.appendleft(call)

    def _observe(self, call: _Call, usage: RateLimitUsage, calls: int = 1, learn: bool = True) -> None:
        """Feed the governor; `learn` a dataset's business from headers that answer for that dataset alone."""
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
        if learn and len(businesses) == 1 and not call.target.business_id:
            self.business_of[call.target.dataset_id] = next(iter(businesses))
        for key, ratio in per_key.items():
            self.governor.observe(key, ratio, calls=calls)

    def _throttled(self, call: _Call, error: GraphError) -> None:
        if error.code in BUSINESS_THROTTLE_CODES:
            regain = dict(error.usage.regain_seconds)
            keys = [("business", b) for b in regain] or [k for k in self._keys(call.target) if k[0] == "business"]
            keys = keys or [("app", call.target.credential)]
            for key in keys:
                self.governor.throttled(key, regain.get(key[1], error.retry_after))
        else:
            keys = [("app", call.target.credential)]
            self.governor.throttled(keys[0], error.retry_after)
        call.attempts += 1
        if time.monotonic() >= self._deadline:
            # Past the deadline, probing call after call would hold the cycle open for minutes: this call and
            # every waiting call of the same business or app wait for the next cycle.
            self._fail(call, "throttled", str(error))
            why = f"still throttled when the cycle's time was up: {error}"
            held = set(keys)
            waiting = [c for c in self._queue if held.intersection(self._keys(c.target))]
            self._queue = deque(c for c in self._queue if not held.intersection(self._keys(c.target)))
            for other in waiting:
                self._fail(other, "throttled", why)
        elif call.attempts > THROTTLE_RETRIES:
            self._fail(call, "throttled", str(error))
        else:
            self._queue.append(call)  # never retried at once: the governor holds it until access returns

    def _fail(self, call: _Call, reason: str, message: str, *, quiet: bool = False) -> None:
        assembly = self._assembly[call.target.key]
        if assembly.failed or assembly.waiting == 0:  # already failed, or already recorded as a success
            return
        if call.source != self.primary:
            assembly.other_failures[call.source] = (reason, message)
            if not quiet and reason not in ("auth", "throttled"):
                log.warning("%s: %s fetch failed: %s", call.target.describe(), call.source, message)
            self._part_done(call.target, assembly)
            return
        assembly.failed = True
        self.recorder.failure(call.target, reason, message)
        if not quiet and reason not in ("auth", "throttled"):  # those are logged once per credential or key
            log.warning("%s: fetch failed: %s", call.target.describe(), message)
        self.on_done(call.target, False)


def _unexpected(exc: Exception) -> str:
    return f"unexpected {type(exc).__name__}: {exc}"[:500]
