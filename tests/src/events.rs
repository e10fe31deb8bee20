//! The event log and invocation logs as the suites check them.

use std::time::Duration;

use postgres::Client;
use serde_json::Value;

use crate::eventually;

/// Each event of `trigger`, oldest first: (delivered, error, tries, not
/// locked).
pub fn states(c: &mut Client, trigger: &str) -> Vec<(bool, bool, i32, bool)> {
    c.query(
        "SELECT delivered, error, tries, locked IS NULL FROM webhooks.event_log WHERE trigger_name = $1 ORDER BY id",
        &[&trigger],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}

/// Waits up to `wait` until `trigger` has events and every one has ended
/// (delivered or error) with no attempt in flight; their [`states`].
pub fn settled(c: &mut Client, trigger: &str, wait: Duration) -> Vec<(bool, bool, i32, bool)> {
    eventually(wait, &format!("events of {trigger} to settle"), || {
        let s = states(c, trigger);
        (!s.is_empty() && s.iter().all(|e| (e.0 || e.1) && e.3)).then_some(s)
    })
}

/// The invocation logs of `trigger`, oldest first: (status, request,
/// response, duration_ms).
pub fn invocations(c: &mut Client, trigger: &str) -> Vec<(Option<i32>, Value, Value, f64)> {
    c.query(
        "SELECT status, request, response, duration_ms FROM webhooks.event_invocation_logs WHERE trigger_name = $1 ORDER BY created_at",
        &[&trigger],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}
