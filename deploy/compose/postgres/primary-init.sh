#!/usr/bin/env bash
# Runs once, when the primary's data directory is first initialised (the postgres image runs the
# scripts of /docker-entrypoint-initdb.d): a role for streaming replication, a physical replication
# slot so the primary keeps the WAL its standby has not received yet, and a pg_hba rule that lets the
# standby stream with a password.
set -euo pipefail

: "${REPLICATION_PASSWORD:?REPLICATION_PASSWORD must be set}"

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v password="$REPLICATION_PASSWORD" <<'SQL'
CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD :'password';
SELECT pg_create_physical_replication_slot('standby');
SQL

echo "host replication replicator all scram-sha-256" >> "$PGDATA/pg_hba.conf"
