"""Scale benchmarks against the simulator over loopback (see bench/README.md for results).

    .venv/bin/python bench/scale.py throughput  # burst cycles at 1k/5k/10k datasets vs the bound and a naive loop
    .venv/bin/python bench/scale.py scrape      # scrape latency and size at 1k/5k vs rendering on every scrape
    .venv/bin/python bench/scale.py memory      # the exporter's RSS at 1k/5k/10k vs its exposition size
    .venv/bin/python bench/scale.py all

The simulator runs in its own process with --latency 0.2 --item-latency 0.002, as the real API roughly
behaves. `--sizes` and `--scrapes` make smaller runs (the test suite runs a tiny one as a smoke test).
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import http.client
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import httpx
from prometheus_client import CollectorRegistry, generate_latest

from exporter.config import Secrets, validate
from exporter.metrics import SnapshotCollector
from exporter.scheduler import Scheduler
from exporter.web import WebServer

LATENCY, ITEM_LATENCY, BATCH, CONCURRENCY = 0.2, 0.002, 50, 8
TOKEN = "bench-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


class Simulator:
    def __init__(self, datasets: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [
            "--listen",
            f"127.0.0.1:{self.port}",
            "--datasets",
            str(datasets),
            "--latency",
            str(LATENCY),
            "--item-latency",
            str(ITEM_LATENCY),
        ]
        args += ["--token", TOKEN, "--app-calls-per-window", "10000000", "--seed", "1"]
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "exporter",
                "--log-level",
                "warning",
                "simulate",
                "--listen",
                f"127.0.0.1:{self.port}",
                *args,
            ],
            stdout=subprocess.DEVNULL,
        )
        wait_http(self.url + "/_sim/state")
        self.ids = ["123456789012345"] + [str(100_000_000_000_000 + 100_000 + i) for i in range(datasets)]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def config(sim: Simulator, n: int) -> dict:
    return {
        "graph_api": {"base_url": sim.url, "timeout": "60s"},
        "credentials": {"default": {"token_env": "BENCH_TOKEN"}},
        "collection": {"batch_size": BATCH, "concurrency": CONCURRENCY, "interval": "1h"},
        "datasets": [{"id": i} for i in sim.ids[:n]],
    }


def burst_cycle(sim: Simulator, n: int) -> tuple[float, Scheduler]:
    scheduler = Scheduler(validate(config(sim, n), "bench"), Secrets({"default": TOKEN}))

    async def go() -> float:
        started = time.perf_counter()
        await scheduler.run_cycle(scheduler.targets, paced=False)
        elapsed = time.perf_counter() - started
        await scheduler.close()
        return elapsed

    elapsed = asyncio.run(go())
    failed = sum(1 for s in scheduler.snapshot.datasets if not s.fetch_success)
    if failed:
        raise RuntimeError(f"{failed} of {n} datasets failed")
    return elapsed, scheduler


def naive_seconds_per_dataset(sim: Simulator, sample: int) -> float:
    """One GET per dataset, one after another, as a cron script would: measured on a sample."""
    fields = "web{event_name,event_match_quality{composite_score}}"
    with httpx.Client(timeout=60) as client:
        started = time.perf_counter()
        for dataset_id in sim.ids[:sample]:
            response = client.get(
                f"{sim.url}/v25.0/dataset_quality",
                params={"dataset_id": dataset_id, "fields": fields},
                headers={"Authorization": f"OAuth {TOKEN}"},
            )
            response.raise_for_status()
        return (time.perf_counter() - started) / sample


def throughput(sim: Simulator, sizes: list[int], baseline_sample: int) -> list[dict]:
    per_dataset = naive_seconds_per_dataset(sim, baseline_sample)
    rows = []
    for n in sizes:
        elapsed, _ = burst_cycle(sim, n)
        bound = math.ceil(n / BATCH) / CONCURRENCY * (LATENCY + BATCH * ITEM_LATENCY)
        naive = per_dataset * n
        rows.append({"datasets": n, "cycle_s": elapsed, "bound_s": bound, "vs_bound": elapsed / bound,
                     "naive_s": naive, "speedup": naive / elapsed, "rate": n / elapsed})  # fmt: skip
    return rows


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def scrape(sim: Simulator, sizes: list[int], scrapes: int, renders: int) -> list[dict]:
    rows = []
    for n in sizes:
        _, scheduler = burst_cycle(sim, n)

        class App:
            snapshot = scheduler.snapshot

            @staticmethod
            def reload() -> tuple[bool, str]:
                return True, ""

        web = WebServer(App(), "127.0.0.1", 0)
        web.start()
        row: dict = {"datasets": n}
        for label, headers in (("plain", {}), ("gzip", {"Accept-Encoding": "gzip"})):
            conn = http.client.HTTPConnection("127.0.0.1", web.address[1])
            times, size = [], 0
            for _ in range(scrapes + 1):
                started = time.perf_counter()
                conn.request("GET", "/metrics", headers=headers)
                size = len(conn.getresponse().read())
                times.append(time.perf_counter() - started)
            conn.close()
            times = times[1:]  # the first scrape of a snapshot renders it
            row[f"{label}_p50_ms"] = statistics.median(times) * 1000
            row[f"{label}_p99_ms"] = percentile(times, 0.99) * 1000
            row[f"{label}_bytes"] = size
        web.stop()
        registry = CollectorRegistry(auto_describe=False)
        registry.register(SnapshotCollector(lambda snapshot=scheduler.snapshot: snapshot))
        times = []
        for _ in range(renders):
            started = time.perf_counter()
            body = generate_latest(registry)
            times.append(time.perf_counter() - started)
        row["per_scrape_render_p50_ms"] = statistics.median(times) * 1000
        row["per_scrape_render_gzip_p50_ms"] = row["per_scrape_render_p50_ms"] + timed_gzip(body) * 1000
        row["speedup_gzip"] = row["per_scrape_render_gzip_p50_ms"] / row["gzip_p99_ms"]
        rows.append(row)
    return rows


def timed_gzip(body: bytes) -> float:
    started = time.perf_counter()
    gzip.compress(body, 6)
    return time.perf_counter() - started


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def memory(sim: Simulator, sizes: list[int]) -> list[dict]:
    rows = []
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "config.yaml"
            path.write_text(json.dumps(config(sim, n)))  # JSON is YAML
            port = free_port()
            proc = subprocess.Popen(
                [sys.executable, "-m", "exporter", "--log-level", "warning", "run", "--config", str(path),
                 "--web.listen-address", f"127.0.0.1:{port}"],
                env={**os.environ, "BENCH_TOKEN": TOKEN},
            )  # fmt: skip
            try:
                url = f"http://127.0.0.1:{port}"
                deadline = time.monotonic() + 600
                while time.monotonic() < deadline:
                    try:
                        if urllib.request.urlopen(url + "/-/ready", timeout=5).status == 200:
                            break
                    except OSError:
                        time.sleep(0.5)
                sizes_seen = {}
                for label, headers in (
                    ("plain", {}),
                    ("openmetrics", {"Accept": "application/openmetrics-text; version=1.0.0"}),
                    ("gzip", {"Accept-Encoding": "gzip"}),
                ):
                    request = urllib.request.Request(url + "/metrics", headers=headers)
                    sizes_seen[label] = len(urllib.request.urlopen(request, timeout=120).read())
                time.sleep(1)
                rss = rss_bytes(proc.pid)
            finally:
                proc.terminate()
                proc.wait(30)
        rows.append({"datasets": n, "rss_bytes": rss, "exposition_bytes": sizes_seen["plain"],
                     "gzip_bytes": sizes_seen["gzip"], "ratio": rss / sizes_seen["plain"]})  # fmt: skip
    return rows


def table(rows: list[dict]) -> str:
    if not rows:
        return ""
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        cells = [f"{v:.2f}" if isinstance(v, float) else str(v) for v in row.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("part", choices=["throughput", "scrape", "memory", "all"])
    parser.add_argument("--sizes", help="comma-separated dataset counts (default: the issue's)")
    parser.add_argument("--scrapes", type=int, default=200)
    parser.add_argument("--renders", type=int, default=5, help="per-scrape renderings timed for the baseline")
    parser.add_argument("--baseline-sample", type=int, default=100)
    parser.add_argument("--json", action="store_true", help="print JSON instead of Markdown tables")
    args = parser.parse_args()
    chosen = [int(s) for s in args.sizes.split(",")] if args.sizes else None
    results: dict[str, list[dict]] = {}
    sim = Simulator(max(chosen or [10_000]))
    try:
        if args.part in ("throughput", "all"):
            results["throughput"] = throughput(sim, chosen or [1000, 5000, 10_000], args.baseline_sample)
        if args.part in ("scrape", "all"):
            results["scrape"] = scrape(sim, chosen or [1000, 5000], args.scrapes, args.renders)
        if args.part in ("memory", "all"):
            results["memory"] = memory(sim, chosen or [1000, 5000, 10_000])
    finally:
        sim.stop()
    if args.json:
        print(json.dumps(results))
        return
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    for part, rows in results.items():
        print(f"\n{part}\n\n{table(rows)}")


if __name__ == "__main__":
    main()
