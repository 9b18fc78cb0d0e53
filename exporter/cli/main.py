"""meta-dataset-quality-exporter: Prometheus exporter for Meta's Dataset Quality API.

Commands: run (the default), check-config, once, simulate, demo, healthcheck.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import threading
from dataclasses import replace
from typing import Any

from exporter import __version__
from exporter.cli.app import EXIT_CONFIG, ConfigSource, file_source, load_all
from exporter.cli.app import run as run_exporter
from exporter.collect import eventloop as collection_loop
from exporter.common.logsetup import configure_logging
from exporter.config.settings import (
    DEFAULT_PORT,
    Config,
    ConfigError,
    DatasetConfig,
    ServerConfig,
    base_url_problem,
    load_config,
    parse_duration,
    resolve_secrets,
    show_duration,
)
from exporter.simulator import SCENARIOS, Simulator, SimulatorSettings

log = logging.getLogger("exporter")
COMMANDS = ("run", "check-config", "once", "simulate", "demo", "healthcheck")
DESCRIPTIONS = {
    "run": "Run the exporter: poll Meta's Dataset Quality API for every configured and discovered dataset in the\n"
    "background and serve the results on /metrics. The default command: `meta-dataset-quality-exporter\n"
    "--config FILE` is `run --config FILE`. The token comes from the environment or a file the config names.",
    "check-config": "Validate a configuration file (and, unless --skip-secrets, that its tokens are readable),\n"
    "report every problem at once, and exit 0 when it is valid, 2 when it is not.",
    "once": "Fetch every target once and print the result: a table for people, JSON for scripts, or the\n"
    "exposition. Exits 1 when a target or a discovery edge failed; stops after --timeout.",
    "simulate": "Run the built-in fake Graph API on loopback: the demo, the tests and the benchmarks use it. It\n"
    "prints the token it accepts, dataset IDs and businesses to discover.",
    "demo": "Run the simulator and the exporter against it, no token and no config needed; prints the URLs to\n"
    "open and writes the configuration it runs with to a file to copy.",
    "healthcheck": "Ask a running exporter's /-/healthy, at the listen address its config names (the container's\n"
    "HEALTHCHECK). Exits 0 when the server answers (a 401 from basic auth counts), 1 when it does not; it\n"
    "retries over TLS when the listener speaks only TLS. It never reads secrets and never calls Meta.",
}
ONCE_TIMEOUT = 300.0


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _duration_arg(value: str) -> float:
    """A duration as the config writes it (`30s`, `5m`, `1h`), or plain seconds."""
    try:
        seconds = float(value) if value.replace(".", "", 1).isdigit() else parse_duration(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value!r}")
    return seconds


def _add_source_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "--config.file", dest="config", metavar="FILE", help="YAML configuration file")
    p.add_argument(
        "--dataset-id",
        action="append",
        default=[],
        metavar="ID",
        help="watch this dataset (repeatable); with no --config the token comes from META_ACCESS_TOKEN",
    )
    p.add_argument("--graph-api.base-url", dest="base_url", metavar="URL", help="override graph_api.base_url")
    p.add_argument("--shard-index", type=int, metavar="I", help="this replica's shard, 0..N-1 (overrides shard.index)")
    p.add_argument("--shard-count", type=int, metavar="N", help="number of replicas sharing the fleet")


def _add_run(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("run", help="run the exporter (the default command)")
    _add_source_options(p)
    p.add_argument(
        "--web.listen-address", dest="listen_address", metavar="HOST:PORT", help=f"default 0.0.0.0:{DEFAULT_PORT}"
    )
    p.add_argument(
        "--web.config.file",
        dest="web_config",
        metavar="FILE",
        help="TLS and basic auth, in the format of Prometheus's exporter-toolkit",
    )
    p.add_argument(
        "--web.enable-lifecycle",
        dest="enable_lifecycle",
        action="store_true",
        help="answer POST /-/reload (as Prometheus does, off by default; SIGHUP always reloads)",
    )
    return p


def _add_once(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("once", help="fetch every target once and print the result")
    _add_source_options(p)
    p.add_argument("--format", choices=["table", "json", "prometheus"], default="table")
    p.add_argument(
        "--timeout",
        type=_duration_arg,
        default=ONCE_TIMEOUT,
        metavar="DURATION",
        help="stop after this long and print what was fetched so far (default 5m)",
    )


def _add_simulate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="run the built-in fake Graph API on loopback")
    p.add_argument("--listen", type=_host_port, default=("127.0.0.1", 8787), metavar="HOST:PORT")
    p.add_argument("--datasets", type=int, default=100, help="number of synthetic datasets (default 100)")
    p.add_argument("--latency", type=float, default=0.0, help="seconds added to every HTTP request")
    p.add_argument("--item-latency", type=float, default=0.0, help="seconds added per batch item")
    p.add_argument("--scenario", choices=SCENARIOS, default="healthy")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--token", action="append", default=None, help="a token the simulator accepts (repeatable)")
    p.add_argument("--expired-token", action="append", default=[], help="a token that is expired (190/463)")
    p.add_argument("--app-id", default="1000000000001")
    p.add_argument("--app-secret-env", help="environment variable holding the simulated app's secret")
    p.add_argument("--require-proof", action="store_true", help="reject calls without appsecret_proof")
    p.add_argument("--app-calls-per-window", type=int, default=100_000)
    p.add_argument("--business-calls-per-window", type=int, default=10_000)
    p.add_argument("--quota-window", type=float, default=3600.0, help="rolling quota window in seconds")
    p.add_argument("--throttle-seconds", type=float, default=300.0, help="how long a throttle lasts")
    p.add_argument("--fault-rate", type=float, default=0.2, help="share of calls hit in flaky/slow scenarios")
    p.add_argument("--slow-seconds", type=float, default=40.0, help="delay of a slow answer")
    p.add_argument(
        "--usage-headers-after", type=int, default=0, help="send no usage headers before this many calls of a key"
    )
    p.add_argument(
        "--usage-object",
        choices=["owner", "token"],
        default="owner",
        help="the business usage headers name: the pixel's owner, or the calling token's business (an agency's)",
    )
    p.add_argument(
        "--upgrade-expired-versions",
        action="store_true",
        help="answer calls to an expired version with the oldest served one and X-Ad-Api-Version-Warning",
    )


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the exporter against the built-in simulator; no token needed")
    p.add_argument("--datasets", type=int, default=300)
    p.add_argument("--listen", type=_host_port, default=("127.0.0.1", DEFAULT_PORT), metavar="HOST:PORT")
    p.add_argument(
        "--interval", type=_duration_arg, default=30.0, metavar="DURATION", help="time between cycles (default 30s)"
    )
    p.add_argument("--latency", type=float, default=0.05, help="simulated API latency in seconds")


def _add_healthcheck(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("healthcheck", help="exit 0 when a running exporter's /-/healthy answers")
    p.add_argument("--config", "--config.file", dest="config", metavar="FILE", help="the config the exporter runs with")
    p.add_argument("--web.listen-address", dest="listen_address", metavar="HOST:PORT", help="overrides the config's")
    p.add_argument("--timeout", type=_duration_arg, default=4.0, metavar="DURATION", help="default 4s")


def _add_logging(parser: argparse.ArgumentParser, *, default: bool) -> None:
    level, fmt = ("info", "text") if default else (argparse.SUPPRESS, argparse.SUPPRESS)
    parser.add_argument("--log-level", default=level, choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-format", default=fmt, choices=["text", "json"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meta-dataset-quality-exporter", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_logging(parser, default=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    original = sub.add_parser

    def add_parser(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        kwargs.setdefault("description", DESCRIPTIONS.get(name, kwargs.get("help")))
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        subparser = original(name, **kwargs)
        _add_logging(subparser, default=False)  # also after the command: `run --log-format json`
        return subparser

    sub.add_parser = add_parser  # type: ignore[method-assign]
    run = _add_run(sub)
    # A bare invocation runs `run`, so the top-level help shows its flags too.
    parser.epilog = "run, the default command:\n\n" + run.format_help()
    p = sub.add_parser("check-config", help="validate a configuration file and its secrets, then exit")
    p.add_argument("file")
    p.add_argument("--skip-secrets", action="store_true", help="do not check that tokens and secrets are readable")
    _add_once(sub)
    _add_simulate(sub)
    _add_demo(sub)
    _add_healthcheck(sub)
    return parser


def _config_source(args: argparse.Namespace) -> ConfigSource:
    """The config file (or the zero-config defaults) with the command line's overrides applied."""

    def adjust(config: Config) -> Config:
        if args.dataset_id:
            known = {(d.id, d.agent_name) for d in config.datasets}
            extra = tuple(DatasetConfig(str(i)) for i in args.dataset_id if (str(i), "") not in known)
            config = replace(config, datasets=config.datasets + extra)
        if args.base_url:
            config = replace(config, graph_api=replace(config.graph_api, base_url=args.base_url.rstrip("/")))
        if getattr(args, "listen_address", None):
            config = replace(config, server=ServerConfig(args.listen_address))
        if args.shard_index is not None or args.shard_count is not None:
            shard = replace(
                config.shard,
                index=config.shard.index if args.shard_index is None else args.shard_index,
                count=config.shard.count if args.shard_count is None else args.shard_count,
            )
            if shard.count < 1 or not 0 <= shard.index < shard.count:
                raise ConfigError(
                    [f"--shard-index/--shard-count: need 0 <= index < count, got {shard.index}/{shard.count}"]
                )
            config = replace(config, shard=shard)
        return config

    bad = [i for i in args.dataset_id if not str(i).isdigit()]
    if bad:
        raise ConfigError([f"--dataset-id: expected a dataset (pixel) ID of digits, got {bad[0]!r}"])
    if args.base_url and (problem := base_url_problem(args.base_url)):
        raise ConfigError([f"--graph-api.base-url: {problem}"])
    if args.config:
        return file_source(args.config, adjust)
    adjust(Config())  # reports bad flags before anything starts
    return lambda: adjust(Config(source="<command line>"))


