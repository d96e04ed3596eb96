#!/usr/bin/env bash
# Make sure a headless-capable Chromium is on PATH (the adaptation heatmap's browser test opens
# the HTML in it and takes a screenshot). Source: Debian's `chromium` package, installed with
# apt-get only when none is found, so a machine's own Chromium always wins.
set -euo pipefail
for name in chromium chromium-browser google-chrome; do
  if command -v "$name" >/dev/null 2>&1; then
    exit 0
  fi
done
if ! command -v apt-get >/dev/null 2>&1; then
  echo "chromium not found and apt-get is unavailable: install chromium and put it on PATH" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "chromium not found: run 'apt-get install chromium' as root" >&2; exit 1
  fi
fi
echo "installing chromium from Debian's package archive" >&2
$SUDO apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
command -v chromium >/dev/null
