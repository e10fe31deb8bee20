//! Ordered delivery (#15): `"ordering": "key"` delivers the events of one
//! row one at a time, in the order written, while rows flow concurrently;
//! `"trigger"` delivers every event of the trigger one at a time. A failing
//! event holds back the ones behind it until it is delivered or used its
//! attempts; a worker crash repeats at most the event in flight, never
//! letting a later one overtake it.

use std::collections::HashMap;
use std::sync::Once;
use std::time::{Duration, Instant};

use pg_webhooks_tests::{assert_sql_error, eventually, one, with_shared_settings, worker_pid, Cluster, Receiver};
use postgres::Client;
use serde_json::{json, Value};

const SETTINGS: &str = "webhooks.poll_interval = '200ms'\n";
const WAIT: Duration = Duration::from_secs(60);

static EXTENSION: Once = Once::new();

fn connect() -> Client {
    let mut c = with_shared_settings(SETTINGS, |cl| cl.connect("postgres"));
    EXTENSION.call_once(|| c.batch_execute("CREATE EXTENSION pg_webhooks").unwrap());
    c
}

/// A table `name (k int PRIMARY KEY, seq int)` and an ordered trigger on
/// its inserts and updates.
fn watch(c: &mut Client, name: &str, webhook: &str, ordering: &str, extra: Value) {
    c.batch_execute(&format!("CREATE TABLE {name} (k int PRIMARY KEY, seq int)")).unwrap();
    let mut args = json!({"name": name, "table": name, "webhook": webhook, "ordering": ordering,
                          "insert": {"columns": "*"}, "update": {"columns": ["seq"]}});
    for (k, v) in extra.as_object().unwrap() {
        args[k] = v.clone();
    }
    c.execute("SELECT webhooks.create_event_trigger($1)", &[&args]).unwrap();
}

/// Writes `rounds` versions of each of `keys` rows, each write its own
/// transaction, the keys interleaved: (k, 0), (k', 0), ... (k, 1), ...
fn write(c: &mut Client, table: &str, keys: i32, rounds: i32) {
    c.batch_execute(&format!("INSERT INTO {table} SELECT g, 0 FROM generate_series(1, {keys}) g")).unwrap();
    for seq in 1..rounds {
        for k in 1..=keys {
            c.batch_execute(&format!("UPDATE {table} SET seq = {seq} WHERE k = {k}")).unwrap();
        }
    }
}

/// The (key, seq) of every request received on `path`, in arrival order.
fn arrivals(r: &Receiver, path: &str) -> Vec<(i64, i64, Instant)> {
    let mut got: Vec<(i64, i64, Instant)> = r
        .received_on(path)
        .iter()
        .map(|g| {
            let row = &g.json()["event"]["data"]["new"];
            (row["k"].as_i64().unwrap(), row["seq"].as_i64().unwrap(), g.at)
        })
        .collect();
    got.sort_by_key(|a| a.2);
    got
}

/// Per key, the seq numbers as they arrived.
fn per_key(got: &[(i64, i64, Instant)]) -> HashMap<i64, Vec<i64>> {
    let mut m: HashMap<i64, Vec<i64>> = HashMap::new();
    for (k, seq, _) in got {
        m.entry(*k).or_default().push(*seq);
    }
    m
}

#[test]
fn key_ordering_holds_under_retries_while_keys_flow_concurrently() {
    let r = Receiver::start();
    let mut c = connect();
    // Every event's first attempt fails (a 409: the endpoint is up): each
    // must be retried (1 s later) before the next of its row may go.
    let path = "/reject-first/1/bykey";
    watch(&mut c, "bykey", &r.url(path), "key", json!({"retry_conf": {"num_retries": 3, "interval_sec": 1}}));
    write(&mut c, "bykey", 8, 4);
    r.wait_until(WAIT, "every event delivered", |got| got.len() >= 8 * 4 * 2);
    let got = arrivals(&r, path);
    for (k, seqs) in per_key(&got) {
        // Each event twice (failed, then delivered), strictly in order: no
        // event is sent before the one ahead of it was delivered.
        assert_eq!(seqs, vec![0, 0, 1, 1, 2, 2, 3, 3], "key {k}");
    }
    // Rows flow concurrently: 32 events each needing a 1 s retry took far
    // less than 32 s (one at a time), about 4 x 1 s.
    let spread = got.last().unwrap().2.duration_since(got[0].2);
    assert!(spread < Duration::from_secs(12), "8 keys of 4 events took {spread:?}");
    eventually(WAIT, "every event recorded delivered", || {
        (one::<i64>(&mut c, "SELECT count(*) FROM webhooks.event_log WHERE trigger_name = 'bykey' AND delivered") == 32)
            .then_some(())
    });
}

#[test]
fn a_dead_letter_lets_the_next_event_of_its_key_go() {
    let r = Receiver::start();
    let mut c = connect();
    // Every attempt fails (400: the endpoint is up but refuses): each event
    // gets its two attempts, becomes a dead letter, and only then does the
    // next event of its row go.
    let path = "/status/400/deadkey";
    watch(&mut c, "deadkey", &r.url(path), "key", json!({"retry_conf": {"num_retries": 1, "interval_sec": 1}}));
    write(&mut c, "deadkey", 2, 3);
    eventually(WAIT, "every event to be a dead letter", || {
        (one::<i64>(&mut c, "SELECT count(*) FROM webhooks.failed_events WHERE trigger_name = 'deadkey'") == 6)
            .then_some(())
    });
    let got = arrivals(&r, path);
    for (k, seqs) in per_key(&got) {
        assert_eq!(seqs, vec![0, 0, 1, 1, 2, 2], "key {k}: each event's two attempts, in order");
    }
}

