"""The HTTP side: `/`, `/metrics`, `/status`, `/-/healthy`, `/-/ready`, `/-/reload`. It reads snapshots only.

Connections, parsing and their limits are exporter.web.httpd's; this module routes, authenticates and answers.
Rendering, bcrypt and reloads run in executors, so the event loop that holds every connection never waits
on them; bcrypt has one thread of its own, so failing logins can take at most one core.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import html
import logging
import threading
import time
from collections import Counter
from typing import Protocol
from urllib.parse import parse_qs

from exporter import __version__
from exporter.exposition.publisher import OPENMETRICS, TEXT, ProcessMetrics, render_exposition
from exporter.state.snapshot import Snapshot
from exporter.web.httpd import HttpServer, Limits, Request, Response
from exporter.web.status import status_html, status_json
from exporter.web.webconfig import WebSecurity

log = logging.getLogger(__name__)
PLAIN = "text/plain; charset=utf-8"
HTML = "text/html; charset=utf-8"
# Password checks waiting for the bcrypt thread: a client (a source address) may have a couple waiting, all
# together a few dozen; past either bound the check is refused at once (429). A flood of wrong passwords from one
# address then costs that address, and the others' checks still run within a second or so.
MAX_PENDING_PER_CLIENT = 2
MAX_PENDING_LOGINS = 32
MAX_STATUS_PAGES = 64  # status pages (per customer, HTML or JSON) kept per snapshot


class WebApp(Protocol):
    lifecycle: bool  # POST /-/reload is on
    reloadable: bool  # the configuration comes from a file, which a reload reads again

    @property
    def snapshot(self) -> Snapshot: ...

    def reload(self) -> tuple[bool, str]: ...


class WebServer:
    def __init__(
        self,
        app: WebApp,
        host: str,
        port: int,
        security: WebSecurity | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.app = app
        self.security = security or WebSecurity()
        self.process = ProcessMetrics()
        self.status = StatusCache()
        self._bcrypt = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="bcrypt")
        self._pending_logins: Counter[str] = Counter()  # per source address
        self._server = HttpServer(
            self._handle,
            host,
            port,
            limits=limits,
            tls=lambda: self.security.tls,
            extra_headers=lambda: self.security.headers,
            server_name=f"meta-dataset-quality-exporter/{__version__}",
        )

    @property
    def address(self) -> tuple[str, int]:
        return self._server.address

    def secure(self, security: WebSecurity) -> None:
        """Swap TLS, headers and basic auth (on reload); connections made from now on use them."""
        self.security = security
        self._server.refresh_tls()

    def start(self) -> None:
        self._server.start()
        scheme = "https" if self.security.tls else "http"
        log.info("listening on %s://%s:%d", scheme, *self.address)

    def stop(self) -> None:
        self._server.stop()
        self._bcrypt.shutdown(wait=True, cancel_futures=True)

    # ----- requests -----------------------------------------------------------------------------------
    async def _handle(self, request: Request) -> Response:
        denied = await self._authenticate(request)
        if denied is not None:
            return denied
        if request.method in ("GET", "HEAD"):
            return await self._get(request)
        if request.method == "POST":
            return await self._post(request)
        return Response(405, b"Method not allowed.\n", headers={"Allow": "GET, HEAD, POST"})

    async def _authenticate(self, request: Request) -> Response | None:
        security = self.security
        if not security.users:
            return None
        scheme, _, encoded = request.header("authorization").partition(" ")
        user = password = ""
        if scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                user = password = ""
        if user and security.remembered(user, password):
            return None
        if user:
            pending, peer = self._pending_logins, request.peer
            if pending[peer] >= MAX_PENDING_PER_CLIENT or sum(pending.values()) >= MAX_PENDING_LOGINS:
                return Response(429, b"Too many logins being checked; try again.\n", headers={"Retry-After": "1"})
            pending[peer] += 1
            try:
                loop = asyncio.get_running_loop()
                if await loop.run_in_executor(self._bcrypt, security.verify, user, password):
                    return None
            finally:
                pending[peer] -= 1
                if not pending[peer]:
                    del pending[peer]
        realm = 'Basic realm="meta-dataset-quality-exporter"'
        return Response(401, b"Unauthorized\n", headers={"WWW-Authenticate": realm})

    async def _get(self, request: Request) -> Response:
        path = request.path
        if path == "/metrics":
            return await self._metrics(request)
        if path == "/-/healthy":
            return Response(200, b"Healthy.\n")
        if path == "/-/ready":
            snap = self.app.snapshot
            if snap.ready:
                return Response(200, b"Ready.\n")
            return Response(
                503, f"Not ready: first collection cycle running ({snap.cycle_done}/{snap.cycle_total}).\n".encode()
            )
        if path == "/-/reload":
            return Response(
                405, b"Use POST to reload the configuration: curl -X POST .../-/reload\n", headers={"Allow": "POST"}
            )
        if path == "/":
            page = _landing(self.app.snapshot, self.app.lifecycle, self.app.reloadable)
            return Response(200, page.encode("utf-8", "replace"), HTML)
        if path == "/status":
            try:
                query = parse_qs(request.query, max_num_fields=8)
            except ValueError:  # more fields than the page has parameters
                return Response(400, b"Too many query parameters: /status takes format and customer.\n")
            as_json = query.get("format") == ["json"]
            customer = query["customer"][0][:200] if "customer" in query else None
            snapshot = self.app.snapshot
            body = await asyncio.get_running_loop().run_in_executor(None, self.status.get, snapshot, as_json, customer)
            return Response(200, body, "application/json" if as_json else HTML)
        return Response(404, b"Not found. Try /metrics.\n")

    async def _post(self, request: Request) -> Response:
        if request.path != "/-/reload":
            return Response(405, b"Only /-/reload accepts POST.\n", headers={"Allow": "GET, HEAD"})
        if not self.app.lifecycle:  # as Prometheus answers without --web.enable-lifecycle
            return Response(403, b"Lifecycle API is not enabled. Start with --web.enable-lifecycle or send SIGHUP.\n")
        ok, message = await asyncio.get_running_loop().run_in_executor(None, self.app.reload)
        return Response(200 if ok else 500, (message.rstrip("\n") + "\n").encode())

    async def _metrics(self, request: Request) -> Response:
        snap = self.app.snapshot
        openmetrics = prefers_openmetrics(request.header("accept"))
        compressed = accepts_gzip(request.header("accept-encoding"))
        exposition = snap.exposition
        if exposition is None:  # a snapshot nobody published through a Publisher (a stand-in app's)
            exposition = await asyncio.get_running_loop().run_in_executor(None, render_exposition, snap)
        body = exposition.get(openmetrics=openmetrics, compressed=compressed, tail=self.process.text(openmetrics))
        headers = {"Vary": "Accept, Accept-Encoding"}
        if compressed:
            headers["Content-Encoding"] = "gzip"
        return Response(200, body.chunks(), OPENMETRICS if openmetrics else TEXT, headers)


def _quality_values(header: str) -> dict[str, float]:
    """`gzip;q=0.5, *;q=0` -> {"gzip": 0.5, "*": 0.0}: media ranges or codings, lowercased, with their q."""
    out: dict[str, float] = {}
    for part in header.split(","):
        name, *params = (p.strip() for p in part.split(";"))
        if not name:
            continue
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = min(max(float(value), 0.0), 1.0)
                except ValueError:
                    q = 0.0
        out[name.lower()] = q
    return out


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether the client accepts gzip: `GZIP` and `*` count, `gzip;q=0` refuses it."""
    codings = _quality_values(accept_encoding)
    return codings.get("gzip", codings.get("x-gzip", codings.get("*", 0.0))) > 0


