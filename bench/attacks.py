"""The attacks of issue 26 against a running exporter, with a legitimate scraper alongside.

    .venv/bin/python bench/attacks.py                        # every attack, a table (bench/README.md)
    .venv/bin/python bench/attacks.py --only stalled_readers,connect_flood --json

The exporter runs as its own process (TLS and basic auth through --web.config.file, a limit of 8,192 open files,
or --open-files) against the simulator (200 datasets, a 10 s interval; discovery from a business whose `paging.next`
loops and one whose pages never end). A legitimate scraper, from an address of its own (127.0.0.2), asks for
/metrics with gzip every 0.25 s throughout. For each attack, while it lasts and for a settling time after: the
slowest legitimate scrape and the ones that failed, whether the datasets the attack does not aim at kept their
data, and the exporter's resident memory before, at the peak and after.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import resource
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import bcrypt
import httpx

TOKEN = "attack-token"
PASSWORD = "correct horse battery staple"
DATASETS = 200
SETTLE = 30.0  # seconds after an attack before memory is read again
WARMUP = 45.0  # seconds before the first attack: a few cycles, so that memory has settled
ALIAS_BOMB = (
    "a: &a [x, x, x, x, x, x, x, x, x]\n"
    + "".join(f"{b}: &{b} [{', '.join(['*' + a] * 9)}]\n" for a, b in zip("abcdefg", "bcdefgh", strict=True))
    + "datasets: [*h, *h, *h, *h, *h, *h, *h, *h, *h]\n"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def control(url: str, path: str, body: dict) -> None:
    request = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST")
    urllib.request.urlopen(request, timeout=10).read()


@dataclass
class Stand:
    """The simulator, the exporter and what the attacks need to reach them."""

    directory: Path
    sim_url: str
    port: int
    exporter: subprocess.Popen[bytes]
    sim: subprocess.Popen[bytes]
    ids: list[str]
    config_path: Path
    context: ssl.SSLContext
    scrapes: list[tuple[float, float, bool]] = field(default_factory=list)  # (when, seconds, ok)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def fetched(self) -> set[str]:
        """Datasets whose latest fetch succeeded, as /metrics says."""
        with httpx.Client(verify=self.context, auth=("alice", PASSWORD), timeout=60) as client:
            text = client.get(self.url + "/metrics").text
        return {
            line.split('dataset_id="', 1)[1].split('"', 1)[0]
            for line in text.splitlines()
            if line.startswith("meta_dataset_quality_fetch_success{") and line.endswith(" 1.0")
        }


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def start(directory: Path, open_files: int) -> Stand:
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "1", "-subj", "/CN=CA", cwd=directory)
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=server", cwd=directory)
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.crt", "-days", "1", "-extfile", "san.ext", cwd=directory)  # fmt: skip
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=10)).decode()
    web = directory / "web.yml"
    web.write_text(f"tls_server_config: {{cert_file: server.crt, key_file: server.key}}\n"
                   f"basic_auth_users: {{alice: '{hashed}'}}\n")  # fmt: skip
    sim_port, port = free_port(), free_port()
    sim = subprocess.Popen(
        [sys.executable, "-m", "exporter", "--log-level", "error", "simulate", "--listen", f"127.0.0.1:{sim_port}",
         "--datasets", str(DATASETS), "--token", TOKEN, "--latency", "0.02", "--slow-seconds", "6"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    sim_url = f"http://127.0.0.1:{sim_port}"
    for _ in range(200):
        try:
            state = json.load(urllib.request.urlopen(sim_url + "/_sim/state", timeout=2))
            break
        except OSError:
            time.sleep(0.1)
    del state
    ids = ["123456789012345"] + [str(100_000_000_000_000 + 100_000 + i) for i in range(DATASETS)]
    config = directory / "config.yaml"
    config.write_text(json.dumps(config_text(sim_url, ids)))
    control(sim_url, "/_sim/fault", {"dataset_id": "900000000001000", "fault": "paging_loop"})
    control(sim_url, "/_sim/fault", {"dataset_id": "900000000002000", "fault": "endless_pages"})

    def small_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

    with open(directory / "exporter.log", "wb") as log:  # the child keeps its own descriptor
        exporter = subprocess.Popen(
            [sys.executable, "-m", "exporter", "--log-level", "warning", "run", "--config", str(config),
             "--web.listen-address", f"127.0.0.1:{port}", "--web.config.file", str(web)],
            env={**os.environ, "META_ACCESS_TOKEN": TOKEN}, stderr=log, preexec_fn=small_limit,
        )  # fmt: skip
    context = ssl.create_default_context(cafile=str(directory / "ca.crt"))
    stand = Stand(directory, sim_url, port, exporter, sim, ids, config, context)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            answer = httpx.get(stand.url + "/-/ready", verify=context, auth=("alice", PASSWORD), timeout=5)
            if answer.status_code == 200:
                return stand
        time.sleep(0.2)
    raise RuntimeError("the exporter never became ready")


def config_text(sim_url: str, ids: list[str]) -> dict:
    return {
        "graph_api": {"base_url": sim_url, "timeout": "5s", "max_retries": 1},
        "collection": {"interval": "10s", "concurrency": 4, "metadata_interval": "10s"},
        "datasets": [{"id": i} for i in ids],
        "discovery": [
            {"business_id": "900000000001000", "edges": ["owned_pixels"], "refresh": "10s"},
            {"business_id": "900000000002000", "edges": ["owned_pixels"], "refresh": "10s", "max_pixels": 300},
        ],
    }


def scraper(stand: Stand, stop: threading.Event) -> None:
    """The legitimate scraper: gzip /metrics every 0.25 s from 127.0.0.2, each answer read whole."""
    transport = httpx.HTTPTransport(verify=stand.context, local_address="127.0.0.2")
    with httpx.Client(transport=transport, auth=("alice", PASSWORD), timeout=30,
                      headers={"Accept-Encoding": "gzip"}) as client:  # fmt: skip
        while not stop.is_set():
            started = time.perf_counter()
            try:
                ok = client.get(stand.url + "/metrics").status_code == 200
            except httpx.HTTPError:
                ok = False
            stand.scrapes.append((time.monotonic(), time.perf_counter() - started, ok))
            stop.wait(0.25)


# ----- the attacks: each runs for a bounded time and returns how many requests or connections it made ------------
def tls_handshakes(stand: Stand) -> int:
    held = []
    for _ in range(3000):
        with contextlib.suppress(OSError):
            held.append(socket.create_connection(("127.0.0.1", stand.port), timeout=5))
    time.sleep(10)
    for sock in held:
        sock.close()
    return len(held)


def nothing(stand: Stand) -> int:
    """No attack for as long as stalled_readers lasts: what the exporter's memory does meanwhile on its own."""
    del stand
    time.sleep(15)
    return 0


