"""`demo`: the simulator in-process with a few hundred datasets, and the exporter pointed at it."""

from __future__ import annotations

import asyncio
import logging
import os
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


def customer_of(sim: Simulator, business_id: str) -> str:
    """The demo's customers are the simulated businesses, named in turn."""
    return CUSTOMERS[list(sim.world.businesses).index(business_id) % len(CUSTOMERS)]


def demo_config(sim: Simulator, listen: str, interval: float) -> Config:
    datasets = []
    for index, dataset_id in enumerate(sim.world.dataset_ids):
        pixel = sim.world.pixels[dataset_id]
        credential = "client_b" if index in EXPIRED else "default"  # their token has expired: reason="auth"
        labels = (("customer", customer_of(sim, pixel.business_id)),)
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


SIMULATE_URL = "http://127.0.0.1:8787"  # where `simulate` listens by default


def demo_yaml(config: Config, simulated: int) -> str:
    """The demo's configuration as a file a user can copy: it runs as printed against `simulate` (the demo's
    own simulator ends with it), and with base_url and the token changed it is theirs."""
    c = config.collection
    raw: dict[str, Any] = {
        "graph_api": {"base_url": SIMULATE_URL, "version": config.graph_api.version},
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
    }  # fmt: skip
    header = (
        "# The configuration `make demo` runs with. To run it on its own, against the simulator:\n"
        f"#   meta-dataset-quality-exporter simulate --datasets {simulated} --token {DEMO_TOKEN} "
        f"--expired-token {EXPIRED_TOKEN}\n"
        f"#   DEMO={DEMO_TOKEN} DEMO_B={EXPIRED_TOKEN} meta-dataset-quality-exporter --config <this file>\n"
        "# For your own pixels: delete graph_api.base_url (the default is https://graph.facebook.com), put your\n"
        "# dataset IDs under datasets, and export your token as META_ACCESS_TOKEN with\n"
        "# credentials: {default: {token_env: META_ACCESS_TOKEN}}.\n"
    )
    return header + yaml.safe_dump(raw, sort_keys=False, allow_unicode=True)


def banner(sim: Simulator, config: Config, url: str, config_path: Path) -> str:
    """What the demo shows and how to break it, including the failures it shows on purpose."""
    datasets = len({d.id for d in config.datasets})
    filtered = len(config.datasets) - datasets
    expired = [d.id for d in config.datasets if d.credential == "client_b"]
    control = f"{sim.url}/_sim/scenario"
    acme = next(b for b in sim.world.businesses if customer_of(sim, b) == "acme")
    return "\n".join(
        [
            "",
            f"Meta Dataset Quality Exporter demo: {datasets} simulated datasets of {len(CUSTOMERS)} customers "
            f"({', '.join(CUSTOMERS)}), {len(config.datasets)} targets ({filtered} datasets are watched a second "
            f"time with a partner agent filter). Each cycle spreads its calls over "
            f"{show_duration(config.collection.interval)}; a change shows within one cycle.",
            f"  On purpose, {len(expired)} datasets fail: credential 'client_b' holds an expired token, so the log "
            "shows a WARNING and an ERROR about it and /status shows them failing, with what to do.",
            f"  status page:    {url}/status   (per customer: {url}/status?customer=acme)",
            f"  metrics:        {url}/metrics",
            f"  landing page:   {url}/",
            f"  its config:     {config_path} (for your pixels: change base_url, the IDs and the token)",
            f"  Meta's example: dataset {EXAMPLE_DATASET_ID} serves the values of Meta's documentation page",
            "  break something (loopback only):",
            f"    one dataset's server stops sending Purchase:  curl -X POST -d "
            f'\'{{"scenario": "server_purchase_stopped", "dataset_id": "{_with_purchase(sim)}"}}\' {control}',
            f"    one customer (acme) loses deduplication:      curl -X POST -d "
            f'\'{{"scenario": "dedupe_broken", "business_id": "{acme}"}}\' {control}',
            "    a change on Meta's side for everyone:          curl -X POST -d "
            f'\'{{"scenario": "emq_drop"}}\' {control}',
            f"    every scenario and fault, and how to mend:     curl {control}",
            "  Ctrl-C stops.",
            "",
        ]
    )


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
    secrets = Secrets({"default": DEMO_TOKEN, "client_b": EXPIRED_TOKEN})
    exporter = Exporter(lambda: config, config, secrets, progress=ProgressBar())

    async def main() -> None:
        stop = asyncio.Event()
        serving = asyncio.create_task(exporter.serve(stop))
        while exporter.web is None:
            await asyncio.sleep(0.01)
        address = "{}:{}".format(*exporter.web.address)
        # One file per run, with the address actually served: two demos on one machine keep their own.
        handle, name = tempfile.mkstemp(prefix="meta-dataset-quality-exporter-demo-", suffix=".yaml")
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(demo_yaml(config, len(sim.world.dataset_ids) - 1))
        print(banner(sim, config, f"http://{address}", Path(name)), flush=True)
        await serving

    try:
        collection_loop.run(main())
    finally:
        sim.stop()
    return 0
