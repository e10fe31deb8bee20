//! The soak: a steady stream of at least 1,000 events a second with 1% of
//! first attempts failing (then retried), for PGWH_SOAK_SECS seconds (20 in
//! `make test`, 600 in `make soak`). Every 10 s it samples the worker's
//! private memory, the age of the worker's transaction and the event log's
//! dead rows; at the end no event is lost.

use std::time::{Duration, Instant};

use pg_webhooks_tests::{eventually, private_memory_mb, Cluster, Receiver};
use serde_json::json;

#[test]
fn steady_load_with_failures_and_retries() {
    let secs: u64 = std::env::var("PGWH_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    let r = Receiver::start();
    let cluster = Cluster::start("autovacuum_naptime = '5s'\nwebhooks.retention = '1min'\n");
    let mut c = cluster.connect("postgres");
    c.batch_execute("CREATE EXTENSION pg_webhooks; CREATE TABLE soak (id bigint PRIMARY KEY, v text)").unwrap();
    c.execute(
        "SELECT webhooks.create_event_trigger($1)",
        &[&json!({"name": "soak", "table": "soak", "webhook": r.url("/flaky/1/soak"), "insert": {"columns": "*"},
                  "retry_conf": {"num_retries": 3, "interval_sec": 1, "timeout_sec": 5}})],
    )
    .unwrap();
    let mut writer = cluster.connect("postgres");
    let mut monitor = cluster.connect("postgres");
    let start = Instant::now();
    let mut next_sample = start;
    let mut id: i64 = 0;
    let mut samples = Vec::new();
    while start.elapsed() < Duration::from_secs(secs) {
        // 1,200 events a second: 60 transactions of 20 rows, every 50 ms.
        let tick = Instant::now();
        writer
            .batch_execute(&format!("INSERT INTO soak SELECT g, 'v' FROM generate_series({}, {}) g", id + 1, id + 60))
            .unwrap();
        id += 60;
        if tick >= next_sample {
            next_sample += Duration::from_secs(10);
            let row = monitor
                .query_one(
                    "SELECT a.pid, coalesce(extract(epoch FROM now() - a.xact_start), 0)::float8,
                            (SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = 'webhooks.event_log'::regclass),
                            (SELECT count(*) FROM webhooks.event_log)
                     FROM pg_stat_activity a WHERE a.backend_type = 'pg_webhooks'",
                    &[],
                )
                .unwrap();
            let pid: i32 = row.get(0);
            let rss = private_memory_mb(pid);
            let sample =
                (start.elapsed().as_secs(), rss, row.get::<_, f64>(1), row.get::<_, i64>(2), row.get::<_, i64>(3));
            eprintln!(
                "SOAK t={}s worker_rss={:.1}MB worker_xact_age={:.3}s event_log_dead={} event_log_rows={}",
                sample.0, sample.1, sample.2, sample.3, sample.4
            );
            samples.push(sample);
        }
        if let Some(rest) = Duration::from_millis(50).checked_sub(tick.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    let rate = id as f64 / start.elapsed().as_secs_f64();
    assert!(rate >= 1000.0, "the load was at least 1,000 events/s ({rate:.0})");
    // Nothing lost: as many distinct events reached the receiver as rows
    // were written (one event each, one trigger).
    eventually(Duration::from_secs(120), "every soak event at the receiver", || {
        (r.distinct_events() as i64 >= id).then_some(())
    });
    let failed_first = r.received().len() as i64 - id;
    eprintln!(
        "SOAK {id} events in {secs} s ({rate:.0}/s), {failed_first} retried after a failed first attempt, all received"
    );
    assert!(failed_first > 0, "some first attempts failed and were retried");
    for s in &samples {
        assert!(s.2 < 5.0, "no worker transaction older than the HTTP timeout: {s:?}");
        // Every event row is updated twice (claim, record): autovacuum keeps
        // the dead ones below a few seconds' worth.
        assert!(s.3 < 20_000, "autovacuum keeps up with event_log: {s:?}");
    }
    // After the first 10 s of warm-up (threads, connections, caches), the
    // worker's private memory stays within twice what it was then.
    let warm = samples.iter().find(|s| s.0 >= 10).map_or(64.0, |s| s.1.max(1.0));
    let peak = samples.iter().map(|s| s.1).fold(0.0, f64::max);
    assert!(peak < 64.0 && peak <= warm * 2.0, "the worker's memory stays flat: {samples:?}");
    eventually(Duration::from_secs(120), "every event delivered", || {
        let left: i64 = c.query_one("SELECT count(*) FROM webhooks.event_log WHERE NOT delivered", &[]).unwrap().get(0);
        (left == 0).then_some(())
    });
}
