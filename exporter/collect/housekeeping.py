"""Finding datasets and what is known about them: discovery edges, pixel metadata, token checks.

Each runs when due (its own interval) before a collection cycle. Each discovery edge succeeds or fails on its
own: a failed edge, or one that suddenly answers empty, keeps its last good list; a pixel gone upstream
leaves after the edge's next successful refresh.

Pixel edges and `GET /{pixel_id}` return AdsPixel nodes, which have no `server_last_fired_time` (asking for it
fails the whole call): that field is read from AdsDataset nodes, listed by `/{business_id}/ads_dataset`, one
paged call per known business per metadata interval.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from exporter.collect.governor import Governor, Key
from exporter.common.clock import SYSTEM_CLOCK, Clock
from exporter.common.text import bounded, encodable
from exporter.config.settings import Config, DiscoveryConfig, Secrets
from exporter.config.targets import Target
from exporter.graph import BatchAnswer, BatchCall, GraphClient, GraphError, GraphResponse
from exporter.graph.fields import UnsupportedFields, nonexisting_field

log = logging.getLogger(__name__)

# AdsPixel fields (facebook-python-business-sdk `adobjects/adspixel.py`) and AdsDataset fields (`adsdataset.py`).
PIXEL_FIELDS = "id,name,is_unavailable,last_fired_time,owner_business{id,name}"
DATASET_FIELDS = "id,server_last_fired_time"
PAGE_SIZE = "100"
FIELD_RETRIES = 3
MAX_ITEMS = 100_000  # items of a listing that names no limit of its own (ads_dataset)
EMPTY_PAGES = 20  # pages past limit / PAGE_SIZE a listing may follow: Meta may hand out empty pages
GOVERNOR_WAIT = 60.0  # seconds a housekeeping call may wait for the rate-limit governor before it is skipped


@dataclass
class Gateway:
    """The Graph client behind the rate-limit governor, for housekeeping's calls: each waits until its app
    and business may be called (or fails as throttled after GOVERNOR_WAIT), and feeds the governor what its
    answer's usage headers say, as the collection's calls do."""

    client: GraphClient
    governor: Governor
    app_of: Callable[[str], str]  # credential -> its app's key

    async def get(
        self, path: str, params: dict[str, str], token: str, credential: str, *, endpoint: str, business: str = ""
    ) -> GraphResponse:
        return await self._governed(
            credential, business, lambda: self.client.get(path, params, token, endpoint=endpoint)
        )

    async def get_next(
        self, url: str, token: str, credential: str, *, endpoint: str, business: str = ""
    ) -> GraphResponse:
        return await self._governed(credential, business, lambda: self.client.get_next(url, token, endpoint=endpoint))

    async def batch(self, calls: list[BatchCall], credential: str, *, endpoint: str, business: str = "") -> BatchAnswer:
        answer: BatchAnswer = await self._governed(
            credential, business, lambda: self.client.batch(calls, endpoint=endpoint), len(calls)
        )
        return answer

    async def _governed(
        self, credential: str, business: str, call: Callable[[], Awaitable[Any]], calls: int = 1
    ) -> Any:
        app: Key = ("app", self.app_of(credential))
        keys: tuple[Key, ...] = (app, ("business", business)) if business else (app,)
        if not await self.governor.acquire(keys, self.governor.clock.monotonic() + GOVERNOR_WAIT):
            raise GraphError("throttled", "Meta's rate limits allow no call for it now; it is tried again later")
        try:
            answer = await call()
        except GraphError as exc:
            self.governor.observe_usage(app, exc.usage)
            if exc.reason == "throttled":
                self.governor.throttle(app, keys[1] if business else None, exc)
            raise
        finally:
            self.governor.release(keys)
        self.governor.observe_usage(app, answer.usage, calls)
        return answer


@dataclass(frozen=True)
class PixelMeta:
    name: str = ""
    business_id: str = ""
    business_name: str = ""
    last_fired: float | None = None


@dataclass(frozen=True)
class SourceStatus:
    success: bool
    last_success: float | None
    truncated: bool = False  # the listing held more than discovery[].max_pixels


@dataclass(frozen=True)
class TokenStatus:
    valid: bool
    expires_at: float  # 0: never
    app_id: str = ""


def graph_time(value: Any) -> float | None:
    """Graph's `2026-11-29T12:00:00+0000` as a Unix time; None when absent or not a time."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except ValueError:
        return None


def pixel_meta(item: dict[str, Any]) -> PixelMeta:
    owner: dict[str, Any] = item["owner_business"] if isinstance(item.get("owner_business"), dict) else {}
    return PixelMeta(
        name=bounded(encodable(str(item.get("name") or ""))),
        business_id=bounded(encodable(str(owner.get("id") or "")), 32),
        business_name=bounded(encodable(str(owner.get("name") or ""))),
        last_fired=graph_time(item.get("last_fired_time")),
    )


