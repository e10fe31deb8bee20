-- pg_webhooks: what runs last. Privileges: nothing in schema webhooks is for PUBLIC: the
-- management functions change what is sent where, the event log holds row
-- data, and the invocation logs hold headers and responses. Superusers have
-- everything; a DBA grants the rest (see README, "Privileges").
REVOKE ALL ON ALL TABLES IN SCHEMA webhooks FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA webhooks FROM PUBLIC;
REVOKE ALL ON SCHEMA webhooks FROM PUBLIC;

-- Descriptions, shown by psql's \dn+, \dt+, \dv+ and \df+.
COMMENT ON SCHEMA webhooks IS 'pg_webhooks: Hasura-style event triggers; row changes delivered to webhooks by a background worker';
COMMENT ON TABLE webhooks.event_triggers IS 'One row per event trigger: its normalized definition; change it through webhooks.create_event_trigger';
COMMENT ON TABLE webhooks.event_log IS 'One row per captured event; pending until delivered, error or archived';
COMMENT ON TABLE webhooks.event_invocation_logs IS 'One row per delivery attempt: request, response and status';
COMMENT ON TABLE webhooks.endpoint_state IS 'The delivery worker''s record of endpoints it treats as down (no row: up)';
COMMENT ON VIEW webhooks.event_stats IS 'Per event trigger: pending, in flight, delivered, errors, retries, oldest pending age, paused';
COMMENT ON FUNCTION webhooks.create_event_trigger(jsonb) IS 'Creates an event trigger (or replaces it with "replace": true); returns the stored definition';
COMMENT ON FUNCTION webhooks.delete_event_trigger(text) IS 'Deletes an event trigger; its undelivered events are archived, never sent';
COMMENT ON FUNCTION webhooks.redeliver_event(uuid) IS 'Queues an event for delivery again, with tries reset';
COMMENT ON FUNCTION webhooks.redeliver_events(text, timestamptz, timestamptz) IS 'Queues the errored events of one trigger created in [since, until) again, with tries reset; returns how many';
COMMENT ON VIEW webhooks.failed_events IS 'Dead letters: events that used every attempt, with their last status and error';
COMMENT ON FUNCTION webhooks.invoke_event_trigger(text, jsonb) IS 'Queues a MANUAL event with the given payload; returns its id';
COMMENT ON FUNCTION webhooks.generate_signing_secret() IS 'A fresh Standard Webhooks signing secret (whsec_...) for the signing_secret key';
COMMENT ON FUNCTION webhooks.pause_event_trigger(text) IS 'Stops delivery for one event trigger; capture goes on';
COMMENT ON FUNCTION webhooks.resume_event_trigger(text) IS 'Restarts delivery for one event trigger; its backlog flows';
COMMENT ON FUNCTION webhooks.query(jsonb) IS 'Runs a Hasura metadata API body (create/delete/redeliver/invoke, v1 or v2 names, bulk)';
COMMENT ON FUNCTION webhooks.import_hasura_metadata(jsonb) IS 'Creates every event trigger of a Hasura v2 metadata export, all or nothing; returns a report';
COMMENT ON FUNCTION webhooks.worker_status() IS 'The delivery workers, one per database: pid, database, start, last wake-up, in flight, delivered and failed since start';
COMMENT ON FUNCTION webhooks.cleanup_event_logs(text, interval, boolean) IS 'Deletes delivered (and optionally errored) events older than a cutoff, with their invocation logs';
COMMENT ON FUNCTION webhooks.capture() IS 'Internal: the row trigger that captures events for one event trigger';

SELECT webhooks._warn_if_not_preloaded();
