"""The README's metric table and the code agree, and the example config is valid."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from exporter.config.settings import load_config
from exporter.config.targets import Target
from exporter.graph.parser import DatasetQuality, DedupeKey, Diagnostic, EventQuality, MatchKey, OfflineEvent
from exporter.state.snapshot import DatasetState, Histogram, Snapshot
from tests.conftest import SnapshotCollector

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text("utf-8")
CONTRACT = ROOT / "docs" / "metrics.md"


def documented() -> set[str]:
    return set(re.findall(r"^\| `(meta_dataset_quality_[a-z_]+)` \|", README, re.MULTILINE))


def produced() -> set[str]:
    event = EventQuality(
        "Purchase",
        7.0,
        (MatchKey("email", 90, 5),),
        (Diagnostic("d", "D", "", "", 1, 1, 1),),
        50,
        75,
        5,
        (DedupeKey("event_id", 1, 1, 1),),
        "hourly",
        5,
        5,
    )
    quality = DatasetQuality((event,), (OfflineEvent("Purchase", 1, 1, 1, 1, (("email", 1),)),))
    snapshot = Snapshot(
        generation=1,
        created=0,
        datasets=(DatasetState(Target("1"), quality, True, 1.0, last_fired=1.0, server_last_fired=1.0),),
        requests={("dataset_quality", "200"): 1},
        durations={"dataset_quality": Histogram((1,) * 11, 1, 1)},
        api_errors={("1", "transient"): 1},
        usage={("app", "app", "app", "call_count"): 0.1},
        cycle_duration=1,
        cycle_started=1,
        last_cycle_end=1,
        reload_timestamp=1,
        throttled_until={("business", "1"): 2.0},
        discovery={"1": (True, 1.0)},
        tokens={"default": (True, 0.0)},
        suspended={"default": "expired"},
        versions_upgraded=("v25.0",),
        discovery_truncated=("1",),
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(lambda: snapshot))
    return {m.name + ("_total" if m.type == "counter" else "") for m in registry.collect()}


def test_metric_table_matches_the_code():
    assert documented() == produced()


def test_every_contract_metric_is_produced():
    contract = set(re.findall(r"`(meta_dataset_quality_[a-z_]+)`", CONTRACT.read_text("utf-8")))
    assert contract <= produced()


def test_example_config_shows_every_key_and_passes_check_config():
    import yaml

    from exporter.cli.main import main
    from exporter.config.settings import SCHEMA

    path = ROOT / "deploy" / "config.example.yaml"
    raw = yaml.safe_load(path.read_text("utf-8"))
    shown: dict[str, set[str]] = {"": set(raw)}
    shown["graph_api"] = set(raw["graph_api"])
    shown["credentials.*"] = {k for spec in raw["credentials"].values() for k in spec}
    shown["datasets[]"] = {k for item in raw["datasets"] for k in item}
    shown["discovery[]"] = {k for item in raw["discovery"] for k in item}
    for section in ("collection", "server", "shard", "limits"):
        shown[section] = set(raw[section])
    text = path.read_text("utf-8")
    for section, keys in SCHEMA.items():
        missing = {k for k in keys - shown[section] if f"{k}:" not in text}  # a commented alternative counts
        assert not missing, f"{section}: {sorted(missing)} missing from config.example.yaml"
    assert main(["check-config", "--skip-secrets", str(path)]) == 0


def test_example_config_is_valid():
    config = load_config(ROOT / "deploy" / "config.example.yaml")
    assert len(config.datasets) == 3 and config.label_names() == ("customer", "team")


def test_the_command_list_names_every_command():
    from exporter.cli.main import COMMANDS

    block = README[README.index("## Command line") :]
    block = block[: block.index("```", block.index("```") + 3)]
    assert all(f"meta-dataset-quality-exporter {command}" in block for command in COMMANDS if command != "run")


def test_deployment_docs_say_one_thing_about_the_healthcheck_over_tls():
    """The container section said the check retries over TLS, the TLS section that it needed replacing."""
    docs = (ROOT / "docs" / "deployment.md").read_text("utf-8")
    assert docs.count("retries over TLS") == 2 and "which uses plain HTTP, needs" not in docs
