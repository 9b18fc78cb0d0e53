"""Async Graph API client: one pooled httpx client, header auth, appsecret_proof, typed errors, bounded retries."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import random
import socket
import ssl
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol, TypeVar
from urllib.parse import parse_qsl, quote_plus, urlsplit

import httpx

from exporter import __version__
from exporter.common.text import bounded, scrub
from exporter.graph.errors import BUSINESS_THROTTLE_CODES, GraphError, classify
from exporter.graph.ratelimit import RateLimitUsage, parse_rate_limit_headers
from exporter.graph.versions import LATEST_VERSION

log = logging.getLogger(__name__)

T = TypeVar("T")
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
TOTAL_TIMEOUTS = 2  # a whole request may take this many times graph_api.timeout, which bounds each read
_AUTH_PARAMS = frozenset({"access_token", "appsecret_proof", "appsecret_time"})
_FORM = {"Content-Type": "application/x-www-form-urlencoded"}
MAX_MESSAGE = 500  # characters of an error message (and of error_user_msg) kept
MAX_ITEM_HEADERS = 64  # headers read from one batch item


@lru_cache(maxsize=1024)
def _in_batch(text: str) -> str:
    """`text` (part of an item's `relative_url`) as the form-encoded `batch` field carries it: escaped for the
    JSON array, then quoted for the form. Both are done one character at a time, so an item's encoding is the
    concatenation of its parts', and the same long `fields` expansion in every item is encoded once."""
    return quote_plus(json.dumps(text)[1:-1])


@lru_cache(maxsize=1024)
def _quoted_in_batch(value: str) -> str:
    """A query value of an item's `relative_url` as the `batch` field carries it: quoted for the URL (which
    leaves only characters JSON keeps as they are), then quoted again for the form."""
    return quote_plus(quote_plus(value))


_ITEM_START, _ITEM_END, _ITEM_SEPARATOR = map(quote_plus, ('{"method":"GET","relative_url":"', '"}', ","))


def batch_form(token: str, urls: list[tuple[str, Mapping[str, str]]], extra: Mapping[str, str]) -> bytes:
    """The body of a batch request, as urlencode would write `access_token`, `batch` (the JSON array of the GETs
    of `urls`: each a path below the base URL and its query) and `extra`. Written here because urlencode quotes
    the batch one byte at a time in Python: about 1 ms for every 50 datasets."""
    items = (
        _ITEM_START
        + _in_batch(path + "?")
        + "%26".join(f"{_quoted_in_batch(key)}%3D{_quoted_in_batch(value)}" for key, value in query.items())
        + _ITEM_END
        for path, query in urls
    )
    batch = f"%5B{_ITEM_SEPARATOR.join(items)}%5D"
    fields = [f"access_token={quote_plus(token)}", f"batch={batch}"]
    fields += [f"{quote_plus(key)}={quote_plus(value)}" for key, value in extra.items()]
    return "&".join(fields).encode()


class VersionNotes:
    """The versions Meta answered with instead of the configured one, and its `X-Ad-Api-Version-Warning`s:
    each new one logged once, kept for /metrics while Meta keeps sending it. Since 2024 the Marketing API often
    answers a call to an expired version with the next one and that header, rather than refusing it (2635)."""

    MAX_KEPT = 16  # a different value on every answer must not grow memory or the log
    LOG_WINDOW = 3600.0  # at most MAX_KEPT new values are logged in this many seconds; the rest are counted

    def __init__(self, version: str) -> None:
        self.version = version
        self.upgraded: dict[str, float] = {}  # version Meta answered with -> when last seen (time.time())
        self._warnings: dict[str, None] = {}  # warnings already logged, oldest first
        self._window = (-float("inf"), 0, 0)  # (start, lines logged, new values not logged)

    def check(self, headers: Mapping[str, str]) -> None:
        """`headers` with lowercase names (httpx's are case-insensitive)."""
        answered = (headers.get("facebook-api-version") or "")[:16]
        warning = (headers.get("x-ad-api-version-warning") or "")[:MAX_MESSAGE]
        if answered and answered != self.version:
            if answered not in self.upgraded:
                _keep_bounded(self.upgraded, self.MAX_KEPT)
                self._log(
                    "Graph API version: asked for %s, Meta answered with %s; set graph_api.version to a current "
                    "version",
                    self.version,
                    scrub(answered),
                )
            self.upgraded[answered] = time.time()
        if warning and warning not in self._warnings:
            _keep_bounded(self._warnings, self.MAX_KEPT)
            self._warnings[warning] = None
            self._log("Graph API version: Meta says %r; set graph_api.version to a current version", scrub(warning))

    def _log(self, message: str, *args: object) -> None:
        """A new value on every answer (a bug between us and Meta) must not fill the log: MAX_KEPT lines per
        LOG_WINDOW, then one saying how many more came."""
        now = time.monotonic()
        start, logged, unlogged = self._window
        if now - start >= self.LOG_WINDOW:
            if unlogged:
                log.warning("Graph API version: %d more new versions or warnings came in the last hour", unlogged)
            start, logged, unlogged = now, 0, 0
        if logged < self.MAX_KEPT:
            log.warning(message, *args)
            logged += 1
            if logged == self.MAX_KEPT:
                log.warning("Graph API version: %d new versions or warnings within an hour; more are counted, "
                            "not logged, until the hour is over", logged)  # fmt: skip
        else:
            unlogged += 1
        self._window = (start, logged, unlogged)


def _keep_bounded(kept: dict[str, Any], limit: int) -> None:
    while len(kept) >= limit:
        del kept[next(iter(kept))]


class RequestObserver(Protocol):
    """Receives what the client saw, for the exporter's own metrics."""

    def on_request(self, endpoint: str, status: str, seconds: float) -> None: ...

    def on_graph_error(self, code: int, reason: str) -> None: ...

    def on_usage(self, usage: RateLimitUsage) -> None: ...


@dataclass(frozen=True)
class BatchCall:
    """One GET inside a batch request: `path` below the version, its query, and the token it runs under."""

    path: str
    params: Mapping[str, str]
    token: str


@dataclass(frozen=True)
class GraphResponse:
    body: Any
    usage: RateLimitUsage
    api_version: str | None


@dataclass(frozen=True)
class BatchAnswer:
    """One outcome per call, in order (None where Meta ran out of time), and the batch response's own usage."""

    outcomes: list[GraphResponse | GraphError | None]
    usage: RateLimitUsage


def appsecret_proof(token: str, app_secret: str, unix_time: int) -> str:
    """Current form: hex HMAC-SHA256 of `token|unix_time` keyed with the app secret."""
    return hmac.new(app_secret.encode(), f"{token}|{unix_time}".encode(), hashlib.sha256).hexdigest()


class GraphClient:
    def __init__(
        self,
        base_url: str = "https://graph.facebook.com",
        version: str = LATEST_VERSION,
        *,
        timeout: float = 30.0,
        app_secret: str | Callable[[], str | None] | None = None,
        max_retries: int = 2,
        backoff: float = 0.5,
        backoff_max: float = 30.0,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_connections: int = 20,
        observer: RequestObserver | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        app_labels: Mapping[str, str] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.host = urlsplit(self.base_url).netloc
        self.timeout = timeout
        # token -> the app it belongs to (its ID, or the credential's name where unknown): X-App-Usage is
        # labelled as the governor's app keys are
        self.app_labels = app_labels if app_labels is not None else {}
        self.version = version
        # a callable is asked at every call: a rotated app_secret_file takes effect without a new client
        self._app_secret = app_secret if callable(app_secret) else (lambda: app_secret)
        self.max_retries = max_retries
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.max_body_bytes = max_body_bytes
        self.observer = observer
        self.versions = VersionNotes(version)
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            # Only the encodings _read_limited inflates itself, with its size limit.
            headers={"User-Agent": f"meta-dataset-quality-exporter/{__version__}", "Accept-Encoding": "gzip, deflate"},
            transport=transport,
        )

    @property
    def app_secret(self) -> str | None:
        return self._app_secret()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> GraphClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ----- endpoints -----------------------------------------------------------------------------------
    async def get_next(self, url: str, token: str, *, endpoint: str) -> GraphResponse:
        """Follow a `paging.next` URL: same host only, and the token moves from its query to the header."""
        parts = urlsplit(url)
        base = urlsplit(self.base_url)
        if (parts.scheme, parts.netloc) != (base.scheme, base.netloc):
            raise GraphError("invalid_response", f"paging.next points to another host ({parts.netloc})")
        path = parts.path.removeprefix(base.path.rstrip("/")).lstrip("/")
        version, _, rest = path.partition("/")
        path = rest if version.startswith("v") and version[1:2].isdigit() else path
        params = {
            k: v for k, v in parse_qsl(parts.query) if k not in ("access_token", "appsecret_proof", "appsecret_time")
        }
        return await self.get(path, params, token, endpoint=endpoint)

    async def get(self, path: str, params: Mapping[str, str], token: str, *, endpoint: str) -> GraphResponse:
        """GET `{base}/{version}/{path}` with retries for transient failures only."""
        return await self._retrying(endpoint, lambda: self._get_once(path, params, token, endpoint))

    async def _retrying(self, endpoint: str, once: Callable[[], Awaitable[T]]) -> T:
        """Bounded retries with exponential back-off and jitter, for transient, timeout and network errors only."""
        attempt = 0
        while True:
            try:
                return await once()
            except GraphError as exc:
                if not exc.retryable or attempt >= self.max_retries:
                    raise
                delay = self.backoff_delay(attempt)
                attempt += 1
                log.debug("retrying %s after %s in %.2fs (attempt %d)", endpoint, exc.reason, delay, attempt + 1)
                await asyncio.sleep(delay)

    async def batch(self, calls: list[BatchCall], *, endpoint: str = "batch", retry: bool = True) -> BatchAnswer:
        """Run up to 50 GETs of one credential in one batch request.

        The batch carries one token, at the top level, as Meta requires: a token Meta rejects fails the whole
        request, so mixing credentials would let one client's expired token fail every other client's calls.
        A failure of the whole request raises GraphError; per-item failures come back as GraphError values.
        Without `retry`, a transient failure of the whole request is the caller's to retry (every item of a
        batch counts as a call, so the fetcher re-sends them through the governor, in smaller batches).
        """
        if not calls:
            return BatchAnswer([], RateLimitUsage())
        token = calls[0].token
        if any(call.token != token for call in calls):
            raise ValueError("a batch request carries the calls of one credential only")
        form = batch_form(token, [(f"{self.version}/{c.path}", c.params) for c in calls], self._auth_params(token))
        once = lambda: self._post_once(form, len(calls), endpoint, token)  # noqa: E731
        answer = await (self._retrying(endpoint, once) if retry else once())
        return BatchAnswer([self._batch_item(element, token) for element in answer.body], answer.usage)

    def _app_label(self, token: str) -> str:
        return self.app_labels.get(token, "app")

    def _batch_item(self, element: Any, token: str) -> GraphResponse | GraphError | None:
        if element is None:
            return None
        if not isinstance(element, dict) or not isinstance(element.get("code"), int):
            return GraphError("invalid_response", "batch item is not an object with a code")
        raw_headers = element.get("headers")
        headers = {  # header names are case-insensitive: Meta writes `Facebook-API-Version` or lowercase
            str(h.get("name")).lower(): str(h.get("value"))
            for h in (raw_headers if isinstance(raw_headers, list) else [])[:MAX_ITEM_HEADERS]
            if isinstance(h, dict) and "name" in h and "value" in h
        }
        self.versions.check(headers)
        usage = parse_rate_limit_headers(headers, app_id=self._app_label(token))
        if self.observer and usage.samples:
            self.observer.on_usage(usage)
        body = element.get("body")
        if not isinstance(body, str):
            return GraphError("invalid_response", "batch item body is not a string", http_status=element["code"])
        try:
            return self.interpret_body(element["code"], body, usage, headers.get("facebook-api-version"))
        except GraphError as exc:
            return exc

    async def _post_once(self, form: bytes, count: int, endpoint: str, token: str) -> GraphResponse:
        url = f"{self.base_url}/{self.version}/"
        result = await self._send("POST", url, endpoint, token=token, content=form, headers=_FORM)
        if not isinstance(result.body, list) or len(result.body) != count:
            raise GraphError("invalid_response", f"batch answer is not a list of {count} elements")
        return result

    def backoff_delay(self, attempt: int) -> float:
        delay = min(self.backoff_max, self.backoff * 2**attempt)
        return delay / 2 + random.uniform(0, delay / 2)  # equal jitter

    # ----- one request ---------------------------------------------------------------------------------
    def _auth_params(self, token: str) -> dict[str, str]:
        secret = self.app_secret
        if not secret:
            return {}
        now = int(time.time())
        return {"appsecret_proof": appsecret_proof(token, secret, now), "appsecret_time": str(now)}

    async def _get_once(self, path: str, params: Mapping[str, str], token: str, endpoint: str) -> GraphResponse:
        url = f"{self.base_url}/{self.version}/{path.lstrip('/')}"
        query = {**params, **self._auth_params(token)}
        account = path.split("/", 1)[0] if path.startswith("act_") else ""
        headers = {"Authorization": f"OAuth {token}"}
        return await self._send("GET", url, endpoint, account, token=token, params=query, headers=headers)

    async def _send(
        self, method: str, url: str, endpoint: str, account: str = "", *, token: str, **request: Any
    ) -> GraphResponse:
        """One HTTP request: its body read up to the limit, its answer interpreted, its outcome counted."""
        started = time.monotonic()
        status = "error"
        try:
            # httpx's timeout bounds each read; this bounds the whole request, so a body that drips a byte at a
            # time cannot hold a call (and its cycle) open for ever.
            async with asyncio.timeout(TOTAL_TIMEOUTS * self.timeout):
                async with self._http.stream(method, url, **request) as response:
                    status = str(response.status_code)
                    body = await self._read_limited(response)
                    return self._interpret(response.status_code, response.headers, body, account, token)
        except TimeoutError:
            raise GraphError(
                "timeout", f"{endpoint}: no whole answer from {self.host} within {TOTAL_TIMEOUTS * self.timeout:g}s"
            ) from None
        except httpx.TimeoutException as exc:
            what = _TIMEOUTS.get(type(exc).__name__, "{host} sent no answer").format(host=self.host)
            raise GraphError("timeout", f"{endpoint}: {what} within {self.timeout:g}s") from None
        except httpx.TransportError as exc:
            raise GraphError("network", f"{endpoint}: cannot reach {self.host}: {network_cause(exc)}") from None
        finally:
            if self.observer:
                self.observer.on_request(endpoint, status, time.monotonic() - started)

    async def _read_limited(self, response: httpx.Response) -> bytes:
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise GraphError(
                "invalid_response",
                f"response body of {declared} bytes is over the {self.max_body_bytes}-byte limit",
                http_status=response.status_code,
            )
        inflater = _inflater(response.headers.get("content-encoding", ""), response.status_code)
        chunks: list[bytes] = []
        size = 0
        async for raw in _raw_chunks(response):
            if inflater is not None and inflater.eof:
                # Bytes after the end of the compressed stream: counted against the limit, never kept (zlib
                # would pile them up in unused_data, copying them again at every read).
                size += len(raw)
                if size > self.max_body_bytes:
                    raise GraphError(
                        "invalid_response",
                        f"response body is over the {self.max_body_bytes}-byte limit",
                        http_status=response.status_code,
                    )
                continue
            # Inflate with the limit applied as the bytes arrive: a 200 KB gzip bomb never becomes 200 MB.
            pending = raw
            while pending:
                if inflater is None:
                    chunk, pending = pending, b""
                else:
                    try:
                        chunk = inflater.decompress(pending, self.max_body_bytes - size + 1)
                    except zlib.error as exc:
                        raise GraphError(
                            "invalid_response", f"response body is not valid compressed data ({exc})"
                        ) from None
                    pending = inflater.unconsumed_tail
                size += len(chunk)
                if size > self.max_body_bytes:
                    raise GraphError(
                        "invalid_response",
                        f"response body is over the {self.max_body_bytes}-byte limit",
                        http_status=response.status_code,
                    )
                chunks.append(chunk)
                if not chunk and pending:  # nothing more comes out of what is left: let the next read feed it
                    break
        return b"".join(chunks)

    def _interpret(
        self, status: int, headers: Mapping[str, str], raw: bytes, ad_account: str, token: str
    ) -> GraphResponse:
        self.versions.check(headers)
        # X-Ad-Account-Usage does not name its account: the path called does
        usage = parse_rate_limit_headers(headers, app_id=self._app_label(token), ad_account_id=ad_account)
        if self.observer and usage.samples:
            self.observer.on_usage(usage)
        return self.interpret_body(status, raw, usage, headers.get("facebook-api-version"))

    def interpret_body(
        self, status: int, raw: bytes | str, usage: RateLimitUsage, api_version: str | None = None
    ) -> GraphResponse:
        """Turn one answer (a whole response or a batch item) into a GraphResponse or a GraphError."""
        try:
            body = json.loads(raw)
        except RecursionError:
            raise GraphError(
                "invalid_response", "response body is JSON nested too deeply", http_status=status
            ) from None
        except ValueError:
            if status >= 500:
                raise GraphError("transient", "server error with a body that is not JSON", http_status=status) from None
            if status == 429:  # a gateway's or a proxy's throttle, without Meta's error object
                raise GraphError("throttled", "HTTP 429 Too Many Requests", http_status=status) from None
            raise GraphError("invalid_response", "response body is not valid JSON", http_status=status) from None
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            raise self._graph_error(body["error"], status, usage)
        if status >= 500:
            raise GraphError("transient", "server error", http_status=status)
        if status == 429:
            raise GraphError("throttled", "HTTP 429 Too Many Requests", http_status=status)
        if status != 200:
            raise GraphError("other", "unexpected answer without an error object", http_status=status)
        return GraphResponse(body, usage, api_version)

    def _graph_error(self, error: dict[str, Any], status: int, usage: RateLimitUsage) -> GraphError:
        code = error.get("code") if isinstance(error.get("code"), int) else None
        subcode = error.get("error_subcode") if isinstance(error.get("error_subcode"), int) else None
        reason = classify(code, subcode, error.get("is_transient") is True)
        if reason == "other" and status == 429:
            reason = "throttled"
        retry_after = None
        if reason == "throttled":
            waits = [regain.seconds for regain in usage.regain_seconds]
            retry_after = max(waits) if waits else None
            if code in BUSINESS_THROTTLE_CODES and retry_after is None:
                data = _error_data(error.get("error_data"))
                minutes = data.get("estimated_time_to_regain_access")
                if isinstance(minutes, int | float) and not isinstance(minutes, bool) and minutes > 0:
                    retry_after = float(min(minutes, 10**7)) * 60  # a 400-digit number must not overflow
        if self.observer and code is not None:
            self.observer.on_graph_error(code, reason)
        message = scrub(str(error.get("message") or "Graph API error"))[:MAX_MESSAGE]
        user_message = error.get("error_user_msg")
        if isinstance(user_message, str) and user_message.strip():  # what Meta would tell a person, often the fix
            message += f" (Meta says: {scrub(user_message.strip())[:MAX_MESSAGE]})"
        return GraphError(
            reason,
            message,
            code=code,
            subcode=subcode,
            http_status=status,
            fbtrace_id=bounded(str(error["fbtrace_id"]), 64) if error.get("fbtrace_id") else None,
            retry_after=retry_after,
            usage=usage,
        )


def _error_data(value: Any) -> dict[str, Any]:
    """`error_data` is an object, or sometimes that object as a JSON string (facebook-python-business-sdk's
    `exceptions.py` parses it with `json.loads` when it is not a dict); anything else is no data."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return {}
    return value if isinstance(value, dict) else {}


_TIMEOUTS = {
    "ConnectTimeout": "could not connect to {host}",
    "ReadTimeout": "{host} sent no answer",
    "WriteTimeout": "could not send the request to {host}",
    "PoolTimeout": "no free connection to {host}",
}


def network_cause(exc: BaseException) -> str:
    """What went wrong on the way, in words: refused, DNS, TLS, reset, closed early."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < 10:
        chain.append(current)
        current = current.__cause__ or current.__context__
    for error in chain:
        if isinstance(error, socket.gaierror):
            return f"DNS lookup failed ({error.strerror or error})"
        if isinstance(error, ssl.SSLCertVerificationError):
            return f"TLS certificate not trusted ({error.verify_message or error.reason})"
        if isinstance(error, ssl.SSLError):
            return f"TLS handshake failed ({error.reason or error})"
        if isinstance(error, ConnectionRefusedError):
            return "connection refused (nothing listens there)"
        if isinstance(error, ConnectionResetError):
            return "connection reset by the peer"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "the server closed the connection before a whole answer"
    if isinstance(exc, httpx.ProxyError):
        return f"the proxy refused ({exc})"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _inflater(encoding: str, status: int) -> Any:
    """A zlib decompressor for the answer's Content-Encoding, or None for an uncompressed answer."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj()
    raise GraphError("invalid_response", f"answer in an encoding not asked for ({encoding[:40]})", http_status=status)


async def _raw_chunks(response: httpx.Response) -> AsyncIterator[bytes]:
    """The body as it came off the wire, still compressed; a response built whole in memory (a mock
    transport's) has no stream left to read, only its content."""
    try:
        async for raw in response.aiter_raw():
            yield raw
    except httpx.StreamConsumed:
        yield response.content
