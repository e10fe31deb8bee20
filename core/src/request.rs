//! The request of one attempt, built from a definition and a claimed event:
//! the URL with its `{{VAR}}`s resolved, the headers (values from the
//! environment included), the body, the request as the invocation log keeps
//! it (secrets redacted), and the secrets to scrub from what comes back.
//!
//! The environment is read through the trigger owner's [`EnvPolicy`] again
//! at every request: the setting or the owner may have changed since the
//! definition was accepted.

use serde_json::{json, Value};

use crate::body::WebhookBody;
use crate::definition::{header_value_problem, Definition, HeaderValue, Signing, Webhook};
use crate::env_policy::EnvPolicy;
use crate::env_template::{self, EnvLookup};
use crate::error::ApiError;
use crate::signing;
use crate::transform::{Body, Input};
use crate::webhook_url;

/// A request ready to send, or to fail without sending.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// POST, unless a request transform says otherwise.
    pub method: String,
    pub url: String,
    /// The Content-Type of the body (JSON, or a form); `None` when a
    /// request transform removed the body.
    pub content_type: Option<&'static str>,
    /// Every header but Content-Type and User-Agent (the client sets them),
    /// `webhook-id` and `webhook-timestamp` last.
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// `{"url", "headers", "payload"}` as JSON text for the invocation log:
    /// the URL template, header values from the environment redacted.
    pub logged: String,
    /// Values taken from the environment: never logged, and scrubbed from
    /// the response before it is.
    pub secrets: Vec<String>,
    /// Why the request cannot be sent (a variable that is not set, or not
    /// allowed): the attempt fails with this, and nothing goes out.
    pub unsendable: Option<String>,
    /// Why the request transform failed for this event: the event fails at
    /// once, without retries (as in Hasura), and nothing goes out.
    pub transform_failed: Option<String>,
    /// For a definition with a response transform: the payload and the
    /// webhook URL before any request transform (its `$request`).
    pub original: Option<(String, String)>,
}

