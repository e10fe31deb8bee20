//! The watched table's life: drops, renames and DROP EXTENSION leave no
//! broken state and no orphaned trigger.

use pg_webhooks_tests::{assert_sql_error, fresh_db, one};
use postgres::Client;
use serde_json::{json, Value};

fn create(c: &mut Client, args: Value) {
    c.execute("SELECT webhooks.create_event_trigger($1)", &[&args]).unwrap();
}

fn setup(name: &str) -> Client {
    let mut c = fresh_db(name);
    c.batch_execute("CREATE SCHEMA app; CREATE TABLE app.t (id int PRIMARY KEY, name text, email text, extra text)")
        .unwrap();
    create(
        &mut c,
        json!({"name": "watch", "table": {"schema": "app", "name": "t"}, "webhook": "http://127.0.0.1:9/h",
               "insert": {"columns": "*", "payload": ["id", "name"]},
               "update": {"columns": ["email"]},
               "delete": {"columns": "*"}}),
    );
    c
}

fn definitions(c: &mut Client) -> i64 {
    one(c, "SELECT count(*) FROM webhooks.event_triggers")
}

fn our_table_triggers(c: &mut Client) -> i64 {
    one(c, "SELECT count(*) FROM pg_trigger WHERE tgfoid = 'webhooks.capture()'::regprocedure")
}

fn definition(c: &mut Client) -> Value {
    one(c, "SELECT definition FROM webhooks.event_triggers WHERE name = 'watch'")
}

#[test]
fn drop_table_deletes_the_event_trigger_and_archives_its_events() {
    let mut c = setup("drop_table");
    c.batch_execute("INSERT INTO app.t VALUES (1, 'a', 'e', 'x')").unwrap();
    c.batch_execute("DROP TABLE app.t").unwrap();
    assert_eq!(definitions(&mut c), 0);
    assert_eq!(our_table_triggers(&mut c), 0);
    let archived: bool = one(&mut c, "SELECT bool_and(archived) FROM webhooks.event_log");
    assert!(archived);
    // the name is free again
    c.batch_execute("CREATE TABLE app.t (id int PRIMARY KEY)").unwrap();
    create(
        &mut c,
        json!({"name": "watch", "table": {"schema": "app", "name": "t"}, "webhook": "http://x.example", "insert": {"columns": "*"}}),
    );
}

#[test]
fn drop_schema_cascade_deletes_the_event_trigger() {
    let mut c = setup("drop_schema");
    c.batch_execute("DROP SCHEMA app CASCADE").unwrap();
    assert_eq!(definitions(&mut c), 0);
    assert_eq!(our_table_triggers(&mut c), 0);
}

#[test]
fn manual_only_triggers_follow_their_table_too() {
    let mut c = fresh_db("manual_only_drop");
    c.batch_execute("CREATE TABLE m (id int)").unwrap();
    create(&mut c, json!({"name": "manual", "table": "m", "webhook": "http://x.example"}));
    let def: String = one(&mut c, "SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgname = 'pg_webhooks_manual'");
    assert!(def.contains("WHEN (false)"), "{def}");
    c.batch_execute("ALTER TABLE m RENAME TO m2").unwrap();
    let table: String = one(&mut c, "SELECT table_name FROM webhooks.event_triggers");
    assert_eq!(table, "m2");
    c.batch_execute("DROP TABLE m2").unwrap();
    assert_eq!(definitions(&mut c), 0);
}

#[test]
fn listed_columns_cannot_be_dropped_without_cascade() {
    let mut c = setup("drop_column");
    for col in ["email", "name"] {
        let e = assert_sql_error(
            &mut c,
            &format!("ALTER TABLE app.t DROP COLUMN {col}"),
            "2BP01",
            &[col, "other objects depend on it"],
        );
        assert!(e.hint.unwrap().contains("CASCADE"));
    }
    // an unlisted column goes, and capture goes on without it
    c.batch_execute("ALTER TABLE app.t DROP COLUMN extra").unwrap();
    c.batch_execute("INSERT INTO app.t VALUES (1, 'a', 'e'); DELETE FROM app.t").unwrap();
    let old: Value =
        one(&mut c, "SELECT payload->'data'->'old' FROM webhooks.event_log WHERE payload->>'op' = 'DELETE'");
    assert_eq!(old, json!({"id": 1, "name": "a", "email": "e"}));
    // with CASCADE the table trigger goes, and the event trigger with it
    c.batch_execute("ALTER TABLE app.t DROP COLUMN email CASCADE").unwrap();
    assert_eq!(definitions(&mut c), 0);
    assert_eq!(our_table_triggers(&mut c), 0);
    c.batch_execute("INSERT INTO app.t VALUES (2, 'b')").unwrap();
}

