//! `make bench`: what users would compare, measured side by side in one run
//! on one machine, reported as ratios. Writes docs/benchmarks.md.
//!
//! 1. Capture overhead: INSERT ... SELECT of 200,000 rows and pgbench
//!    single-row INSERTs, on the same table with no trigger, a pg_webhooks
//!    event trigger, a Hasura-style PL/pgSQL trigger and PgQ's C trigger.
//! 2. Delivery throughput: a 100,000-event backlog to a fast local receiver,
//!    against the raw request rate `wrk` gets from the same receiver; the
//!    same backlog through a request transform beside it.
//! 3. Latency: 200 events/s, one committed row each, commit to receipt.
//! 4. Backlog scale: 1,000,000 events: the rate, the worker's peak memory,
//!    and the plan of the fetch.
//! 5. Internet latency: a webhook that answers after 100 ms, at default and
//!    raised concurrency (rate, requests held at once, private memory); a
//!    healthy trigger beside three hanging ones against it alone; ordered
//!    delivery per key over 1,000 keys there and per trigger on loopback.
//!
//! `pgwh-bench --quick` runs every part at a tenth of the size (a smoke test).

use std::fmt::Write as _;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use pg_webhooks_bench::{FastReceiver, SlowReceiver};
use pg_webhooks_tests::{worker_pid, Cluster};
use postgres::Client;
use serde_json::json;

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

struct Sizes {
    bulk_rows: i64,
    pgbench_secs: u32,
    /// Runs of the bulk INSERT per variant.
    reps: usize,
    /// Runs of pgbench per variant.
    pgbench_reps: usize,
    backlog: i64,
    big_backlog: i64,
    latency_events: i64,
    /// Events of the runs at 100 ms latency (the raised run has 4x).
    slow_events: i64,
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let out = std::env::args().skip_while(|a| a != "--out").nth(1);
    // `--only capture|delivery|latency` runs one part (for profiling).
    let only = std::env::args().skip_while(|a| a != "--only").nth(1);
    let run = |part: &str| only.as_deref().is_none_or(|o| o == part);
    let sizes = if quick {
        Sizes {
            bulk_rows: 20_000,
            pgbench_secs: 3,
            reps: 1,
            pgbench_reps: 1,
            backlog: 10_000,
            big_backlog: 100_000,
            latency_events: 200,
            slow_events: 2_000,
        }
    } else {
        Sizes {
            bulk_rows: 200_000,
            pgbench_secs: 10,
            reps: 5,
            pgbench_reps: 3,
            backlog: 100_000,
            big_backlog: 1_000_000,
            latency_events: 2000,
            slow_events: 20_000,
        }
    };
    let started = Instant::now();
    let receiver = FastReceiver::start(0);
    let cluster = Cluster::start(
        "synchronous_commit = off\nwebhooks.database = 'deliver'\nshared_buffers = '1GB'\n\
         max_wal_size = '8GB'\ncheckpoint_timeout = '30min'\nmax_connections = 60\n",
    );
    let mut admin = cluster.connect("postgres");
    admin.batch_execute("CREATE DATABASE capture").unwrap();
    admin.batch_execute("CREATE DATABASE deliver").unwrap();

    let mut report = String::new();
    let capture = if run("capture") { capture_overhead(&cluster, &sizes) } else { String::new() };
    // Its tables would keep autovacuum busy during the delivery runs.
    admin.batch_execute("DROP DATABASE capture WITH (FORCE)").unwrap();
    let (delivery, backlog) =
        if run("delivery") { delivery_runs(&cluster, &receiver, &sizes) } else { Default::default() };
    let latency = if run("latency") { latency_run(&cluster, &receiver, &sizes) } else { String::new() };
    let internet = if run("internet") { internet_runs(&cluster, &receiver, &sizes) } else { String::new() };

    writeln!(report, "## Results").unwrap();
    report.push_str(&capture);
    report.push_str(&delivery);
    report.push_str(&latency);
    report.push_str(&backlog);
    report.push_str(&internet);
    writeln!(report, "\nThe whole run took {:.0} s.", started.elapsed().as_secs_f64()).unwrap();
    println!("{report}");
    if let Some(path) = out {
        write_doc(&path, &report, quick);
    }
}

// ---------------------------------------------------------------- capture

#[derive(Clone, Copy, PartialEq)]
enum Variant {
    None,
    PgWebhooks,
    /// A pg_webhooks trigger whose condition rejects every row.
    Rejecting,
    /// PostgreSQL's own: a row trigger whose WHEN clause rejects every row.
    WhenFalse,
    Hasura,
    Pgq,
}

const VARIANTS: [Variant; 6] =
    [Variant::None, Variant::PgWebhooks, Variant::Rejecting, Variant::WhenFalse, Variant::Hasura, Variant::Pgq];

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Variant::None => "no trigger",
            Variant::PgWebhooks => "pg_webhooks event trigger",
            Variant::Rejecting => "pg_webhooks, a condition that rejects every row",
            Variant::WhenFalse => "plain trigger `WHEN (NEW.age < 0)` rejecting every row",
            Variant::Hasura => "Hasura-style PL/pgSQL trigger",
            Variant::Pgq => "PgQ `pgq.jsontriga`",
        }
    }
}

