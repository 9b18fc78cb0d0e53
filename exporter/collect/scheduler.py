"""The collection loop: fetch every target each interval, publish immutable snapshots, never overlap cycles.

The first cycle runs as fast as `concurrency` allows so dashboards fill at once; later cycles spread their
calls evenly over the interval, as Meta asks. A reload swaps the config between cycles; targets it adds are
fetched at once, the rest keep their schedule. During a cycle a snapshot is published every PUBLISH_EVERY
seconds (BURST_PUBLISH_EVERY in a burst), its exposition rendered on a thread of its own while the loop keeps
fetching; on a CollectionLoop (exporter.collect.eventloop) the render works only while the loop waits.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import replace
from typing import Any

from exporter.collect.credentials import Credentials
from exporter.collect.eventloop import idle_signal
from exporter.collect.fetcher import Fetcher, call_sources
from exporter.collect.governor import Governor
from exporter.collect.housekeeping import Gateway, Housekeeping
from exporter.common.clock import SYSTEM_CLOCK, Clock
from exporter.config.settings import Config, Secrets
from exporter.config.targets import Target, configured_targets
from exporter.exposition.publisher import Publisher
from exporter.graph import GraphClient, GraphError, versions
from exporter.graph.fields import UnsupportedFields
from exporter.state.recorder import Recorder
from exporter.state.snapshot import Extras, Snapshot

log = logging.getLogger(__name__)

PACING_SHARE = 0.9  # spread a paced cycle's calls over this share of the interval, leaving room to finish
PUBLISH_EVERY = 5.0  # seconds between snapshots published during a paced cycle, at most (one renders at a time)
# A burst publishes more often: the cycle's last publish renders what no mid-cycle render reached, after the
# last answer, so the less is left for it the sooner the cycle's data is on /metrics.
BURST_PUBLISH_EVERY = 1.0
PROGRESS_EVERY = 30.0  # seconds between progress log lines during a long cycle
PUBLISH_WAIT = 5.0  # seconds a reload waits for the loop to publish its outcome (a long parse may hold it)
HURRY_POLL = 0.005  # seconds: how soon a render that defers to the loop notices that the loop waits for it
FREEZE_EVERY = 50  # targets between moves of what the cycle has built out of the garbage collector's sight
HEAL_TICK = 1.0  # seconds between looks at token files and suspended credentials' checks

Progress = Callable[[int, int, int], None]  # (done, total, failed)


class Scheduler:
    def __init__(
        self,
        config: Config,
        secrets: Secrets,
        *,
        progress: Progress | None = None,
        one_shot: bool = False,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.clock = clock
        self.config = config
        self.one_shot = one_shot  # `once`: one cycle, no reloads to speak of
        self.secrets = secrets
        # outlives cycles; a reload tries every field again
        self.unsupported_fields = UnsupportedFields(
            until="for the rest of this run" if one_shot else "until a reload or for a day"
        )
        self.housekeeping = Housekeeping(self.unsupported_fields, clock=clock)
        self.targets: tuple[Target, ...] = self.housekeeping.targets(configured_targets(config), config)
        self.recorder = Recorder(clock.time)
        self.publisher = Publisher()
        self.progress = progress
        self._client: GraphClient | None = None
        self.credentials = Credentials(config, secrets, clock=clock.monotonic)
        self.business_of: dict[tuple[str, str], str] = {}  # learnt from usage headers (fetcher._counted_as)
        self.governor = self._make_governor()
        self._pending: tuple[Config, Secrets] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._wake: asyncio.Event | None = None
        self._last_publish = 0.0
        self._rendering: _Render | None = None  # a mid-cycle exposition being rendered while the loop fetches
        versions.warn_if_expiring(config.graph_api.version, self.clock.time())
        self.snapshot: Snapshot = self._publish()

    # ----- configuration ---------------------------------------------------------------------------------
    def replace_config(self, config: Config, secrets: Secrets) -> None:
        """Hand over a validated config; thread-safe. It takes effect between cycles."""
        self._pending = (config, secrets)
        if self._loop and self._wake:
            self._loop.call_soon_threadsafe(self._wake.set)

    def note_reload(self, success: bool) -> None:
        """Record a reload's outcome for /metrics; thread-safe, and visible in the snapshot when it returns."""
        self.recorder.reload_success = success
        if success:
            self.recorder.reload_timestamp = self.clock.time()
        self._publish_from_any_thread()

    def partial_snapshot(self) -> Snapshot:
        """After a cycle was cut short (`once --timeout`, Ctrl-C): what was learnt so far. The loop has ended."""
        self.snapshot = self._publish()
        return self.snapshot

    def _publish_from_any_thread(self) -> None:
        """Publish on the loop's thread, the only one that touches the recorder and housekeeping state.

        A publish from a web thread would iterate dicts that a running cycle is changing.
        """
        loop = self._loop
        if loop is None or not loop.is_running() or threading.get_ident() == self._loop_thread:
            self.snapshot = self._publish()
            return
        published: concurrent.futures.Future[None] = concurrent.futures.Future()

        def publish() -> None:
            try:
                self.snapshot = self._publish()
                published.set_result(None)
            except BaseException as exc:  # handed to the waiting thread
                published.set_exception(exc)

        try:
            loop.call_soon_threadsafe(publish)
        except RuntimeError:  # the loop closed in between: nothing else publishes any more
            self.snapshot = self._publish()
            return
        with contextlib.suppress(concurrent.futures.TimeoutError):
            published.result(timeout=PUBLISH_WAIT)

    def takes_effect(self) -> str:
        """When a config handed over now takes effect, for the reload's answer."""
        if self.recorder.cycle_total:
            return (
                f"It takes effect when the running cycle ends ({self.recorder.cycle_done} of "
                f"{self.recorder.cycle_total} targets fetched); datasets it adds are fetched at once then."
            )
        return "It takes effect now; datasets it adds are fetched at once."

    def _apply_pending(self) -> None:
        """Swap in a pending config; `prepare` then recomputes the targets."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        old_config, old_secrets = self.config, self.secrets
        self.config, self.secrets = pending
        versions.warn_if_expiring(self.config.graph_api.version, self.clock.time())
        # Only what changed is looked up again: a reload must not spend quota on what is already known.
        self.housekeeping.forget_changed(old_config, old_secrets, self.config, self.secrets)
        self.unsupported_fields.reset()
        # suspensions end: an operator's reset
        self.credentials = Credentials(self.config, self.secrets, clock=self.clock.monotonic)
        self.governor = self.governor.reconfigured(self._make_governor())
        if self._client:  # it reads the credentials' app secret and app labels
            asyncio.get_running_loop().create_task(self._client.aclose())
            self._client = None
        log.info("configuration applied")

    def _make_governor(self) -> Governor:
        c = self.config.collection
        return Governor(
            threshold=c.slow_down_at,
            cooldown=c.cooldown,
            default_wait=c.throttle_wait,
            max_calls_per_hour=c.max_calls_per_hour,
            clock=self.clock,
        )

    def _graph_client(self) -> GraphClient:
        if self._client is None:
            g = self.config.graph_api
            self._client = GraphClient(
                g.base_url,
                g.version,
                timeout=g.timeout,
                app_secret=self.credentials.app_secret,
                max_retries=g.max_retries,
                max_connections=max(10, self.config.collection.concurrency * 2),
                observer=self.recorder,
                app_labels=self.credentials.app_labels,
            )
        return self._client

    def _gateway(self) -> Gateway:
        return Gateway(self._graph_client(), self.governor, self.credentials.app_of)

    async def prepare(self) -> tuple[Target, ...]:
        """Run what is due (discovery, pixel metadata, token checks) and recompute the targets; return new ones."""
        gateway, credentials = self._gateway(), self.credentials
        tokens = credentials.usable()
        hk = self.housekeeping
        await _survive("discovery", hk.discover(gateway, self.config, tokens))
        watched = hk.targets(configured_targets(self.config), self.config)
        await _survive("the metadata refresh", hk.refresh_metadata(gateway, self.config, tokens, watched))
        # Suspended tokens are checked too: debug_token is how token_valid learns that they went bad, or good.
        await _survive("the token check", self._check_tokens(gateway))
        old_keys = {t.key for t in self.targets}
        self.targets = self.housekeeping.targets(configured_targets(self.config), self.config)
        self.recorder.forget_except({t.key for t in self.targets})
        self.snapshot = self._publish()
        return tuple(t for t in self.targets if t.key not in old_keys)

    async def _check_tokens(self, gateway: Gateway) -> None:
        """debug_token for every credential when due: a token Meta calls invalid suspends its credential, a
        valid one ends its suspension, and each names its app."""
        credentials = self.credentials
        all_tokens = {name: credentials.token(name) for name in self.secrets.tokens if name in credentials}
        found = await self.housekeeping.check_tokens(gateway, self.config, all_tokens, credentials.app_secret())
        for name, status in found.items():
            credentials.learn_app(name, status.app_id)
            if not status.valid:
                credentials.rejected_by_check(name, "debug_token says the token is not valid")
            elif name in credentials.suspended:
                credentials.checked(name, None)

    async def heal_credentials(self) -> None:
        """Forever: check each suspended credential again when due (GET /me with its own token), and notice
        token files that changed. A credential resumes as soon as Meta accepts it, mid-cycle too."""
        while True:
            credentials = self.credentials
            credentials.refresh()
            for name in credentials.due():
                await self._check_credential(credentials, name)
            due = credentials.next_check()
            wait = HEAL_TICK if due is None else min(HEAL_TICK, due - self.clock.monotonic())
            await self.clock.sleep(max(0.05, wait))

    async def _check_credential(self, credentials: Credentials, name: str) -> None:
        try:
            await self._gateway().get("me", {"fields": "id"}, credentials.token(name), name, endpoint="token_check")
        except GraphError as exc:
            credentials.checked(name, exc)
            return
        except Exception as exc:  # never let a bug end the healing
            log.exception("checking credential %r failed unexpectedly", name)
            credentials.checked(name, GraphError("other", f"unexpected {type(exc).__name__}"))
            return
        credentials.checked(name, None)

    # ----- the loop --------------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Run cycles until `stop` is set; cancels an unfinished cycle within moments of it."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._wake = asyncio.Event()
        paced = False
        healing = asyncio.create_task(self.heal_credentials())
        try:
            while not stop.is_set():
                self._apply_pending()
                started = self.clock.monotonic()
                cycle = self._first_cycle() if not paced and self.targets else self._cycle(paced)
                if not await self._until_stopped(cycle, stop):
                    break
                paced = True
                while not stop.is_set():
                    # Clear before looking at _pending: a reload that arrived during the cycle already set
                    # the event, and clearing it after the check would sleep through that reload.
                    self._wake.clear()
                    if self._pending is not None:
                        self._apply_pending()
                        prepared = asyncio.ensure_future(self.prepare())
                        if not await self._until_stopped(prepared, stop):
                            return
                        added = prepared.result()
                        if added and not await self._until_stopped(
                            self.run_cycle(added, paced=False, count=False), stop
                        ):
                            return
                        continue
                    remaining = started + self.config.collection.interval - self.clock.monotonic()
                    if remaining <= 0:
                        break
                    await _wait_any((stop, self._wake), remaining, self.clock)
        finally:
            healing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await healing
            await self.close()

    async def _cycle(self, paced: bool) -> None:
        await self.prepare()
        await self.run_cycle(self.targets, paced=paced)

    async def _first_cycle(self) -> None:
        """The configured datasets are fetched at once, without waiting for discovery, the metadata reads and the
        token checks (minutes at thousands of datasets, or for ever behind a broken edge); what discovery adds
        is fetched as soon as it is known."""
        housekeeping = asyncio.ensure_future(self.prepare())
        try:
            await self.run_cycle(self.targets, paced=False)
            added = await housekeeping
        finally:
            if not housekeeping.done():  # stopped during the cycle
                housekeeping.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await housekeeping
        if added:
            await self.run_cycle(added, paced=False, count=False)

    async def close(self) -> None:
        self._swap_rendered(wait=True)  # a cycle cut short may leave a render running: no thread outlives us
        if self._client:
            await self._client.aclose()
            self._client = None

    async def _until_stopped(self, work: Awaitable[Any], stop: asyncio.Event) -> bool:
        """Run `work` unless `stop` comes first; False if it was cancelled."""
        task = asyncio.ensure_future(work)
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if task.done():
            task.result()
            return True
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        log.info("collection stopped during a cycle")
        return False

    async def run_cycle(self, targets: tuple[Target, ...], *, paced: bool, count: bool = True) -> None:
        """Fetch every target once. With `paced`, requests are spread over the interval."""
        config = self.config.collection
        total, done, failed = len(targets), 0, 0
        started = self.clock.monotonic()
        calls = total * len(call_sources(config.sources))
        requests = -(-calls // config.batch_size) if calls else 0
        spacing = config.interval * PACING_SHARE / requests if paced and requests else 0.0
        publish_every = PUBLISH_EVERY if paced else BURST_PUBLISH_EVERY
        last_progress = started
        loop_waiting = idle_signal()
        in_flight = config.concurrency * config.batch_size // len(call_sources(config.sources))  # targets, at most
        tail_rendered = False
        self.recorder.cycle_done, self.recorder.cycle_total = 0, total
        self.recorder.cycle_started = self.clock.time()
        self.governor.forget_idle(2 * config.interval)

        def target_done(_: Target, ok: bool) -> None:
            nonlocal done, failed, last_progress, tail_rendered
            done += 1
            failed += not ok
            self.recorder.cycle_done = done
            now = self.clock.monotonic()
            if self.progress:
                self.progress(done, total, failed)
            if now - last_progress >= PROGRESS_EVERY and done < total:
                last_progress = now
                elapsed = now - started
                log.info(
                    "cycle progress: %d/%d targets fetched, %d failed, %.0fs elapsed", done, total, failed, elapsed
                )
            self._swap_rendered(wait=False)
            # In a burst, once every request has left, render what has come so far: the loop mostly waits for
            # the last answers then, and the cycle's last publish is left with only those.
            tail = not paced and not tail_rendered and total - done <= in_flight
            if self._rendering is None and (tail or now - self._last_publish >= publish_every):
                tail_rendered = tail_rendered or tail
                self._last_publish = now
                self._rendering = _Render(self.publisher, self._recorded(), loop_waiting)
            if done % FREEZE_EVERY == 0:
                gc.freeze()

        fetcher = Fetcher(
            self._graph_client(),
            self.governor,
            self.recorder,
            credentials=self.credentials,
            sources=config.sources,
            blocks=config.blocks,
            batch_size=config.batch_size,
            concurrency=config.concurrency,
            business_of=self.business_of,
            on_done=target_done,
            unsupported=self.unsupported_fields,
            item_retries=self.config.graph_api.max_retries,
            clock=self.clock,
        )
        with _records_frozen_until_done():
            await fetcher.run(targets, spacing=spacing, deadline=started + config.interval)
            duration = self.clock.monotonic() - started
            if count:
                self._count_cycle(duration, total, config.interval, fetcher.held_back)
            self.recorder.cycle_done = self.recorder.cycle_total = 0
            self.recorder.cycle_started = None
            # Before the collection that ends the cycle, which walks the whole heap: the scrapes get the cycle's
            # data that much sooner.
            self.snapshot = self._publish()
        log.info("cycle finished: %d targets, %d failed, in %.1fs", total, failed, duration)

    def _count_cycle(self, duration: float, total: int, interval: float, held_back: float) -> None:
        rec = self.recorder
        rec.cycles += 1
        rec.cycle_duration, rec.last_cycle_end = duration, self.clock.time()
        if duration > interval:
            rec.overruns += 1
            if held_back > 0.1 * duration:
                advice = (
                    f"Meta's rate limits held calls back for {held_back:.0f}s: raise the interval or "
                    "spread the datasets over more apps or replicas (more concurrency would not help)"
                )
            else:
                advice = "raise the interval or collection.concurrency"
            log.warning(
                "cycle overran its interval: %.0fs for %d targets, interval %.0fs; %s",
                duration,
                total,
                interval,
                advice,
            )

    def _publish(self) -> Snapshot:
        """A snapshot of now with its exposition, rendered here (after any mid-cycle render: the publisher
        serves one thread at a time)."""
        self._swap_rendered(wait=True)
        self._last_publish = self.clock.monotonic()
        snapshot = self._recorded()
        # Rendered here, on the loop's side, so that a scrape only copies bytes; only changed datasets render.
        return replace(snapshot, exposition=self.publisher.publish(snapshot))

    def _swap_rendered(self, wait: bool) -> None:
        """Swap in the snapshot of a mid-cycle render once it is done (at once, with `wait`)."""
        render = self._rendering
        if render is not None and (wait or render.done()):
            self._rendering = None
            self.snapshot = render.result()

    def _versions_upgraded(self) -> tuple[str, ...]:
        """The versions Meta answered with instead of the configured one in the last two intervals."""
        if self._client is None:
            return ()
        since = time.time() - 2 * self.config.collection.interval  # the client stamps with the system's time
        return tuple(sorted(v for v, seen in self._client.versions.upgraded.items() if seen >= since))

    def _recorded(self) -> Snapshot:
        """The recorder's snapshot of now, without its exposition."""
        hk = self.housekeeping
        extras = Extras(
            last_fired={i: (m.last_fired, hk.server_last_fired.get(i)) for i, m in hk.meta.items()}
            | {i: (hk.meta[i].last_fired if i in hk.meta else None, t) for i, t in hk.server_last_fired.items()},
            unsupported_fields=self.unsupported_fields.current(),
            throttled_until=self.governor.throttled_until(),
            discovery={source: (s.success, s.last_success) for source, s in hk.sources.items()},
            # only credentials that still exist, and only while token checks are configured
            tokens={
                name: (t.valid, t.expires_at)
                for name, t in hk.tokens.items()
                if name in self.secrets.tokens and self.config.graph_api.app_id and self.secrets.app_secret
            },
            max_series=self.config.limits.max_series,
            max_bytes=self.config.limits.max_bytes,
            suspended={name: s.reason for name, s in self.credentials.suspended.items()},
            versions_upgraded=self._versions_upgraded(),
            discovery_truncated=tuple(sorted(source for source, s in hk.sources.items() if s.truncated)),
        )
        snapshot = self.recorder.publish(
            self.targets,
            stale_after=self.config.collection.stale_after,
            label_names=self.config.label_names(),
            graph_api_version=self.config.graph_api.version,
            interval=self.config.collection.interval,
            extras=extras,
        )
        return snapshot


