"""What to watch: one target per (dataset, agent filter), from the config (discovery adds more later)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from exporter.config.settings import Config


@dataclass(frozen=True)
class Target:
    dataset_id: str
    agent_name: str = ""
    credential: str = "default"
    name: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    origin: str = "config"
    business_id: str = ""
    business_name: str = ""

    @cached_property
    def key(self) -> tuple[str, str]:  # cached: every publish looks up every target by it
        return (self.dataset_id, self.agent_name)

    def describe(self) -> str:
        agent = f" agent={self.agent_name}" if self.agent_name else ""
        return f"dataset {self.dataset_id}{agent}" + (f" ({self.name})" if self.name else "")


def configured_targets(config: Config) -> tuple[Target, ...]:
    return tuple(Target(d.id, d.agent_name, d.credential, d.name, d.labels, "config") for d in config.datasets)
