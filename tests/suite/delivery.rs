//! Delivery end to end: committed writes, the background worker, and a real
//! HTTP receiver on 127.0.0.1. The cluster polls only every 10 minutes, so
//! every delivery here also shows that commits wake the worker.

use std::sync::{Once, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pg_webhooks_tests::events::{self, invocations, states as state};
use pg_webhooks_tests::{eventually, one, with_shared_env, Receiver};
use postgres::Client;
use serde_json::{json, Value};

const SETTINGS: &str = "webhooks.poll_interval = '10min'\nwebhooks.max_concurrent_deliveries = 16\n";
const WAIT: Duration = Duration::from_secs(30);

static RECEIVER: OnceLock<Receiver> = OnceLock::new();
static EXTENSION: Once = Once::new();

/// The binary's receiver and a connection to the database the worker serves.
fn setup() -> (&'static Receiver, Client) {
    let r = RECEIVER.get_or_init(Receiver::start);
    let addr = format!("127.0.0.1:{}", r.port);
    let mut c = with_shared_env(SETTINGS, &[("PGWH_RECEIVER", &addr)], |cl| cl.connect("postgres"));
    EXTENSION.call_once(|| c.batch_execute("CREATE EXTENSION pg_webhooks").unwrap());
    (r, c)
}

/// A table `name` and an event trigger `name` on it, for inserts.
fn watch(c: &mut Client, name: &str, webhook: &str, extra: Value) {
    c.batch_execute(&format!("CREATE TABLE {name} (id int PRIMARY KEY, v text)")).unwrap();
    let mut args = json!({"name": name, "table": name, "webhook": webhook, "insert": {"columns": "*"}});
    for (k, v) in extra.as_object().unwrap() {
        args[k] = v.clone();
    }
    c.execute("SELECT webhooks.create_event_trigger($1)", &[&args]).unwrap();
}

fn settled(c: &mut Client, trigger: &str) -> Vec<(bool, bool, i32, bool)> {
    events::settled(c, trigger, WAIT)
}

#[test]
fn the_webhook_gets_the_exact_body_and_headers() {
    let (r, mut c) = setup();
    watch(
        &mut c,
        "d_body",
        &r.url("/ok/body"),
        json!({"headers": [{"name": "X-Plain", "value": "plain value"}, {"name": "X-Secret", "value_from_env": "PGWH_TEST_SECRET"}],
               "retry_conf": {"num_retries": 2}}),
    );
    c.batch_execute(
        "BEGIN; SELECT set_config('hasura.user', '{\"x-hasura-role\": \"editor\"}', true);
         INSERT INTO d_body VALUES (1, 'one'); COMMIT;",
    )
    .unwrap();
    let got = r.wait_for("/ok/body", 1, WAIT).remove(0);
    let row = c
        .query_one(
            "SELECT id::text, to_json(created_at) #>> '{}', payload FROM webhooks.event_log WHERE trigger_name = 'd_body'",
            &[],
        )
        .unwrap();
    let (id, created_at, payload): (String, String, Value) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(got.method, "POST");
    assert_eq!(
        got.json(),
        json!({
            "id": id,
            "created_at": created_at,
            "trigger": {"name": "d_body"},
            "table": {"schema": "public", "name": "d_body"},
            "event": {
                "op": "INSERT",
                "data": {"old": null, "new": {"id": 1, "v": "one"}},
                "session_variables": {"x-hasura-role": "editor"},
                "trace_context": null
            },
            "delivery_info": {"max_retries": 2, "current_retry": 0}
        })
    );
    assert_eq!(got.json()["event"], payload);
    assert_eq!(got.header("content-type"), Some("application/json"));
    assert_eq!(got.header("user-agent"), Some("pg_webhooks/0.3.0"));
    assert_eq!(got.header("x-plain"), Some("plain value"));
    assert_eq!(got.header("x-secret"), Some("s3cr3t-value"));
    assert_eq!(got.header("webhook-id"), Some(id.as_str()));
    let ts: u64 = got.header("webhook-timestamp").expect("webhook-timestamp").parse().unwrap();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    assert!(ts <= now && now - ts < 60, "webhook-timestamp {ts} is the attempt's time ({now})");

    assert_eq!(settled(&mut c, "d_body"), vec![(true, false, 1, true)]);
    let logs = invocations(&mut c, "d_body");
    assert_eq!(logs.len(), 1);
    let (status, request, response, _) = &logs[0];
    assert_eq!(*status, Some(200));
    assert_eq!(request["payload"], got.json());
    assert_eq!(request["url"], json!(r.url("/ok/body")));
    let headers = request["headers"].as_array().unwrap();
    assert!(headers.contains(&json!({"name": "X-Plain", "value": "plain value"})));
    assert!(headers.contains(&json!({"name": "X-Secret", "value": "<redacted: from env PGWH_TEST_SECRET>"})));
    assert!(headers.contains(&json!({"name": "webhook-id", "value": id})));
    assert_eq!(response["status"], json!(200));
    assert_eq!(response["body"], json!("ok"));
}

#[test]
fn failures_are_retried_with_spacing_and_current_retry() {
    let (r, mut c) = setup();
    watch(&mut c, "d_retry", &r.url("/status/500/retry"), json!({"retry_conf": {"num_retries": 2, "interval_sec": 1}}));
    c.batch_execute("INSERT INTO d_retry VALUES (1, 'x')").unwrap();
    let got = r.wait_for("/status/500/retry", 3, WAIT);
    let retries: Vec<Value> = got.iter().map(|g| g.json()["delivery_info"].clone()).collect();
    assert_eq!(
        retries,
        vec![
            json!({"max_retries": 2, "current_retry": 0}),
            json!({"max_retries": 2, "current_retry": 1}),
            json!({"max_retries": 2, "current_retry": 2})
        ]
    );
    for w in got.windows(2) {
        let gap = w[1].at - w[0].at;
        assert!(gap >= Duration::from_millis(900), "attempts are interval_sec apart: {gap:?}");
    }
    assert!(got.iter().all(|g| g.event_id() == got[0].event_id()), "webhook-id is stable across retries");
    assert_eq!(settled(&mut c, "d_retry"), vec![(false, true, 3, true)]);
    let logs = invocations(&mut c, "d_retry");
    assert_eq!(logs.iter().map(|l| l.0).collect::<Vec<_>>(), vec![Some(500); 3]);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(r.received_on("/status/500/retry").len(), 3, "no attempt after the last");
}

#[test]
fn retry_after_in_seconds_sets_the_delay() {
    let (r, mut c) = setup();
    watch(
        &mut c,
        "d_ra_secs",
        &r.url("/retry-after-secs/1/x"),
        json!({"retry_conf": {"num_retries": 1, "interval_sec": 3600}}),
    );
    c.batch_execute("INSERT INTO d_ra_secs VALUES (1, 'x')").unwrap();
    let got = r.wait_for("/retry-after-secs/1/x", 2, WAIT);
    assert!(got[1].at - got[0].at >= Duration::from_millis(900));
    assert_eq!(settled(&mut c, "d_ra_secs"), vec![(false, true, 2, true)], "Retry-After never adds attempts");
}

#[test]
fn retry_after_as_a_date_sets_the_delay() {
    let (r, mut c) = setup();
    watch(
        &mut c,
        "d_ra_date",
        &r.url("/retry-after-date/2/x"),
        json!({"retry_conf": {"num_retries": 1, "interval_sec": 3600}}),
    );
    c.batch_execute("INSERT INTO d_ra_date VALUES (1, 'x')").unwrap();
    let got = r.wait_for("/retry-after-date/2/x", 2, WAIT);
    assert!(got[1].at - got[0].at >= Duration::from_millis(900));
    assert_eq!(settled(&mut c, "d_ra_date"), vec![(false, true, 2, true)]);
}

#[test]
fn redirects_are_failures_and_not_followed() {
    let (r, mut c) = setup();
    watch(&mut c, "d_redirect", &r.url("/redirect/x"), json!({}));
    c.batch_execute("INSERT INTO d_redirect VALUES (1, 'x')").unwrap();
    r.wait_for("/redirect/x", 1, WAIT);
    assert_eq!(settled(&mut c, "d_redirect"), vec![(false, true, 1, true)]);
    assert_eq!(invocations(&mut c, "d_redirect")[0].0, Some(302));
    assert!(r.received_on("/ok/redirected").is_empty(), "the Location was not followed");
}

#[test]
fn a_hanging_webhook_times_out() {
    let (r, mut c) = setup();
    watch(&mut c, "d_hang", &r.url("/hang/timeout"), json!({"retry_conf": {"timeout_sec": 1}}));
    c.batch_execute("INSERT INTO d_hang VALUES (1, 'x')").unwrap();
    assert_eq!(settled(&mut c, "d_hang"), vec![(false, true, 1, true)]);
    let (status, _, response, duration) = invocations(&mut c, "d_hang").remove(0);
    assert_eq!(status, None);
    assert!(response["error"].as_str().unwrap().contains("timed out"), "{response}");
    assert!((900.0..15000.0).contains(&duration), "the attempt lasted about timeout_sec: {duration} ms");
}

#[test]
fn a_refused_connection_is_a_failed_attempt() {
    let (_, mut c) = setup();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    watch(
        &mut c,
        "d_refused",
        &format!("http://127.0.0.1:{port}/"),
        json!({"retry_conf": {"num_retries": 1, "interval_sec": 0}}),
    );
    c.batch_execute("INSERT INTO d_refused VALUES (1, 'x')").unwrap();
    assert_eq!(settled(&mut c, "d_refused"), vec![(false, true, 2, true)]);
    let logs = invocations(&mut c, "d_refused");
    assert_eq!(logs.len(), 2);
    for (status, _, response, _) in logs {
        assert_eq!(status, None);
        assert!(response["error"].as_str().unwrap().contains("connection failed"), "{response}");
    }
}

#[test]
fn redeliver_sends_an_errored_event_again() {
    let (r, mut c) = setup();
    watch(&mut c, "d_redeliver", &r.url("/fail-first/1/x"), json!({}));
    c.batch_execute("INSERT INTO d_redeliver VALUES (1, 'x')").unwrap();
    assert_eq!(settled(&mut c, "d_redeliver"), vec![(false, true, 1, true)]);
    let id: uuid::Uuid = one(&mut c, "SELECT id FROM webhooks.event_log WHERE trigger_name = 'd_redeliver'");
    c.execute("SELECT webhooks.redeliver_event($1)", &[&id]).unwrap();
    let got = r.wait_for("/fail-first/1/x", 2, WAIT);
    assert_eq!(got[1].json()["delivery_info"]["current_retry"], json!(0), "tries start again at 0");
    assert_eq!(got[1].event_id(), id.to_string());
    assert_eq!(settled(&mut c, "d_redeliver"), vec![(true, false, 1, true)]);
    assert_eq!(invocations(&mut c, "d_redeliver").len(), 2);
}

#[test]
fn manual_events_are_delivered() {
    let (r, mut c) = setup();
    watch(&mut c, "d_manual", &r.url("/ok/manual"), json!({}));
    let id: uuid::Uuid = c
        .query_one("SELECT webhooks.invoke_event_trigger('d_manual', $1)", &[&json!({"order": 7, "items": ["a"]})])
        .unwrap()
        .get(0);
    let got = r.wait_for("/ok/manual", 1, WAIT).remove(0);
    let body = got.json();
    assert_eq!(body["id"], json!(id.to_string()));
    assert_eq!(body["event"]["op"], json!("MANUAL"));
    assert_eq!(body["event"]["data"], json!({"old": null, "new": {"order": 7, "items": ["a"]}}));
    assert_eq!(body["table"], json!({"schema": "public", "name": "d_manual"}));
}

#[test]
fn a_deleted_triggers_pending_events_are_never_sent() {
    let (r, mut c) = setup();
    // events written and the trigger deleted in one transaction
    watch(&mut c, "d_deleted", &r.url("/ok/deleted"), json!({}));
    c.batch_execute("BEGIN; INSERT INTO d_deleted VALUES (1, 'x'), (2, 'y'); SELECT webhooks.delete_event_trigger('d_deleted'); COMMIT;")
        .unwrap();
    // events waiting for a retry when the trigger is deleted
    watch(
        &mut c,
        "d_deleted_retry",
        &r.url("/status/500/deleted-retry"),
        json!({"retry_conf": {"num_retries": 5, "interval_sec": 2}}),
    );
    c.batch_execute("INSERT INTO d_deleted_retry VALUES (1, 'x')").unwrap();
    r.wait_for("/status/500/deleted-retry", 1, WAIT);
    eventually(WAIT, "the first attempt to be recorded", || {
        (one::<i64>(
            &mut c,
            "SELECT count(*) FROM webhooks.event_invocation_logs WHERE trigger_name = 'd_deleted_retry'",
        ) == 1)
            .then_some(())
    });
    c.batch_execute("SELECT webhooks.delete_event_trigger('d_deleted_retry')").unwrap();
    // a later event of another trigger shows the worker went past them
    watch(&mut c, "d_deleted_marker", &r.url("/ok/deleted-marker"), json!({}));
    std::thread::sleep(Duration::from_secs(3));
    c.batch_execute("INSERT INTO d_deleted_marker VALUES (1, 'x')").unwrap();
    r.wait_for("/ok/deleted-marker", 1, WAIT);
    assert!(
        r.received_on("/ok/deleted").iter().all(|g| g.path == "/ok/deleted-marker"),
        "no event of d_deleted was sent"
    );
    assert_eq!(r.received_on("/status/500/deleted-retry").len(), 1, "no retry after the delete");
    let archived: i64 = one(
        &mut c,
        "SELECT count(*) FROM webhooks.event_log WHERE trigger_name IN ('d_deleted', 'd_deleted_retry') AND archived AND NOT delivered",
    );
    assert_eq!(archived, 3);
}

#[test]
fn secrets_from_the_environment_are_redacted() {
    let (r, mut c) = setup();
    watch(
        &mut c,
        "d_redact",
        "http://{{PGWH_RECEIVER}}/echo/redact",
        json!({"headers": [{"name": "Authorization", "value_from_env": "PGWH_TEST_SECRET"}]}),
    );
    c.batch_execute("CREATE TABLE d_redact_env (id int PRIMARY KEY)").unwrap();
    c.execute(
        "SELECT webhooks.create_event_trigger($1)",
        &[&json!({"name": "d_redact_env", "table": "d_redact_env", "webhook_from_env": "PGWH_TEST_URL", "insert": {"columns": "*"}})],
    )
    .unwrap();
    c.batch_execute("INSERT INTO d_redact VALUES (1, 'x'); INSERT INTO d_redact_env VALUES (1);").unwrap();
    let got = r.wait_for("/echo/redact", 1, WAIT).remove(0);
    assert_eq!(got.header("authorization"), Some("s3cr3t-value"), "the webhook gets the secret");
    settled(&mut c, "d_redact");
    settled(&mut c, "d_redact_env");
    let logs: String = one(
        &mut c,
        "SELECT string_agg(request::text || response::text, ' ') FROM webhooks.event_invocation_logs
         WHERE trigger_name IN ('d_redact', 'd_redact_env')",
    );
    assert!(logs.contains("authorization=<redacted>"), "a webhook echoing the secret is scrubbed: {logs}");
    assert!(!logs.contains("s3cr3t-value"), "{logs}");
    assert!(!logs.contains("127.0.0.1:9/from-env"), "{logs}");
    assert!(logs.contains("{{PGWH_RECEIVER}}") && logs.contains("{{PGWH_TEST_URL}}"), "{logs}");
    let definitions: String = one(&mut c, "SELECT string_agg(definition::text, ' ') FROM webhooks.event_triggers");
    assert!(!definitions.contains("s3cr3t-value"));
    let server_log = with_shared_env(SETTINGS, &[], |cl| cl.server_log());
    assert!(!server_log.contains("s3cr3t-value"), "no secret in the server log");
}

#[test]
fn a_hanging_webhook_does_not_hold_back_other_triggers() {
    let (r, mut c) = setup();
    watch(&mut c, "d_slow", &r.url("/hang/isolation"), json!({"retry_conf": {"timeout_sec": 60}}));
    watch(&mut c, "d_fast", &r.url("/ok/isolation"), json!({}));
    c.batch_execute("INSERT INTO d_slow SELECT g, 'x' FROM generate_series(1, 40) g").unwrap();
    r.wait_for("/hang/isolation", 1, WAIT);
    c.batch_execute("INSERT INTO d_fast SELECT g, 'x' FROM generate_series(1, 20) g").unwrap();
    r.wait_for("/ok/isolation", 20, WAIT);
    assert_eq!(settled(&mut c, "d_fast").len(), 20);
    let slow_done: i64 =
        one(&mut c, "SELECT count(*) FROM webhooks.event_invocation_logs WHERE trigger_name = 'd_slow'");
    assert_eq!(slow_done, 0, "every slow attempt is still hanging while the fast ones went through");
    let hanging = r.received_on("/hang/isolation").len();
    assert!(hanging <= 12, "one trigger takes at most 3/4 of the 16 delivery slots, got {hanging}");
    c.batch_execute("SELECT webhooks.delete_event_trigger('d_slow')").unwrap();
}

#[test]
fn the_worker_is_visible_and_reloads_settings() {
    let (r, mut c) = setup();
    let pid = pg_webhooks_tests::worker_pid(&mut c);
    let db: String = one(&mut c, &format!("SELECT datname::text FROM pg_stat_activity WHERE pid = {pid}"));
    assert_eq!(db, "postgres");
    c.batch_execute("ALTER SYSTEM SET webhooks.batch_size = 3").unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    watch(&mut c, "d_sighup", &r.url("/ok/sighup"), json!({}));
    let t0 = Instant::now();
    c.batch_execute("INSERT INTO d_sighup SELECT g, 'x' FROM generate_series(1, 10) g").unwrap();
    r.wait_for("/ok/sighup", 10, WAIT);
    assert!(t0.elapsed() < WAIT);
    let same: i32 = one(&mut c, "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_webhooks'");
    assert_eq!(same, pid, "a reload does not restart the worker");
    c.batch_execute("ALTER SYSTEM RESET webhooks.batch_size").unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
}

#[test]
fn large_responses_are_read_up_to_the_limit() {
    let (r, mut c) = setup();
    watch(&mut c, "d_big", &r.url("/big/x"), json!({}));
    c.batch_execute("INSERT INTO d_big VALUES (1, 'x')").unwrap();
    assert_eq!(settled(&mut c, "d_big"), vec![(true, false, 1, true)]);
    let (status, _, response, _) = invocations(&mut c, "d_big").remove(0);
    assert_eq!(status, Some(200));
    assert_eq!(response["body"].as_str().unwrap().len(), 16 * 1024, "cut at webhooks.response_body_limit");
    assert_eq!(response["body_truncated"], json!(true));
}

#[test]
fn a_paused_trigger_captures_but_does_not_deliver_until_resumed() {
    let (r, mut c) = setup();
    watch(&mut c, "d_paused", &r.url("/ok/paused"), json!({}));
    watch(&mut c, "d_paused_marker", &r.url("/ok/pmarker"), json!({}));
    c.batch_execute("SELECT webhooks.pause_event_trigger('d_paused')").unwrap();
    let paused: bool = one(&mut c, "SELECT paused FROM webhooks.event_triggers WHERE name = 'd_paused'");
    assert!(paused);
    c.batch_execute("INSERT INTO d_paused SELECT g, 'x' FROM generate_series(1, 5) g").unwrap();
    c.batch_execute("INSERT INTO d_paused_marker VALUES (1, 'x')").unwrap();
    r.wait_for("/ok/pmarker", 1, WAIT);
    std::thread::sleep(Duration::from_millis(300));
    assert!(r.received_on("/ok/paused").is_empty(), "nothing is delivered while paused");
    assert_eq!(state(&mut c, "d_paused").len(), 5, "capture goes on");
    // replace keeps the pause
    c.execute(
        "SELECT webhooks.create_event_trigger($1)",
        &[&json!({"name": "d_paused", "table": "d_paused", "webhook": r.url("/ok/paused"), "insert": {"columns": "*"}, "replace": true})],
    )
    .unwrap();
    assert!(one::<bool>(&mut c, "SELECT paused FROM webhooks.event_triggers WHERE name = 'd_paused'"));
    c.batch_execute("SELECT webhooks.resume_event_trigger('d_paused')").unwrap();
    r.wait_for("/ok/paused", 5, WAIT);
    assert_eq!(settled(&mut c, "d_paused").len(), 5);
    let e = pg_webhooks_tests::assert_sql_error(
        &mut c,
        "SELECT webhooks.pause_event_trigger('nope')",
        "42704",
        &["\"nope\""],
    );
    assert!(e.hint.is_some());
}

#[test]
fn event_stats_and_worker_status_show_what_happens() {
    let (r, mut c) = setup();
    watch(&mut c, "d_stats_ok", &r.url("/ok/stats"), json!({}));
    watch(
        &mut c,
        "d_stats_err",
        &r.url("/status/500/stats"),
        json!({"retry_conf": {"num_retries": 1, "interval_sec": 0}}),
    );
    c.batch_execute(
        "INSERT INTO d_stats_ok SELECT g, 'x' FROM generate_series(1, 3) g; INSERT INTO d_stats_err VALUES (1, 'x');",
    )
    .unwrap();
    settled(&mut c, "d_stats_ok");
    settled(&mut c, "d_stats_err");
    c.batch_execute("SELECT webhooks.pause_event_trigger('d_stats_ok'); INSERT INTO d_stats_ok VALUES (4, 'x');")
        .unwrap();
    let row = c
        .query_one(
            "SELECT pending, in_flight, delivered, errors, retries, oldest_pending_age IS NOT NULL,
                    last_delivered_at IS NOT NULL, last_error_at IS NULL, paused
             FROM webhooks.event_stats WHERE trigger_name = 'd_stats_ok'",
            &[],
        )
        .unwrap();
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, i64>(1), row.get::<_, i64>(2), row.get::<_, i64>(3), row.get::<_, i64>(4)),
        (1, 0, 3, 0, 3)
    );
    assert!(row.get::<_, bool>(5) && row.get::<_, bool>(6) && row.get::<_, bool>(7) && row.get::<_, bool>(8));
    let row = c
        .query_one(
            "SELECT pending, delivered, errors, retries, last_error_at IS NOT NULL, last_delivered_at IS NULL, paused
             FROM webhooks.event_stats WHERE trigger_name = 'd_stats_err'",
            &[],
        )
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1), row.get::<_, i64>(2), row.get::<_, i64>(3)), (0, 0, 1, 1));
    assert!(row.get::<_, bool>(4) && row.get::<_, bool>(5) && !row.get::<_, bool>(6));
    c.batch_execute("SELECT webhooks.resume_event_trigger('d_stats_ok')").unwrap();

    let status = c
        .query_one(
            "SELECT s.pid = a.pid, s.database, s.started_at <= now(), s.last_wakeup IS NOT NULL, s.delivered >= 3, s.failed >= 1, s.in_flight >= 0
             FROM webhooks.worker_status() s JOIN pg_stat_activity a ON a.backend_type = 'pg_webhooks'",
            &[],
        )
        .unwrap();
    assert!(status.get::<_, bool>(0), "the pid is the worker's");
    assert_eq!(status.get::<_, String>(1), "postgres");
    for i in 2..7 {
        assert!(status.get::<_, bool>(i), "column {i}");
    }
}

