"""A faithful fake of the Graph API parts the exporter uses; shares no code with the client or the parser."""

from exporter.simulator.data import EXAMPLE_DATASET_ID, World
from exporter.simulator.server import SCENARIOS, Simulator, SimulatorSettings

__all__ = ["EXAMPLE_DATASET_ID", "SCENARIOS", "Simulator", "SimulatorSettings", "World"]
