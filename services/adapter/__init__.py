"""Adapter: how a model fits a chip (weights against device memory, precision support)."""
