"""Evaluator: evaluation scenarios (and, later, load generation, metrics and reports)."""