#[test]
fn cleanup_removes_only_finished_events_older_than_the_cutoff() {
    let (r, mut c) = setup();
    watch(&mut c, "d_clean", &r.url("/ok/clean"), json!({}));
    watch(&mut c, "d_clean_err", &r.url("/status/500/clean"), json!({}));
    c.batch_execute(
        "INSERT INTO d_clean SELECT g, 'x' FROM generate_series(1, 5) g; INSERT INTO d_clean_err VALUES (1, 'x');",
    )
    .unwrap();
    settled(&mut c, "d_clean");
    settled(&mut c, "d_clean_err");
    c.batch_execute(
        "SELECT webhooks.pause_event_trigger('d_clean');
         INSERT INTO d_clean VALUES (6, 'pending');
         UPDATE webhooks.event_log SET created_at = now() - interval '30 days' WHERE trigger_name IN ('d_clean', 'd_clean_err');
         UPDATE webhooks.event_log SET created_at = now() - interval '1 day'
           WHERE trigger_name = 'd_clean' AND payload #>> '{data,new,id}' = '5';",
    )
    .unwrap();
    let removed: i64 = one(&mut c, "SELECT webhooks.cleanup_event_logs('d_clean')");
    assert_eq!(removed, 4, "four delivered events are older than 7 days; the pending one stays");
    let left: Vec<(String, bool)> = c
        .query("SELECT payload #>> '{data,new,id}', delivered FROM webhooks.event_log WHERE trigger_name = 'd_clean' ORDER BY 1", &[])
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(left, vec![("5".to_string(), true), ("6".to_string(), false)]);
    let orphans: i64 = one(
        &mut c,
        "SELECT count(*) FROM webhooks.event_invocation_logs l WHERE NOT EXISTS (SELECT FROM webhooks.event_log e WHERE e.id = l.event_id)",
    );
    assert_eq!(orphans, 0, "invocation logs go with their events");
    assert_eq!(
        one::<i64>(&mut c, "SELECT webhooks.cleanup_event_logs('d_clean_err')"),
        0,
        "errors are kept by default"
    );
    assert_eq!(one::<i64>(&mut c, "SELECT webhooks.cleanup_event_logs('d_clean_err', include_errors => true)"), 1);
    assert_eq!(one::<i64>(&mut c, "SELECT webhooks.cleanup_event_logs('d_clean', older_than => interval '1 hour')"), 1);
    pg_webhooks_tests::assert_sql_error(
        &mut c,
        "SELECT webhooks.cleanup_event_logs(NULL, interval '-1 day')",
        "22023",
        &["older_than"],
    );
    c.batch_execute("SELECT webhooks.resume_event_trigger('d_clean')").unwrap();
}

