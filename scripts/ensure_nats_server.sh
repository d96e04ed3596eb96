#!/usr/bin/env bash
# Make sure a nats-server binary (with JetStream, >= 2.9) is on PATH.
# Source: Debian's `nats-server` package (signed, security-maintained by Debian). We only install
# when none is found, and only through apt-get, so a machine's own nats-server always wins.
set -euo pipefail
if command -v nats-server >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "nats-server not found and apt-get is unavailable: install nats-server >= 2.9 and put it on PATH" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "nats-server not found: run 'apt-get install nats-server' as root" >&2; exit 1
  fi
fi
echo "installing nats-server from Debian's package archive" >&2
$SUDO apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nats-server >/dev/null
command -v nats-server >/dev/null
