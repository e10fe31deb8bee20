//! Capture: what lands in webhooks.event_log for each kind of write, as
//! SPEC.md's "What is captured" says.

use pg_webhooks_tests::{connect_as, fresh_db, one, with_shared};
use postgres::Client;
use serde_json::{json, Value};

fn create(c: &mut Client, args: Value) {
    c.execute("SELECT webhooks.create_event_trigger($1)", &[&args]).unwrap();
}

fn trigger(name: &str, table: Value, ops: Value) -> Value {
    let mut v = json!({"name": name, "table": table, "webhook": "http://127.0.0.1:9/hook"});
    for (k, spec) in ops.as_object().unwrap() {
        v[k] = spec.clone();
    }
    v
}

/// The `data` of every event, oldest first, with its op.
fn events(c: &mut Client) -> Vec<(String, Value)> {
    c.query("SELECT payload->>'op', payload->'data' FROM webhooks.event_log ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

fn event_count(c: &mut Client) -> i64 {
    one(c, "SELECT count(*) FROM webhooks.event_log")
}

#[test]
fn each_operation_writes_its_event() {
    let mut c = fresh_db("ops");
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, name text)").unwrap();
    create(
        &mut c,
        trigger(
            "t_all",
            json!("t"),
            json!({"insert": {"columns": "*"}, "update": {"columns": "*"}, "delete": {"columns": "*"}}),
        ),
    );
    c.batch_execute("INSERT INTO t VALUES (1, 'a'); UPDATE t SET name = 'b'; DELETE FROM t;").unwrap();
    assert_eq!(
        events(&mut c),
        vec![
            ("INSERT".into(), json!({"old": null, "new": {"id": 1, "name": "a"}})),
            ("UPDATE".into(), json!({"old": {"id": 1, "name": "a"}, "new": {"id": 1, "name": "b"}})),
            ("DELETE".into(), json!({"old": {"id": 1, "name": "b"}, "new": null})),
        ]
    );
    let r = c
        .query_one(
            "SELECT trigger_name, schema_name, table_name, delivered, error, archived, tries, locked IS NULL,
                    next_retry_at <= now(), created_at <= now(), payload ? 'session_variables', payload ? 'trace_context'
             FROM webhooks.event_log LIMIT 1",
            &[],
        )
        .unwrap();
    assert_eq!(
        (r.get::<_, String>(0), r.get::<_, String>(1), r.get::<_, String>(2)),
        ("t_all".into(), "public".into(), "t".into())
    );
    assert_eq!((r.get::<_, bool>(3), r.get::<_, bool>(4), r.get::<_, bool>(5)), (false, false, false));
    assert_eq!(r.get::<_, i32>(6), 0);
    for i in 7..12 {
        assert!(r.get::<_, bool>(i), "column {i}");
    }
    c.batch_execute("INSERT INTO t VALUES (2, 'x'); TRUNCATE t;").unwrap();
    assert_eq!(event_count(&mut c), 4, "TRUNCATE is not captured");
}

#[test]
fn only_configured_operations_are_captured() {
    let mut c = fresh_db("only_ops");
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, name text)").unwrap();
    create(&mut c, trigger("t_del", json!("t"), json!({"delete": {"columns": "*"}})));
    c.batch_execute("INSERT INTO t VALUES (1, 'a'); UPDATE t SET name = 'b'; DELETE FROM t;").unwrap();
    assert_eq!(events(&mut c).iter().map(|e| e.0.as_str()).collect::<Vec<_>>(), vec!["DELETE"]);
}

#[test]
fn update_columns_filter_by_changed_value() {
    let mut c = fresh_db("update_filter");
    c.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, name text, j json, jb jsonb, p point, n numeric, other text);
         INSERT INTO t VALUES (1, 'a', '{\"a\": 1}', '{\"a\": 1}', '(1,2)', 1.0, 'o');",
    )
    .unwrap();
    create(&mut c, trigger("t_upd", json!("t"), json!({"update": {"columns": ["name", "j", "jb", "p", "n"]}})));
    let writes = [
        ("UPDATE t SET other = 'changed'", false),         // not a watched column
        ("UPDATE t SET name = 'a'", false),                // same value
        ("UPDATE t SET name = name, j = j, p = p", false), // same values, types without =
        ("UPDATE t SET p = '(1,2)'", false),               // point without equality operator, same value
        ("UPDATE t SET n = 1.00", false),                  // numeric: 1.0 = 1.00
        ("UPDATE t SET jb = '{\"a\":1}'", false),          // jsonb equality
        ("UPDATE t SET name = 'b'", true),
        ("UPDATE t SET p = '(2,2)'", true),
        ("UPDATE t SET j = '{\"a\": 2}'", true),
        ("UPDATE t SET name = NULL", true),  // value to NULL
        ("UPDATE t SET name = NULL", false), // NULL to NULL
        ("UPDATE t SET name = 'c'", true),   // NULL to value
        ("UPDATE t SET id = id", false),
    ];
    let mut expected = 0;
    for (sql, captured) in writes {
        c.batch_execute(sql).unwrap();
        if captured {
            expected += 1;
        }
        assert_eq!(event_count(&mut c), expected, "after {sql}");
    }
}