const USERS: &str = "DROP TABLE IF EXISTS users CASCADE;
CREATE TABLE users (id bigserial PRIMARY KEY, username text, real_name text, email text, age int,
                    created_at timestamptz DEFAULT now());";

/// A trigger in the style of Hasura's own: per row, row_to_json of OLD/NEW
/// and json_build_object, then a PL/pgSQL function that builds the payload
/// and inserts it into an event table with a text uuid key and a fetch index
/// like Hasura's.
const HASURA_STYLE: &str = r#"
CREATE SCHEMA IF NOT EXISTS hasura_style;
DROP TABLE IF EXISTS hasura_style.event_log;
CREATE TABLE hasura_style.event_log (
    id text DEFAULT gen_random_uuid() PRIMARY KEY,
    schema_name text NOT NULL, table_name text NOT NULL, trigger_name text NOT NULL,
    payload jsonb NOT NULL, delivered boolean NOT NULL DEFAULT false, error boolean NOT NULL DEFAULT false,
    tries int NOT NULL DEFAULT 0, created_at timestamp DEFAULT now(), locked timestamptz,
    next_retry_at timestamp, archived boolean NOT NULL DEFAULT false);
CREATE INDEX ON hasura_style.event_log (locked NULLS FIRST, next_retry_at NULLS FIRST, created_at)
    WHERE delivered = false AND error = false AND archived = false;
CREATE OR REPLACE FUNCTION hasura_style.insert_event_log(schema_name text, table_name text, trigger_name text, op text, row_data json)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    new_id text;
    payload json;
BEGIN
    new_id := gen_random_uuid();
    payload := json_build_object('op', op, 'data', row_data,
                                 'session_variables', current_setting('hasura.user', true)::json,
                                 'trace_context', current_setting('hasura.tracecontext', true)::json);
    INSERT INTO hasura_style.event_log (id, schema_name, table_name, trigger_name, payload)
    VALUES (new_id, schema_name, table_name, trigger_name, payload);
    RETURN new_id;
END $$;
CREATE OR REPLACE FUNCTION hasura_style.notify_users() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    _old json;
    _new json;
BEGIN
    IF TG_OP = 'INSERT' THEN _new := row_to_json(NEW);
    ELSIF TG_OP = 'UPDATE' THEN _old := row_to_json(OLD); _new := row_to_json(NEW);
    ELSE _old := row_to_json(OLD);
    END IF;
    PERFORM hasura_style.insert_event_log(TG_TABLE_SCHEMA, TG_TABLE_NAME, 'users_changed', TG_OP,
                                          json_build_object('old', _old, 'new', _new));
    RETURN NULL;
END $$;
CREATE TRIGGER notify_users AFTER INSERT OR UPDATE OR DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION hasura_style.notify_users();
"#;