class _Render:
    """A mid-cycle snapshot's exposition, rendered on a thread of its own so that the loop keeps its requests
    in flight meanwhile: a render of thousands of datasets would otherwise hold the loop for a second or more,
    while answers wait unread and no request leaves. The thread ends with the render; the loop swaps the
    result in (Scheduler._swap_rendered).

    With `loop_waiting` (exporter.collect.eventloop) the render defers to the loop: before each dataset it
    renders and each family it assembles, it waits until the loop waits for I/O, unless the loop itself waits
    for the render (`result`). Both threads share one GIL: without it, the render takes the GIL half of the
    time the loop wants it, and a burst's answers wait to be read meanwhile (bench/README.md)."""

    def __init__(self, publisher: Publisher, snapshot: Snapshot, loop_waiting: threading.Event | None = None) -> None:
        self._snapshot: Snapshot = snapshot
        self._error: BaseException | None = None
        self._loop_waiting = loop_waiting
        self._hurry = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(publisher,), name="render", daemon=True)
        self._thread.start()

    def _run(self, publisher: Publisher) -> None:
        defer = self._defer if self._loop_waiting is not None else None
        try:
            self._snapshot = replace(self._snapshot, exposition=publisher.publish(self._snapshot, defer))
        except BaseException as exc:  # raised in the loop's thread, by result()
            self._error = exc

    def _defer(self) -> None:
        waiting, hurry = self._loop_waiting, self._hurry
        assert waiting is not None
        while not waiting.is_set() and not hurry.is_set():
            waiting.wait(HURRY_POLL)

    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self) -> Snapshot:
        self._hurry.set()  # the loop waits for us now, and not in its selector
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._snapshot


@contextlib.contextmanager
def _records_frozen_until_done() -> Iterator[None]:
    """Keep a cycle's parsed records (millions of objects at 10,000 datasets) out of repeated full collections.

    Without it the collector rescans everything parsed so far each time the heap grows by a quarter: about a
    third of a burst cycle's CPU. Records hold no reference cycles, so refcounting frees them while frozen;
    whatever cyclic garbage got frozen along the way is collected once, when the cycle ends.
    """
    try:
        yield
    finally:
        gc.unfreeze()
        gc.collect()


async def _survive(what: str, work: Coroutine[Any, Any, None]) -> None:
    """Housekeeping must never stop the loop: an unexpected error is logged with its traceback, and the
    cycle goes on with what is already known."""
    try:
        await work
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("%s failed unexpectedly; collection goes on with what is already known", what)


async def _wait_any(events: tuple[asyncio.Event, ...], timeout: float, clock: Clock) -> None:
    waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(e.wait()) for e in events]
    waiters.append(asyncio.ensure_future(clock.sleep(timeout)))
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
