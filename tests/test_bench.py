"""Smoke test of bench/scale.py: it runs and reports every figure. No timing is asserted here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent

pytestmark = pytest.mark.slow


def test_scale_benchmark_runs_and_reports():
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "scale.py"), "all", "--sizes", "40", "--scrapes", "5", "--renders", "1",
         "--baseline-sample", "3", "--cycle-seconds", "2", "--pairs", "1", "--json"],
        capture_output=True, text=True, timeout=240, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    (throughput,) = report["throughput"]
    assert throughput["datasets"] == 40 and throughput["cycle_s"] > 0 and throughput["bound_s"] > 0
    assert throughput["naive_s"] > 0 and throughput["speedup"] > 0
    (scrape,) = report["scrape"]
    assert scrape["gzip_bytes"] < scrape["plain_bytes"] and scrape["gzip_p99_ms"] > 0
    assert scrape["per_scrape_render_p50_ms"] > 0
    (memory,) = report["memory"]
    assert memory["rss_bytes"] > memory["exposition_bytes"] > 0
    (cycle,) = report["cycle"]
    assert cycle["gzip_publishes"] >= 1 and cycle["gzip_scrapes"] > 0 and cycle["plain_max_ms"] > 0
    assert cycle["baseline_gzip_ms"] > 0
    publish = {row["changed"]: row for row in report["publish"]}
    assert set(publish) == {"full render (a fresh publisher)", "1 dataset", "1 % side by side", "1 % scattered", "all"}
    assert all(row["publish_ms"] > 0 for row in publish.values())
    (cpu,) = report["cpu"]
    assert cpu["cpu_s_per_1000"] > 0 and cpu["json_loads_s_per_1000"] > 0
    governor = {row["usage_headers"]: row for row in report["governor"]}
    assert set(governor) == {"sent", "never sent"} and all(row["calls"] == 40 for row in governor.values())
    (timeout,) = report["timeout"]
    assert timeout["calls"] > 40 and 0 < timeout["failed"] < 40


def test_attacks_benchmark_runs_and_reports():
    """Two of bench/attacks.py's attacks, with short waits: the harness (certificates, web config, simulator
    faults, the legitimate scraper, the columns) keeps working. Its figures are bench/README.md's."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "attacks.py"), "--only", "smuggling,new_version_warnings",
         "--warmup", "2", "--settle", "1", "--json"],
        capture_output=True, text=True, timeout=240, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = {row["attack"]: row for row in json.loads(result.stdout)}
    assert set(rows) == {"smuggling", "new_version_warnings"}
    assert rows["smuggling"]["made"] == 300 and rows["new_version_warnings"]["made"] == 5
    for row in rows.values():
        assert row["exporter_alive"] and row["scrapes"] > 0 and row["rss_after_mib"] > 0 and "log_bytes" in row