#[test]
fn update_with_all_columns_ignores_no_op_updates() {
    let mut c = fresh_db("update_all_noop");
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, j json, p point); INSERT INTO t VALUES (1, '[1]', '(0,0)')")
        .unwrap();
    create(&mut c, trigger("t_upd", json!("t"), json!({"update": {"columns": "*"}})));
    c.batch_execute("UPDATE t SET j = j, p = p").unwrap();
    assert_eq!(event_count(&mut c), 0);
    c.batch_execute("UPDATE t SET p = '(0,1)'").unwrap();
    assert_eq!(event_count(&mut c), 1);
}

#[test]
fn payload_lists_limit_old_and_new() {
    let mut c = fresh_db("payload_lists");
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, name text, secret text)").unwrap();
    create(
        &mut c,
        trigger(
            "t_pl",
            json!("t"),
            json!({
                "insert": {"columns": "*", "payload": ["id", "name"]},
                "update": {"columns": ["name"], "payload": ["name"]},
                "delete": {"columns": "*", "payload": ["id"]}
            }),
        ),
    );
    c.batch_execute("INSERT INTO t VALUES (1, 'a', 's'); UPDATE t SET name = 'b', secret = 't'; DELETE FROM t;")
        .unwrap();
    assert_eq!(
        events(&mut c),
        vec![
            ("INSERT".into(), json!({"old": null, "new": {"id": 1, "name": "a"}})),
            ("UPDATE".into(), json!({"old": {"name": "a"}, "new": {"name": "b"}})),
            ("DELETE".into(), json!({"old": {"id": 1}, "new": null})),
        ]
    );
}

#[test]
fn values_are_postgresql_json() {
    let mut c = fresh_db("value_json");
    c.batch_execute(
        "SET timezone = 'UTC';
         CREATE TABLE t (id int PRIMARY KEY, j json, jb jsonb, p point, arr int[], tarr text[], n numeric,
                         big bigint, f float8, b bool, ts timestamptz, d date, t text, nothing text, u uuid);",
    )
    .unwrap();
    create(&mut c, trigger("t_types", json!("t"), json!({"insert": {"columns": "*"}})));
    c.batch_execute(
        "INSERT INTO t VALUES (1, '{\"nested\": [1, {\"deep\": true}]}', '{\"k\": null}', '(1.5,-2)', '{1,2,NULL}', '{a,\"b c\"}',
                               12345678901234567890.123, 9007199254740993, 1.5, true,
                               '2024-02-29 12:34:56.789+00', '2024-02-29', 'multi\nline \"quoted\"', NULL,
                               'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11')",
    )
    .unwrap();
    let (_, data) = events(&mut c).remove(0);
    let new = &data["new"];
    assert_eq!(new["j"], json!({"nested": [1, {"deep": true}]}), "json stays nested JSON");
    assert_eq!(new["jb"], json!({"k": null}));
    assert_eq!(new["p"], json!("(1.5,-2)"));
    assert_eq!(new["arr"], json!([1, 2, null]));
    assert_eq!(new["tarr"], json!(["a", "b c"]));
    let n: String = one(&mut c, "SELECT payload #>> '{data,new,n}' FROM webhooks.event_log");
    assert_eq!(n, "12345678901234567890.123", "numeric keeps every digit");
    let n_type: String = one(&mut c, "SELECT jsonb_typeof(payload #> '{data,new,n}') FROM webhooks.event_log");
    assert_eq!(n_type, "number", "numbers stay numbers");
    assert_eq!(new["big"].to_string(), "9007199254740993");
    assert_eq!(new["f"], json!(1.5));
    assert_eq!(new["b"], json!(true));
    assert_eq!(new["ts"], json!("2024-02-29T12:34:56.789+00:00"), "timestamps are ISO 8601");
    assert_eq!(new["d"], json!("2024-02-29"));
    assert_eq!(new["t"], json!("multi\nline \"quoted\""));
    assert_eq!(new["nothing"], Value::Null);
    assert!(new.as_object().unwrap().contains_key("nothing"), "NULL columns are present as null");
    assert_eq!(new["u"], json!("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"));
    let same: bool =
        one(&mut c, "SELECT payload->'data'->'new' = (SELECT to_jsonb(r) FROM t AS r) FROM webhooks.event_log");
    assert!(same, "the row's JSON is to_jsonb of the row");
}

