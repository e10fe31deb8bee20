//! Crash safety: a worker killed mid-stream, or the whole server stopped
//! with `-m immediate`, loses no committed event. Each test has its own
//! cluster, since a crash resets every backend.

use std::collections::HashSet;
use std::time::Duration;

use pg_webhooks_tests::{eventually, worker_pid, Cluster, Receiver};
use serde_json::json;

const EVENTS: i64 = 3000;
const WAIT: Duration = Duration::from_secs(120);

fn connect(cluster: &Cluster) -> postgres::Client {
    eventually(WAIT, "the server to accept connections", || {
        postgres::Client::connect(&cluster.conn_str("postgres", "postgres"), postgres::NoTls).ok()
    })
}

fn start_stream(r: &Receiver) -> (Cluster, postgres::Client) {
    let cluster = Cluster::start("webhooks.max_concurrent_deliveries = 8\n");
    let mut c = cluster.connect("postgres");
    c.batch_execute("CREATE EXTENSION pg_webhooks; CREATE TABLE s (id int PRIMARY KEY)").unwrap();
    c.execute(
        "SELECT webhooks.create_event_trigger($1)",
        &[&json!({"name": "stream", "table": "s", "webhook": r.url("/slow/2/stream"), "insert": {"columns": "*"}})],
    )
    .unwrap();
    // Many small transactions, so that events keep arriving while the crash comes.
    for chunk in 0..(EVENTS / 100) {
        c.batch_execute(&format!(
            "INSERT INTO s SELECT g FROM generate_series({}, {}) g",
            chunk * 100 + 1,
            chunk * 100 + 100
        ))
        .unwrap();
    }
    (cluster, c)
}

/// After the crash: every committed event reaches the receiver at least once
/// and ends delivered. Returns the number of duplicates.
fn all_delivered(cluster: &Cluster, r: &Receiver) -> usize {
    // Right after a crash a connection may still reach a dying backend: retry.
    let (mut c, ids) = eventually(WAIT, "the event ids after the crash", || {
        let mut c = connect(cluster);
        let rows = c.query("SELECT id::text FROM webhooks.event_log", &[]).ok()?;
        Some((c, rows.iter().map(|row| row.get::<_, String>(0)).collect::<Vec<_>>()))
    });
    assert_eq!(ids.len() as i64, EVENTS, "every committed event is in the log");
    let want: HashSet<String> = ids.into_iter().collect();
    r.wait_until(WAIT, "every event id", |got| {
        let seen: HashSet<String> = got.iter().map(|g| g.event_id()).collect();
        want.is_subset(&seen)
    });
    // The crash reset may come after the first query: reconnect if so.
    eventually(WAIT, "every event to be marked delivered", || {
        match c.query_one("SELECT count(*) FROM webhooks.event_log WHERE NOT delivered", &[]) {
            Ok(row) => (row.get::<_, i64>(0) == 0).then_some(()),
            Err(_) => {
                c = connect(cluster);
                None
            }
        }
    });
    let got = r.received_on("/slow/2/stream");
    got.len() - want.len()
}

#[test]
fn sigkill_of_the_worker_loses_nothing() {
    let r = Receiver::start();
    let (cluster, mut c) = start_stream(&r);
    r.wait_for("/slow/2/stream", 300, WAIT);
    let pid = worker_pid(&mut c);
    unsafe { libc::kill(pid, libc::SIGKILL) };
    drop(c);
    let duplicates = all_delivered(&cluster, &r);
    eprintln!("sigkill: {duplicates} duplicate deliveries");
    assert!(cluster.server_log().contains("released"), "the new worker released the dead worker's locks");
}

#[test]
fn immediate_shutdown_and_restart_loses_nothing() {
    let r = Receiver::start();
    let (cluster, c) = start_stream(&r);
    r.wait_for("/slow/2/stream", 300, WAIT);
    drop(c);
    cluster.pg_ctl_stop("immediate");
    cluster.pg_ctl_start();
    let duplicates = all_delivered(&cluster, &r);
    eprintln!("immediate stop: {duplicates} duplicate deliveries");
}

#[test]
fn a_fast_restart_mid_stream_loses_nothing() {
    let r = Receiver::start();
    let (cluster, c) = start_stream(&r);
    r.wait_for("/slow/2/stream", 300, WAIT);
    drop(c);
    // SIGTERM to the worker: it records what came back, releases the rest.
    cluster.pg_ctl_stop("fast");
    cluster.pg_ctl_start();
    let duplicates = all_delivered(&cluster, &r);
    eprintln!("fast restart: {duplicates} duplicate deliveries");
    assert!(
        cluster.server_log().contains("pg_webhooks: delivery worker for database \"postgres\" stopped"),
        "the worker stopped cleanly"
    );
}

#[test]
fn drop_extension_stops_the_worker_and_create_extension_starts_one() {
    let r = Receiver::start();
    let cluster = Cluster::start("webhooks.poll_interval = '100ms'\n");
    let mut c = cluster.connect("postgres");
    let workers = |c: &mut postgres::Client| -> i64 {
        c.query_one("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_webhooks'", &[]).unwrap().get(0)
    };
    let mut pids = Vec::new();
    for round in 0..3 {
        c.batch_execute("CREATE EXTENSION pg_webhooks; CREATE TABLE IF NOT EXISTS t (id int)").unwrap();
        c.execute(
            "SELECT webhooks.create_event_trigger($1)",
            &[&json!({"name": "t", "table": "t", "webhook": r.url("/ok/drop"), "insert": {"columns": "*"}})],
        )
        .unwrap();
        c.batch_execute("INSERT INTO t VALUES (1)").unwrap();
        r.wait_for("/ok/drop", round + 1, WAIT);
        pids.push(worker_pid(&mut c));
        c.batch_execute("DROP EXTENSION pg_webhooks CASCADE").unwrap();
        eventually(WAIT, "the worker to stop after DROP EXTENSION", || (workers(&mut c) == 0).then_some(()));
    }
    pids.dedup();
    assert_eq!(pids.len(), 3, "each CREATE EXTENSION started a worker: {pids:?}");
    // Another database comes and goes.
    c.batch_execute("CREATE DATABASE other").unwrap();
    c.batch_execute("DROP DATABASE other").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(workers(&mut c), 0, "no worker where the extension is not installed");
    assert!(!cluster.server_log().contains("ERROR"), "{}", cluster.server_log());
}
