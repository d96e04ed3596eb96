"""Run the whole mesh on this machine: a nats-server child, every service, a default fleet."""