#[test]
fn listed_columns_keep_their_type() {
    let mut c = setup("alter_type");
    assert_sql_error(
        &mut c,
        "ALTER TABLE app.t ALTER COLUMN email TYPE varchar(200)",
        "0A000",
        &["used in a trigger definition"],
    );
    c.batch_execute("ALTER TABLE app.t ALTER COLUMN extra TYPE int USING NULL").unwrap();
    c.batch_execute("INSERT INTO app.t VALUES (1, 'a', 'e', 5); DELETE FROM app.t").unwrap();
    let old: Value =
        one(&mut c, "SELECT payload->'data'->'old' FROM webhooks.event_log WHERE payload->>'op' = 'DELETE'");
    assert_eq!(old["extra"], json!(5), "capture follows the new type");
}

#[test]
fn renames_are_followed() {
    let mut c = setup("renames");
    c.batch_execute("INSERT INTO app.t VALUES (1, 'a', 'e', 'x')").unwrap();
    c.batch_execute("ALTER TABLE app.t RENAME TO people").unwrap();
    c.batch_execute("ALTER SCHEMA app RENAME TO crm").unwrap();
    c.batch_execute("ALTER TABLE crm.people RENAME COLUMN email TO mail").unwrap();
    c.batch_execute("ALTER TABLE crm.people RENAME COLUMN name TO full_name").unwrap();
    c.batch_execute("ALTER TABLE crm.people RENAME COLUMN extra TO notes").unwrap();
    let d = definition(&mut c);
    assert_eq!(d["table"], json!({"schema": "crm", "name": "people"}));
    assert_eq!(d["insert"]["payload"], json!(["id", "full_name"]));
    assert_eq!(d["update"]["columns"], json!(["mail"]));
    let (schema, table): (String, String) = {
        let r = c.query_one("SELECT schema_name, table_name FROM webhooks.event_triggers", &[]).unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((schema.as_str(), table.as_str()), ("crm", "people"));

    c.batch_execute("INSERT INTO crm.people VALUES (2, 'b', 'e2'); UPDATE crm.people SET mail = 'new' WHERE id = 2;")
        .unwrap();
    let rows = c
        .query("SELECT schema_name, table_name, payload->'data' FROM webhooks.event_log ORDER BY id OFFSET 1", &[])
        .unwrap();
    assert_eq!(rows.len(), 2);
    for r in &rows {
        assert_eq!((r.get::<_, String>(0), r.get::<_, String>(1)), ("crm".into(), "people".into()));
    }
    assert_eq!(rows[0].get::<_, Value>(2)["new"], json!({"id": 2, "full_name": "b"}));
    assert_eq!(rows[1].get::<_, Value>(2)["new"]["mail"], json!("new"));
    // the renamed columns are still protected
    assert_sql_error(&mut c, "ALTER TABLE crm.people DROP COLUMN mail", "2BP01", &["mail"]);
}

#[test]
fn dropping_the_table_trigger_deletes_the_event_trigger() {
    let mut c = setup("drop_trigger");
    c.batch_execute("DROP TRIGGER pg_webhooks_watch ON app.t").unwrap();
    assert_eq!(definitions(&mut c), 0);
}

#[test]
fn drop_extension_needs_cascade_and_leaves_nothing() {
    let mut c = setup("drop_extension");
    c.batch_execute("INSERT INTO app.t VALUES (1, 'a', 'e', 'x')").unwrap();
    assert_sql_error(&mut c, "DROP EXTENSION pg_webhooks", "2BP01", &["pg_webhooks", "other objects depend on it"]);
    c.batch_execute("DROP EXTENSION pg_webhooks CASCADE").unwrap();
    assert_eq!(one::<i64>(&mut c, "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'pg_webhooks_%'"), 0);
    assert_eq!(one::<i64>(&mut c, "SELECT count(*) FROM pg_proc WHERE proname = 'capture'"), 0);
    assert_eq!(one::<i64>(&mut c, "SELECT count(*) FROM pg_event_trigger"), 0);
    assert_eq!(one::<i64>(&mut c, "SELECT count(*) FROM pg_namespace WHERE nspname = 'webhooks'"), 0);
    c.batch_execute(
        "INSERT INTO app.t VALUES (2, 'b', 'e', 'x'); ALTER TABLE app.t DROP COLUMN email; DROP TABLE app.t;",
    )
    .unwrap();
    // and it can come back
    c.batch_execute("CREATE EXTENSION pg_webhooks").unwrap();
    assert_eq!(definitions(&mut c), 0);
}

#[test]
fn unrelated_ddl_is_untouched() {
    let mut c = setup("unrelated_ddl");
    c.batch_execute(
        "CREATE TABLE other (id int); ALTER TABLE other ADD COLUMN v text; ALTER TABLE other RENAME TO other2;
         CREATE SCHEMA s2; ALTER SCHEMA s2 RENAME TO s3; DROP TABLE other2; DROP SCHEMA s3;",
    )
    .unwrap();
    assert_eq!(definitions(&mut c), 1);
    assert_eq!(definition(&mut c)["table"], json!({"schema": "app", "name": "t"}));
}
