from __future__ import annotations

import re
from pathlib import Path

import pytest

from exporter.config import (
    BLOCKS,
    Config,
    ConfigError,
    load_config,
    parse_duration,
    resolve_secrets,
)

CONFIGS = Path(__file__).parent / "fixtures" / "config"
OK = sorted(CONFIGS.glob("*.ok.yaml"))
BAD = sorted(CONFIGS.glob("*.bad.yaml"))


def expectations(path: Path) -> list[str]:
    return [m.group(1) for m in re.finditer(r"^# expect: (.+)$", path.read_text("utf-8"), re.MULTILINE)]


@pytest.mark.parametrize("path", OK, ids=lambda p: p.name)
def test_ok_fixtures_load(path):
    assert isinstance(load_config(path), Config)


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.name)
def test_bad_fixtures_report_every_expected_problem(path):
    expected = expectations(path)
    assert expected, f"{path.name} must state its expected messages"
    with pytest.raises(ConfigError) as err:
        load_config(path)
    problems = err.value.problems
    for line in expected:
        wanted = line.replace(path.name, str(path), 1)
        assert any(p.startswith(wanted) for p in problems), f"missing {wanted!r} in {problems}"
    assert len(problems) == len(expected), problems  # nothing unexpected, nothing reported twice


def test_full_config_values():
    config = load_config(CONFIGS / "full.ok.yaml")
    assert config.graph_api.timeout == 30 and config.graph_api.app_id == "1234"
    assert config.collection.interval == 3600 and config.collection.stale_after == 3 * 3600
    assert config.collection.sources == ("web", "offline") and config.collection.blocks == BLOCKS
    assert [(d.id, d.agent_name, d.credential) for d in config.datasets] == [
        ("123456789012345", "acmeplatform", "default"),
        ("123456789012345", "", "default"),
        ("222333444555666", "", "client_b"),
    ]
    assert config.datasets[0].labels == (("customer", "acme"), ("team", "emea"))
    assert config.label_names() == ("customer", "team")


def test_defaults():
    config = load_config(CONFIGS / "minimal.ok.yaml")
    assert config.graph_api.base_url == "https://graph.facebook.com" and config.graph_api.version == "v27.0"
    assert config.collection.interval == 3600 and config.collection.concurrency == 4
    assert config.server.listen_address == "0.0.0.0:10070"
    assert config.credentials["default"].token_env == "META_ACCESS_TOKEN"


def test_missing_file_names_it():
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read the file"):
        load_config("nope.yaml")


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("15m", 900), ("1h", 3600), ("1h30m", 5400), ("500ms", 0.5), ("2d", 172800)]
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "1", "h", "1 h", "1x", "-1s", 60, None])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_secrets_from_env_and_file(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("file-token\n")
    secret_file = tmp_path / "secret"
    secret_file.write_text("app-secret")
    path = tmp_path / "c.yaml"
    path.write_text(
        f"graph_api: {{app_secret_file: {secret_file}}}\n"
        f"credentials: {{default: {{token_env: TOK}}, b: {{token_file: {token_file}}}}}\n"
    )
    secrets = resolve_secrets(load_config(path), {"TOK": "env-token"})
    assert secrets.tokens == {"default": "env-token", "b": "file-token"}
    assert secrets.app_secret == "app-secret"
    assert "env-token" not in repr(secrets) and "app-secret" not in repr(secrets)


def test_missing_secrets_are_all_reported(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "graph_api: {app_secret_env: SECRET}\n"
        f"credentials: {{default: {{token_env: TOK}}, b: {{token_file: {tmp_path}/missing}}}}\n"
    )
    with pytest.raises(ConfigError) as err:
        resolve_secrets(load_config(path), {"TOK": "  "})
    text = str(err.value)
    assert "credentials.default: environment variable TOK is not set or empty" in text
    assert "credentials.b: cannot read" in text and "graph_api: environment variable SECRET" in text


def test_secret_files_lose_byte_order_marks_and_whitespace_and_must_be_ascii(tmp_path):
    bom = tmp_path / "bom"
    bom.write_bytes("\ufefffile-token \r\n".encode())  # as Windows editors save it
    odd = tmp_path / "odd"
    odd.write_text("tökén\n")
    path = tmp_path / "c.yaml"
    path.write_text(
        f"credentials: {{default: {{token_file: {bom}}}, b: {{token_file: {odd}}}, c: {{token_env: C}}}}\n"
        "datasets: [{id: '1'}, {id: '2', credential: b}, {id: '3', credential: c}]\n"
    )
    with pytest.raises(ConfigError) as err:
        resolve_secrets(load_config(path), {"C": "ok\u200btoken"})
    text = str(err.value)
    assert f"credentials.b: {odd} holds characters a token or secret never has" in text
    assert "credentials.c: environment variable C holds characters" in text
    assert "credentials.default" not in text and "tökén" not in text
    path.write_text(f"credentials: {{default: {{token_file: {bom}}}}}\ndatasets: [{{id: '1'}}]\n")
    assert resolve_secrets(load_config(path), {}).tokens == {"default": "file-token"}


def test_a_credential_used_only_by_discovery_is_resolved_at_start(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "credentials: {default: {token_env: TOK}, agency: {token_env: AGENCY}}\n"
        "datasets: [{id: '1'}]\n"
        "discovery: [{business_id: '42', credential: agency}]\n"
    )
    with pytest.raises(ConfigError) as err:
        resolve_secrets(load_config(path), {"TOK": "t"})
    assert "credentials.agency: environment variable AGENCY is not set or empty" in str(err.value)
    assert resolve_secrets(load_config(path), {"TOK": "t", "AGENCY": "a"}).tokens == {"default": "t", "agency": "a"}


def test_config_and_secret_files_must_be_small_regular_files(tmp_path):
    import os

    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    huge = tmp_path / "huge.yaml"
    huge.write_text("# padding\n" * 200_000)  # 2 MB
    for path, problem in (
        (fifo, "not a regular file (a FIFO)"),  # would block check-config for ever
        ("/dev/zero", "not a regular file (a device)"),  # would fill memory
        (huge, "larger than 1024 KiB"),
    ):
        with pytest.raises(ConfigError) as err:
            load_config(path)
        assert f"{path}: cannot read the file: {problem}" in str(err.value)
    config = tmp_path / "c.yaml"
    config.write_text(f"credentials: {{default: {{token_file: {fifo}}}, b: {{token_file: /dev/zero}}}}\n")
    with pytest.raises(ConfigError) as err:
        resolve_secrets(load_config(config), {})
    assert "not a regular file (a FIFO)" in str(err.value) and "/dev/zero: not a regular file" in str(err.value)
