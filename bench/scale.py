"""Scale benchmarks against the simulator over loopback (see bench/README.md for results).

    .venv/bin/python bench/scale.py throughput  # burst cycles at 1k/5k/10k datasets vs the bound and a naive loop
    .venv/bin/python bench/scale.py scrape      # scrape latency and size at 1k/5k vs rendering on every scrape
    .venv/bin/python bench/scale.py memory      # the exporter's RSS at 1k/5k/10k vs its exposition size
    .venv/bin/python bench/scale.py cycle       # scrapes by two scrapers over a whole paced cycle at 1k/10k
    .venv/bin/python bench/scale.py publish     # a publish's cost against the datasets changed, at 10k
    .venv/bin/python bench/scale.py cpu         # the exporter's CPU per 1,000 datasets in a burst vs json.loads
    .venv/bin/python bench/scale.py governor    # a burst with and without usage headers, alternating, at 10k
    .venv/bin/python bench/scale.py timeout     # the calls a burst spends when one batch times out
    .venv/bin/python bench/scale.py all

The simulator runs in its own process with --latency 0.2 --item-latency 0.002, as the real API roughly
behaves. `--sizes` and `--scrapes` make smaller runs (the test suite runs a tiny one as a smoke test).
"""

from __future__ import annotations

import argparse
import gc
import gzip
import http.client
import itertools
import json
import math
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import httpx
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

try:  # the code before issue 27 ran its collection loop on a loop of its own (compared side by side)
    from exporter.collect.eventloop import run as run_loop  # type: ignore[import-not-found]
except ImportError:
    from asyncio import run as run_loop
from exporter.cli.app import prepare_process
from exporter.collect.scheduler import Scheduler
from exporter.config.settings import Secrets, validate
from exporter.exposition.publisher import Publisher
from exporter.graph.fields import BLOCKS, web_fields
from exporter.graph.parser import DatasetQuality
from exporter.state.snapshot import DatasetState, Snapshot
from exporter.web.server import WebServer

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
    def __init__(self, datasets: int, *extra: str) -> None:
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
        args += ["--token", TOKEN, "--app-calls-per-window", "10000000", "--seed", "1", *extra]
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

    def calls(self) -> int:
        """Graph calls the simulator answered so far (each batch item is one)."""
        with urllib.request.urlopen(self.url + "/_sim/state", timeout=10) as answer:
            return int(json.load(answer)["calls"])

    def control(self, path: str, body: dict) -> None:
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), method="POST")
        urllib.request.urlopen(request, timeout=10).read()


def config(sim: Simulator, n: int, timeout: str = "60s") -> dict:
    return {
        "graph_api": {"base_url": sim.url, "timeout": timeout},
        "credentials": {"default": {"token_env": "BENCH_TOKEN"}},
        "collection": {"batch_size": BATCH, "concurrency": CONCURRENCY, "interval": "1h"},
        "datasets": [{"id": i} for i in sim.ids[:n]],
    }


def burst_cycle(sim: Simulator, n: int, timeout: str = "60s", check: bool = True) -> tuple[float, Scheduler]:
    scheduler = Scheduler(validate(config(sim, n, timeout), "bench"), Secrets({"default": TOKEN}))

    async def go() -> float:
        started = time.perf_counter()
        await scheduler.run_cycle(scheduler.targets, paced=False)
        elapsed = time.perf_counter() - started
        await scheduler.close()
        return elapsed

    elapsed = run_loop(go())  # as `run` does
    failed = sum(1 for s in scheduler.snapshot.datasets if not s.fetch_success)
    if failed and check:
        raise RuntimeError(f"{failed} of {n} datasets failed")
    return elapsed, scheduler


NO_HEADERS = ("--usage-headers-after", str(10**9))  # Meta sends usage headers only once enough calls were made


