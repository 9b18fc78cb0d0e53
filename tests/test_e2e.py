"""End to end: the exporter as a subprocess against the simulator, both over loopback."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from exporter.simulator import EXAMPLE_DATASET_ID
from tests.conftest import TOKEN, free_port, http, wait_for

P = "meta_dataset_quality_"

pytestmark = pytest.mark.slow


class Exporter:
    def __init__(self, tmp_path: Path, config: str, env: dict[str, str], open_files: int | None = None):
        self.config_path = tmp_path / "config.yaml"
        self.config_path.write_text(config)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp_path / "exporter.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "exporter",
                "--log-level",
                "debug",
                "run",
                "--config",
                str(self.config_path),
                "--web.listen-address",
                f"127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
            ],
            env={**os.environ, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=(lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files)))
            if open_files
            else None,
        )
        wait_for(self._up, what="the exporter to listen")

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"exporter exited early:\n{self.log_path.read_text()}")
        try:
            return http("GET", self.url + "/-/healthy")[0] == 200
        except OSError:
            return False

    def metrics_text(self) -> str:
        return http("GET", self.url + "/metrics")[2].decode()

    def samples(self) -> dict[tuple[str, tuple], float]:
        out = {}
        for family in text_string_to_metric_families(self.metrics_text()):
            for s in family.samples:
                out[s.name, tuple(sorted(s.labels.items()))] = s.value
        return out

    def value(self, name: str, **labels: str) -> float | None:
        return lookup(self.samples(), name, **labels)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                raise
        self._log.close()
        return self.proc.returncode


def lookup(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((P + name, tuple(sorted(labels.items()))))


@pytest.fixture
def exporter_factory(tmp_path):
    started: list[Exporter] = []

    def start(config: str, env: dict[str, str] | None = None, open_files: int | None = None) -> Exporter:
        exporter = Exporter(tmp_path, config, {"META_ACCESS_TOKEN": TOKEN, **(env or {})}, open_files)
        started.append(exporter)
        return exporter

    yield start
    for exporter in started:
        exporter.stop()


def config_for(sim, datasets: list[str], *, interval="1h", stale_after="3h", extra="") -> str:
    lines = [
        f"graph_api: {{base_url: '{sim.url}', timeout: 5s, max_retries: 0}}",
        "credentials:",
        "  default: {token_env: META_ACCESS_TOKEN}",
        "  client_b: {token_env: CLIENT_B_TOKEN}",
        f"collection: {{interval: {interval}, stale_after: {stale_after}, concurrency: 4}}",
        "datasets:",
        *datasets,
        extra,
    ]
    return "\n".join(lines) + "\n"


def ratio(percentage: float) -> float:
    return float(Decimal(repr(percentage)) / 100)


@pytest.fixture
def fleet(start_simulator):
    return start_simulator(datasets=30, seed=5, expired_tokens=("expired-token",))


def test_metrics_match_the_simulator_and_promtool_accepts_them(fleet, exporter_factory, tmp_path):
    ids = fleet.world.dataset_ids
    sample = ids[1:13]
    datasets = [f"  - {{id: '{EXAMPLE_DATASET_ID}', name: 'Docs example', labels: {{customer: meta}}}}"]
    datasets += [f"  - {{id: '{i}', labels: {{customer: c{n % 3}}}}}" for n, i in enumerate(sample)]
    datasets += [f"  - {{id: '{ids[20]}', credential: client_b}}"]
    exporter = exporter_factory(config_for(fleet, datasets), {"CLIENT_B_TOKEN": "expired-token"})
    wait_for(lambda: http("GET", exporter.url + "/-/ready")[0] == 200, what="readiness")
    # Ready once the configured datasets are in: the pixels' metadata (names, businesses) is read beside the
    # first cycle, not before it, and arrives a moment later.
    wait_for(lambda: 'business_name="Simulated' in exporter.metrics_text(), what="the pixels' metadata")
    text = exporter.metrics_text()

    scraped = exporter.samples()

    def value(name, **labels):
        return lookup(scraped, name, **labels)

    # Meta's page examples, converted exactly
    ex = {"dataset_id": EXAMPLE_DATASET_ID, "agent_name": ""}
    assert value("match_key_coverage_ratio", **ex, event_name="CompleteRegistration", match_key="ip_address") == 0.999
    assert value("event_match_quality_score", **ex, event_name="pLTVPurchase") == 6.2
    assert value("event_coverage_ratio", **ex, event_name="B2B Purchase") == 0.341
    assert value("event_coverage_goal_ratio", **ex, event_name="B2B Purchase") == 0.75
    assert value("dedupe_key_browser_coverage_ratio", **ex, event_name="AddToCart", dedupe_key="external_id") == 0.1596
    assert (
        value(
            "diagnostic_affected_events",
            **ex,
            event_name="Purchase",
            diagnostic="server_sending_mismatched_ip_addresses",
        )
        == 19567
    )
    assert value("upload_frequency", **ex, event_name="Lead", upload_frequency="hourly") == 1
    assert value("match_key_potential_acr_increase_ratio", **ex, event_name="Purchase", match_key="email") == 0.5896
    assert value("acr_ratio", **ex, event_name="PageView") == 0.455
    assert value("event_potential_acr_increase_ratio", **ex, event_name="Search") == 0.329

    # synthetic datasets: every value the simulator holds appears under the right labels
    checked = 0
    for dataset_id in sample:
        for event in fleet.world.quality(dataset_id, None)["web"]:
            labels = {"dataset_id": dataset_id, "agent_name": "", "event_name": event["event_name"]}
            emq = event.get("event_match_quality", {})
            if "composite_score" in emq:
                assert value("event_match_quality_score", **labels) == emq["composite_score"]
                checked += 1
            for key in emq.get("match_key_feedback", []):
                assert value("match_key_coverage_ratio", **labels, match_key=key["identifier"]) == ratio(
                    key["coverage"]["percentage"]
                )
                checked += 1
            if "event_coverage" in event:
                assert value("event_coverage_ratio", **labels) == ratio(event["event_coverage"]["percentage"])
            if "acr" in event:
                assert value("acr_ratio", **labels) == ratio(event["acr"]["percentage"])
    assert checked > 50

    # the expired token fails its dataset alone, with reason="auth"
    failing = {"dataset_id": ids[20], "agent_name": ""}
    assert value("fetch_success", **failing) == 0
    assert value("fetch_failures_total", **failing, reason="auth") == 1
    assert all(value("fetch_success", dataset_id=i, agent_name="") == 1 for i in sample)
    assert f'dataset_id="{ids[20]}",event_name' not in text
    owner = fleet.world.pixels[EXAMPLE_DATASET_ID]  # business and name come from the pixel's metadata
    info = {"dataset_id": EXAMPLE_DATASET_ID, "dataset_name": "Docs example", "origin": "config", "customer": "meta"}
    assert value("dataset_info", **info, business_id=owner.business_id, business_name=owner.business_name) == 1
    unnamed = fleet.world.pixels[sample[0]]
    assert (
        value(
            "dataset_info",
            dataset_id=sample[0],
            dataset_name=unnamed.name,
            origin="config",
            customer="c0",
            business_id=unnamed.business_id,
            business_name=unnamed.business_name,
        )
        == 1
    )
    fired = value("dataset_last_fired_timestamp_seconds", dataset_id=sample[0])
    assert fired is not None and abs(fired - (time.time() - unnamed.last_fired_ago)) < 120
    assert value("series_dropped") == 0

    path = tmp_path / "metrics.txt"
    path.write_text(text)
    check = subprocess.run(["promtool", "check", "metrics"], stdin=path.open(), capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.strip() == "" and check.stderr.strip() == "", "promtool lint warnings"
    assert TOKEN not in exporter.log_path.read_text() and "expired-token" not in exporter.log_path.read_text()


def test_stale_after_drops_a_failing_datasets_quality(fleet, exporter_factory):
    ids = fleet.world.dataset_ids
    exporter = exporter_factory(
        config_for(
            fleet, [f"  - {{id: '{ids[1]}'}}", f"  - {{id: '{ids[2]}'}}"], interval="300ms", stale_after="1500ms"
        )
    )
    wait_for(lambda: exporter.value("fetch_success", dataset_id=ids[1], agent_name="") == 1, what="first fetch")
    fleet.set_fault(ids[1], "transient_2")
    wait_for(lambda: exporter.value("fetch_success", dataset_id=ids[1], agent_name="") == 0, what="the failure")
    assert f'dataset_id="{ids[1]}",event_name=' in exporter.metrics_text()  # last good data still served
    wait_for(lambda: f'dataset_id="{ids[1]}",event_name=' not in exporter.metrics_text(), what="staleness")
    assert exporter.value("fetch_failures_total", dataset_id=ids[1], agent_name="", reason="transient") >= 1
    assert exporter.value("last_success_timestamp_seconds", dataset_id=ids[1], agent_name="") > 0
    assert f'dataset_id="{ids[2]}",event_name=' in exporter.metrics_text()  # the other one is untouched
    fleet.set_fault(ids[1], None)
    wait_for(lambda: f'dataset_id="{ids[1]}",event_name=' in exporter.metrics_text(), what="recovery")


def test_readiness_reload_and_clean_shutdown(start_simulator, exporter_factory):
    sim = start_simulator(datasets=5, latency=1.0)
    ids = sim.world.dataset_ids
    exporter = exporter_factory(config_for(sim, [f"  - {{id: '{ids[1]}'}}"]))
    assert http("GET", exporter.url + "/-/ready")[0] == 503  # the first cycle takes a second
    wait_for(lambda: http("GET", exporter.url + "/-/ready")[0] == 200, what="readiness")
    assert exporter.value("targets", origin="config") == 1

    good = exporter.config_path.read_text()
    exporter.config_path.write_text(good + "bogus_key: 1\n")
    status, _, body = http("POST", exporter.url + "/-/reload", data=b"")
    assert status == 500 and b"bogus_key: unknown key" in body
    assert exporter.value("config_last_reload_successful") == 0
    assert exporter.value("targets", origin="config") == 1  # the old config is still in force

    exporter.config_path.write_text(good.replace("datasets:\n", f"datasets:\n  - {{id: '{ids[2]}'}}\n"))
    status, _, body = http("POST", exporter.url + "/-/reload", data=b"")
    assert status == 200, body
    assert b"configuration reloaded: 2 datasets. It takes effect now" in body  # the first cycle has ended
    assert exporter.value("config_last_reload_successful") == 1
    wait_for(lambda: exporter.value("fetch_success", dataset_id=ids[2], agent_name="") == 1, what="the new dataset")

    exporter.config_path.write_text("datasets: [")
    exporter.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: exporter.value("config_last_reload_successful") == 0, what="SIGHUP reload refusal")
    assert exporter.value("targets", origin="config") == 2
    assert http("GET", exporter.url + "/-/reload")[0] == 405

    started = time.monotonic()
    assert exporter.stop() == 0
    assert time.monotonic() - started < 10  # a hang guard; the loop is cancelled at once


def test_sigterm_during_a_slow_cycle_exits_zero_within_five_seconds(start_simulator, exporter_factory):
    sim = start_simulator(datasets=3, scenario="slow", fault_rate=1.0, slow_seconds=30)
    exporter = exporter_factory(config_for(sim, [f"  - {{id: '{EXAMPLE_DATASET_ID}'}}"]))
    time.sleep(0.5)  # the first cycle's request now waits on a 30-second answer
    started = time.monotonic()
    exporter.proc.send_signal(signal.SIGTERM)
    assert exporter.proc.wait(5) == 0  # the bound: within 5 seconds, exit code 0
    assert time.monotonic() - started < 5


def test_refuses_to_start_with_a_bad_config(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("datasets:\n  - {id: nope}\n")
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "--config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2  # a config error, as from once and check-config
    assert f"{path}: datasets[0].id: expected a dataset (pixel) ID of digits, got 'nope'" in result.stderr


def test_zero_config_start_and_sigint(fleet, tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "exporter",
            "--log-format",
            "json",
            "--dataset-id",
            EXAMPLE_DATASET_ID,
            "--graph-api.base-url",
            fleet.url,
            "--web.listen-address",
            f"127.0.0.1:{port}",
        ],
        env={**os.environ, "META_ACCESS_TOKEN": TOKEN},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"

        def ready():
            try:
                return http("GET", url + "/-/ready")[0] == 200
            except OSError:
                return False

        wait_for(ready, what="zero-config readiness")
        text = http("GET", url + "/metrics")[2].decode()
        assert f'dataset_id="{EXAMPLE_DATASET_ID}",event_name="pLTVPurchase"}} 6.2' in text
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
    lines = [json.loads(line) for line in proc.stderr.read().splitlines() if line.strip()]
    assert any(entry["msg"].startswith("cycle finished") for entry in lines)
    assert all({"time", "level", "logger", "msg"} <= set(entry) for entry in lines)


def test_demo_command_serves_the_simulated_fleet():
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", "demo", "--datasets", "20", "--listen", "127.0.0.1:0", "--latency", "0.01"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = config_path = None
        banner = []
        for line in proc.stdout:
            banner.append(line)
            if "metrics:" in line:
                url = line.split()[-1].removesuffix("/metrics")
            if "its config:" in line:
                config_path = line.split()[2]
                break
        assert url and config_path, "the demo printed no URL or config file"
        told = "".join(banner)  # what it shows, including what fails on purpose, and how to break it
        assert "20 simulated datasets of 4 customers" in told and "targets" in told
        assert "On purpose, 2 datasets fail: credential 'client_b' holds an expired token" in told
        assert "spreads its calls over 30s" in told and "status?customer=acme" in told
        text_written = Path(config_path).read_text()
        written = yaml.safe_load(text_written)
        assert len({d["id"] for d in written["datasets"]}) == 20  # --datasets 20 serves 20, not 21
        assert "server" not in written and written["graph_api"]["base_url"] == "http://127.0.0.1:8787"
        env = {**os.environ, "DEMO": "x", "DEMO_B": "y"}
        check = subprocess.run(
            [sys.executable, "-m", "exporter", "check-config", config_path], env=env, capture_output=True
        )
        assert check.returncode == 0, check.stderr
        wait_for(lambda: http("GET", url + "/-/ready")[0] == 200, what="demo readiness")
        text = http("GET", url + "/metrics")[2].decode()
        assert (
            f'dataset_id="{EXAMPLE_DATASET_ID}",event_name="CompleteRegistration",match_key="ip_address"}} 0.999'
            in text
        )
        assert 'reason="auth"} 1.0' in text  # the demo's expired credential shows what a failure looks like
        assert http("GET", url + "/status")[0] == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
    run_as_printed(text_written, Path(config_path))


def run_as_printed(text: str, config_path: Path) -> None:
    """The demo's config file runs on its own with the two commands its header prints: `simulate` as said (its
    default port), and `once` with the tokens as said. Only the expired credential's two datasets fail."""
    simulate, run = (line.removeprefix("#").strip() for line in text.splitlines()[1:3])
    assert simulate.startswith("meta-dataset-quality-exporter simulate ") and "--config <this file>" in run
    sim_args = simulate.split()[2:]
    env = dict(pair.split("=", 1) for pair in run.split() if "=" in pair and not pair.startswith("--"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", "simulate", *sim_args], stdout=subprocess.PIPE, text=True
    )
    try:
        assert "Graph API simulator on http://127.0.0.1:8787" in proc.stdout.readline()
        result = subprocess.run(
            [sys.executable, "-m", "exporter", "once", "--config", str(config_path), "--format", "json"],
            env={**os.environ, **env}, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        failed = [d for d in json.loads(result.stdout)["datasets"] if not d["success"]]
        assert {d["reason"] for d in failed} == {"auth"} and len({d["dataset_id"] for d in failed}) == 2
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(10)


def test_idle_connections_past_the_open_file_limit_leave_metrics_and_collection_working(fleet, exporter_factory):
    """Under a 1,024 open-file limit (systemd's soft default), 1,100 idle connections used to make /metrics
    unreachable and the exporter's own Graph calls fail. Idle sockets are now evicted past 256."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2500:
        pytest.skip(f"the test itself needs 2,500 open files; this machine's hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2500), hard))
    ids = fleet.world.dataset_ids
    exporter = exporter_factory(config_for(fleet, [f"  - {{id: '{ids[1]}'}}"], interval="1s"), open_files=1024)
    wait_for(lambda: exporter.value("fetch_success", dataset_id=ids[1], agent_name="") == 1, what="first fetch")
    idle = []
    try:
        for _ in range(1100):
            idle.append(socket.create_connection(("127.0.0.1", exporter.port), timeout=10))
        cycles = exporter.value("cycles_total")
        wait_for(lambda: exporter.value("cycles_total") >= cycles + 2, what="two more cycles")
        assert exporter.value("fetch_success", dataset_id=ids[1], agent_name="") == 1  # its Graph calls still work
    finally:
        for sock in idle:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_an_exporter_that_watches_nothing_says_so_at_start(exporter_factory):
    exporter = exporter_factory("credentials:\n  default: {token_env: META_ACCESS_TOKEN}\ndatasets: []\n")
    wait_for(lambda: "will watch nothing" in exporter.log_path.read_text(), what="the warning in the log")
    line = next(x for x in exporter.log_path.read_text().splitlines() if "will watch nothing" in x)
    assert " WARNING " in line and "business_id" in line
