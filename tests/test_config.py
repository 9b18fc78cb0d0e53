from __future__ import annotations

import re
from pathlib import Path

import pytest

from exporter.config.settings import (
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


# ----- round 2 of the adversarial probe (issue 26) ----------------------------------------------------------------
ALIAS_BOMB = """
a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
datasets: [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


def test_a_yaml_alias_bomb_is_refused_before_anything_walks_it(tmp_path):
    """600 bytes of aliases expand to billions of values; the validator used to print one whole in its message
    (3 GB for check-config, 4 GB on a reload)."""
    path = tmp_path / "bomb.yaml"
    path.write_text(ALIAS_BOMB)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    (problem,) = err.value.problems
    assert "aliases expand the document past" in problem and len(problem) < 300


def test_an_error_quotes_at_most_a_short_prefix_of_a_value(tmp_path):
    path = tmp_path / "long.yaml"
    path.write_text('collection:\n  interval: "' + "9" * 100_000 + 'x"\n? "' + "k" * 50_000 + '"\n: 1\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.problems and all(len(p) < 400 for p in err.value.problems)
    assert any("characters)" in p for p in err.value.problems)


@pytest.mark.parametrize("ident", ["\uff11\uff12\uff13", "\u0661\u0662\u0663", "\u00b2\u00b3", "12 3"])
def test_only_ascii_digits_are_dataset_ids(tmp_path, ident):
    path = tmp_path / "digits.yaml"
    path.write_text(f'datasets: [{{id: "{ident}"}}]\ndiscovery: [{{business_id: "{ident}"}}]\n', "utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert len([p for p in err.value.problems if "of digits" in p]) == 2


def test_an_unquoted_id_with_a_leading_zero_is_refused_not_read_as_octal(tmp_path):
    """YAML 1.1 reads 01234567 as the octal number 342391: the exporter would have watched dataset 342391."""
    path = tmp_path / "octal.yaml"
    path.write_text("datasets:\n  - id: 01234567\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    (problem,) = err.value.problems
    assert "line 2" in problem and "octal" in problem and "quote it" in problem
    path.write_text("datasets:\n  - id: '01234567'\n")
    assert load_config(path).datasets[0].id == "01234567"


def test_limits_take_a_byte_budget_as_a_size(tmp_path):
    path = tmp_path / "limits.yaml"
    path.write_text("limits: {max_bytes: 64MiB}\n")
    assert load_config(path).limits.max_bytes == 64 * 1024 * 1024
    path.write_text("limits: {max_bytes: lots}\n")
    with pytest.raises(ConfigError):
        load_config(path)