def cmd_run(args: argparse.Namespace) -> int:
    if not args.config and not args.dataset_id:
        log.error("nothing to watch: give --config FILE or at least one --dataset-id")
        return 2
    try:
        source = _config_source(args)
    except ConfigError as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    return run_exporter(source, args.web_config, lifecycle=args.enable_lifecycle)


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.file)
        if not args.skip_secrets:
            resolve_secrets(config)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_CONFIG
    for warning in config.warnings():
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{args.file}: OK ({len(config.datasets)} datasets, {len(config.credentials)} credentials)")
    return 0


def cmd_once(args: argparse.Namespace) -> int:
    from exporter.cli import report
    from exporter.collect.scheduler import Scheduler

    if not args.config and not args.dataset_id:
        log.error("nothing to fetch: give --config FILE or at least one --dataset-id")
        return 2
    try:
        config, secrets = load_all(_config_source(args))
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_CONFIG
    bar = report.ProgressBar(sys.stderr)
    scheduler = Scheduler(config, secrets, progress=bar, one_shot=True)

    async def one_cycle() -> None:
        try:
            await scheduler.prepare()
            await scheduler.run_cycle(scheduler.targets, paced=False)
        finally:
            await scheduler.close()

    async def within_timeout() -> bool:
        try:
            await asyncio.wait_for(one_cycle(), args.timeout)
        except TimeoutError:
            return False
        return True

    try:
        finished = collection_loop.run(within_timeout())
        bar.finish()
    except KeyboardInterrupt:
        bar.finish()
        log.warning("interrupted: what was fetched so far follows")
        finished = False
        interrupted = True
    else:
        interrupted = False
        if not finished:
            log.warning("--timeout (%s) reached: what was fetched so far follows", show_duration(args.timeout))
    snapshot = scheduler.snapshot if finished else scheduler.partial_snapshot()
    report.write(snapshot, args.format)
    if interrupted:
        return 130
    fetched = finished and all(s.fetch_success for s in snapshot.datasets)
    discovered = all(ok for ok, _ in snapshot.discovery.values())
    return 0 if fetched and discovered else 1