#[test]
fn trigger_ordering_sends_one_event_at_a_time_in_order() {
    let r = Receiver::start();
    let mut c = connect();
    let path = "/slow/20/whole";
    watch(&mut c, "whole", &r.url(path), "trigger", json!({}));
    write(&mut c, "whole", 5, 4);
    let got = r.wait_for(path, 20, WAIT);
    let order: Vec<(i64, i64)> = arrivals(&r, path).iter().map(|(k, s, _)| (*k, *s)).collect();
    let mut want = Vec::new();
    for seq in 0..4 {
        for k in 1..=5 {
            want.push((k, seq));
        }
    }
    assert_eq!(order, want, "every event of the trigger in the order written");
    // One at a time: each request arrives after the previous one's 20 ms
    // answer.
    let mut at: Vec<Instant> = got.iter().map(|g| g.at).collect();
    at.sort();
    for w in at.windows(2) {
        assert!(w[1].duration_since(w[0]) >= Duration::from_millis(19), "requests overlapped");
    }
    // A MANUAL event has no key and is delivered too.
    c.batch_execute("SELECT webhooks.invoke_event_trigger('whole', '{\"k\": 99, \"seq\": 0}')").unwrap();
    r.wait_until(WAIT, "the manual event", |got| got.iter().any(|g| g.json()["event"]["data"]["new"]["k"] == 99));
}

#[test]
fn key_ordering_needs_a_key() {
    let mut c = connect();
    c.batch_execute("CREATE TABLE nokey (a int, b text)").unwrap();
    let args = json!({"name": "nokey", "table": "nokey", "webhook": "http://127.0.0.1:9/x", "ordering": "key",
                      "insert": {"columns": "*"}});
    assert_sql_error(
        &mut c,
        &format!("SELECT webhooks.create_event_trigger('{args}')"),
        "22023",
        &["invalid value for key \"ordering\"", "has no primary key and no replica identity index"],
    );
    // A replica identity index will do.
    c.batch_execute("CREATE UNIQUE INDEX nokey_a ON nokey (a); ALTER TABLE nokey ALTER a SET NOT NULL; ALTER TABLE nokey REPLICA IDENTITY USING INDEX nokey_a").unwrap();
    c.execute("SELECT webhooks.create_event_trigger($1)", &[&args]).unwrap();
    // "trigger" needs no key.
    c.batch_execute("CREATE TABLE nokey2 (a int)").unwrap();
    let args = json!({"name": "nokey2", "table": "nokey2", "webhook": "http://127.0.0.1:9/x", "ordering": "trigger",
                      "insert": {"columns": "*"}});
    c.execute("SELECT webhooks.create_event_trigger($1)", &[&args]).unwrap();
    let keys: Vec<Option<String>> = {
        c.batch_execute("SELECT webhooks.pause_event_trigger('nokey'); SELECT webhooks.pause_event_trigger('nokey2');")
            .unwrap();
        c.batch_execute("INSERT INTO nokey VALUES (7, 'x'); INSERT INTO nokey2 VALUES (1)").unwrap();
        c.query(
            "SELECT ordering_key FROM webhooks.event_log WHERE trigger_name IN ('nokey', 'nokey2') ORDER BY trigger_name",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
    };
    assert_eq!(keys, vec![Some("[\"7\"]".to_string()), Some(String::new())]);
}

#[test]
fn a_worker_crash_repeats_at_most_the_event_in_flight_and_nothing_overtakes_it() {
    let r = Receiver::start();
    let cluster = Cluster::start("webhooks.poll_interval = '200ms'\n");
    let mut c = cluster.connect("postgres");
    c.batch_execute("CREATE EXTENSION pg_webhooks").unwrap();
    let path = "/slow/5/crashkey";
    watch(&mut c, "crashkey", &r.url(path), "key", json!({"retry_conf": {"num_retries": 10, "interval_sec": 1}}));
    write(&mut c, "crashkey", 10, 30);
    r.wait_until(WAIT, "some deliveries", |got| got.len() >= 60);
    let pid = worker_pid(&mut c);
    unsafe { libc::kill(pid, libc::SIGKILL) };
    drop(c);
    let mut c = eventually(WAIT, "the server after the crash", || {
        let mut c = postgres::Client::connect(&cluster.conn_str("postgres", "postgres"), postgres::NoTls).ok()?;
        c.query_one("SELECT 1", &[]).ok()?;
        Some(c)
    });
    // The crash reset may come after the first query: reconnect if so.
    eventually(WAIT, "every event delivered after the crash", || {
        let left: i64 = match c
            .query_one("SELECT count(*) FROM webhooks.event_log WHERE trigger_name = 'crashkey' AND NOT delivered", &[])
        {
            Ok(row) => row.get(0),
            Err(_) => {
                c = postgres::Client::connect(&cluster.conn_str("postgres", "postgres"), postgres::NoTls).ok()?;
                return None;
            }
        };
        (left == 0).then_some(())
    });
    let got = arrivals(&r, path);
    for (k, seqs) in per_key(&got) {
        // At least once, in order: a duplicate may repeat, nothing after
        // it came first.
        assert!(seqs.windows(2).all(|w| w[1] >= w[0]), "key {k} went backwards: {seqs:?}");
        let mut distinct = seqs.clone();
        distinct.dedup();
        assert_eq!(distinct, (0..30).collect::<Vec<_>>(), "key {k}: every event");
    }
}
