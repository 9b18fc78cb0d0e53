"""Command line: `run` (the default), `check-config`, `once`, `simulate`, `demo`."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from exporter import __version__
from exporter.simulator import SCENARIOS, Simulator, SimulatorSettings

log = logging.getLogger("exporter")


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _add_simulate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="run the built-in fake Graph API on loopback")
    p.add_argument("--listen", type=_host_port, default=("127.0.0.1", 8787), metavar="HOST:PORT")
    p.add_argument("--datasets", type=int, default=100, help="number of synthetic datasets (default 100)")
    p.add_argument("--latency", type=float, default=0.0, help="seconds added to every HTTP request")
    p.add_argument("--item-latency", type=float, default=0.0, help="seconds added per batch item")
    p.add_argument("--scenario", choices=SCENARIOS, default="healthy")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--token", action="append", default=None, help="a token the simulator accepts (repeatable)")
    p.add_argument("--app-secret-env", help="environment variable holding the simulated app's secret")
    p.add_argument("--require-proof", action="store_true", help="reject calls without appsecret_proof")
    p.add_argument("--app-calls-per-window", type=int, default=100_000)
    p.add_argument("--business-calls-per-window", type=int, default=10_000)
    p.add_argument("--quota-window", type=float, default=3600.0, help="rolling quota window in seconds")
    p.add_argument("--throttle-seconds", type=float, default=300.0, help="how long a throttle lasts")
    p.add_argument("--fault-rate", type=float, default=0.2, help="share of calls hit in flaky/slow scenarios")
    p.add_argument("--slow-seconds", type=float, default=40.0, help="delay of a slow answer")


def simulator_settings(args: argparse.Namespace) -> SimulatorSettings:
    import os

    return SimulatorSettings(
        datasets=args.datasets,
        seed=args.seed,
        scenario=args.scenario,
        latency=args.latency,
        item_latency=args.item_latency,
        tokens=tuple(args.token or ["sim-token"]),
        app_secret=os.environ.get(args.app_secret_env) if args.app_secret_env else None,
        require_proof=args.require_proof,
        app_calls_per_window=args.app_calls_per_window,
        business_calls_per_window=args.business_calls_per_window,
        quota_window=args.quota_window,
        throttle_seconds=args.throttle_seconds,
        fault_rate=args.fault_rate,
        slow_seconds=args.slow_seconds,
    )


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()


def cmd_simulate(args: argparse.Namespace) -> int:
    sim = Simulator(simulator_settings(args))
    url = sim.start(*args.listen)
    print(f"Graph API simulator on {url} ({args.datasets} datasets, scenario {args.scenario})", flush=True)
    print(f"example dataset with Meta's documented values: {sim.world.dataset_ids[0]}", flush=True)
    _wait_for_signal()
    sim.stop()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meta-dataset-quality-exporter", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-format", default="text", choices=["text", "json"])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_simulate(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "simulate":
        return cmd_simulate(args)
    parser.print_help()
    return 2
