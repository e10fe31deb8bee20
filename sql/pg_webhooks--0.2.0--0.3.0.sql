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
