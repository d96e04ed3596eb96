"""Benchmarks: side-by-side comparisons run as programs (``python -m bench.<name>``), not tests."""
