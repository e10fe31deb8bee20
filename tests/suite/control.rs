//! Delivery control (#14): exponential backoff with jitter, `410 Gone`
//! pausing the trigger, dead letters (NOTIFY, the `failed_events` view and
//! bulk redelivery).

use std::sync::Once;
use std::time::{Duration, Instant};

use pg_webhooks_tests::{assert_sql_error, eventually, one, with_shared_settings, Receiver};
use postgres::fallible_iterator::FallibleIterator;
use postgres::Client;
use serde_json::{json, Value};

const SETTINGS: &str = "webhooks.poll_interval = '200ms'\n";
const WAIT: Duration = Duration::from_secs(30);

static EXTENSION: Once = Once::new();

fn connect() -> Client {
    let mut c = with_shared_settings(SETTINGS, |cl| cl.connect("postgres"));
    EXTENSION.call_once(|| c.batch_execute("CREATE EXTENSION pg_webhooks").unwrap());
    c
}

/// A table `name` and an event trigger `name` on it, for inserts.
fn watch(c: &mut Client, name: &str, webhook: &str, extra: Value) {
    c.batch_execute(&format!("CREATE TABLE {name} (id int PRIMARY KEY)")).unwrap();
    create(c, name, webhook, extra, false);
}

fn create(c: &mut Client, name: &str, webhook: &str, extra: Value, replace: bool) {
    let mut args =
        json!({"name": name, "table": name, "webhook": webhook, "insert": {"columns": "*"}, "replace": replace});
    for (k, v) in extra.as_object().unwrap() {
        args[k] = v.clone();
    }
    c.execute("SELECT webhooks.create_event_trigger($1)", &[&args]).unwrap();
}

#[test]
fn exponential_backoff_doubles_the_wait_with_jitter() {
    let r = Receiver::start();
    let mut c = connect();
    let retry = json!({"num_retries": 3, "interval_sec": 1, "backoff": "exponential", "max_interval_sec": 3});
    // 400: a failure that is not the endpoint's (that would put it down).
    watch(&mut c, "expo", &r.url("/status/400/expo"), json!({"retry_conf": retry}));
    c.batch_execute("INSERT INTO expo SELECT g FROM generate_series(1, 6) g").unwrap();
    let got = r.wait_for("/status/400/expo", 6 * 4, WAIT);
    // Waits before retries 1, 2 and 3: 1 s, 2 s, then 4 s cut to 3 s, each
    // spread by +/-20%; the worker adds a few milliseconds of its own.
    let expected = [1.0, 2.0, 3.0];
    let mut first_waits = Vec::new();
    for id in 1..=6 {
        let at: Vec<Instant> =
            got.iter().filter(|g| g.json()["event"]["data"]["new"]["id"] == id).map(|g| g.at).collect();
        assert_eq!(at.len(), 4, "event {id}: one attempt and three retries");
        for (n, pair) in at.windows(2).enumerate() {
            let wait = pair[1].duration_since(pair[0]).as_secs_f64();
            let (lo, hi) = (expected[n] * 0.8 - 0.05, expected[n] * 1.2 + 0.4);
            assert!(wait >= lo && wait <= hi, "event {id}, retry {}: waited {wait:.3} s, not in [{lo}, {hi}]", n + 1);
        }
        first_waits.push(at[1].duration_since(at[0]).as_secs_f64());
    }
    first_waits.sort_by(f64::total_cmp);
    assert!(first_waits[5] - first_waits[0] > 0.02, "jitter spreads events that failed together: {first_waits:?}");
    eventually(WAIT, "the events to fail for good", || {
        (one::<i64>(&mut c, "SELECT count(*) FROM webhooks.event_log WHERE trigger_name = 'expo' AND error") == 6)
            .then_some(())
    });
}

