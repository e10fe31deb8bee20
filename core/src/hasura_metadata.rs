//! Reading the event triggers out of a Hasura metadata export
//! (`sources[].tables[].event_triggers[]`, metadata version 3; the older
//! top-level `tables[]` too), for `webhooks.import_hasura_metadata`.
//!
//! Each trigger becomes `create_event_trigger` arguments, transforms,
//! cleanup configuration and `trigger_on_replication` included. What has no
//! meaning here (sources other than the default one, other database kinds,
//! keys unknown to pg_webhooks) is reported with the reason rather than
//! silently dropped.

use serde_json::{json, Map, Value};

use crate::definition::describe;
use crate::error::{ApiError, ApiResult};

/// Keys of a Hasura event trigger that carry over unchanged.
const CARRIED: &[&str] = &[
    "webhook",
    "webhook_from_env",
    "headers",
    "retry_conf",
    "request_transform",
    "response_transform",
    "cleanup_config",
    "trigger_on_replication",
];

#[derive(Debug, Clone, PartialEq)]
pub struct Import {
    /// `create_event_trigger` arguments, one per trigger.
    pub creates: Vec<Value>,
    /// `{"trigger"?, "source"?, "table"?, "key"?, "reason"}` for each thing left behind.
    pub unsupported: Vec<Value>,
}

pub fn parse(metadata: &Value) -> ApiResult<Import> {
    let root = metadata.as_object().ok_or_else(|| {
        ApiError::invalid(format!("Hasura metadata must be a JSON object, got {}", describe(metadata)))
            .with_hint("Pass the JSON of Hasura's export_metadata, or its \"metadata\" member.")
    })?;
    // export_metadata answers {"resource_version": n, "metadata": {...}} in v2.
    if let Some(inner) = root.get("metadata").filter(|m| m.is_object()) {
        return parse(inner);
    }
    let mut out = Import { creates: Vec::new(), unsupported: Vec::new() };
    match (root.get("sources"), root.get("tables")) {
        (Some(sources), _) => {
            let sources = sources.as_array().ok_or_else(|| {
                ApiError::invalid(format!(
                    "invalid value for key \"sources\": expected a list, got {}",
                    describe(sources)
                ))
            })?;
            for (i, source) in sources.iter().enumerate() {
                let name = source.get("name").and_then(Value::as_str).unwrap_or("");
                let kind = source.get("kind").and_then(Value::as_str).unwrap_or("postgres");
                if name != "default" || kind != "postgres" {
                    let n = count_triggers(source.get("tables"));
                    if n > 0 {
                        out.unsupported.push(json!({
                            "source": name,
                            "reason": format!("{n} event trigger(s) of source \"{name}\" ({kind}) skipped: pg_webhooks serves only the database it is installed in, as source \"default\""),
                        }));
                    }
                    continue;
                }
                tables(source.get("tables"), &format!("sources[{i}].tables"), &mut out)?;
            }
        }
        (None, Some(t)) => tables(Some(t), "tables", &mut out)?,
        (None, None) => {
            return Err(ApiError::invalid("Hasura metadata has neither \"sources\" nor \"tables\"")
                .with_hint("Pass the JSON of Hasura's export_metadata."))
        }
    }
    Ok(out)
}

fn count_triggers(tables: Option<&Value>) -> usize {
    tables
        .and_then(Value::as_array)
        .map(|ts| ts.iter().map(|t| t.get("event_triggers").and_then(Value::as_array).map_or(0, Vec::len)).sum())
        .unwrap_or(0)
}

fn tables(v: Option<&Value>, at: &str, out: &mut Import) -> ApiResult<()> {
    let Some(v) = v else { return Ok(()) };
    let list = v.as_array().ok_or_else(|| {
        ApiError::invalid(format!("invalid value for key \"{at}\": expected a list, got {}", describe(v)))
    })?;
    for (i, t) in list.iter().enumerate() {
        let Some(triggers) = t.get("event_triggers") else { continue };
        let table =
            t.get("table").cloned().ok_or_else(|| ApiError::invalid(format!("key \"{at}[{i}].table\" is required")))?;
        let triggers = triggers.as_array().ok_or_else(|| {
            ApiError::invalid(format!(
                "invalid value for key \"{at}[{i}].event_triggers\": expected a list, got {}",
                describe(triggers)
            ))
        })?;
        for (j, trig) in triggers.iter().enumerate() {
            out.creates.push(trigger(trig, &table, &format!("{at}[{i}].event_triggers[{j}]"), &mut out.unsupported)?);
        }
    }
    Ok(())
}