def governor_runs(sizes: list[int], pairs: int) -> list[dict]:
    """Burst cycles against a simulator that sends usage headers and one that never does, alternating in one
    run: without a reading the configured concurrency and batch size must apply."""
    rows = []
    for n in sizes:
        sims = {"sent": Simulator(n), "never sent": Simulator(n, *NO_HEADERS)}
        try:
            for _ in range(pairs):
                for label, sim in sims.items():
                    before = sim.calls()
                    elapsed, scheduler = burst_cycle(sim, n)
                    requests = sum(c for (endpoint, _), c in scheduler.snapshot.requests.items() if endpoint == "batch")
                    rows.append({"datasets": n, "usage_headers": label, "cycle_s": elapsed,
                                 "calls": sim.calls() - before, "batch_requests": requests})  # fmt: skip
        finally:
            for sim in sims.values():
                sim.stop()
    return rows


def timeout_calls(sizes: list[int]) -> list[dict]:
    """A burst in which one dataset's batch never answers within the timeout (the simulator stalls any request
    carrying it): the calls the cycle spends against the datasets it has."""
    rows = []
    for n in sizes:
        sim = Simulator(n, "--slow-seconds", "6")
        try:
            sim.control("/_sim/fault", {"dataset_id": sim.ids[n // 2], "fault": "stall"})
            elapsed, scheduler = burst_cycle(sim, n, timeout="1s", check=False)
            failed = sum(1 for s in scheduler.snapshot.datasets if not s.fetch_success)
            rows.append({"datasets": n, "calls": sim.calls(), "extra_calls": sim.calls() - n, "failed": failed,
                         "cycle_s": elapsed})  # fmt: skip
        finally:
            sim.stop()
    return rows


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
            times = times[1:]  # the first scrape opens the connection
            row[f"{label}_p50_ms"] = statistics.median(times) * 1000
            row[f"{label}_p99_ms"] = percentile(times, 0.99) * 1000
            row[f"{label}_bytes"] = size
        web.stop()
        plain, packed = baseline_render_seconds(scheduler.snapshot, renders)
        row["per_scrape_render_p50_ms"] = plain * 1000
        row["per_scrape_render_gzip_p50_ms"] = packed * 1000
        row["speedup_gzip"] = row["per_scrape_render_gzip_p50_ms"] / row["gzip_p99_ms"]
        rows.append(row)
    return rows


class PlainCollector:
    """The baseline: ordinary GaugeMetricFamily collectors over the same snapshot, the way an exporter built
    on prometheus_client alone would be written, rendered by generate_latest on every scrape."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["dataset_id", "agent_name", "event_name"]
        names = {
            "emq": ("event_match_quality_score", []),
            "key_cov": ("match_key_coverage_ratio", ["match_key"]),
            "key_acr": ("match_key_potential_acr_increase_ratio", ["match_key"]),
            "diag_affected": ("diagnostic_affected_events", ["diagnostic"]),
            "diag_total": ("diagnostic_events", ["diagnostic"]),
            "diag_ratio": ("diagnostic_affected_ratio", ["diagnostic"]),
            "coverage": ("event_coverage_ratio", []),
            "coverage_goal": ("event_coverage_goal_ratio", []),
            "dedupe_browser": ("dedupe_key_browser_events_ratio", ["dedupe_key"]),
            "dedupe_server": ("dedupe_key_server_events_ratio", ["dedupe_key"]),
            "dedupe_coverage": ("dedupe_key_browser_coverage_ratio", ["dedupe_key"]),
            "acr": ("acr_ratio", []),
        }
        f = {
            k: GaugeMetricFamily(f"meta_dataset_quality_{n}", n, labels=labels + extra)
            for k, (n, extra) in names.items()
        }
        success = GaugeMetricFamily("meta_dataset_quality_fetch_success", "", labels=["dataset_id", "agent_name"])
        for state in self.snapshot.datasets:
            base = [state.target.dataset_id, state.target.agent_name]
            if state.fetch_success is not None:
                success.add_metric(base, 1.0 if state.fetch_success else 0.0)
            for e in state.quality.events if state.quality else ():
                ev = [*base, e.event_name]
                if e.composite_score is not None:
                    f["emq"].add_metric(ev, e.composite_score)
                for k in e.match_keys:
                    if k.coverage is not None:
                        f["key_cov"].add_metric([*ev, k.identifier], k.coverage / 100)
                    if k.potential_acr_increase is not None:
                        f["key_acr"].add_metric([*ev, k.identifier], k.potential_acr_increase / 100)
                for d in e.diagnostics:
                    ratio = None if d.percentage is None else d.percentage / 100
                    for key, value in (("diag_affected", d.affected_event_count), ("diag_total", d.total_event_count),
                                       ("diag_ratio", ratio)):  # fmt: skip
                        if value is not None:
                            f[key].add_metric([*ev, d.slug], value)
                for key, value in (("coverage", e.coverage), ("coverage_goal", e.coverage_goal), ("acr", e.acr)):
                    if value is not None:
                        f[key].add_metric(ev, value / 100)
                for k in e.dedupe_keys:
                    for key, value in (("dedupe_browser", k.browser_events), ("dedupe_server", k.server_events),
                                       ("dedupe_coverage", k.browser_coverage)):  # fmt: skip
                        if value is not None:
                            f[key].add_metric([*ev, k.dedupe_key], value / 100)
        yield from f.values()
        yield success


def baseline_render_seconds(snapshot: Snapshot, renders: int) -> tuple[float, float]:
    """(plain, gzip) seconds of one baseline scrape: generate_latest on every scrape, then gzip."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PlainCollector(snapshot))  # type: ignore[arg-type]
    times = []
    body = b""
    for _ in range(renders):
        started = time.perf_counter()
        body = generate_latest(registry)
        times.append(time.perf_counter() - started)
    plain = statistics.median(times)
    return plain, plain + timed_gzip(body)


def cycle_scrapes(sim: Simulator, sizes: list[int], cycle_seconds: float) -> list[dict]:
    """Two scrapers (an HA Prometheus pair) scrape over a whole paced cycle, gzip and plain in turn: the worst
    moment a user meets, not only the quiet time between cycles."""
    return [_cycle_one(sim, n, cycle_seconds) for n in sizes]


def _cycle_one(sim: Simulator, n: int, cycle_seconds: float) -> dict:
    _, scheduler = burst_cycle(sim, n)  # the first cycle is a burst; the paced one follows

    class App:
        lifecycle = False

        @property
        def snapshot(self) -> Snapshot:
            return scheduler.snapshot

        @staticmethod
        def reload() -> tuple[bool, str]:
            return True, ""

    web = WebServer(App(), "127.0.0.1", 0)
    web.start()
    interval = cycle_seconds / 0.9  # a paced cycle spreads its calls over 90 % of the interval
    collection = replace(scheduler.config.collection, interval=interval)
    scheduler.config = replace(scheduler.config, collection=collection)
    row: dict = {"datasets": n}
    # One paced cycle with both scrapers asking for gzip (as Prometheus does), one with both asking for plain
    # text: a 270 MB plain answer at 10,000 datasets would otherwise stand in the gzip scrapes' way.
    for label in ("gzip", "plain"):
        cpu_before = time.process_time()  # every thread of this process: the loop, renders, the web server
        times, took, publishes, pauses = _paced_cycle_scraped(scheduler, web, label)
        row[f"{label}_cpu_s"] = time.process_time() - cpu_before
        row[f"{label}_cycle_s"], row[f"{label}_publishes"], row[f"{label}_scrapes"] = took, publishes, len(times)
        row[f"{label}_p50_ms"] = statistics.median(times) * 1000
        row[f"{label}_p99_ms"] = percentile(times, 0.99) * 1000
        row[f"{label}_max_ms"] = max(times) * 1000
        row[f"{label}_longest_gc_ms"] = max((pause for _, pause in pauses), default=0.0) * 1000
        row[f"{label}_gen2_collections"] = sum(1 for generation, _ in pauses if generation == 2)
        longest = sorted(((round(pause * 1000), generation) for generation, pause in pauses), reverse=True)[:8]
        print(f"{n} {label}: longest collections (ms, generation): {longest}", file=sys.stderr)
    web.stop()
    baseline_plain, baseline_gzip = baseline_render_seconds(scheduler.snapshot, 3)
    row["baseline_plain_ms"], row["baseline_gzip_ms"] = baseline_plain * 1000, baseline_gzip * 1000
    return row


def _paced_cycle_scraped(scheduler: Scheduler, web: WebServer, label: str) -> tuple[list[float], float, int, list]:
    """Two scrapers scrape `label` (gzip or plain) for a whole paced cycle; their latencies, its length, how
    many snapshots it published meanwhile, and the exporter's garbage-collector pauses (generation, seconds)."""
    scrapers = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("scrapers.py")), str(web.address[1]), label],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    pauses: list[tuple[int, float]] = []
    started_gc: list[float] = []

    def gc_watch(phase: str, info: dict) -> None:
        if phase == "start":
            started_gc[:] = [time.perf_counter()]
        elif started_gc:
            pauses.append((info["generation"], time.perf_counter() - started_gc[0]))

    before = scheduler.snapshot.generation

    async def paced() -> float:
        started = time.perf_counter()
        await scheduler.run_cycle(scheduler.targets, paced=True)
        await scheduler.close()
        return time.perf_counter() - started

    gc.callbacks.append(gc_watch)
    try:
        took = run_loop(paced())
    finally:
        gc.callbacks.remove(gc_watch)
        times = json.loads(scrapers.communicate("", timeout=600)[0])
    return times, took, scheduler.snapshot.generation - before, pauses


def publish_cost(sim: Simulator, n: int) -> list[dict]:
    """One publish against how many datasets changed since the last: one, 1 % and all of them, the changed
    ones side by side as in a paced cycle, and 1 % scattered at random (seeded) as the harder case."""
    _, scheduler = burst_cycle(sim, n)
    snapshot = scheduler.snapshot

    rounds = itertools.count(1)

    def fresh(state: DatasetState) -> DatasetState:
        """A new fetch result in which every quality line differs (the worst case: a dataset fetched again
        with the same values costs its rendering only, since its compressed pieces are kept by their bytes)."""
        quality, mark = state.quality, next(rounds)
        if quality is None:
            return state
        events = tuple(event._replace(event_name=f"{event.event_name}~{mark}") for event in quality.events)
        return replace(state, quality=DatasetQuality(events, quality.offline))

    def best(run: Callable[[], object], times: int = 3) -> float:
        took = []
        for _ in range(times):
            started = time.perf_counter()
            run()
            took.append(time.perf_counter() - started)
        return min(took)

    full = best(lambda: Publisher().publish(snapshot))
    count = len(snapshot.datasets)
    rng = random.Random(1)
    cases = {
        "1 dataset": [0],
        "1 % side by side": list(range(count // 2, count // 2 + max(count // 100, 1))),
        "1 % scattered": rng.sample(range(count), max(count // 100, 1)),
        "all": list(range(count)),
    }
    rows = [{"datasets": n, "changed": "full render (a fresh publisher)", "publish_ms": full * 1000, "of_full": 1.0}]
    for name, changed in cases.items():
        publisher = Publisher()
        publisher.publish(snapshot)
        states = list(snapshot.datasets)
        took = []
        for _ in range(3):
            for index in changed:
                states[index] = fresh(states[index])
            changed_snapshot = replace(snapshot, datasets=tuple(states))
            started = time.perf_counter()
            publisher.publish(changed_snapshot)
            took.append(time.perf_counter() - started)
        rows.append({"datasets": n, "changed": name, "publish_ms": min(took) * 1000, "of_full": min(took) / full})
    return rows


def cpu_per_thousand(sim: Simulator, n: int) -> list[dict]:
    """The exporter's own CPU seconds for a burst cycle (the simulator runs in another process), per 1,000
    datasets, beside the floor: json.loads of the same response bodies."""
    started = time.process_time()
    burst_cycle(sim, n)
    cpu = time.process_time() - started
    fields = web_fields(BLOCKS)
    bodies = []
    with httpx.Client(timeout=60) as client:
        for dataset_id in sim.ids[: min(n, 500)]:
            bodies.append(
                client.get(f"{sim.url}/v27.0/dataset_quality", params={"dataset_id": dataset_id, "fields": fields},
                           headers={"Authorization": f"OAuth {TOKEN}"}).content
            )  # fmt: skip
    started = time.process_time()
    for body in bodies:
        json.loads(body)
    floor = (time.process_time() - started) / len(bodies) * 1000  # CPU seconds per 1,000 bodies
    per_thousand = cpu / n * 1000
    return [{"datasets": n, "cpu_s": cpu, "cpu_s_per_1000": per_thousand, "json_loads_s_per_1000": floor,
             "times_the_floor": per_thousand / floor}]  # fmt: skip


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
            started = time.monotonic()
            try:
                url = f"http://127.0.0.1:{port}"
                deadline = time.monotonic() + 600
                while time.monotonic() < deadline:
                    try:
                        if urllib.request.urlopen(url + "/-/ready", timeout=5).status == 200:
                            break
                    except OSError:
                        pass
                    time.sleep(0.05)
                ready = time.monotonic() - started  # ready: the first cycle's datasets are all on /metrics
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
                     "gzip_bytes": sizes_seen["gzip"], "ratio": rss / sizes_seen["plain"],
                     "ready_s": ready})  # fmt: skip
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
    parser.add_argument(
        "part", choices=["throughput", "scrape", "memory", "cycle", "publish", "cpu", "governor", "timeout", "all"]
    )
    parser.add_argument("--pairs", type=int, default=4, help="alternating pairs of the governor part")
    parser.add_argument("--cycle-seconds", type=float, default=60.0, help="length of the paced cycle scraped")
    parser.add_argument("--sizes", help="comma-separated dataset counts (default: the issue's)")
    parser.add_argument("--scrapes", type=int, default=200)
    parser.add_argument("--renders", type=int, default=5, help="per-scrape renderings timed for the baseline")
    parser.add_argument("--baseline-sample", type=int, default=100)
    parser.add_argument("--json", action="store_true", help="print JSON instead of Markdown tables")
    args = parser.parse_args()
    chosen = [int(s) for s in args.sizes.split(",")] if args.sizes else None
    prepare_process()  # as `run` does, for every part: the threads here are the exporter's
    results: dict[str, list[dict]] = {}
    sim = Simulator(max(chosen or [10_000]))
    try:
        if args.part in ("throughput", "all"):
            results["throughput"] = throughput(sim, chosen or [1000, 5000, 10_000], args.baseline_sample)
        if args.part in ("scrape", "all"):
            results["scrape"] = scrape(sim, chosen or [1000, 5000], args.scrapes, args.renders)
        if args.part in ("memory", "all"):
            results["memory"] = memory(sim, chosen or [1000, 5000, 10_000])
        if args.part in ("cycle", "all"):
            results["cycle"] = cycle_scrapes(sim, chosen or [1000, 10_000], args.cycle_seconds)
        if args.part in ("publish", "all"):
            results["publish"] = [r for n in chosen or [10_000] for r in publish_cost(sim, n)]
        if args.part in ("cpu", "all"):
            results["cpu"] = [r for n in chosen or [10_000] for r in cpu_per_thousand(sim, n)]
    finally:
        sim.stop()
    if args.part in ("governor", "all"):
        results["governor"] = governor_runs(chosen or [10_000], args.pairs)
    if args.part in ("timeout", "all"):
        results["timeout"] = timeout_calls(chosen or [1_000])
    if args.json:
        print(json.dumps(results))
        return
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    for part, rows in results.items():
        print(f"\n{part}\n\n{table(rows)}")


if __name__ == "__main__":
    main()
