//! Privileges: nothing in schema webhooks is for PUBLIC; granted roles can
//! only watch tables they may read; the install warns without preloading.

use pg_webhooks_tests::{assert_sql_error, connect_as, fresh_db, one, Cluster};
use serde_json::json;

fn role(c: &mut postgres::Client, name: &str) {
    c.batch_execute(&format!(
        "DO $$ BEGIN CREATE ROLE {name} LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;"
    ))
    .unwrap();
}

#[test]
fn nothing_is_granted_to_public() {
    let mut c = fresh_db("no_public");
    role(&mut c, "pgwh_nobody");
    c.batch_execute(
        "CREATE TABLE t (id int); GRANT ALL ON t TO pgwh_nobody; GRANT CREATE ON SCHEMA public TO pgwh_nobody;",
    )
    .unwrap();
    let public_acl: i64 = one(
        &mut c,
        "SELECT count(*) FROM (
           SELECT (aclexplode(relacl)).grantee FROM pg_class WHERE relnamespace = 'webhooks'::regnamespace
           UNION ALL SELECT (aclexplode(proacl)).grantee FROM pg_proc WHERE pronamespace = 'webhooks'::regnamespace
           UNION ALL SELECT (aclexplode(nspacl)).grantee FROM pg_namespace WHERE nspname = 'webhooks') g
         WHERE grantee = 0",
    );
    assert_eq!(public_acl, 0, "no ACL entry for PUBLIC");
    let unset: i64 =
        one(&mut c, "SELECT count(*) FROM pg_proc WHERE pronamespace = 'webhooks'::regnamespace AND proacl IS NULL");
    assert_eq!(unset, 0, "every function has an explicit ACL (a NULL ACL means EXECUTE for PUBLIC)");

    let mut nobody = connect_as("t_no_public", "pgwh_nobody");
    let args = json!({"name": "x", "table": "t", "webhook": "http://h.example", "insert": {"columns": "*"}});
    for sql in [
        format!("SELECT webhooks.create_event_trigger('{args}')"),
        "SELECT webhooks.delete_event_trigger('x')".to_string(),
        "SELECT webhooks.invoke_event_trigger('x', '{}')".to_string(),
        "SELECT webhooks.redeliver_event(gen_random_uuid())".to_string(),
        "SELECT webhooks.query('{}')".to_string(),
        "SELECT * FROM webhooks.event_log".to_string(),
        "SELECT * FROM webhooks.event_invocation_logs".to_string(),
        "SELECT * FROM webhooks.event_triggers".to_string(),
        "INSERT INTO webhooks.event_triggers (name, definition) VALUES ('x', '{}')".to_string(),
        "UPDATE webhooks.event_log SET delivered = true".to_string(),
        "CREATE TRIGGER forged AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION webhooks.capture('x')".to_string(),
    ] {
        assert_sql_error(&mut nobody, &sql, "42501", &["permission denied"]);
    }
}

#[test]
fn a_granted_role_may_only_watch_tables_it_can_read() {
    let mut c = fresh_db("granted_role");
    role(&mut c, "pgwh_manager");
    c.batch_execute(
        "CREATE TABLE readable (id int); CREATE TABLE secret (id int);
         GRANT SELECT, TRIGGER ON readable TO pgwh_manager;
         GRANT USAGE ON SCHEMA webhooks TO pgwh_manager;
         GRANT EXECUTE ON FUNCTION webhooks.create_event_trigger(jsonb), webhooks.delete_event_trigger(text) TO pgwh_manager;",
    )
    .unwrap();
    let mut m = connect_as("t_granted_role", "pgwh_manager");
    let ok = json!({"name": "r", "table": "readable", "webhook": "http://h.example", "insert": {"columns": "*"}});
    m.execute("SELECT webhooks.create_event_trigger($1)", &[&ok]).unwrap();
    let bad = json!({"name": "s", "table": "secret", "webhook": "http://h.example", "insert": {"columns": "*"}});
    assert_sql_error(
        &mut m,
        &format!("SELECT webhooks.create_event_trigger('{bad}')"),
        "42501",
        &["permission denied to watch table public.secret", "SELECT and TRIGGER"],
    );
    m.batch_execute("SELECT webhooks.delete_event_trigger('r')").unwrap();
    assert_eq!(one::<i64>(&mut c, "SELECT count(*) FROM webhooks.event_triggers"), 0);
}

#[test]
fn create_extension_warns_when_not_preloaded() {
    let cluster = Cluster::start("shared_preload_libraries = ''");
    let mut c = cluster.connect("postgres");
    let notices = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = notices.clone();
    let mut config: postgres::Config = cluster.conn_str("postgres", "postgres").parse().unwrap();
    config.notice_callback(move |n| sink.lock().unwrap().push(format!("{}: {}", n.severity(), n.message())));
    drop(c);
    c = config.connect(postgres::NoTls).unwrap();
    c.batch_execute("CREATE EXTENSION pg_webhooks").unwrap();
    let got = notices.lock().unwrap().clone();
    assert!(
        got.iter().any(|n| n.starts_with("WARNING")
            && n.contains("not in shared_preload_libraries")
            && n.contains("nothing will be delivered")),
        "{got:?}"
    );
    // capture works all the same
    c.batch_execute("CREATE TABLE t (id int)").unwrap();
    c.execute(
        "SELECT webhooks.create_event_trigger($1)",
        &[&json!({"name": "x", "table": "t", "webhook": "http://h.example", "insert": {"columns": "*"}})],
    )
    .unwrap();
    c.batch_execute("INSERT INTO t VALUES (1)").unwrap();
    assert_eq!(one::<i64>(&mut c, "SELECT count(*) FROM webhooks.event_log"), 1);
}