/// Capture converts common types itself (integers, booleans, text, dates and
/// timestamps): at their edges the result is still exactly to_jsonb's.
#[test]
fn converted_types_match_to_jsonb_at_their_edges() {
    let mut c = fresh_db("edge_json");
    c.batch_execute(
        "SET timezone = 'America/St_Johns';
         CREATE DOMAIN small_count AS int CHECK (VALUE >= 0);
         CREATE TABLE e (id serial PRIMARY KEY, i2 int2, i4 int4, i8 int8, b bool, t text, v varchar(10),
                         d date, ts timestamp, tstz timestamptz, dom small_count, big text);",
    )
    .unwrap();
    create(&mut c, trigger("e_all", json!("e"), json!({"insert": {"columns": "*"}, "update": {"columns": "*"}})));
    c.batch_execute(
        "INSERT INTO e (i2, i4, i8, b, t, v, d, ts, tstz, dom, big) VALUES
           (-32768, -2147483648, -9223372036854775808, false, '', 'ünïcödé✓', '-infinity', 'infinity', '-infinity', 0, NULL),
           (32767, 2147483647, 9223372036854775807, true, E'tab\\there \\\\ \"q\" \\u0001', 'x',
            '4713-01-01 BC', '1999-12-31 23:59:59.999999', '2000-02-29 12:00:00.5+05:30', 7, repeat('toast ', 100000)),
           (0, 0, 0, NULL, 'plain', NULL, 'infinity', '-infinity', 'infinity', NULL, repeat('y', 3000));",
    )
    .unwrap();
    let mismatches: i64 = one(
        &mut c,
        "SELECT count(*) FROM webhooks.event_log l
         JOIN e AS r ON r.id = (l.payload #>> '{data,new,id}')::int
         WHERE l.payload #>> '{op}' = 'INSERT'
           AND (l.payload -> 'data' -> 'new')::text IS DISTINCT FROM to_jsonb(r)::text",
    );
    assert_eq!(mismatches, 0, "every inserted row's JSON is to_jsonb(row), byte for byte");
    let inserts: i64 = one(&mut c, "SELECT count(*) FROM webhooks.event_log WHERE payload->>'op' = 'INSERT'");
    assert_eq!(inserts, 3);
    c.batch_execute("UPDATE e SET i4 = i4 / 2 WHERE id = 2").unwrap();
    // The UPDATE's old row carries the unchanged, TOASTed value.
    let (old_ok, new_ok): (bool, bool) = {
        let row = c
            .query_one(
                "SELECT (payload #>> '{data,old,big}') = repeat('toast ', 100000),
                        (payload #> '{data,new}') = (SELECT to_jsonb(r) FROM e AS r WHERE id = 2)
                 FROM webhooks.event_log WHERE payload->>'op' = 'UPDATE'",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert!(old_ok, "the old row's TOASTed text is in the payload whole");
    assert!(new_ok, "the new row is to_jsonb of the row");
    let first: Value =
        one(&mut c, "SELECT payload->'data'->'new' FROM webhooks.event_log WHERE payload #>> '{data,new,id}' = '1'");
    assert_eq!(first["i8"].to_string(), "-9223372036854775808", "bigint keeps every digit");
    assert_eq!(first["d"], json!("-infinity"));
    assert_eq!(first["v"], json!("ünïcödé✓"));
    assert_eq!(first["b"], json!(false));
}

#[test]
fn quoted_identifiers() {
    let mut c = fresh_db("quoted_idents");
    c.batch_execute(
        "CREATE SCHEMA \"My Schema\";
         CREATE TABLE \"My Schema\".\"Order Items\" (\"select\" int PRIMARY KEY, \"Mixed Case\" text, \"quote'd\" text);",
    )
    .unwrap();
    create(
        &mut c,
        trigger(
            "quoted",
            json!({"schema": "My Schema", "name": "Order Items"}),
            json!({"insert": {"columns": "*", "payload": ["select", "quote'd"]}, "update": {"columns": ["Mixed Case"]}}),
        ),
    );
    c.batch_execute(
        "INSERT INTO \"My Schema\".\"Order Items\" VALUES (1, 'a', 'q');
         UPDATE \"My Schema\".\"Order Items\" SET \"Mixed Case\" = 'b';",
    )
    .unwrap();
    let r = c.query_one("SELECT schema_name, table_name FROM webhooks.event_log LIMIT 1", &[]).unwrap();
    assert_eq!((r.get::<_, String>(0), r.get::<_, String>(1)), ("My Schema".into(), "Order Items".into()));
    assert_eq!(
        events(&mut c),
        vec![
            ("INSERT".into(), json!({"old": null, "new": {"select": 1, "quote'd": "q"}})),
            (
                "UPDATE".into(),
                json!({"old": {"select": 1, "Mixed Case": "a", "quote'd": "q"}, "new": {"select": 1, "Mixed Case": "b", "quote'd": "q"}})
            ),
        ]
    );
}

#[test]
fn partitions_report_the_parent_table() {
    let mut c = fresh_db("partitions");
    c.batch_execute(
        "CREATE TABLE m (id int, region text, v text) PARTITION BY LIST (region);
         CREATE TABLE m_eu PARTITION OF m FOR VALUES IN ('eu');
         CREATE TABLE m_us (region text, v text, id int);
         ALTER TABLE m_us DROP COLUMN v;
         ALTER TABLE m_us ADD COLUMN v text;",
    )
    .unwrap();
    create(
        &mut c,
        trigger(
            "m_all",
            json!("m"),
            json!({"insert": {"columns": "*", "payload": ["id", "v"]}, "update": {"columns": ["v"]}}),
        ),
    );
    // a partition attached later, with its columns in another order and numbering
    c.batch_execute("ALTER TABLE m ATTACH PARTITION m_us FOR VALUES IN ('us')").unwrap();
    // and one created later
    c.batch_execute("CREATE TABLE m_ap PARTITION OF m FOR VALUES IN ('ap')").unwrap();
    c.batch_execute(
        "INSERT INTO m VALUES (1, 'eu', 'a'), (2, 'us', 'b'), (3, 'ap', 'c');
         UPDATE m SET v = v || '!' WHERE id = 2;",
    )
    .unwrap();
    let rows =
        c.query("SELECT schema_name, table_name, payload->'data' FROM webhooks.event_log ORDER BY id", &[]).unwrap();
    assert_eq!(rows.len(), 4);
    for r in &rows {
        assert_eq!((r.get::<_, String>(0), r.get::<_, String>(1)), ("public".into(), "m".into()));
    }
    let data: Vec<Value> = rows.iter().map(|r| r.get(2)).collect();
    assert_eq!(data[0]["new"], json!({"id": 1, "v": "a"}));
    assert_eq!(data[1]["new"], json!({"id": 2, "v": "b"}));
    assert_eq!(data[2]["new"], json!({"id": 3, "v": "c"}));
    assert_eq!(data[3]["new"], json!({"id": 2, "region": "us", "v": "b!"}));
}

#[test]
fn rolled_back_writes_leave_no_event() {
    let mut c = fresh_db("rollback");
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY)").unwrap();
    create(&mut c, trigger("t_ins", json!("t"), json!({"insert": {"columns": "*"}})));
    c.batch_execute("BEGIN; INSERT INTO t VALUES (1); ROLLBACK;").unwrap();
    c.batch_execute("BEGIN; INSERT INTO t VALUES (2); SAVEPOINT s; INSERT INTO t VALUES (3); ROLLBACK TO s; COMMIT;")
        .unwrap();
    let ids: Vec<Value> = c
        .query("SELECT payload->'data'->'new'->'id' FROM webhooks.event_log", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, vec![json!(2)]);
}

#[test]
fn a_statement_of_1000_rows_writes_1000_events() {
    let mut c = fresh_db("thousand");
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text)").unwrap();
    create(&mut c, trigger("t_all", json!("t"), json!({"insert": {"columns": "*"}, "update": {"columns": "*"}})));
    c.batch_execute("INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 1000) g").unwrap();
    assert_eq!(event_count(&mut c), 1000);
    let distinct: i64 = one(&mut c, "SELECT count(DISTINCT payload->'data'->'new'->>'id') FROM webhooks.event_log");
    assert_eq!(distinct, 1000);
    c.batch_execute("UPDATE t SET v = v || '!'").unwrap();
    assert_eq!(event_count(&mut c), 2000);
    let ids_unique: bool = one(&mut c, "SELECT count(DISTINCT id) = count(*) FROM webhooks.event_log");
    assert!(ids_unique);
}

#[test]
fn a_role_that_may_only_insert_is_captured() {
    let mut c = fresh_db("insert_only_role");
    c.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         DO $$ BEGIN CREATE ROLE pgwh_inserter LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
         GRANT INSERT ON t TO pgwh_inserter;",
    )
    .unwrap();
    create(&mut c, trigger("t_ins", json!("t"), json!({"insert": {"columns": "*"}})));
    let mut app = connect_as("t_insert_only_role", "pgwh_inserter");
    app.batch_execute("INSERT INTO t VALUES (1, 'by app')").unwrap();
    let err = app.batch_execute("SELECT * FROM webhooks.event_log").unwrap_err();
    assert_eq!(err.code().unwrap().code(), "42501", "the role has no access to webhooks");
    assert_eq!(event_count(&mut c), 1);
}

#[test]
fn a_hostile_search_path_cannot_change_capture() {
    let mut c = fresh_db("hostile_path");
    c.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         CREATE SCHEMA evil;
         CREATE FUNCTION evil.to_jsonb(anyelement) RETURNS jsonb LANGUAGE sql AS $$ SELECT '\"forged\"'::jsonb $$;
         CREATE FUNCTION evil.jsonb_build_object(VARIADIC text[]) RETURNS jsonb LANGUAGE sql AS $$ SELECT '\"forged\"'::jsonb $$;
         CREATE TABLE evil.event_log (LIKE webhooks.event_log);
         CREATE FUNCTION evil.concat(jsonb, jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT '\"forged\"'::jsonb $$;
         CREATE OPERATOR evil.|| (LEFTARG = jsonb, RIGHTARG = jsonb, FUNCTION = evil.concat);
         CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = pg_catalog.textne);",
    )
    .unwrap();
    create(&mut c, trigger("t_ins", json!("t"), json!({"insert": {"columns": "*", "payload": ["v"]}})));
    // A payload list longer than 50 columns is joined with ||: it must be pg_catalog's.
    let cols: Vec<String> = (1..=60).map(|i| format!("c{i} int DEFAULT {i}")).collect();
    c.batch_execute(&format!("CREATE TABLE wide60 (id int, {})", cols.join(", "))).unwrap();
    let names: Vec<String> = (1..=60).map(|i| format!("c{i}")).collect();
    create(&mut c, trigger("wide60", json!("wide60"), json!({"insert": {"columns": "*", "payload": names}})));
    c.batch_execute(
        "SET search_path = evil, pg_catalog, public; INSERT INTO public.t VALUES (1, 'real'); INSERT INTO public.wide60 (id) VALUES (1);",
    )
    .unwrap();
    c.batch_execute("RESET search_path").unwrap();
    let (_, data) = events(&mut c).remove(0);
    assert_eq!(data["new"], json!({"v": "real"}));
    let wide: Value =
        one(&mut c, "SELECT payload->'data'->'new' FROM webhooks.event_log WHERE trigger_name = 'wide60'");
    assert_eq!(wide.as_object().map(|o| o.len()), Some(60), "{wide}");
    assert_eq!(wide["c60"], json!(60));
    assert_eq!(one::<i64>(&mut c, "SELECT count(*) FROM evil.event_log"), 0);
}

