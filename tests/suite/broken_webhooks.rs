//! Webhooks that misbehave in every way we could think of: for each, the
//! number of attempts, the invocation log rows and the final state, while a
//! healthy trigger keeps flowing and the worker's memory stays bounded.

use std::sync::{Once, OnceLock};
use std::time::Duration;

use pg_webhooks_tests::{events, eventually, one, private_memory_mb, with_shared_env, worker_pid, Receiver};
use postgres::Client;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);
static RECEIVER: OnceLock<Receiver> = OnceLock::new();
static EXTENSION: Once = Once::new();

fn setup() -> (&'static Receiver, Client) {
    let r = RECEIVER.get_or_init(Receiver::start);
    let mut c = with_shared_env("webhooks.max_concurrent_deliveries = 16\n", &[], |cl| cl.connect("postgres"));
    EXTENSION.call_once(|| {
        c.batch_execute("CREATE EXTENSION pg_webhooks; CREATE TABLE healthy (id serial PRIMARY KEY)").unwrap();
        c.execute(
            "SELECT webhooks.create_event_trigger($1)",
            &[&json!({"name": "healthy", "table": "healthy", "webhook": r.url("/ok/healthy"), "insert": {"columns": "*"}})],
        )
        .unwrap();
    });
    (r, c)
}

struct Case {
    name: &'static str,
    webhook: String,
    retry: Value,
    /// Attempts the event gets.
    attempts: usize,
    delivered: bool,
    /// What each invocation log's status is (None: no response).
    status: Option<i32>,
    /// A piece of the logged error or response, if any.
    logged: Option<&'static str>,
}

fn run(cases: Vec<Case>) {
    let (_, mut c) = setup();
    // The healthy trigger (see setup) must keep flowing meanwhile.
    for case in &cases {
        c.batch_execute(&format!("CREATE TABLE {} (id int PRIMARY KEY)", case.name)).unwrap();
        c.execute(
            "SELECT webhooks.create_event_trigger($1)",
            &[&json!({"name": case.name, "table": case.name, "webhook": case.webhook, "insert": {"columns": "*"}, "retry_conf": case.retry})],
        )
        .unwrap();
        c.batch_execute(&format!("INSERT INTO {} VALUES (1)", case.name)).unwrap();
    }
    c.batch_execute("INSERT INTO healthy SELECT FROM generate_series(1, 20)").unwrap();
    eventually(WAIT, "the healthy trigger to flow", || {
        (one::<i64>(&mut c, "SELECT count(*) FROM webhooks.event_log WHERE trigger_name = 'healthy' AND NOT delivered")
            == 0)
            .then_some(())
    });
    for case in &cases {
        let (delivered, error, tries, _) = events::settled(&mut c, case.name, WAIT)[0];
        assert_eq!((delivered, error), (case.delivered, !case.delivered), "{}: final state", case.name);
        assert_eq!(tries as usize, case.attempts, "{}: attempts", case.name);
        let logs = c
            .query(
                "SELECT status, response::jsonb::text FROM webhooks.event_invocation_logs WHERE trigger_name = $1",
                &[&case.name],
            )
            .unwrap();
        assert_eq!(logs.len(), case.attempts, "{}: one invocation log row per attempt", case.name);
        for l in &logs {
            assert_eq!(l.get::<_, Option<i32>>(0), case.status, "{}: status", case.name);
            if let Some(piece) = case.logged {
                let response: String = l.get(1);
                assert!(response.contains(piece), "{}: {piece:?} in {response}", case.name);
            }
        }
        eprintln!("{}: {} attempt(s), status {:?}, delivered {}", case.name, case.attempts, case.status, delivered);
    }
}

fn retries(n: i32) -> Value {
    json!({"num_retries": n, "interval_sec": 0, "timeout_sec": 2})
}

#[test]
fn connection_level_failures() {
    let (r, _) = setup();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    run(vec![
        Case {
            name: "b_refused",
            webhook: format!("http://127.0.0.1:{closed}/"),
            retry: retries(1),
            attempts: 2,
            delivered: false,
            status: None,
            logged: Some("connection failed"),
        },
        Case {
            name: "b_unresolvable",
            webhook: "http://no-such-host.invalid/hook".into(),
            retry: retries(1),
            attempts: 2,
            delivered: false,
            status: None,
            logged: Some("error"),
        },
        Case {
            name: "b_tls_to_plain",
            webhook: format!("https://127.0.0.1:{}/ok/tls", r.port),
            retry: retries(0),
            attempts: 1,
            delivered: false,
            status: None,
            logged: Some("error"),
        },
        Case {
            name: "b_never_answers",
            webhook: r.url("/hang/broken"),
            retry: retries(1),
            attempts: 2,
            delivered: false,
            status: None,
            logged: Some("timed out"),
        },
        // The status line came, the body did not finish in time: a failed attempt.
        Case {
            name: "b_trickle",
            webhook: r.url("/trickle/broken"),
            retry: retries(1),
            attempts: 2,
            delivered: false,
            status: Some(200),
            logged: Some("timed out reading the response body"),
        },
        Case {
            name: "b_not_http",
            webhook: r.url("/garbage/broken"),
            retry: retries(1),
            attempts: 2,
            delivered: false,
            status: None,
            logged: Some("error"),
        },
    ]);
}