fn prepare_variant(c: &mut Client, v: Variant) {
    c.batch_execute(USERS).unwrap();
    c.batch_execute("TRUNCATE webhooks.event_log").unwrap();
    c.batch_execute("DELETE FROM webhooks.event_triggers").unwrap();
    match v {
        Variant::None => {}
        Variant::PgWebhooks => {
            c.execute(
                "SELECT webhooks.create_event_trigger($1)",
                &[&json!({"name": "users_changed", "table": "users", "webhook": "http://127.0.0.1:9/none",
                          "insert": {"columns": "*"}, "update": {"columns": "*"}, "delete": {"columns": "*"}})],
            )
            .unwrap();
        }
        Variant::Rejecting => {
            c.execute(
                "SELECT webhooks.create_event_trigger($1)",
                &[&json!({"name": "users_changed", "table": "users", "webhook": "http://127.0.0.1:9/none",
                          "insert": {"columns": "*", "condition": "NEW.age < 0"},
                          "update": {"columns": "*", "condition": "NEW.age < 0"},
                          "delete": {"columns": "*", "condition": "OLD.age < 0"}})],
            )
            .unwrap();
        }
        Variant::WhenFalse => c
            .batch_execute(
                "CREATE OR REPLACE FUNCTION public.bench_noop() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NULL; END';
                 CREATE TRIGGER users_when AFTER INSERT ON users FOR EACH ROW WHEN (NEW.age < 0)
                     EXECUTE FUNCTION public.bench_noop();",
            )
            .unwrap(),
        Variant::Hasura => c.batch_execute(HASURA_STYLE).unwrap(),
        Variant::Pgq => {
            c.batch_execute(
                "SELECT pgq.drop_queue(queue_name, true) FROM pgq.queue WHERE queue_name = 'users_q';
                 SELECT pgq.create_queue('users_q');
                 CREATE TRIGGER users_pgq AFTER INSERT OR UPDATE OR DELETE ON users
                     FOR EACH ROW EXECUTE FUNCTION pgq.jsontriga('users_q');",
            )
            .unwrap();
        }
    }
    c.batch_execute("VACUUM ANALYZE").unwrap();
    c.batch_execute("CHECKPOINT").unwrap();
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn capture_overhead(cluster: &Cluster, s: &Sizes) -> String {
    eprintln!("== capture overhead");
    let mut c = cluster.connect("capture");
    // The worker serves another database: this measures capture alone.
    c.batch_execute("CREATE EXTENSION pg_webhooks; CREATE EXTENSION pgq;").unwrap();
    // Autovacuum would wake up on one variant's tables while the next one
    // is timed; every variant gets the same VACUUM ANALYZE before its run.
    c.batch_execute("ALTER SYSTEM SET autovacuum = off").unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    let insert = format!(
        "INSERT INTO users (username, real_name, email, age)
         SELECT 'user' || g, 'Real Name ' || g, 'user' || g || '@example.com', g % 90
         FROM generate_series(1, {}) g",
        s.bulk_rows
    );
    let mut bulk: Vec<Vec<f64>> = vec![Vec::new(); VARIANTS.len()];
    for rep in 0..s.reps {
        for (i, v) in VARIANTS.iter().enumerate() {
            prepare_variant(&mut c, *v);
            let t0 = Instant::now();
            c.batch_execute(&insert).unwrap();
            let secs = t0.elapsed().as_secs_f64();
            eprintln!("  (a) rep {rep} {}: {secs:.3} s", v.label());
            bulk[i].push(secs);
        }
    }
    let script = std::env::temp_dir().join("pgwh_bench_insert.sql");
    std::fs::write(
        &script,
        "\\set n random(1, 1000000000)\n\
         INSERT INTO users (username, real_name, email, age) VALUES ('user' || :n, 'Real Name ' || :n, 'user' || :n || '@example.com', :n % 90);\n",
    )
    .unwrap();
    let mut tps: Vec<Vec<f64>> = vec![Vec::new(); VARIANTS.len()];
    for rep in 0..s.pgbench_reps {
        for (i, v) in VARIANTS.iter().enumerate() {
            prepare_variant(&mut c, *v);
            let t = pgbench(cluster, &script, s.pgbench_secs);
            eprintln!("  (b) rep {rep} {}: {t:.0} tps", v.label());
            tps[i].push(t);
        }
    }
    c.batch_execute("ALTER SYSTEM RESET autovacuum").unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    let base_a = median(bulk[0].clone());
    let base_b = median(tps[0].clone());
    let mut out = String::new();
    writeln!(out, "\n### 1. Capture overhead\n").unwrap();
    writeln!(
        out,
        "Table `users(id bigserial primary key, username text, real_name text, email text, age int, created_at timestamptz default now())`, \
         `synchronous_commit = off`, autovacuum off while it runs (each variant starts after `VACUUM ANALYZE` and `CHECKPOINT`). (a) one `INSERT ... SELECT` of {} rows, median of {} runs; \
         (b) `pgbench -c 2 -j 2 -T {}` of single-row INSERTs, median of {} runs. Variants run interleaved.\n",
        s.bulk_rows,
        s.reps,
        s.pgbench_secs,
        s.pgbench_reps
    )
    .unwrap();
    writeln!(out, "| variant | (a) time | (a) vs no trigger | (b) tps | (b) vs no trigger |").unwrap();
    writeln!(out, "|---|---|---|---|---|").unwrap();
    for (i, v) in VARIANTS.iter().enumerate() {
        let a = median(bulk[i].clone());
        let b = median(tps[i].clone());
        writeln!(out, "| {} | {:.3} s | {:.2}x | {:.0} | {:.2} |", v.label(), a, a / base_a, b, b / base_b).unwrap();
    }
    writeln!(out, "\nTargets for pg_webhooks: (a) at most 4x, (b) at least 0.85.").unwrap();
    out
}

fn pgbench(cluster: &Cluster, script: &std::path::Path, secs: u32) -> f64 {
    let out = Command::new(format!("{PG_BIN}/pgbench"))
        .args(["-n", "-c", "2", "-j", "2", "-T", &secs.to_string(), "-f", script.to_str().unwrap()])
        .args(["-h", "127.0.0.1", "-p", &cluster.port.to_string(), "-U", "postgres", "capture"])
        .output()
        .expect("running pgbench");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.trim_start_matches("tps = ").split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("pgbench failed: {text}\n{}", String::from_utf8_lossy(&out.stderr)))
}

// ---------------------------------------------------------------- delivery

