"""A two-minute soak (bench/soak.py has the thirty-minute one): memory must not grow after warm-up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent

pytestmark = pytest.mark.slow


def test_two_minute_soak_against_a_flaky_api():
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--minutes", "2", "--datasets", "200", "--interval", "5s",
         "--sample-every", "10", "--tolerance", "0.25", "--json"],
        capture_output=True, text=True, timeout=280, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    verdict = json.loads(result.stdout)
    assert verdict["exit_code"] == 0 and verdict["scrape_errors"] == 0
    assert verdict["cycles"] >= 5  # the loop kept cycling through the faults
    for sample in verdict["samples"]:  # where the memory is, for a run that grows
        parts = sample["heap_mib"], sample["anon_mib"], sample["other_mib"]
        assert min(parts) > 0 and abs(sum(parts) - sample["rss_mib"]) < 0.25 * sample["rss_mib"]
        assert sample["peak_mib"] > 0
        assert sample["threads"] >= 2 and sample["failed"] >= 0
    assert verdict["ok"], {k: v for k, v in verdict.items() if k != "samples"}
