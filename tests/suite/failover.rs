//! Standbys and failover: on a hot standby nothing is delivered and nothing
//! errors; when the standby is promoted after the primary died, it delivers
//! every event that was committed with synchronous replication, including
//! those the old primary had claimed but not finished.

use std::collections::HashSet;
use std::time::Duration;

use pg_webhooks_tests::{eventually, one, Cluster, Receiver};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

#[test]
fn a_promoted_standby_delivers_every_synchronously_committed_event() {
    let r = Receiver::start();
    let primary = Cluster::start("webhooks.poll_interval = '200ms'\nwebhooks.max_concurrent_deliveries = 8\n");
    let mut c = primary.connect("postgres");
    c.batch_execute("CREATE EXTENSION pg_webhooks; CREATE TABLE s (id int PRIMARY KEY)").unwrap();
    // A slow webhook: when the primary dies, events are still waiting and
    // some are on the wire.
    c.execute(
        "SELECT webhooks.create_event_trigger($1)",
        &[&json!({"name": "s", "table": "s", "webhook": r.url("/slow/20/s"), "insert": {"columns": "*"}})],
    )
    .unwrap();
    let standby = primary.start_standby();
    c.batch_execute("ALTER SYSTEM SET synchronous_standby_names = '*'").unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    eventually(WAIT, "the standby to be synchronous", || {
        (one::<i64>(&mut c, "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'") == 1).then_some(())
    });

    // Each statement commits on its own, and returns only once the standby
    // has the commit.
    let mut committed = Vec::new();
    for id in 1..=400 {
        c.batch_execute(&format!("INSERT INTO s VALUES ({id})")).unwrap();
        committed.push(id);
    }
    r.wait_until(WAIT, "the primary to deliver some events", |got| got.len() >= 5);

    // The standby replays the event log but delivers nothing, and says
    // nothing in a loop.
    let mut sc = standby.connect("postgres");
    let on_standby: i64 = one(&mut sc, "SELECT count(*) FROM webhooks.event_log");
    assert!(on_standby > 0, "the event log is replicated");
    let processes: i64 = one(&mut sc, "SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'pg_webhooks%'");
    assert_eq!(processes, 0, "no launcher and no worker on a standby");
    let pid: Option<i32> = one(&mut sc, "SELECT pid FROM webhooks.worker_status()");
    assert_eq!(pid, None);
    drop(sc);

    primary.pg_ctl_stop("immediate");
    let seen_before: usize = r.received().len();
    standby.promote();
    let mut sc = eventually(WAIT, "the promoted standby", || {
        postgres::Client::connect(&standby.conn_str("postgres", "postgres"), postgres::NoTls).ok()
    });
    let want: HashSet<i64> = committed.iter().map(|&i| i as i64).collect();
    r.wait_until(Duration::from_secs(120), "every committed event after the failover", |got| {
        let ids: HashSet<i64> = got.iter().filter_map(|g| g.json()["event"]["data"]["new"]["id"].as_i64()).collect();
        want.is_subset(&ids)
    });
    assert!(r.received().len() > seen_before, "the promoted standby delivered");
    eventually(WAIT, "every event to be marked delivered on the new primary", || {
        (one::<i64>(&mut sc, "SELECT count(*) FROM webhooks.event_log WHERE NOT delivered") == 0).then_some(())
    });
    let workers: i64 = one(&mut sc, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_webhooks'");
    assert_eq!(workers, 1);
    let log = standby.server_log();
    assert!(!log.contains("ERROR"), "the standby logged errors:\n{log}");
    // New writes on the new primary are delivered too.
    sc.batch_execute("INSERT INTO s VALUES (1000)").unwrap();
    r.wait_until(WAIT, "an event written after the failover", |got| {
        got.iter().any(|g| g.json()["event"]["data"]["new"]["id"] == 1000)
    });
}
