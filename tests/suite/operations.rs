//! Operations that need a cluster of their own: pg_dump / pg_restore into
//! the database the worker serves, retention under a steady load, and
//! `ALTER EXTENSION ... UPDATE` from the previous release.

use std::process::Command;
use std::time::{Duration, Instant};

use pg_webhooks_tests::{assert_sql_error, eventually, one, Cluster, Receiver};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);

fn as_postgres(cluster: &Cluster, program: &str, args: &[&str]) {
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--", &format!("{}/{program}", pg_webhooks_tests::cluster::pg_bin())])
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
    src.batch_execute("CREATE EXTENSION pg_webhooks; CREATE TABLE t (id int PRIMARY KEY, email text, note text)")
        .unwrap();
    let args = json!({"name": "t_changed", "table": "t", "webhook": r.url("/ok/restored"),
                      "insert": {"columns": "*"}, "update": {"columns": ["email"]},
                      "retry_conf": {"num_retries": 2, "interval_sec": 1}});
    src.execute("SELECT webhooks.create_event_trigger($1)", &[&args]).unwrap();
    // The worker serves "restored", so these stay pending here.
    src.batch_execute("INSERT INTO t VALUES (1, 'a@x', 'n'), (2, 'b@x', 'n'), (3, 'c@x', 'n')").unwrap();
    src.batch_execute("UPDATE webhooks.event_log SET delivered = true WHERE payload #>> '{data,new,id}' = '3'")
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
    assert_eq!(
        one::<String>(&mut c, "SELECT owner::text FROM webhooks.event_triggers"),
        "postgres",
        "owned by the extension's owner"
    );
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
            c.batch_execute(&format!("INSERT INTO s SELECT g FROM generate_series({}, {}) g", id + 1, id + 10))
                .unwrap();
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

/// Everything that describes the extension's objects in a database, for
/// comparing an upgraded installation with a fresh one.
fn schema_fingerprint(c: &mut postgres::Client) -> Vec<String> {
    let queries = [
        "SELECT pg_describe_object(classid, objid, objsubid) FROM pg_depend
         WHERE refclassid = 'pg_extension'::regclass AND deptype = 'e'
           AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'pg_webhooks')",
        "SELECT p.oid::regprocedure::text || ' ' || pg_get_function_result(p.oid) || ' ' || coalesce(p.proacl::text, '-')
                || ' ' || p.prosecdef || ' ' || coalesce(p.proconfig::text, '-') || ' ' || md5(p.prosrc)
                || ' ' || coalesce(obj_description(p.oid, 'pg_proc'), '-')
         FROM pg_proc p WHERE p.pronamespace = 'webhooks'::regnamespace",
        "SELECT c.relname || ' ' || c.relkind::text || ' ' || coalesce(c.relacl::text, '-') || ' ' || coalesce(c.reloptions::text, '-')
                || ' ' || coalesce(obj_description(c.oid, 'pg_class'), '-')
         FROM pg_class c WHERE c.relnamespace = 'webhooks'::regnamespace",
        "SELECT a.attrelid::regclass::text || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
                || ' ' || a.attnotnull || ' ' || coalesce(pg_get_expr(d.adbin, d.adrelid), '-')
         FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
         LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE c.relnamespace = 'webhooks'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped",
        "SELECT indexdef FROM pg_indexes WHERE schemaname = 'webhooks'",
        "SELECT pg_get_viewdef('webhooks.event_stats'::regclass)",
        "SELECT evtname || ' ' || evtevent || ' ' || evtfoid::regproc::text || ' ' || coalesce(evttags::text, '-')
         FROM pg_event_trigger",
        "SELECT coalesce(nspacl::text, '-') || ' ' || coalesce(obj_description(oid, 'pg_namespace'), '-')
         FROM pg_namespace WHERE nspname = 'webhooks'",
        "SELECT array_to_string(extconfig::regclass[], ',') || ' ' || array_to_string(extcondition, ',')
         FROM pg_extension WHERE extname = 'pg_webhooks'",
    ];
    let mut out = Vec::new();
    for q in queries {
        let mut rows: Vec<String> = c.query(q, &[]).unwrap().iter().map(|r| r.get(0)).collect();
        rows.sort();
        out.extend(rows);
    }
    out
}

/// `ALTER EXTENSION pg_webhooks UPDATE` from the previous release (0.2.0)
/// and the one before (0.1.0, through 0.2.0); sql/archive holds their
/// install scripts.
#[test]
fn alter_extension_update_from_the_previous_release() {
    update_from("0.2.0");
}

#[test]
fn alter_extension_update_from_the_first_release() {
    update_from("0.1.0");
}

