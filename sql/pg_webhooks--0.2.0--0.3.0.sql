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

-- The delivery worker locks the definitions and then the event tables at
-- the start of each round (see src/event_log.rs, lock_for_round); this
-- script changes them. Taking the same locks first, in the same order,
-- makes the worker wait for the update instead of deadlocking with it.
LOCK TABLE webhooks.event_triggers, webhooks.event_log, webhooks.event_invocation_logs IN ACCESS EXCLUSIVE MODE;

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
    tg name;
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
           -- or the trigger of an operation with a condition (DROP COLUMN
           -- ... CASCADE of a column it reads)
           OR EXISTS (
            SELECT FROM unnest(ARRAY['insert', 'update', 'delete']) AS op
            WHERE et.definition #> ARRAY[op, 'condition'] IS NOT NULL
              AND NOT EXISTS (
                SELECT FROM pg_trigger t
                JOIN pg_class c ON c.oid = t.tgrelid
                JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE t.tgname = webhooks._capture_trigger_name(et.name) || ':' || op
                  AND t.tgfoid = 'webhooks.capture()'::regprocedure
                  AND c.relname = et.table_name AND n.nspname = et.schema_name))
        FOR UPDATE OF et
    LOOP
        PERFORM webhooks._archive_pending(gone.name);
        DELETE FROM webhooks.event_triggers WHERE name = gone.name;
        -- Its other triggers, where the table is still there (one trigger
        -- was dropped, or a column a condition reads), would capture
        -- nothing now: drop them too.
        FOR tg IN
            SELECT t.tgname FROM pg_trigger t
            WHERE t.tgrelid = to_regclass(format('%I.%I', gone.schema_name, gone.table_name))
              AND t.tgfoid = 'webhooks.capture()'::regprocedure AND t.tgparentid = 0
              AND t.tgname IN (SELECT webhooks._capture_trigger_name(gone.name) || suffix
                               FROM unnest(ARRAY['', ':insert', ':update', ':delete']) AS suffix)
        LOOP
            EXECUTE format('DROP TRIGGER %I ON %I.%I', tg, gone.schema_name, gone.table_name);
        END LOOP;
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

-- Delivery control: conditions. An operation with a "condition" has its
-- own table trigger (its WHEN clause); the DDL event triggers follow it.
-- The WHEN clause of a trigger as PostgreSQL prints it now (after renames,
-- with the current names), without its parentheses; NULL when it has none.
-- Ours end in "EXECUTE FUNCTION webhooks.capture(...)", so the greedy match
-- stops at that last occurrence whatever the condition's text holds.
CREATE FUNCTION webhooks._trigger_condition(trigger_oid oid) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
RETURN substring(pg_get_triggerdef(trigger_oid) FROM ' WHEN \((.*)\) EXECUTE FUNCTION ');
REVOKE ALL ON FUNCTION webhooks._trigger_condition(oid) FROM PUBLIC;

CREATE OR REPLACE FUNCTION webhooks._on_ddl_command_end() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    d record;
    missing text[];
    fresh text[];
    op text;
    cond text;
BEGIN
    IF tg_tag = 'CREATE TRIGGER' THEN
        -- A table trigger of ours created outside create_event_trigger (by
        -- pg_restore): give it back its column dependencies.
        PERFORM webhooks._record_dependencies(et.name)
        FROM webhooks.event_triggers et
        JOIN pg_trigger t ON t.tgname = webhooks._capture_trigger_name(et.name)
                         AND t.tgfoid = 'webhooks.capture()'::regprocedure
                         AND t.tgparentid = 0
        WHERE t.oid IN (SELECT objid FROM pg_event_trigger_ddl_commands());
        RETURN;
    END IF;
    FOR d IN
        SELECT et.name, et.definition, et.schema_name, et.table_name,
               t.oid AS tgoid, t.tgrelid, n.nspname, c.relname
        FROM webhooks.event_triggers et
        JOIN pg_trigger t ON t.tgname = webhooks._capture_trigger_name(et.name)
                         AND t.tgfoid = 'webhooks.capture()'::regprocedure
                         AND t.tgparentid = 0
        JOIN pg_class c ON c.oid = t.tgrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.oid IN (SELECT objid FROM pg_event_trigger_ddl_commands())
           OR c.relnamespace IN (SELECT objid FROM pg_event_trigger_ddl_commands())
    LOOP
        -- The table or its schema was renamed.
        IF d.nspname <> d.schema_name OR d.relname <> d.table_name THEN
            d.definition := jsonb_set(d.definition, '{table}',
                jsonb_build_object('schema', d.nspname::text, 'name', d.relname::text));
        END IF;
        -- A listed column was renamed: its old name is gone from the table,
        -- and the trigger depends on a column whose name is not listed.
        SELECT array_agg(col) INTO missing
        FROM webhooks._listed_columns(d.definition) AS col
        WHERE NOT EXISTS (SELECT FROM pg_attribute a
                          WHERE a.attrelid = d.tgrelid AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped);
        IF cardinality(missing) = 1 THEN
            SELECT array_agg(a.attname::text) INTO fresh
            FROM pg_depend dep
            JOIN pg_attribute a ON a.attrelid = dep.refobjid AND a.attnum = dep.refobjsubid
            WHERE dep.classid = 'pg_trigger'::regclass AND dep.objid = d.tgoid
              AND dep.refclassid = 'pg_class'::regclass AND dep.refobjsubid > 0
              AND a.attname::text NOT IN (SELECT webhooks._listed_columns(d.definition));
            IF cardinality(fresh) = 1 THEN
                d.definition := webhooks._rename_column(d.definition, missing[1], fresh[1]);
            END IF;
        END IF;
        -- Conditions follow renames inside PostgreSQL (their WHEN clauses
        -- hold column numbers); the stored text is read back from them.
        FOREACH op IN ARRAY ARRAY['insert', 'update', 'delete'] LOOP
            IF d.definition #> ARRAY[op, 'condition'] IS NOT NULL THEN
                SELECT webhooks._trigger_condition(t.oid) INTO cond
                FROM pg_trigger t
                WHERE t.tgrelid = d.tgrelid AND t.tgname = webhooks._capture_trigger_name(d.name) || ':' || op;
                IF cond IS NOT NULL THEN
                    d.definition := jsonb_set(d.definition, ARRAY[op, 'condition'], to_jsonb(cond));
                END IF;
            END IF;
        END LOOP;
        UPDATE webhooks.event_triggers SET definition = d.definition, updated_at = now()
        WHERE name = d.name AND definition IS DISTINCT FROM d.definition;
    END LOOP;
END
$$;

-- Ordered delivery (#15): the key events of one row share, and their index.
ALTER TABLE webhooks.event_log ADD COLUMN ordering_key text;
CREATE INDEX event_log_order ON webhooks.event_log (trigger_name, ordering_key, id)
    WHERE ordering_key IS NOT NULL AND NOT delivered AND NOT error AND NOT archived;
