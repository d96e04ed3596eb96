#!/bin/sh
# Makes the secrets the compose stack and the Kubernetes base read, with fresh random values, so
# no key or password is ever committed or shared between installations:
#   deploy/secrets/api-key            the first tenant's API key (give it to that tenant)
#   deploy/secrets/api-keys.json      the gateway's key file: only the key's SHA-256 is stored
#   deploy/secrets/mesh/<id>.key      each service identity's Ed25519 private key (openssl), and
#   deploy/secrets/mesh/public/<id>.pub  its public key: calls between services are signed
#                                     with the first and checked against the second
#   deploy/secrets/nats/<identity>    each NATS identity's password (deploy/nats-auth.conf)
#   deploy/secrets/nats.env           the same as NATS_PASSWORD_<IDENTITY>=..., for nats-server
#   .env                              POCGRID_DB_PASSWORD for docker compose
#   deploy/k8s/base/secrets/*         the same for `kubectl apply -k deploy/k8s/...`
# Usage: deploy/make-secrets.sh [TENANT]   (default tenant: default). Existing files are kept.
set -eu
cd "$(dirname "$0")/.."
tenant=${1:-default}
umask 077
mkdir -p deploy/secrets deploy/k8s/base/secrets
# Led by a letter: nats-server parses a $NATS_PASSWORD_* value that starts like a number.
random() { python3 -c 'import secrets; print("p" + secrets.token_urlsafe(32))'; }
if [ ! -f deploy/secrets/api-key ]; then
  key=$(random)
  printf '%s\n' "$key" > deploy/secrets/api-key
  sha=$(printf '%s' "$key" | python3 -c 'import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')
  printf '{"keys": [{"key_sha256": "%s", "tenant": "%s"}]}\n' "$sha" "$tenant" > deploy/secrets/api-keys.json
fi
# One key pair per mesh identity (services/core/mesh_identity.py IDENTITIES); kept when present,
# so re-running does not change the keys of a running mesh. The operator key is for an
# operator's own tools; no container is given it.
mkdir -p deploy/secrets/mesh/public
for id in gateway registry scheduler metering adapter evaluator agent operator; do
  if [ ! -f "deploy/secrets/mesh/$id.key" ]; then
    openssl genpkey -algorithm ed25519 -out "deploy/secrets/mesh/$id.key"
    openssl pkey -in "deploy/secrets/mesh/$id.key" -pubout -out "deploy/secrets/mesh/public/$id.pub"
  fi
done
chmod 755 deploy/secrets/mesh/public
chmod 644 deploy/secrets/mesh/public/*.pub
rm -rf deploy/k8s/base/secrets/mesh
cp -R deploy/secrets/mesh deploy/k8s/base/secrets/mesh
if [ ! -f .env ]; then
  printf 'POCGRID_DB_PASSWORD=%s\n' "$(random)" > .env
fi
password=$(sed -n 's/^POCGRID_DB_PASSWORD=//p' .env)
cp deploy/secrets/api-keys.json deploy/k8s/base/secrets/keys.json
# NATS: one password per identity that deploy/nats-auth.conf names ($NATS_PASSWORD_<USER>, read
# from the nats-server's environment); each service mounts only its own.
mkdir -p deploy/secrets/nats
users=$(sed -n 's/.*password: \$NATS_PASSWORD_\([A-Z]*\),.*/\1/p' deploy/nats-auth.conf)
: > deploy/secrets/nats.env.tmp
for upper in $users; do
  user=$(printf '%s' "$upper" | tr 'A-Z' 'a-z')
  [ -f "deploy/secrets/nats/$user" ] || random > "deploy/secrets/nats/$user"
  printf 'NATS_PASSWORD_%s=%s\n' "$upper" "$(cat "deploy/secrets/nats/$user")" >> deploy/secrets/nats.env.tmp
done
mv deploy/secrets/nats.env.tmp deploy/secrets/nats.env
cp deploy/secrets/nats.env deploy/k8s/base/secrets/nats.env
{
  printf 'password=%s\n' "$password"
  for db in registry scheduler metering adapter evaluator; do
    printf '%s=postgresql+asyncpg://pocgrid:%s@postgres:5432/%s\n' "$db" "$password" "$db"
  done
} > deploy/k8s/base/secrets/database.env
echo "secrets ready; the API key is in deploy/secrets/api-key"
