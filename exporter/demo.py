"""`demo`: the simulator in-process with a few hundred datasets, and the exporter pointed at it."""

from __future__ import annotations

import asyncio
import logging
import socket

from exporter.app import Exporter
from exporter.config import (
    CollectionConfig,
    Config,
    CredentialConfig,
    DatasetConfig,
    GraphApiConfig,
    Secrets,
    ServerConfig,
)
from exporter.report import ProgressBar
from exporter.simulator import EXAMPLE_DATASET_ID, Simulator, SimulatorSettings

log = logging.getLogger(__name__)
DEMO_TOKEN = "demo-token-not-a-secret"
EXPIRED_TOKEN = "demo-expired-token"
CUSTOMERS = ("acme", "globex", "initech", "umbrella")


def demo_config(sim: Simulator, listen: str, interval: float) -> Config:
    datasets = []
    for index, dataset_id in enumerate(sim.world.dataset_ids):
        pixel = sim.world.pixels[dataset_id]
        credential = "client_b" if index in (7, 8) else "default"  # their token has expired: reason="auth"
        labels = (("customer", CUSTOMERS[index % len(CUSTOMERS)]),)
        datasets.append(DatasetConfig(dataset_id, pixel.name, credential, "", labels))
        if index % 25 == 3 and pixel.agents:
            datasets.append(DatasetConfig(dataset_id, pixel.name, "default", pixel.agents[0], labels))
    return Config(
        graph_api=GraphApiConfig(base_url=sim.url, timeout=10.0),
        credentials={"default": CredentialConfig(token_env="DEMO"), "client_b": CredentialConfig(token_env="DEMO_B")},
        collection=CollectionConfig(interval=interval, concurrency=8, stale_after=interval * 3),
        datasets=tuple(datasets),
        server=ServerConfig(listen),
        source="<demo>",
    )


def _free(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def run_demo(datasets: int, host: str, port: int, interval: float, latency: float) -> int:
    sim = Simulator(
        SimulatorSettings(
            datasets=datasets, latency=latency, tokens=(DEMO_TOKEN,), expired_tokens=(EXPIRED_TOKEN,), seed=1
        )
    )
    sim.start("127.0.0.1", 0)
    if not _free(host, port):
        log.warning("port %d is taken; using a free one", port)
        port = 0
    config = demo_config(sim, f"{host}:{port}", interval)
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
            f"  Meta's example: dataset {EXAMPLE_DATASET_ID} serves the values of Meta's documentation page\n"
            f"  switch the simulator's scenario, e.g.:\n"
            f'    curl -X POST -d \'{{"scenario": "emq_drop"}}\' {sim.url}/_sim/scenario\n'
            f"  Ctrl-C stops.\n",
            flush=True,
        )
        await serving

    try:
        asyncio.run(main())
    finally:
        sim.stop()
    return 0
