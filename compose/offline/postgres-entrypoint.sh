#!/bin/sh
# docker-entrypoint.sh of the offline PostgreSQL image (built by scripts/compose-smoke.sh), a
# small stand-in for the official postgres image's: on an empty $PGDATA it runs initdb with
# POSTGRES_USER as superuser and POSTGRES_PASSWORD (scram-sha-256 over TCP), creates
# POSTGRES_DB, then runs postgres as the postgres user, listening on every interface.
set -eu
PGDATA="${PGDATA:-/var/lib/postgresql/data}"
PGBIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
: "${POSTGRES_USER:=postgres}" "${POSTGRES_DB:=$POSTGRES_USER}"
: "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
as_pg() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }

mkdir -p "$PGDATA" /run/postgresql
chown -R postgres:postgres "$PGDATA" /run/postgresql
chmod 700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pwfile="$(mktemp)"
    printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
    chown postgres "$pwfile"
    as_pg "$PGBIN/initdb" -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$pwfile" \
        --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >/dev/null
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
    if [ "$POSTGRES_DB" != postgres ]; then
        echo "CREATE DATABASE \"$POSTGRES_DB\";" \
            | as_pg "$PGBIN/postgres" --single -D "$PGDATA" postgres >/dev/null
    fi
fi
# `docker stop` sends SIGTERM, postgres's "smart" shutdown, which waits for every client to
# leave; pass it on as SIGINT ("fast"), the official image's STOPSIGNAL (docker import
# cannot set one).
as_pg "$PGBIN/postgres" -D "$PGDATA" &
pid=$!
trap 'kill -INT "$pid"' TERM INT
while kill -0 "$pid" 2>/dev/null; do wait "$pid" || true; done