def simulator_settings(args: argparse.Namespace) -> SimulatorSettings:
    return SimulatorSettings(
        datasets=args.datasets,
        seed=args.seed,
        scenario=args.scenario,
        latency=args.latency,
        item_latency=args.item_latency,
        tokens=tuple(args.token or ["sim-token"]),
        expired_tokens=tuple(args.expired_token),
        app_id=args.app_id,
        app_secret=os.environ.get(args.app_secret_env) if args.app_secret_env else None,
        require_proof=args.require_proof,
        app_calls_per_window=args.app_calls_per_window,
        business_calls_per_window=args.business_calls_per_window,
        quota_window=args.quota_window,
        throttle_seconds=args.throttle_seconds,
        fault_rate=args.fault_rate,
        slow_seconds=args.slow_seconds,
        usage_headers_after=args.usage_headers_after,
        usage_object=args.usage_object,
        upgrade_expired_versions=args.upgrade_expired_versions,
    )


def cmd_simulate(args: argparse.Namespace) -> int:
    sim = Simulator(simulator_settings(args))
    host, port = args.listen
    try:
        url = sim.start(host, port)
    except OSError as exc:
        log.error("cannot serve the simulator on %s:%d: %s", host, port, exc.strerror or exc)
        return 1
    world = sim.world
    business = next(iter(world.businesses.values()))
    print(f"Graph API simulator on {url} ({args.datasets} datasets, scenario {args.scenario})", flush=True)
    print(f"  token (any of): {', '.join(sim.settings.tokens)}", flush=True)
    print(f"  example dataset with Meta's documented values: {world.dataset_ids[0]}", flush=True)
    print(f"  more dataset IDs: {', '.join(world.dataset_ids[1:4])} ...", flush=True)
    print(f"  a business for discovery (owned_pixels): {business.id}; its ad account: act_{business.ad_account_id}")
    print(f"  an agency business (client_pixels): {world.agency_id}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    sim.stop()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from exporter.cli.demo import run_demo

    return run_demo(args.datasets, args.listen[0], args.listen[1], args.interval, args.latency)


def health_url(listen_address: str, scheme: str = "http") -> str:
    """The loopback URL of /-/healthy for a listen address; a wildcard host is asked on loopback."""
    host, _, port = listen_address.rpartition(":")
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "[::]": "[::1]"}.get(host, host)
    return f"{scheme}://{host}:{port}/-/healthy"