/// Builds the request for `body` under `def`, reading the environment
/// through `env` as `policy` allows; `now_secs` is `webhook-timestamp`.
pub fn build(def: &Definition, body: &WebhookBody, env: EnvLookup, policy: &EnvPolicy, now_secs: u64) -> Request {
    let read = |var: &str| -> Result<String, String> {
        if !policy.allows(var) {
            return Err(format!(
                "environment variable \"{var}\" is not in webhooks.allowed_env_vars and the trigger's owner is not a superuser"
            ));
        }
        env(var).ok_or_else(|| format!("environment variable \"{var}\" is not set"))
    };
    let mut unsendable = None;
    let mut secrets = Vec::new();
    let (url, url_logged) = match &def.webhook {
        Webhook::Url(template) => {
            let url = env_template::render_with(template, &|v| read(v).map_err(ApiError::invalid));
            secrets.extend(env_template::variables(template).iter().filter_map(|v| read(v).ok()));
            (url.map_err(|e| e.message), template.clone())
        }
        Webhook::FromEnv(var) => {
            let url = read(var);
            secrets.extend(url.iter().cloned());
            (url, format!("{{{{{var}}}}}"))
        }
    };
    // Sent as the WHATWG URL standard normalizes it; a password in it is
    // used for Basic authentication, never logged.
    let url = url.and_then(|u| {
        if let Some(p) = webhook_url::password(&u) {
            secrets.push(p.to_string());
        }
        webhook_url::normalize(&u).map_err(|why| format!("the webhook URL {why}"))
    });
    let url = url.unwrap_or_else(|e| {
        unsendable = Some(e);
        String::new()
    });
    let url_logged = webhook_url::redact_password(&url_logged);

    let mut headers = Vec::with_capacity(def.headers.len() + 2);
    let mut logged = Vec::with_capacity(def.headers.len() + 2);
    for h in &def.headers {
        match &h.value {
            HeaderValue::Value(v) => {
                headers.push((h.name.clone(), v.clone()));
                logged.push(json!({"name": h.name, "value": v}));
            }
            HeaderValue::FromEnv(var) => {
                match read(var).and_then(|v| match header_value_problem(&v) {
                    Some(why) => Err(format!("header {} from environment variable \"{var}\": {why}", h.name)),
                    None => Ok(v),
                }) {
                    Ok(v) => {
                        secrets.push(v.clone());
                        headers.push((h.name.clone(), v));
                    }
                    Err(e) => unsendable = Some(e),
                }
                logged.push(json!({"name": h.name, "value": format!("<redacted: from env {var}>")}));
            }
        }
    }
    for (n, v) in [("webhook-id", body.id.to_string()), ("webhook-timestamp", now_secs.to_string())] {
        logged.push(json!({"name": n, "value": v}));
        headers.push((n.to_string(), v));
    }
    let id = body.id;
    let mut body = body.render();
    let original = def.response_transform.as_ref().map(|_| (body.clone(), url.clone()));
    let mut method = "POST".to_string();
    let mut content_type = Some("application/json");
    let mut url = url;
    let mut url_logged = url_logged;
    let mut transform_failed = None;
    let mut logged_payload = None;
    if let Some(t) = def.request_transform.as_ref().filter(|_| unsendable.is_none()) {
        let payload: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        match t.apply(&Input { payload: &payload, base_url: &url }, &mut headers) {
            Ok(done) => {
                method = done.method;
                url = done.url;
                // The request as sent, but for secrets.
                url_logged = webhook_url::redact_password(&scrub_text(url.clone(), &secrets));
                logged =
                    headers.iter().map(|(n, v)| json!({"name": n, "value": scrub_text(v.clone(), &secrets)})).collect();
                content_type = done.body.as_ref().map(Body::content_type);
                logged_payload = Some(match &done.body {
                    // Scrubbed string by string: a secret replaced in
                    // the text could leave it invalid JSON (a number).
                    Some(Body::Json(j)) if !secrets.is_empty() => {
                        scrub(serde_json::from_str(j).unwrap_or(Value::Null), &secrets).to_string()
                    }
                    Some(Body::Json(j)) => j.clone(),
                    Some(Body::Form(f)) => Value::String(scrub_text(f.clone(), &secrets)).to_string(),
                    None => "null".to_string(),
                });
                body = done.body.map(|b| b.text().to_owned()).unwrap_or_default();
            }
            Err(why) => transform_failed = Some(format!("the request transform failed: {why}")),
        }
    }
    // Each attempt signs its own timestamp and exactly the body it sends.
    if let Some(signing) = &def.signing {
        let value = match signing {
            Signing::Secrets(s) => Ok(s.clone()),
            Signing::FromEnv(var) => read(var),
        };
        match value.and_then(|v| signing::parse(&v).map(|k| (v, k)).map_err(|why| format!("the signing secret: {why}")))
        {
            Ok((value, keys)) => {
                secrets.extend(value.split_whitespace().map(str::to_string));
                let signature = signing::sign(&keys, id, now_secs, &body);
                logged.push(json!({"name": "webhook-signature", "value": signature}));
                headers.push(("webhook-signature".to_string(), signature));
            }
            Err(e) => unsendable = Some(e),
        }
    }
    // The payload as logged: the body as sent (JSON as it is, a form as a
    // string, a removed body as null).
    let payload_logged = logged_payload.as_deref().unwrap_or(&body);
    // A transformed request's log says its method; others are POSTs.
    let method_logged = match def.request_transform {
        Some(_) => format!("\"method\":{},", Value::String(method.clone())),
        None => String::new(),
    };
    let logged = format!(
        "{{{method_logged}\"url\":{},\"headers\":{},\"payload\":{}}}",
        Value::String(url_logged),
        Value::Array(logged),
        payload_logged
    );
    Request { method, url, content_type, headers, body, logged, secrets, unsendable, transform_failed, original }
}

/// Replaces every secret in `text` by a marker. Values shorter than 4 bytes
/// are left alone: they would match by accident.
pub fn scrub_text(mut text: String, secrets: &[String]) -> String {
    for s in secrets.iter().filter(|s| s.len() >= 4) {
        if text.contains(s.as_str()) {
            text = text.replace(s.as_str(), "<redacted>");
        }
    }
    text
}

