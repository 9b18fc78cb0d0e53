"""A canary token and app secret through every path; they must appear nowhere the exporter writes."""

from __future__ import annotations

import io
import logging
import os
import signal
import subprocess
import sys

import pytest

from exporter.common.logsetup import JsonFormatter, RedactingFormatter, register_secrets
from exporter.simulator import EXAMPLE_DATASET_ID
from tests.conftest import free_port, http, wait_for

CANARY_TOKEN = "CANARY-TOKEN-7f3a9c1d"
CANARY_REJECTED = "CANARY-REJECTED-0e55aa21"
CANARY_SECRET = "CANARY-SECRET-41b2e8c9"
CANARIES = (CANARY_TOKEN, CANARY_REJECTED, CANARY_SECRET)


def assert_clean(where: str, text: str) -> None:
    for canary in CANARIES:
        assert canary not in text, f"{canary} leaked into {where}"


@pytest.mark.slow
def test_canaries_appear_nowhere(start_simulator, tmp_path):
    sim = start_simulator(datasets=12, tokens=(CANARY_TOKEN,), app_secret=CANARY_SECRET, require_proof=True)
    ids = sim.world.dataset_ids
    sim.set_fault(ids[1], "not_json")
    sim.set_fault(ids[2], "permission")
    sim.set_fault(ids[3], "transient_2")
    config = tmp_path / "config.yaml"
    good = (
        f"graph_api: {{base_url: '{sim.url}', timeout: 3s, max_retries: 1, app_id: '{sim.settings.app_id}',"
        " app_secret_env: APP_SECRET}\n"
        "credentials: {default: {token_env: TOKEN_A}, client_b: {token_env: TOKEN_B}}\n"
        "collection: {interval: 1s}\n"
        "datasets:\n"
        + "".join(f"  - {{id: '{i}'}}\n" for i in ids[:6])
        + f"  - {{id: '{ids[7]}', credential: client_b}}\n"
        + f"  - {{id: '{EXAMPLE_DATASET_ID}', agent_name: acmeplatform}}\n"
    )
    config.write_text(good)
    port = free_port()
    log_path = tmp_path / "log.txt"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", "--log-level", "debug", "run", "--config", str(config),
             "--web.listen-address", f"127.0.0.1:{port}", "--web.enable-lifecycle"],
            env={**os.environ, "TOKEN_A": CANARY_TOKEN, "TOKEN_B": CANARY_REJECTED, "APP_SECRET": CANARY_SECRET},
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:

            def cycles_done(n):
                try:
                    text = http("GET", url + "/metrics")[2].decode()
                except OSError:
                    return False
                return any(line.startswith(f"meta_dataset_quality_cycles_total {n}") for line in text.splitlines())

            wait_for(lambda: cycles_done(2), what="two cycles")
            paths = ("/metrics", "/", "/status", "/status?format=json", "/-/ready", "/-/reload")
            pages = {path: http("GET", url + path)[2].decode() for path in paths}
            assert "auth" in pages["/status"] and "fbtrace_id" in pages["/status?format=json"]  # failures shown
            assert "meta_dataset_quality_token_valid" in pages["/metrics"]  # the token check ran
            assert 'reason="auth"' in pages["/metrics"]  # the rejected token's path ran
            config.write_text(good.replace("timeout: 3s", f"timeout: {CANARY_TOKEN}"))  # a bad value quoting a secret
            _, _, refused = http("POST", url + "/-/reload", data=b"")
            config.write_text(good.replace("TOKEN_B", "MISSING_VARIABLE"))
            _, _, missing = http("POST", url + "/-/reload", data=b"")
            assert b"MISSING_VARIABLE is not set" in missing
            proc.send_signal(signal.SIGHUP)
            wait_for(lambda: cycles_done(3), what="a cycle after SIGHUP")
            pages["/metrics#2"] = http("GET", url + "/metrics", headers={"Accept": "application/openmetrics-text"})[
                2
            ].decode()
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(10) == 0
    for where, text in pages.items():
        assert_clean(where, text)
    assert b"graph_api.timeout: expected a duration" in refused and b"[REDACTED]" in refused
    assert_clean("the first refused reload's message", refused.decode())
    assert_clean("the second refused reload's message", missing.decode())
    logs = log_path.read_text()
    assert "DEBUG" in logs and "fetch failed" in logs  # debug logging and the error paths did run
    assert_clean("the logs", logs)
    urls = [line for line in sim.requests if line.startswith(("GET ", "POST "))]
    assert urls
    assert_clean("the URLs the simulator saw", "\n".join(urls))


def test_exceptions_and_tracebacks_are_redacted():
    register_secrets([CANARY_TOKEN, CANARY_SECRET])
    for formatter in (RedactingFormatter("%(message)s"), JsonFormatter()):
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.setFormatter(formatter)
        logger = logging.getLogger("canary-test")
        logger.addHandler(handler)
        try:
            raise RuntimeError(f"request with token {CANARY_TOKEN} and secret {CANARY_SECRET} failed")
        except RuntimeError:
            logger.exception("unexpected error for %s", CANARY_TOKEN)
        finally:
            logger.removeHandler(handler)
        output = stream.getvalue()
        assert "RuntimeError" in output and "[REDACTED]" in output
        assert_clean("a logged exception", output)
