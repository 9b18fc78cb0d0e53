"""Benchmark: one unpaced collection cycle against the simulator, then scrapes of the result.

The simulator runs in its own process (so it does not share the exporter's GIL), with per-request latency
injected to model the real API. Prints one Markdown table row per run; see bench/README.md.

    .venv/bin/python bench/cycle.py --datasets 1000 --latency 0.1 --concurrency 16
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import http.client
import resource
import socket
import subprocess
import sys
import time
import urllib.request

from exporter.config import Secrets, validate
from exporter.exposition import render
from exporter.scheduler import Scheduler
from exporter.web import WebServer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_simulator(datasets: int, latency: float) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "exporter",
            "--log-level",
            "warning",
            "simulate",
            "--listen",
            f"127.0.0.1:{port}",
            "--datasets",
            str(datasets),
            "--latency",
            str(latency),
            "--seed",
            "1",
        ],
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            urllib.request.urlopen(url + "/_sim/state", timeout=1)
            return proc, url
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("simulator did not start")


class App:
    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler

    @property
    def snapshot(self):  # noqa: ANN201 - a Snapshot
        return self.scheduler.snapshot

    def reload(self) -> tuple[bool, str]:
        return True, "not used"


def scrape_latency(port: int, requests: int, gzip_ok: bool) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port)
    headers = {"Accept-Encoding": "gzip"} if gzip_ok else {}
    started = time.perf_counter()
    for _ in range(requests):
        conn.request("GET", "/metrics", headers=headers)
        conn.getresponse().read()
    conn.close()
    return (time.perf_counter() - started) / requests


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--datasets", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--scrapes", type=int, default=50)
    args = parser.parse_args()

    sim, url = start_simulator(args.datasets, args.latency)
    try:
        ids = [str(100_000_000_000_000 + 100_000 + i) for i in range(args.datasets)]
        config = validate(
            {
                "graph_api": {"base_url": url, "timeout": "30s"},
                "collection": {"concurrency": args.concurrency},
                "datasets": [{"id": i} for i in ids],
            },
            "bench",
        )
        scheduler = Scheduler(config, Secrets({"default": "sim-token"}))

        async def cycle() -> float:
            started = time.perf_counter()
            await scheduler.run_cycle(scheduler.targets, paced=False)
            elapsed = time.perf_counter() - started
            await scheduler.close()
            return elapsed

        elapsed = asyncio.run(cycle())
        snap = scheduler.snapshot
        ok = sum(1 for s in snap.datasets if s.fetch_success)
        started = time.perf_counter()
        text = render(snap)
        render_seconds = time.perf_counter() - started
        series = sum(1 for line in text.splitlines() if line and not line.startswith(b"#"))
        web = WebServer(App(scheduler), "127.0.0.1", 0)
        web.start()
        port = web.address[1]
        scrape_latency(port, 1, False)  # fills the cache
        scrape_latency(port, 1, True)
        plain = scrape_latency(port, args.scrapes, False)
        packed = scrape_latency(port, args.scrapes, True)
        web.stop()
        rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"| {args.datasets} | {args.latency:g} s | {args.concurrency} | {ok}/{len(snap.datasets)} | "
            f"{elapsed:.1f} s | {len(snap.datasets) / elapsed:.0f}/s | {series} | {len(text) / 1e6:.1f} MB | "
            f"{len(gzip.compress(text)) / 1e6:.2f} MB | {render_seconds:.2f} s | {plain * 1000:.1f} ms | "
            f"{packed * 1000:.1f} ms | {rss_mib:.0f} MiB |"
        )
    finally:
        sim.terminate()
        sim.wait(10)


if __name__ == "__main__":
    main()