#[test]
fn session_variables_and_trace_context() {
    let mut c = fresh_db("session_vars");
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY)").unwrap();
    create(&mut c, trigger("t_ins", json!("t"), json!({"insert": {"columns": "*"}})));
    c.batch_execute(
        "BEGIN;
         SELECT set_config('hasura.user', '{\"x-hasura-role\": \"user\", \"x-hasura-user-id\": \"42\"}', true);
         SELECT set_config('hasura.tracecontext', '{\"trace_id\": \"abc\", \"span_id\": \"def\"}', true);
         INSERT INTO t VALUES (1);
         COMMIT;
         INSERT INTO t VALUES (2);
         SELECT set_config('hasura.user', '', false);
         INSERT INTO t VALUES (3);",
    )
    .unwrap();
    let rows = c
        .query("SELECT payload->'session_variables', payload->'trace_context' FROM webhooks.event_log ORDER BY id", &[])
        .unwrap();
    let got: Vec<(Value, Value)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(got[0].0, json!({"x-hasura-role": "user", "x-hasura-user-id": "42"}));
    assert_eq!(got[0].1, json!({"trace_id": "abc", "span_id": "def"}));
    assert_eq!(got[1], (Value::Null, Value::Null), "unset after the transaction");
    assert_eq!(got[2], (Value::Null, Value::Null), "empty means null");
}

