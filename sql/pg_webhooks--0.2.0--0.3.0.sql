-- pg_webhooks 0.2.0 -> 0.3.0.
--
-- Security (see README, "Privileges"):
--   * every function of the extension runs with search_path pinned to
--     pg_catalog, pg_temp, so that a caller's look-alike operators and
--     functions never run with the extension owner's rights;
--   * an event trigger belongs to the role that created it. Triggers that
--     exist before this update are given to the extension's owner: only
--     superusers and the extension's owner may change them until a superuser
--     hands one to its role with
--       UPDATE webhooks.event_triggers SET owner = 'app_admin' WHERE name = '...';
\echo Use "ALTER EXTENSION pg_webhooks UPDATE" to load this file. \quit

ALTER TABLE webhooks.event_triggers ADD COLUMN owner regrole;
UPDATE webhooks.event_triggers
SET owner = (SELECT e.extowner FROM pg_catalog.pg_extension e WHERE e.extname OPERATOR(pg_catalog.=) 'pg_webhooks')::pg_catalog.regrole;
ALTER TABLE webhooks.event_triggers ALTER COLUMN owner SET NOT NULL;
ALTER TABLE webhooks.event_triggers ADD COLUMN paused_reason text;
CREATE TABLE webhooks.endpoint_state (
    trigger_name text PRIMARY KEY,
    down_since   timestamptz NOT NULL,
    failures     integer NOT NULL,
    last_error   text
);
REVOKE ALL ON webhooks.endpoint_state FROM PUBLIC;
COMMENT ON TABLE webhooks.endpoint_state IS 'The delivery worker''s record of endpoints it treats as down (no row: up)';
UPDATE webhooks.event_triggers SET paused_reason = 'paused by pause_event_trigger()' WHERE paused;

ALTER FUNCTION webhooks.create_event_trigger(jsonb) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION webhooks.delete_event_trigger(text) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION webhooks.redeliver_event(uuid) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION webhooks.invoke_event_trigger(text, jsonb) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION webhooks.pause_event_trigger(text) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION webhooks.resume_event_trigger(text) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION webhooks.query(jsonb) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION webhooks.import_hasura_metadata(jsonb) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION webhooks.worker_status() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION webhooks._record_dependencies(text) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION webhooks._warn_if_not_preloaded() SET search_path = pg_catalog, pg_temp;

-- Structure: the pending condition of the event log is written once in the
-- library; the DDL event trigger archives through it, and the view names it
-- once.
CREATE FUNCTION webhooks."_archive_pending"("name" TEXT) RETURNS void
STRICT LANGUAGE c AS 'MODULE_PATHNAME', '_archive_pending_wrapper';
ALTER FUNCTION webhooks._archive_pending(text) SET search_path = pg_catalog, pg_temp;
REVOKE ALL ON FUNCTION webhooks._archive_pending(text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION webhooks._on_sql_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    gone record;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_event_trigger_dropped_objects() WHERE object_type = 'trigger') THEN
        RETURN;
    END IF;
    FOR gone IN
        SELECT et.name, et.schema_name, et.table_name
        FROM webhooks.event_triggers et
        WHERE NOT EXISTS (
            SELECT FROM pg_trigger t
            JOIN pg_class c ON c.oid = t.tgrelid
            JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE t.tgname = webhooks._capture_trigger_name(et.name)
              AND t.tgfoid = 'webhooks.capture()'::regprocedure
              AND c.relname = et.table_name AND n.nspname = et.schema_name)
        FOR UPDATE OF et
    LOOP
        PERFORM webhooks._archive_pending(gone.name);
        DELETE FROM webhooks.event_triggers WHERE name = gone.name;
        RAISE NOTICE 'event trigger "%" on %.% was deleted because its table trigger was dropped; its undelivered events are archived',
            gone.name, quote_ident(gone.schema_name), quote_ident(gone.table_name);
    END LOOP;
END
$$;

CREATE OR REPLACE VIEW webhooks.event_stats AS
SELECT t.name AS trigger_name,
       coalesce(s.pending, 0)    AS pending,
       coalesce(s.in_flight, 0)  AS in_flight,
       coalesce(s.delivered, 0)  AS delivered,
       coalesce(s.errors, 0)     AS errors,
       coalesce(s.retries, 0)    AS retries,
       s.oldest_pending_age,
       s.last_delivered_at,
       s.last_error_at,
       t.paused,
       t.paused_reason,
       CASE WHEN h.trigger_name IS NULL THEN 'up' ELSE 'down' END AS endpoint_state,
       h.down_since AS endpoint_down_since,
       h.last_error AS endpoint_last_error
