"""The gateway: pocgrid's one public endpoint (auth, tenancy, rate limits, routing, tracing)."""
