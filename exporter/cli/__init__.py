"""The commands (`main`: run, once, check-config, simulate, demo, healthcheck), the application that wires the
collection and the web side together (`app`), the demo (`demo`) and `once`'s reports (`report`). The top: it may
import every other package."""