/// Restarts the worker, so that its peak memory counts from this run.
fn fresh_worker(c: &mut Client) -> i32 {
    let old = worker_pid(c);
    c.execute("SELECT pg_terminate_backend($1)", &[&old]).unwrap();
    for _ in 0..400 {
        let pid = worker_pid(c);
        if pid != old {
            return pid;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("the worker did not restart");
}

/// A field of /proc/PID/status in MB: `RssAnon` is the process's private
/// memory; `VmHWM`, the peak resident set, also counts the shared buffers it
/// touched.
fn status_mb(pid: i32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

struct Drain {
    events: i64,
    secs: f64,
    rate: f64,
    /// Peak private memory (RssAnon, sampled every 50 ms).
    peak_mb: f64,
    /// Peak resident set including touched shared buffers (VmHWM).
    hwm_mb: f64,
    logs: i64,
}

/// Fills a paused trigger's backlog, resumes it, and times the drain.
fn drain(c: &mut Client, r: &FastReceiver, events: i64) -> Drain {
    c.batch_execute("TRUNCATE webhooks.event_log, webhooks.event_invocation_logs").unwrap();
    c.batch_execute("SELECT webhooks.pause_event_trigger('bench')").unwrap();
    c.batch_execute(&format!(
        "INSERT INTO d (username, real_name, email, age)
         SELECT 'user' || g, 'Real Name ' || g, 'user' || g || '@example.com', g % 90 FROM generate_series(1, {events}) g"
    ))
    .unwrap();
    c.batch_execute("VACUUM ANALYZE webhooks.event_log").unwrap();
    c.batch_execute("CHECKPOINT").unwrap();
    let pid = fresh_worker(c);
    let before = r.count.load(Ordering::SeqCst);
    let t0 = Instant::now();
    c.batch_execute("SELECT webhooks.resume_event_trigger('bench')").unwrap();
    let mut peak: f64 = 0.0;
    while r.count.load(Ordering::SeqCst) - before < events as u64 {
        peak = peak.max(status_mb(pid, "RssAnon:"));
        std::thread::sleep(Duration::from_millis(50));
        assert!(t0.elapsed() < Duration::from_secs(1800), "the drain takes too long");
    }
    loop {
        let left: i64 = c.query_one("SELECT count(*) FROM webhooks.event_log WHERE NOT delivered", &[]).unwrap().get(0);
        if left == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs = t0.elapsed().as_secs_f64();
    peak = peak.max(status_mb(pid, "RssAnon:"));
    let hwm_mb = status_mb(pid, "VmHWM:");
    let logs: i64 = c
        .query_one("SELECT count(DISTINCT event_id) FROM webhooks.event_invocation_logs WHERE status = 200", &[])
        .unwrap()
        .get(0);
    assert_eq!(logs, events, "every event has its invocation log");
    Drain { events, secs, rate: events as f64 / secs, peak_mb: peak, hwm_mb, logs }
}

fn wrk(r: &FastReceiver, body: &str, connections: usize, secs: u32) -> f64 {
    let script = std::env::temp_dir().join("pgwh_bench_post.lua");
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.body = {}\nwrk.headers[\"Content-Type\"] = \"application/json\"\n",
            serde_json::Value::String(body.to_string())
        ),
    )
    .unwrap();
    let out = Command::new("wrk")
        .args(["-t", "2", "-c", &connections.to_string(), "-d", &format!("{secs}s"), "-s", script.to_str().unwrap()])
        .arg(r.url())
        .output()
        .expect("running wrk (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.starts_with("Requests/sec:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("wrk failed: {text}"))
}

/// Parts 2 (throughput) and 4 (backlog scale) of the report.
fn delivery_runs(cluster: &Cluster, r: &FastReceiver, s: &Sizes) -> (String, String) {
    eprintln!("== delivery throughput");
    let mut c = cluster.connect("deliver");
    c.batch_execute(
        "CREATE EXTENSION pg_webhooks;
         CREATE TABLE d (id bigserial PRIMARY KEY, username text, real_name text, email text, age int,
                         created_at timestamptz DEFAULT now());",
    )
    .unwrap();
    c.execute(
        "SELECT webhooks.create_event_trigger($1)",
        &[&json!({"name": "bench", "table": "d", "webhook": r.url(), "insert": {"columns": "*"}})],
    )
    .unwrap();
    let concurrency: i64 =
        c.query_one("SELECT current_setting('webhooks.max_concurrent_deliveries')::int8", &[]).unwrap().get(0);
    let batch: i64 = c.query_one("SELECT current_setting('webhooks.batch_size')::int8", &[]).unwrap().get(0);

    let small = drain(&mut c, r, s.backlog);
    eprintln!(
        "  {} events in {:.1} s: {:.0}/s, private {:.1} MB, hwm {:.1} MB",
        small.events, small.secs, small.rate, small.peak_mb, small.hwm_mb
    );
    // A body of the size the worker sends.
    let sample: String =
        c.query_one("SELECT request->>'payload' FROM webhooks.event_invocation_logs LIMIT 1", &[]).unwrap().get(0);
    // The same backlog through a request transform (a JSON body template,
    // an added header, a query parameter), side by side.
    let plain = json!({"name": "bench", "table": "d", "webhook": r.url(), "insert": {"columns": "*"}, "replace": true});
    let mut with_transform = plain.clone();
    with_transform["request_transform"] = json!({"version": 2, "template_engine": "Kriti",
        "query_params": {"user": "{{$body.event.data.new.username}}"},
        "request_headers": {"add_headers": {"X-Table": "{{$body.table.name}}"}},
        "body": {"action": "transform",
                 "template": "{\"id\": {{$body.event.data.new.id}}, \"who\": {{$body.event.data.new.real_name}}, \"email\": {{$body.event.data.new.email}}, \"op\": {{$body.event.op}}}"}});
    c.execute("SELECT webhooks.create_event_trigger($1)", &[&with_transform]).unwrap();
    let transformed = drain(&mut c, r, s.backlog);
    c.execute("SELECT webhooks.create_event_trigger($1)", &[&plain]).unwrap();
    eprintln!("  with a request transform: {:.0}/s", transformed.rate);
    // The ceiling: wrk's better rate with 32 connections and with as many
    // as one trigger may have in flight.
    let per_trigger: String = c.query_one("SHOW webhooks.max_concurrent_per_trigger", &[]).unwrap().get(0);
    let lanes = match per_trigger.parse::<i64>().unwrap_or(0) {
        0 => (concurrency / 4).max(1),
        n => n.min(concurrency),
    };
    let raw_32 = wrk(r, &sample, 32, s.pgbench_secs.max(5));
    let raw_lane = wrk(r, &sample, lanes as usize, s.pgbench_secs.max(5));
    let (raw, raw_connections) = if raw_32 >= raw_lane { (raw_32, 32) } else { (raw_lane, lanes) };
    eprintln!("  wrk: {raw_32:.0} requests/s with 32 connections, {raw_lane:.0} with {lanes}");

    eprintln!("== backlog scale");
    let big = drain(&mut c, r, s.big_backlog);
    eprintln!(
        "  {} events in {:.1} s: {:.0}/s, private {:.1} MB, hwm {:.1} MB",
        big.events, big.secs, big.rate, big.peak_mb, big.hwm_mb
    );
    // The fetch's plan with the big backlog in place (refilled, paused).
    c.batch_execute("SELECT webhooks.pause_event_trigger('bench')").unwrap();
    c.batch_execute(&format!(
        "INSERT INTO d (username, real_name, email, age) SELECT 'u', 'r', 'e', 1 FROM generate_series(1, {})",
        s.big_backlog
    ))
    .unwrap();
    let plan: Vec<String> = c
        .query(
            "EXPLAIN SELECT e.id FROM webhooks.event_log e
             WHERE e.trigger_name = 'bench' AND NOT e.delivered AND NOT e.error AND NOT e.archived
               AND e.locked IS NULL AND e.next_retry_at <= now()
             ORDER BY e.next_retry_at, e.id LIMIT 200 FOR UPDATE SKIP LOCKED",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    c.batch_execute("DELETE FROM webhooks.event_triggers WHERE name = 'bench'").unwrap();

    let mut out = String::new();
    writeln!(out, "\n### 2. Delivery throughput\n").unwrap();
    writeln!(
        out,
        "A backlog of {} events for one trigger (paused while it fills, then resumed), to an in-process Rust receiver \
         that answers 200 at once on kept-alive connections. Worker settings (the defaults): \
         `webhooks.max_concurrent_deliveries = {concurrency}`, {lanes} per trigger, `webhooks.batch_size = {batch}`. Every \
         event ended delivered with its invocation log ({} logs). The ceiling is `wrk -t 2` POSTing a {}-byte body, the \
         size the worker sends, to the same receiver in the same run: the better of 32 connections ({raw_32:.0}/s) and \
         {lanes} ({raw_lane:.0}/s).\n",
        small.events,
        small.logs,
        sample.len()
    )
    .unwrap();
    writeln!(out, "| measure | value |\n|---|---|").unwrap();
    writeln!(out, "| worker, {} events | {:.0} events/s ({:.1} s) |", small.events, small.rate, small.secs).unwrap();
    writeln!(out, "| wrk, raw, {raw_connections} connections | {raw:.0} requests/s |").unwrap();
    writeln!(out, "| ratio | **{:.2}** of the raw rate (target: at least 0.2) |", small.rate / raw).unwrap();
    writeln!(
        out,
        "| worker, the same {} events through a request transform (Kriti JSON body, an added header, a query parameter) | {:.0} events/s ({:.1} s): **{:.2}** of the rate without |",
        transformed.events,
        transformed.rate,
        transformed.secs,
        transformed.rate / small.rate
    )
    .unwrap();
    writeln!(out, "| worker peak private memory (RssAnon) | {:.1} MB |", small.peak_mb).unwrap();
    writeln!(out, "| worker VmHWM (includes shared buffers it touched) | {:.1} MB |", small.hwm_mb).unwrap();

    let throughput = out;
    let mut out = String::new();
    writeln!(out, "\n### 4. Backlog scale\n").unwrap();
    writeln!(out, "| measure | value |\n|---|---|").unwrap();
    writeln!(out, "| worker, {} events | {:.0} events/s ({:.1} s) |", big.events, big.rate, big.secs).unwrap();
    writeln!(
        out,
        "| vs {} events | **{:.2}** (target: within 20%, i.e. at least 0.80) |",
        small.events,
        big.rate / small.rate
    )
    .unwrap();
    writeln!(out, "| worker peak private memory (RssAnon) | **{:.1} MB** (target: under 64 MB) |", big.peak_mb)
        .unwrap();
    writeln!(out, "| worker VmHWM (includes shared buffers it touched) | {:.1} MB |", big.hwm_mb).unwrap();
    writeln!(out, "\nThe fetch with {} events pending:\n\n```text\n{}\n```", s.big_backlog, plan.join("\n")).unwrap();
    (throughput, out)
}

// ---------------------------------------------------------------- latency

fn latency_run(cluster: &Cluster, r: &FastReceiver, s: &Sizes) -> String {
    eprintln!("== latency");
    let mut c = cluster.connect("deliver");
    c.batch_execute("CREATE EXTENSION IF NOT EXISTS pg_webhooks; CREATE TABLE lat (id bigint PRIMARY KEY, v text)")
        .unwrap();
    c.execute(
        "SELECT webhooks.create_event_trigger($1)",
        &[&json!({"name": "lat", "table": "lat", "webhook": r.url(), "insert": {"columns": "*"}})],
    )
    .unwrap();
    let stmt = c.prepare("INSERT INTO lat VALUES ($1, 'x')").unwrap();
    // Warm up: the worker is running and has delivered one event of this
    // trigger (connection open), so the run measures the steady state.
    worker_pid(&mut c);
    r.arrivals.lock().unwrap().clear();
    r.record_arrivals.store(true, Ordering::SeqCst);
    c.execute(&stmt, &[&0i64]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while r.arrivals.lock().unwrap().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    r.arrivals.lock().unwrap().clear();
    let period = Duration::from_millis(5);
    let start = Instant::now();
    let mut sent: Vec<(Instant, Instant)> = Vec::with_capacity(s.latency_events as usize);
    for i in 0..s.latency_events {
        let due = start + period * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let before = Instant::now();
        c.execute(&stmt, &[&(i + 1)]).unwrap();
        sent.push((before, Instant::now()));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while (r.arrivals.lock().unwrap().len() as i64) < s.latency_events && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    r.record_arrivals.store(false, Ordering::SeqCst);
    let arrivals = r.arrivals.lock().unwrap().clone();
    let mut from_ack = Vec::new();
    let mut from_send = Vec::new();
    let mut slowest: Vec<(f64, i64)> = Vec::new();
    for (id, at) in arrivals {
        let (before, ack) = sent[(id - 1) as usize];
        slowest.push((at.saturating_duration_since(ack).as_secs_f64() * 1000.0, id));
        from_ack.push(at.saturating_duration_since(ack).as_secs_f64() * 1000.0);
        from_send.push(at.saturating_duration_since(before).as_secs_f64() * 1000.0);
    }
    let pct = |v: &mut Vec<f64>, p: f64| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[((v.len() as f64 - 1.0) * p).round() as usize]
    };
    let n = from_ack.len();
    slowest.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap());
    eprintln!("  slowest (ms, row id): {:?}", &slowest[..slowest.len().min(8)]);
    let db: (f64, f64) = {
        let row = c
            .query_one(
                "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), max(ms)::float8 FROM (
                   SELECT (extract(epoch FROM l.created_at - e.created_at) * 1000)::float8 AS ms
                   FROM webhooks.event_invocation_logs l JOIN webhooks.event_log e ON e.id = l.event_id
                   WHERE e.trigger_name = 'lat' AND (e.payload #>> '{data,new,id}')::int8 > 0) x",
                &[],
            )
            .unwrap();
        (row.get(0), row.get::<_, Option<f64>>(1).unwrap_or(0.0))
    };
    eprintln!("  in the database: transaction start to attempt start p50 {:.2} ms, max {:.2} ms", db.0, db.1);
    let (a50, a99, amax) = (pct(&mut from_ack, 0.5), pct(&mut from_ack, 0.99), pct(&mut from_ack, 1.0));
    let (s50, s99) = (pct(&mut from_send, 0.5), pct(&mut from_send, 0.99));
    eprintln!("  p50 {a50:.2} ms, p99 {a99:.2} ms");
    let mut out = String::new();
    writeln!(out, "\n### 3. Latency\n").unwrap();
    writeln!(
        out,
        "{} single-row INSERTs, each its own transaction, at a steady 200/s; the receiver notes when each request arrives \
         ({} arrived). \"From commit\" counts from the moment the COMMIT's acknowledgement reached the client (a request that \
         arrived earlier counts as 0); \"from INSERT sent\" counts from before the statement was sent, an upper bound.\n",
        s.latency_events, n
    )
    .unwrap();
    writeln!(out, "| measure | p50 | p99 | max |\n|---|---|---|---|").unwrap();
    writeln!(out, "| from commit | **{a50:.2} ms** | **{a99:.2} ms** | {amax:.2} ms |").unwrap();
    writeln!(out, "| from INSERT sent | {s50:.2} ms | {s99:.2} ms | |").unwrap();
    writeln!(out, "\nTargets: p50 at most 1 ms, p99 at most 5 ms.").unwrap();
    out
}

// ---------------------------------------------------------------- internet latency

/// Fills `table`'s paused trigger with `sql`'s events; resumed by [`timed`].
fn fill(c: &mut Client, trigger: &str, sql: &str) {
    c.batch_execute(&format!("SELECT webhooks.pause_event_trigger('{trigger}')")).unwrap();
    c.batch_execute(sql).unwrap();
}

struct Timed {
    rate: f64,
    secs: f64,
    peak_mb: f64,
}

/// Resumes `trigger` and times until its `events` are delivered.
fn timed(c: &mut Client, trigger: &str, events: i64) -> Timed {
    let pid = worker_pid(c);
    let t0 = Instant::now();
    c.batch_execute(&format!("SELECT webhooks.resume_event_trigger('{trigger}')")).unwrap();
    let mut peak: f64 = 0.0;
    loop {
        peak = peak.max(status_mb(pid, "RssAnon:"));
        let done: i64 = c
            .query_one("SELECT count(*) FROM webhooks.event_log WHERE trigger_name = $1 AND delivered", &[&trigger])
            .unwrap()
            .get(0);
        if done >= events {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(900), "{trigger}: {done} of {events} delivered");
        std::thread::sleep(Duration::from_millis(50));
    }
    let secs = t0.elapsed().as_secs_f64();
    Timed { rate: events as f64 / secs, secs, peak_mb: peak.max(status_mb(pid, "RssAnon:")) }
}

fn reload_with(c: &mut Client, settings: &[(&str, &str)]) {
    for (k, v) in settings {
        c.batch_execute(&format!("ALTER SYSTEM SET {k} = '{v}'")).unwrap();
    }
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    std::thread::sleep(Duration::from_millis(500));
}

fn reset_settings(c: &mut Client, names: &[&str]) {
    for k in names {
        c.batch_execute(&format!("ALTER SYSTEM RESET {k}")).unwrap();
    }
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    std::thread::sleep(Duration::from_millis(500));
}

/// Part 5: a webhook 100 ms away.
fn internet_runs(cluster: &Cluster, fast: &FastReceiver, s: &Sizes) -> String {
    eprintln!("== internet latency");
    let slow = SlowReceiver::start(0, Duration::from_millis(100));
    // The hanging webhooks work at first: their triggers earn their whole
    // window (a quarter each) before their requests start to hang.
    let answered_first = 3 * 400;
    let hang = SlowReceiver::hanging_after(answered_first);
    let mut c = cluster.connect("deliver");
    c.batch_execute(
        "CREATE EXTENSION IF NOT EXISTS pg_webhooks;
         TRUNCATE webhooks.event_log, webhooks.event_invocation_logs;
         CREATE TABLE far (id bigserial PRIMARY KEY, v text);
         CREATE TABLE hung (id bigserial PRIMARY KEY, v text);
         CREATE TABLE keyed (id int PRIMARY KEY, n int);
         CREATE TABLE serial (id bigserial PRIMARY KEY, v text);",
    )
    .unwrap();
    let create = |c: &mut Client, def: serde_json::Value| {
        c.execute("SELECT webhooks.create_event_trigger($1)", &[&def]).unwrap();
    };
    create(&mut c, json!({"name": "far", "table": "far", "webhook": slow.url("far"), "insert": {"columns": "*"}}));
    for i in 1..=3 {
        create(
            &mut c,
            json!({"name": format!("hung{i}"), "table": "hung", "webhook": hang.url("hung"), "insert": {"columns": "*"},
                   "retry_conf": {"num_retries": 0, "timeout_sec": 60}}),
        );
    }
    create(
        &mut c,
        json!({"name": "keyed", "table": "keyed", "webhook": slow.url("keyed"), "update": {"columns": "*"},
               "ordering": "key"}),
    );
    create(
        &mut c,
        json!({"name": "serial", "table": "serial", "webhook": fast.url(), "insert": {"columns": "*"},
               "ordering": "trigger"}),
    );
    for t in ["hung1", "hung2", "hung3", "keyed", "serial"] {
        c.batch_execute(&format!("SELECT webhooks.pause_event_trigger('{t}')")).unwrap();
    }
    let setting = |c: &mut Client, k: &str| -> String { c.query_one(&format!("SHOW {k}"), &[]).unwrap().get(0) };
    let far = |c: &mut Client, n: i64| {
        c.batch_execute("TRUNCATE far").unwrap();
        fill(c, "far", &format!("INSERT INTO far (v) SELECT 'x' FROM generate_series(1, {n})"));
        c.batch_execute("DELETE FROM webhooks.event_log WHERE trigger_name = 'far' AND delivered").unwrap();
    };

    // (a) default settings.
    let (deliveries, per_trigger) =
        (setting(&mut c, "webhooks.max_concurrent_deliveries"), setting(&mut c, "webhooks.max_concurrent_per_trigger"));
    far(&mut c, s.slow_events);
    slow.peak.store(0, Ordering::SeqCst);
    let default = timed(&mut c, "far", s.slow_events);
    let default_held = slow.peak.load(Ordering::SeqCst);
    eprintln!("  default: {:.0}/s, {default_held} held, {:.1} MB", default.rate, default.peak_mb);

    // (b) the fairness case: the same trigger with three hanging ones.
    fill(&mut c, "hung1", &format!("INSERT INTO hung (v) SELECT 'x' FROM generate_series(1, {})", s.slow_events / 4));
    c.batch_execute("DELETE FROM webhooks.event_log WHERE trigger_name = 'far'").unwrap();
    let hung_before = answered_first;
    for t in ["hung1", "hung2", "hung3"] {
        c.batch_execute(&format!("SELECT webhooks.resume_event_trigger('{t}')")).unwrap();
    }
    let t0 = Instant::now();
    while hang.count.load(Ordering::SeqCst) < hung_before + 3 * 200 && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let hanging = hang.count.load(Ordering::SeqCst).saturating_sub(hung_before);
    far(&mut c, s.slow_events);
    let beside = timed(&mut c, "far", s.slow_events);
    let hanging_after = hang.count.load(Ordering::SeqCst).saturating_sub(hung_before);
    eprintln!("  beside 3 hanging ({hanging} held): {:.0}/s", beside.rate);
    for t in ["hung1", "hung2", "hung3"] {
        c.batch_execute(&format!("SELECT webhooks.delete_event_trigger('{t}')")).unwrap();
    }
    // Their requests end now (connections closed), not at their timeout.
    hang.release.store(true, Ordering::SeqCst);

    // (c) ordered per key over 1,000 keys, at default settings.
    let rounds = (s.slow_events / 2_000).max(1);
    c.batch_execute("INSERT INTO keyed SELECT g, 0 FROM generate_series(1, 1000) g").unwrap();
    fill(&mut c, "keyed", &"UPDATE keyed SET n = n + 1;".repeat(rounds as usize));
    let keyed = timed(&mut c, "keyed", rounds * 1000);
    eprintln!("  ordering key, {} events over 1000 keys: {:.0}/s", rounds * 1000, keyed.rate);

    // (d) ordered per trigger, on loopback.
    let serial_events = s.slow_events / 4;
    fill(&mut c, "serial", &format!("INSERT INTO serial (v) SELECT 'x' FROM generate_series(1, {serial_events})"));
    let serial = timed(&mut c, "serial", serial_events);
    eprintln!("  ordering trigger, loopback: {:.0}/s", serial.rate);

    // (e) raised concurrency: one setting, whose quarter (1,280) one
    // trigger may use. Long enough that the first second's ramp (the
    // window doubling from 10) weighs little.
    reload_with(&mut c, &[("webhooks.max_concurrent_deliveries", "5120")]);
    let raised_events = s.slow_events * 8;
    far(&mut c, raised_events);
    slow.peak.store(0, Ordering::SeqCst);
    let raised = timed(&mut c, "far", raised_events);
    let raised_held = slow.peak.load(Ordering::SeqCst);
    eprintln!("  raised: {:.0}/s, {raised_held} held, {:.1} MB", raised.rate, raised.peak_mb);
    reset_settings(&mut c, &["webhooks.max_concurrent_deliveries"]);

    let mut out = String::new();
    writeln!(out, "\n### 5. Internet latency\n").unwrap();
    writeln!(
        out,
        "A receiver that answers each request 100 ms after it arrived, on kept-alive connections; backlogs filled while the \
         trigger is paused, then resumed and timed until every event is delivered. \"Held at once\" is the most requests \
         the receiver held at one time. Defaults: `webhooks.max_concurrent_deliveries = {deliveries}`, \
         `webhooks.max_concurrent_per_trigger = {per_trigger}` (a quarter).\n"
    )
    .unwrap();
    writeln!(out, "| run | events | rate | held at once | worker private memory (RssAnon) |\n|---|---|---|---|---|")
        .unwrap();
    writeln!(
        out,
        "| one trigger, defaults | {} | **{:.0} events/s** (target: at least 1,000) | {default_held} | {:.1} MB |",
        s.slow_events, default.rate, default.peak_mb
    )
    .unwrap();
    writeln!(
        out,
        "| one trigger, `max_concurrent_deliveries = 5120` (1,280 per trigger) | {raised_events} | **{:.0} events/s** (target: at least 10,000) | \
         **{raised_held}** (target: 1,000+) | **{:.1} MB** (target: under 64 MB) |",
        raised.rate, raised.peak_mb
    )
    .unwrap();
    writeln!(
        out,
        "| the same trigger beside three whose webhooks hang (timeout 60 s; {hanging} of their requests held when it \
         started, {hanging_after} when it finished) | {} | {:.0} events/s: **{:.2}** of its rate alone (target: at least 0.80) | | {:.1} MB |",
        s.slow_events,
        beside.rate,
        beside.rate / default.rate,
        beside.peak_mb
    )
    .unwrap();
    writeln!(
        out,
        "| `\"ordering\": \"key\"`, {} updates over 1,000 rows, defaults | {} | **{:.0} events/s** | | {:.1} MB |",
        rounds * 1000,
        rounds * 1000,
        keyed.rate,
        keyed.peak_mb
    )
    .unwrap();
    writeln!(
        out,
        "| `\"ordering\": \"trigger\"`, loopback receiver (one at a time) | {serial_events} | **{:.0} events/s** ({:.1} s) | 1 | {:.1} MB |",
        serial.rate, serial.secs, serial.peak_mb
    )
    .unwrap();
    out
}

// ---------------------------------------------------------------- report

fn write_doc(path: &str, results: &str, quick: bool) {
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let date = Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let previous = std::fs::read_to_string(path).unwrap_or_default();
    let analysis = previous
        .split_once("<!-- analysis -->")
        .map(|(_, a)| a.to_string())
        .unwrap_or_else(|| "\n## Analysis\n\n(to be written)\n".to_string());
    let doc = format!(
        "# Benchmarks\n\nCommand: `make bench`{}. Date: {date}. Commit: `{commit}`. Machine: {cpus} cores, shared and noisy, \
         so every figure below is a ratio between things measured in the same run.\n\n{results}\n<!-- analysis -->{analysis}",
        if quick { " (quick mode)" } else { "" }
    );
    std::fs::write(path, doc).unwrap();
    eprintln!("wrote {path}");
}