#[test]
fn gone_pauses_the_trigger_and_keeps_the_event_pending() {
    let r = Receiver::start();
    let mut c = connect();
    watch(&mut c, "gone", &r.url("/status/410/gone"), json!({"retry_conf": {"num_retries": 0}}));
    c.batch_execute("INSERT INTO gone VALUES (1), (2)").unwrap();
    let reason: String = eventually(WAIT, "the trigger to be paused", || {
        c.query_opt("SELECT paused_reason FROM webhooks.event_stats WHERE trigger_name = 'gone' AND paused", &[])
            .unwrap()
            .map(|r| r.get(0))
    });
    assert!(reason.starts_with("the webhook answered 410 Gone on "), "{reason}");
    // The events stay pending, their attempts not spent (num_retries 0
    // would otherwise have made them errors).
    eventually(WAIT, "the events to be released", || {
        let row = c
            .query_one(
                "SELECT count(*) FILTER (WHERE NOT delivered AND NOT error AND locked IS NULL AND tries = 0), count(*)
                 FROM webhooks.event_log WHERE trigger_name = 'gone'",
                &[],
            )
            .unwrap();
        (row.get::<_, i64>(0) == 2 && row.get::<_, i64>(1) == 2).then_some(())
    });
    let logged: i64 =
        one(&mut c, "SELECT count(*) FROM webhooks.event_invocation_logs WHERE trigger_name = 'gone' AND status = 410");
    assert!(logged >= 1, "the 410 attempt is logged");
    let sent_while_paused = r.received_on("/status/410/gone").len();
    c.batch_execute("INSERT INTO gone VALUES (3)").unwrap();
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(r.received_on("/status/410/gone").len(), sent_while_paused, "nothing is sent while paused");
    let log = with_shared_settings(SETTINGS, |cl| cl.server_log());
    assert!(log.contains("WARNING:  pg_webhooks: event trigger \"gone\" is paused: the webhook answered 410 Gone"));

    // The webhook moved: point the trigger at it and resume; the backlog flows.
    create(&mut c, "gone", &r.url("/ok/gone"), json!({}), true);
    c.batch_execute("SELECT webhooks.resume_event_trigger('gone')").unwrap();
    r.wait_for("/ok/gone", 3, WAIT);
    let reason: Option<String> =
        one(&mut c, "SELECT paused_reason FROM webhooks.event_stats WHERE trigger_name = 'gone'");
    assert_eq!(reason, None);
    c.batch_execute("SELECT webhooks.pause_event_trigger('gone')").unwrap();
    let reason: Option<String> =
        one(&mut c, "SELECT paused_reason FROM webhooks.event_stats WHERE trigger_name = 'gone'");
    assert_eq!(reason.as_deref(), Some("paused by pause_event_trigger()"));
}

