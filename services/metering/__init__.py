"""Metering: usage records consumed from JetStream, queried per tenant."""
