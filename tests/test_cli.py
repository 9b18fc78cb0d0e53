"""The command line in-process: check-config, once in its three formats, argument handling."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.cli.main import main
from exporter.simulator import EXAMPLE_DATASET_ID
from tests.conftest import TOKEN

CONFIGS = Path(__file__).parent / "fixtures" / "config"


def test_check_config_ok_and_bad(capsys, monkeypatch):
    monkeypatch.setenv("META_ACCESS_TOKEN", "x" * 10)
    assert main(["check-config", str(CONFIGS / "minimal.ok.yaml")]) == 0
    assert "OK (1 datasets" in capsys.readouterr().out
    assert main(["check-config", str(CONFIGS / "datasets.bad.yaml")]) == 2
    err = capsys.readouterr().err
    assert "datasets[1].credential: no credential named 'client_c'" in err and "datasets[0].id" in err


def test_check_config_reports_missing_secrets_unless_skipped(capsys, monkeypatch):
    monkeypatch.delenv("META_ACCESS_TOKEN", raising=False)
    assert main(["check-config", str(CONFIGS / "minimal.ok.yaml")]) == 2
    assert "environment variable META_ACCESS_TOKEN is not set" in capsys.readouterr().err
    assert main(["check-config", "--skip-secrets", str(CONFIGS / "minimal.ok.yaml")]) == 0


def write_config(tmp_path, sim, datasets):
    path = tmp_path / "config.yaml"
    lines = [f"graph_api: {{base_url: '{sim.url}', timeout: 5s}}", "datasets:"]
    lines += [f"  - {{id: '{d}'}}" for d in datasets]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def token(monkeypatch):
    monkeypatch.setenv("META_ACCESS_TOKEN", TOKEN)


def test_once_table(tmp_path, simulator, capsys, token):
    path = write_config(tmp_path, simulator, [EXAMPLE_DATASET_ID, simulator.world.dataset_ids[2]])
    assert main(["once", "--config", str(path)]) == 0
    captured = capsys.readouterr()
    assert "progress: 2/2 fetched, 0 failed" in captured.err
    assert f"dataset {EXAMPLE_DATASET_ID} — Meta documentation example" in captured.out  # named by its metadata
    assert "CompleteRegistration" in captured.out and "7.2" in captured.out and "ip_address 100%" in captured.out
    assert "2/2 targets fetched successfully" in captured.out


def test_once_json_and_failure_exit_code(tmp_path, simulator, capsys, token):
    simulator.set_fault(simulator.world.dataset_ids[1], "permission")
    path = write_config(tmp_path, simulator, [EXAMPLE_DATASET_ID, simulator.world.dataset_ids[1]])
    assert main(["once", "--config", str(path), "--format", "json"]) == 1
    data = json.loads(capsys.readouterr().out)
    example, failing = data["datasets"]
    assert example["success"] and failing["reason"] == "permission"
    events = {e["event_name"]: e for e in example["events"]}
    assert events["B2B Purchase"]["coverage"] == 34.1
    # nested records are objects of their fields, as the top-level ones
    keys = {k["identifier"]: k for e in example["events"] for k in e["match_keys"]}
    assert set(keys["email"]) == {"identifier", "coverage", "potential_acr_increase"}
    diagnostic = next(d for e in example["events"] for d in e["diagnostics"])
    assert diagnostic["slug"] and diagnostic["name"] and "affected_event_count" in diagnostic


def test_once_exits_non_zero_when_a_discovery_edge_fails(tmp_path, simulator, capsys, token):
    business = next(iter(simulator.world.businesses.values()))
    path = tmp_path / "config.yaml"
    lines = [f"graph_api: {{base_url: '{simulator.url}', timeout: 5s}}", "discovery:"]
    path.write_text("\n".join([*lines, f"  - {{business_id: '{business.id}', edges: [owned_pixels]}}"]) + "\n")
    assert main(["once", "--config", str(path), "--format", "json"]) == 0
    capsys.readouterr()
    # a business that is no agency refuses client_pixels: its owned pixels are still fetched, and once says 1
    path.write_text("\n".join([*lines, f"  - {{business_id: '{business.id}'}}"]) + "\n")
    assert main(["once", "--config", str(path), "--format", "json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["datasets"] and all(d["success"] for d in data["datasets"])


def test_once_prometheus_and_zero_config(simulator, capsys, token):
    args = ["once", "--dataset-id", EXAMPLE_DATASET_ID, "--graph-api.base-url", simulator.url, "--format", "prometheus"]
    assert main(args) == 0
    families = {f.name: f for f in text_string_to_metric_families(capsys.readouterr().out)}
    samples = {s.labels.get("event_name"): s.value for s in families["meta_dataset_quality_acr_ratio"].samples}
    assert samples == {"Search": 0.379, "PageView": 0.455}


def test_bad_arguments(capsys):
    assert main(["run"]) == 2
    assert "nothing to watch" in capsys.readouterr().err
    assert main(["run", "--dataset-id", "act_1"]) == 2
    with pytest.raises(SystemExit):
        main(["once", "--format", "yaml"])


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.bad.yaml")), ids=lambda p: p.name)
def test_every_bad_fixture_fails_check_config_with_its_messages(path, capsys):
    assert main(["check-config", "--skip-secrets", str(path)]) == 2
    err = capsys.readouterr().err
    expected = re.findall(r"^# expect: (.+)$", path.read_text("utf-8"), re.MULTILINE)
    for line in expected:
        assert line.replace(path.name, str(path), 1) in err


def test_run_refuses_a_bad_config_with_a_non_zero_exit(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("collection: {interval: soon}\n")
    assert main(["run", "--config", str(path)]) == 2
    assert "collection.interval: expected a duration" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["run", "--config"], ["once", "--config"], ["check-config"]])
def test_a_config_error_exits_2_from_every_command(tmp_path, command, capsys, token):
    path = tmp_path / "bad.yaml"
    path.write_text("collection: {interval: soon}\n")
    assert main([*command, str(path)]) == 2


@pytest.mark.parametrize("args", [["--shard-index", "3", "--shard-count", "3"], ["--dataset-id", "12x"]])
def test_bad_flags_fail_before_anything_starts(args, capsys):
    assert main(["run", "--dataset-id", "1", *args]) == 2


def test_logging_flags_work_before_and_after_the_command():
    from exporter.cli.main import build_parser

    after = build_parser().parse_args(["run", "--config", "c.yaml", "--log-format", "json", "--log-level", "debug"])
    assert (after.log_format, after.log_level) == ("json", "debug")
    before = build_parser().parse_args(["--log-format", "json", "run", "--config", "c.yaml"])
    assert (before.log_format, before.log_level) == ("json", "info")


def test_once_timeout_prints_partial_results_and_no_traceback(tmp_path, start_simulator, capsys, token):
    sim = start_simulator(datasets=5, latency=3.0)
    path = write_config(tmp_path, sim, [EXAMPLE_DATASET_ID, sim.world.dataset_ids[2]])
    assert main(["once", "--config", str(path), "--format", "json", "--timeout", "1s"]) == 1
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert {d["dataset_id"] for d in data["datasets"]} == {EXAMPLE_DATASET_ID, sim.world.dataset_ids[2]}
    assert not any(d["success"] for d in data["datasets"])
    assert "--timeout (1s) reached" in captured.err and "Traceback" not in captured.err


def test_once_on_ctrl_c_prints_partial_results_and_no_traceback(tmp_path, start_simulator):
    import os
    import signal
    import subprocess
    import sys
    import time

    sim = start_simulator(datasets=5, latency=5.0)
    path = write_config(tmp_path, sim, [EXAMPLE_DATASET_ID])
    env = {**os.environ, "META_ACCESS_TOKEN": TOKEN}
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", "once", "--config", str(path), "--format", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        # A background job of a non-interactive shell (CI's, nohup's) starts with SIGINT ignored, and Python
        # then keeps it ignored: give the child the default a terminal gives it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any("GET" in line or "POST" in line for line in sim.requests):
            time.sleep(0.05)  # the request is under way
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130
    assert "Traceback" not in err and "interrupted" in err
    assert json.loads(out)["datasets"][0]["dataset_id"] == EXAMPLE_DATASET_ID


def test_simulate_says_what_a_user_needs_and_a_busy_port_in_one_line(capsys):
    import socket
    import subprocess
    import sys

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["simulate", "--listen", f"127.0.0.1:{port}", "--datasets", "3"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"cannot serve the simulator on 127.0.0.1:{port}" in err[0]
        assert "Traceback" not in err[0]
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", "simulate", "--listen", "127.0.0.1:0", "--datasets", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        lines = [proc.stdout.readline() for _ in range(6)]
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    text = "".join(lines)
    assert "token (any of): sim-token" in text and EXAMPLE_DATASET_ID in text
    assert "a business for discovery (owned_pixels): 9" in text and "an agency business (client_pixels): 8" in text


def test_base_url_flag_is_checked_like_the_yaml_key(capsys, token):
    assert main(["once", "--dataset-id", "1", "--graph-api.base-url", "graph.facebook.com"]) == 2
    assert (
        "--graph-api.base-url: expected an http(s) URL without query, got 'graph.facebook.com'"
        in capsys.readouterr().err
    )


def test_log_lines_and_the_progress_bar_never_share_a_terminal_line():
    import io
    import logging

    from exporter.cli.report import ProgressBar
    from exporter.common.logsetup import LineSafeHandler

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    screen = Terminal()
    handler = LineSafeHandler(screen)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("test.progress")
    logger.addHandler(handler)
    logger.propagate = False
    bar = ProgressBar(screen)
    try:
        bar(1, 4, 0)
        logger.warning("a warning in the middle of a cycle")
        bar(2, 4, 1)
        logger.warning("another")
        bar(4, 4, 1)
        logger.warning("after the cycle")
    finally:
        logger.removeHandler(handler)
        bar.finish()
    # What a terminal shows: a carriage return goes back to the start of the line
    shown = [line.rsplit("\r", 1)[-1] for line in screen.getvalue().split("\n")]
    assert "a warning in the middle of a cycle" in shown and "another" in shown and "after the cycle" in shown
    assert not any("fetched" in line and "warning" in line for line in shown)
    assert shown[-2:] == ["after the cycle", ""]  # the bar is not drawn again once finished


def test_help_shows_the_run_flags_and_every_command_has_a_description(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "--web.listen-address" in text and "--web.enable-lifecycle" in text and "--dataset-id" in text
    for command in ("run", "check-config", "once", "simulate", "demo", "healthcheck"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        _, _, rest = capsys.readouterr().out.partition("\n\n")
        assert len(rest.split("\n\n", 1)[0]) > 60, f"{command} has no description"


def test_once_table_summary_cuts_and_wide_characters():
    from exporter.cli.report import table, width
    from exporter.config.targets import Target
    from exporter.graph.parser import DatasetQuality, EventQuality
    from exporter.state.snapshot import DatasetState, Snapshot

    events = (
        EventQuality("購入完了", composite_score=3.1, coverage=40.0),
        EventQuality("Purchase", composite_score=8.0, coverage=90.0),
        EventQuality("A very long custom event name that goes on and on", composite_score=5.0),
    )
    states = (
        DatasetState(Target("1", name="Shop"), DatasetQuality(events), True, 1.0),
        DatasetState(Target("2", name="Other"), DatasetQuality((EventQuality("Lead", composite_score=6.0),)), True, 1.0),
        DatasetState(Target("3", name="Broken"), None, False, None, "auth", "Session expired (reason=auth, code=190/463, http=400)"),
    )  # fmt: skip
    text = table(Snapshot(generation=1, created=0, datasets=states))
    head = text.split("\n\n", 1)[0]
    assert "3 targets: 2 fetched, 1 failed" in head and "failures: 1 auth" in head
    assert head.index("dataset 1 — Shop") < head.index("dataset 2 — Other")  # worst EMQ first
    assert "FAILED (auth) Session expired\n" in text  # the reason is said once
    assert "A very long custom event name t…" in text
    rows = [line for line in text.splitlines() if line.startswith("  ") and ("%" in line or "EMQ" in line)]
    columns = {width(line[: line.index("3.1")]) for line in rows if "3.1" in line} | {
        width(line[: line.index("8.0")]) for line in rows if "8.0" in line
    }
    assert len(columns) == 1  # the EMQ column lines up after a wide (CJK) event name


def test_once_json_says_its_units(tmp_path, simulator, capsys, token):
    path = write_config(tmp_path, simulator, [EXAMPLE_DATASET_ID])
    main(["once", "--config", str(path), "--format", "json"])
    assert "0 to 100" in json.loads(capsys.readouterr().out)["units"]


def test_once_lists_the_worst_datasets_first_with_their_customer_and_json_carries_labels_and_business(
    tmp_path, simulator, capsys, token
):
    ids = simulator.world.dataset_ids[1:6]
    path = tmp_path / "config.yaml"
    path.write_text(
        f"graph_api: {{base_url: '{simulator.url}', timeout: 5s}}\ndatasets:\n"
        + "".join(f"  - {{id: '{d}', labels: {{customer: c{n}}}}}\n" for n, d in enumerate(ids))
    )
    assert main(["once", "--config", str(path), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)["datasets"]
    assert [d["labels"] for d in data] == [{"customer": f"c{n}"} for n in range(5)]
    assert all(d["business"]["id"] and d["business"]["name"].startswith("Simulated Business") for d in data)
    worst = {d["dataset_id"]: min((e["composite_score"] for e in d["events"] if e["composite_score"] is not None),
                                  default=None) for d in data}  # fmt: skip
    assert main(["once", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    titles = re.findall(r"^dataset (\d+) .*\(customer (c\d)\): ", out, re.MULTILINE)
    scored = sorted((w, i) for i, w in worst.items() if w is not None)
    assert [i for i, _ in titles[: len(scored)]] == [i for _, i in scored]  # worst first
    assert all(customer for _, customer in titles)


def test_a_config_that_watches_nothing_is_valid_but_said_to_watch_nothing(tmp_path, capsys, monkeypatch):
    """What the compose file and the ConfigMap ship: it used to pass, run and serve nothing without a word."""
    monkeypatch.setenv("META_ACCESS_TOKEN", "x" * 10)
    shipped = Path(__file__).parent.parent / "deploy" / "compose" / "config.yaml"
    path = tmp_path / "config.yaml"
    path.write_text(shipped.read_text().replace("/run/secrets/meta_access_token", str(tmp_path / "token")))
    (tmp_path / "token").write_text("a-token-of-ten")
    assert main(["check-config", str(path)]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "will watch nothing" in err and "business_id" in err
    path.write_text(path.read_text().replace('# discovery:\n#   - business_id: "123456789012345"',
                                             'discovery:\n  - business_id: "123456789012345"'))  # fmt: skip
    assert main(["check-config", str(path)]) == 0
    assert "warning" not in capsys.readouterr().err  # uncommented, the example needs nothing but the ID