#[test]
fn a_replaced_definition_takes_effect_in_other_sessions() {
    let mut c = fresh_db("replace_effect");
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, a text, b text)").unwrap();
    create(&mut c, trigger("t_x", json!("t"), json!({"insert": {"columns": "*"}})));
    // another session that has already compiled the trigger
    let mut writer = with_shared(|cl| cl.connect("t_replace_effect"));
    writer.batch_execute("INSERT INTO t VALUES (1, 'a1', 'b1')").unwrap();
    let mut replaced =
        trigger("t_x", json!("t"), json!({"insert": {"columns": "*", "payload": ["a"]}, "delete": {"columns": "*"}}));
    replaced["replace"] = json!(true);
    create(&mut c, replaced);
    writer.batch_execute("INSERT INTO t VALUES (2, 'a2', 'b2'); DELETE FROM t WHERE id = 1;").unwrap();
    assert_eq!(
        events(&mut c),
        vec![
            ("INSERT".into(), json!({"old": null, "new": {"id": 1, "a": "a1", "b": "b1"}})),
            ("INSERT".into(), json!({"old": null, "new": {"a": "a2"}})),
            ("DELETE".into(), json!({"old": {"id": 1, "a": "a1", "b": "b1"}, "new": null})),
        ]
    );
}

/// Capture keeps the event log open while a statement runs and closes it
/// when the statement ends: DDL on it later in the same transaction works,
/// after an INSERT as after a COPY.
#[test]
fn the_event_log_is_released_after_each_statement() {
    let mut c = fresh_db("same_xact");
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text)").unwrap();
    create(&mut c, trigger("t_ins", json!("t"), json!({"insert": {"columns": "*"}})));
    let mut tx = c.transaction().unwrap();
    tx.batch_execute("INSERT INTO t VALUES (1, 'a')").unwrap();
    tx.batch_execute("ALTER TABLE webhooks.event_log SET (fillfactor = 80)").unwrap();
    let mut w = tx.copy_in("COPY t FROM STDIN").unwrap();
    std::io::Write::write_all(&mut w, b"2\tb\n3\tc\n").unwrap();
    w.finish().unwrap();
    tx.batch_execute("ALTER TABLE webhooks.event_log SET (fillfactor = 80)").unwrap();
    let n: i64 = tx.query_one("SELECT count(*) FROM webhooks.event_log", &[]).unwrap().get(0);
    assert_eq!(n, 3, "the INSERT's and the COPY's rows are captured and visible in the transaction");
    tx.commit().unwrap();
    assert_eq!(event_count(&mut c), 3);
}

