//! Hasura API request bodies, as `webhooks.query(jsonb)` accepts them:
//! `{"type": "create_event_trigger", "args": {...}}`, the other three
//! event trigger types, their v2 names (`pg_create_event_trigger`, ...) and
//! `{"type": "bulk", "args": [...]}`.

use serde_json::{json, Value};

use crate::cleanup;
use crate::definition::{self, describe, expect_str, required, unknown_key};
use crate::error::{ApiError, ApiResult};

/// One request, parsed. Create arguments stay JSON: they are validated by
/// [`definition::parse_create_args`] with the server's environment at hand.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Create(Value),
    Delete {
        name: String,
    },
    Redeliver {
        event_id: String,
    },
    Invoke {
        name: String,
        payload: Value,
    },
    /// `pause_event_trigger_cleanups` / `resume_event_trigger_cleanups`:
    /// the named triggers, or every trigger with a `cleanup_config`.
    SetCleanupsPaused {
        triggers: Option<Vec<String>>,
        paused: bool,
    },
    /// `cleanup_event_trigger_logs`: one cleanup, now.
    CleanupLogs {
        name: String,
        hours: u32,
        batch_size: u32,
        timeout_sec: u32,
        with_logs: bool,
    },
    Bulk(Vec<Request>),
}

const TYPES: &[&str] = &[
    "create_event_trigger",
    "delete_event_trigger",
    "redeliver_event",
    "invoke_event_trigger",
    "pg_create_event_trigger",
    "pg_delete_event_trigger",
    "pg_redeliver_event",
    "pg_invoke_event_trigger",
    "pause_event_trigger_cleanups",
    "resume_event_trigger_cleanups",
    "cleanup_event_trigger_logs",
    "bulk",
];

