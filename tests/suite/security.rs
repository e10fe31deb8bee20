//! Security, tried as an attacker would: a role with only the grants the
//! README gives an application admin must never gain more. Each test takes
//! one class of attack across every entry point: create_event_trigger,
//! query with v1, v2 and bulk bodies, import_hasura_metadata, and the other
//! management functions.

use std::time::Duration;

use pg_webhooks_tests::{assert_sql_error, eventually, one, sql_error, with_shared_env, Receiver};
use postgres::Client;
use serde_json::{json, Value};

const SETTINGS: &str = "webhooks.poll_interval = '200ms'\n\
                        webhooks.allowed_env_vars = 'PGWH_ALLOWED_*, PGWH_TEST_HOST'\n\
                        max_prepared_transactions = 5\n";
/// RUST_BACKTRACE is set so that a backtrace would show if one leaked.
const ENV: &[(&str, &str)] = &[("PGWH_ALLOWED_TOKEN", "allowed-token"), ("RUST_BACKTRACE", "1")];
const WAIT: Duration = Duration::from_secs(30);

fn admin(db: &str) -> Client {
    with_shared_env(SETTINGS, ENV, |c| c.connect(db))
}

fn connect_as(db: &str, role: &str) -> Client {
    with_shared_env(SETTINGS, ENV, |c| c.connect_as(db, role))
}

/// A fresh database with the extension; `postgres` itself for tests that
/// need the worker (it serves that database).
fn fresh_db(name: &str) -> (String, Client) {
    with_shared_env(SETTINGS, ENV, |c| {
        let (db, client) = c.fresh_db(name);
        (db, client)
    })
}

static EXTENSION: std::sync::Once = std::sync::Once::new();

/// The database the worker serves, with the extension.
fn worker_db() -> Client {
    let mut c = admin("postgres");
    EXTENSION.call_once(|| admin("postgres").batch_execute("CREATE EXTENSION pg_webhooks").unwrap());
    c.batch_execute("SELECT 1").unwrap();
    c
}

/// A login role with what the README grants an application admin in `db`:
/// USAGE on schema webhooks, EXECUTE on every management function, SELECT on
/// the logs. Nothing else.
fn app_admin(c: &mut Client, role: &str) {
    c.batch_execute(&format!(
        "DO $$ BEGIN CREATE ROLE {role} LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
         GRANT USAGE ON SCHEMA webhooks TO {role};
         GRANT EXECUTE ON FUNCTION webhooks.create_event_trigger(jsonb), webhooks.delete_event_trigger(text),
             webhooks.pause_event_trigger(text), webhooks.resume_event_trigger(text),
             webhooks.invoke_event_trigger(text, jsonb), webhooks.redeliver_event(uuid),
             webhooks.query(jsonb), webhooks.import_hasura_metadata(jsonb) TO {role};
         GRANT SELECT ON webhooks.event_log, webhooks.event_invocation_logs TO {role};"
    ))
    .unwrap();
}

fn is_superuser(c: &mut Client, role: &str) -> bool {
    one(c, &format!("SELECT rolsuper FROM pg_roles WHERE rolname = '{role}'"))
}

fn args(name: &str, schema: &str, table: &str) -> Value {
    json!({"name": name, "table": {"schema": schema, "name": table}, "webhook": "http://127.0.0.1:9/x",
           "insert": {"columns": "*"}, "update": {"columns": ["id"]}})
}

fn call(c: &mut Client, f: &str, arg: &Value) -> Result<(), postgres::Error> {
    c.execute(&format!("SELECT webhooks.{f}($1)"), &[arg]).map(|_| ())
}

fn code(r: Result<(), postgres::Error>) -> String {
    match r {
        Ok(()) => "ok".into(),
        Err(e) => e.as_db_error().map(|d| d.code().code().to_string()).unwrap_or_else(|| e.to_string()),
    }
}