#[test]
fn retention_makes_the_worker_clean_up_and_survives_bad_values() {
    let (r, mut c) = setup();
    watch(&mut c, "d_retention", &r.url("/ok/retention"), json!({}));
    c.batch_execute("INSERT INTO d_retention SELECT g, 'x' FROM generate_series(1, 4) g").unwrap();
    settled(&mut c, "d_retention");
    c.batch_execute(
        "UPDATE webhooks.event_log SET created_at = now() - interval '2 hours'
         WHERE trigger_name = 'd_retention' AND payload #>> '{data,new,id}' IN ('1', '2')",
    )
    .unwrap();
    let pid: i32 = one(&mut c, "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_webhooks'");
    c.batch_execute("ALTER SYSTEM SET webhooks.retention = 'banana'").unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    eventually(WAIT, "a warning about the bad value", || {
        let log = with_shared_env(SETTINGS, &[], |cl| cl.server_log());
        log.contains("webhooks.retention = 'banana' is not usable").then_some(())
    });
    c.batch_execute("ALTER SYSTEM SET webhooks.retention = '1 hour'").unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    let left: Vec<String> = eventually(WAIT, "the old events to be removed", || {
        let ids: Vec<String> = c
            .query("SELECT payload #>> '{data,new,id}' FROM webhooks.event_log WHERE trigger_name = 'd_retention' ORDER BY 1", &[])
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        (ids.len() == 2).then_some(ids)
    });
    assert_eq!(left, vec!["3", "4"]);
    c.batch_execute("ALTER SYSTEM RESET webhooks.retention").unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    let same: i32 = one(&mut c, "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_webhooks'");
    assert_eq!(same, pid, "a bad retention value does not stop the worker");
}

