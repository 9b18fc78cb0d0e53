"""The configuration: the YAML file validated into a Config (every problem named at once), the secrets read
from the environment or files, and the targets it asks to watch (`targets`: one per dataset and agent filter).

May import exporter.common and exporter.graph (for the API's constants: versions, field blocks)."""
