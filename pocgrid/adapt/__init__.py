"""Model x chip adaptation: operator supplementation, coverage, plans (a library, no gRPC)."""
