"""A faithful fake of the Graph API parts the exporter uses, for the demo, the tests and the benchmarks.

Imports nothing of the exporter outside this package: one misreading of the API must not hide in both the
client and its stand-in."""

from exporter.simulator.data import EXAMPLE_DATASET_ID, World
from exporter.simulator.server import SCENARIOS, Simulator, SimulatorSettings

__all__ = ["EXAMPLE_DATASET_ID", "SCENARIOS", "Simulator", "SimulatorSettings", "World"]
