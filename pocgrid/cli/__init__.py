"""The ``pocgrid`` command line."""
