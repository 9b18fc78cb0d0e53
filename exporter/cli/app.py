"""Wires config, scheduler and web server together; owns reloads and signals."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
import sys
import threading
from collections.abc import Callable

from exporter.collect import eventloop as collection_loop
from exporter.collect.scheduler import Progress, Scheduler
from exporter.common.logsetup import redact, register_secrets
from exporter.config.settings import Config, ConfigError, Secrets, load_config, resolve_secrets
from exporter.state.snapshot import Snapshot
from exporter.web.server import WebServer
from exporter.web.webconfig import load_web_config

log = logging.getLogger(__name__)

ConfigSource = Callable[[], Config]


def listen_address(config: Config) -> tuple[str, int]:
    host, _, port = config.server.listen_address.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


def load_all(source: ConfigSource) -> tuple[Config, Secrets]:
    """Read the config and its secrets; raises ConfigError naming every problem."""
    config = source()
    secrets = resolve_secrets(config)
    register_secrets([*secrets.tokens.values(), secrets.app_secret])
    return config, secrets


def file_source(path: str, adjust: Callable[[Config], Config] = lambda c: c) -> ConfigSource:
    return lambda: adjust(load_config(path))


class Exporter:
    def __init__(
        self,
        source: ConfigSource,
        config: Config,
        secrets: Secrets,
        progress: Progress | None = None,
        web_config: str | None = None,
        lifecycle: bool = False,
    ) -> None:
        self.source = source
        self.web_config = web_config
        self.lifecycle = lifecycle  # POST /-/reload answers only with --web.enable-lifecycle
        self.reloadable = not config.source.startswith("<")  # "<demo>", "<defaults>": no file to read again
        self.security = load_web_config(web_config)  # raises ConfigError: the exporter refuses to start
        self.scheduler = Scheduler(config, secrets, progress=progress)
        self._reload_lock = threading.Lock()
        self.web: WebServer | None = None

    @property
    def snapshot(self) -> Snapshot:
        return self.scheduler.snapshot

    def reload(self) -> tuple[bool, str]:
        """Re-read and validate the config; an invalid one is refused and the old one kept."""
        with self._reload_lock:
            try:
                config, secrets = load_all(self.source)
                security = load_web_config(self.web_config)
            except ConfigError as exc:
                log.error("reload refused, keeping the previous configuration: %s", exc)
                self.scheduler.note_reload(False)
                # A value in the refused file may be a secret pasted by mistake: answer as the log does.
                return False, redact(f"reload refused, previous configuration kept.\n{exc}")
            if listen_address(config) != listen_address(self.scheduler.config):
                log.warning("server.listen_address changed; it takes effect at the next restart")
            self.scheduler.replace_config(config, secrets)
            self.security = security
            if self.web:
                self.web.secure(security)
            self.scheduler.note_reload(True)
            log.info("configuration reloaded from %s", config.source)
            return True, f"configuration reloaded: {len(config.datasets)} datasets. {self.scheduler.takes_effect()}"

    async def serve(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.run_in_executor(None, self.reload))
        self.web = WebServer(self, *listen_address(self.scheduler.config), security=self.security)
        self.web.start()
        try:
            await self.scheduler.run(stop)
        finally:
            self.web.stop()
            log.info("stopped")


EXIT_CONFIG = 2  # a bad configuration, from every command (run, once, check-config)


def raise_open_file_limit() -> None:
    """Lift the soft limit on open files to the hard one (as Go programs do at start): 1,024 is the soft
    default in many places, and connections, the Graph client and the log all share it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


GIL_SWITCH_INTERVAL = 0.0005


def prefer_short_gil_waits() -> None:
    """Let threads hand over the GIL every 0.5 ms instead of Python's 5 ms. While a publish renders, a scrape's
    thread waits for the GIL at every step it takes (accepting, each write of its answer), and the collection
    loop waits for it at every answer: both p99 scrape latency and the burst cycle fail their figures without
    it (bench/README.md, the exposition's side-by-side run)."""
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)


def prepare_process() -> None:
    """The process-wide settings, made before any thread starts (by `run`, the demo and the benchmarks)."""
    raise_open_file_limit()
    prefer_short_gil_waits()


def run(source: ConfigSource, web_config: str | None = None, *, lifecycle: bool = False) -> int:
    prepare_process()
    try:
        config, secrets = load_all(source)
        exporter = Exporter(source, config, secrets, web_config=web_config, lifecycle=lifecycle)
    except ConfigError as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    for warning in config.warnings():
        log.warning("%s", warning)
    log.info("watching %d targets every %.0fs", len(exporter.scheduler.targets), config.collection.interval)

    async def main() -> None:
        await exporter.serve(asyncio.Event())

    try:
        collection_loop.run(main())
    except OSError as exc:
        log.error("cannot serve on %s: %s", config.server.listen_address, exc)
        return 1
    return 0