def prefers_openmetrics(accept: str) -> bool:
    """OpenMetrics when the client asks for it at least as strongly as for the text format."""
    ranges = _quality_values(accept)
    om = ranges.get("application/openmetrics-text", 0.0)
    text = max(ranges.get("text/plain", 0.0), ranges.get("text/*", 0.0), ranges.get("*/*", 0.0))
    return om > 0 and om >= text


class StatusCache:
    """The status page and its JSON twin, for everyone and per customer, each built once per snapshot (at most
    MAX_STATUS_PAGES of them: a client naming customers that do not exist costs a page each, not memory)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._generation = -1
        self._pages: dict[tuple[bool, str | None], bytes] = {}

    def get(self, snapshot: Snapshot, as_json: bool, customer: str | None = None) -> bytes:
        with self._lock:
            if snapshot.generation != self._generation:
                self._generation, self._pages = snapshot.generation, {}
            key = (as_json, customer)
            if key not in self._pages:
                if len(self._pages) >= MAX_STATUS_PAGES:
                    self._pages.pop(next(iter(self._pages)))
                self._pages[key] = status_json(snapshot, customer) if as_json else status_html(snapshot, customer)
            return self._pages[key]


def _landing(snap: Snapshot, lifecycle: bool, reloadable: bool) -> str:
    failing = sum(1 for d in snap.datasets if d.fetch_success is False)
    last = (
        time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(snap.last_cycle_end)) if snap.last_cycle_end else "none yet"
    )
    rows = [
        ("Version", __version__),
        ("Graph API version", snap.graph_api_version),
        ("Targets", str(len(snap.datasets))),
        ("Failing", str(failing)),
        ("Last cycle finished", last),
        ("Last cycle took", f"{snap.cycle_duration:.1f}s" if snap.cycle_duration is not None else "n/a"),
        ("Interval", f"{snap.interval:.0f}s"),
    ]
    table = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    if not reloadable:  # the demo, or flags only: there is no file to read again
        reload = "<p>This configuration comes from no file: there is nothing to reload.</p>"
    elif lifecycle:
        reload = "<p>POST <code>/-/reload</code> (or SIGHUP) re-reads the configuration.</p>"
    else:
        reload = "<p>SIGHUP re-reads the configuration (<code>POST /-/reload</code> needs --web.enable-lifecycle).</p>"
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Meta Dataset Quality Exporter</title>
<style>body{{font-family:sans-serif;margin:2em}}th{{text-align:left;padding-right:1em}}</style></head>
<body><h1>Meta Dataset Quality Exporter</h1>
<table>{table}</table>
<ul><li><a href="status">Status of every dataset</a></li><li><a href="metrics">Metrics</a></li>
<li><a href="-/healthy">Health</a></li>
<li><a href="-/ready">Readiness</a></li></ul>
{reload}
</body></html>
"""
