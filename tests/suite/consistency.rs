//! Correctness as a careful PostgreSQL user sees it: long-lived (pooled)
//! connections, REPEATABLE READ and SERIALIZABLE writers across the DDL of
//! the README's "watched table's life", prepared transactions, archived
//! events under a reused name, URLs that need normalizing, and passwords in
//! URLs. The worker polls every 10 minutes: whatever arrives was woken.

use std::sync::{Once, OnceLock};
use std::time::{Duration, Instant};

use pg_webhooks_tests::{assert_sql_error, eventually, one, with_shared_settings, Receiver};
use postgres::Client;
use serde_json::{json, Value};

const SETTINGS: &str = "webhooks.poll_interval = '10min'\nmax_prepared_transactions = 5\n";
const WAIT: Duration = Duration::from_secs(30);

static RECEIVER: OnceLock<Receiver> = OnceLock::new();
static EXTENSION: Once = Once::new();

/// The receiver and a connection to the database the worker serves.
fn setup() -> (&'static Receiver, Client) {
    let r = RECEIVER.get_or_init(Receiver::start);
    let mut c = with_shared_settings(SETTINGS, |cl| cl.connect("postgres"));
    EXTENSION.call_once(|| c.batch_execute("CREATE EXTENSION pg_webhooks").unwrap());
    (r, c)
}

fn connect() -> Client {
    with_shared_settings(SETTINGS, |cl| cl.connect("postgres"))
}

fn create(c: &mut Client, args: Value) {
    c.execute("SELECT webhooks.create_event_trigger($1)", &[&args]).unwrap();
}

