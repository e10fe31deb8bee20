//! Every database of a cluster: the launcher starts one delivery worker per
//! database with the extension, with no restart and no setting; DROP
//! EXTENSION and DROP DATABASE stop it; wake-ups reach only the committing
//! database's worker; `webhooks.max_workers` and `webhooks.database` bound
//! what is served. Each test has its own cluster, since the launcher's view
//! is cluster-wide.

use std::time::{Duration, Instant};

use pg_webhooks_tests::{eventually, one, Cluster, Receiver};
use postgres::Client;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

/// Creates database `db` (unless it is `postgres`), the extension in it, a
/// table `t` and an event trigger that posts its inserts to `/ok/<db>`.
fn serve(cluster: &Cluster, r: &Receiver, db: &str) -> Client {
    if db != "postgres" {
        cluster.connect("postgres").batch_execute(&format!("CREATE DATABASE {db}")).unwrap();
    }
    let mut c = cluster.connect(db);
    c.batch_execute("CREATE EXTENSION pg_webhooks; CREATE TABLE t (id int PRIMARY KEY)").unwrap();
    c.execute(
        "SELECT webhooks.create_event_trigger($1)",
        &[&json!({"name": "w", "table": "t", "webhook": r.url(&format!("/ok/{db}")), "insert": {"columns": "*"}})],
    )
    .unwrap();
    c
}

