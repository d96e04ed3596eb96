"""The per-chip agent: one node of one chip type behind an emulated vendor runtime."""
