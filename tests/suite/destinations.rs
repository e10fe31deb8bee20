//! Destination policy: `webhooks.deny_networks` and `webhooks.allow_networks`
//! refuse addresses before any connection is made, with the rule in the
//! invocation log; changes apply on reload.

use std::time::Duration;

use pg_webhooks_tests::{eventually, one, Cluster, Receiver};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

fn reload(c: &mut postgres::Client, settings: &str) {
    // ALTER SYSTEM runs outside a transaction block: one statement at a time.
    for stmt in settings.split(';').map(str::trim).filter(|s| !s.is_empty()).chain(["SELECT pg_reload_conf()"]) {
        c.batch_execute(stmt).unwrap();
    }
    // The worker rereads its configuration on the next turn of its loop.
    std::thread::sleep(Duration::from_millis(1500));
}

/// The error of the invocation log of trigger `name`'s event `id`.
fn attempt_error(c: &mut postgres::Client, name: &str, id: i32) -> String {
    eventually(WAIT, "the refused attempt", || {
        c.query_opt(
            "SELECT l.response FROM webhooks.event_invocation_logs l JOIN webhooks.event_log e ON e.id = l.event_id
             WHERE e.trigger_name = $1 AND (e.payload #>> '{data,new,id}')::int = $2",
            &[&name, &id],
        )
        .unwrap()
        .map(|row| row.get::<_, Value>(0)["error"].as_str().unwrap_or_default().to_string())
    })
}

#[test]
fn refused_destinations_are_never_connected_to() {
    let r = Receiver::start();
    let cluster = Cluster::start("webhooks.poll_interval = '200ms'\n");
    let mut c = cluster.connect("postgres");
    c.batch_execute("CREATE EXTENSION pg_webhooks; CREATE TABLE dest (id int)").unwrap();
    c.execute(
        "SELECT webhooks.create_event_trigger($1)",
        &[&json!({"name": "dest", "table": "dest", "webhook": r.url("/ok/dest"), "insert": {"columns": "*"}})],
    )
    .unwrap();

    reload(&mut c, "ALTER SYSTEM SET webhooks.deny_networks = '169.254.169.254/32, 127.0.0.0/8, ::1';");
    c.batch_execute("INSERT INTO dest VALUES (1)").unwrap();
    let e = attempt_error(&mut c, "dest", 1);
    assert!(e.contains("destination 127.0.0.1 is refused by webhooks.deny_networks (127.0.0.0/8)"), "{e}");

    reload(
        &mut c,
        "ALTER SYSTEM RESET webhooks.deny_networks; ALTER SYSTEM SET webhooks.allow_networks = '10.0.0.0/8, bogus';",
    );
    c.batch_execute("INSERT INTO dest VALUES (2)").unwrap();
    let e = attempt_error(&mut c, "dest", 2);
    assert!(e.contains("destination 127.0.0.1 is not in webhooks.allow_networks"), "{e}");
    assert!(r.received_on("/ok/dest").is_empty(), "a refused destination was connected to");
    assert!(cluster
        .server_log()
        .contains("\"bogus\" in webhooks.allow_networks or webhooks.deny_networks is not a CIDR"));

    reload(&mut c, "ALTER SYSTEM SET webhooks.allow_networks = '127.0.0.1/32';");
    c.batch_execute("INSERT INTO dest VALUES (3)").unwrap();
    let got = r.wait_for("/ok/dest", 1, WAIT);
    assert_eq!(got[0].json()["event"]["data"]["new"]["id"], json!(3), "allowed destinations are delivered to");
    let refused: i64 = one(&mut c, "SELECT count(*) FROM webhooks.event_log WHERE trigger_name = 'dest' AND error");
    assert_eq!(refused, 2, "refused attempts fail like any other (no retries configured)");
}