/// Parses a request body. Nested `bulk` requests are allowed; their errors
/// say where they are (`args[2]`).
pub fn parse(body: &Value) -> ApiResult<Request> {
    let obj = body.as_object().ok_or_else(|| {
        ApiError::invalid(format!("a query body must be a JSON object, got {}", describe(body)))
            .with_hint(r#"Send e.g. {"type": "delete_event_trigger", "args": {"name": "t"}}."#)
    })?;
    for key in obj.keys() {
        // Hasura's request envelope may carry these; they do not change what is done.
        if !["type", "args", "version", "resource_version"].contains(&key.as_str()) {
            return Err(unknown_key("", key, &["type", "args"]));
        }
    }
    let ty = expect_str("type", required("type", obj.get("type"))?)?;
    if !TYPES.contains(&ty) {
        return Err(ApiError::invalid(format!("unknown query type {}", json!(ty)))
            .with_hint(format!("Supported types: {}.", TYPES.join(", "))));
    }
    let args = required("args", obj.get("args"))?;
    let base = ty.trim_start_matches("pg_");
    match base {
        "bulk" => {
            let items = args.as_array().ok_or_else(|| {
                ApiError::invalid(format!(
                    "invalid value for key \"args\" of a bulk query: expected a list of queries, got {}",
                    describe(args)
                ))
            })?;
            items
                .iter()
                .enumerate()
                .map(|(i, q)| parse(q).map_err(|e| e.within(&format!("bulk args[{i}]"))))
                .collect::<ApiResult<Vec<_>>>()
                .map(Request::Bulk)
        }
        "create_event_trigger" => {
            // v2 bodies carry "source"; the definition parser accepts it for both.
            Ok(Request::Create(args.clone()))
        }
        "delete_event_trigger" => {
            let o = args_object(ty, args, &["name", "source"])?;
            Ok(Request::Delete { name: definition::parse_name(o.get("name"))? })
        }
        "redeliver_event" => {
            let o = args_object(ty, args, &["event_id", "source"])?;
            let id = expect_str("event_id", required("event_id", o.get("event_id"))?)?;
            Ok(Request::Redeliver { event_id: id.to_string() })
        }
        "invoke_event_trigger" => {
            let o = args_object(ty, args, &["name", "payload", "source"])?;
            let name = definition::parse_name(o.get("name"))?;
            let payload = o.get("payload").cloned().ok_or_else(|| ApiError::invalid("key \"payload\" is required"))?;
            Ok(Request::Invoke { name, payload })
        }
        "pause_event_trigger_cleanups" | "resume_event_trigger_cleanups" => {
            let o = args_object(ty, args, &["event_triggers", "source"])?;
            let triggers = match o.get("event_triggers") {
                Some(Value::String(s)) if s == "all" => None,
                Some(Value::Array(names)) => Some(
                    names.iter().map(|n| definition::parse_name(Some(n))).collect::<ApiResult<Vec<_>>>()?,
                ),
                Some(other) => {
                    return Err(ApiError::invalid(format!(
                        "invalid value for key \"event_triggers\": expected a list of event trigger names or \"all\", got {}",
                        describe(other)
                    )))
                }
                None => {
                    return Err(ApiError::invalid("key \"event_triggers\" is required")
                        .with_hint("Give a list of event trigger names, or \"all\"."))
                }
            };
            Ok(Request::SetCleanupsPaused { triggers, paused: base == "pause_event_trigger_cleanups" })
        }
        "cleanup_event_trigger_logs" => {
            let o = args_object(
                ty,
                args,
                &["event_trigger_name", "source", "clear_older_than", "timeout", "clean_invocation_logs", "batch_size"],
            )?;
            let name = definition::parse_name(o.get("event_trigger_name"))?;
            let hours = match o.get("clear_older_than") {
                None | Some(Value::Null) => {
                    return Err(ApiError::invalid("key \"clear_older_than\" (hours) is required"))
                }
                v => cleanup::positive("clear_older_than", v, 0, 24 * 365 * 100)?,
            };
            Ok(Request::CleanupLogs {
                name,
                hours,
                batch_size: cleanup::positive(
                    "batch_size",
                    o.get("batch_size"),
                    cleanup::DEFAULT_BATCH_SIZE,
                    1_000_000,
                )?,
                timeout_sec: cleanup::positive("timeout", o.get("timeout"), cleanup::DEFAULT_TIMEOUT_SEC, 86_400)?,
                with_logs: definition::parse_bool("clean_invocation_logs", o.get("clean_invocation_logs"), false)?,
            })
        }
        _ => unreachable!("type list checked above"),
    }
}

fn args_object<'a>(ty: &str, args: &'a Value, keys: &[&str]) -> ApiResult<&'a serde_json::Map<String, Value>> {
    let o = args.as_object().ok_or_else(|| {
        ApiError::invalid(format!("invalid value for key \"args\" of {ty}: expected an object, got {}", describe(args)))
    })?;
    for k in o.keys() {
        if !keys.contains(&k.as_str()) {
            return Err(unknown_key("args.", k, keys));
        }
    }
    definition::parse_source(o.get("source"))?;
    Ok(o)
}

