"""The HTTP side: `/`, `/metrics`, `/-/healthy`, `/-/ready`, `/-/reload`. It reads snapshots only."""

from __future__ import annotations

import base64
import html
import logging
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler
from typing import Any, Protocol

from exporter import __version__
from exporter.exposition import OPENMETRICS, TEXT, ExpositionCache, wants_openmetrics
from exporter.httpserver import ClosingHTTPServer
from exporter.snapshot import Snapshot
from exporter.status import status_html, status_json
from exporter.webconfig import WebSecurity

log = logging.getLogger(__name__)
PLAIN = "text/plain; charset=utf-8"


class WebApp(Protocol):
    lifecycle: bool

    @property
    def snapshot(self) -> Snapshot: ...

    def reload(self) -> tuple[bool, str]: ...


class _Server(ClosingHTTPServer):
    allow_reuse_address = True
    security = WebSecurity()

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = self.socket.accept()
        tls = self.security.tls
        if tls is not None:  # the handshake happens in the handler's thread, so a slow client blocks no one
            sock = tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def finish_request(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            request.settimeout(10)
            try:
                request.do_handshake()
            except (ssl.SSLError, OSError) as exc:  # plain HTTP, no client certificate, an old TLS version
                log.debug("TLS handshake with %s failed: %s", client_address[0], exc)
                return
            request.settimeout(None)
        super().finish_request(request, client_address)


class WebServer:
    def __init__(self, app: WebApp, host: str, port: int, security: WebSecurity | None = None) -> None:
        cache = ExpositionCache()

        class Handler(_Handler):
            pass

        Handler.app = app
        Handler.cache = cache
        Handler.status = StatusCache()
        self._server = _Server((host, port), Handler)
        self._server.security = security or WebSecurity()
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.1,), name="web", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def secure(self, security: WebSecurity) -> None:
        """Swap TLS and basic auth (on reload); connections made from now on use them."""
        self._server.security = security

    def start(self) -> None:
        self._thread.start()
        scheme = "https" if self._server.security.tls else "http"
        log.info("listening on %s://%s:%d", scheme, *self.address)

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join()
        self._server.server_close()  # ends open connections and waits for their threads


class StatusCache:
    """The status page and its JSON twin, built once per snapshot."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._generation = -1
        self._pages: dict[bool, bytes] = {}

    def get(self, snapshot: Snapshot, as_json: bool) -> bytes:
        with self._lock:
            if snapshot.generation != self._generation:
                self._generation, self._pages = snapshot.generation, {}
            if as_json not in self._pages:
                self._pages[as_json] = status_json(snapshot) if as_json else status_html(snapshot)
            return self._pages[as_json]


class _Handler(BaseHTTPRequestHandler):
    app: WebApp
    cache: ExpositionCache
    status: StatusCache
    protocol_version = "HTTP/1.1"
    server_version = f"meta-dataset-quality-exporter/{__version__}"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.client_address[0], format % args)

    def end_headers(self) -> None:
        for name, value in self.server.security.headers.items():  # type: ignore[attr-defined]
            self.send_header(name, value)  # http_server_config.headers of --web.config.file
        super().end_headers()

    def _authorised(self) -> bool:
        users = self.server.security.users  # type: ignore[attr-defined]
        if not users:
            return True
        scheme, _, encoded = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                user = password = ""
            if user and self.server.security.allows(user, password):  # type: ignore[attr-defined]
                return True
        self._reply(401, "Unauthorized\n", WWW_Authenticate='Basic realm="meta-dataset-quality-exporter"')
        return False

    def _reply(self, status: int, body: bytes | str, content_type: str = PLAIN, **headers: str) -> None:
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        if not self._authorised():
            return
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            return self._metrics()
        if path == "/-/healthy":
            return self._reply(200, "Healthy.\n")
        if path == "/-/ready":
            snap = self.app.snapshot
            if snap.ready:
                return self._reply(200, "Ready.\n")
            return self._reply(
                503, f"Not ready: first collection cycle running ({snap.cycle_done}/{snap.cycle_total}).\n"
            )
        if path == "/-/reload":
            return self._reply(405, "Use POST to reload the configuration: curl -X POST .../-/reload\n", Allow="POST")
        if path == "/":
            return self._reply(200, _landing(self.app.snapshot), "text/html; charset=utf-8")
        if path == "/status":
            as_json = "format=json" in self.path.partition("?")[2].split("&")
            body = self.status.get(self.app.snapshot, as_json)
            return self._reply(200, body, "application/json" if as_json else "text/html; charset=utf-8")
        self._reply(404, "Not found. Try /metrics.\n")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(min(length, 65536))
        if not self._authorised():
            return
        if self.path.split("?", 1)[0] != "/-/reload":
            return self._reply(405, "Only /-/reload accepts POST.\n", Allow="GET, HEAD")
        if not self.app.lifecycle:  # as Prometheus answers without --web.enable-lifecycle
            return self._reply(
                403, "Lifecycle API is not enabled. Start with --web.enable-lifecycle, or send SIGHUP.\n"
            )
        ok, message = self.app.reload()
        self._reply(200 if ok else 500, message.rstrip("\n") + "\n")

    def _metrics(self) -> None:
        snap = self.app.snapshot
        openmetrics = wants_openmetrics(self.headers.get("Accept", ""))
        compressed = "gzip" in self.headers.get("Accept-Encoding", "")
        rendered = self.cache.get(snap, openmetrics=openmetrics, compressed=compressed)
        self.send_response(200)
        self.send_header("Content-Type", OPENMETRICS if openmetrics else TEXT)
        self.send_header("Content-Length", str(rendered.length))
        self.send_header("Vary", "Accept, Accept-Encoding")
        if compressed:
            self.send_header("Content-Encoding", "gzip")
        self.end_headers()
        if self.command != "HEAD":
            for chunk in rendered.chunks:
                self.wfile.write(chunk)


def _landing(snap: Snapshot) -> str:
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
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Meta Dataset Quality Exporter</title>
<style>body{{font-family:sans-serif;margin:2em}}th{{text-align:left;padding-right:1em}}</style></head>
<body><h1>Meta Dataset Quality Exporter</h1>
<table>{table}</table>
<ul><li><a href="status">Status of every dataset</a></li><li><a href="metrics">Metrics</a></li>
<li><a href="-/healthy">Health</a></li>
<li><a href="-/ready">Readiness</a></li></ul>
<p>POST <code>/-/reload</code> re-reads the configuration.</p>
</body></html>
"""