#[test]
fn status_codes_and_retry_after() {
    let (r, _) = setup();
    run(vec![
        Case {
            name: "b_301",
            webhook: r.url("/status/301/x"),
            retry: retries(1),
            attempts: 2,
            delivered: false,
            status: Some(301),
            logged: None,
        },
        Case {
            name: "b_404",
            webhook: r.url("/status/404/x"),
            retry: retries(1),
            attempts: 2,
            delivered: false,
            status: Some(404),
            logged: None,
        },
        Case {
            name: "b_429",
            webhook: r.url("/status/429/x"),
            retry: retries(2),
            attempts: 3,
            delivered: false,
            status: Some(429),
            logged: None,
        },
        Case {
            name: "b_503",
            webhook: r.url("/status/503/x"),
            retry: retries(0),
            attempts: 1,
            delivered: false,
            status: Some(503),
            logged: None,
        },
        Case {
            name: "b_204",
            webhook: r.url("/status/204/x"),
            retry: retries(3),
            attempts: 1,
            delivered: true,
            status: Some(204),
            logged: None,
        },
        Case {
            name: "b_huge_body",
            webhook: r.url("/big/x"),
            retry: retries(0),
            attempts: 1,
            delivered: true,
            status: Some(200),
            logged: Some("\"body_truncated\": true"),
        },
    ]);
}

#[test]
fn retry_after_values_that_are_garbage_negative_or_zero_fall_back_to_the_interval() {
    use pg_webhooks_core::retry::parse_retry_after;
    let now = std::time::SystemTime::now();
    for v in ["-5", "soon", "1.5", ""] {
        assert_eq!(parse_retry_after(v, now), None, "{v:?}");
    }
    let (r, _) = setup();
    // "0" means at once: both attempts come back to back with interval_sec 3600.
    run(vec![Case {
        name: "b_retry_after_zero",
        webhook: r.url("/retry-after-secs/0/x"),
        retry: json!({"num_retries": 1, "interval_sec": 3600, "timeout_sec": 2}),
        attempts: 2,
        delivered: false,
        status: Some(503),
        logged: None,
    }]);
}

#[test]
fn the_worker_memory_stays_bounded_with_10mb_answers() {
    let (r, mut c) = setup();
    let pid = worker_pid(&mut c);
    c.batch_execute("CREATE TABLE b_mem (id int PRIMARY KEY)").unwrap();
    c.execute(
        "SELECT webhooks.create_event_trigger($1)",
        &[&json!({"name": "b_mem", "table": "b_mem", "webhook": r.url("/big/mem"), "insert": {"columns": "*"}})],
    )
    .unwrap();
    c.batch_execute("INSERT INTO b_mem SELECT g FROM generate_series(1, 60) g").unwrap();
    let mut peak: f64 = 0.0;
    eventually(WAIT, "60 big answers", || {
        peak = peak.max(private_memory_mb(pid));
        (one::<i64>(&mut c, "SELECT count(*) FROM webhooks.event_log WHERE trigger_name = 'b_mem' AND delivered") == 60)
            .then_some(())
    });
    eprintln!("worker private memory peak with 60 answers of 10 MB: {peak:.1} MB");
    assert!(peak < 64.0, "bodies are read up to the limit, not whole: {peak:.1} MB");
}

#[test]
fn retry_after_that_is_negative_or_garbage_is_ignored_and_huge_is_capped() {
    let (r, mut c) = setup();
    // Ignored: the interval (0) applies, both attempts happen.
    run(vec![
        Case {
            name: "b_ra_negative",
            webhook: r.url("/retry-after-raw/-5/x"),
            retry: retries(1),
            attempts: 2,
            delivered: false,
            status: Some(503),
            logged: None,
        },
        Case {
            name: "b_ra_garbage",
            webhook: r.url("/retry-after-raw/soon/x"),
            retry: retries(1),
            attempts: 2,
            delivered: false,
            status: Some(503),
            logged: None,
        },
    ]);
    // Capped: one attempt, the next one due in an hour, not in 3 years.
    c.batch_execute("CREATE TABLE b_ra_huge (id int PRIMARY KEY)").unwrap();
    c.execute(
        "SELECT webhooks.create_event_trigger($1)",
        &[&json!({"name": "b_ra_huge", "table": "b_ra_huge", "webhook": r.url("/retry-after-raw/99999999/x"),
                  "insert": {"columns": "*"}, "retry_conf": {"num_retries": 1, "interval_sec": 0}})],
    )
    .unwrap();
    c.batch_execute("INSERT INTO b_ra_huge VALUES (1)").unwrap();
    let due_in: f64 = eventually(WAIT, "the first attempt", || {
        c.query_opt(
            "SELECT extract(epoch FROM next_retry_at - now())::float8 FROM webhooks.event_log
             WHERE trigger_name = 'b_ra_huge' AND tries = 1 AND locked IS NULL",
            &[],
        )
        .unwrap()
        .map(|row| row.get(0))
    });
    assert!((3500.0..3700.0).contains(&due_in), "Retry-After capped at one hour: due in {due_in} s");
    let state: (bool, bool) = {
        let row = c
            .query_one("SELECT delivered, error FROM webhooks.event_log WHERE trigger_name = 'b_ra_huge'", &[])
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(state, (false, false), "still pending: Retry-After never removes an attempt");
}
