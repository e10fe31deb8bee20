//! Faults during a stream of 20,000 events: after each, every committed
//! event reaches the receiver at least once. Each test has its own cluster
//! and prints its duplicates and recovery time (docs/reliability.md).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pg_webhooks_tests::{eventually, worker_pid, Cluster, Receiver};
use serde_json::json;

const EVENTS: i64 = 20_000;
const WAIT: Duration = Duration::from_secs(180);

struct Stream {
    cluster: Cluster,
    writer: std::thread::JoinHandle<()>,
    done: Arc<AtomicBool>,
}

fn connect(cluster: &Cluster) -> postgres::Client {
    eventually(WAIT, "a connection", || {
        postgres::Client::connect(&cluster.conn_str("postgres", "postgres"), postgres::NoTls).ok()
    })
}

/// A cluster, a trigger with retries, and a writer committing 20,000 rows
/// in transactions of 50 (reconnecting after a crash; a failed transaction
/// is written again).
fn stream(webhook: &str, settings: &str) -> Stream {
    let cluster = Cluster::start(settings);
    let mut c = cluster.connect("postgres");
    c.batch_execute("CREATE EXTENSION pg_webhooks; CREATE TABLE s (id int PRIMARY KEY, v text)").unwrap();
    c.execute(
        "SELECT webhooks.create_event_trigger($1)",
        &[&json!({"name": "stream", "table": "s", "webhook": webhook, "insert": {"columns": "*"},
                  "retry_conf": {"num_retries": 30, "interval_sec": 1, "timeout_sec": 5}})],
    )
    .unwrap();
    let conn = cluster.conn_str("postgres", "postgres");
    let done = Arc::new(AtomicBool::new(false));
    let flag = done.clone();
    let writer = std::thread::spawn(move || {
        let mut next = 1;
        let mut c: Option<postgres::Client> = None;
        while next <= EVENTS {
            let client = match c.as_mut() {
                Some(cl) => cl,
                None => match postgres::Client::connect(&conn, postgres::NoTls) {
                    Ok(cl) => c.insert(cl),
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                },
            };
            let sql = format!(
                "INSERT INTO s SELECT g, 'v' FROM generate_series({next}, {}) g ON CONFLICT DO NOTHING",
                next + 49
            );
            match client.batch_execute(&sql) {
                Ok(()) => next += 50,
                Err(_) => c = None,
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        flag.store(true, Ordering::SeqCst);
    });
    Stream { cluster, writer, done }
}

/// Waits for the writer, then for every committed row's event to be
/// received at least once and delivered. Returns (duplicates, seconds).
fn all_received(s: Stream, receivers: &[&Receiver], since: Instant) -> (usize, f64) {
    s.writer.join().unwrap();
    assert!(s.done.load(Ordering::SeqCst));
    let (mut c, ids) = eventually(WAIT, "the committed events", || {
        let mut c = connect(&s.cluster);
        let rows = c.query("SELECT e.id::text FROM webhooks.event_log e WHERE NOT e.archived", &[]).ok()?;
        Some((c, rows.iter().map(|r| r.get::<_, String>(0)).collect::<HashSet<_>>()))
    });
    let rows: i64 = c.query_one("SELECT count(*) FROM s", &[]).unwrap().get(0);
    assert_eq!(rows, EVENTS, "every row was committed once");
    eventually(WAIT, "every event id at the receiver", || {
        let seen: HashSet<String> = receivers.iter().flat_map(|r| r.received()).map(|g| g.event_id()).collect();
        ids.is_subset(&seen).then_some(())
    });
    eventually(WAIT, "every event delivered", || {
        let left: i64 = c
            .query_one("SELECT count(*) FROM webhooks.event_log WHERE NOT delivered AND NOT archived", &[])
            .unwrap()
            .get(0);
        (left == 0).then_some(())
    });
    let total: usize = receivers.iter().map(|r| r.received().len()).sum();
    let secs = since.elapsed().as_secs_f64();
    (total.saturating_sub(ids.len()), secs)
}

fn report(fault: &str, (duplicates, secs): (usize, f64)) {
    eprintln!(
        "FAULT {fault}: every event received; {duplicates} duplicates; all delivered {secs:.1} s after the fault"
    );
}

#[test]
fn sigkill_of_the_worker() {
    let r = Receiver::start();
    let s = stream(&r.url("/ok/f"), "");
    r.wait_for("/ok/f", 2000, WAIT);
    let pid = worker_pid(&mut connect(&s.cluster));
    let t = Instant::now();
    unsafe { libc::kill(pid, libc::SIGKILL) };
    report("SIGKILL of the worker", all_received(s, &[&r], t));
}

#[test]
fn sigkill_of_a_writing_backend() {
    let r = Receiver::start();
    let s = stream(&r.url("/ok/f"), "");
    r.wait_for("/ok/f", 2000, WAIT);
    let mut c = connect(&s.cluster);
    let pid: i32 = eventually(WAIT, "the writer's backend", || {
        c.query_opt("SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() AND datname = 'postgres' LIMIT 1", &[])
            .ok()
            .flatten()
            .map(|row| row.get(0))
    });
    let t = Instant::now();
    unsafe { libc::kill(pid, libc::SIGKILL) };
    report("SIGKILL of a writing backend", all_received(s, &[&r], t));
}

#[test]
fn immediate_stop_and_restart() {
    let r = Receiver::start();
    let s = stream(&r.url("/ok/f"), "");
    r.wait_for("/ok/f", 2000, WAIT);
    let t = Instant::now();
    s.cluster.pg_ctl_stop("immediate");
    s.cluster.pg_ctl_start();
    report("pg_ctl stop -m immediate, then start", all_received(s, &[&r], t));
}

#[test]
fn fast_restart() {
    let r = Receiver::start();
    let s = stream(&r.url("/ok/f"), "");
    r.wait_for("/ok/f", 2000, WAIT);
    let t = Instant::now();
    s.cluster.pg_ctl_stop("fast");
    s.cluster.pg_ctl_start();
    report("pg_ctl restart -m fast", all_received(s, &[&r], t));
}

#[test]
fn the_receiver_goes_away_for_ten_seconds() {
    let r = Receiver::start();
    let addr = format!("127.0.0.1:{}", r.port);
    let s = stream(&r.url("/ok/f"), "");
    r.wait_for("/ok/f", 2000, WAIT);
    r.stop();
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(10));
    let back = Receiver::start_on(&addr);
    report("the receiver away for 10 s", all_received(s, &[&r, &back], t));
}

#[test]
fn replace_delete_redeliver_and_sighup_mid_stream() {
    let r = Receiver::start();
    let s = stream(&r.url("/slow/1/f"), "");
    r.wait_for("/slow/1/f", 1000, WAIT);
    let mut c = connect(&s.cluster);
    let t = Instant::now();
    // A SIGHUP with changed settings.
    c.batch_execute("ALTER SYSTEM SET webhooks.batch_size = 37").unwrap();
    c.batch_execute("ALTER SYSTEM SET webhooks.max_concurrent_deliveries = 40").unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    // The definition replaced while its events stream.
    c.execute(
        "SELECT webhooks.create_event_trigger($1)",
        &[&json!({"name": "stream", "table": "s", "webhook": r.url("/ok/f2"), "insert": {"columns": "*", "payload": ["id"]},
                  "retry_conf": {"num_retries": 30, "interval_sec": 1, "timeout_sec": 5}, "replace": true})],
    )
    .unwrap();
    // redeliver_event on an event being delivered right now is refused.
    let busy: Option<uuid::Uuid> = c
        .query_opt("SELECT id FROM webhooks.event_log WHERE locked IS NOT NULL LIMIT 1", &[])
        .unwrap()
        .map(|row| row.get(0));
    if let Some(id) = busy {
        // Ok: it finished in between, a plain redelivery.
        if let Err(e) = c.execute("SELECT webhooks.redeliver_event($1)", &[&id]) {
            assert_eq!(e.code().unwrap().code(), "55006");
        }
    }
    let receivers = [&r];
    let (dups, secs) = all_received(s, &receivers, t);
    report("SIGHUP with new settings, replace and redeliver mid-stream", (dups, secs));
    assert!(!r.received_on("/ok/f2").is_empty(), "the replaced definition took effect");
}

#[test]
fn delete_mid_stream_archives_and_sends_nothing_more() {
    let r = Receiver::start();
    // A webhook slower than the writer (24 in flight at 50 ms, about 480/s):
    // a backlog is pending when the delete comes, however loaded the machine.
    let s = stream(&r.url("/slow/50/f"), "");
    r.wait_for("/slow/50/f", 500, WAIT);
    let mut c = connect(&s.cluster);
    c.batch_execute("SELECT webhooks.delete_event_trigger('stream')").unwrap();
    // What was on the wire at the delete may still arrive; give it a moment.
    std::thread::sleep(Duration::from_secs(6));
    let after_delete = r.received().len();
    s.writer.join().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(r.received().len(), after_delete, "nothing is sent after the delete");
    let archived_sent: i64 = {
        let sent: Vec<String> = r.received().iter().map(|g| g.event_id()).collect();
        c.query_one(
            "SELECT count(*) FROM webhooks.event_log WHERE archived AND delivered AND id::text = ANY($1)",
            &[&sent],
        )
        .unwrap()
        .get(0)
    };
    let archived: i64 = c.query_one("SELECT count(*) FROM webhooks.event_log WHERE archived", &[]).unwrap().get(0);
    eprintln!("FAULT delete mid-stream: {archived} events archived, {after_delete} sent before the delete, {archived_sent} of them archived after being on the wire");
    assert!(archived > 0);
}