/// (schema_name, table_name, payload) of trigger `name`'s events, oldest first.
fn events(c: &mut Client, name: &str) -> Vec<(String, String, Value)> {
    c.query(
        "SELECT schema_name, table_name, payload FROM webhooks.event_log WHERE trigger_name = $1 ORDER BY id",
        &[&name],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

/// A connection that has compiled trigger `name` keeps capturing under its
/// current names after a schema rename, a table rename and SET SCHEMA.
#[test]
fn long_lived_connections_follow_schema_and_table_renames() {
    let (r, mut admin) = setup();
    admin.batch_execute("CREATE SCHEMA cs1; CREATE TABLE cs1.t (id int PRIMARY KEY, v text)").unwrap();
    create(
        &mut admin,
        json!({"name": "c_renames", "table": {"schema": "cs1", "name": "t"}, "webhook": r.url("/ok/c_renames"), "insert": {"columns": "*"}}),
    );
    let mut pooled = connect();
    pooled.batch_execute("INSERT INTO cs1.t VALUES (1, 'a')").unwrap();
    admin.batch_execute("ALTER SCHEMA cs1 RENAME TO cs2").unwrap();
    pooled.batch_execute("INSERT INTO cs2.t VALUES (2, 'b')").unwrap();
    admin.batch_execute("ALTER TABLE cs2.t RENAME TO t2").unwrap();
    pooled.batch_execute("INSERT INTO cs2.t2 VALUES (3, 'c')").unwrap();
    admin.batch_execute("CREATE SCHEMA cs3; ALTER TABLE cs2.t2 SET SCHEMA cs3").unwrap();
    pooled.batch_execute("INSERT INTO cs3.t2 VALUES (4, 'd')").unwrap();
    let got: Vec<(String, String)> = events(&mut admin, "c_renames").into_iter().map(|(s, t, _)| (s, t)).collect();
    let want = [("cs1", "t"), ("cs2", "t"), ("cs2", "t2"), ("cs3", "t2")];
    assert_eq!(got, want.map(|(s, t)| (s.to_string(), t.to_string())));
    let bodies = r.wait_for("/ok/c_renames", 4, WAIT);
    let last = bodies.iter().find(|b| b.json()["event"]["data"]["new"]["id"] == json!(4)).unwrap().json();
    assert_eq!(last["table"], json!({"schema": "cs3", "name": "t2"}));
}

/// Rows written through partitions name the partitioned table as it is
/// named now, in a connection that wrote before the rename.
#[test]
fn partitions_follow_their_renamed_parent() {
    let (r, mut admin) = setup();
    admin
        .batch_execute(
            "CREATE SCHEMA cp; CREATE TABLE cp.parent (id int, k text) PARTITION BY LIST (k);
             CREATE TABLE cp.part_a PARTITION OF cp.parent FOR VALUES IN ('a');",
        )
        .unwrap();
    create(
        &mut admin,
        json!({"name": "c_parts", "table": {"schema": "cp", "name": "parent"}, "webhook": r.url("/ok/c_parts"), "insert": {"columns": "*"}}),
    );
    let mut pooled = connect();
    pooled.batch_execute("INSERT INTO cp.parent VALUES (1, 'a'); INSERT INTO cp.part_a VALUES (2, 'a')").unwrap();
    admin.batch_execute("ALTER TABLE cp.parent RENAME TO renamed").unwrap();
    pooled.batch_execute("INSERT INTO cp.part_a VALUES (3, 'a')").unwrap();
    admin.batch_execute("CREATE SCHEMA cp2; ALTER TABLE cp.renamed SET SCHEMA cp2").unwrap();
    pooled.batch_execute("INSERT INTO cp.part_a VALUES (4, 'a')").unwrap();
    let got: Vec<(String, String)> = events(&mut admin, "c_parts").into_iter().map(|(s, t, _)| (s, t)).collect();
    let want = [("cp", "parent"), ("cp", "parent"), ("cp", "renamed"), ("cp2", "renamed")];
    assert_eq!(got, want.map(|(s, t)| (s.to_string(), t.to_string())));
}

/// A REPEATABLE READ or SERIALIZABLE transaction that took its snapshot
/// before a definition was replaced writes under the new definition, and
/// so does every later transaction of that connection.
#[test]
fn snapshot_writers_use_the_definition_current_when_they_write() {
    let (r, mut admin) = setup();
    for level in ["REPEATABLE READ", "SERIALIZABLE"] {
        let name = format!("c_rr_{}", level.split(' ').next().unwrap().to_lowercase());
        admin.batch_execute(&format!("CREATE TABLE {name} (id int PRIMARY KEY, secret text, v text)")).unwrap();
        let def =
            json!({"name": name, "table": name, "webhook": r.url(&format!("/ok/{name}")), "insert": {"columns": "*"}});
        create(&mut admin, def.clone());
        let mut w = connect();
        w.batch_execute(&format!("INSERT INTO {name} VALUES (1, 's', 'a')")).unwrap();
        w.batch_execute(&format!("BEGIN ISOLATION LEVEL {level}; SELECT count(*) FROM {name}")).unwrap();
        let mut narrower = def.clone();
        narrower["insert"] = json!({"columns": "*", "payload": ["id", "v"]});
        narrower["replace"] = json!(true);
        create(&mut admin, narrower);
        w.batch_execute(&format!("INSERT INTO {name} VALUES (2, 's', 'b'); COMMIT")).unwrap();
        w.batch_execute(&format!("INSERT INTO {name} VALUES (3, 's', 'c')")).unwrap();
        let rows: Vec<Value> =
            events(&mut admin, &name).into_iter().map(|(_, _, p)| p["data"]["new"].clone()).collect();
        assert_eq!(
            rows,
            vec![json!({"id": 1, "secret": "s", "v": "a"}), json!({"id": 2, "v": "b"}), json!({"id": 3, "v": "c"})],
            "{level}: the secret column leaves the payload as soon as the definition says so"
        );
    }
}

/// A listed column renamed while a REPEATABLE READ writer has its snapshot:
/// the writer's next row is captured under the new name, with no error.
#[test]
fn snapshot_writers_survive_a_listed_column_rename() {
    let (r, mut admin) = setup();
    admin.batch_execute("CREATE TABLE c_col (id int PRIMARY KEY, v text)").unwrap();
    create(
        &mut admin,
        json!({"name": "c_col", "table": "c_col", "webhook": r.url("/ok/c_col"),
               "insert": {"columns": "*", "payload": ["id", "v"]}, "update": {"columns": ["v"]}}),
    );
    let mut w = connect();
    w.batch_execute("INSERT INTO c_col VALUES (1, 'a')").unwrap();
    w.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1").unwrap();
    admin.batch_execute("ALTER TABLE c_col RENAME COLUMN v TO w").unwrap();
    w.batch_execute("INSERT INTO c_col VALUES (2, 'b'); UPDATE c_col SET w = 'c' WHERE id = 1; COMMIT").unwrap();
    let rows: Vec<Value> = events(&mut admin, "c_col").into_iter().map(|(_, _, p)| p["data"]["new"].clone()).collect();
    assert_eq!(rows, vec![json!({"id": 1, "v": "a"}), json!({"id": 2, "w": "b"}), json!({"id": 1, "w": "c"})]);
    let def: Value = one(&mut admin, "SELECT definition FROM webhooks.event_triggers WHERE name = 'c_col'");
    assert_eq!(def["update"]["columns"], json!(["w"]));
}

/// COMMIT PREPARED wakes the worker at once, from whichever backend runs
/// it; ROLLBACK PREPARED sends nothing.
#[test]
fn commit_prepared_wakes_the_worker() {
    let (r, mut admin) = setup();
    admin.batch_execute("CREATE TABLE c_2pc (id int PRIMARY KEY)").unwrap();
    create(
        &mut admin,
        json!({"name": "c_2pc", "table": "c_2pc", "webhook": r.url("/ok/c_2pc"), "insert": {"columns": "*"}}),
    );
    let mut w = connect();
    w.batch_execute("BEGIN; INSERT INTO c_2pc VALUES (1); PREPARE TRANSACTION 'c_2pc_commit'").unwrap();
    w.batch_execute("BEGIN; INSERT INTO c_2pc VALUES (2); PREPARE TRANSACTION 'c_2pc_rollback'").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(r.received_on("/ok/c_2pc").is_empty(), "nothing before COMMIT PREPARED");
    let mut other = connect();
    let t0 = Instant::now();
    other.batch_execute("COMMIT PREPARED 'c_2pc_commit'").unwrap();
    let got = r.wait_for("/ok/c_2pc", 1, WAIT);
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(5), "delivered {took:?} after COMMIT PREPARED; the poll is 10 minutes");
    assert_eq!(got[0].json()["event"]["data"]["new"], json!({"id": 1}));
    other.batch_execute("ROLLBACK PREPARED 'c_2pc_rollback'").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(r.received_on("/ok/c_2pc").len(), 1, "a rolled back prepared transaction sends nothing");
    assert_eq!(one::<i64>(&mut admin, "SELECT count(*) FROM webhooks.event_log WHERE trigger_name = 'c_2pc'"), 1);
}

/// An event archived when its trigger was deleted never reaches a new
/// trigger of the same name.
#[test]
fn archived_events_stay_archived_under_a_reused_name() {
    let (r, mut admin) = setup();
    admin.batch_execute("CREATE TABLE c_old (id int, secret text); CREATE TABLE c_new (id int)").unwrap();
    create(
        &mut admin,
        json!({"name": "c_reused", "table": "c_old", "webhook": r.url("/ok/c_reused/old"), "insert": {"columns": "*"}}),
    );
    admin
        .batch_execute("SELECT webhooks.pause_event_trigger('c_reused'); INSERT INTO c_old VALUES (1, 'pin')")
        .unwrap();
    let old: uuid::Uuid = one(&mut admin, "SELECT id FROM webhooks.event_log WHERE trigger_name = 'c_reused'");
    admin.batch_execute("SELECT webhooks.delete_event_trigger('c_reused')").unwrap();
    create(
        &mut admin,
        json!({"name": "c_reused", "table": "c_new", "webhook": r.url("/ok/c_reused/new"), "insert": {"columns": "*"}}),
    );
    for sql in [
        format!("SELECT webhooks.redeliver_event('{old}')"),
        format!(r#"SELECT webhooks.query('{{"type": "redeliver_event", "args": {{"event_id": "{old}"}}}}')"#),
    ] {
        assert_sql_error(&mut admin, &sql, "55000", &["was archived when event trigger \"c_reused\" was deleted"]);
    }
    admin.batch_execute("INSERT INTO c_new VALUES (2)").unwrap();
    r.wait_for("/ok/c_reused/new", 1, WAIT);
    std::thread::sleep(Duration::from_millis(300));
    assert!(r.received_on("/ok/c_reused/old").is_empty(), "the old row was never sent");
    assert!(r.received_on("/ok/c_reused/new").iter().all(|b| !b.body.contains("pin")));
    let archived: bool = one(&mut admin, &format!("SELECT archived FROM webhooks.event_log WHERE id = '{old}'"));
    assert!(archived);
}

/// What is accepted is deliverable: a URL that WHATWG parsers accept by
/// percent-encoding is sent that way; header values with control characters
/// are refused, naming the key and the character.
#[test]
fn accepted_urls_and_headers_are_deliverable() {
    let (r, mut admin) = setup();
    admin.batch_execute("CREATE TABLE c_url (id int)").unwrap();
    let url = format!("{}?where={{\"status\":\"paid\"}}&x=`a`", r.url("/ok/c_url"));
    create(&mut admin, json!({"name": "c_url", "table": "c_url", "webhook": url, "insert": {"columns": "*"}}));
    admin.batch_execute("INSERT INTO c_url VALUES (1)").unwrap();
    let got = r.wait_for("/ok/c_url", 1, WAIT);
    assert_eq!(got[0].path, "/ok/c_url?where={%22status%22:%22paid%22}&x=`a`");
    let tries: i32 = eventually(WAIT, "the delivery recorded", || {
        let row = admin
            .query_one("SELECT delivered, tries FROM webhooks.event_log WHERE trigger_name = 'c_url'", &[])
            .unwrap();
        row.get::<_, bool>(0).then(|| row.get(1))
    });
    assert_eq!(tries, 1, "delivered at the first attempt");

    for (bad, shown) in [("a\u{7}b", "U+0007"), ("del\u{7f}", "U+007F"), ("x\u{1b}[31m", "U+001B")] {
        let args = json!({"name": "c_hdr", "table": "c_url", "webhook": r.url("/ok/c_hdr"), "insert": {"columns": "*"},
                          "headers": [{"name": "X-Ok", "value": "fine"}, {"name": "X-Bad", "value": bad}]});
        assert_sql_error(
            &mut admin,
            &format!("SELECT webhooks.create_event_trigger('{}')", args.to_string().replace('\'', "''")),
            "22023",
            &["\"headers[1].value\"", "control characters", shown],
        );
    }
    for bad in ["http://127.0.0.1:9/a b", "http://127.0.0.1:9/\u{7}"] {
        let args = json!({"name": "c_bad_url", "table": "c_url", "webhook": bad, "insert": {"columns": "*"}});
        assert_sql_error(
            &mut admin,
            &format!("SELECT webhooks.create_event_trigger('{args}')"),
            "22023",
            &["\"webhook\""],
        );
    }
    assert_eq!(
        one::<i64>(&mut admin, "SELECT count(*) FROM webhooks.event_triggers WHERE name IN ('c_hdr', 'c_bad_url')"),
        0
    );
}

/// A password in the webhook URL is sent (Basic authentication) but never
/// stored in the invocation log, nor echoed back into it.
#[test]
fn passwords_in_urls_are_never_logged() {
    let (r, mut admin) = setup();
    admin.batch_execute("CREATE TABLE c_pw (id int)").unwrap();
    let url = r.url("/ok/c_pw").replace("http://", "http://ada:s3cr3t-pw@");
    create(&mut admin, json!({"name": "c_pw", "table": "c_pw", "webhook": url, "insert": {"columns": "*"}}));
    admin.batch_execute("INSERT INTO c_pw VALUES (1)").unwrap();
    let got = r.wait_for("/ok/c_pw", 1, WAIT);
    // "ada:s3cr3t-pw" in base64
    assert_eq!(got[0].header("authorization"), Some("Basic YWRhOnMzY3IzdC1wdw=="));
    let logged: String = eventually(WAIT, "the invocation log", || {
        admin
            .query_opt("SELECT request::text || response::text FROM webhooks.event_invocation_logs WHERE trigger_name = 'c_pw'", &[])
            .unwrap()
            .map(|row| row.get(0))
    });
    assert!(!logged.contains("s3cr3t-pw"), "{logged}");
    assert!(logged.contains("ada:<redacted>@"), "{logged}");
    let stored: Value = one(&mut admin, "SELECT definition FROM webhooks.event_triggers WHERE name = 'c_pw'");
    assert!(stored["webhook"].as_str().unwrap().contains("s3cr3t-pw"), "the definition keeps what it needs to send");
}
