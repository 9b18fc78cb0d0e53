"""Prometheus exporter for Meta's Dataset Quality API."""

__version__ = "0.1.0"
