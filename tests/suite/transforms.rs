//! Hasura's request and response transforms end to end, and
//! `trigger_on_replication`: committed writes, the worker, and the
//! receiver on 127.0.0.1 seeing the request as transformed.

use std::sync::{Once, OnceLock};
use std::time::Duration;

use pg_webhooks_tests::events::{self, invocations};
use pg_webhooks_tests::{eventually, with_shared_env, Receiver};
use postgres::Client;
use serde_json::{json, Value};

const SETTINGS: &str = "webhooks.poll_interval = '10min'\nwebhooks.max_concurrent_deliveries = 16\n";
const WAIT: Duration = Duration::from_secs(30);

static RECEIVER: OnceLock<Receiver> = OnceLock::new();
static EXTENSION: Once = Once::new();

fn setup() -> (&'static Receiver, Client) {
    let r = RECEIVER.get_or_init(Receiver::start);
    let addr = format!("127.0.0.1:{}", r.port);
    let mut c = with_shared_env(SETTINGS, &[("PGWH_RECEIVER", &addr)], |cl| cl.connect("postgres"));
    EXTENSION.call_once(|| c.batch_execute("CREATE EXTENSION pg_webhooks").unwrap());
    (r, c)
}

/// A table `name (id, name, email)` and an event trigger on it for inserts.
fn watch(c: &mut Client, name: &str, webhook: &str, extra: Value) {
    c.batch_execute(&format!("CREATE TABLE {name} (id int PRIMARY KEY, name text, email text)")).unwrap();
    let mut args = json!({"name": name, "table": name, "webhook": webhook, "insert": {"columns": "*"}});
    for (k, v) in extra.as_object().unwrap() {
        args[k] = v.clone();
    }
    c.execute("SELECT webhooks.create_event_trigger($1)", &[&args]).unwrap();
}

/// Waits until every event of `trigger` ended; (delivered, error, tries).
fn settled(c: &mut Client, trigger: &str) -> Vec<(bool, bool, i32)> {
    events::settled(c, trigger, WAIT).into_iter().map(|(d, e, t, _)| (d, e, t)).collect()
}

#[test]
fn a_get_with_the_body_removed() {
    let (r, mut c) = setup();
    watch(
        &mut c,
        "t_get",
        &r.url("/ok/get"),
        json!({"request_transform": {"version": 2, "method": "GET", "body": {"action": "remove"},
                                     "query_params": {"id": "{{$body.event.data.new.id}}"}}}),
    );
    c.batch_execute("INSERT INTO t_get VALUES (5, 'Ann', 'a@x.io')").unwrap();
    let got = r.wait_for("/ok/get", 1, WAIT);
    assert_eq!(got[0].method, "GET");
    assert_eq!(got[0].path, "/ok/get?id=5");
    assert_eq!(got[0].body, "");
    assert_eq!(got[0].header("content-type"), None, "no body, no Content-Type");
    assert_eq!(settled(&mut c, "t_get"), vec![(true, false, 1)]);
    let (status, request, _, _) = invocations(&mut c, "t_get").remove(0);
    assert_eq!(status, Some(200));
    assert_eq!(request["method"], json!("GET"));
    assert_eq!(request["url"], json!(r.url("/ok/get?id=5")));
    assert_eq!(request["payload"], Value::Null);
}

#[test]
fn a_form_encoded_post() {
    let (r, mut c) = setup();
    watch(
        &mut c,
        "t_form",
        &r.url("/ok/form"),
        json!({"request_transform": {"version": 2, "body": {"action": "x_www_form_urlencoded",
               "form_template": {"text": "New user {{$body.event.data.new.name}}", "channel": "#signups"}}}}),
    );
    c.batch_execute("INSERT INTO t_form VALUES (1, 'Ann Lee', 'a@x.io')").unwrap();
    let got = r.wait_for("/ok/form", 1, WAIT);
    assert_eq!(got[0].method, "POST");
    assert_eq!(got[0].header("content-type"), Some("application/x-www-form-urlencoded"));
    assert_eq!(got[0].body, "text=New%20user%20Ann%20Lee&channel=%23signups");
    settled(&mut c, "t_form");
    let (_, request, _, _) = invocations(&mut c, "t_form").remove(0);
    assert_eq!(request["payload"], json!("text=New%20user%20Ann%20Lee&channel=%23signups"));
}