def plain_scrapes(stand: Stand) -> int:
    """Four ordinary scrapes of the plain text format (the stalled readers ask for it): what serving it costs
    once, apart from what the attack costs."""
    with httpx.Client(verify=stand.context, auth=("alice", PASSWORD), timeout=30,
                      headers={"Accept-Encoding": "identity"}) as client:  # fmt: skip
        for _ in range(4):
            client.get(stand.url + "/metrics").raise_for_status()
    return 4


def stalled_readers(stand: Stand) -> int:
    held = []
    for _ in range(256):
        try:
            raw = socket.socket()
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            raw.connect(("127.0.0.1", stand.port))
            sock = stand.context.wrap_socket(raw, server_hostname="127.0.0.1")
            auth = "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
            sock.sendall(f"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\r\n".encode())
            held.append(sock)
        except OSError:
            pass
    time.sleep(15)
    for sock in held:
        sock.close()
    return len(held)


def slow_readers(stand: Stand) -> int:
    """64 clients that ask for `/metrics` and read it a byte a second."""
    held = []
    for _ in range(64):
        raw = socket.create_connection(("127.0.0.1", stand.port), timeout=5)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock = stand.context.wrap_socket(raw, server_hostname="127.0.0.1")
        auth = "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
        sock.sendall(f"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\r\n".encode())
        held.append(sock)
    for _ in range(15):
        started = time.monotonic()
        for sock in held:
            with contextlib.suppress(OSError):
                sock.recv(1)
        time.sleep(max(0.0, 1 - (time.monotonic() - started)))
    for sock in held:
        sock.close()
    return len(held)


def password_flood(stand: Stand) -> int:
    stop, sent = threading.Event(), [0]

    def flood() -> None:
        with httpx.Client(verify=stand.context, timeout=30) as client:
            while not stop.is_set():
                with contextlib.suppress(httpx.HTTPError):
                    client.get(stand.url + "/metrics", auth=("alice", f"guess {sent[0]}"))
                sent[0] += 1

    workers = [threading.Thread(target=flood) for _ in range(32)]
    for worker in workers:
        worker.start()
    time.sleep(10)
    stop.set()
    for worker in workers:
        worker.join(60)
    return sent[0]


def long_passwords(stand: Stand) -> int:
    with httpx.Client(verify=stand.context, timeout=30) as client:
        statuses = [client.get(stand.url + "/metrics", auth=("alice", "p" * 100)).status_code for _ in range(50)]
    assert 500 not in statuses, statuses
    return len(statuses)


def smuggling(stand: Stand) -> int:
    heads = [b"GET /metrics HTTP/1.1\r\nX: a\nContent-Length: 30\r\n\r\n", b"GET /metrics HTTP/1.1\r\nX: a\x00\r\n\r\n",
             b"GET /metrics HTTP/1.1\n\r\n\r\n"]  # fmt: skip
    sent = 0
    for n in range(300):
        raw = socket.create_connection(("127.0.0.1", stand.port), timeout=5)
        with stand.context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            sock.sendall(heads[n % 3])
            assert sock.recv(64).startswith(b"HTTP/1.1 400")
            sent += 1
    return sent


def connect_flood(stand: Stand) -> int:
    held = []
    for _ in range(5000):
        sock = socket.socket()
        sock.setblocking(False)
        try:
            sock.connect_ex(("127.0.0.1", stand.port))
            held.append(sock)
        except OSError:
            sock.close()
    time.sleep(5)
    for sock in held:
        sock.close()
    return len(held)


