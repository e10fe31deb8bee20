//! The SQL API as a user calls it from psql: every argument rule with its
//! SQLSTATE, the returned definition, replace, delete, invoke, redeliver and
//! Hasura's `query` bodies.

use pg_webhooks_tests::{assert_sql_error, fresh_db, one};
use postgres::Client;
use serde_json::{json, Value};

const HOOK: &str = "http://127.0.0.1:9/hook";

fn setup(name: &str) -> Client {
    let mut c = fresh_db(name);
    c.batch_execute(
        "CREATE TABLE users (id bigserial PRIMARY KEY, username text, real_name text, email text, age int);
         CREATE VIEW users_view AS SELECT * FROM users;",
    )
    .unwrap();
    c
}

fn create(c: &mut Client, args: Value) -> Value {
    c.query_one("SELECT webhooks.create_event_trigger($1)", &[&args]).unwrap().get(0)
}

fn create_sql(args: &Value) -> String {
    format!("SELECT webhooks.create_event_trigger('{}'::jsonb)", args.to_string().replace('\'', "''"))
}

fn base() -> Value {
    json!({"name": "users_all", "table": "users", "webhook": HOOK, "insert": {"columns": "*"}})
}

fn with(key: &str, v: Value) -> Value {
    let mut b = base();
    b[key] = v;
    b
}

fn count_definitions(c: &mut Client) -> i64 {
    one(c, "SELECT count(*) FROM webhooks.event_triggers")
}

fn count_table_triggers(c: &mut Client) -> i64 {
    one(c, "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'pg_webhooks_%'")
}

/// `make test` runs the suite once per major and says which in
/// PGWH_PG_MAJOR: the clusters really are of that major.
#[test]
fn the_clusters_run_the_major_under_test() {
    let mut c = fresh_db("major");
    let num: String = one(&mut c, "SELECT current_setting('server_version_num')");
    let major = num.parse::<u32>().unwrap() / 10000;
    if let Ok(want) = std::env::var("PGWH_PG_MAJOR") {
        assert_eq!(major.to_string(), want, "server_version_num {num}");
    }
    assert!([15, 16, 18].contains(&major), "PostgreSQL {major} is not a supported major");
}

