//! The JSON body a webhook receives, in Hasura's shape:
//!
//! ```json
//! {"id": ..., "created_at": ..., "trigger": {"name": ...},
//!  "table": {"schema": ..., "name": ...}, "event": {...},
//!  "delivery_info": {"max_retries": ..., "current_retry": ...}}
//! ```

use serde_json::Value;

/// What goes into the body of one attempt.
#[derive(Debug, Clone, Copy)]
pub struct WebhookBody<'a> {
    /// The event id, also the `webhook-id` header.
    pub id: &'a str,
    /// ISO 8601.
    pub created_at: &'a str,
    pub trigger: &'a str,
    pub schema: &'a str,
    pub table: &'a str,
    /// The event log's payload (`{"op", "data", "session_variables",
    /// "trace_context"}`) as JSON text, copied in as it is.
    pub event: &'a str,
    pub max_retries: i32,
    /// Attempts made before this one.
    pub current_retry: i32,
}

impl WebhookBody<'_> {
    pub fn render(&self) -> String {
        let s = |v: &str| Value::String(v.to_string()).to_string();
        format!(
            "{{\"id\":{},\"created_at\":{},\"trigger\":{{\"name\":{}}},\"table\":{{\"schema\":{},\"name\":{}}},\"event\":{},\"delivery_info\":{{\"max_retries\":{},\"current_retry\":{}}}}}",
            s(self.id),
            s(self.created_at),
            s(self.trigger),
            s(self.schema),
            s(self.table),
            self.event,
            self.max_retries,
            self.current_retry,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn body_has_hasuras_shape() {
        let b = WebhookBody {
            id: "0190d6c0-0000-7000-8000-000000000001",
            created_at: "2024-01-01T00:00:00+00:00",
            trigger: "t\"1",
            schema: "public",
            table: "users",
            event: r#"{"op":"INSERT","data":{"old":null,"new":{"id":1}},"session_variables":null,"trace_context":null}"#,
            max_retries: 3,
            current_retry: 1,
        }
        .render();
        let v: Value = serde_json::from_str(&b).unwrap();
        assert_eq!(
            v,
            json!({
                "id": "0190d6c0-0000-7000-8000-000000000001",
                "created_at": "2024-01-01T00:00:00+00:00",
                "trigger": {"name": "t\"1"},
                "table": {"schema": "public", "name": "users"},
                "event": {"op": "INSERT", "data": {"old": null, "new": {"id": 1}}, "session_variables": null, "trace_context": null},
                "delivery_info": {"max_retries": 3, "current_retry": 1}
            })
        );
    }
}
