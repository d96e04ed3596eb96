"""Tooling for the performance model that no prediction path runs: calibration, reference data."""
