#!/bin/sh
# Makes the secrets the compose stack and the Kubernetes base read, with fresh random values, so
# no key or password is ever committed or shared between installations:
#   deploy/secrets/api-key            the first tenant's API key (give it to that tenant)
#   deploy/secrets/api-keys.json      the gateway's key file: only the key's SHA-256 is stored
#   .env                              POCGRID_DB_PASSWORD for docker compose
#   deploy/k8s/base/secrets/*         the same for `kubectl apply -k deploy/k8s/...`
# Usage: deploy/make-secrets.sh [TENANT]   (default tenant: default). Existing files are kept.
set -eu
cd "$(dirname "$0")/.."
tenant=${1:-default}
umask 077
mkdir -p deploy/secrets deploy/k8s/base/secrets
random() { python3 -c 'import secrets; print(secrets.token_urlsafe(32))'; }
if [ ! -f deploy/secrets/api-key ]; then
  key=$(random)
  printf '%s\n' "$key" > deploy/secrets/api-key
  sha=$(printf '%s' "$key" | python3 -c 'import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')
  printf '{"keys": [{"key_sha256": "%s", "tenant": "%s"}]}\n' "$sha" "$tenant" > deploy/secrets/api-keys.json
fi
if [ ! -f .env ]; then
  printf 'POCGRID_DB_PASSWORD=%s\n' "$(random)" > .env
fi
password=$(sed -n 's/^POCGRID_DB_PASSWORD=//p' .env)
cp deploy/secrets/api-keys.json deploy/k8s/base/secrets/keys.json
{
  printf 'password=%s\n' "$password"
  for db in registry scheduler metering adapter evaluator; do
    printf '%s=postgresql+asyncpg://pocgrid:%s@postgres:5432/%s\n' "$db" "$password" "$db"
  done
} > deploy/k8s/base/secrets/database.env
echo "secrets ready; the API key is in deploy/secrets/api-key"