/// Class 1: look-alike operators and functions in a schema the attacker
/// puts before pg_catalog. Every entry point runs, capture compiles, DDL
/// hooks fire; none of the attacker's functions may run, with anybody's
/// rights, and the attacker must stay what it was.
#[test]
fn look_alike_operators_and_functions_never_run() {
    let (db, mut c) = fresh_db("lookalike");
    let role = "pgwh_sec_lookalike";
    app_admin(&mut c, role);
    c.batch_execute(&format!(
        "CREATE SCHEMA evil AUTHORIZATION {role};
         CREATE TABLE public.hits (who text, what text); GRANT INSERT ON public.hits TO PUBLIC;"
    ))
    .unwrap();
    let mut a = connect_as(&db, role);
    // Every function records who ran it and tries to make the attacker a
    // superuser, then answers as the real one would.
    let mut ddl = String::from("SET search_path = evil, pg_catalog;\n");
    let ops = [
        ("oid", "oid", "="),
        ("name", "text", "="),
        ("text", "text", "="),
        ("name", "name", "="),
        ("int2", "int2", "="),
        ("int4", "int4", "="),
        ("int2", "int2", ">"),
        ("int4", "int4", ">"),
        ("int4", "int4", "+"),
        ("uuid", "uuid", "="),
        ("jsonb", "jsonb", "="),
        ("timestamptz", "timestamptz", "<="),
        ("timestamptz", "timestamptz", "-"),
        ("jsonb", "text[]", "#>>"),
    ];
    for (i, (l, r, op)) in ops.iter().enumerate() {
        let ret = match *op {
            "+" => "int4",
            "-" => "interval",
            "#>>" => "text",
            _ => "bool",
        };
        ddl.push_str(&format!(
            "CREATE FUNCTION evil.f{i}(a {l}, b {r}) RETURNS {ret} LANGUAGE plpgsql AS $f$
             BEGIN
               INSERT INTO public.hits VALUES (current_user, 'operator {op}({l}, {r})');
               BEGIN EXECUTE 'ALTER ROLE {role} SUPERUSER'; EXCEPTION WHEN OTHERS THEN NULL; END;
               RETURN a OPERATOR(pg_catalog.{op}) b;
             END $f$;
             CREATE OPERATOR evil.{op} (LEFTARG = {l}, RIGHTARG = {r}, FUNCTION = evil.f{i});\n"
        ));
    }
    for (name, sig, ret, body) in [
        ("now", "", "timestamptz", "pg_catalog.now()"),
        ("to_regclass", "t text", "regclass", "pg_catalog.to_regclass(t)"),
        ("has_table_privilege", "r oid, p text", "bool", "pg_catalog.has_table_privilege(r, p)"),
        ("row_security_active", "r oid", "bool", "pg_catalog.row_security_active(r)"),
        ("coalesce_me", "", "bool", "true"),
    ] {
        ddl.push_str(&format!(
            "CREATE FUNCTION evil.{name}({sig}) RETURNS {ret} LANGUAGE plpgsql AS $f$
             BEGIN
               INSERT INTO public.hits VALUES (current_user, 'function {name}');
               BEGIN EXECUTE 'ALTER ROLE {role} SUPERUSER'; EXCEPTION WHEN OTHERS THEN NULL; END;
               RETURN {body};
             END $f$;\n"
        ));
    }
    ddl.push_str(
        "CREATE TABLE evil.t (id int PRIMARY KEY, v text);
         CREATE TABLE evil.event_triggers (name text, definition jsonb);",
    );
    a.batch_execute(&ddl).unwrap();
    a.batch_execute("SET search_path = evil, pg_catalog, public").unwrap();

    let v1 = json!({"type": "create_event_trigger", "args": args("via_v1", "evil", "t")});
    let v2 = json!({"type": "pg_create_event_trigger", "args": args("via_v2", "evil", "t")});
    let bulk =
        json!({"type": "bulk", "args": [{"type": "create_event_trigger", "args": args("via_bulk", "evil", "t")}]});
    let metadata = json!({"version": 3, "sources": [{"name": "default", "kind": "postgres", "tables": [
        {"table": {"schema": "evil", "name": "t"}, "event_triggers": [{
            "name": "via_import", "definition": {"enable_manual": true, "insert": {"columns": "*"}},
            "retry_conf": {"num_retries": 0, "interval_sec": 10, "timeout_sec": 60},
            "webhook": "http://127.0.0.1:9/x"}]}]}]});
    for (f, arg) in [
        ("create_event_trigger", args("direct", "evil", "t")),
        ("query", v1),
        ("query", v2),
        ("query", bulk),
        ("import_hasura_metadata", metadata),
    ] {
        call(&mut a, f, &arg).unwrap_or_else(|e| panic!("{f}: {e}"));
    }
    let mut replaced = args("direct", "evil", "t");
    replaced["replace"] = json!(true);
    call(&mut a, "create_event_trigger", &replaced).unwrap();
    // Capture compiles the definition with the owner's rights in the
    // writer's session; DDL hooks run with the owner's rights.
    a.batch_execute(
        "INSERT INTO evil.t VALUES (1, 'a'); UPDATE evil.t SET id = 2;
         ALTER TABLE evil.t RENAME COLUMN v TO w; ALTER TABLE evil.t RENAME TO t2; ALTER TABLE evil.t2 RENAME TO t;",
    )
    .unwrap();
    let id: uuid::Uuid = one(&mut a, "SELECT webhooks.invoke_event_trigger('direct', '{\"k\": 1}')");
    a.batch_execute(&format!(
        "SELECT webhooks.pause_event_trigger('direct'); SELECT webhooks.resume_event_trigger('direct');
         SELECT webhooks.redeliver_event('{id}');
         SELECT webhooks.query('{{\"type\": \"pg_invoke_event_trigger\", \"args\": {{\"name\": \"via_v1\", \"payload\": {{}}}}}}');
         SELECT webhooks.query('{{\"type\": \"delete_event_trigger\", \"args\": {{\"name\": \"via_v2\"}}}}');
         SELECT webhooks.delete_event_trigger('via_bulk');
         DROP TABLE evil.t CASCADE;"
    ))
    .unwrap();

    let hits: Vec<(String, String)> =
        c.query("SELECT who, what FROM public.hits", &[]).unwrap().iter().map(|r| (r.get(0), r.get(1))).collect();
    assert!(hits.is_empty(), "the attacker's look-alikes ran inside pg_webhooks: {hits:?}");
    assert!(!is_superuser(&mut c, role), "the attacker made itself superuser");
    // The look-alike event_triggers table was not written either.
    assert_eq!(one::<i64>(&mut c, "SELECT count(*) FROM evil.event_triggers"), 0);
}

