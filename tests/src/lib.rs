//! Harness for the end-to-end tests of pg_webhooks: throwaway clusters
//! ([`cluster`]) and helpers to assert on SQL errors.

pub mod cluster;
pub mod events;
pub mod https;
pub mod receiver;

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub use cluster::Cluster;
pub use receiver::{Received, Receiver};

static SHARED: OnceLock<Mutex<Option<Cluster>>> = OnceLock::new();

extern "C" fn stop_shared() {
    if let Some(m) = SHARED.get() {
        if let Ok(mut g) = m.lock() {
            g.take();
        }
    }
}

/// The cluster the tests of one test binary share; each test takes a fresh
/// database in it. It is stopped when the test binary exits.
pub fn with_shared<R>(f: impl FnOnce(&Cluster) -> R) -> R {
    with_shared_settings("", f)
}

/// Like [`with_shared`]; the first call's `settings` go to postgresql.conf
/// (every test of a binary passes the same).
pub fn with_shared_settings<R>(settings: &str, f: impl FnOnce(&Cluster) -> R) -> R {
    with_shared_env(settings, &[], f)
}

/// Like [`with_shared_settings`], with extra environment for the server.
///
/// A shared cluster's worker serves only `postgres` (`webhooks.database`):
/// the fresh databases of capture and API tests keep their event log as
/// written, with no worker delivering it under the test. The suite
/// `databases` tests serving every database, on clusters of its own.
pub fn with_shared_env<R>(settings: &str, env: &[(&str, &str)], f: impl FnOnce(&Cluster) -> R) -> R {
    let m = SHARED.get_or_init(|| {
        unsafe { libc::atexit(stop_shared) };
        let settings = if settings.contains("webhooks.database") {
            settings.to_string()
        } else {
            format!("webhooks.database = 'postgres'\n{settings}")
        };
        Mutex::new(Some(Cluster::start_with_env(&settings, env)))
    });
    // Clusters are only created under the lock; using one needs no lock.
    let ptr: *const Cluster = m.lock().unwrap().as_ref().expect("shared cluster stopped") as *const _;
    f(unsafe { &*ptr })
}

/// A fresh database with the extension, in the shared cluster.
pub fn fresh_db(name: &str) -> postgres::Client {
    with_shared(|c| c.fresh_db(name).1)
}

/// A connection to an existing database of the shared cluster.
pub fn connect_as(db: &str, user: &str) -> postgres::Client {
    with_shared(|c| c.connect_as(db, user))
}

/// An ERROR as the client sees it.
#[derive(Debug)]
pub struct SqlError {
    pub code: String,
    pub message: String,
    pub hint: Option<String>,
}

/// Runs `sql`, which must fail, and returns its error.
pub fn sql_error(client: &mut postgres::Client, sql: &str) -> SqlError {
    match client.batch_execute(sql) {
        Ok(()) => panic!("expected an error from: {sql}"),
        Err(e) => {
            let db = e.as_db_error().unwrap_or_else(|| panic!("not a server error: {e}"));
            SqlError {
                code: db.code().code().to_string(),
                message: db.message().to_string(),
                hint: db.hint().map(str::to_string),
            }
        }
    }
}

/// Asserts that `sql` fails with `code` and a message containing each of `parts`.
#[track_caller]
pub fn assert_sql_error(client: &mut postgres::Client, sql: &str, code: &str, parts: &[&str]) -> SqlError {
    let e = sql_error(client, sql);
    assert_eq!(e.code, code, "SQLSTATE of {sql}: {e:?}");
    for p in parts {
        assert!(e.message.contains(p), "message of {sql} lacks {p:?}: {e:?}");
    }
    e
}

/// One value of the first row.
pub fn one<T: for<'a> postgres::types::FromSql<'a>>(client: &mut postgres::Client, sql: &str) -> T {
    client.query_one(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}")).get(0)
}

/// Polls `f` until it returns Some, or panics after `timeout`.
#[track_caller]
pub fn eventually<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The delivery worker's pid, once it shows in pg_stat_activity.
pub fn worker_pid(client: &mut postgres::Client) -> i32 {
    eventually(Duration::from_secs(60), "the worker in pg_stat_activity", || {
        client
            .query_opt("SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_webhooks'", &[])
            .ok()
            .flatten()
            .map(|row| row.get(0))
    })
}

/// A process's private memory (RssAnon) in MB.
pub fn private_memory_mb(pid: i32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("RssAnon:"))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        .unwrap_or(0.0)
        / 1024.0
}