#[test]
fn dead_letters_are_notified_listed_and_redelivered_in_bulk() {
    let r = Receiver::start();
    let mut c = connect();
    let mut listener = connect();
    listener.batch_execute("LISTEN webhooks_event_failed").unwrap();
    watch(&mut c, "dead", &r.url("/status/500/dead"), json!({"retry_conf": {"num_retries": 0}}));
    for id in 1..=3 {
        // Three transactions, three creation times.
        c.batch_execute(&format!("INSERT INTO dead VALUES ({id})")).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut notified: Vec<Value> = Vec::new();
    let deadline = Instant::now() + WAIT;
    while notified.len() < 3 && Instant::now() < deadline {
        let mut arrived = listener.notifications();
        let mut arrived = arrived.timeout_iter(Duration::from_millis(500));
        while let Some(n) = arrived.next().unwrap() {
            assert_eq!(n.channel(), "webhooks_event_failed");
            let payload: Value = serde_json::from_str(n.payload()).unwrap();
            // Other tests' triggers fail too, in this shared database.
            if payload["trigger"] == "dead" {
                notified.push(payload);
            }
        }
    }
    assert_eq!(notified.len(), 3, "one notification per dead letter: {notified:?}");
    let ids: Vec<String> = c
        .query("SELECT id::text FROM webhooks.event_log WHERE trigger_name = 'dead' ORDER BY created_at", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for n in &notified {
        assert_eq!(n["trigger"], "dead");
        assert!(ids.contains(&n["event_id"].as_str().unwrap().to_string()), "{n}");
    }

    let listed = c
        .query(
            "SELECT event_id::text, tries, last_status, last_error, last_attempt_at IS NOT NULL, payload->'data'->'new'->>'id'
             FROM webhooks.failed_events WHERE trigger_name = 'dead' ORDER BY created_at",
            &[],
        )
        .unwrap();
    assert_eq!(listed.len(), 3);
    for (row, id) in listed.iter().zip(&ids) {
        assert_eq!(&row.get::<_, String>(0), id);
        assert_eq!(row.get::<_, i32>(1), 1);
        assert_eq!(row.get::<_, Option<i32>>(2), Some(500));
        assert_eq!(row.get::<_, String>(3), "HTTP 500");
        assert!(row.get::<_, bool>(4));
    }

    // Bulk redelivery of the second and third, to the mended webhook.
    create(&mut c, "dead", &r.url("/ok/dead"), json!({"retry_conf": {"num_retries": 0}}), true);
    let requeued: i64 = one(
        &mut c,
        &format!(
            "SELECT webhooks.redeliver_events('dead', since => (SELECT created_at FROM webhooks.event_log WHERE id = '{}'))",
            ids[1]
        ),
    );
    assert_eq!(requeued, 2);
    let got = r.wait_for("/ok/dead", 2, WAIT);
    let mut sent: Vec<String> = got.iter().map(|g| g.event_id()).collect();
    sent.sort();
    let mut want = vec![ids[1].clone(), ids[2].clone()];
    want.sort();
    assert_eq!(sent, want);
    eventually(WAIT, "the requeued events to be delivered", || {
        let listed: Vec<String> = c
            .query("SELECT event_id::text FROM webhooks.failed_events WHERE trigger_name = 'dead'", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        (listed == vec![ids[0].clone()]).then_some(())
    });
    // until is exclusive: nothing created before the first event.
    let none: i64 = one(
        &mut c,
        &format!(
            "SELECT webhooks.redeliver_events('dead', until => (SELECT created_at FROM webhooks.event_log WHERE id = '{}'))",
            ids[0]
        ),
    );
    assert_eq!(none, 0);

    // Archived events are never requeued: the errored event of a deleted
    // trigger stays where it is, even under a new trigger of that name.
    c.batch_execute("SELECT webhooks.delete_event_trigger('dead')").unwrap();
    create(&mut c, "dead", &r.url("/ok/dead"), json!({}), false);
    let again: i64 = one(&mut c, "SELECT webhooks.redeliver_events('dead')");
    assert_eq!(again, 0);

    assert_sql_error(
        &mut c,
        "SELECT webhooks.redeliver_events('nope')",
        "42704",
        &["event trigger \"nope\" does not exist"],
    );
    assert_sql_error(&mut c, "SELECT webhooks.redeliver_events(NULL)", "22004", &["\"trigger_name\" must not be NULL"]);
}

#[test]
fn a_per_second_throttle_holds_over_ten_seconds() {
    let r = Receiver::start();
    let mut c = connect();
    watch(&mut c, "paced", &r.url("/ok/paced"), json!({"throttle": {"per_second": 20}}));
    c.batch_execute("INSERT INTO paced SELECT g FROM generate_series(1, 300) g").unwrap();
    let first = r.wait_for("/ok/paced", 1, WAIT)[0].at;
    std::thread::sleep(Duration::from_secs(10).saturating_sub(first.elapsed()));
    let window = first + Duration::from_secs(10);
    let in_window = r.received_on("/ok/paced").iter().filter(|g| g.at < window).count();
    // 20 per second for 10 seconds: 200, within 10%.
    assert!((180..=220).contains(&in_window), "{in_window} requests in the first 10 s at 20/s");
    // Evenly spaced, not 20 at each second's start.
    let mut at: Vec<Instant> = r.received_on("/ok/paced").iter().map(|g| g.at).filter(|t| *t < window).collect();
    at.sort();
    let bunched = at.windows(2).filter(|w| w[1].duration_since(w[0]) < Duration::from_millis(10)).count();
    assert!(bunched < in_window / 10, "{bunched} of {in_window} requests came within 10 ms of the previous one");
}

#[test]
fn a_max_concurrency_throttle_caps_requests_in_flight() {
    let r = Receiver::start();
    let mut c = connect();
    watch(&mut c, "narrow", &r.url("/slow/300/narrow"), json!({"throttle": {"max_concurrency": 2}}));
    c.batch_execute("INSERT INTO narrow SELECT g FROM generate_series(1, 10) g").unwrap();
    let got = r.wait_for("/slow/300/narrow", 10, WAIT);
    let mut at: Vec<Instant> = got.iter().map(|g| g.at).collect();
    at.sort();
    // Two at a time, each 300 ms: the tenth arrives at least 4 x 300 ms
    // after the first.
    let spread = at[9].duration_since(at[0]);
    assert!(spread >= Duration::from_millis(1150), "10 requests two at a time spread over {spread:?}");
    for w in at.windows(3) {
        assert!(w[2].duration_since(w[0]) >= Duration::from_millis(250), "never three within one answer's time");
    }
}

/// Webhooks that hang hold only their own trigger's slots (#15): beside
/// three of them, each holding as many requests as one trigger may (a
/// quarter of the default 1,024: each answered 300 requests first, which
/// opened its window that far), a healthy trigger whose webhook answers in
/// 100 ms delivers its whole backlog while those requests still hang. With
/// a thread per request it waited for their timeout.
#[test]
fn hanging_webhooks_leave_a_healthy_trigger_its_slots() {
    let r = Receiver::start();
    let mut c = connect();
    let (answered, per_trigger) = (300, 256);
    for i in 1..=3 {
        let name = format!("fair_hang{i}");
        watch(
            &mut c,
            &name,
            &r.url(&format!("/hang-after/{answered}/{name}")),
            json!({"retry_conf": {"num_retries": 0, "timeout_sec": 60}}),
        );
        c.batch_execute(&format!("INSERT INTO {name} SELECT g FROM generate_series(1, {answered} + 400) g")).unwrap();
    }
    r.wait_until(WAIT, "the hanging webhooks' requests", |got| {
        got.iter().filter(|g| g.path.starts_with("/hang-after/")).count() >= 3 * (answered + per_trigger)
    });
    watch(&mut c, "fair_ok", &r.url("/slow/100/fair_ok"), json!({}));
    c.batch_execute("INSERT INTO fair_ok SELECT g FROM generate_series(1, 1000) g").unwrap();
    eventually(WAIT, "the healthy trigger's 1000 deliveries", || {
        (one::<i64>(&mut c, "SELECT count(*) FROM webhooks.event_log WHERE trigger_name = 'fair_ok' AND delivered")
            == 1000)
            .then_some(())
    });
    let hanging = r.received_on("/hang-after/").len() - 3 * answered;
    let ended: i64 =
        one(&mut c, "SELECT count(*) FROM webhooks.event_log WHERE trigger_name LIKE 'fair_hang%' AND error");
    assert_eq!((hanging, ended), (3 * per_trigger, 0), "the hanging requests were still on the wire, none more");
    for name in ["fair_hang1", "fair_hang2", "fair_hang3", "fair_ok"] {
        c.batch_execute(&format!("SELECT webhooks.delete_event_trigger('{name}')")).unwrap();
    }
}

#[test]
fn an_endpoint_that_is_down_gets_probes_not_the_backlog() {
    let r = Receiver::start();
    let mut c = connect();
    let outage = Duration::from_secs(20);
    let until = std::time::SystemTime::now() + outage;
    let until_ms = until.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    let path = format!("/down-until/{until_ms}/outage");
    watch(&mut c, "outage", &r.url(&path), json!({"retry_conf": {"num_retries": 1, "interval_sec": 2}}));
    c.batch_execute("INSERT INTO outage SELECT g FROM generate_series(1, 200) g").unwrap();
    let state = eventually(WAIT, "the endpoint to be down", || {
        c.query_opt(
            "SELECT endpoint_state, endpoint_last_error FROM webhooks.event_stats
             WHERE trigger_name = 'outage' AND endpoint_state = 'down'",
            &[],
        )
        .unwrap()
        .map(|row| row.get::<_, Option<String>>(1))
    });
    assert!(state.unwrap_or_default().contains("503"), "the last error is shown");
    let log = with_shared_settings(SETTINGS, |cl| cl.server_log());
    assert!(log.contains("the webhook of event trigger \"outage\" failed 5 attempts in a row"), "a WARNING says so");
    // Until the outage ends, only probes: one request at a time, every
    // 2 s (interval_sec).
    std::thread::sleep(until.duration_since(std::time::SystemTime::now()).unwrap_or_default());
    let during = r.received_on(&path).len();
    eprintln!("outage: {during} requests during the 20 s outage");
    assert!(during < 40, "{during} requests during a 20 s outage: the backlog of 200 waited");
    // Afterwards every event is delivered, none in error.
    eventually(Duration::from_secs(60), "every event delivered after the outage", || {
        let row = c
            .query_one(
                "SELECT count(*) FILTER (WHERE delivered), count(*) FILTER (WHERE error)
                 FROM webhooks.event_log WHERE trigger_name = 'outage'",
                &[],
            )
            .unwrap();
        assert_eq!(row.get::<_, i64>(1), 0, "no event in error");
        (row.get::<_, i64>(0) == 200).then_some(())
    });
    let up: String = one(&mut c, "SELECT endpoint_state FROM webhooks.event_stats WHERE trigger_name = 'outage'");
    assert_eq!(up, "up");
    let attempts_after = r.received_on(&path).len() - during;
    assert!(attempts_after >= 200 - 30, "the backlog flowed after the outage ({attempts_after} requests)");
}

/// The events of trigger `name`: (op, new id or old id).
fn captured(c: &mut Client, name: &str) -> Vec<(String, i64)> {
    c.query(
        "SELECT payload->>'op', coalesce(payload->'data'->'new'->>'id', payload->'data'->'old'->>'id')::int8
         FROM webhooks.event_log WHERE trigger_name = $1 ORDER BY id",
        &[&name],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

#[test]
fn conditions_filter_each_operation_and_follow_renames() {
    let mut c = connect();
    c.batch_execute("CREATE TABLE orders (id int PRIMARY KEY, status text, total int)").unwrap();
    let args = json!({"name": "paid", "table": "orders", "webhook": "http://127.0.0.1:9/nowhere",
        "insert": {"columns": "*", "condition": "NEW.status = 'paid'"},
        "update": {"columns": ["status"], "condition": "NEW.status = 'paid' AND OLD.status <> 'paid'"},
        "delete": {"columns": "*", "condition": "OLD.total > 100"},
        "retry_conf": {"num_retries": 0}});
    let stored: Value = c.query_one("SELECT webhooks.create_event_trigger($1)", &[&args]).unwrap().get(0);
    // Stored as PostgreSQL prints it.
    assert_eq!(stored["insert"]["condition"], "(new.status = 'paid'::text)");
    assert_eq!(stored["update"]["condition"], "((new.status = 'paid'::text) AND (old.status <> 'paid'::text))");
    assert_eq!(stored["delete"]["condition"], "(old.total > 100)");
    c.execute("SELECT webhooks.pause_event_trigger('paid')", &[]).unwrap();

    c.batch_execute(
        "INSERT INTO orders VALUES (1, 'new', 50), (2, 'paid', 500), (3, 'new', 200);
         UPDATE orders SET status = 'paid' WHERE id IN (1, 2);   -- 1 becomes paid; 2 already was
         UPDATE orders SET total = total + 1;                    -- status unchanged: nothing
         DELETE FROM orders WHERE id IN (1, 3);                  -- 3 is over 100, 1 is not",
    )
    .unwrap();
    assert_eq!(captured(&mut c, "paid"), vec![("INSERT".into(), 2), ("UPDATE".into(), 1), ("DELETE".into(), 3)]);

    // Renames: the conditions keep working and their stored text follows.
    c.batch_execute("ALTER TABLE orders RENAME COLUMN status TO state; ALTER TABLE orders RENAME TO purchases")
        .unwrap();
    let def: Value = one(&mut c, "SELECT definition FROM webhooks.event_triggers WHERE name = 'paid'");
    assert_eq!(def["insert"]["condition"], "(new.state = 'paid'::text)");
    assert_eq!(def["update"]["condition"], "((new.state = 'paid'::text) AND (old.state <> 'paid'::text))");
    assert_eq!(def["table"]["name"], "purchases");
    c.batch_execute("INSERT INTO purchases VALUES (4, 'paid', 1), (5, 'new', 1)").unwrap();
    assert_eq!(captured(&mut c, "paid").last(), Some(&("INSERT".to_string(), 4)));

    // A column a condition reads cannot be dropped without CASCADE, and
    // CASCADE deletes the event trigger as for a listed column.
    assert_sql_error(&mut c, "ALTER TABLE purchases DROP COLUMN total", "2BP01", &["other objects depend on it"]);

    // Replace: a condition removed drops its trigger; one added creates it.
    let replaced = json!({"name": "paid", "table": "purchases", "webhook": "http://127.0.0.1:9/nowhere",
        "insert": {"columns": "*"}, "delete": {"columns": "*", "condition": "OLD.id > 1"}, "replace": true});
    c.execute("SELECT webhooks.create_event_trigger($1)", &[&replaced]).unwrap();
    let triggers: Vec<String> = c
        .query("SELECT tgname::text FROM pg_trigger WHERE tgname LIKE 'pg_webhooks_paid%' ORDER BY 1", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(triggers, ["pg_webhooks_paid", "pg_webhooks_paid:delete"]);
    c.batch_execute("ALTER TABLE purchases DROP COLUMN total").unwrap();
    c.batch_execute("DELETE FROM purchases WHERE id = 4").unwrap();
    assert_eq!(captured(&mut c, "paid").last(), Some(&("DELETE".to_string(), 4)));
    c.batch_execute("ALTER TABLE purchases DROP COLUMN id CASCADE").unwrap();
    let left: i64 = one(&mut c, "SELECT count(*) FROM webhooks.event_triggers WHERE name = 'paid'");
    assert_eq!(left, 0, "dropping a column the condition reads deleted the event trigger");
    let triggers: i64 = one(&mut c, "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'pg_webhooks_paid%'");
    assert_eq!(triggers, 0);
}

#[test]
fn bad_conditions_are_refused_by_postgresql_and_leave_nothing() {
    let mut c = connect();
    c.batch_execute("CREATE TABLE cond_bad (id int PRIMARY KEY, v text)").unwrap();
    let sql = |op: &str, cond: &str| {
        let args = json!({"name": "cond_bad", "table": "cond_bad", "webhook": "http://127.0.0.1:9/x",
                          op: {"columns": "*", "condition": cond}});
        format!("SELECT webhooks.create_event_trigger('{}')", args.to_string().replace('\'', "''"))
    };
    let key = |op: &str| format!("invalid value for key \"{op}.condition\"");
    for (op, cond, code, part) in [
        ("insert", "NEW.v = ", "42601", "syntax error"),
        ("insert", "NEW.nope = 1", "42703", "column new.nope does not exist"),
        ("insert", "OLD.v = 'x'", "42P17", "INSERT trigger's WHEN condition cannot reference OLD values"),
        ("delete", "NEW.v = 'x'", "42P17", "DELETE trigger's WHEN condition cannot reference NEW values"),
        ("update", "NEW.id + 1", "42804", "argument of WHEN must be type boolean"),
        ("update", "true) EXECUTE FUNCTION pg_catalog.now(); DROP TABLE cond_bad; --", "42601", ""),
        ("update", "true) FROM pg_class WHERE (true", "42601", "one SQL expression"),
        ("update", "true), (false", "42601", "one SQL expression"),
    ] {
        let e = assert_sql_error(&mut c, &sql(op, cond), code, &[&key(op), part]);
        assert!(!e.message.is_empty());
    }
    let defs: i64 = one(&mut c, "SELECT count(*) FROM webhooks.event_triggers WHERE name = 'cond_bad'");
    let triggers: i64 = one(&mut c, "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'pg_webhooks_cond_bad%'");
    assert_eq!((defs, triggers), (0, 0), "a refused condition leaves nothing behind");
    let table: i64 = one(&mut c, "SELECT count(*) FROM pg_class WHERE relname = 'cond_bad'");
    assert_eq!(table, 1, "nothing after the condition ran");
}
