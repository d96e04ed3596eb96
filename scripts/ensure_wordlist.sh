#!/bin/sh
# Installs Debian's wamerican word list (/usr/share/dict/american-english) where it is missing.
# Only `python -m tools.evalmodels.textfix` (training the corrector) needs it.
set -eu
if [ -r /usr/share/dict/american-english ]; then
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
echo "/usr/share/dict/american-english not found; installing Debian's wamerican package" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq wamerican
