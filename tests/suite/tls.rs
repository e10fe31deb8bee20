//! HTTPS end to end: a local receiver whose certificate comes from a CA the
//! test makes. Trusted through `webhooks.ca_file` it is delivered to; the
//! system's store does not know that CA; expired and wrong-host
//! certificates fail with the host and the reason, and are retried like
//! any failure.

use std::time::Duration;

use pg_webhooks_tests::https::{Ca, HttpsReceiver};
use pg_webhooks_tests::{eventually, Cluster};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

/// Once trigger `name`'s event `id` has used its two attempts: their errors.
fn failed_attempts(c: &mut postgres::Client, name: &str, id: i32) -> Vec<String> {
    eventually(WAIT, "both attempts to fail", || {
        let rows = c
            .query(
                "SELECT l.response FROM webhooks.event_invocation_logs l JOIN webhooks.event_log e ON e.id = l.event_id
                 WHERE e.trigger_name = $1 AND (e.payload #>> '{data,new,id}')::int = $2 AND e.error",
                &[&name, &id],
            )
            .unwrap();
        (rows.len() == 2).then(|| {
            rows.iter().map(|r| r.get::<_, Value>(0)["error"].as_str().unwrap_or_default().to_string()).collect()
        })
    })
}

#[test]
fn https_trusts_the_configured_ca_and_explains_failures() {
    let ca = Ca::new();
    let good = HttpsReceiver::start(&ca, &["127.0.0.1"], false);
    let expired = HttpsReceiver::start(&ca, &["127.0.0.1"], true);
    let wrong_host = HttpsReceiver::start(&ca, &["other.example"], false);
    let cluster = Cluster::start("webhooks.poll_interval = '200ms'\n");
    let ca_file = cluster.dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let mut c = cluster.connect("postgres");
    c.batch_execute("CREATE EXTENSION pg_webhooks; CREATE TABLE t (id int)").unwrap();
    let reload = |c: &mut postgres::Client, sql: &str| {
        c.batch_execute(sql).unwrap();
        c.batch_execute("SELECT pg_reload_conf()").unwrap();
        std::thread::sleep(Duration::from_millis(1500));
    };
    reload(&mut c, &format!("ALTER SYSTEM SET webhooks.ca_file = '{}'", ca_file.display()));
    for (name, url) in
        [("good", good.url("/ok")), ("expired", expired.url("/ok")), ("wrong_host", wrong_host.url("/ok"))]
    {
        c.execute(
            "SELECT webhooks.create_event_trigger($1)",
            &[&json!({"name": name, "table": "t", "webhook": url, "insert": {"columns": "*"},
                      "retry_conf": {"num_retries": 1, "interval_sec": 0}})],
        )
        .unwrap();
    }
    c.batch_execute("INSERT INTO t VALUES (1)").unwrap();
    eventually(WAIT, "the trusted receiver", || (good.received() == 1).then_some(()));
    for e in failed_attempts(&mut c, "expired", 1) {
        assert!(e.starts_with("TLS with 127.0.0.1 failed") && e.contains("expired"), "{e}");
    }
    for e in failed_attempts(&mut c, "wrong_host", 1) {
        assert!(e.starts_with("TLS with 127.0.0.1 failed") && e.contains("not valid for name"), "{e}");
    }
    assert_eq!((expired.received(), wrong_host.received()), (0, 0), "no request went over a bad certificate");

    // Without ca_file the system's store is trusted, which does not know
    // the test's CA.
    reload(&mut c, "ALTER SYSTEM RESET webhooks.ca_file");
    c.batch_execute("INSERT INTO t VALUES (2)").unwrap();
    for e in failed_attempts(&mut c, "good", 2) {
        assert!(e.starts_with("TLS with 127.0.0.1 failed") && e.contains("UnknownIssuer"), "{e}");
    }
    assert_eq!(good.received(), 1);
    // A ca_file that cannot be read: a WARNING, and HTTPS trusts nothing.
    reload(&mut c, "ALTER SYSTEM SET webhooks.ca_file = '/nonexistent/ca.pem'");
    assert!(cluster.server_log().contains("webhooks.ca_file = '/nonexistent/ca.pem' cannot be read"));
}
