#!/usr/bin/env bash
# The standby's entry point: on first start, copy the primary with pg_basebackup (streaming its WAL
# through the replication slot the primary created for it) and write the recovery settings; then run
# PostgreSQL as a hot standby through the image's own entry point. Its cluster_name is the name the
# primary's synchronous_standby_names waits for, so no commit on the primary is acknowledged before
# this standby has it on disk.
set -euo pipefail

: "${REPLICATION_PASSWORD:?REPLICATION_PASSWORD must be set}"
primary="${PRIMARY_HOST:-postgres-primary}"
port="${PRIMARY_PORT:-5432}"

# The password goes to a passfile readable by postgres only: pg_basebackup --write-recovery-conf records
# the passfile's path in postgresql.auto.conf, not the password. The file lives outside the data volume,
# so it is written again on every start (a recreated container has lost it).
export PGPASSFILE="${PGPASSFILE:-/var/lib/postgresql/.pgpass}"
printf '%s:%s:*:replicator:%s\n' "$primary" "$port" "$REPLICATION_PASSWORD" > "$PGPASSFILE"
chown postgres:postgres "$PGPASSFILE"
chmod 0600 "$PGPASSFILE"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    mkdir -p "$PGDATA"
    chown postgres:postgres "$PGDATA"
    chmod 0700 "$PGDATA"
    until gosu postgres pg_isready --host="$primary" --port="$port" --quiet; do
        echo "standby: waiting for the primary at $primary"
        sleep 2
    done
    echo "standby: copying the primary"
    gosu postgres pg_basebackup --host="$primary" --port="$port" --username=replicator \
        --pgdata="$PGDATA" --slot=standby --wal-method=stream --write-recovery-conf \
        --checkpoint=fast --progress
fi

exec docker-entrypoint.sh postgres -c cluster_name=standby -c hot_standby=on "$@"
