"""pocgrid: evaluate and pool heterogeneous AI accelerators."""
