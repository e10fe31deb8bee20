//! Signed delivery: Standard Webhooks signatures on every attempt, checked
//! with the specification's own library (the `standardwebhooks` crate).

use std::sync::{Once, OnceLock};
use std::time::Duration;

use pg_webhooks_tests::{assert_sql_error, eventually, one, with_shared_env, Received, Receiver};
use postgres::Client;
use serde_json::json;

const SETTINGS: &str = "webhooks.poll_interval = '200ms'\n";
/// A valid secret in the server's environment, for signing_secret_from_env.
const ENV_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const WAIT: Duration = Duration::from_secs(30);

static RECEIVER: OnceLock<Receiver> = OnceLock::new();
static EXTENSION: Once = Once::new();

fn setup() -> (&'static Receiver, Client) {
    let r = RECEIVER.get_or_init(Receiver::start);
    let mut c = with_shared_env(SETTINGS, &[("PGWH_SIGNING", ENV_SECRET)], |cl| cl.connect("postgres"));
    EXTENSION.call_once(|| c.batch_execute("CREATE EXTENSION pg_webhooks").unwrap());
    (r, c)
}

/// Verifies `got` with `secret` as a receiver following the specification
/// would.
fn verify(secret: &str, got: &Received) -> Result<(), String> {
    let mut headers = http::HeaderMap::new();
    for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        let v = got.header(name).ok_or_else(|| format!("no {name} header"))?;
        headers.insert(name, v.parse().unwrap());
    }
    let wh = standardwebhooks::Webhook::new(secret).map_err(|e| format!("{e:?}"))?;
    wh.verify(got.body.as_bytes(), &headers).map_err(|e| format!("{e:?}"))
}

#[test]
fn every_attempt_is_signed_with_every_secret() {
    let (r, mut c) = setup();
    let a: String = one(&mut c, "SELECT webhooks.generate_signing_secret()");
    let b: String = one(&mut c, "SELECT webhooks.generate_signing_secret()");
    assert_ne!(a, b);
    assert!(a.starts_with("whsec_") && a.len() == 50, "{a}");
    c.batch_execute("CREATE TABLE signed (id int)").unwrap();
    c.execute(
        "SELECT webhooks.create_event_trigger($1)",
        &[&json!({"name": "signed", "table": "signed", "webhook": r.url("/fail-first/1/signed"),
                  "insert": {"columns": "*"}, "signing_secret": format!("{a} {b}"),
                  "retry_conf": {"num_retries": 1, "interval_sec": 1}})],
    )
    .unwrap();
    c.batch_execute("INSERT INTO signed VALUES (1)").unwrap();
    let got = r.wait_for("/fail-first/1/signed", 2, WAIT);
    for attempt in &got {
        let sig = attempt.header("webhook-signature").unwrap();
        assert_eq!(sig.split(' ').filter(|s| s.starts_with("v1,")).count(), 2, "{sig}");
        for secret in [&a, &b] {
            verify(secret, attempt).unwrap_or_else(|e| panic!("attempt does not verify: {e}"));
        }
        let other: String = one(&mut c, "SELECT webhooks.generate_signing_secret()");
        assert!(verify(&other, attempt).is_err(), "another secret must not verify");
    }
    assert_eq!(got[0].header("webhook-id"), got[1].header("webhook-id"));
    assert_ne!(got[0].body, got[1].body, "the retry's body says current_retry 1");
    // The secrets are in no log.
    let logs: String = eventually(WAIT, "both attempts logged", || {
        let n: i64 = one(&mut c, "SELECT count(*) FROM webhooks.event_invocation_logs WHERE trigger_name = 'signed'");
        (n == 2).then(|| {
            one::<String>(
                &mut c,
                "SELECT string_agg(request::text || response::text, ' ') FROM webhooks.event_invocation_logs WHERE trigger_name = 'signed'",
            )
        })
    });
    assert!(!logs.contains(&a[6..]) && !logs.contains(&b[6..]), "a secret reached the invocation log");
    let server_log = with_shared_env(SETTINGS, &[], |cl| cl.server_log());
    assert!(!server_log.contains(&a[6..]) && !server_log.contains(&b[6..]), "a secret reached the server log");
}

#[test]
fn secrets_from_the_environment_and_bad_secrets() {
    let (r, mut c) = setup();
    c.batch_execute("CREATE TABLE signed_env (id int)").unwrap();
    let def = json!({"name": "signed_env", "table": "signed_env", "webhook": r.url("/ok/signed_env"),
                     "insert": {"columns": "*"}, "signing_secret_from_env": "PGWH_SIGNING"});
    let stored: serde_json::Value = c.query_one("SELECT webhooks.create_event_trigger($1)", &[&def]).unwrap().get(0);
    assert_eq!(stored["signing_secret_from_env"], json!("PGWH_SIGNING"));
    c.batch_execute("INSERT INTO signed_env VALUES (1)").unwrap();
    let got = r.wait_for("/ok/signed_env", 1, WAIT);
    verify(ENV_SECRET, &got[0]).unwrap();

    for (args, parts) in [
        (json!({"signing_secret": "sk_live_123"}), vec!["\"signing_secret\"", "does not start with \"whsec_\""]),
        (json!({"signing_secret": "whsec_c2hvcnQ="}), vec!["\"signing_secret\"", "decodes to 5 bytes"]),
        (
            json!({"signing_secret_from_env": "PGWH_TEST_SECRET"}),
            vec!["\"signing_secret_from_env\"", "the value of PGWH_TEST_SECRET"],
        ),
        (json!({"signing_secret": ENV_SECRET, "signing_secret_from_env": "PGWH_SIGNING"}), vec!["exclude each other"]),
        (json!({"headers": [{"name": "webhook-signature", "value": "v1,forged"}]}), vec!["set by pg_webhooks itself"]),
    ] {
        let mut bad =
            json!({"name": "signed_bad", "table": "signed_env", "webhook": r.url("/ok/x"), "insert": {"columns": "*"}});
        for (k, v) in args.as_object().unwrap() {
            bad[k] = v.clone();
        }
        let e = assert_sql_error(&mut c, &format!("SELECT webhooks.create_event_trigger('{bad}')"), "22023", &parts);
        assert!(
            !e.message.contains("c2hvcnQ") && !e.message.contains("s3cr3t-value"),
            "the error repeats the secret: {e:?}"
        );
    }
    assert_eq!(one::<i64>(&mut c, "SELECT count(*) FROM webhooks.event_triggers WHERE name = 'signed_bad'"), 0);
}
