"""The container image, built from the Dockerfile with buildah and run: its own entrypoint, user and healthcheck.

No Docker engine runs here and no registry is reachable, so the official Python base image cannot be pulled. The
stand-in base is a Debian bookworm root filesystem made by mmdebstrap from Debian's packages (python3,
python3-venv), imported as a local image and passed as the Dockerfile's BASE build argument. It also carries this
machine's extra CA certificates, so that pip inside the build reaches PyPI through the same egress as the host.
`buildah --isolation chroot --storage-driver vfs` needs no daemon, cgroups or user namespaces; the storage lives
in a temporary directory that is removed afterwards. When buildah or mmdebstrap is missing the test skips and
says why, unless the environment variable CI is set: then the skip is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import TOKEN, free_port, http, wait_for

ROOT = Path(__file__).parent.parent
BASE_IMAGE = "localhost/meta-dataset-quality-exporter-test-base:bookworm"
IMAGE = "localhost/meta-dataset-quality-exporter:test"
ROOTFS_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "meta-dataset-quality-exporter"
ROOTFS_MAX_AGE = 7 * 86400
LOCAL_CAS = Path("/usr/local/share/ca-certificates")

pytestmark = pytest.mark.slow


def cannot_run(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"the container test cannot run: {reason} (CI is set, so this skip counts as a failure)")
    pytest.skip(f"the container test cannot run: {reason}")


class Buildah:
    """buildah with private vfs storage under one directory, chroot isolation and no daemon."""

    def __init__(self, storage: Path):
        self.flags = ["--root", str(storage / "root"), "--runroot", str(storage / "run"), "--storage-driver", "vfs"]

    def __call__(self, *args: str, timeout: float = 600) -> str:
        result = subprocess.run(["buildah", *self.flags, *args], capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, (
            f"buildah {' '.join(args)} failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
        )
        return result.stdout.strip()

    def popen(self, *args: str, log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            return subprocess.Popen(
                ["buildah", *self.flags, *args], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )


def debian_rootfs() -> Path:
    """A bookworm minbase with python3 and python3-venv, made by mmdebstrap and kept for a week."""
    tarball = ROOTFS_CACHE / "debian-bookworm-python3.tar"
    if tarball.exists() and time.time() - tarball.stat().st_mtime < ROOTFS_MAX_AGE:
        return tarball
    ROOTFS_CACHE.mkdir(parents=True, exist_ok=True)
    partial = tarball.with_suffix(".partial.tar")
    hooks = []
    if LOCAL_CAS.is_dir() and any(LOCAL_CAS.iterdir()):
        hooks = [
            f'--customize-hook=mkdir -p "$1{LOCAL_CAS}"',
            f"--customize-hook=sync-in {LOCAL_CAS} {LOCAL_CAS}",
            '--customize-hook=chroot "$1" update-ca-certificates',
        ]
    command = ["mmdebstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates", *hooks]
    result = subprocess.run([*command, "bookworm", str(partial)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"mmdebstrap failed:\n{result.stderr[-3000:]}"
    partial.rename(tarball)
    return tarball


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Buildah, dict]]:
    missing = [tool for tool in ("buildah", "mmdebstrap") if shutil.which(tool) is None]
    if missing:
        cannot_run(f"{' and '.join(missing)} not installed (make test installs them with apt-get)")
    if os.geteuid() != 0:
        cannot_run("mmdebstrap and buildah's chroot isolation need root here")
    storage = tmp_path_factory.mktemp("buildah")
    buildah = Buildah(storage)
    try:
        rootfs = debian_rootfs()
        container = buildah("from", "scratch")
        buildah("add", container, str(rootfs), "/")
        buildah("commit", "--rm", "--quiet", container, BASE_IMAGE)
        buildah(
            "bud", "--isolation", "chroot", "--format", "docker",  # docker format keeps HEALTHCHECK
            "--build-arg", f"BASE={BASE_IMAGE}", "--tag", IMAGE, str(ROOT),
            timeout=1200,
        )  # fmt: skip
        config = json.loads(buildah("inspect", "--type", "image", IMAGE))["Docker"]["config"]
        yield buildah, config
    finally:
        subprocess.run(["buildah", *buildah.flags, "rm", "--all"], capture_output=True, timeout=120)
        subprocess.run(["buildah", *buildah.flags, "rmi", "--all", "--force"], capture_output=True, timeout=300)
        shutil.rmtree(storage, ignore_errors=True)


def descendants(pid: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def exporter_uid(buildah_pid: int) -> int:
    for pid in descendants(buildah_pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        if any(arg.endswith(b"meta-dataset-quality-exporter") for arg in argv) and b"run" in argv:
            return int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
    raise AssertionError("no exporter process under buildah run")


def test_the_image_runs_its_entrypoint_as_non_root_and_its_healthcheck_passes(image, simulator, tmp_path):
    buildah, config = image
    assert config["User"].split(":")[0] != "0" and config["Healthcheck"]["Test"][0] == "CMD"
    port = free_port()
    (tmp_path / "config.yaml").write_text(
        f"graph_api: {{base_url: '{simulator.url}'}}\n"
        "credentials: {default: {token_file: /run/secrets/meta_access_token}}\n"
        f"server: {{listen_address: '127.0.0.1:{port}'}}\n"
        "collection: {interval: 30s}\n"
        f"datasets: [{{id: '{simulator.world.dataset_ids[0]}'}}, {{id: '{simulator.world.dataset_ids[1]}'}}]\n"
    )
    (tmp_path / "token").write_text(TOKEN)
    for path in (tmp_path / "config.yaml", tmp_path / "token"):
        path.chmod(0o644)
    container = buildah("from", IMAGE)
    mounts = [
        "--volume", f"{tmp_path / 'config.yaml'}:/etc/meta-dataset-quality-exporter/config.yaml:ro",
        "--volume", f"{tmp_path / 'token'}:/run/secrets/meta_access_token:ro",
    ]  # fmt: skip
    command = config["Entrypoint"] + config["Cmd"]  # what `docker run IMAGE` runs
    running = buildah.popen("run", "--isolation", "chroot", *mounts, container, "--", *command, log=tmp_path / "log")
    url = f"http://127.0.0.1:{port}"
    try:

        def metrics() -> bytes:
            if running.poll() is not None:
                raise AssertionError(f"the container exited {running.returncode}:\n{(tmp_path / 'log').read_text()}")
            try:
                status, _, body = http("GET", url + "/metrics")
            except OSError:
                return b""
            return body if status == 200 and b"meta_dataset_quality_event_match_quality_score{" in body else b""

        body = wait_for(metrics, timeout=120, what="quality series on the container's /metrics")
        assert f'dataset_id="{simulator.world.dataset_ids[1]}"'.encode() in body
        assert http("GET", url + "/-/healthy")[0] == 200
        assert exporter_uid(running.pid) == int(config["User"].split(":")[0]) != 0
        healthcheck = config["Healthcheck"]["Test"][1:]
        check = subprocess.run(
            ["buildah", *buildah.flags, "run", "--isolation", "chroot", *mounts, container, "--", *healthcheck],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert check.returncode == 0, check.stdout + check.stderr
        assert f"{url}/-/healthy: 200" in check.stdout
    finally:
        os.killpg(running.pid, signal.SIGTERM)
        try:
            running.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(running.pid, signal.SIGKILL)
            running.wait(timeout=30)
    assert "Traceback" not in (tmp_path / "log").read_text()
