"""pocgrid's services: one package each, on the shared runtime in ``services.core``."""
