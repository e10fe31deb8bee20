//! Hostile input: generated argument objects by the thousand, identifiers
//! that attack hand-built SQL, and huge rows.

use std::sync::{Once, OnceLock};
use std::time::Duration;

use pg_webhooks_tests::{eventually, one, with_shared, Receiver};
use postgres::Client;
use serde_json::{json, Map, Value};

const WAIT: Duration = Duration::from_secs(60);
static RECEIVER: OnceLock<Receiver> = OnceLock::new();
static EXTENSION: Once = Once::new();

fn setup() -> (&'static Receiver, Client) {
    let r = RECEIVER.get_or_init(Receiver::start);
    let mut c = with_shared(|cl| cl.connect("postgres"));
    EXTENSION.call_once(|| {
        c.batch_execute("CREATE EXTENSION pg_webhooks; CREATE TABLE fuzz (id int PRIMARY KEY, a text, b jsonb)")
            .unwrap()
    });
    (r, c)
}

/// xorshift: reproducible without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn random_value(rng: &mut Rng, depth: u32) -> Value {
    match rng.below(if depth > 6 { 6 } else { 9 }) {
        0 => Value::Null,
        1 => json!(rng.below(2) == 0),
        2 => json!((rng.next() as i64) >> rng.below(64)),
        3 => json!(f64::from_bits(rng.next()).clamp(-1e300, 1e300)),
        4 => json!(
            ["*", "", "name", "a\u{1}b", "ü", "x\ny", "'; DROP TABLE fuzz; --", "$$", "\"q\""][rng.below(9) as usize]
        ),
        5 => Value::String("x".repeat(rng.below(100_000) as usize)),
        6 => Value::Array((0..rng.below(4)).map(|_| random_value(rng, depth + 1)).collect()),
        7 | 8 => {
            let keys = [
                "name",
                "table",
                "webhook",
                "insert",
                "columns",
                "payload",
                "headers",
                "value",
                "retry_conf",
                "num_retries",
                "type",
                "args",
                "schema",
            ];
            let mut m = Map::new();
            for _ in 0..rng.below(5) {
                m.insert(keys[rng.below(keys.len() as u64) as usize].to_string(), random_value(rng, depth + 1));
            }
            Value::Object(m)
        }
        _ => unreachable!(),
    }
}

fn valid_args(i: u64) -> Value {
    json!({"name": format!("fz{i}"), "table": "fuzz", "webhook": "http://127.0.0.1:9/x",
           "insert": {"columns": "*", "payload": ["id", "a"]}, "update": {"columns": ["a"]},
           "headers": [{"name": "X-A", "value": "v"}], "retry_conf": {"num_retries": 1}})
}

/// A valid object with one part replaced, removed or nested deeply.
fn mutated(rng: &mut Rng, i: u64) -> Value {
    let mut v = valid_args(i);
    let keys = [
        "name",
        "table",
        "webhook",
        "insert",
        "update",
        "headers",
        "retry_conf",
        "replace",
        "enable_manual",
        "source",
        "webhook_from_env",
        "delete",
        "request_transform",
    ];
    for _ in 0..1 + rng.below(3) {
        let k = keys[rng.below(keys.len() as u64) as usize];
        match rng.below(4) {
            0 => {
                v.as_object_mut().unwrap().remove(k);
            }
            1 => {
                let mut deep = json!("*");
                for _ in 0..rng.below(200) {
                    deep = json!({"columns": [deep]});
                }
                v[k] = deep;
            }
            _ => v[k] = random_value(rng, 0),
        }
    }
    v
}

