"""One pass over a set of targets: batch requests, the rate-limit governor, retries, results to the recorder.

Calls (one per target and source) wait in a queue. A batch takes the next calls of one credential that the
governor allows, so datasets of a throttled or hot business wait while the others go ahead. `null` batch
items, transient item errors (after a back-off) and throttled calls go back to the queue (a throttled one
only once its business or app may be called again); a call that cannot be made before the deadline fails
with reason `throttled` without being sent. A batch that fails as a whole with a transient error (a read
timeout, a reset) goes back to the queue too, in batches half its size: every item is a call against
Meta's limits, so it is re-sent through the governor, never whole by the client. A field Meta calls
nonexisting is left out of the expansion and the call sent again at once; a source left with no field is not
asked any more.

A token Meta refuses for a whole request suspends its credential (exporter.collect.credentials); one batch item's
error 190 fails that dataset only.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

from exporter.collect.credentials import Credentials
from exporter.collect.governor import Governor, Key, readings
from exporter.common.clock import SYSTEM_CLOCK, Clock
from exporter.config.targets import Target
from exporter.graph import OFFLINE_FIELDS, BatchAnswer, BatchCall, GraphClient, GraphError, GraphResponse, web_fields
from exporter.graph.fields import UnsupportedFields, nonexisting_field
from exporter.graph.parser import DatasetQuality, ResponseFormatError, parse_dataset_quality
from exporter.graph.ratelimit import RateLimitUsage
from exporter.graph.stats import (
    FIRST_HOURS,
    LATER_HOURS,
    HourlyVolume,
    merged_volume,
    newest_complete_hour,
    parse_event_stats,
    stats_params,
)
from exporter.state.recorder import Recorder

log = logging.getLogger(__name__)

NULL_RETRIES = 2
THROTTLE_RETRIES = 3
PARSE_STEP = 5  # answers parsed between two turns of the loop
FIELD_RETRIES = 5  # fields left out for one call: more would mean Meta refuses what we no longer ask for
BLOCKED_WAIT = 900.0  # a policy block (code 368) lasts minutes to days: the credential rests at least this long
Done = Callable[[Target, bool], None]


def call_sources(sources: tuple[str, ...]) -> tuple[str, ...]:
    """The calls a target needs per cycle: one per quality source, and two for `stats` (browser, server)."""
    quality = tuple(s for s in sources if s != "stats")
    return (*quality, "stats:browser", "stats:server") if "stats" in sources else quality


@dataclass
class _Call:
    target: Target
    source: str
    attempts: int = 0
    transient_attempts: int = 0
    field_attempts: int = 0
    keys: tuple[Key, ...] = ()
    max_batch: int = 50  # halved each time a batch carrying it fails as a whole
    hour: float = 0.0  # a stats call: the newest complete hour it asked for


@dataclass
class _Assembly:
    """A dataset's calls, one per source, until all have answered. The primary source (`web`) decides the
    dataset's success; another source (`offline`, a beta) fails on its own and keeps its last good data."""

    waiting: int
    parts: dict[str, DatasetQuality] = field(default_factory=dict)
    other_failures: dict[str, tuple[str, str]] = field(default_factory=dict)  # source -> (reason, message)
    unasked: set[str] = field(default_factory=set)  # sources Meta refuses every field of
    volumes: list[HourlyVolume] = field(default_factory=list)  # the stats calls' answers
    failed: bool = False