/// Hasura's answer to a request that succeeded without a value of its own.
pub fn success() -> Value {
    json!({"message": "success"})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hasuras_cleanup_bodies() {
        assert_eq!(
            parse(&json!({"type": "pause_event_trigger_cleanups", "args": {"event_triggers": ["a", "b"], "source": "default"}}))
                .unwrap(),
            Request::SetCleanupsPaused { triggers: Some(vec!["a".into(), "b".into()]), paused: true }
        );
        assert_eq!(
            parse(&json!({"type": "resume_event_trigger_cleanups", "args": {"event_triggers": "all"}})).unwrap(),
            Request::SetCleanupsPaused { triggers: None, paused: false }
        );
        assert_eq!(
            parse(&json!({"type": "cleanup_event_trigger_logs",
                          "args": {"event_trigger_name": "a", "clear_older_than": 24, "clean_invocation_logs": true}}))
            .unwrap(),
            Request::CleanupLogs { name: "a".into(), hours: 24, batch_size: 10_000, timeout_sec: 60, with_logs: true }
        );
        let e = parse(&json!({"type": "pause_event_trigger_cleanups", "args": {}})).unwrap_err();
        assert!(e.message.contains("\"event_triggers\" is required"), "{}", e.message);
        let e = parse(&json!({"type": "cleanup_event_trigger_logs", "args": {"event_trigger_name": "a"}})).unwrap_err();
        assert!(e.message.contains("clear_older_than"), "{}", e.message);
        let e = parse(
            &json!({"type": "cleanup_event_trigger_logs", "args": {"event_trigger_name": "a", "clear_older_than": -1}}),
        )
        .unwrap_err();
        assert!(e.message.contains("from 1 to"), "{}", e.message);
    }

    #[test]
    fn every_type_and_its_v2_name() {
        let create = json!({"name": "a", "table": "t", "webhook": "http://x"});
        assert_eq!(
            parse(&json!({"type": "create_event_trigger", "args": create})).unwrap(),
            Request::Create(create.clone())
        );
        assert_eq!(
            parse(&json!({"type": "pg_create_event_trigger", "args": create, "resource_version": 3})).unwrap(),
            Request::Create(create)
        );
        for ty in ["delete_event_trigger", "pg_delete_event_trigger"] {
            assert_eq!(
                parse(&json!({"type": ty, "args": {"name": "a", "source": "default"}})).unwrap(),
                Request::Delete { name: "a".into() }
            );
        }
        assert_eq!(
            parse(&json!({"type": "pg_redeliver_event", "args": {"event_id": "x"}})).unwrap(),
            Request::Redeliver { event_id: "x".into() }
        );
        assert_eq!(
            parse(&json!({"type": "invoke_event_trigger", "args": {"name": "a", "payload": {"k": 1}}})).unwrap(),
            Request::Invoke { name: "a".into(), payload: json!({"k": 1}) }
        );
    }

    #[test]
    fn bulk_nests_and_locates_errors() {
        let body = json!({"type": "bulk", "args": [
            {"type": "delete_event_trigger", "args": {"name": "a"}},
            {"type": "bulk", "args": [{"type": "pg_delete_event_trigger", "args": {"name": "b"}}]}
        ]});
        assert_eq!(
            parse(&body).unwrap(),
            Request::Bulk(vec![
                Request::Delete { name: "a".into() },
                Request::Bulk(vec![Request::Delete { name: "b".into() }])
            ])
        );
        let bad = json!({"type": "bulk", "args": [
            {"type": "delete_event_trigger", "args": {"name": "a"}},
            {"type": "delete_event_triger", "args": {"name": "b"}}
        ]});
        let e = parse(&bad).unwrap_err();
        assert!(e.message.starts_with("bulk args[1]: unknown query type \"delete_event_triger\""), "{}", e.message);
    }

    #[test]
    fn malformed_bodies() {
        assert!(parse(&json!([])).unwrap_err().message.contains("must be a JSON object"));
        assert_eq!(parse(&json!({"args": {}})).unwrap_err().message, "key \"type\" is required");
        assert_eq!(parse(&json!({"type": "bulk"})).unwrap_err().message, "key \"args\" is required");
        assert_eq!(parse(&json!({"type": "bulk", "args": [], "typo": 1})).unwrap_err().message, "unknown key \"typo\"");
        let e = parse(&json!({"type": "delete_event_trigger", "args": {"name": "a", "nam": "b"}})).unwrap_err();
        assert_eq!(e.message, "unknown key \"args.nam\"");
        let e = parse(&json!({"type": "invoke_event_trigger", "args": {"name": "a"}})).unwrap_err();
        assert_eq!(e.message, "key \"payload\" is required");
        let e = parse(&json!({"type": "redeliver_event", "args": {"event_id": 7}})).unwrap_err();
        assert!(e.message.contains("expected a string"), "{}", e.message);
        let e = parse(&json!({"type": "pg_delete_event_trigger", "args": {"name": "a", "source": "x"}})).unwrap_err();
        assert!(e.message.contains("\"source\""), "{}", e.message);
        let e = parse(&json!({"type": "run_sql", "args": {}})).unwrap_err();
        assert!(e.message.contains("unknown query type \"run_sql\""), "{}", e.message);
    }
}
