#!/bin/sh
# Installs Debian's espeak-ng where it is missing. Only `python -m tools.evalmodels.asr`
# (training the speech model) needs it; the evaluator and `make test` do not.
set -eu
if command -v espeak-ng >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
echo "espeak-ng not found; installing Debian's espeak-ng package" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq espeak-ng