#[test]
fn a_json_body_with_query_params_and_headers_added_and_removed() {
    let (r, mut c) = setup();
    watch(
        &mut c,
        "t_json",
        &r.url("/ok/json?api=1"),
        json!({
            "headers": [{"name": "X-Drop", "value": "dropped"}, {"name": "X-Secret", "value_from_env": "PGWH_TEST_SECRET"}],
            "request_transform": {
                "version": 2, "method": "PUT", "template_engine": "Kriti",
                "url": "{{$base_url}}&user={{$body.event.data.new.id}}",
                "query_params": {"page": "{{$query_params[0][1]}}", "email": "{{$body.event.data.new.email}}",
                                 "absent": "{{$body.event.data.old}}"},
                "request_headers": {"add_headers": {"X-Name": "{{toUpper($body.event.data.new.name)}}"},
                                    "remove_headers": ["x-drop"]},
                "body": {"action": "transform",
                         "template": "{\"user\": {\"id\": {{$body.event.data.new.id}}, \"name\": {{$body.event.data.new.name}}}, \"op\": {{$body.event.op}}, \"table\": {{$body.table.name}}}"}
            }
        }),
    );
    c.batch_execute("INSERT INTO t_json VALUES (9, 'Bo', 'b o@x.io')").unwrap();
    let got = r.wait_for("/ok/json", 1, WAIT);
    let g = &got[0];
    assert_eq!(g.method, "PUT");
    // The query string is the transform's (the URL's own is replaced).
    assert_eq!(g.path, "/ok/json?page=1&email=b%20o%40x.io");
    assert_eq!(g.header("x-name"), Some("BO"));
    assert_eq!(g.header("x-drop"), None);
    assert_eq!(g.header("x-secret"), Some("s3cr3t-value"));
    assert_eq!(g.header("content-type"), Some("application/json"));
    assert_eq!(g.json(), json!({"user": {"id": 9, "name": "Bo"}, "op": "INSERT", "table": "t_json"}));
    assert!(g.header("webhook-id").is_some(), "the Standard Webhooks headers stay");
    settled(&mut c, "t_json");
    let (_, request, _, _) = invocations(&mut c, "t_json").remove(0);
    assert_eq!(request["method"], json!("PUT"));
    assert_eq!(request["payload"], json!({"user": {"id": 9, "name": "Bo"}, "op": "INSERT", "table": "t_json"}));
    let headers = request["headers"].as_array().unwrap();
    let logged = |n: &str| headers.iter().find(|h| h["name"] == json!(n)).map(|h| h["value"].clone());
    assert_eq!(logged("X-Name"), Some(json!("BO")));
    assert_eq!(logged("X-Drop"), None);
    assert_eq!(logged("X-Secret"), Some(json!("<redacted>")), "a value from the environment is never logged");
    assert!(!request.to_string().contains("s3cr3t-value"));
}

#[test]
fn a_failing_request_transform_ends_the_event_at_once() {
    let (r, mut c) = setup();
    watch(
        &mut c,
        "t_fail",
        &r.url("/ok/never"),
        json!({"retry_conf": {"num_retries": 5, "interval_sec": 1},
               "request_transform": {"body": "{\"x\": {{$body.event.data.new.no_such_column}}}"}}),
    );
    c.batch_execute("INSERT INTO t_fail VALUES (1, 'a', 'b')").unwrap();
    assert_eq!(settled(&mut c, "t_fail"), vec![(false, true, 1)], "error at once, no retries");
    let logs = invocations(&mut c, "t_fail");
    assert_eq!(logs.len(), 1);
    let (status, _, response, _) = &logs[0];
    assert_eq!(*status, None);
    let why = response["error"].as_str().unwrap();
    assert!(why.contains("request transform failed") && why.contains("no_such_column"), "{why}");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(r.received_on("/ok/never").is_empty(), "nothing was sent");
    assert_eq!(invocations(&mut c, "t_fail").len(), 1, "and nothing retried");
}