def cmd_healthcheck(args: argparse.Namespace) -> int:
    import httpx

    listen = args.listen_address
    if not listen:
        try:
            listen = load_config(args.config).server.listen_address if args.config else ServerConfig().listen_address
        except ConfigError as exc:
            print(str(exc), file=sys.stderr)
            return EXIT_CONFIG
    problem = ""
    for scheme in ("http", "https"):
        url = health_url(listen, scheme)
        try:
            # Our own process on loopback: the certificate names a public host, not 127.0.0.1.
            status = httpx.get(url, timeout=args.timeout, verify=False).status_code
        except httpx.HTTPError as exc:
            problem = f"{url}: {type(exc).__name__}: {exc}"
            if isinstance(exc, httpx.ConnectError | httpx.TimeoutException):
                break  # nothing listens, or it hangs: TLS would not help
            continue
        if status in (200, 401):
            print(f"{url}: {status}")
            return 0
        problem = f"{url}: HTTP {status}"
        break
    print(f"unhealthy: {problem}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `run` is the default command: insert it before the first argument that is not a global option.
    index = 0
    while index < len(argv) and argv[index] in ("--log-level", "--log-format"):
        index += 2
    rest = argv[index:]
    parser = build_parser()
    if not rest or (rest[0] not in COMMANDS and rest[0] not in ("-h", "--help", "--version")):
        argv.insert(index, "run")
    args = parser.parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    handlers = {
        "run": cmd_run,
        "check-config": cmd_check_config,
        "once": cmd_once,
        "simulate": cmd_simulate,
        "demo": cmd_demo,
        "healthcheck": cmd_healthcheck,
    }
    return handlers[args.command](args)
