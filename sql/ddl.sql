-- pg_webhooks: keeping definitions in step with the tables they watch.
--
-- Each event trigger owns one row trigger on its table, named
-- "pg_webhooks_<name>", that runs webhooks.capture('<name>'), and one more,
-- "pg_webhooks_<name>:<op>", for each operation with a "condition" (its
-- WHEN clause). Columns named in
-- "columns"/"payload" lists are recorded as dependencies of that trigger, so
-- PostgreSQL itself refuses to drop them (or drops the trigger with CASCADE).
-- These two event triggers handle the rest:
--   * when the row trigger disappears (DROP TABLE, DROP SCHEMA ... CASCADE,
--     DROP COLUMN ... CASCADE, DROP TRIGGER), the event trigger is deleted as
--     by delete_event_trigger: its undelivered events are archived;
--   * when the table, its schema or a listed column is renamed, the stored
--     definition follows the new names;
--   * when pg_restore creates a table trigger of ours, its column
--     dependencies (which pg_dump does not carry) are recorded again.

CREATE FUNCTION webhooks._capture_trigger_name(name text) RETURNS name
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
RETURN ('pg_webhooks_' || name)::name;

-- The WHEN clause of a trigger as PostgreSQL prints it now (after renames,
-- with the current names), without its parentheses; NULL when it has none.
-- Ours end in "EXECUTE FUNCTION webhooks.capture(...)", so the greedy match
-- stops at that last occurrence whatever the condition's text holds.
CREATE FUNCTION webhooks._trigger_condition(trigger_oid oid) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
RETURN substring(pg_get_triggerdef(trigger_oid) FROM ' WHEN \((.*)\) EXECUTE FUNCTION ');

CREATE FUNCTION webhooks._on_sql_drop() RETURNS event_trigger
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

-- Every column named in a "columns" or "payload" list, each once.
CREATE FUNCTION webhooks._listed_columns(def jsonb) RETURNS SETOF text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT DISTINCT e #>> '{}'
    FROM unnest(ARRAY['insert', 'update', 'delete']) AS op,
         unnest(ARRAY['columns', 'payload']) AS k,
         LATERAL jsonb_array_elements(
             CASE WHEN jsonb_typeof(def #> ARRAY[op, k]) = 'array' THEN def #> ARRAY[op, k] ELSE '[]' END) AS e
$$;

-- Replaces one column name by another in every "columns"/"payload" list.
CREATE FUNCTION webhooks._rename_column(def jsonb, old_name text, new_name text) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    op text;
    k text;
BEGIN
    FOREACH op IN ARRAY ARRAY['insert', 'update', 'delete'] LOOP
        FOREACH k IN ARRAY ARRAY['columns', 'payload'] LOOP
            IF jsonb_typeof(def #> ARRAY[op, k]) = 'array' THEN
                def := jsonb_set(def, ARRAY[op, k], (
                    SELECT jsonb_agg(CASE WHEN e = to_jsonb(old_name) THEN to_jsonb(new_name) ELSE e END ORDER BY i)
                    FROM jsonb_array_elements(def #> ARRAY[op, k]) WITH ORDINALITY AS x(e, i)));
            END IF;
        END LOOP;
    END LOOP;
    RETURN def;
END
$$;

CREATE FUNCTION webhooks._on_ddl_command_end() RETURNS event_trigger
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

CREATE EVENT TRIGGER pg_webhooks_sql_drop ON sql_drop
    WHEN TAG IN ('DROP TABLE', 'DROP SCHEMA', 'ALTER TABLE', 'DROP TRIGGER', 'DROP OWNED')
    EXECUTE FUNCTION webhooks._on_sql_drop();

CREATE EVENT TRIGGER pg_webhooks_ddl_command_end ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE', 'ALTER SCHEMA', 'CREATE TRIGGER')
    EXECUTE FUNCTION webhooks._on_ddl_command_end();

-- Every change to a definition, by any path, makes capture in every backend
-- read definitions again once it commits (src/wake.rs).
CREATE TRIGGER definitions_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON webhooks.event_triggers
    FOR EACH STATEMENT EXECUTE FUNCTION webhooks._definitions_changed();