/// The extension hooks the end of every statement; errors raised there
/// still reach the client exactly as PostgreSQL raised them.
#[test]
fn errors_of_other_statements_keep_every_field() {
    let mut c = fresh_db("error_fields");
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text)").unwrap();
    create(&mut c, trigger("t_ins", json!("t"), json!({"insert": {"columns": "*"}})));
    let e = c.batch_execute("CREATE TABLE bad (a no_such_type)").unwrap_err();
    let db = e.as_db_error().expect("a database error");
    assert_eq!(db.code().code(), "42704");
    assert!(db.position().is_some(), "the error position is kept: {db:?}");
    assert_eq!(db.detail(), None, "no detail is added: {db:?}");

    c.batch_execute("INSERT INTO t VALUES (1, 'a')").unwrap();
    let mut tx = c.transaction().unwrap();
    let mut w = tx.copy_in("COPY t FROM STDIN").unwrap();
    std::io::Write::write_all(&mut w, b"2\tb\n1\tdup\n").unwrap();
    let e = w.finish().unwrap_err();
    let db = e.as_db_error().expect("a database error");
    assert_eq!(db.code().code(), "23505");
    assert_eq!(db.constraint(), Some("t_pkey"), "the constraint name is kept: {db:?}");
    assert_eq!(db.table(), Some("t"));
    drop(tx);
    assert_eq!(event_count(&mut c), 1, "the failed COPY left no event");
}