/// The pids of the delivery workers, by database.
fn workers(c: &mut Client) -> Vec<(String, i32)> {
    c.query("SELECT datname::text, pid FROM pg_stat_activity WHERE backend_type = 'pg_webhooks' ORDER BY datname", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

fn worker_of(c: &mut Client, db: &str) -> Option<i32> {
    workers(c).into_iter().find(|(d, _)| d == db).map(|(_, p)| p)
}

fn insert(c: &mut Client, from: i32, to: i32) {
    c.batch_execute(&format!("INSERT INTO t SELECT g FROM generate_series({from}, {to}) g")).unwrap();
}

/// Waits until `/ok/<db>` has received `n` distinct events.
fn delivered(r: &Receiver, db: &str, n: usize) {
    let path = format!("/ok/{db}");
    r.wait_until(WAIT, &format!("{n} events of {db}"), |got| {
        let mut ids: Vec<String> = got.iter().filter(|g| g.path == path).map(|g| g.event_id()).collect();
        ids.sort();
        ids.dedup();
        ids.len() >= n
    });
}

#[test]
fn every_database_with_the_extension_is_served_by_its_own_worker() {
    let r = Receiver::start();
    // A poll interval longer than the test: every delivery here follows a
    // wake-up or the launcher, not the fallback poll.
    let cluster = Cluster::start("webhooks.poll_interval = '10min'\n");
    let mut admin = cluster.connect("postgres");
    // Before any CREATE EXTENSION, no worker stays: the launcher asked
    // postgres and found nothing to serve.
    eventually(WAIT, "the launcher", || {
        (one::<i64>(&mut admin, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_webhooks launcher'")
            == 1)
            .then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(workers(&mut admin), vec![], "no worker where the extension is not installed");

    let mut clients: Vec<(String, Client)> =
        ["postgres", "app_a", "app_b"].iter().map(|db| (db.to_string(), serve(&cluster, &r, db))).collect();
    for (db, c) in &mut clients {
        insert(c, 1, 50);
        delivered(&r, db, 50);
    }
    let running = eventually(WAIT, "one worker per database", || {
        let w = workers(&mut admin);
        (w.len() == 3).then_some(w)
    });
    let dbs: Vec<&str> = running.iter().map(|(d, _)| d.as_str()).collect();
    assert_eq!(dbs, ["app_a", "app_b", "postgres"]);
    let mut pids: Vec<i32> = running.iter().map(|(_, p)| *p).collect();
    pids.dedup();
    assert_eq!(pids.len(), 3, "each database has its own worker: {running:?}");

    // worker_status() lists every worker, the current database's first.
    let (_, a) = &mut clients[1];
    let status = a.query("SELECT database, pid FROM webhooks.worker_status()", &[]).unwrap();
    let listed: Vec<(String, i32)> = status.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(listed.len(), 3, "{listed:?}");
    assert_eq!(listed[0], ("app_a".to_string(), worker_of(&mut admin, "app_a").unwrap()));

    // DROP DATABASE (without FORCE) succeeds although a worker served it,
    // and the others go on.
    drop(clients.pop());
    admin.batch_execute("DROP DATABASE app_b").unwrap();
    assert_eq!(worker_of(&mut admin, "app_b"), None);
    for (db, c) in &mut clients {
        insert(c, 51, 100);
        delivered(&r, db, 100);
    }

    // DROP EXTENSION stops that database's worker; CREATE EXTENSION again
    // starts one within seconds, with no restart of the server.
    let (_, a) = &mut clients[1];
    a.batch_execute("DROP EXTENSION pg_webhooks CASCADE").unwrap();
    eventually(WAIT, "the worker of app_a to stop", || worker_of(&mut admin, "app_a").is_none().then_some(()));
    let started = Instant::now();
    let mut a = serve_again(&cluster, &r, "app_a");
    insert(&mut a, 1, 10);
    r.wait_until(WAIT, "events of the recreated extension", |got| {
        got.iter().filter(|g| g.path == "/ok/app_a" && g.json()["event"]["data"]["new"]["id"] == 10).count() >= 1
    });
    assert!(started.elapsed() < Duration::from_secs(10), "delivery restarted in {:?}", started.elapsed());
    assert!(!cluster.server_log().contains("is being accessed by other users"));
}

/// Creates the extension and trigger again in an existing database.
fn serve_again(cluster: &Cluster, r: &Receiver, db: &str) -> Client {
    let mut c = cluster.connect(db);
    c.batch_execute("DROP TABLE IF EXISTS t").unwrap();
    c.batch_execute("CREATE EXTENSION pg_webhooks; CREATE TABLE t (id int PRIMARY KEY)").unwrap();
    c.execute(
        "SELECT webhooks.create_event_trigger($1)",
        &[&json!({"name": "w", "table": "t", "webhook": r.url(&format!("/ok/{db}")), "insert": {"columns": "*"}})],
    )
    .unwrap();
    c
}

#[test]
fn a_commit_wakes_only_the_worker_of_its_database() {
    let r = Receiver::start();
    let cluster = Cluster::start("webhooks.poll_interval = '10min'\n");
    let mut a = serve(&cluster, &r, "wake_a");
    let mut b = serve(&cluster, &r, "wake_b");
    insert(&mut a, 1, 1);
    insert(&mut b, 1, 1);
    delivered(&r, "wake_a", 1);
    delivered(&r, "wake_b", 1);
    // Let both workers settle (outcomes recorded), then note b's last wake-up.
    std::thread::sleep(Duration::from_secs(1));
    let last_b = |b: &mut Client| -> String {
        one(b, "SELECT last_wakeup::text FROM webhooks.worker_status() WHERE database = current_database()")
    };
    let before = last_b(&mut b);
    for i in 2..=20 {
        insert(&mut a, i, i);
    }
    delivered(&r, "wake_a", 20);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(last_b(&mut b), before, "twenty commits in wake_a did not wake the worker of wake_b");
    insert(&mut b, 2, 2);
    delivered(&r, "wake_b", 2);
}

#[test]
fn max_workers_bounds_the_workers_and_says_which_database_waits() {
    let r = Receiver::start();
    let cluster = Cluster::start("webhooks.max_workers = 1\nwebhooks.poll_interval = '200ms'\n");
    let mut first = serve(&cluster, &r, "first");
    insert(&mut first, 1, 5);
    delivered(&r, "first", 5);
    let mut second = serve(&cluster, &r, "second");
    insert(&mut second, 1, 5);
    let mut admin = cluster.connect("postgres");
    eventually(WAIT, "the warning about the waiting database", || {
        cluster
            .server_log()
            .contains("webhooks.max_workers = 1 workers run already; database \"second\" gets none until one stops")
            .then_some(())
    });
    assert_eq!(workers(&mut admin).len(), 1);
    let pending: i64 = one(&mut second, "SELECT count(*) FROM webhooks.event_log WHERE NOT delivered");
    assert_eq!(pending, 5, "nothing of the waiting database is delivered");
    // When the first database's worker goes, the second gets the slot.
    first.batch_execute("DROP EXTENSION pg_webhooks CASCADE").unwrap();
    delivered(&r, "second", 5);
    assert!(worker_of(&mut admin, "second").is_some());
}

#[test]
fn webhooks_database_keeps_serving_only_that_one() {
    let r = Receiver::start();
    let cluster = Cluster::start("webhooks.database = 'chosen'\nwebhooks.poll_interval = '200ms'\n");
    let mut chosen = serve(&cluster, &r, "chosen");
    admin_create(&cluster, "other");
    let mut other = cluster.connect("other");
    other.batch_execute("CREATE EXTENSION pg_webhooks").unwrap();
    assert!(
        cluster.server_log().contains(
            "webhooks.database = 'chosen': events of this database are captured but nothing will be delivered"
        ),
        "CREATE EXTENSION elsewhere warns"
    );
    other
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .and_then(|_| {
            other
                .execute(
                    "SELECT webhooks.create_event_trigger($1)",
                    &[&json!({"name": "w", "table": "t", "webhook": r.url("/ok/other"), "insert": {"columns": "*"}})],
                )
                .map(|_| ())
        })
        .unwrap();
    insert(&mut chosen, 1, 3);
    insert(&mut other, 1, 3);
    delivered(&r, "chosen", 3);
    std::thread::sleep(Duration::from_secs(2));
    assert!(r.received_on("/ok/other").is_empty(), "the other database is not served");
    let mut admin = cluster.connect("postgres");
    assert_eq!(workers(&mut admin).iter().map(|(d, _)| d.as_str()).collect::<Vec<_>>(), ["chosen"]);
}

fn admin_create(cluster: &Cluster, db: &str) {
    cluster.connect("postgres").batch_execute(&format!("CREATE DATABASE {db}")).unwrap();
}
