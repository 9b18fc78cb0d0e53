"""Soak: the exporter against a flaky simulator for a long time, resident memory sampled as it runs.

    .venv/bin/python bench/soak.py --minutes 30 --datasets 1000        # the recorded run (bench/README.md)
    .venv/bin/python bench/soak.py --minutes 2 --datasets 200 --json   # what tests/test_soak.py runs

The exporter runs as its own process with a short interval, so cycles follow each other; a scraper reads
/metrics (gzip) every few seconds as Prometheus would. Memory must not grow after warm-up: the verdict compares
the highest RSS of the last third of the run with the highest of the first third (after warm-up), with a
tolerance for the allocator's noise.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

TOKEN = "soak-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def memory_map(pid: int) -> dict[str, float]:
    """Where the resident memory is, in MiB: glibc's main heap (`[heap]`), anonymous mappings (thread arenas,
    Python's object arenas, large blocks), and the rest (code, libraries), with the process's thread count."""
    kib = {"heap": 0, "anon": 0, "other": 0}
    kind = "other"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if not fields[0].endswith(":"):  # a mapping's header: address perms offset dev inode [path]
            path = fields[5] if len(fields) > 5 else ""
            kind = "heap" if path == "[heap]" else "anon" if not path else "other"
        elif fields[0] == "Rss:":
            kib[kind] += int(fields[1])
    threads = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                   if line.startswith("Threads:"))  # fmt: skip
    return {f"{k}_mib": round(v / 1024, 1) for k, v in kib.items()} | {"threads": threads}


def get(url: str, headers: dict[str, str] | None = None) -> bytes:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=60) as response:
        return response.read()


def metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


def failing(text: str) -> int:
    return sum(1 for line in text.splitlines()
               if line.startswith("meta_dataset_quality_fetch_success{") and float(line.split()[-1]) == 0)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--datasets", type=int, default=1000)
    parser.add_argument("--interval", default="20s")
    parser.add_argument("--sample-every", type=float, default=60.0)
    parser.add_argument("--fault-rate", type=float, default=0.2)
    parser.add_argument("--tolerance", type=float, default=0.15, help="allowed growth after warm-up")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    sim_port, port = free_port(), free_port()
    sim = subprocess.Popen(
        [sys.executable, "-m", "exporter", "--log-level", "warning", "simulate", "--listen", f"127.0.0.1:{sim_port}",
         "--datasets", str(args.datasets), "--scenario", "flaky", "--fault-rate", str(args.fault_rate),
         "--slow-seconds", "6", "--latency", "0.02", "--token", TOKEN, "--app-calls-per-window", "100000000",
         "--business-calls-per-window", "100000000"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    tmp = tempfile.TemporaryDirectory()
    config = Path(tmp.name) / "config.yaml"
    ids = ["123456789012345"] + [str(100_000_000_000_000 + 100_000 + i) for i in range(args.datasets)]
    config.write_text(
        json.dumps(
            {
                "graph_api": {"base_url": f"http://127.0.0.1:{sim_port}", "timeout": "3s", "max_retries": 1},
                "collection": {"interval": args.interval, "concurrency": 8, "stale_after": "10m"},
                "datasets": [{"id": i} for i in ids],
            }
        )
    )
    exporter = subprocess.Popen(
        [sys.executable, "-m", "exporter", "--log-level", "warning", "run", "--config", str(config),
         "--web.listen-address", f"127.0.0.1:{port}"],
        env={**os.environ, "META_ACCESS_TOKEN": TOKEN},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    samples: list[dict[str, float]] = []
    scrape_errors = 0
    slowest = 0.0
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if get(url + "/-/ready"):
                    break
            except OSError:
                time.sleep(0.5)
        started = time.monotonic()
        end = started + args.minutes * 60
        next_sample = started
        peak = 0
        while time.monotonic() < end:
            if exporter.poll() is not None:
                raise RuntimeError(f"the exporter exited with {exporter.returncode}")
            peak = max(peak, rss(exporter.pid))
            try:
                asked = time.perf_counter()
                get(url + "/metrics", {"Accept-Encoding": "gzip"})
                slowest = max(slowest, time.perf_counter() - asked)  # during cycles as between them
            except OSError:
                scrape_errors += 1
            if time.monotonic() >= next_sample:
                text = get(url + "/metrics").decode()
                samples.append(
                    {
                        "minute": round((time.monotonic() - started) / 60, 2),
                        "rss_mib": round(rss(exporter.pid) / 2**20, 1),
                        "peak_mib": round(peak / 2**20, 1),  # the highest seen since the last sample
                        "cycles": metric(text, "meta_dataset_quality_cycles_total") or 0,
                        "failed": failing(text),
                    }
                    | memory_map(exporter.pid)
                )
                peak = 0
                next_sample += args.sample_every
            time.sleep(2)
    finally:
        exporter.terminate()
        exporter.wait(30)
        sim.terminate()
        sim.wait(30)
        tmp.cleanup()
    third = max(1, len(samples) // 3)
    warm = max(s["rss_mib"] for s in samples[:third])
    late = max(s["rss_mib"] for s in samples[-third:])
    verdict = {
        "minutes": args.minutes,
        "datasets": args.datasets,
        "cycles": samples[-1]["cycles"] if samples else 0,
        "first_third_max_mib": warm,
        "last_third_max_mib": late,
        "growth": round(late / warm - 1, 3),
        "ok": late <= warm * (1 + args.tolerance) and exporter.returncode == 0,
        "scrape_errors": scrape_errors,
        "slowest_scrape_ms": round(slowest * 1000, 1),
        "exit_code": exporter.returncode,
        "samples": samples,
    }
    if args.json:
        print(json.dumps(verdict))
        return
    print(
        f"{args.minutes:g} min, {args.datasets} datasets, flaky (fault rate {args.fault_rate}), "
        f"interval {args.interval}"
    )
    print("| minute | RSS MiB | peak MiB | heap MiB | anonymous MiB | threads | cycles | datasets failing |")
    print("|---|---|---|---|---|---|---|---|")
    for s in samples:
        print(
            f"| {s['minute']} | {s['rss_mib']} | {s['peak_mib']} | {s['heap_mib']} | {s['anon_mib']} | "
            f"{s['threads']} | {s['cycles']:.0f} | {s['failed']} |"
        )
    print({k: v for k, v in verdict.items() if k != "samples"})


if __name__ == "__main__":
    main()