#[test]
fn create_returns_and_stores_the_normalized_definition() {
    let mut c = setup("create_normalized");
    let got = create(&mut c, base());
    let want = json!({
        "name": "users_all",
        "table": {"schema": "public", "name": "users"},
        "webhook": HOOK,
        "insert": {"columns": "*", "payload": "*"},
        "headers": [],
        "retry_conf": {"num_retries": 0, "interval_sec": 10, "timeout_sec": 60, "backoff": "fixed", "max_interval_sec": 3600},
        "ordering": "none",
        "enable_manual": true,
        "trigger_on_replication": false
    });
    assert_eq!(got, want);
    let stored: Value = one(&mut c, "SELECT definition FROM webhooks.event_triggers WHERE name = 'users_all'");
    assert_eq!(stored, want);
    let (schema, table): (String, String) = {
        let r = c.query_one("SELECT schema_name, table_name FROM webhooks.event_triggers", &[]).unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((schema.as_str(), table.as_str()), ("public", "users"));
    let tg: String =
        one(&mut c, "SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgname = 'pg_webhooks_users_all'");
    assert!(
        tg.contains("AFTER INSERT ON public.users FOR EACH ROW EXECUTE FUNCTION webhooks.capture('users_all')"),
        "{tg}"
    );
}

#[test]
fn every_key_is_accepted_and_kept() {
    let mut c = setup("every_key");
    let args = json!({
        "name": "full-Trigger_1",
        "table": {"schema": "public", "name": "users"},
        "webhook_from_env": "PGWH_TEST_URL",
        "insert": {"columns": "*", "payload": ["id", "username"]},
        "update": {"columns": ["username", "email"], "payload": "*"},
        "delete": {"columns": "*", "payload": ["id"]},
        "headers": [{"name": "X-Plain", "value": "v"}, {"name": "X-Secret", "value_from_env": "PGWH_TEST_SECRET"}],
        "retry_conf": {"num_retries": 3, "interval_sec": 1, "timeout_sec": 5, "backoff": "exponential", "max_interval_sec": 60},
        "replace": false,
        "enable_manual": false,
        "ordering": "key",
        "source": "default",
        "request_transform": {"version": 2, "template_engine": "Kriti", "method": "PUT", "url": "{{$base_url}}/x",
                              "query_params": {"a": "{{$body.id}}"},
                              "request_headers": {"add_headers": {"X-A": "a"}, "remove_headers": ["X-Plain"]},
                              "body": {"action": "transform", "template": "{{$body.event}}"}},
        "response_transform": {"version": 1, "template_engine": "Kriti", "body": "{{$body}}"},
        "cleanup_config": {"schedule": "0 0 * * *", "clear_older_than": 24, "batch_size": 500, "timeout": 30,
                           "clean_invocation_logs": true, "paused": false},
        "trigger_on_replication": true
    });
    let got = create(&mut c, args.clone());
    let mut want = args;
    want.as_object_mut().unwrap().remove("replace");
    want.as_object_mut().unwrap().remove("source");
    assert_eq!(got, want);
    let stored: String = one(&mut c, "SELECT definition::text FROM webhooks.event_triggers");
    assert!(
        !stored.contains("s3cr3t-value") && !stored.contains("127.0.0.1:9/from-env"),
        "no env value is stored: {stored}"
    );
    let tg: String =
        one(&mut c, "SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgname = 'pg_webhooks_full-Trigger_1'");
    assert!(tg.contains("AFTER INSERT OR DELETE OR UPDATE ON public.users"), "{tg}");
}

#[test]
fn webhook_template_is_resolved_from_the_server_environment() {
    let mut c = setup("webhook_template");
    let got = create(&mut c, with("webhook", json!("http://{{PGWH_TEST_HOST}}/x")));
    assert_eq!(got["webhook"], json!("http://{{PGWH_TEST_HOST}}/x"), "the template is stored, not the value");
    assert_sql_error(
        &mut c,
        &create_sql(&with("webhook", json!("http://{{PGWH_NOPE}}/x"))),
        "22023",
        &["PGWH_NOPE", "\"webhook\""],
    );
}

#[test]
fn bad_arguments_raise_22023_naming_the_key() {
    let mut c = setup("bad_args");
    let cases: Vec<(Value, &[&str])> = vec![
        (json!([1, 2]), &["expects a JSON object"]),
        (json!("users"), &["expects a JSON object"]),
        (with("retry_config", json!({})), &["unknown key \"retry_config\""]),
        (with("name", json!("1bad")), &["\"name\"", "\"1bad\""]),
        (with("name", json!("has space")), &["\"name\""]),
        (with("name", json!("x".repeat(43))), &["\"name\"", "limit is 42"]),
        (with("name", json!(7)), &["\"name\"", "expected a string"]),
        (with("table", json!(7)), &["\"table\""]),
        (with("table", json!({"name": "users", "schma": "public"})), &["unknown key \"table.schma\""]),
        (with("webhook", json!("ftp://x/")), &["\"webhook\"", "http:// or https://"]),
        (with("webhook", json!("not a url")), &["\"webhook\""]),
        (with("insert", json!({"columns": []})), &["\"insert.columns\"", "empty"]),
        (with("insert", json!({"columns": "*", "payload": []})), &["\"insert.payload\"", "empty"]),
        (with("insert", json!({"payload": "*"})), &["\"insert.columns\" is required"]),
        (with("insert", json!({"columns": "all"})), &["\"insert.columns\""]),
        (with("update", json!("yes")), &["\"update\""]),
        (
            with("headers", json!([{"name": "X Bad Name", "value": "v"}])),
            &["\"headers[0].name\"", "not a valid HTTP header name"],
        ),
        (
            with("headers", json!([{"name": "X-A", "value": "a\r\nX-Injected: 1"}])),
            &["\"headers[0].value\"", "control characters (found U+000D"],
        ),
        (with("headers", json!([{"name": "X-A", "value_from_env": "PGWH_TEST_CRLF"}])), &["control characters"]),
        (with("headers", json!([{"name": "X-A", "value_from_env": "PGWH_NOT_SET"}])), &["\"PGWH_NOT_SET\" is not set"]),
        (with("headers", json!("X-A: 1")), &["\"headers\""]),
        (with("retry_conf", json!({"num_retries": -1})), &["\"retry_conf.num_retries\"", ">= 0", "-1"]),
        (with("retry_conf", json!({"interval_sec": -1})), &["\"retry_conf.interval_sec\"", ">= 0"]),
        (with("retry_conf", json!({"timeout_sec": 0})), &["\"retry_conf.timeout_sec\"", ">= 1"]),
        (
            with("retry_conf", json!({"backoff": "linear"})),
            &["\"retry_conf.backoff\"", "expected \"fixed\" or \"exponential\", got string \"linear\""],
        ),
        (with("retry_conf", json!({"max_interval_sec": 0})), &["\"retry_conf.max_interval_sec\"", ">= 1"]),
        (with("retry_conf", json!({"num_retries": "3"})), &["\"retry_conf.num_retries\"", "string"]),
        (with("replace", json!("true")), &["\"replace\"", "true or false"]),
        (with("enable_manual", json!(0)), &["\"enable_manual\""]),
        (with("source", json!("other")), &["\"source\"", "other"]),
    ];
    for (args, parts) in cases {
        assert_sql_error(&mut c, &create_sql(&args), "22023", parts);
    }
    let mut no_webhook = base();
    no_webhook.as_object_mut().unwrap().remove("webhook");
    assert_sql_error(&mut c, &create_sql(&no_webhook), "22023", &["\"webhook\" or \"webhook_from_env\" is required"]);
    no_webhook["webhook_from_env"] = json!("PGWH_NOT_SET");
    assert_sql_error(
        &mut c,
        &create_sql(&no_webhook),
        "22023",
        &["\"webhook_from_env\"", "\"PGWH_NOT_SET\" is not set"],
    );
    let mut nothing = base();
    nothing.as_object_mut().unwrap().remove("insert");
    nothing["enable_manual"] = json!(false);
    assert_sql_error(&mut c, &create_sql(&nothing), "22023", &["captures nothing"]);
    assert_sql_error(&mut c, "SELECT webhooks.create_event_trigger(NULL)", "22004", &["\"args\" must not be NULL"]);
    assert_eq!(count_definitions(&mut c), 0, "failed calls leave nothing behind");
    assert_eq!(count_table_triggers(&mut c), 0, "failed calls leave no table trigger");
}

#[test]
fn bad_transforms_and_cleanup_configs_are_refused_whole() {
    let mut c = setup("bad_transforms");
    let bad_template = with("request_transform", json!({"body": "{\"id\": {{ $body.event.data.new.id }"}));
    assert_sql_error(
        &mut c,
        &create_sql(&bad_template),
        "22023",
        &["invalid value for key \"request_transform.body\"", "Kriti syntax error", "line 1, column"],
    );
    let bad_response = with("response_transform", json!({"version": 2, "body": {"action": "transform"}}));
    assert_sql_error(&mut c, &create_sql(&bad_response), "22023", &["response_transform.body.template"]);
    let bad_cron = with("cleanup_config", json!({"schedule": "every day", "clear_older_than": 24}));
    assert_sql_error(&mut c, &create_sql(&bad_cron), "22023", &["cleanup_config.schedule", "every day"]);
    let bad_flag = with("trigger_on_replication", json!("yes"));
    assert_sql_error(&mut c, &create_sql(&bad_flag), "22023", &["trigger_on_replication"]);
    assert_eq!(count_definitions(&mut c), 0, "failed calls leave nothing behind");
    assert_eq!(count_table_triggers(&mut c), 0, "failed calls leave no table trigger");
}

#[test]
fn catalog_errors_have_their_own_sqlstates() {
    let mut c = setup("catalog_errors");
    assert_sql_error(
        &mut c,
        &create_sql(&with("table", json!("no_such_table"))),
        "42P01",
        &["\"table\"", "public.no_such_table", "does not exist"],
    );
    assert_sql_error(
        &mut c,
        &create_sql(&with("table", json!({"schema": "nope", "name": "users"}))),
        "42P01",
        &["nope.users"],
    );
    assert_sql_error(
        &mut c,
        &create_sql(&with("table", json!("users_view"))),
        "42809",
        &["users_view", "is not a table"],
    );
    assert_sql_error(
        &mut c,
        &create_sql(&with("update", json!({"columns": ["username", "nickname"]}))),
        "42703",
        &["\"update.columns\"", "\"nickname\"", "public.users"],
    );
    assert_sql_error(
        &mut c,
        &create_sql(&with("insert", json!({"columns": "*", "payload": ["ID"]}))),
        "42703",
        &["\"insert.payload\"", "\"ID\""],
    );
    create(&mut c, base());
    let e = assert_sql_error(&mut c, &create_sql(&base()), "42710", &["\"users_all\" already exists"]);
    assert!(e.hint.unwrap().contains("\"replace\": true"));
    assert_sql_error(&mut c, "SELECT webhooks.delete_event_trigger('nope')", "42704", &["\"nope\" does not exist"]);
    assert_sql_error(&mut c, "SELECT webhooks.invoke_event_trigger('nope', '{}')", "42704", &["\"nope\""]);
    assert_sql_error(
        &mut c,
        "SELECT webhooks.redeliver_event('00000000-0000-0000-0000-000000000000')",
        "P0002",
        &["does not exist"],
    );
    assert_eq!(count_definitions(&mut c), 1);
}

#[test]
fn replace_swaps_the_definition_and_moves_tables() {
    let mut c = setup("replace");
    c.batch_execute("CREATE TABLE other (id int PRIMARY KEY, v text)").unwrap();
    let first = create(&mut c, base());
    let mut second = with("update", json!({"columns": ["email"]}));
    second["replace"] = json!(true);
    let got = create(&mut c, second);
    assert_ne!(got, first);
    assert_eq!(got["update"], json!({"columns": ["email"], "payload": "*"}));
    let tg: String =
        one(&mut c, "SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgname = 'pg_webhooks_users_all'");
    assert!(tg.contains("AFTER INSERT OR UPDATE ON public.users"), "{tg}");

    let moved =
        json!({"name": "users_all", "table": "other", "webhook": HOOK, "delete": {"columns": "*"}, "replace": true});
    create(&mut c, moved);
    let on: Vec<String> = c
        .query("SELECT tgrelid::regclass::text FROM pg_trigger WHERE tgname = 'pg_webhooks_users_all'", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(on, vec!["other"], "the old table's trigger is gone");
    assert_eq!(count_definitions(&mut c), 1);

    // replace on a new name creates it
    let mut fresh = base();
    fresh["name"] = json!("brand_new");
    fresh["replace"] = json!(true);
    create(&mut c, fresh);
    assert_eq!(count_definitions(&mut c), 2);
}

#[test]
fn delete_archives_pending_events_and_drops_the_table_trigger() {
    let mut c = setup("delete");
    create(&mut c, base());
    c.batch_execute("INSERT INTO users (username) VALUES ('a'), ('b')").unwrap();
    c.batch_execute("SELECT webhooks.delete_event_trigger('users_all')").unwrap();
    assert_eq!(count_definitions(&mut c), 0);
    assert_eq!(count_table_triggers(&mut c), 0);
    let archived: i64 = one(&mut c, "SELECT count(*) FROM webhooks.event_log WHERE archived AND NOT delivered");
    assert_eq!(archived, 2);
    c.batch_execute("INSERT INTO users (username) VALUES ('c')").unwrap();
    assert_eq!(one::<i64>(&mut c, "SELECT count(*) FROM webhooks.event_log"), 2, "no capture after delete");
    assert_sql_error(&mut c, "SELECT webhooks.delete_event_trigger(NULL)", "22004", &["\"name\""]);
}

#[test]
fn invoke_enqueues_a_manual_event() {
    let mut c = setup("invoke");
    let mut args = base();
    args.as_object_mut().unwrap().remove("insert");
    create(&mut c, args);
    c.batch_execute("SELECT set_config('hasura.user', '{\"x-hasura-role\": \"admin\"}', false)").unwrap();
    let id: uuid::Uuid = one(&mut c, "SELECT webhooks.invoke_event_trigger('users_all', '{\"hello\": [1, 2]}')");
    let row = c
        .query_one("SELECT trigger_name, schema_name, table_name, payload, delivered, error, tries FROM webhooks.event_log WHERE id = $1", &[&id])
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "users_all");
    assert_eq!(row.get::<_, String>(1), "public");
    assert_eq!(row.get::<_, String>(2), "users");
    assert_eq!(
        row.get::<_, Value>(3),
        json!({"op": "MANUAL", "data": {"old": null, "new": {"hello": [1, 2]}},
               "session_variables": {"x-hasura-role": "admin"}, "trace_context": null})
    );
    assert!(!row.get::<_, bool>(4) && !row.get::<_, bool>(5));
    assert_eq!(row.get::<_, i32>(6), 0);
    // a manual-only trigger never captures rows
    c.batch_execute("INSERT INTO users (username) VALUES ('a')").unwrap();
    assert_eq!(one::<i64>(&mut c, "SELECT count(*) FROM webhooks.event_log"), 1);

    let mut no_manual = base();
    no_manual["name"] = json!("no_manual");
    no_manual["enable_manual"] = json!(false);
    create(&mut c, no_manual);
    assert_sql_error(
        &mut c,
        "SELECT webhooks.invoke_event_trigger('no_manual', '{}')",
        "55000",
        &["\"no_manual\"", "enable_manual"],
    );
    assert_sql_error(&mut c, "SELECT webhooks.invoke_event_trigger('users_all', NULL)", "22004", &["\"payload\""]);
}

#[test]
fn redeliver_requeues_an_event() {
    let mut c = setup("redeliver");
    create(&mut c, base());
    c.batch_execute("INSERT INTO users (username) VALUES ('a')").unwrap();
    let id: uuid::Uuid = one(&mut c, "SELECT id FROM webhooks.event_log");
    c.execute(
        "UPDATE webhooks.event_log SET error = true, tries = 4, next_retry_at = now() + interval '1 day' WHERE id = $1",
        &[&id],
    )
    .unwrap();
    c.execute("SELECT webhooks.redeliver_event($1)", &[&id]).unwrap();
    let r = c
        .query_one("SELECT tries, delivered, error, locked IS NULL, next_retry_at <= now() FROM webhooks.event_log WHERE id = $1", &[&id])
        .unwrap();
    assert_eq!(r.get::<_, i32>(0), 0);
    assert!(!r.get::<_, bool>(1) && !r.get::<_, bool>(2) && r.get::<_, bool>(3) && r.get::<_, bool>(4));

    c.execute("UPDATE webhooks.event_log SET locked = now() WHERE id = $1", &[&id]).unwrap();
    assert_sql_error(
        &mut c,
        &format!("SELECT webhooks.redeliver_event('{id}')"),
        "55006",
        &[&id.to_string(), "being delivered"],
    );
}

fn query(c: &mut Client, body: Value) -> Value {
    c.query_one("SELECT webhooks.query($1)", &[&body]).unwrap().get(0)
}

#[test]
fn query_runs_hasura_bodies() {
    let mut c = setup("query_bodies");
    let ok = json!({"message": "success"});
    assert_eq!(query(&mut c, json!({"type": "create_event_trigger", "args": base()})), ok);
    let mut v2 = base();
    v2["name"] = json!("v2_trigger");
    v2["source"] = json!("default");
    assert_eq!(query(&mut c, json!({"type": "pg_create_event_trigger", "args": v2})), ok);
    assert_eq!(count_definitions(&mut c), 2);

    let invoked = query(
        &mut c,
        json!({"type": "pg_invoke_event_trigger", "args": {"name": "v2_trigger", "payload": {"a": 1}, "source": "default"}}),
    );
    let id = invoked["event_id"].as_str().expect("event_id").to_string();
    let exists: bool = one(&mut c, &format!("SELECT EXISTS (SELECT FROM webhooks.event_log WHERE id = '{id}')"));
    assert!(exists);
    assert_eq!(query(&mut c, json!({"type": "redeliver_event", "args": {"event_id": id}})), ok);
    assert!(query(&mut c, json!({"type": "invoke_event_trigger", "args": {"name": "users_all", "payload": null}}))
        ["event_id"]
        .is_string());
    assert_eq!(
        query(&mut c, json!({"type": "pg_delete_event_trigger", "args": {"name": "v2_trigger", "source": "default"}})),
        ok
    );
    assert_eq!(query(&mut c, json!({"type": "delete_event_trigger", "args": {"name": "users_all"}})), ok);
    assert_eq!(count_definitions(&mut c), 0);
}

#[test]
fn query_bulk_is_all_or_nothing() {
    let mut c = setup("query_bulk");
    let mut second = base();
    second["name"] = json!("second");
    let results = query(
        &mut c,
        json!({"type": "bulk", "args": [
            {"type": "create_event_trigger", "args": base()},
            {"type": "pg_create_event_trigger", "args": second}
        ]}),
    );
    assert_eq!(results, json!([{"message": "success"}, {"message": "success"}]));
    assert_eq!(count_definitions(&mut c), 2);

    let mut third = base();
    third["name"] = json!("third");
    let body = json!({"type": "bulk", "args": [
        {"type": "create_event_trigger", "args": third},
        {"type": "delete_event_trigger", "args": {"name": "second"}},
        {"type": "create_event_trigger", "args": with("table", json!("no_such_table"))}
    ]});
    let sql = format!("SELECT webhooks.query('{}')", body.to_string().replace('\'', "''"));
    assert_sql_error(&mut c, &sql, "42P01", &["bulk args[2]", "no_such_table"]);
    let names: Vec<String> = c
        .query("SELECT name FROM webhooks.event_triggers ORDER BY name", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(names, vec!["second", "users_all"], "nothing of the failed bulk remains");
    assert_eq!(count_table_triggers(&mut c), 2);
}

#[test]
fn query_rejects_malformed_bodies() {
    let mut c = setup("query_malformed");
    for (body, code, parts) in [
        (json!([]), "22023", &["must be a JSON object"][..]),
        (json!({"type": "run_sql", "args": {}}), "22023", &["unknown query type \"run_sql\""][..]),
        (json!({"type": "delete_event_trigger"}), "22023", &["\"args\" is required"][..]),
        (json!({"type": "delete_event_trigger", "args": {"nam": "x"}}), "22023", &["unknown key \"args.nam\""][..]),
        (
            json!({"type": "redeliver_event", "args": {"event_id": "not-a-uuid"}}),
            "22023",
            &["\"event_id\"", "not a UUID"][..],
        ),
        (
            json!({"type": "pg_delete_event_trigger", "args": {"name": "x", "source": "elsewhere"}}),
            "22023",
            &["\"source\""][..],
        ),
        (json!({"type": "create_event_trigger", "args": {"name": "x"}}), "22023", &["\"table\" is required"][..]),
    ] {
        let sql = format!("SELECT webhooks.query('{}')", body.to_string().replace('\'', "''"));
        assert_sql_error(&mut c, &sql, code, parts);
    }
}

fn hasura_export(second_table: &str) -> Value {
    json!({
        "resource_version": 7,
        "metadata": {
            "version": 3,
            "sources": [{
                "name": "default",
                "kind": "postgres",
                "tables": [
                    {"table": {"schema": "public", "name": "users"},
                     "event_triggers": [
                        {"name": "user_created",
                         "definition": {"enable_manual": false, "insert": {"columns": "*"}},
                         "retry_conf": {"num_retries": 3, "interval_sec": 15, "timeout_sec": 60},
                         "webhook_from_env": "PGWH_TEST_URL",
                         "headers": [{"name": "x-secret", "value_from_env": "PGWH_TEST_SECRET"}],
                         "request_transform": {"version": 2, "template_engine": "Kriti", "body": {"action": "transform", "template": "{{$body.event.data.new}}"}}},
                        {"name": "user_email_changed",
                         "definition": {"enable_manual": true, "update": {"columns": ["email"]}, "delete": {"columns": "*"}},
                         "retry_conf": {"num_retries": 0, "interval_sec": 10, "timeout_sec": 60},
                         "webhook": "https://hooks.example.com/email",
                         "cleanup_config": {"schedule": "0 0 * * *", "clear_older_than": 168}}
                     ]},
                    {"table": {"schema": "public", "name": second_table},
                     "event_triggers": [{"name": "other_changed", "definition": {"insert": {"columns": "*"}},
                                         "retry_conf": {"num_retries": 1, "interval_sec": 5, "timeout_sec": 30},
                                         "webhook": "https://hooks.example.com/other"}]}
                ]
            }]
        }
    })
}

#[test]
fn import_hasura_metadata_creates_every_trigger_and_reports_the_rest() {
    let mut c = setup("import_metadata");
    c.batch_execute("CREATE TABLE other (id int)").unwrap();
    let report: Value =
        c.query_one("SELECT webhooks.import_hasura_metadata($1)", &[&hasura_export("other")]).unwrap().get(0);
    assert_eq!(report["created"], json!(["user_created", "user_email_changed", "other_changed"]));
    // Transforms and cleanup configurations come over whole.
    assert_eq!(report["unsupported"], json!([]), "{report}");
    let def: Value = one(&mut c, "SELECT definition FROM webhooks.event_triggers WHERE name = 'user_created'");
    assert_eq!(def["request_transform"]["body"]["template"], json!("{{$body.event.data.new}}"));
    let cleanup: Value = one(
        &mut c,
        "SELECT definition->'cleanup_config' FROM webhooks.event_triggers WHERE name = 'user_email_changed'",
    );
    assert_eq!(cleanup["clear_older_than"], json!(168));
    assert_eq!(def["webhook_from_env"], json!("PGWH_TEST_URL"));
    assert_eq!(
        def["retry_conf"],
        json!({"num_retries": 3, "interval_sec": 15, "timeout_sec": 60, "backoff": "fixed", "max_interval_sec": 3600})
    );
    assert_eq!(def["enable_manual"], json!(false));
    assert_eq!(count_table_triggers(&mut c), 3);
}

#[test]
fn import_hasura_metadata_is_all_or_nothing() {
    let mut c = setup("import_all_or_nothing");
    let sql = format!(
        "SELECT webhooks.import_hasura_metadata('{}')",
        hasura_export("missing_table").to_string().replace('\'', "''")
    );
    assert_sql_error(&mut c, &sql, "42P01", &["event trigger \"other_changed\"", "missing_table"]);
    assert_eq!(count_definitions(&mut c), 0, "nothing of a failed import remains");
    assert_eq!(count_table_triggers(&mut c), 0);
    assert_sql_error(&mut c, "SELECT webhooks.import_hasura_metadata('[]')", "22023", &["must be a JSON object"]);
}