#[test]
fn ten_thousand_generated_arguments_never_crash_or_leave_half_a_definition() {
    let (_, mut c) = setup();
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let (mut ok, mut failed) = (0, 0);
    let mut codes = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..10_000u64 {
        let (sql, arg) = match rng.below(4) {
            0 => ("SELECT webhooks.create_event_trigger($1)", random_value(&mut rng, 0)),
            1 | 2 => ("SELECT webhooks.create_event_trigger($1)", mutated(&mut rng, i)),
            _ => {
                let ty = ["create_event_trigger", "pg_delete_event_trigger", "bulk", "invoke_event_trigger", "x"]
                    [rng.below(5) as usize];
                let args = if rng.below(2) == 0 { mutated(&mut rng, i) } else { random_value(&mut rng, 0) };
                ("SELECT webhooks.query($1)", json!({"type": ty, "args": args}))
            }
        };
        match c.execute(sql, &[&arg]) {
            Ok(_) => ok += 1,
            Err(e) => {
                let db = e
                    .as_db_error()
                    .unwrap_or_else(|| panic!("call {i} lost the connection (a crash?): {e}\nargs: {arg}"));
                let code = db.code().code().to_string();
                assert_ne!(code, "XX000", "call {i}: an internal error is a bug: {}\nargs: {arg}", db.message());
                *codes.entry(code).or_default() += 1;
                failed += 1;
            }
        }
    }
    eprintln!("10000 calls: {ok} succeeded, {failed} failed; SQLSTATEs: {codes:?}");
    assert!(ok > 100 && failed > 1000, "the generator reaches both outcomes");
    // Every stored definition is whole: valid, with its table trigger.
    let broken: i64 = one(
        &mut c,
        "SELECT count(*) FROM webhooks.event_triggers et WHERE NOT EXISTS (
            SELECT FROM pg_trigger t WHERE t.tgname = 'pg_webhooks_' || et.name AND t.tgfoid = 'webhooks.capture()'::regprocedure)",
    );
    assert_eq!(broken, 0);
    let orphans: i64 = one(
        &mut c,
        "SELECT count(*) FROM pg_trigger t WHERE t.tgfoid = 'webhooks.capture()'::regprocedure AND NOT EXISTS (
            SELECT FROM webhooks.event_triggers et WHERE t.tgname = 'pg_webhooks_' || et.name)",
    );
    assert_eq!(orphans, 0);
    c.batch_execute("INSERT INTO fuzz VALUES (1, 'a', '{}')").unwrap();
}

#[test]
fn identifiers_that_attack_hand_built_sql() {
    let (r, mut c) = setup();
    let schema = "s\"; DROP TABLE fuzz; --$$'x";
    let table = "t'); DELETE FROM webhooks.event_log; --";
    let column = "c\"$$; SELECT 1; '";
    let long = "n".repeat(63);
    let q = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    c.batch_execute(&format!(
        "CREATE SCHEMA {s}; CREATE TABLE {s}.{t} (id int PRIMARY KEY, {col} text, {long} text);
         CREATE SCHEMA {long}; CREATE TABLE {long}.{long} ({long} int);",
        s = q(schema),
        t = q(table),
        col = q(column),
        long = q(&long)
    ))
    .unwrap();
    c.execute(
        "SELECT webhooks.create_event_trigger($1)",
        &[&json!({"name": "attack", "table": {"schema": schema, "name": table}, "webhook": r.url("/ok/attack"),
                  "insert": {"columns": "*", "payload": ["id", column, long]}, "update": {"columns": [column]}})],
    )
    .unwrap();
    let long_name = "L".repeat(42);
    c.execute(
        "SELECT webhooks.create_event_trigger($1)",
        &[&json!({"name": long_name, "table": {"schema": long, "name": long}, "webhook": r.url("/ok/long"),
                  "insert": {"columns": [long], "payload": [long]}})],
    )
    .unwrap();
    c.batch_execute(&format!(
        "INSERT INTO {s}.{t} VALUES (1, 'v', 'w'); UPDATE {s}.{t} SET {col} = 'v2';
         INSERT INTO {long}.{long} VALUES (7);",
        s = q(schema),
        t = q(table),
        col = q(column),
        long = q(&long)
    ))
    .unwrap();
    let got = r.wait_for("/ok/attack", 2, WAIT);
    let insert = got.iter().map(|g| g.json()).find(|b| b["event"]["op"] == json!("INSERT")).unwrap();
    assert_eq!(insert["table"], json!({"schema": schema, "name": table}));
    assert_eq!(insert["event"]["data"]["new"], json!({"id": 1, column: "v", long.as_str(): "w"}));
    let got = r.wait_for("/ok/long", 1, WAIT);
    assert_eq!(got[0].json()["event"]["data"]["new"], json!({long.as_str(): 7}));
    // Renaming follows, and a trigger name cannot carry an attack at all.
    c.batch_execute(&format!("ALTER TABLE {}.{} RENAME COLUMN {} TO {}", q(schema), q(table), q(column), q("c2'$$")))
        .unwrap();
    let def: Value = one(&mut c, "SELECT definition FROM webhooks.event_triggers WHERE name = 'attack'");
    assert_eq!(def["update"]["columns"], json!(["c2'$$"]));
    let e = c
        .execute(
            "SELECT webhooks.create_event_trigger($1)",
            &[&json!({"name": "x'; DROP TABLE fuzz; --", "table": "fuzz", "webhook": "http://h.example"})],
        )
        .unwrap_err();
    assert_eq!(e.code().unwrap().code(), "22023");
    assert!(one::<i64>(&mut c, "SELECT count(*) FROM fuzz") >= 0, "fuzz still exists");
}

