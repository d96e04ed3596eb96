#!/bin/sh
# One database per service that keeps state (PostgreSQL's image runs this once, on an empty
# volume). Services migrate their own schema with Alembic at start-up.
set -eu
for db in registry scheduler metering adapter evaluator; do
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -c "CREATE DATABASE $db OWNER $POSTGRES_USER"
done
