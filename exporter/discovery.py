"""Finding datasets and what is known about them: discovery edges, pixel metadata, token checks.

Each runs when due (its own interval) before a collection cycle. A failed or empty discovery refresh keeps
the last good list; a pixel gone upstream leaves after the next successful refresh.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from exporter.config import Config, DiscoveryConfig
from exporter.graph import BatchCall, GraphClient, GraphError, GraphResponse
from exporter.targets import Target

log = logging.getLogger(__name__)

PIXEL_FIELDS = "id,name,is_unavailable,last_fired_time,server_last_fired_time,owner_business{id,name}"
PAGE_SIZE = "100"


@dataclass(frozen=True)
class PixelMeta:
    name: str = ""
    business_id: str = ""
    business_name: str = ""
    last_fired: float | None = None
    server_last_fired: float | None = None


@dataclass(frozen=True)
class SourceStatus:
    success: bool
    last_success: float | None


@dataclass(frozen=True)
class TokenStatus:
    valid: bool
    expires_at: float  # 0: never


def graph_time(value: Any) -> float | None:
    """Graph's `2026-11-29T12:00:00+0000` as a Unix time; None when absent or not a time."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except ValueError:
        return None


def pixel_meta(item: dict[str, Any]) -> PixelMeta:
    owner = item.get("owner_business") if isinstance(item.get("owner_business"), dict) else {}
    return PixelMeta(
        name=str(item.get("name") or ""),
        business_id=str(owner.get("id") or ""),
        business_name=str(owner.get("name") or ""),
        last_fired=graph_time(item.get("last_fired_time")),
        server_last_fired=graph_time(item.get("server_last_fired_time")),
    )


class Housekeeping:
    """State that outlives cycles: discovered targets, pixel metadata, token checks, and when each is due."""

    def __init__(self) -> None:
        self.discovered: dict[str, tuple[Target, ...]] = {}
        self.sources: dict[str, SourceStatus] = {}
        self.meta: dict[str, PixelMeta] = {}
        self.tokens: dict[str, TokenStatus] = {}
        self._due: dict[str, float] = {}

    def _is_due(self, key: str, every: float) -> bool:
        now = time.monotonic()
        if now < self._due.get(key, 0.0):
            return False
        self._due[key] = now + every
        return True

    def forget_schedule(self) -> None:
        """After a reload: everything is due again."""
        self._due.clear()

    # ----- discovery ---------------------------------------------------------------------------------------
    async def discover(self, client: GraphClient, config: Config, tokens: dict[str, str]) -> None:
        wanted = {d.source for d in config.discovery}
        for stale in set(self.discovered) - wanted:
            self.discovered.pop(stale, None)
            self.sources.pop(stale, None)
        for source in config.discovery:
            if source.credential in tokens and self._is_due(f"discovery:{source.source}", source.refresh):
                await self._refresh(client, source, tokens[source.credential])

    async def _refresh(self, client: GraphClient, source: DiscoveryConfig, token: str) -> None:
        last = self.sources.get(source.source)
        try:
            found = await self._list(client, source, token)
        except GraphError as exc:
            log.warning("discovery from %s failed, keeping its last list: %s", source.source, exc)
            self.sources[source.source] = SourceStatus(False, last.last_success if last else None)
            return
        if not found:
            log.warning("discovery from %s found no pixels; keeping its last list", source.source)
            self.sources[source.source] = SourceStatus(False, last.last_success if last else None)
            return
        self.discovered[source.source] = tuple(found)
        self.sources[source.source] = SourceStatus(True, time.time())
        log.info("discovery from %s: %d datasets", source.source, len(found))

    async def _list(self, client: GraphClient, source: DiscoveryConfig, token: str) -> list[Target]:
        include = re.compile(source.include) if source.include else None
        exclude = re.compile(source.exclude) if source.exclude else None
        edges = (
            [f"act_{source.ad_account_id}/adspixels"]
            if source.ad_account_id
            else [f"{source.business_id}/{edge}" for edge in source.edges]
        )
        found: dict[str, Target] = {}
        for edge in edges:
            response: GraphResponse | None = await client.get(
                edge, {"fields": PIXEL_FIELDS, "limit": PAGE_SIZE}, token, endpoint="discovery"
            )
            while response is not None:
                body = response.body if isinstance(response.body, dict) else {}
                for item in body.get("data") or []:
                    if not isinstance(item, dict) or not str(item.get("id", "")).isdigit():
                        continue
                    meta = pixel_meta(item)
                    if item.get("is_unavailable") is True:
                        continue
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
                paging = body.get("paging") if isinstance(body.get("paging"), dict) else {}
                next_url = paging.get("next")
                response = (
                    await client.get_next(next_url, token, endpoint="discovery") if isinstance(next_url, str) else None
                )
        return list(found.values())

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
            for target in self.discovered.get(source.source, ()):
                out.setdefault(target.key, target)
        return tuple(t for t in out.values() if in_shard(t.dataset_id, config.shard.index, config.shard.count))

    # ----- metadata for configured datasets -----------------------------------------------------------------
    async def refresh_metadata(self, client: GraphClient, config: Config, tokens: dict[str, str]) -> None:
        if not config.datasets or not self._is_due("metadata", config.collection.metadata_interval):
            return
        wanted = {d.id: d.credential for d in config.datasets if d.credential in tokens}
        ids = [i for i in wanted if in_shard(i, config.shard.index, config.shard.count)]
        size = config.collection.batch_size
        slots = asyncio.Semaphore(config.collection.concurrency)

        async def one_batch(chunk: list[str]) -> None:
            calls = [BatchCall(i, {"fields": PIXEL_FIELDS}, tokens[wanted[i]]) for i in chunk]
            async with slots:
                try:
                    outcomes = await client.batch(calls)
                except GraphError as exc:
                    log.warning("pixel metadata refresh failed for %d datasets: %s", len(chunk), exc)
                    return
            for dataset_id, outcome in zip(chunk, outcomes, strict=True):
                if isinstance(outcome, GraphResponse) and isinstance(outcome.body, dict):
                    self.meta[dataset_id] = pixel_meta(outcome.body)
                elif isinstance(outcome, GraphError):
                    log.info("pixel metadata for dataset %s unavailable: %s", dataset_id, outcome)

        await asyncio.gather(*(one_batch(ids[i : i + size]) for i in range(0, len(ids), size)))

    # ----- token checks ------------------------------------------------------------------------------------
    async def check_tokens(
        self, client: GraphClient, config: Config, tokens: dict[str, str], app_secret: str | None
    ) -> None:
        app_id = config.graph_api.app_id
        if not app_id or not app_secret or not self._is_due("tokens", config.collection.token_check_interval):
            return
        names = sorted(tokens)
        # A batch keeps each token in the request body: debug_token takes it as a parameter, never in a URL.
        calls = [BatchCall("debug_token", {"input_token": tokens[n]}, f"{app_id}|{app_secret}") for n in names]
        try:
            outcomes = await client.batch(calls)
        except GraphError as exc:
            log.warning("token check failed: %s", exc)
            return
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
            self.tokens[name] = TokenStatus(valid, float(expires) if isinstance(expires, int | float) else 0.0)
            if not valid:
                log.error("credential %r: Meta says its token is not valid", name)


def in_shard(dataset_id: str, index: int, count: int) -> bool:
    """A stable assignment of datasets to shards (the same on every replica and every run)."""
    if count <= 1:
        return True
    return int.from_bytes(hashlib.sha256(dataset_id.encode()).digest()[:8], "big") % count == index