fn trigger(v: &Value, table: &Value, at: &str, unsupported: &mut Vec<Value>) -> ApiResult<Value> {
    let o = v.as_object().ok_or_else(|| {
        ApiError::invalid(format!("invalid value for key \"{at}\": expected an object, got {}", describe(v)))
    })?;
    let name = o
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::invalid(format!("key \"{at}.name\" is required")))?;
    let mut args = Map::new();
    args.insert("name".into(), json!(name));
    args.insert("table".into(), table.clone());
    for key in CARRIED {
        if let Some(v) = o.get(*key) {
            args.insert((*key).into(), v.clone());
        }
    }
    if let Some(def) = o.get("definition") {
        let def = def.as_object().ok_or_else(|| {
            ApiError::invalid(format!("invalid value for key \"{at}.definition\": expected an object"))
        })?;
        for (k, v) in def {
            match k.as_str() {
                "insert" | "update" | "delete" | "enable_manual" => {
                    args.insert(k.clone(), v.clone());
                }
                other => unsupported.push(json!({
                    "trigger": name,
                    "key": format!("definition.{other}"),
                    "reason": "unknown to pg_webhooks; ignored",
                })),
            }
        }
    }
    for key in o.keys() {
        let known = ["name", "definition"].contains(&key.as_str()) || CARRIED.contains(&key.as_str());
        if !known {
            unsupported.push(json!({"trigger": name, "key": key, "reason": "unknown to pg_webhooks; ignored"}));
        }
    }
    // Hasura's exports spell a trigger for manual invocation only with every
    // operation absent and enable_manual true; nothing to adapt.
    Ok(Value::Object(args))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn export() -> Value {
        json!({
            "resource_version": 42,
            "metadata": {
                "version": 3,
                "sources": [
                    {
                        "name": "default",
                        "kind": "postgres",
                        "tables": [
                            {"table": {"schema": "public", "name": "users"},
                             "event_triggers": [
                                {"name": "user_created",
                                 "definition": {"enable_manual": false, "insert": {"columns": "*"}},
                                 "retry_conf": {"num_retries": 3, "interval_sec": 15, "timeout_sec": 60},
                                 "webhook_from_env": "USER_HOOK",
                                 "headers": [{"name": "x-secret", "value_from_env": "HOOK_SECRET"}],
                                 "request_transform": {"version": 2, "template_engine": "Kriti", "method": "PUT",
                                                       "body": {"action": "transform", "template": "{\"id\": {{$body.event.data.new.id}}}"}},
                                 "response_transform": {"version": 2, "body": {"action": "remove"}},
                                 "trigger_on_replication": true,
                                 "the_future": 1},
                                {"name": "user_email_changed",
                                 "definition": {"enable_manual": true, "update": {"columns": ["email"]}},
                                 "retry_conf": {"num_retries": 0, "interval_sec": 10, "timeout_sec": 60},
                                 "webhook": "https://hooks.example.com/email",
                                 "cleanup_config": {"schedule": "0 0 * * *", "clear_older_than": 168}}
                             ]},
                            {"table": {"schema": "public", "name": "plain"}}
                        ]
                    },
                    {"name": "analytics", "kind": "bigquery",
                     "tables": [{"table": {"dataset": "d", "name": "t"}, "event_triggers": [{"name": "bq"}]}]}
                ]
            }
        })
    }

    #[test]
    fn reads_every_trigger_of_the_default_source() {
        let got = parse(&export()).unwrap();
        assert_eq!(got.creates.len(), 2);
        assert_eq!(
            got.creates[0],
            json!({
                "name": "user_created",
                "table": {"schema": "public", "name": "users"},
                "webhook_from_env": "USER_HOOK",
                "headers": [{"name": "x-secret", "value_from_env": "HOOK_SECRET"}],
                "retry_conf": {"num_retries": 3, "interval_sec": 15, "timeout_sec": 60},
                "enable_manual": false,
                "insert": {"columns": "*"},
                "request_transform": {"version": 2, "template_engine": "Kriti", "method": "PUT",
                                      "body": {"action": "transform", "template": "{\"id\": {{$body.event.data.new.id}}}"}},
                "response_transform": {"version": 2, "body": {"action": "remove"}},
                "trigger_on_replication": true
            })
        );
        assert_eq!(got.creates[1]["cleanup_config"], json!({"schedule": "0 0 * * *", "clear_older_than": 168}));
        assert_eq!(got.creates[1]["update"], json!({"columns": ["email"]}));
        let reasons: Vec<(String, String)> = got
            .unsupported
            .iter()
            .map(|u| (u["trigger"].as_str().unwrap_or("").to_string(), u["key"].as_str().unwrap_or("").to_string()))
            .collect();
        // Only what has no meaning here is left behind.
        assert_eq!(
            reasons,
            vec![("user_created".to_string(), "the_future".to_string()), (String::new(), String::new())]
        );
        assert!(got.unsupported.iter().any(|u| u["source"] == json!("analytics")), "{:?}", got.unsupported);
    }

    #[test]
    fn accepts_the_bare_metadata_and_old_top_level_tables() {
        let bare = export()["metadata"].clone();
        assert_eq!(parse(&bare).unwrap().creates.len(), 2);
        let old = json!({"version": 2, "tables": [{"table": {"schema": "s", "name": "t"},
                          "event_triggers": [{"name": "x", "definition": {"delete": {"columns": "*"}}, "webhook": "http://h.example"}]}]});
        assert_eq!(parse(&old).unwrap().creates[0]["delete"], json!({"columns": "*"}));
    }

    #[test]
    fn malformed_metadata_is_an_error() {
        assert!(parse(&json!([])).unwrap_err().message.contains("must be a JSON object"));
        assert!(parse(&json!({"version": 3})).unwrap_err().message.contains("neither"));
        let e = parse(&json!({"sources": [{"name": "default", "tables": [{"event_triggers": []}]}]})).unwrap_err();
        assert!(e.message.contains("sources[0].tables[0].table"), "{}", e.message);
        let e = parse(&json!({"tables": [{"table": "t", "event_triggers": [{"definition": {}}]}]})).unwrap_err();
        assert!(e.message.contains("event_triggers[0].name"), "{}", e.message);
    }
}