#[test]
fn huge_rows_are_captured_and_delivered() {
    let (r, mut c) = setup();
    // A 10 MB text value.
    c.batch_execute("CREATE TABLE big_row (id int PRIMARY KEY, blob text)").unwrap();
    c.execute(
        "SELECT webhooks.create_event_trigger($1)",
        &[&json!({"name": "big_row", "table": "big_row", "webhook": r.url("/ok/big-row"), "insert": {"columns": "*"}})],
    )
    .unwrap();
    c.batch_execute("INSERT INTO big_row VALUES (1, repeat('z', 10 * 1024 * 1024))").unwrap();
    let got = r.wait_for("/ok/big-row", 1, WAIT).remove(0);
    assert_eq!(got.json()["event"]["data"]["new"]["blob"].as_str().unwrap().len(), 10 * 1024 * 1024);
    // A table of 1,000 columns.
    let cols: Vec<String> = (1..=1000).map(|i| format!("c{i} int")).collect();
    c.batch_execute(&format!("CREATE TABLE wide ({})", cols.join(", "))).unwrap();
    let some: Vec<String> = (1..=120).map(|i| format!("c{i}")).collect();
    c.execute(
        "SELECT webhooks.create_event_trigger($1)",
        &[&json!({"name": "wide", "table": "wide", "webhook": r.url("/ok/wide"), "insert": {"columns": "*"},
                  "update": {"columns": some, "payload": some}})],
    )
    .unwrap();
    let values: Vec<String> = (1..=1000).map(|i| i.to_string()).collect();
    c.batch_execute(&format!("INSERT INTO wide VALUES ({}); UPDATE wide SET c120 = 0;", values.join(", "))).unwrap();
    let got: Vec<Value> = r.wait_for("/ok/wide", 2, WAIT).iter().map(|g| g.json()).collect();
    let by_op = |op: &str| got.iter().find(|b| b["event"]["op"] == json!(op)).unwrap().clone();
    let insert = by_op("INSERT");
    let new = &insert["event"]["data"]["new"];
    assert_eq!(new.as_object().unwrap().len(), 1000);
    assert_eq!(new["c1000"], json!(1000));
    let update = by_op("UPDATE");
    let upd = &update["event"]["data"]["new"];
    assert_eq!(upd.as_object().unwrap().len(), 120, "payload lists longer than 50 columns are built in pieces");
    assert_eq!(upd["c120"], json!(0));
    eventually(WAIT, "both huge events delivered", || {
        (one::<i64>(
            &mut c,
            "SELECT count(*) FROM webhooks.event_log WHERE trigger_name IN ('big_row', 'wide') AND delivered",
        ) == 3)
            .then_some(())
    });
}

#[test]
fn nul_bad_escapes_and_duplicate_keys_get_an_error_not_a_crash() {
    let (_, mut c) = setup();
    for (sql, code) in [
        // NUL and a lone surrogate cannot even become jsonb.
        (r#"SELECT webhooks.create_event_trigger('{"name": "a\u0000b", "table": "fuzz", "webhook": "http://h.example"}')"#, "22P05"),
        (r#"SELECT webhooks.create_event_trigger('{"name": "\ud800", "table": "fuzz", "webhook": "http://h.example"}')"#, "22P02"),
        (r#"SELECT webhooks.query('{"type": "bulk", "args": [{"type": "x\u0000"}]}')"#, "22P05"),
        // Duplicate keys: jsonb keeps the last one, which is checked like any other.
        (r#"SELECT webhooks.create_event_trigger('{"name": "ok_name", "name": "1bad", "table": "fuzz", "webhook": "http://h.example"}')"#, "22023"),
        // Control characters, and a 1 MB name: over webhooks.max_definition_size.
        (r#"SELECT webhooks.create_event_trigger('{"name": "a\u0007b", "table": "fuzz", "webhook": "http://h.example"}')"#, "22023"),
        ("SELECT webhooks.create_event_trigger(jsonb_build_object('name', repeat('n', 1000000), 'table', 'fuzz', 'webhook', 'http://h.example'))", "54000"),
    ] {
        pg_webhooks_tests::assert_sql_error(&mut c, sql, code, &[]);
    }
    assert_eq!(one::<i64>(&mut c, "SELECT count(*) FROM webhooks.event_triggers WHERE name IN ('ok_name', '1bad')"), 0);
}
