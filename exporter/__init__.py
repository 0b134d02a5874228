"""Prometheus exporter for ScaleEngine usage.vse data."""

__version__ = "0.1.0"