FROM webhooks.event_triggers t
LEFT JOIN webhooks.endpoint_state h ON h.trigger_name = t.name
LEFT JOIN LATERAL (
    SELECT count(*) FILTER (WHERE e.is_pending AND e.locked IS NULL) AS pending,
           count(*) FILTER (WHERE e.is_pending AND e.locked IS NOT NULL) AS in_flight,
           count(*) FILTER (WHERE e.delivered) AS delivered,
           count(*) FILTER (WHERE e.error) AS errors,
           count(*) FILTER (WHERE e.tries > 0) AS retries,
           now() - min(e.created_at) FILTER (WHERE e.is_pending) AS oldest_pending_age,
           (SELECT max(l.created_at) FROM webhooks.event_invocation_logs l
             WHERE l.trigger_name = t.name AND l.status BETWEEN 200 AND 299) AS last_delivered_at,
           max(e.created_at) FILTER (WHERE e.error) AS last_error_at
    FROM (SELECT ev.delivered, ev.error, ev.tries, ev.created_at, ev.locked,
                 -- pending: as in event_log.rs and the fetch index
                 NOT ev.delivered AND NOT ev.error AND NOT ev.archived AS is_pending
          FROM webhooks.event_log ev
          WHERE ev.trigger_name = t.name) e
) s ON true;

-- Correctness: capture in every backend reads a definition again when any
-- definition changes (a shared generation bumped at commit by this trigger)
-- and reads it with a fresh snapshot.
CREATE FUNCTION webhooks."_definitions_changed"()
	RETURNS TRIGGER
	LANGUAGE c
	AS 'MODULE_PATHNAME', '_definitions_changed_wrapper';
REVOKE ALL ON FUNCTION webhooks._definitions_changed() FROM PUBLIC;
CREATE TRIGGER definitions_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON webhooks.event_triggers
    FOR EACH STATEMENT EXECUTE FUNCTION webhooks._definitions_changed();

-- Signed delivery: Standard Webhooks secrets.
CREATE FUNCTION webhooks."generate_signing_secret"() RETURNS TEXT
STRICT LANGUAGE c AS 'MODULE_PATHNAME', 'generate_signing_secret_wrapper';
ALTER FUNCTION webhooks.generate_signing_secret() SET search_path = pg_catalog, pg_temp;
REVOKE ALL ON FUNCTION webhooks.generate_signing_secret() FROM PUBLIC;
COMMENT ON FUNCTION webhooks.generate_signing_secret() IS 'A fresh Standard Webhooks signing secret (whsec_...) for the signing_secret key';

-- Delivery control: dead letters (a view, bulk redelivery, their index) and
-- the reason a trigger is paused.
CREATE INDEX event_log_failed ON webhooks.event_log (trigger_name, created_at)
    WHERE error AND NOT archived;

-- Dead letters: events that used every attempt (and were not archived),
-- with what their last attempt got.
CREATE VIEW webhooks.failed_events AS
SELECT e.id AS event_id,
       e.trigger_name,
       e.created_at,
       e.tries,
       l.status AS last_status,
       coalesce(l.response ->> 'error', 'HTTP ' || l.status) AS last_error,
       l.created_at AS last_attempt_at,
       e.payload
FROM webhooks.event_log e
LEFT JOIN LATERAL (
    SELECT il.status, il.response, il.created_at
    FROM webhooks.event_invocation_logs il
    WHERE il.event_id = e.id
    ORDER BY il.created_at DESC
    LIMIT 1
) l ON true
WHERE e.error AND NOT e.archived;
REVOKE ALL ON webhooks.failed_events FROM PUBLIC;
COMMENT ON VIEW webhooks.failed_events IS 'Dead letters: events that used every attempt, with their last status and error';
CREATE FUNCTION webhooks."redeliver_events"(
	"trigger_name" TEXT,
	"since" timestamp with time zone DEFAULT NULL,
	"until" timestamp with time zone DEFAULT NULL
) RETURNS bigint
LANGUAGE c AS 'MODULE_PATHNAME', 'redeliver_events_wrapper';
ALTER FUNCTION webhooks.redeliver_events(text, timestamptz, timestamptz) SET search_path = pg_catalog, pg_temp;
REVOKE ALL ON FUNCTION webhooks.redeliver_events(text, timestamptz, timestamptz) FROM PUBLIC;
COMMENT ON FUNCTION webhooks.redeliver_events(text, timestamptz, timestamptz) IS 'Queues the errored events of one trigger created in [since, until) again, with tries reset; returns how many';
COMMENT ON FUNCTION webhooks.worker_status() IS 'The delivery workers, one per database: pid, database, start, last wake-up, in flight, delivered and failed since start';