/// Installs release `from`, makes definitions and pending events, updates:
/// they survive, capture and delivery work, the triggers belong to the
/// extension's owner, and the result is the same schema as a fresh install
/// of this version.
fn update_from(from: &str) {
    let r = Receiver::start();
    let cluster = Cluster::start("webhooks.database = 'upgraded'\nwebhooks.poll_interval = '200ms'\n");
    let mut admin = cluster.connect("postgres");
    admin.batch_execute("CREATE DATABASE upgraded").unwrap();
    admin.batch_execute("CREATE DATABASE fresh").unwrap();
    let mut c = cluster.connect("upgraded");
    c.batch_execute(&format!("CREATE EXTENSION pg_webhooks VERSION '{from}'")).unwrap();
    let current: String = one(&mut c, "SELECT default_version FROM pg_available_extensions WHERE name = 'pg_webhooks'");
    assert_ne!(current, from, "this build is a later version than the archived release");
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, email text, note text)").unwrap();
    let args = json!({"name": "t_changed", "table": "t", "webhook": r.url("/ok/upgraded"),
                      "insert": {"columns": "*"}, "update": {"columns": ["email"]}});
    c.execute("SELECT webhooks.create_event_trigger($1)", &[&args]).unwrap();
    c.batch_execute("SELECT webhooks.pause_event_trigger('t_changed')").unwrap();
    c.batch_execute("INSERT INTO t VALUES (1, 'a@x', 'n'), (2, 'b@x', 'n')").unwrap();
    let definition: Value = one(&mut c, "SELECT definition FROM webhooks.event_triggers");

    // The update runs in the same transaction as a captured write.
    c.batch_execute("BEGIN; INSERT INTO t VALUES (3, 'c@x', 'n'); ALTER EXTENSION pg_webhooks UPDATE; COMMIT;")
        .unwrap();
    let version: String = one(&mut c, "SELECT extversion FROM pg_extension WHERE extname = 'pg_webhooks'");
    assert_eq!(version, current);
    let undescribed: Vec<String> = c
        .query(
            "SELECT p.oid::regprocedure::text FROM pg_proc p
             WHERE p.pronamespace = 'webhooks'::regnamespace AND p.proname NOT LIKE '\\_%'
               AND obj_description(p.oid, 'pg_proc') IS NULL",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(undescribed.is_empty(), "every public function has a description after the update: {undescribed:?}");
    assert_eq!(one::<Value>(&mut c, "SELECT definition FROM webhooks.event_triggers"), definition);
    assert_eq!(
        one::<String>(&mut c, "SELECT owner::text FROM webhooks.event_triggers"),
        "postgres",
        "owned by the extension's owner"
    );
    let pending: i64 = one(&mut c, "SELECT count(*) FROM webhooks.event_log WHERE NOT delivered");
    assert_eq!(pending, 3, "the events captured before and during the update are pending");

    c.batch_execute("SELECT webhooks.resume_event_trigger('t_changed')").unwrap();
    r.wait_for("/ok/upgraded", 3, WAIT);
    c.batch_execute(
        "INSERT INTO t VALUES (4, 'd@x', 'n'); UPDATE t SET email = 'e@x' WHERE id = 1; UPDATE t SET note = 'x';",
    )
    .unwrap();
    let got = r.wait_for("/ok/upgraded", 5, WAIT);
    let mut seen: Vec<(String, i64)> = got
        .iter()
        .map(|g| {
            let e = g.json()["event"].clone();
            let row = &e["data"]["new"];
            (e["op"].as_str().unwrap().to_string(), row["id"].as_i64().unwrap())
        })
        .collect();
    seen.sort();
    let want: Vec<(String, i64)> = vec![
        ("INSERT".into(), 1),
        ("INSERT".into(), 2),
        ("INSERT".into(), 3),
        ("INSERT".into(), 4),
        ("UPDATE".into(), 1),
    ];
    assert_eq!(seen, want, "old events delivered; capture and the email filter work after the update");
    let args = json!({"name": "t_new", "table": "t", "webhook": r.url("/ok/new"), "delete": {"columns": "*"}});
    c.execute("SELECT webhooks.create_event_trigger($1)", &[&args]).unwrap();
    c.batch_execute("DELETE FROM t WHERE id = 4").unwrap();
    r.wait_for("/ok/new", 1, WAIT);

    let mut fresh = cluster.connect("fresh");
    fresh.batch_execute("CREATE EXTENSION pg_webhooks").unwrap();
    let (a, b) = (schema_fingerprint(&mut c), schema_fingerprint(&mut fresh));
    let only_upgraded: Vec<&String> = a.iter().filter(|x| !b.contains(x)).collect();
    let only_fresh: Vec<&String> = b.iter().filter(|x| !a.contains(x)).collect();
    assert!(
        only_upgraded.is_empty() && only_fresh.is_empty(),
        "the upgraded schema differs from a fresh install:\nonly upgraded: {only_upgraded:#?}\nonly fresh: {only_fresh:#?}"
    );
    assert!(!cluster.server_log().contains("ERROR"), "{}", cluster.server_log());
}