class Fetcher:
    def __init__(
        self,
        client: GraphClient,
        governor: Governor,
        recorder: Recorder,
        *,
        credentials: Credentials,
        sources: tuple[str, ...],
        blocks: tuple[str, ...],
        batch_size: int,
        concurrency: int,
        business_of: dict[tuple[str, str], str],
        on_done: Done,
        unsupported: UnsupportedFields | None = None,
        item_retries: int = 2,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.clock = clock
        self.client = client
        self.governor = governor
        self.recorder = recorder
        self.credentials = credentials
        self.sources = sources
        self.primary = "web" if "web" in sources else sources[0]
        self.fields = {"web": web_fields(blocks), "offline": OFFLINE_FIELDS}
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.business_of = business_of  # (see _counted_as) -> the business Meta counts the calls under
        self.on_done = on_done
        self.unsupported = unsupported or UnsupportedFields()
        self.item_retries = item_retries
        self._queue: deque[_Call] = deque()
        self._assembly: dict[tuple[str, str], _Assembly] = {}
        self._in_flight: set[asyncio.Task[None]] = set()
        self.held_back = 0.0  # seconds this pass waited for Meta's rate limits (for the overrun's advice)
        self._deadline = float("inf")

    # ----- the pass ----------------------------------------------------------------------------------------
    async def run(self, targets: Iterable[Target], *, spacing: float, deadline: float) -> None:
        calls = call_sources(self.sources)
        for target in targets:
            self._assembly[target.key] = _Assembly(waiting=len(calls))
            self._queue.extend(_Call(target, source, max_batch=self.batch_size) for source in calls)
        self.governor.reset_reservations()
        self._deadline = deadline
        semaphore = asyncio.Semaphore(self.concurrency)
        in_flight = self._in_flight
        started, sent = self.clock.monotonic(), 0
        last_wait_log = 0.0
        try:
            while self._queue or in_flight:
                if spacing and self._queue:  # with nothing left to send, the pass ends with its last answer
                    delay = started + sent * spacing - self.clock.monotonic()
                    if delay > 0:
                        await self.clock.sleep(delay)
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
                now = self.clock.monotonic()
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
                await self.clock.sleep(max(0.05, wake - now))
        finally:
            for task in in_flight:
                task.cancel()

    def _track(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    def _keys(self, target: Target) -> tuple[Key, ...]:
        """The keys a call is reserved, observed and throttled under: its app, and the business Meta counts it
        under (learned from the answers' usage headers; until then the pixel's owner, where known)."""
        app: Key = ("app", self.credentials.app_of(target.credential))
        business = self.business_of.get(_counted_as(target)) or target.business_id
        return (app, ("business", business)) if business else (app,)

    def _take(self) -> list[_Call]:
        """The next calls the governor allows, all of one credential (a batch carries one token)."""
        batch: list[_Call] = []
        skipped: list[_Call] = []
        limit = self.batch_size
        while self._queue and len(batch) < limit:
            call = self._queue.popleft()
            assembly = self._assembly[call.target.key]
            if assembly.failed:
                continue
            suspension = self.credentials.suspended.get(call.target.credential)
            if suspension is not None:
                why = f"credential {call.target.credential!r} is suspended ({suspension.reason}): {suspension.message}"
                self._fail(call, "auth", why, quiet=True)
                continue
            if not _is_stats(call) and not self._fields(call.source):
                self._unasked(call)
                continue
            if (batch and call.target.credential != batch[0].target.credential) or len(batch) >= call.max_batch:
                skipped.append(call)
                continue
            call.keys = self._keys(call.target)
            if self.governor.try_reserve(call.keys):
                batch.append(call)
                limit = min(limit, call.max_batch)
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
            # one error for every call: Meta (or the way there) refused the whole request, not one item
            whole = isinstance(outcomes[0], GraphError) and outcomes.count(outcomes[0]) == len(batch)
            for call in batch:
                self.governor.release(call.keys)
                call.keys = ()
            if whole and len(batch) > 1 and isinstance(outcomes[0], GraphError) and outcomes[0].retryable:
                for call in batch:  # the next attempt goes in smaller batches
                    call.max_batch = max(1, len(batch) // 2)
            for call, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, GraphResponse):
                    self._guarded(self._observe, call, outcome.usage)  # a failure fails the call: its answer,
                    answers.append((call, outcome))  # parsed, is then left out (Fetcher._accept)
                else:
                    # a single GET was retried by the client; a batch's items and whole batches are retried here
                    self._guarded(self._settle, call, outcome, whole=whole, retried=len(batch) == 1)
        finally:
            semaphore.release()
        await self._parse_answers(answers)

    async def _request(self, batch: list[_Call]) -> list[GraphResponse | GraphError | None]:
        if len(batch) == 1:
            call = batch[0]
            try:
                (path, params), token = self._query(call), self._token(call)
                endpoint = "stats" if _is_stats(call) else "dataset_quality"
                return [await self.client.get(path, params, token, endpoint=endpoint)]
            except GraphError as exc:
                return [exc]
        token = self._token(batch[0])
        try:
            answer: BatchAnswer = await self.client.batch(
                [BatchCall(*self._query(c), token) for c in batch], retry=False
            )
        except GraphError as exc:
            log.warning("a batch of %d requests failed as a whole: %s", len(batch), exc)
            return [exc] * len(batch)
        self._observe_batch(batch, answer.usage)
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
        return self.credentials.token(call.target.credential)

    def _fields(self, source: str) -> str:
        return self.unsupported.apply(self.fields[source])

    def _query(self, call: _Call) -> tuple[str, dict[str, str]]:
        """The path and parameters of a call: the dataset_quality endpoint, or the pixel's stats edge."""
        target = call.target
        if _is_stats(call):
            known = self.recorder.quality_of(target)
            hours = LATER_HOURS if known is not None and known.volume is not None else FIRST_HOURS
            now = self.clock.time()
            call.hour = newest_complete_hour(now)
            params = stats_params(_stats_source(call), now, hours, target.agent_name)
            return f"{target.dataset_id}/stats", params
        params = {"dataset_id": target.dataset_id, "fields": self._fields(call.source)}
        if target.agent_name:
            params["agent_name"] = target.agent_name
        return "dataset_quality", params

    def _settle(self, call: _Call, outcome: GraphError | None, *, whole: bool = False, retried: bool = False) -> None:
        """Record a call's failure or send it again (an answer is `_accept`'s). `whole`: the error is the whole
        request's; `retried`: the client already retried transient errors."""
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
        if outcome.reason == "auth":
            if whole:  # Meta refused the token for the whole request: the credential is suspended (said once)
                self.credentials.suspend(call.target.credential, outcome)
            else:  # Meta accepted the token for the batch: whatever this item's 190 means, it is this dataset's
                log.warning("%s: Meta refused the token for this dataset alone: %s", call.target.describe(), outcome)
            self._fail(call, "auth", str(outcome), quiet=True)
            return
        if outcome.reason == "version":
            log.error("the configured Graph API version is no longer served: %s", outcome)
        self._fail(call, outcome.reason, str(outcome), quiet=whole)

    def _accept(self, call: _Call, response: GraphResponse) -> None:
        """A successful answer: parsed, and the dataset's part of it recorded."""
        if _is_stats(call):
            try:
                volume = parse_event_stats(response.body, _stats_source(call), call.hour)
            except ResponseFormatError as exc:
                self._fail(call, "invalid_response", str(exc))
                return
            assembly = self._assembly[call.target.key]
            if not assembly.failed:
                assembly.volumes.append(volume)
                self._part_done(call.target, assembly)
            return
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
        previous = self.recorder.quality_of(target)
        offline = tuple(e for p in parts for e in p.offline)
        if "offline" in assembly.other_failures or "offline" in assembly.unasked:
            offline = previous.offline if previous else ()  # the last good offline data stays
        volume = None
        if "stats" in self.sources:  # a source that failed keeps its last rows; zeros for what the week saw
            volume = merged_volume(previous.volume if previous else None, assembly.volumes)
        merged = DatasetQuality(
            events=tuple(e for p in parts for e in p.events),
            offline=offline,
            warnings=tuple(w for p in parts for w in p.warnings),
            volume=volume,
        )
        for warning in merged.warnings:
            log.info("%s: %s", target.describe(), warning)
        self.recorder.success(target, merged)
        for source in self.sources:
            if source in assembly.unasked:
                self.recorder.source_outcome(target, source, None, None, asked=False)
            elif source != self.primary:
                self.recorder.source_outcome(target, source, *assembly.other_failures.get(source, (None, None)))
        self.on_done(target, True)

    def _unasked(self, call: _Call) -> None:
        """Meta refused every field of this source (the offline beta, not enabled for the app): it is not
        asked, and says so (source_fetch_success 0, api_field_unsupported 1), without counting a failure."""
        assembly = self._assembly[call.target.key]
        if call.source == self.primary:
            self._fail(call, "other", f"Meta refuses every field of the {call.source} source")
            return
        assembly.unasked.add(call.source)
        self._part_done(call.target, assembly)

    def _retry_later(self, call: _Call, error: GraphError) -> None:
        """A transient error in one batch item: back off as a single GET would, then join a later batch."""
        delay = self.client.backoff_delay(call.transient_attempts)
        call.transient_attempts += 1
        log.debug("%s: %s; retrying in %.1fs", call.target.describe(), error.reason, delay)

        async def requeue() -> None:
            await self.clock.sleep(delay)
            self._queue.append(call)

        self._track(requeue())

    def _blocked(self, call: _Call, error: GraphError) -> None:
        """Code 368, a policy block of the app or user: rest the credential like a throttle, fail the dataset."""
        key: Key = ("app", self.credentials.app_of(call.target.credential))
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

    def _observe(self, call: _Call, usage: RateLimitUsage) -> None:
        """Feed the governor one answer's readings; learn the business Meta counts this dataset's calls under
        when the answer names exactly one."""
        businesses = self.governor.observe_usage(self._keys(call.target)[0], usage)
        if len(businesses) == 1:
            self.business_of[_counted_as(call.target)] = businesses[0]

    def _observe_batch(self, batch: list[_Call], usage: RateLimitUsage) -> None:
        """Feed the governor a batch response's readings, each business's attributed to the items that belong
        to it (a business with one item of 50 took one call's cost, not a fiftieth of one); a response naming
        one business names the business of every item."""
        per_key, businesses = readings(self._keys(batch[0].target)[0], usage)
        if len(businesses) == 1:
            for call in batch:
                self.business_of[_counted_as(call.target)] = businesses[0]
        items: dict[Key, int] = {}
        for call in batch:
            for key in self._keys(call.target):
                items[key] = items.get(key, 0) + 1
        unknown = sum(1 for call in batch if len(self._keys(call.target)) == 1)
        for key, ratio in per_key.items():
            self.governor.observe(key, ratio, calls=items.get(key) or max(unknown, 1))

    def _throttled(self, call: _Call, error: GraphError) -> None:
        app, *business = self._keys(call.target)
        keys = self.governor.throttle(app, business[0] if business else None, error)
        call.attempts += 1
        if self.clock.monotonic() >= self._deadline:
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
            assembly.other_failures[call.source.partition(":")[0]] = (reason, message)
            if not quiet and reason not in ("auth", "throttled"):
                log.warning("%s: %s fetch failed: %s", call.target.describe(), call.source, message)
            self._part_done(call.target, assembly)
            return
        assembly.failed = True
        self.recorder.failure(call.target, reason, message)
        if not quiet and reason not in ("auth", "throttled"):  # those are logged once per credential or key
            log.warning("%s: fetch failed: %s", call.target.describe(), message)
        self.on_done(call.target, False)


def _is_stats(call: _Call) -> bool:
    return call.source.startswith("stats:")


def _stats_source(call: _Call) -> str:
    return call.source.partition(":")[2]


def _counted_as(target: Target) -> tuple[str, str]:
    """What decides the business Meta counts a call under: the credential (Meta's header names the business of
    the token's system user, an agency's for its clients' pixels) and the pixel's owner (the pixel itself
    where its owner is unknown). What one answer teaches holds for every pixel of that owner."""
    return (target.credential, target.business_id or target.dataset_id)


def _unexpected(exc: Exception) -> str:
    return f"unexpected {type(exc).__name__}: {exc}"[:500]
