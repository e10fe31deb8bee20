#!/usr/bin/env bash
# `make demo`: a throwaway cluster with pg_webhooks preloaded, a local webhook
# receiver, an event trigger on a table, a few writes, and what the webhook got.
set -euo pipefail

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
DIR=${DEMO_DIR:-/tmp/pg_webhooks_demo}
PORT=${DEMO_PG_PORT:-54329}
HOOK_PORT=${DEMO_HOOK_PORT:-54330}

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

cleanup() {
  as_pg "$PG_BIN/pg_ctl" -D "$DIR/data" -m fast stop >/dev/null 2>&1 || true
  [ -n "${RECEIVER_PID:-}" ] && kill "$RECEIVER_PID" 2>/dev/null || true
}
trap cleanup EXIT

cleanup
rm -rf "$DIR" && mkdir -p "$DIR"
[ "$(id -u)" = 0 ] && chown postgres "$DIR"
as_pg "$PG_BIN/initdb" -D "$DIR/data" -A trust -U postgres >/dev/null
cat >> "$DIR/data/postgresql.conf" <<CONF
port = $PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$DIR'
shared_preload_libraries = 'pg_webhooks'
CONF
python3 "$(dirname "$0")/demo_receiver.py" "$HOOK_PORT" > "$DIR/webhook.log" 2>&1 &
RECEIVER_PID=$!
as_pg "$PG_BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w start >/dev/null
for _ in $(seq 1 50); do (exec 3<>"/dev/tcp/127.0.0.1/$HOOK_PORT") 2>/dev/null && break; sleep 0.1; done

psql() { command psql -X -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 "$@"; }

echo "== a cluster on port $PORT with pg_webhooks preloaded; a webhook receiver on port $HOOK_PORT"
psql -e <<SQL
CREATE EXTENSION pg_webhooks;
CREATE TABLE users (id bigserial PRIMARY KEY, username text, email text, age int);
SELECT webhooks.create_event_trigger('{
  "name": "users_changed",
  "table": {"schema": "public", "name": "users"},
  "webhook": "http://127.0.0.1:$HOOK_PORT/hooks/users",
  "insert": {"columns": "*"},
  "update": {"columns": ["email"]},
  "delete": {"columns": "*", "payload": ["id"]},
  "retry_conf": {"num_retries": 3, "interval_sec": 2}
}');
INSERT INTO users (username, email, age) VALUES ('ada', 'ada@example.com', 36);
UPDATE users SET age = 37;                                  -- not a watched column: no event
UPDATE users SET email = 'ada@lovelace.example';
DELETE FROM users;
SELECT created_at::time(0), trigger_name, payload->>'op' AS op, payload->'data' AS data
FROM webhooks.event_log ORDER BY created_at, id;
SQL

echo "== waiting for the worker to deliver"
for _ in $(seq 1 50); do
  delivered=$(psql -tAc "SELECT count(*) FILTER (WHERE delivered) FROM webhooks.event_log")
  [ "$delivered" -ge 3 ] && break
  sleep 0.1
done
psql -c "SELECT payload->>'op' AS op, delivered, tries FROM webhooks.event_log ORDER BY created_at, id" \
     -c "SELECT l.status, l.duration_ms::numeric(8,2) AS ms, e.payload->>'op' AS op
         FROM webhooks.event_invocation_logs l JOIN webhooks.event_log e ON e.id = l.event_id ORDER BY l.created_at"
echo "== what the webhook received"
cat "$DIR/webhook.log"
