-- pg_webhooks: the schema and its tables. The schema is created here, not
-- through the control file, so that it belongs to the extension and goes
-- with DROP EXTENSION.
CREATE SCHEMA webhooks;

-- One row per event trigger. "definition" is the normalized definition that
-- create_event_trigger returns; schema_name and table_name follow it.
-- "owner" is the role that created it: only its members (and superusers and
-- the extension's owner) may change, delete, pause, resume, invoke or
-- redeliver it. regrole, so that pg_dump writes the role's name.
CREATE TABLE webhooks.event_triggers (
    name        text PRIMARY KEY,
    definition  jsonb NOT NULL,
    schema_name text GENERATED ALWAYS AS (definition #>> '{table,schema}') STORED,
    table_name  text GENERATED ALWAYS AS (definition #>> '{table,name}') STORED,
    -- pause_event_trigger: capture goes on, delivery stops.
    paused      boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    owner       regrole NOT NULL,
    -- Why delivery is paused: pause_event_trigger(), or the worker's reason
    -- (a 410 Gone answer); NULL while not paused.
    paused_reason text
);

-- One row per event. "payload" is the "event" object of the webhook body:
-- {"op", "data": {"old", "new"}, "session_variables", "trace_context"}.
-- An event is pending while it is not delivered, not error and not archived;
-- "locked" is set while the worker delivers it; "next_retry_at" is when it is
-- due (its capture time at first, the retry time after a failed attempt).
CREATE TABLE webhooks.event_log (
    id            uuid PRIMARY KEY,
    trigger_name  text NOT NULL,
    schema_name   text NOT NULL,
    table_name    text NOT NULL,
    payload       jsonb NOT NULL,
    delivered     boolean NOT NULL DEFAULT false,
    error         boolean NOT NULL DEFAULT false,
    archived      boolean NOT NULL DEFAULT false,
    tries         integer NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now(),
    locked        timestamptz,
    next_retry_at timestamptz NOT NULL DEFAULT now(),
    -- With "ordering": the row's key ("key") or '' ("trigger"); events of
    -- one key are delivered one at a time, in id order. NULL: not held.
    ordering_key text
) WITH (fillfactor = 80);
-- fillfactor: a claim only sets "locked", which no index covers, so with
-- room left on the page the update is HOT and writes no index entry.

-- The worker's fetch, per trigger: pending, due, oldest first (claimed
-- events are skipped by the scan; there are at most a batch of them). The
-- scan stops at the first event that is not due yet, however long the
-- backlog, and one trigger's backlog never sits in another's way.
CREATE INDEX event_log_fetch ON webhooks.event_log (trigger_name, next_retry_at, id)
    WHERE NOT delivered AND NOT error AND NOT archived;

-- Ordered delivery: the pending events of one key, in the order written.
CREATE INDEX event_log_order ON webhooks.event_log (trigger_name, ordering_key, id)
    WHERE ordering_key IS NOT NULL AND NOT delivered AND NOT error AND NOT archived;

-- Dead letters, per trigger, by age: webhooks.failed_events and
-- redeliver_events(). Events enter it only when they fail for good.
CREATE INDEX event_log_failed ON webhooks.event_log (trigger_name, created_at)
    WHERE error AND NOT archived;

-- One row per delivery attempt. request and response are json, as in
-- Hasura: kept as written, and cheaper to store than jsonb on the worker's
-- hot path (cast to jsonb to query them with jsonb operators).
CREATE TABLE webhooks.event_invocation_logs (
    id           uuid PRIMARY KEY,
    event_id     uuid NOT NULL,
    trigger_name text NOT NULL,
    status       integer,
    request      json,
    response     json,
    created_at   timestamptz NOT NULL DEFAULT now(),
    duration_ms  double precision
);
CREATE INDEX event_invocation_logs_event_id ON webhooks.event_invocation_logs (event_id);

-- Definitions and undelivered events survive pg_dump / pg_restore.
SELECT pg_catalog.pg_extension_config_dump('webhooks.event_triggers', '');
SELECT pg_catalog.pg_extension_config_dump('webhooks.event_log', 'WHERE NOT delivered AND NOT archived');

-- The delivery worker's view of each trigger's endpoint while it is down
-- (no row: up): since when, after how many failed attempts in a row, and
-- the last error. Runtime state, rewritten by the worker (and emptied when
-- it starts); shown by webhooks.event_stats.
CREATE TABLE webhooks.endpoint_state (
    trigger_name text PRIMARY KEY,
    down_since   timestamptz NOT NULL,
    failures     integer NOT NULL,
    last_error   text
);