def upstream(fault: str, count: int = 5, *, pages: bool = False) -> Callable[[Stand], int]:
    """Datasets whose answers turn hostile for two cycles (two metadata reads, too); with `pages`, /status and
    its JSON are asked for every second meanwhile."""

    def attack(stand: Stand) -> int:
        aimed = stand.ids[1 : 1 + count]
        for dataset_id in aimed:
            control(stand.sim_url, "/_sim/fault", {"dataset_id": dataset_id, "fault": fault})
        deadline = time.monotonic() + 25
        with httpx.Client(verify=stand.context, auth=("alice", PASSWORD), timeout=30) as client:
            while (left := deadline - time.monotonic()) > 0:
                if pages:
                    for query in ("", "?format=json"):
                        client.get(stand.url + "/status" + query).raise_for_status()
                time.sleep(min(1.0, max(0.0, left)))
        for dataset_id in aimed:
            control(stand.sim_url, "/_sim/fault", {"dataset_id": dataset_id, "fault": None})
        return count

    attack.aimed = count  # type: ignore[attr-defined]
    return attack


def alias_bomb_reload(stand: Stand) -> int:
    good = stand.config_path.read_text()
    stand.config_path.write_text(ALIAS_BOMB)
    stand.exporter.send_signal(signal.SIGHUP)
    time.sleep(5)
    stand.config_path.write_text(good)
    return 1


ATTACKS: dict[str, Callable[[Stand], int]] = {
    "tls_handshakes": tls_handshakes,
    "nothing": nothing,
    "plain_scrapes": plain_scrapes,
    "stalled_readers": stalled_readers,
    "slow_readers": slow_readers,
    "password_flood": password_flood,
    "long_passwords": long_passwords,
    "smuggling": smuggling,
    "connect_flood": connect_flood,
    "reparse": upstream("many_events"),
    "huge_labels": upstream("huge_labels"),
    "usage_flood": upstream("usage_flood"),
    "gzip_trailer": upstream("gzip_trailer"),
    "huge_name": upstream("huge_name", pages=True),
    "huge_trace": upstream("huge_trace", pages=True),
    "new_error_codes": upstream("new_error_codes"),
    "new_version_warnings": upstream("new_version_warnings"),
    "alias_bomb_reload": alias_bomb_reload,
}


def _sample(stand: Stand, peak: list[float], done: threading.Event) -> None:
    while not done.is_set():
        peak[0] = max(peak[0], rss(stand.exporter.pid))
        done.wait(0.2)


def run(names: list[str], open_files: int, warmup: float = WARMUP, settle: float = SETTLE) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        stand = start(Path(tmp), open_files)
        stop = threading.Event()
        watcher = threading.Thread(target=scraper, args=(stand, stop))
        watcher.start()
        try:
            time.sleep(warmup)
            for name in names:
                before = rss(stand.exporter.pid)
                logged = (stand.directory / "exporter.log").stat().st_size
                fetched_before = stand.fetched()
                peak, running = [before], threading.Event()
                sampler = threading.Thread(target=_sample, args=(stand, peak, running))
                sampler.start()
                began = time.monotonic()
                made = ATTACKS[name](stand)
                ended = time.monotonic()
                time.sleep(settle)
                running.set()
                sampler.join()
                after = rss(stand.exporter.pid)
                logged = (stand.directory / "exporter.log").stat().st_size - logged
                during = [s for s in stand.scrapes if began <= s[0] <= ended + settle]
                aimed = set(stand.ids[1 : 1 + getattr(ATTACKS[name], "aimed", 0)])
                lost = (fetched_before - aimed) - stand.fetched()
                rows.append({
                    "attack": name, "made": made, "seconds": round(ended - began, 1),
                    "scrapes": len(during), "failed_scrapes": sum(1 for s in during if not s[2]),
                    "slowest_scrape_ms": round(max((s[1] for s in during), default=0) * 1000, 1),
                    "datasets_lost": len(lost), "rss_before_mib": round(before, 1), "rss_peak_mib": round(peak[0], 1),
                    "rss_after_mib": round(after, 1), "rss_after_vs_before": round(after / before, 3),
                    "log_bytes": logged, "exporter_alive": stand.exporter.poll() is None,
                })  # fmt: skip
        finally:
            stop.set()
            watcher.join(60)
            stand.exporter.terminate()
            stand.exporter.wait(30)
            stand.sim.terminate()
            stand.sim.wait(30)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", help="comma-separated attacks (default: all)")
    parser.add_argument("--open-files", type=int, default=8192, help="the exporter's limit of open files")
    parser.add_argument("--warmup", type=float, default=WARMUP, help="seconds before the first attack")
    parser.add_argument("--settle", type=float, default=SETTLE, help="seconds after each attack")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(ATTACKS)
    rows = run(names, args.open_files, args.warmup, args.settle)
    if args.json:
        print(json.dumps(rows))
        return
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(str(row[k]) for k in keys) + " |")


if __name__ == "__main__":
    main()
