#!/usr/bin/env bash
# Make sure PostgreSQL's server binaries (initdb, pg_ctl) are installed: the tests start a
# throwaway server of their own (tests/postgres.py) to run the storage and integration tests on
# PostgreSQL as well as SQLite.
# Source: Debian's `postgresql` package (the distribution's supported major version, signed and
# security-maintained by Debian). Installed only when no server binaries are found, only through
# apt-get. Installing it also starts a cluster on port 5432 as a system service; the tests never
# use that one (they pick free ports), so we leave the machine's service configuration alone.
set -euo pipefail
if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && command -v runuser >/dev/null; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "PostgreSQL server binaries not found and apt-get is unavailable: install PostgreSQL >= 13 (initdb, pg_ctl under /usr/lib/postgresql/<major>/bin)" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "PostgreSQL server binaries not found: run 'apt-get install postgresql' as root" >&2; exit 1
  fi
fi
echo "installing PostgreSQL's server from Debian's package archive" >&2
$SUDO apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