class Housekeeping:
    """State that outlives cycles: discovered targets, pixel metadata, token checks, and when each is due."""

    def __init__(self, unsupported: UnsupportedFields | None = None, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.clock = clock
        self.discovered: dict[str, tuple[Target, ...]] = {}  # per edge: "{business}/owned_pixels", "act_1/adspixels"
        self.sources: dict[str, SourceStatus] = {}  # per edge, like `discovered`
        self.meta: dict[str, PixelMeta] = {}
        self.server_last_fired: dict[str, float] = {}
        self.tokens: dict[str, TokenStatus] = {}
        self.unsupported = unsupported or UnsupportedFields()
        self._due: dict[str, float] = {}
        self._meta_asked: set[str] = set()  # configured datasets whose metadata was asked for since the last refresh

    def _is_due(self, key: str, every: float) -> bool:
        now = self.clock.monotonic()
        if now < self._due.get(key, 0.0):
            return False
        self._due[key] = now + every
        return True

    def forget_schedule(self) -> None:
        """Everything is due again."""
        self._due.clear()

    def forget_changed(self, old: Config, old_secrets: Secrets, new: Config, new_secrets: Secrets) -> None:
        """After a reload: what the new config changed is due again; the rest keeps its schedule.

        A discovery source is looked up again when it is new or changed or its token changed; token checks
        run again when a token or the app changed; the metadata read picks up new datasets by itself.
        """
        if new.graph_api != old.graph_api or new_secrets.app_secret != old_secrets.app_secret:
            self.forget_schedule()
            return
        changed = {n for n in new_secrets.tokens if new_secrets.tokens[n] != old_secrets.tokens.get(n)}
        before = {d.source: d for d in old.discovery}
        for source in new.discovery:
            if before.get(source.source) != source or source.credential in changed:
                self._due.pop(f"discovery:{source.source}", None)
        if changed or set(new_secrets.tokens) != set(old_secrets.tokens):
            self._due.pop("tokens", None)
        if new.shard != old.shard:
            self._due.pop("metadata", None)

    # ----- discovery ---------------------------------------------------------------------------------------
    async def discover(self, gateway: Gateway, config: Config, tokens: dict[str, str]) -> None:
        wanted = {edge for d in config.discovery for edge in edges_of(d)}
        for stale in set(self.discovered) - wanted:
            self.discovered.pop(stale, None)
        for stale in set(self.sources) - wanted:
            self.sources.pop(stale, None)
        for source in config.discovery:
            if source.credential in tokens and self._is_due(f"discovery:{source.source}", source.refresh):
                for edge in edges_of(source):
                    await self._refresh(gateway, source, edge, tokens[source.credential])

    async def _refresh(self, gateway: Gateway, source: DiscoveryConfig, edge: str, token: str) -> None:
        last = self.sources.get(edge)
        business = source.business_id or ""
        try:
            items = await self._paged(
                gateway, edge, PIXEL_FIELDS, token, source.credential, "discovery", business, source.max_pixels
            )
        except Exception as exc:
            if isinstance(exc, GraphError):
                log.warning("discovery from %s failed, keeping its last list: %s", edge, exc)
            else:
                log.exception("discovery from %s failed unexpectedly, keeping its last list", edge)
            self.sources[edge] = SourceStatus(False, last.last_success if last else None)
            return
        found = self._targets_from(items, source)
        if not found and self.discovered.get(edge):
            log.warning("discovery from %s suddenly found no pixels; keeping its last list", edge)
            self.sources[edge] = SourceStatus(False, last.last_success if last else None)
            return
        self.discovered[edge] = tuple(found)
        truncated = len(items) >= source.max_pixels
        self.sources[edge] = SourceStatus(True, self.clock.time(), truncated)
        if truncated:
            log.warning(
                "discovery from %s: more than discovery[].max_pixels (%d) pixels; the rest are left out",
                edge,
                source.max_pixels,
            )
        log.info("discovery from %s: %d datasets", edge, len(found))

    def _targets_from(self, items: list[dict[str, Any]], source: DiscoveryConfig) -> list[Target]:
        include = re.compile(source.include) if source.include else None
        exclude = re.compile(source.exclude) if source.exclude else None
        found: dict[str, Target] = {}
        for item in items:
            if not str(item.get("id", "")).isdigit() or item.get("is_unavailable") is True:
                continue
            meta = pixel_meta(item)
            if (include and not include.search(meta.name)) or (exclude and exclude.search(meta.name)):
                continue
            dataset_id = str(item["id"])
            self.meta[dataset_id] = meta
            found.setdefault(
                dataset_id,
                Target(
                    dataset_id,
                    source.agent_name,
                    source.credential,
                    meta.name,
                    source.labels,
                    "discovery",
                    meta.business_id,
                    meta.business_name,
                ),
            )
        return list(found.values())

    async def _paged(
        self,
        gateway: Gateway,
        edge: str,
        fields: str,
        token: str,
        credential: str,
        endpoint: str,
        business: str,
        limit: int = MAX_ITEMS,
    ) -> list[dict[str, Any]]:
        """The items of a paged edge, `limit` at most. A field Meta calls nonexisting is left out and the
        listing starts again."""
        for attempt in range(FIELD_RETRIES + 1):
            try:
                fields_now = self.unsupported.apply(fields)
                return await _pages(gateway, edge, fields_now, token, credential, endpoint, business, limit)
            except GraphError as exc:
                refused = nonexisting_field(str(exc)) if exc.code == 100 else None
                if not refused or attempt == FIELD_RETRIES:
                    raise
                self.unsupported.refuse(*refused, exc)
        raise AssertionError("unreachable")

    def targets(self, configured: tuple[Target, ...], config: Config) -> tuple[Target, ...]:
        """Configured targets (filled in with what metadata knows) plus discovered ones, each watched once,
        limited to this replica's shard."""
        out: dict[tuple[str, str], Target] = {}
        for target in configured:
            meta = self.meta.get(target.dataset_id)
            if meta:
                target = replace(
                    target,
                    name=target.name or meta.name,
                    business_id=target.business_id or meta.business_id,
                    business_name=target.business_name or meta.business_name,
                )
            out[target.key] = target
        for source in config.discovery:
            for edge in edges_of(source):
                for target in self.discovered.get(edge, ()):
                    out.setdefault(target.key, target)
        return tuple(t for t in out.values() if in_shard(t.dataset_id, config.shard.index, config.shard.count))

    # ----- metadata for configured datasets -----------------------------------------------------------------
    async def refresh_metadata(
        self, gateway: Gateway, config: Config, tokens: dict[str, str], targets: tuple[Target, ...] = ()
    ) -> None:
        """Configured datasets' pixel metadata, then every known business's datasets' server_last_fired_time.

        Between two refreshes only datasets never asked about (added by a reload) are read.
        """
        if not self._is_due("metadata", config.collection.metadata_interval):
            new = {d.id for d in config.datasets} - self._meta_asked
            if new:
                await self._pixel_metadata(gateway, config, tokens, new)
            return
        self._meta_asked.clear()
        await self._pixel_metadata(gateway, config, tokens)
        businesses: dict[str, str] = {}  # business -> a credential that watches one of its datasets
        for target in targets:
            business = target.business_id or self.meta.get(target.dataset_id, PixelMeta()).business_id
            if business and target.credential in tokens:
                businesses.setdefault(business, target.credential)
        for business, credential in sorted(businesses.items()):
            await self._server_last_fired(gateway, business, tokens[credential], credential)

    async def _pixel_metadata(
        self, gateway: Gateway, config: Config, tokens: dict[str, str], only: set[str] | None = None
    ) -> None:
        wanted = {d.id: d.credential for d in config.datasets if d.credential in tokens}
        ids = [i for i in wanted if in_shard(i, config.shard.index, config.shard.count) and (only is None or i in only)]
        self._meta_asked.update(ids)
        size = config.collection.batch_size
        slots = asyncio.Semaphore(config.collection.concurrency)

        async def one_batch(credential: str, chunk: list[str], attempt: int = 0) -> None:
            calls = [BatchCall(i, {"fields": self.unsupported.apply(PIXEL_FIELDS)}, tokens[credential]) for i in chunk]
            async with slots:
                try:
                    outcomes = (await gateway.batch(calls, credential, endpoint="metadata")).outcomes
                except GraphError as exc:
                    log.warning("pixel metadata refresh failed for %d datasets: %s", len(chunk), exc)
                    return
            again = []
            for dataset_id, outcome in zip(chunk, outcomes, strict=True):
                if isinstance(outcome, GraphResponse) and isinstance(outcome.body, dict):
                    self.meta[dataset_id] = pixel_meta(outcome.body)
                elif isinstance(outcome, GraphError):
                    refused = nonexisting_field(str(outcome)) if outcome.code == 100 else None
                    if refused and attempt < FIELD_RETRIES:
                        self.unsupported.refuse(*refused, outcome)
                        again.append(dataset_id)
                    else:
                        log.info("pixel metadata for dataset %s unavailable: %s", dataset_id, outcome)
            if again:
                await one_batch(credential, again, attempt + 1)

        by_credential: dict[str, list[str]] = {}
        for dataset_id in ids:
            by_credential.setdefault(wanted[dataset_id], []).append(dataset_id)
        await asyncio.gather(
            *(
                one_batch(credential, chunk[i : i + size])
                for credential, chunk in by_credential.items()
                for i in range(0, len(chunk), size)
            )
        )

    async def _server_last_fired(self, gateway: Gateway, business: str, token: str, credential: str) -> None:
        try:
            edge = f"{business}/ads_dataset"
            items = await self._paged(gateway, edge, DATASET_FIELDS, token, credential, "metadata", business)
        except GraphError as exc:
            log.info("server_last_fired_time of business %s's datasets unavailable: %s", business, exc)
            return
        for item in items:
            fired = graph_time(item.get("server_last_fired_time"))
            if fired is not None and str(item.get("id", "")).isdigit():
                self.server_last_fired[str(item["id"])] = fired

    # ----- token checks ------------------------------------------------------------------------------------
    async def check_tokens(
        self, gateway: Gateway, config: Config, tokens: dict[str, str], app_secret: str | None
    ) -> dict[str, TokenStatus]:
        """Every credential's token, checked with debug_token when due: what this check found (nothing when it
        was not due)."""
        app_id = config.graph_api.app_id
        if not app_id or not app_secret or not self._is_due("tokens", config.collection.token_check_interval):
            return {}
        names = sorted(tokens)
        # A batch keeps each token in the request body: debug_token takes it as a parameter, never in a URL.
        calls = [BatchCall("debug_token", {"input_token": tokens[n]}, f"{app_id}|{app_secret}") for n in names]
        try:  # an app token's calls count against its app
            outcomes = (await gateway.batch(calls, app_id, endpoint="debug_token")).outcomes
        except GraphError as exc:
            log.warning("token check failed: %s", exc)
            return {}
        found: dict[str, TokenStatus] = {}
        for name, outcome in zip(names, outcomes, strict=True):
            data = (
                outcome.body.get("data")
                if isinstance(outcome, GraphResponse) and isinstance(outcome.body, dict)
                else None
            )
            if not isinstance(data, dict):
                log.warning("token check for credential %r got no answer: %s", name, outcome)
                continue
            valid = data.get("is_valid") is True
            expires = data.get("expires_at")
            app = str(data.get("app_id") or "")[:32]
            status = TokenStatus(valid, float(expires) if isinstance(expires, int | float) else 0.0, app)
            self.tokens[name] = found[name] = status
            if not valid:
                log.error("credential %r: Meta says its token is not valid", name)
        return found


def edges_of(source: DiscoveryConfig) -> list[str]:
    """The edges a discovery source reads, each named as its status is: `123/owned_pixels`, `act_4/adspixels`."""
    if source.ad_account_id:
        return [f"act_{source.ad_account_id}/adspixels"]
    return [f"{source.business_id}/{edge}" for edge in source.edges]


def in_shard(dataset_id: str, index: int, count: int) -> bool:
    """A stable assignment of datasets to shards (the same on every replica and every run)."""
    if count <= 1:
        return True
    return int.from_bytes(hashlib.sha256(dataset_id.encode()).digest()[:8], "big") % count == index


async def _pages(
    gateway: Gateway, edge: str, fields: str, token: str, credential: str, endpoint: str, business: str, limit: int
) -> list[dict[str, Any]]:
    """The items of a paged edge, following `paging.next` until it is absent or `limit` items are in. A `next`
    seen before, or more pages than `limit` items could fill, is an answer that would never end."""
    items: list[dict[str, Any]] = []
    params = {"fields": fields, "limit": PAGE_SIZE}
    response = await gateway.get(edge, params, token, credential, endpoint=endpoint, business=business)
    seen: set[bytes] = set()  # digests: a hostile `next` may be megabytes long
    pages = -(-limit // int(PAGE_SIZE)) + EMPTY_PAGES
    while True:
        body = response.body if isinstance(response.body, dict) else {}
        items.extend(item for item in body.get("data") or [] if isinstance(item, dict))
        if len(items) >= limit:
            return items[:limit]
        paging: dict[str, Any] = body["paging"] if isinstance(body.get("paging"), dict) else {}
        next_url = paging.get("next")
        if not isinstance(next_url, str):
            return items
        digest = hashlib.sha256(next_url.encode("utf-8", "replace")).digest()
        if digest in seen:
            raise GraphError("invalid_response", f"{edge}: paging.next repeats a page already read")
        if len(seen) + 1 >= pages:
            raise GraphError("invalid_response", f"{edge}: more than {pages} pages without reaching the end")
        seen.add(digest)
        response = await gateway.get_next(next_url, token, credential, endpoint=endpoint, business=business)