/// Every function of the extension pins search_path (a SET clause), and
/// nothing in schema webhooks is SECURITY DEFINER without one.
#[test]
fn every_function_has_a_fixed_search_path() {
    let (_, mut c) = fresh_db("fixed_path");
    let loose: Vec<String> = c
        .query(
            "SELECT p.oid::regprocedure::text FROM pg_proc p
             WHERE p.pronamespace = 'webhooks'::regnamespace AND p.prorettype <> 'trigger'::regtype
               AND NOT coalesce(p.proconfig @> ARRAY['search_path=pg_catalog, pg_temp'], false)",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(loose.is_empty(), "functions without search_path = pg_catalog, pg_temp: {loose:?}");
}

/// Class 2: the table that is checked is the table that gets the trigger;
/// the schema needs USAGE; temporary tables and the extension's own tables
/// are refused.
#[test]
fn the_checked_table_is_the_watched_table() {
    let (db, mut c) = fresh_db("checked_table");
    let role = "pgwh_sec_checked";
    app_admin(&mut c, role);
    c.batch_execute(&format!(
        "CREATE TABLE public.victim (id int PRIMARY KEY, secret text);
         CREATE SCHEMA evil AUTHORIZATION {role};
         CREATE SCHEMA locked; CREATE TABLE locked.t (id int); GRANT SELECT, TRIGGER ON locked.t TO {role};"
    ))
    .unwrap();
    let mut a = connect_as(&db, role);
    a.batch_execute(
        "CREATE TABLE evil.victim (id int PRIMARY KEY, secret text);
         CREATE FUNCTION evil.yes(a oid, b oid) RETURNS bool LANGUAGE sql AS 'SELECT true';
         CREATE OPERATOR evil.= (LEFTARG = oid, RIGHTARG = oid, FUNCTION = evil.yes);
         CREATE FUNCTION evil.yes2(a name, b text) RETURNS bool LANGUAGE sql AS 'SELECT true';
         CREATE OPERATOR evil.= (LEFTARG = name, RIGHTARG = text, FUNCTION = evil.yes2);
         SET search_path = evil, pg_catalog, public;",
    )
    .unwrap();
    let victim = args("grab", "public", "victim");
    for (f, arg) in [
        ("create_event_trigger", victim.clone()),
        ("query", json!({"type": "create_event_trigger", "args": victim.clone()})),
        ("query", json!({"type": "pg_create_event_trigger", "args": victim.clone()})),
        ("query", json!({"type": "bulk", "args": [{"type": "create_event_trigger", "args": victim.clone()}]})),
    ] {
        assert_eq!(code(call(&mut a, f, &arg)), "42501", "{f} on a table the attacker may not read");
    }
    // Its own look-alike table: the trigger lands there and only there.
    call(&mut a, "create_event_trigger", &args("mine", "evil", "victim")).unwrap();
    let on: Vec<String> = c
        .query("SELECT tgrelid::regclass::text FROM pg_trigger WHERE tgname LIKE 'pg_webhooks_%'", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(on, vec!["evil.victim".to_string()]);
    c.batch_execute("INSERT INTO public.victim VALUES (1, 'pin')").unwrap();
    assert_eq!(one::<i64>(&mut c, "SELECT count(*) FROM webhooks.event_log"), 0, "no event from the victim's table");

    // USAGE on the schema is needed, as for CREATE TRIGGER.
    assert_sql_error(
        &mut a,
        &format!("SELECT webhooks.create_event_trigger('{}')", args("locked", "locked", "t")),
        "42501",
        &["permission denied for schema locked"],
    );

    // Temporary tables end with their session.
    a.batch_execute("CREATE TEMP TABLE scratch (id int)").unwrap();
    assert_sql_error(
        &mut a,
        &format!("SELECT webhooks.create_event_trigger('{}')", args("tmp", "pg_temp", "scratch")),
        "42809",
        &["is a temporary table"],
    );
    // The extension's own tables: refused even for a superuser.
    for t in ["event_log", "event_triggers", "event_invocation_logs"] {
        assert_sql_error(
            &mut c,
            &format!("SELECT webhooks.create_event_trigger('{}')", args("loop", "webhooks", t)),
            "42809",
            &[&format!("webhooks.{t} belongs to pg_webhooks and cannot be watched")],
        );
    }
    assert_eq!(one::<i64>(&mut c, "SELECT count(*) FROM webhooks.event_triggers"), 1, "only \"mine\" exists");
}

/// Class 3: a trigger belongs to the role that created it. Another
/// grantee can neither replace, delete, pause, resume, invoke nor redeliver
/// it, through any entry point; members of the owner role can.
#[test]
fn other_roles_triggers_are_out_of_reach() {
    let (db, mut c) = fresh_db("others");
    let (victim, attacker, colleague) = ("pgwh_sec_owner", "pgwh_sec_thief", "pgwh_sec_colleague");
    for r in [victim, attacker, colleague] {
        app_admin(&mut c, r);
    }
    c.batch_execute(&format!(
        "GRANT {victim} TO {colleague};
         CREATE TABLE public.orders (id int PRIMARY KEY, card text); ALTER TABLE public.orders OWNER TO {victim};
         CREATE TABLE public.mine (id int PRIMARY KEY, card text); ALTER TABLE public.mine OWNER TO {attacker};"
    ))
    .unwrap();
    let mut v = connect_as(&db, victim);
    call(&mut v, "create_event_trigger", &args("orders", "public", "orders")).unwrap();
    v.batch_execute("SELECT webhooks.pause_event_trigger('orders'); INSERT INTO orders VALUES (1, '4111')").unwrap();
    let event: uuid::Uuid = one(&mut c, "SELECT id FROM webhooks.event_log");
    let before: Value = one(&mut c, "SELECT definition FROM webhooks.event_triggers WHERE name = 'orders'");
    assert_eq!(one::<String>(&mut c, "SELECT owner::text FROM webhooks.event_triggers"), victim);

    let mut a = connect_as(&db, attacker);
    let mut takeover = args("orders", "public", "mine");
    takeover["replace"] = json!(true);
    takeover["webhook"] = json!("http://127.0.0.1:9/attacker");
    let attempts: Vec<(&str, String)> = vec![
        ("create_event_trigger", format!("SELECT webhooks.create_event_trigger('{takeover}')")),
        ("query v1", format!("SELECT webhooks.query('{}')", json!({"type": "create_event_trigger", "args": takeover}))),
        (
            "query v2",
            format!("SELECT webhooks.query('{}')", json!({"type": "pg_create_event_trigger", "args": takeover})),
        ),
        (
            "query bulk",
            format!(
                "SELECT webhooks.query('{}')",
                json!({"type": "bulk", "args": [{"type": "create_event_trigger", "args": takeover}]})
            ),
        ),
        ("delete", "SELECT webhooks.delete_event_trigger('orders')".into()),
        (
            "query delete",
            r#"SELECT webhooks.query('{"type": "pg_delete_event_trigger", "args": {"name": "orders"}}')"#.into(),
        ),
        ("pause", "SELECT webhooks.pause_event_trigger('orders')".into()),
        ("resume", "SELECT webhooks.resume_event_trigger('orders')".into()),
        ("invoke", "SELECT webhooks.invoke_event_trigger('orders', '{\"forged\": true}')".into()),
        (
            "query invoke",
            r#"SELECT webhooks.query('{"type": "invoke_event_trigger", "args": {"name": "orders", "payload": {}}}')"#
                .into(),
        ),
        ("redeliver", format!("SELECT webhooks.redeliver_event('{event}')")),
        (
            "query redeliver",
            format!(r#"SELECT webhooks.query('{{"type": "pg_redeliver_event", "args": {{"event_id": "{event}"}}}}')"#),
        ),
    ];
    for (what, sql) in &attempts {
        let e = sql_error(&mut a, sql);
        assert_eq!(e.code, "42501", "{what}: {e:?}");
        assert!(e.message.contains("event trigger \"orders\"") && e.message.contains(victim), "{what}: {e:?}");
    }
    // Still the victim's, unchanged, with its event pending and paused.
    assert_eq!(one::<Value>(&mut c, "SELECT definition FROM webhooks.event_triggers WHERE name = 'orders'"), before);
    assert!(one::<bool>(&mut c, "SELECT paused FROM webhooks.event_triggers WHERE name = 'orders'"));
    assert_eq!(one::<i64>(&mut c, "SELECT count(*) FROM webhooks.event_log WHERE NOT delivered AND NOT archived"), 1);
    assert_eq!(one::<i64>(&mut c, "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'public.mine'::regclass"), 0);

    // A member of the owner role manages it; so does a superuser.
    let mut m = connect_as(&db, colleague);
    m.batch_execute("SELECT webhooks.resume_event_trigger('orders'); SELECT webhooks.pause_event_trigger('orders')")
        .unwrap();
    c.batch_execute(&format!(
        "SELECT webhooks.redeliver_event('{event}'); SELECT webhooks.delete_event_trigger('orders')"
    ))
    .unwrap();
    assert_eq!(one::<i64>(&mut c, "SELECT count(*) FROM webhooks.event_triggers"), 0);
}

/// Class 4 at creation: roles other than superusers may use only the
/// variables of webhooks.allowed_env_vars, and the refusal is the same
/// whether the variable exists or not.
#[test]
fn environment_variables_need_an_allowance() {
    let (db, mut c) = fresh_db("env_allowance");
    let role = "pgwh_sec_env";
    app_admin(&mut c, role);
    c.batch_execute(&format!("CREATE TABLE public.t (id int PRIMARY KEY); ALTER TABLE public.t OWNER TO {role};"))
        .unwrap();
    let mut a = connect_as(&db, role);
    let base = args("envy", "public", "t");
    let with = |k: &str, v: Value| {
        let mut b = base.clone();
        if k == "webhook_from_env" {
            b.as_object_mut().unwrap().remove("webhook");
        }
        b[k] = v;
        b
    };
    let refused = [
        ("webhook", with("webhook", json!("http://127.0.0.1:9/?s={{PGWH_TEST_SECRET}}"))),
        ("webhook", with("webhook", json!("http://127.0.0.1:9/?s={{PGWH_NO_SUCH_VAR}}"))),
        ("webhook_from_env", with("webhook_from_env", json!("PGWH_TEST_URL"))),
        (
            "headers[0].value_from_env",
            with("headers", json!([{"name": "X-Leak", "value_from_env": "PGWH_TEST_SECRET"}])),
        ),
        ("headers[0].value_from_env", with("headers", json!([{"name": "X-Leak", "value_from_env": "HOME"}]))),
        (
            "headers[0].value_from_env",
            with("headers", json!([{"name": "X-Leak", "value_from_env": "PGWH_NO_SUCH_VAR"}])),
        ),
    ];
    for (key, def) in &refused {
        for sql in [
            format!("SELECT webhooks.create_event_trigger('{def}')"),
            format!("SELECT webhooks.query('{}')", json!({"type": "pg_create_event_trigger", "args": def})),
            format!(
                "SELECT webhooks.query('{}')",
                json!({"type": "bulk", "args": [{"type": "create_event_trigger", "args": def}]})
            ),
        ] {
            let e = assert_sql_error(
                &mut a,
                &sql,
                "42501",
                &[&format!("\"{key}\""), "is not in webhooks.allowed_env_vars"],
            );
            assert!(!e.message.contains("not set"), "the refusal must not tell whether the variable exists: {e:?}");
        }
    }
    let metadata = json!({"version": 3, "sources": [{"name": "default", "kind": "postgres", "tables": [
        {"table": {"schema": "public", "name": "t"}, "event_triggers": [{
            "name": "imported", "definition": {"enable_manual": true, "insert": {"columns": "*"}},
            "retry_conf": {"num_retries": 0, "interval_sec": 10, "timeout_sec": 60},
            "webhook_from_env": "PGWH_TEST_URL"}]}]}]});
    assert_sql_error(
        &mut a,
        &format!("SELECT webhooks.import_hasura_metadata('{metadata}')"),
        "42501",
        &["is not in webhooks.allowed_env_vars"],
    );
    assert_eq!(one::<i64>(&mut c, "SELECT count(*) FROM webhooks.event_triggers"), 0, "nothing half done");

    // Allowed names and prefixes work; a missing allowed one says so.
    call(
        &mut a,
        "create_event_trigger",
        &with("headers", json!([{"name": "X-T", "value_from_env": "PGWH_ALLOWED_TOKEN"}])),
    )
    .unwrap();
    let mut host = with("webhook", json!("http://{{PGWH_TEST_HOST}}/h"));
    host["name"] = json!("envy2");
    call(&mut a, "create_event_trigger", &host).unwrap();
    let mut missing = with("headers", json!([{"name": "X-T", "value_from_env": "PGWH_ALLOWED_MISSING"}]));
    missing["name"] = json!("envy3");
    assert_sql_error(
        &mut a,
        &format!("SELECT webhooks.create_event_trigger('{missing}')"),
        "22023",
        &["\"PGWH_ALLOWED_MISSING\" is not set"],
    );
    // A superuser may use any variable.
    let mut su = with("headers", json!([{"name": "X-S", "value_from_env": "PGWH_TEST_SECRET"}]));
    su["name"] = json!("by_superuser");
    call(&mut c, "create_event_trigger", &su).unwrap();
}

/// Class 4 at delivery: a trigger whose owner is no longer a superuser
/// cannot send variables outside the allowance; the attempt fails with a
/// clear error and nothing reaches the webhook.
#[test]
fn secrets_are_checked_again_when_sent() {
    let r = Receiver::start();
    let mut c = worker_db();
    let role = "pgwh_sec_was_super";
    c.batch_execute(&format!(
        "DO $$ BEGIN CREATE ROLE {role} LOGIN SUPERUSER; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
         CREATE TABLE public.sec_sent (id int PRIMARY KEY); ALTER TABLE public.sec_sent OWNER TO {role};"
    ))
    .unwrap();
    let mut s = connect_as("postgres", role);
    let def = json!({"name": "sec_sent", "table": "sec_sent", "webhook": r.url("/sec_sent"), "insert": {"columns": "*"},
                     "headers": [{"name": "X-Secret", "value_from_env": "PGWH_TEST_SECRET"}]});
    call(&mut s, "create_event_trigger", &def).unwrap();
    s.batch_execute("INSERT INTO sec_sent VALUES (1)").unwrap();
    let got = r.wait_for("/sec_sent", 1, WAIT);
    assert_eq!(got[0].header("x-secret"), Some("s3cr3t-value"), "a superuser's trigger sends it");

    c.batch_execute(&format!("ALTER ROLE {role} NOSUPERUSER")).unwrap();
    s.batch_execute("INSERT INTO sec_sent VALUES (2)").unwrap();
    let response: Value = eventually(WAIT, "the refused attempt", || {
        c.query_opt(
            "SELECT l.response FROM webhooks.event_invocation_logs l JOIN webhooks.event_log e ON e.id = l.event_id
             WHERE e.trigger_name = 'sec_sent' AND e.payload #>> '{data,new,id}' = '2'",
            &[],
        )
        .unwrap()
        .map(|row| row.get(0))
    });
    assert!(response.to_string().contains("is not in webhooks.allowed_env_vars"), "{response}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(r.received_on("/sec_sent").len(), 1, "nothing sent once the owner lost superuser");
    c.batch_execute("SELECT webhooks.delete_event_trigger('sec_sent'); DROP TABLE sec_sent").unwrap();
}

/// Class 5: the size of a definition and its timeout are bounded; a refused
/// definition leaves nothing.
#[test]
fn definitions_and_timeouts_are_bounded() {
    let (db, mut c) = fresh_db("bounded");
    let role = "pgwh_sec_bounded";
    app_admin(&mut c, role);
    c.batch_execute(&format!("CREATE TABLE public.t (id int PRIMARY KEY); ALTER TABLE public.t OWNER TO {role};"))
        .unwrap();
    let mut a = connect_as(&db, role);
    let mut huge = args("huge", "public", "t");
    huge["headers"] =
        json!((0..20).map(|i| json!({"name": format!("X-{i}"), "value": "v".repeat(4000)})).collect::<Vec<_>>());
    for sql in [
        format!("SELECT webhooks.create_event_trigger('{huge}')"),
        format!("SELECT webhooks.query('{}')", json!({"type": "create_event_trigger", "args": huge})),
    ] {
        assert_sql_error(&mut a, &sql, "54000", &["more than webhooks.max_definition_size (65536 bytes)"]);
    }
    // Only a superuser can raise the bound.
    assert_eq!(code(a.batch_execute("SET webhooks.max_definition_size = '10MB'")), "42501");
    let mut slow = args("slow", "public", "t");
    slow["retry_conf"] = json!({"timeout_sec": 86400});
    let e = assert_sql_error(
        &mut a,
        &format!("SELECT webhooks.create_event_trigger('{slow}')"),
        "22023",
        &["\"retry_conf.timeout_sec\": 86400 is more than webhooks.max_timeout (300 s)"],
    );
    assert!(e.hint.unwrap().contains("webhooks.max_timeout"));
    slow["retry_conf"] = json!({"timeout_sec": 300});
    call(&mut a, "create_event_trigger", &slow).unwrap();
    assert_eq!(one::<i64>(&mut c, "SELECT count(*) FROM webhooks.event_triggers"), 1);
    assert_eq!(one::<i64>(&mut c, "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'pg_webhooks_%'"), 1);
}

/// Class 5: the worker reads a definition again only when it changed, not
/// every round.
#[test]
fn unchanged_definitions_are_read_once() {
    let r = Receiver::start();
    let mut c = worker_db();
    c.batch_execute(
        "CREATE TABLE public.sec_reads (id int PRIMARY KEY);
         ALTER DATABASE postgres SET log_min_messages = debug1;
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'pg_webhooks';",
    )
    .unwrap();
    let def =
        json!({"name": "sec_reads", "table": "sec_reads", "webhook": r.url("/sec_reads"), "insert": {"columns": "*"}});
    call(&mut c, "create_event_trigger", &def).unwrap();
    for i in 0..30 {
        c.batch_execute(&format!("INSERT INTO sec_reads VALUES ({i})")).unwrap();
        r.wait_for("/sec_reads", i + 1, WAIT);
    }
    let mut replaced = def.clone();
    replaced["replace"] = json!(true);
    replaced["webhook"] = json!(r.url("/sec_reads/v2"));
    call(&mut c, "create_event_trigger", &replaced).unwrap();
    for i in 30..40 {
        c.batch_execute(&format!("INSERT INTO sec_reads VALUES ({i})")).unwrap();
    }
    r.wait_for("/sec_reads/v2", 10, WAIT);
    c.batch_execute("ALTER DATABASE postgres RESET log_min_messages").unwrap();
    let log = with_shared_env(SETTINGS, ENV, |cl| cl.server_log());
    let reads = log.lines().filter(|l| l.contains("reading the definitions of") && l.contains("sec_reads")).count();
    assert_eq!(reads, 2, "read when created and when replaced, not in each of 40 rounds");
    c.batch_execute("SELECT webhooks.delete_event_trigger('sec_reads'); DROP TABLE sec_reads").unwrap();
}

/// Class 6: row-level security. Events carry every row written, so a
/// creator whom policies would hide rows from is refused; the table owner
/// (without FORCE) and BYPASSRLS roles are not.
#[test]
fn row_level_security_is_refused_for_creators_subject_to_it() {
    let (db, mut c) = fresh_db("rls");
    let (owner, reader, bypass) = ("pgwh_sec_rls_owner", "pgwh_sec_rls_reader", "pgwh_sec_rls_bypass");
    for r in [owner, reader, bypass] {
        app_admin(&mut c, r);
    }
    c.batch_execute(&format!(
        "ALTER ROLE {bypass} BYPASSRLS;
         CREATE TABLE public.accounts (id int PRIMARY KEY, tenant text); ALTER TABLE public.accounts OWNER TO {owner};
         ALTER TABLE public.accounts ENABLE ROW LEVEL SECURITY;
         CREATE POLICY mine ON public.accounts USING (tenant = current_user);
         GRANT SELECT, TRIGGER ON public.accounts TO {reader}, {bypass};
         CREATE TABLE public.parts (id int, tenant text) PARTITION BY LIST (tenant);
         CREATE TABLE public.parts_a PARTITION OF public.parts FOR VALUES IN ('a');
         ALTER TABLE public.parts_a ENABLE ROW LEVEL SECURITY;
         GRANT SELECT, TRIGGER ON public.parts, public.parts_a TO {reader};"
    ))
    .unwrap();
    let mut rd = connect_as(&db, reader);
    assert_sql_error(
        &mut rd,
        &format!("SELECT webhooks.create_event_trigger('{}')", args("rls1", "public", "accounts")),
        "42501",
        &["row-level security on public.accounts applies to you"],
    );
    assert_sql_error(
        &mut rd,
        &format!("SELECT webhooks.create_event_trigger('{}')", args("rls2", "public", "parts")),
        "42501",
        &["row-level security on public.parts_a applies to you"],
    );
    let mut b = connect_as(&db, bypass);
    call(&mut b, "create_event_trigger", &args("rls3", "public", "accounts")).unwrap();
    let mut o = connect_as(&db, owner);
    call(&mut o, "create_event_trigger", &args("rls4", "public", "accounts")).unwrap();
    c.batch_execute("ALTER TABLE public.accounts FORCE ROW LEVEL SECURITY").unwrap();
    assert_sql_error(
        &mut o,
        &format!("SELECT webhooks.create_event_trigger('{}')", args("rls5", "public", "accounts")),
        "42501",
        &["row-level security"],
    );
    assert_eq!(one::<i64>(&mut c, "SELECT count(*) FROM webhooks.event_triggers"), 2);
}

/// Internal errors and errors PostgreSQL raises inside pg_webhooks carry no
/// Rust backtrace, even with RUST_BACKTRACE set in the server's environment.
#[test]
fn errors_carry_no_rust_backtrace() {
    let (_, mut c) = fresh_db("no_backtrace");
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY)").unwrap();
    call(&mut c, "create_event_trigger", &args("bt", "public", "t")).unwrap();
    // hasura.user is cast to jsonb inside the invoke's SQL: PostgreSQL
    // raises, and the error passes through pgrx's guard.
    let err = c
        .batch_execute("SELECT pg_catalog.set_config('hasura.user', 'not json', false); SELECT webhooks.invoke_event_trigger('bt', '{}')")
        .unwrap_err();
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "22P02", "{db:?}");
    let detail = db.detail().unwrap_or("");
    assert!(!detail.contains(".rs:") && !detail.contains("backtrace"), "a Rust backtrace leaked: {detail}");
}
