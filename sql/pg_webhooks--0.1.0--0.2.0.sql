-- pg_webhooks 0.1.0 -> 0.2.0.
--
-- Most of 0.2.0 is in the shared library: capture builds each event's
-- payload itself and appends it to webhooks.event_log without running SQL
-- per row. The event log, its indexes and every definition stay as they
-- are, and events captured by 0.1.0 are delivered as before.
-- The SQL objects gain descriptions (psql's \dt+, \df+).
--
-- event_invocation_logs.request and .response become json, as in Hasura:
-- the worker writes them as text, and json stores that text as it is where
-- jsonb would parse and rebuild it on every attempt. This rewrites the
-- table once (an ACCESS EXCLUSIVE lock for the time it takes): run
-- webhooks.cleanup_event_logs() first if the logs are large.
\echo Use "ALTER EXTENSION pg_webhooks UPDATE" to load this file. \quit

-- The delivery worker locks the definitions and then the event tables at
-- the start of each round (see src/event_log.rs, lock_for_round); this
-- script changes them. Taking the same locks first, in the same order,
-- makes the worker wait for the update instead of deadlocking with it.
LOCK TABLE webhooks.event_triggers, webhooks.event_log, webhooks.event_invocation_logs IN ACCESS EXCLUSIVE MODE;

COMMENT ON SCHEMA webhooks IS 'pg_webhooks: Hasura-style event triggers; row changes delivered to webhooks by a background worker';
COMMENT ON TABLE webhooks.event_triggers IS 'One row per event trigger: its normalized definition; change it through webhooks.create_event_trigger';
COMMENT ON TABLE webhooks.event_log IS 'One row per captured event; pending until delivered, error or archived';
COMMENT ON TABLE webhooks.event_invocation_logs IS 'One row per delivery attempt: request, response and status';
COMMENT ON VIEW webhooks.event_stats IS 'Per event trigger: pending, in flight, delivered, errors, retries, oldest pending age, paused';
COMMENT ON FUNCTION webhooks.create_event_trigger(jsonb) IS 'Creates an event trigger (or replaces it with "replace": true); returns the stored definition';
COMMENT ON FUNCTION webhooks.delete_event_trigger(text) IS 'Deletes an event trigger; its undelivered events are archived, never sent';
COMMENT ON FUNCTION webhooks.redeliver_event(uuid) IS 'Queues an event for delivery again, with tries reset';
COMMENT ON FUNCTION webhooks.invoke_event_trigger(text, jsonb) IS 'Queues a MANUAL event with the given payload; returns its id';
COMMENT ON FUNCTION webhooks.pause_event_trigger(text) IS 'Stops delivery for one event trigger; capture goes on';
COMMENT ON FUNCTION webhooks.resume_event_trigger(text) IS 'Restarts delivery for one event trigger; its backlog flows';
COMMENT ON FUNCTION webhooks.query(jsonb) IS 'Runs a Hasura metadata API body (create/delete/redeliver/invoke, v1 or v2 names, bulk)';
COMMENT ON FUNCTION webhooks.import_hasura_metadata(jsonb) IS 'Creates every event trigger of a Hasura v2 metadata export, all or nothing; returns a report';
COMMENT ON FUNCTION webhooks.worker_status() IS 'The delivery worker: pid, database, start, last wake-up, in flight, delivered and failed since start';
COMMENT ON FUNCTION webhooks.cleanup_event_logs(text, interval, boolean) IS 'Deletes delivered (and optionally errored) events older than a cutoff, with their invocation logs';
COMMENT ON FUNCTION webhooks.capture() IS 'Internal: the row trigger that captures events for one event trigger';

ALTER TABLE webhooks.event_invocation_logs
    ALTER COLUMN request TYPE json USING request::json,
    ALTER COLUMN response TYPE json USING response::json;