#[test]
fn a_response_transform_is_stored_and_its_failure_is_a_500() {
    let (r, mut c) = setup();
    watch(
        &mut c,
        "t_resp",
        &r.url("/json/resp"),
        json!({"response_transform": {"version": 2, "body": {"action": "transform",
               "template": "{\"ok\": {{$body.done}}, \"for\": {{$request.body.event.data.new.id}}}"}}}),
    );
    c.batch_execute("INSERT INTO t_resp VALUES (3, 'a', 'b')").unwrap();
    assert_eq!(settled(&mut c, "t_resp"), vec![(true, false, 1)]);
    let (status, _, response, _) = invocations(&mut c, "t_resp").remove(0);
    assert_eq!(status, Some(200));
    assert_eq!(response["body"], json!(r#"{"ok":true,"for":3}"#));

    watch(
        &mut c,
        "t_resp_bad",
        &r.url("/json/resp_bad"),
        json!({"retry_conf": {"num_retries": 1, "interval_sec": 1},
               "response_transform": {"body": "{{$body.missing}}"}}),
    );
    c.batch_execute("INSERT INTO t_resp_bad VALUES (1, 'a', 'b')").unwrap();
    assert_eq!(settled(&mut c, "t_resp_bad"), vec![(false, true, 2)], "retried as any failure, then dead");
    let logs = invocations(&mut c, "t_resp_bad");
    assert_eq!(logs.len(), 2);
    for (status, _, response, _) in logs {
        assert_eq!(status, Some(500));
        let body = response["body"].as_str().unwrap();
        assert!(body.contains("response transform failed") && body.contains("missing"), "{body}");
    }
    assert_eq!(r.received_on("/json/resp_bad").len(), 2);
}

#[test]
fn a_hasura_export_with_transforms_imports_and_delivers() {
    let (r, mut c) = setup();
    c.batch_execute("CREATE TABLE t_import (id int PRIMARY KEY, name text, email text)").unwrap();
    let export = json!({"resource_version": 7, "metadata": {"version": 3, "sources": [{
        "name": "default", "kind": "postgres",
        "tables": [{"table": {"schema": "public", "name": "t_import"}, "event_triggers": [{
            "name": "t_import",
            "definition": {"enable_manual": false, "insert": {"columns": "*"}},
            "retry_conf": {"num_retries": 0, "interval_sec": 10, "timeout_sec": 60},
            "webhook": r.url("/json/import"),
            "headers": [{"name": "X-Old", "value": "old"}],
            "request_transform": {"version": 2, "template_engine": "Kriti", "method": "PATCH",
                "url": "{{$base_url}}/{{$body.event.data.new.id}}",
                "query_params": "src=hasura&name={{escapeUri($body.event.data.new.name)}}",
                "request_headers": {"add_headers": {"X-Trigger": "{{$body.trigger.name}}"}, "remove_headers": ["X-Old"]},
                "body": {"action": "transform", "template": "{\"email\": {{$body.event.data.new.email}}}"}},
            "response_transform": {"version": 1, "body": "{\"n\": {{$body.n}}}"},
            "cleanup_config": {"schedule": "0 3 * * *", "clear_older_than": 168, "clean_invocation_logs": true},
            "trigger_on_replication": false
        }]}]
    }]}});
    let report: Value = c.query_one("SELECT webhooks.import_hasura_metadata($1)", &[&export]).unwrap().get(0);
    assert_eq!(report["created"], json!(["t_import"]), "{report}");
    assert_eq!(report["unsupported"], json!([]), "{report}");
    c.batch_execute("INSERT INTO t_import VALUES (4, 'Cy D', 'c@x.io')").unwrap();
    let got = r.wait_until(WAIT, "the imported trigger's request", |all| {
        all.iter().any(|g| g.path.starts_with("/json/import"))
    });
    let g = got.iter().find(|g| g.path.starts_with("/json/import")).unwrap();
    assert_eq!(g.method, "PATCH");
    assert_eq!(g.path, "/json/import/4?src=hasura&name=Cy%20D");
    assert_eq!(g.header("x-trigger"), Some("t_import"));
    assert_eq!(g.header("x-old"), None);
    assert_eq!(g.json(), json!({"email": "c@x.io"}));
    assert_eq!(settled(&mut c, "t_import"), vec![(true, false, 1)]);
    let (_, _, response, _) = invocations(&mut c, "t_import").remove(0);
    assert_eq!(response["body"], json!(r#"{"n":1}"#));
}

#[test]
fn trigger_on_replication_decides_capture_under_the_replica_role() {
    let (r, mut c) = setup();
    watch(&mut c, "t_origin_only", &r.url("/ok/origin"), json!({}));
    watch(&mut c, "t_always", &r.url("/ok/always"), json!({"trigger_on_replication": true}));
    // A logical replication apply worker runs as session_replication_role
    // = replica: only ALWAYS triggers fire.
    c.batch_execute(
        "SET session_replication_role = replica;
         INSERT INTO t_origin_only VALUES (1, 'a', 'b');
         INSERT INTO t_always VALUES (1, 'a', 'b');
         RESET session_replication_role;",
    )
    .unwrap();
    assert_eq!(settled(&mut c, "t_always"), vec![(true, false, 1)]);
    let captured: i64 = c
        .query_one("SELECT count(*) FROM webhooks.event_log WHERE trigger_name = 't_origin_only'", &[])
        .unwrap()
        .get(0);
    assert_eq!(captured, 0, "trigger_on_replication false: replicated changes are not captured");
    // Both capture their own changes.
    c.batch_execute("INSERT INTO t_origin_only VALUES (2, 'a', 'b')").unwrap();
    assert_eq!(settled(&mut c, "t_origin_only"), vec![(true, false, 1)]);
    let modes: Vec<String> = c
        .query(
            "SELECT tgenabled::text FROM pg_trigger WHERE tgrelid IN ('t_origin_only'::regclass, 't_always'::regclass)
             ORDER BY tgrelid::regclass::text",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(modes, vec!["A", "O"]);
}

/// Delivers two events of a new trigger `name` and makes the first look
/// two hours old; returns the ids (old, new).
fn two_ended_events(c: &mut Client, r: &Receiver, name: &str, extra: Value) -> (String, String) {
    watch(c, name, &r.url(&format!("/ok/{name}")), extra);
    c.batch_execute(&format!("INSERT INTO {name} VALUES (1, 'a', 'b'); INSERT INTO {name} VALUES (2, 'c', 'd');"))
        .unwrap();
    assert_eq!(settled(c, name), vec![(true, false, 1), (true, false, 1)]);
    let ids: Vec<String> = c
        .query("SELECT id::text FROM webhooks.event_log WHERE trigger_name = $1 ORDER BY id", &[&name])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    c.execute(
        "UPDATE webhooks.event_log SET created_at = created_at - interval '2 hours' WHERE id = $1::text::uuid",
        &[&ids[0]],
    )
    .unwrap();
    (ids[0].clone(), ids[1].clone())
}

fn events_and_logs(c: &mut Client, name: &str) -> (i64, i64) {
    let r = c
        .query_one(
            "SELECT (SELECT count(*) FROM webhooks.event_log WHERE trigger_name = $1),
                    (SELECT count(*) FROM webhooks.event_invocation_logs WHERE trigger_name = $1)",
            &[&name],
        )
        .unwrap();
    (r.get(0), r.get(1))
}

#[test]
fn cleanup_config_runs_on_its_schedule() {
    let (r, mut c) = setup();
    let (old, _) = two_ended_events(
        &mut c,
        r,
        "t_cleanup",
        json!({"cleanup_config": {"schedule": "* * * * *", "clear_older_than": 1, "batch_size": 1}}),
    );
    // The worker runs it at the next minute; only the event older than an
    // hour goes, its invocation log stays (clean_invocation_logs: false).
    let left = eventually(Duration::from_secs(75), "the scheduled cleanup", || {
        let n = events_and_logs(&mut c, "t_cleanup");
        (n.0 == 1).then_some(n)
    });
    assert_eq!(left, (1, 2));
    let gone: i64 =
        c.query_one("SELECT count(*) FROM webhooks.event_log WHERE id = $1::text::uuid", &[&old]).unwrap().get(0);
    assert_eq!(gone, 0);
}

#[test]
fn cleanups_can_be_run_paused_and_resumed_through_hasuras_api() {
    let (r, mut c) = setup();
    two_ended_events(
        &mut c,
        r,
        "t_cleanup_api",
        json!({"cleanup_config": {"schedule": "0 0 1 1 *", "clear_older_than": 24}}),
    );
    let run = json!({"type": "cleanup_event_trigger_logs",
                     "args": {"event_trigger_name": "t_cleanup_api", "clear_older_than": 1, "clean_invocation_logs": true}});
    let answer: Value = c.query_one("SELECT webhooks.query($1)", &[&run]).unwrap().get(0);
    assert_eq!(answer, json!({"message": "success", "deleted_event_logs": 1}));
    assert_eq!(events_and_logs(&mut c, "t_cleanup_api"), (1, 1), "the old event and its log are gone");

    let paused = |c: &mut Client| -> Value {
        c.query_one(
            "SELECT definition->'cleanup_config'->'paused' FROM webhooks.event_triggers WHERE name = 't_cleanup_api'",
            &[],
        )
        .unwrap()
        .get(0)
    };
    let pause = json!({"type": "pause_event_trigger_cleanups", "args": {"event_triggers": ["t_cleanup_api"], "source": "default"}});
    c.query_one("SELECT webhooks.query($1)", &[&pause]).unwrap();
    assert_eq!(paused(&mut c), json!(true));
    let resume = json!({"type": "resume_event_trigger_cleanups", "args": {"event_triggers": "all"}});
    c.query_one("SELECT webhooks.query($1)", &[&resume]).unwrap();
    assert_eq!(paused(&mut c), json!(false));

    // A trigger without a cleanup_config cannot have it paused.
    watch(&mut c, "t_no_cleanup", &r.url("/ok/no_cleanup"), json!({}));
    let e = c
        .query_one(
            "SELECT webhooks.query($1)",
            &[&json!({"type": "pause_event_trigger_cleanups", "args": {"event_triggers": ["t_no_cleanup"]}})],
        )
        .unwrap_err();
    let db = e.as_db_error().unwrap();
    assert_eq!(db.code().code(), "55000");
    assert!(db.message().contains("has no cleanup_config"), "{}", db.message());
}
