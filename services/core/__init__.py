"""Shared runtime for every pocgrid service: config, logging, telemetry, gRPC, NATS, storage."""
