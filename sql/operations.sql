-- pg_webhooks: operations. Statistics per trigger and the cleanup of
-- finished events.

-- One row per trigger. "in_flight" counts events claimed by the worker
-- (locked); "pending" the rest of the undelivered ones.
CREATE VIEW webhooks.event_stats AS
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

-- Deletes finished events older than the cutoff, with their invocation
-- logs, in batches of at most 10,000 rows, each under short row locks.
-- Pending and in-flight events are never touched. Returns how many events
-- it removed.
CREATE FUNCTION webhooks.cleanup_event_logs(
    trigger_name text DEFAULT NULL,
    older_than interval DEFAULT '7 days',
    include_errors boolean DEFAULT false)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    removed bigint := 0;
    batch bigint;
BEGIN
    IF older_than IS NULL OR older_than < interval '0' THEN
        RAISE EXCEPTION 'invalid value for "older_than": %', coalesce(older_than::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Give a positive interval such as ''7 days''.';
    END IF;
    LOOP
        WITH doomed AS (
            SELECT e.id FROM webhooks.event_log e
            WHERE (cleanup_event_logs.trigger_name IS NULL OR e.trigger_name = cleanup_event_logs.trigger_name)
              AND e.created_at < now() - older_than
              AND e.locked IS NULL
              AND (e.delivered OR e.archived OR (include_errors AND e.error))
            LIMIT 10000
            FOR UPDATE SKIP LOCKED),
        logs AS (
            DELETE FROM webhooks.event_invocation_logs l USING doomed WHERE l.event_id = doomed.id)
        DELETE FROM webhooks.event_log e USING doomed WHERE e.id = doomed.id;
        GET DIAGNOSTICS batch = ROW_COUNT;
        removed := removed + batch;
        EXIT WHEN batch < 10000;
    END LOOP;
    RETURN removed;
END
$$;