/// [`scrub_text`] over every string of a JSON value (a webhook may echo
/// what it was sent).
pub fn scrub(v: Value, secrets: &[String]) -> Value {
    if secrets.is_empty() {
        return v;
    }
    match v {
        Value::String(s) => Value::String(scrub_text(s, secrets)),
        Value::Array(a) => Value::Array(a.into_iter().map(|x| scrub(x, secrets)).collect()),
        Value::Object(m) => Value::Object(m.into_iter().map(|(k, x)| (k, scrub(x, secrets))).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(n: &str) -> Option<String> {
        match n {
            "HOST" => Some("h.example".into()),
            "TOKEN" => Some("tok-secret".into()),
            "URL" => Some("https://u.example/in".into()),
            "PIN" => Some("12345".into()),
            _ => None,
        }
    }

    fn def(v: Value) -> Definition {
        let mut base = json!({"name": "t", "table": "users", "insert": {"columns": "*"}});
        for (k, x) in v.as_object().unwrap() {
            base[k] = x.clone();
        }
        Definition::from_stored(&base).unwrap()
    }

    fn body() -> WebhookBody<'static> {
        WebhookBody {
            id: "0190d6c0-0000-7000-8000-000000000001",
            created_at: "2024-01-01T00:00:00+00:00",
            trigger: "t",
            schema: "public",
            table: "users",
            event: r#"{"op":"INSERT"}"#,
            max_retries: 0,
            current_retry: 0,
        }
    }

    #[test]
    fn resolves_the_url_and_headers_and_redacts_the_log() {
        let d = def(json!({"webhook": "https://{{HOST}}/x",
                           "headers": [{"name": "X-Plain", "value": "p"}, {"name": "X-Token", "value_from_env": "TOKEN"}]}));
        let r = build(&d, &body(), &env, &EnvPolicy::unrestricted(), 1_700_000_000);
        assert_eq!(r.unsendable, None);
        assert_eq!(r.url, "https://h.example/x");
        assert_eq!(
            r.headers,
            vec![
                ("X-Plain".into(), "p".into()),
                ("X-Token".into(), "tok-secret".into()),
                ("webhook-id".into(), "0190d6c0-0000-7000-8000-000000000001".into()),
                ("webhook-timestamp".into(), "1700000000".into()),
            ]
        );
        assert_eq!(r.secrets, vec!["h.example".to_string(), "tok-secret".to_string()]);
        let logged: Value = serde_json::from_str(&r.logged).unwrap();
        assert_eq!(logged["url"], json!("https://{{HOST}}/x"), "the template, not the value");
        assert_eq!(logged["headers"][1], json!({"name": "X-Token", "value": "<redacted: from env TOKEN>"}));
        assert_eq!(logged["payload"]["id"], json!("0190d6c0-0000-7000-8000-000000000001"));
        assert!(!r.logged.contains("tok-secret") && !r.logged.contains("h.example"));
    }

    #[test]
    fn a_transformed_body_is_logged_as_valid_json_with_its_secrets_scrubbed() {
        // The secret is also a number of the body: scrubbing the text would
        // leave `"n": <redacted>`, which is not JSON (and the log is json).
        let d = def(json!({"webhook": "https://h.example/x",
                           "headers": [{"name": "X-Pin", "value_from_env": "PIN"}],
                           "request_transform": {"version": 2, "template_engine": "Kriti",
                                                 "body": {"action": "transform",
                                                          "template": "{\"n\": 12345, \"s\": \"pin 12345\"}"}}}));
        let r = build(&d, &body(), &env, &EnvPolicy::unrestricted(), 1_700_000_000);
        assert_eq!(r.transform_failed, None);
        assert_eq!(r.body, r#"{"n":12345,"s":"pin 12345"}"#, "sent as the template says");
        let logged: Value = serde_json::from_str(&r.logged).expect("the logged request is JSON");
        assert_eq!(logged["payload"], json!({"n": 12345, "s": "pin <redacted>"}));
        assert_eq!(logged["headers"][0], json!({"name": "X-Pin", "value": "<redacted>"}));
    }

    #[test]
    fn missing_or_forbidden_variables_make_it_unsendable() {
        let d = def(json!({"webhook_from_env": "URL", "headers": [{"name": "X", "value_from_env": "GONE"}]}));
        let r = build(&d, &body(), &env, &EnvPolicy::unrestricted(), 0);
        assert_eq!(r.url, "https://u.example/in");
        assert_eq!(r.unsendable.as_deref(), Some("environment variable \"GONE\" is not set"));

        let d = def(json!({"webhook": "https://x.example/", "headers": [{"name": "X", "value_from_env": "TOKEN"}]}));
        let r = build(&d, &body(), &env, &EnvPolicy::from_setting("HOST"), 0);
        assert!(r.unsendable.unwrap().contains("\"TOKEN\" is not in webhooks.allowed_env_vars"));
        assert!(r.secrets.is_empty(), "a forbidden value is not even read");
        let d = def(json!({"webhook": "https://{{TOKEN}}.example/"}));
        let r = build(&d, &body(), &env, &EnvPolicy::from_setting(""), 0);
        assert!(r.unsendable.unwrap().contains("\"TOKEN\" is not in webhooks.allowed_env_vars"));
    }

    #[test]
    fn urls_are_normalized_and_passwords_kept_out_of_the_log() {
        let d = def(json!({"webhook": "http://ada:pa55word@h.example/x?where={\"s\":1}#f"}));
        let r = build(&d, &body(), &env, &EnvPolicy::unrestricted(), 0);
        assert_eq!(r.unsendable, None);
        assert_eq!(r.url, "http://ada:pa55word@h.example/x?where={%22s%22:1}");
        let logged: Value = serde_json::from_str(&r.logged).unwrap();
        assert_eq!(logged["url"], json!("http://ada:<redacted>@h.example/x?where={\"s\":1}#f"));
        assert!(!r.logged.contains("pa55word"));
        assert_eq!(scrub_text("echo pa55word".into(), &r.secrets), "echo <redacted>");
    }

    #[test]
    fn header_values_from_the_environment_are_checked_when_sent() {
        let env = |n: &str| (n == "BEL").then(|| "a\u{7}b".to_string());
        let d = def(json!({"webhook": "https://x.example/", "headers": [{"name": "X-B", "value_from_env": "BEL"}]}));
        let r = build(&d, &body(), &env, &EnvPolicy::unrestricted(), 0);
        let e = r.unsendable.unwrap();
        assert!(e.contains("X-B") && e.contains("\"BEL\"") && e.contains("U+0007"), "{e}");
    }

    #[test]
    fn every_attempt_is_signed_over_what_it_sends() {
        let secret = signing::generate().unwrap();
        let d = def(json!({"webhook": "https://x.example/", "signing_secret": secret}));
        let first = build(&d, &body(), &env, &EnvPolicy::unrestricted(), 1_700_000_000);
        let retry =
            build(&d, &WebhookBody { current_retry: 1, ..body() }, &env, &EnvPolicy::unrestricted(), 1_700_000_060);
        for r in [&first, &retry] {
            let ts = &r.headers.iter().find(|(n, _)| n == "webhook-timestamp").unwrap().1;
            let sig = &r.headers.iter().find(|(n, _)| n == "webhook-signature").unwrap().1;
            let keys = signing::parse(&secret).unwrap();
            assert_eq!(*sig, signing::sign(&keys, body().id, ts.parse().unwrap(), &r.body));
            assert!(!r.logged.contains(&secret), "the secret is never logged");
            assert!(r.secrets.contains(&secret), "and is scrubbed from responses");
        }
        let sig = |r: &Request| r.headers.iter().find(|(n, _)| n == "webhook-signature").unwrap().1.clone();
        assert_ne!(sig(&first), sig(&retry), "each attempt has its own timestamp and signature");
    }

    #[test]
    fn scrubbing_replaces_secrets_everywhere() {
        let secrets = vec!["tok-secret".to_string(), "abc".to_string()];
        assert_eq!(scrub_text("a tok-secret b".into(), &secrets), "a <redacted> b");
        assert_eq!(scrub_text("abc".into(), &secrets), "abc", "short values are not scrubbed");
        let v = scrub(json!({"body": "echo tok-secret", "list": ["tok-secret"], "n": 1}), &secrets);
        assert_eq!(v, json!({"body": "echo <redacted>", "list": ["<redacted>"], "n": 1}));
    }
}
