"""--web.config.file: TLS, basic auth with bcrypt, mutual TLS, minimum version, reload, and bad files."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import bcrypt
import httpx
import pytest

from exporter.config.settings import ConfigError
from exporter.state.snapshot import Snapshot
from exporter.web.server import WebServer
from exporter.web.webconfig import load_web_config
from tests.conftest import TOKEN, free_port

PASSWORD = "correct horse battery staple"


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("certs")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "1", "-subj", "/CN=test CA", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name in ("server", "client"):
        openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.crt", "-days", "1", "-extfile", "san.ext", cwd=d)  # fmt: skip
    return d


def web_config(directory: Path, text: str) -> str:
    path = directory / "web.yml"
    path.write_text(text)
    return str(path)


class App:
    snapshot = Snapshot(generation=1, created=0, graph_api_version="v25.0", ready=True)

    @staticmethod
    def reload():
        return True, "reloaded"


@pytest.fixture
def serve():
    servers = []

    def start(path: str) -> str:
        server = WebServer(App(), "127.0.0.1", 0, security=load_web_config(path))
        server.start()
        servers.append(server)
        return f"127.0.0.1:{server.address[1]}"

    yield start
    for server in servers:
        server.stop()


def trusting(certs: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certs / "ca.crt"))


def hashed(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()


def test_tls_works_and_plain_http_is_refused(certs, serve):
    address = serve(web_config(certs, "tls_server_config: {cert_file: server.crt, key_file: server.key}\n"))
    response = httpx.get(f"https://{address}/metrics", verify=trusting(certs))
    assert response.status_code == 200 and b"meta_dataset_quality_build_info" in response.content
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://{address}/metrics", timeout=5)


def test_basic_auth(certs, serve):
    address = serve(web_config(certs, f"basic_auth_users:\n  alice: '{hashed(PASSWORD)}'\n"))
    for auth in (None, ("alice", "wrong"), ("bob", PASSWORD)):
        response = httpx.get(f"http://{address}/metrics", auth=auth)
        assert response.status_code == 401 and b"meta_dataset_quality" not in response.content
        assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert httpx.get(f"http://{address}/metrics", auth=("alice", PASSWORD)).status_code == 200
    assert httpx.get(f"http://{address}/-/healthy", auth=("alice", PASSWORD)).status_code == 200
    assert httpx.post(f"http://{address}/-/reload").status_code == 401  # reload is protected too


def test_mutual_tls(certs, serve):
    config = (
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
        "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n"
    )
    address = serve(web_config(certs, config))
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"https://{address}/metrics", verify=trusting(certs), timeout=5)
    context = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    context.load_cert_chain(certs / "client.crt", certs / "client.key")
    assert httpx.get(f"https://{address}/metrics", verify=context).status_code == 200


def test_minimum_tls_version(certs, serve):
    config = "tls_server_config: {cert_file: server.crt, key_file: server.key, min_version: TLS13}\n"
    address = serve(web_config(certs, config))
    old = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"https://{address}/metrics", verify=old, timeout=5)
    assert httpx.get(f"https://{address}/metrics", verify=trusting(certs)).status_code == 200


def test_maximum_tls_version_cipher_suites_and_curve_are_honoured(certs, serve):
    config = (
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  max_version: TLS12\n"
        "  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384]\n  curve_preferences: [CurveP384]\n"
    )
    address = serve(web_config(certs, config))
    host, port = address.split(":")
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        trusting(certs).wrap_socket(raw, server_hostname=host) as tls,
    ):
        assert tls.version() == "TLSv1.2"  # the client offered 1.3; max_version held it back
        assert tls.cipher()[0] == "ECDHE-ECDSA-AES256-GCM-SHA384"
    p256_only = trusting(certs)
    p256_only.maximum_version = ssl.TLSVersion.TLSv1_2
    p256_only.set_ecdh_curve("prime256v1")  # a client that offers only P-256 finds no common curve
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"https://{address}/metrics", verify=p256_only, timeout=5)
    other_suite = trusting(certs)
    other_suite.maximum_version = ssl.TLSVersion.TLSv1_2
    other_suite.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"https://{address}/metrics", verify=other_suite, timeout=5)


def test_security_headers_are_sent(certs, serve):
    address = serve(web_config(certs, "http_server_config:\n  headers:\n    X-Frame-Options: deny\n"))
    for path in ("/metrics", "/", "/-/healthy", "/nope"):
        assert httpx.get(f"http://{address}{path}").headers["X-Frame-Options"] == "deny"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tls_server_config: {cert_file: nope.crt, key_file: nope.key}\n", "cannot load the certificate"),
        ("tls_server_config: {cert_file: server.crt}\n", "tls_server_config.key_file: required"),
        ("tls_server_config: {cert_file: server.crt, key_file: server.key, client_auth_type: Maybe}\n", "unknown value 'Maybe'"),
        ("tls_server_config: {cert_file: server.crt, key_file: server.key, min_version: TLS14}\n", "unknown value 'TLS14'"),
        ("tls_server_config: {cert_file: server.crt, key_file: server.key, client_auth_type: RequireAndVerifyClientCert}\n",
         "client_ca_file: required"),
        ("basic_auth_users: {alice: hunter2}\n", "basic_auth_users.alice: expected a bcrypt hash"),
        ("basic_auth_users: {alice: '$2y$10$tooshort'}\n", "basic_auth_users.alice: not a whole bcrypt hash"),
        ("basic_auth_users: {alice: '$2y$99$" + "a" * 53 + "'}\n", "basic_auth_users.alice: not a whole bcrypt hash"),
        ("basic_auth: {}\n", "basic_auth: unknown key"),
        ("tls_server_config: {cert_file: server.crt, key_file: server.key, max_version: TLS12, min_version: TLS13}\n",
         "max_version: TLS12 is below min_version TLS13"),
        ("tls_server_config: {cert_file: server.crt, key_file: server.key, cipher_suites: [TLS_FANCY]}\n",
         "cipher_suites: unknown value 'TLS_FANCY'"),
        ("tls_server_config: {cert_file: server.crt, key_file: server.key, curve_preferences: [X25519, CurveP256]}\n",
         "curve_preferences: list one curve"),
        ("tls_server_config: {cert_file: server.crt, key_file: server.key, curve_preferences: [Curve25519]}\n",
         "unknown value 'Curve25519'"),
        ("http_server_config: {http2: true}\n", "http_server_config.http2: HTTP/2 is not served"),
        ("http_server_config: {headers: {X-Powered-By: me}}\n", "headers.X-Powered-By: not allowed"),
        ("http_server_config: {timeouts: 1}\n", "http_server_config.timeouts: unknown key"),
    ],
)  # fmt: skip
def test_bad_web_configs_name_the_file_key_and_problem(certs, text, message):
    path = web_config(certs, text)
    with pytest.raises(ConfigError) as err:
        load_web_config(path)
    assert path in str(err.value) and message in str(err.value)


def test_web_config_is_reloaded_with_the_rest(simulator, tmp_path):
    path = Path(web_config(tmp_path, f"basic_auth_users:\n  alice: '{hashed(PASSWORD)}'\n"))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", "--dataset-id", "123456789012345", "--graph-api.base-url", simulator.url,
         "--web.listen-address", f"127.0.0.1:{port}", "--web.config.file", str(path), "--web.enable-lifecycle"],
        env={**os.environ, "META_ACCESS_TOKEN": TOKEN}, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/-/healthy", auth=("alice", PASSWORD)).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        path.write_text(f"basic_auth_users:\n  alice: '{hashed('new password')}'\n")
        assert httpx.post(url + "/-/reload", auth=("alice", PASSWORD)).status_code == 200
        assert httpx.get(url + "/metrics", auth=("alice", PASSWORD)).status_code == 401
        assert httpx.get(url + "/metrics", auth=("alice", "new password")).status_code == 200
        path.write_text("basic_auth_users: {alice: plain-text}\n")  # refused: the old users stay
        assert httpx.post(url + "/-/reload", auth=("alice", "new password")).status_code == 500
        assert httpx.get(url + "/metrics", auth=("alice", "new password")).status_code == 200
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_exporter_refuses_to_start_with_a_bad_web_config(tmp_path):
    path = web_config(tmp_path, "basic_auth_users: {alice: plain-text}\n")
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "--dataset-id", "1", "--web.config.file", path],
        env={**os.environ, "META_ACCESS_TOKEN": TOKEN}, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2 and "basic_auth_users.alice: expected a bcrypt hash" in result.stderr


def test_unknown_users_cost_a_bcrypt_check_too_and_checks_run_one_at_a_time(certs, serve, monkeypatch):
    """Timing must not tell which user names exist, and wrong passwords can keep at most one core busy."""
    import threading as threads

    real = bcrypt.checkpw
    running, most, checked = [0], [0], []
    lock = threads.Lock()

    def counting(password, hashed):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            checked.append(hashed)
            return real(password, hashed)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(bcrypt, "checkpw", counting)
    address = serve(web_config(certs, f"basic_auth_users:\n  alice: '{hashed(PASSWORD)}'\n"))
    assert httpx.get(f"http://{address}/metrics", auth=("mallory", "guess")).status_code == 401
    assert len(checked) == 1  # the unknown user was checked against the decoy, like a known one
    answers = []

    def attempt(n):
        answers.append(httpx.get(f"http://{address}/metrics", auth=("alice", f"wrong {n}"), timeout=30).status_code)

    workers = [threads.Thread(target=attempt, args=(n,)) for n in range(30)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert most[0] == 1  # one bcrypt at a time: failing logins take one core at most
    assert set(answers) <= {401, 429} and len(answers) == 30
    before = len(checked)
    for _ in range(3):
        assert httpx.get(f"http://{address}/metrics", auth=("alice", PASSWORD)).status_code == 200
    assert len(checked) == before + 1  # verified once, then remembered


def test_the_healthcheck_command_finds_plain_tls_and_basic_auth_listeners(certs, serve, tmp_path, capsys):
    from exporter.cli.main import main

    plain = serve(web_config(tmp_path, ""))
    tls = serve(web_config(certs, "tls_server_config: {cert_file: server.crt, key_file: server.key}\n"))
    auth = serve(web_config(certs, f"basic_auth_users:\n  alice: '{hashed(PASSWORD)}'\n"))
    assert main(["healthcheck", "--web.listen-address", plain]) == 0
    assert f"http://{plain}/-/healthy: 200" in capsys.readouterr().out
    assert main(["healthcheck", "--web.listen-address", tls]) == 0
    assert f"https://{tls}/-/healthy: 200" in capsys.readouterr().out
    assert main(["healthcheck", "--web.listen-address", auth]) == 0
    assert "401" in capsys.readouterr().out
    config = tmp_path / "config.yaml"
    config.write_text(f"server: {{listen_address: '0.0.0.0:{plain.rsplit(':', 1)[1]}'}}\ndatasets: [{{id: '1'}}]\n")
    assert main(["healthcheck", "--config", str(config)]) == 0  # the wildcard host is asked on loopback
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{unused.getsockname()[1]}"
    assert main(["healthcheck", "--web.listen-address", closed]) == 1
    assert "unhealthy" in capsys.readouterr().err


def test_a_large_answer_over_tls_is_sent_by_the_event_loop(certs, monkeypatch):
    import random

    from exporter.web import httpd

    def never(*args):
        raise AssertionError("a TLS answer must not bypass the TLS layer")

    monkeypatch.setattr(httpd, "_send_blocking", never)
    chunks = [random.Random(8).randbytes(40_000) for _ in range(100)]  # 4 MB, past BLOCKING_WRITE

    async def handler(request):
        return httpd.Response(200, chunks)

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs / "server.crt", certs / "server.key")
    server = httpd.HttpServer(handler, "127.0.0.1", 0, tls=lambda: context)
    server.start()
    try:
        response = httpx.get(f"https://127.0.0.1:{server.address[1]}/", verify=trusting(certs), timeout=10)
        assert response.status_code == 200 and response.content == b"".join(chunks)
    finally:
        server.stop()


# ----- round 2 of the adversarial probe (issue 26) ----------------------------------------------------------------
def test_tls_handshakes_that_never_complete_count_as_connections_and_are_cut_off(certs):
    """A TLS connection counts from its first byte: handshakes that never finish are held to the connection
    limit (the longest waiting evicted first) and cut off after handshake_timeout, not header_timeout."""
    from exporter.web.httpd import Limits

    security = load_web_config(
        web_config(certs, "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n")
    )
    limits = Limits(max_connections=20, handshake_timeout=1.0, header_timeout=30)
    server = WebServer(App(), "127.0.0.1", 0, security=security, limits=limits)
    server.start()
    raw = []
    try:
        for _ in range(60):  # three times the limit, each sends nothing (no ClientHello)
            raw.append(socket.create_connection(server.address, timeout=10))
        time.sleep(0.3)
        assert server._server.active <= 20
        answer = httpx.get(f"https://127.0.0.1:{server.address[1]}/-/healthy", verify=trusting(certs), timeout=10)
        assert answer.status_code == 200  # a scraper gets in: a pending handshake made room
        deadline = time.monotonic() + 10
        while server._server.active and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server._server.active == 0  # every silent handshake cut off after handshake_timeout
        survivors = 0
        for sock in raw:
            sock.settimeout(0.5)
            try:
                survivors += sock.recv(1) != b""
            except TimeoutError:
                survivors += 1
            except OSError:
                pass
        assert survivors == 0
    finally:
        for sock in raw:
            sock.close()
        server.stop()


def test_a_flood_of_wrong_passwords_from_one_address_never_locks_out_another(certs, serve):
    """Password checks are bounded per source address: a flood from one address fills its own share, and a user
    elsewhere who has never logged in is checked at once (it used to get 429 for as long as the flood lasted)."""
    import threading as threads

    costly = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=10)).decode()  # htpasswd -B's cost
    address = serve(web_config(certs, f"basic_auth_users:\n  alice: '{costly}'\n"))
    stop = threads.Event()
    refused = []

    def flood():
        with httpx.Client(timeout=30) as client:  # from 127.0.0.1
            while not stop.is_set():
                refused.append(client.get(f"http://{address}/metrics", auth=("alice", "wrong")).status_code)

    workers = [threads.Thread(target=flood) for _ in range(16)]
    for worker in workers:
        worker.start()
    try:
        time.sleep(0.5)
        elsewhere = httpx.HTTPTransport(local_address="127.0.0.2")  # another source address on loopback
        with httpx.Client(transport=elsewhere, timeout=30) as client:
            answers = [client.get(f"http://{address}/metrics", auth=("alice", PASSWORD)).status_code]
            answers += [client.get(f"http://{address}/metrics", auth=("alice", PASSWORD)).status_code]
        assert answers == [200, 200]
    finally:
        stop.set()
        for worker in workers:
            worker.join(60)
    assert 429 in refused  # the flood itself was held to its share


def test_a_password_over_72_bytes_is_compared_on_its_first_72_as_exporter_toolkit_does(certs, serve):
    """bcrypt reads 72 bytes; Go's, which Prometheus's exporter-toolkit uses, compares those and ignores the
    rest. bcrypt 5 for Python raises instead: each such login was a 500 and a traceback."""
    long_password = "p" * 100
    stored = bcrypt.hashpw(long_password.encode()[:72], bcrypt.gensalt(rounds=4)).decode()  # as htpasswd writes it
    address = serve(web_config(certs, f"basic_auth_users:\n  alice: '{stored}'\n"))
    assert httpx.get(f"http://{address}/metrics", auth=("alice", long_password)).status_code == 200
    assert httpx.get(f"http://{address}/metrics", auth=("alice", "q" * 100)).status_code == 401


def test_passwords_that_differ_past_72_bytes_are_remembered_once():
    """bcrypt compares the first 72 bytes, so a user who knows the password could send it with a different tail
    every time: each was remembered apart, without a bound."""
    from exporter.web.webconfig import WebSecurity

    password = "p" * 72
    security = WebSecurity(users={"alice": bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4))})
    for n in range(50):
        assert security.verify("alice", f"{password}{n}")
    assert len(security._verified) == 1
    assert security.remembered("alice", password + "anything")
    assert not security.remembered("alice", "p" * 71)
