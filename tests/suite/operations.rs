//! Operations that need a cluster of their own: pg_dump / pg_restore into
//! the database the worker serves, and retention under a steady load.

use std::process::Command;
use std::time::{Duration, Instant};

use pg_webhooks_tests::{assert_sql_error, eventually, one, Cluster, Receiver};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);

fn as_postgres(cluster: &Cluster, program: &str, args: &[&str]) {
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--", &format!("{}/{program}", pg_webhooks_tests::cluster::PG_BIN)])
        .args(["-h", "127.0.0.1", "-p", &cluster.port.to_string(), "-U", "postgres"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn definitions_and_undelivered_events_survive_dump_and_restore() {
    let r = Receiver::start();
    let cluster = Cluster::start("webhooks.database = 'restored'\nwebhooks.poll_interval = '200ms'\n");
    let mut admin = cluster.connect("postgres");
    admin.batch_execute("CREATE DATABASE src").unwrap();
    let mut src = cluster.connect("src");
    src.batch_execute("CREATE EXTENSION pg_webhooks; CREATE TABLE t (id int PRIMARY KEY, email text, note text)").unwrap();
    let args = json!({"name": "t_changed", "table": "t", "webhook": r.url("/ok/restored"),
                      "insert": {"columns": "*"}, "update": {"columns": ["email"]},
                      "retry_conf": {"num_retries": 2, "interval_sec": 1}});
    src.execute("SELECT webhooks.create_event_trigger($1)", &[&args]).unwrap();
    // The worker serves "restored", so these stay pending here.
    src.batch_execute("INSERT INTO t VALUES (1, 'a@x', 'n'), (2, 'b@x', 'n'), (3, 'c@x', 'n')").unwrap();
    src.batch_execute(
        "UPDATE webhooks.event_log SET delivered = true WHERE payload #>> '{data,new,id}' = '3'",
    )
    .unwrap();
    let definition: Value = one(&mut src, "SELECT definition FROM webhooks.event_triggers");

    let dump = cluster.dir.join("src.dump");
    as_postgres(&cluster, "pg_dump", &["-Fc", "-f", dump.to_str().unwrap(), "src"]);
    admin.batch_execute("CREATE DATABASE restored").unwrap();
    as_postgres(&cluster, "pg_restore", &["-d", "restored", dump.to_str().unwrap()]);

    let got = r.wait_for("/ok/restored", 2, WAIT);
    let mut ids: Vec<i64> = got.iter().map(|g| g.json()["event"]["data"]["new"]["id"].as_i64().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, vec![1, 2], "the undelivered events are delivered there, the delivered one is not sent again");

    let mut c = cluster.connect("restored");
    assert_eq!(one::<Value>(&mut c, "SELECT definition FROM webhooks.event_triggers"), definition);
    c.batch_execute("INSERT INTO t VALUES (4, 'd@x', 'n'); UPDATE t SET note = 'ignored' WHERE id = 4;").unwrap();
    r.wait_for("/ok/restored", 3, WAIT);
    let events: i64 = one(&mut c, "SELECT count(*) FROM webhooks.event_log");
    assert_eq!(events, 3, "capture works in the restored database (the note change is not watched)");
    assert!(!cluster.server_log().contains("ERROR"), "{}", cluster.server_log());
    assert_sql_error(&mut c, "ALTER TABLE t DROP COLUMN email", "2BP01", &["email"]);
}

#[test]
fn with_retention_the_event_log_levels_off() {
    let r = Receiver::start();
    let cluster = Cluster::start("webhooks.retention = '2s'\n");
    let mut c = cluster.connect("postgres");
    c.batch_execute("CREATE EXTENSION pg_webhooks; CREATE TABLE s (id int PRIMARY KEY)").unwrap();
    c.execute(
        "SELECT webhooks.create_event_trigger($1)",
        &[&json!({"name": "s", "table": "s", "webhook": r.url("/ok/steady"), "insert": {"columns": "*"}})],
    )
    .unwrap();
    // 100 events a second for 30 seconds; sample the table every second.
    let start = Instant::now();
    let mut sizes = Vec::new();
    let mut id = 0;
    while start.elapsed() < Duration::from_secs(30) {
        let second = Instant::now();
        for _ in 0..10 {
            c.batch_execute(&format!("INSERT INTO s SELECT g FROM generate_series({}, {}) g", id + 1, id + 10)).unwrap();
            id += 10;
            std::thread::sleep(Duration::from_millis(90));
        }
        sizes.push(one::<i64>(&mut c, "SELECT count(*) FROM webhooks.event_log"));
        if let Some(rest) = Duration::from_secs(1).checked_sub(second.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    eprintln!("event_log rows, one sample a second: {sizes:?}");
    let inserted = id as i64;
    let last = *sizes.last().unwrap();
    let late_max = *sizes[sizes.len() - 10..].iter().max().unwrap();
    // Retention 2 s, applied every 10 s: at most about 12 s of events stay.
    assert!(late_max <= 1500, "the table levels off (max {late_max} of the last 10 samples)");
    assert!(last < inserted / 2, "{last} of {inserted} events left");
    eventually(WAIT, "every event delivered before its cleanup", || {
        (r.received_on("/ok/steady").len() as i64 >= inserted).then_some(())
    });
}
