"""`demo`: the simulator in-process with a few hundred datasets, and the exporter pointed at it."""

from __future__ import annotations

import asyncio
import logging
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from exporter.cli.app import Exporter, prepare_process
from exporter.cli.report import ProgressBar
from exporter.collect import eventloop as collection_loop
from exporter.config.settings import (
    CollectionConfig,
    Config,
    CredentialConfig,
    DatasetConfig,
    GraphApiConfig,
    Secrets,
    ServerConfig,
    show_duration,
)
from exporter.simulator import EXAMPLE_DATASET_ID, Simulator, SimulatorSettings
from exporter.simulator.volume import hourly_count

log = logging.getLogger(__name__)
DEMO_TOKEN = "demo-token-not-a-secret"
EXPIRED_TOKEN = "demo-expired-token"
CUSTOMERS = ("acme", "globex", "initech", "umbrella")
EXPIRED = (7, 8)  # the datasets the demo fetches with an expired token


def demo_config(sim: Simulator, listen: str, interval: float) -> Config:
    datasets = []
    for index, dataset_id in enumerate(sim.world.dataset_ids):
        pixel = sim.world.pixels[dataset_id]
        credential = "client_b" if index in EXPIRED else "default"  # their token has expired: reason="auth"
        labels = (("customer", CUSTOMERS[index % len(CUSTOMERS)]),)
        datasets.append(DatasetConfig(dataset_id, pixel.name, credential, "", labels))
        if index % 25 == 3 and pixel.agents:
            datasets.append(DatasetConfig(dataset_id, pixel.name, "default", pixel.agents[0], labels))
    return Config(
        graph_api=GraphApiConfig(base_url=sim.url, timeout=10.0),
        credentials={"default": CredentialConfig(token_env="DEMO"), "client_b": CredentialConfig(token_env="DEMO_B")},
        collection=CollectionConfig(
            interval=interval, concurrency=8, stale_after=interval * 3, sources=("web", "stats")
        ),
        datasets=tuple(datasets),
        server=ServerConfig(listen),
        source="<demo>",
    )


def demo_yaml(config: Config) -> str:
    """The demo's configuration as a file a user can copy: change base_url and the token, and it is theirs."""
    c = config.collection
    raw: dict[str, Any] = {
        "graph_api": {"base_url": config.graph_api.base_url, "version": config.graph_api.version},
        "credentials": {name: {"token_env": cred.token_env} for name, cred in config.credentials.items()},
        "collection": {
            "interval": show_duration(c.interval),
            "stale_after": show_duration(c.stale_after),
            "sources": list(c.sources),
        },
        "datasets": [
            {"id": d.id, "name": d.name, **({"credential": d.credential} if d.credential != "default" else {}),
             **({"agent_name": d.agent_name} if d.agent_name else {}), "labels": dict(d.labels)}
            for d in config.datasets
        ],
        "server": {"listen_address": config.server.listen_address},
    }  # fmt: skip
    header = (
        "# The configuration `make demo` runs with. For your own pixels: set graph_api.base_url to\n"
        "# https://graph.facebook.com (or delete it), put your dataset IDs under datasets, and export your\n"
        "# token as META_ACCESS_TOKEN with credentials: {default: {token_env: META_ACCESS_TOKEN}}.\n"
    )
    return header + yaml.safe_dump(raw, sort_keys=False, allow_unicode=True)


def _with_purchase(sim: Simulator) -> str:
    """The dataset whose server sends the most Purchase events: stopping them is the news an alert is for."""
    hour = int(time.time()) // 3600 * 3600 - 3600
    best, most = EXAMPLE_DATASET_ID, -1
    for index, dataset_id in enumerate(sim.world.dataset_ids):
        events = {e["event_name"] for e in sim.world.shared_quality(dataset_id, None).get("web", [])}
        count = hourly_count(sim.world.seed, dataset_id, "Purchase", "SERVER_ONLY", hour) if "Purchase" in events else 0
        if count > most and index not in EXPIRED:
            best, most = dataset_id, count
    return best


def _free(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def run_demo(datasets: int, host: str, port: int, interval: float, latency: float) -> int:
    prepare_process()  # as `run` does, before the simulator's threads start
    # The simulator always adds Meta's documented example dataset: --datasets N serves N in all.
    sim = Simulator(
        SimulatorSettings(
            datasets=max(datasets - 1, 0),
            latency=latency,
            tokens=(DEMO_TOKEN,),
            expired_tokens=(EXPIRED_TOKEN,),
            seed=1,
        )
    )
    sim.start("127.0.0.1", 0)
    if not _free(host, port):
        log.warning("port %d is taken; using a free one", port)
        port = 0
    config = demo_config(sim, f"{host}:{port}", interval)
    config_path = Path(tempfile.gettempdir()) / "meta-dataset-quality-exporter-demo.yaml"
    config_path.write_text(demo_yaml(config), "utf-8")
    secrets = Secrets({"default": DEMO_TOKEN, "client_b": EXPIRED_TOKEN})
    exporter = Exporter(lambda: config, config, secrets, progress=ProgressBar())

    async def main() -> None:
        stop = asyncio.Event()
        serving = asyncio.create_task(exporter.serve(stop))
        while exporter.web is None:
            await asyncio.sleep(0.01)
        url = "http://{}:{}".format(*exporter.web.address)
        print(
            f"\nMeta Dataset Quality Exporter demo: {len(config.datasets)} targets, simulated Graph API at {sim.url}\n"
            f"  metrics:        {url}/metrics\n"
            f"  landing page:   {url}/\n"
            f"  readiness:      {url}/-/ready\n"
            f"  status page:    {url}/status\n"
            f"  its config:     {config_path} (copy it; for your pixels change base_url, the IDs and the token)\n"
            f"  simulator token: {DEMO_TOKEN} (as DEMO); business for discovery: "
            f"{next(iter(sim.world.businesses))}\n"
            f"  Meta's example: dataset {EXAMPLE_DATASET_ID} serves the values of Meta's documentation page\n"
            f"  switch the simulator's scenario, e.g.:\n"
            f'    curl -X POST -d \'{{"scenario": "emq_drop"}}\' {sim.url}/_sim/scenario\n'
            f"  or break one dataset, e.g. stop its server's Purchase events:\n"
            f'    curl -X POST -d \'{{"scenario": "server_purchase_stopped", "dataset_id": "{_with_purchase(sim)}"}}\' '
            f"{sim.url}/_sim/scenario\n"
            f"  Ctrl-C stops.\n",
            flush=True,
        )
        await serving

    try:
        collection_loop.run(main())
    finally:
        sim.stop()
    return 0