/// The shape of a value: objects by their keys, arrays by their first
/// element, scalars by their JSON type.
fn shape(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
        Value::Array(a) => json!([a.first().map(shape)]),
        Value::String(_) => json!("string"),
        Value::Number(_) => json!("number"),
        Value::Bool(_) => json!("boolean"),
        Value::Null => json!("null"),
    }
}

#[test]
fn payloads_have_the_shape_of_hasuras() {
    // An UPDATE event as Hasura v2 delivers it (its documented payload), for
    // a table (id int, name text, tags jsonb) and a request with a role.
    let hasura = json!({
        "event": {
            "session_variables": {"x-hasura-role": "admin"},
            "op": "UPDATE",
            "data": {
                "old": {"id": 1, "name": "a", "tags": {"k": [1]}},
                "new": {"id": 1, "name": "b", "tags": {"k": [1]}}
            },
            "trace_context": {"trace_id": "8b35d6a3ea6e4a8e", "span_id": "5e0d8ad1c1d0ff3a"}
        },
        "created_at": "2026-11-29T10:00:00.123456Z",
        "id": "85558393-c75d-4d2f-9c15-e80591b83894",
        "delivery_info": {"max_retries": 0, "current_retry": 0},
        "trigger": {"name": "d_shape"},
        "table": {"schema": "public", "name": "d_shape"}
    });
    let (r, mut c) = setup();
    c.batch_execute("CREATE TABLE d_shape (id int PRIMARY KEY, name text, tags jsonb)").unwrap();
    c.execute(
        "SELECT webhooks.create_event_trigger($1)",
        &[&json!({"name": "d_shape", "table": "d_shape", "webhook": r.url("/ok/shape"), "update": {"columns": "*"}})],
    )
    .unwrap();
    c.batch_execute(
        "INSERT INTO d_shape VALUES (1, 'a', '{\"k\": [1]}');
         BEGIN;
         SELECT set_config('hasura.user', '{\"x-hasura-role\": \"admin\"}', true);
         SELECT set_config('hasura.tracecontext', '{\"trace_id\": \"8b35d6a3ea6e4a8e\", \"span_id\": \"5e0d8ad1c1d0ff3a\"}', true);
         UPDATE d_shape SET name = 'b';
         COMMIT;",
    )
    .unwrap();
    let ours = r.wait_for("/ok/shape", 1, WAIT).remove(0).json();
    assert_eq!(shape(&ours), shape(&hasura), "same keys, nesting and value types\nours: {ours}");
    let created = ours["created_at"].as_str().unwrap();
    assert!(created.len() >= 20 && created.as_bytes()[10] == b'T', "created_at is ISO 8601: {created}");
    assert!(uuid::Uuid::parse_str(ours["id"].as_str().unwrap()).is_ok());
}
