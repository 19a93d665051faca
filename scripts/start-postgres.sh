#!/usr/bin/env bash
# Starts a local PostgreSQL server for the distributed-sweep tests (127.0.0.1:54329, database
# harness, user postgres, trust auth on loopback). Idempotent. Prints the URL the tests read from
# HARNESS_TEST_PG_URL (default postgresql://postgres@127.0.0.1:54329/harness).
set -euo pipefail
PORT=${HARNESS_PG_PORT:-54329}
DATA=${HARNESS_PG_DATA:-/tmp/harness-pg}
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -n "$bin" ] || { echo "start-postgres: no PostgreSQL binaries"; exit 1; }
as_pg() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/bash -c "$*"; else bash -c "$*"; fi; }
if as_pg "$bin/pg_isready -h 127.0.0.1 -p $PORT -q"; then echo "start-postgres: already running on $PORT"; exit 0; fi
if [ ! -f "$DATA/PG_VERSION" ]; then
  mkdir -p "$DATA"; [ "$(id -u)" = 0 ] && chown postgres "$DATA"
  as_pg "$bin/initdb -D $DATA -U postgres --auth=trust -E UTF8 >/dev/null"
fi
as_pg "$bin/pg_ctl -D $DATA -o '-p $PORT -k /tmp -c listen_addresses=127.0.0.1' -l $DATA/server.log -w start >/dev/null"
as_pg "$bin/createdb -h 127.0.0.1 -p $PORT -U postgres harness 2>/dev/null || true"
echo "start-postgres: running on 127.0.0.1:$PORT"
