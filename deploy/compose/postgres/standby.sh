#!/usr/bin/env bash
# The standby's entry point: on first start, copy the primary with pg_basebackup (streaming its WAL
# through the replication slot the primary created for it) and write the recovery settings; then run
# PostgreSQL as a hot standby through the image's own entry point. Its cluster_name is the name the
# primary's synchronous_standby_names waits for, so no commit on the primary is acknowledged before
# this standby has it on disk.
set -euo pipefail

: "${REPLICATION_PASSWORD:?REPLICATION_PASSWORD must be set}"
primary="${PRIMARY_HOST:-postgres-primary}"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    mkdir -p "$PGDATA"
    chown postgres:postgres "$PGDATA"
    chmod 0700 "$PGDATA"
    export PGPASSWORD="$REPLICATION_PASSWORD"
    until gosu postgres pg_isready --host="$primary" --port=5432 --quiet; do
        echo "standby: waiting for the primary at $primary"
        sleep 2
    done
    echo "standby: copying the primary"
    gosu postgres pg_basebackup --host="$primary" --port=5432 --username=replicator \
        --pgdata="$PGDATA" --slot=standby --wal-method=stream --write-recovery-conf \
        --checkpoint=fast --progress
    unset PGPASSWORD
    # The password goes to a passfile readable by postgres only, not into postgresql.auto.conf.
    printf '%s:5432:replication:replicator:%s\n' "$primary" "$REPLICATION_PASSWORD" \
        > /var/lib/postgresql/.pgpass
    chown postgres:postgres /var/lib/postgresql/.pgpass
    chmod 0600 /var/lib/postgresql/.pgpass
fi

exec docker-entrypoint.sh postgres -c cluster_name=standby -c hot_standby=on "$@"
