//! `cleanup_config`, Hasura's automatic event log cleanup of a trigger: on
//! a cron `schedule` (UTC), events that ended (delivered or dead) more than
//! `clear_older_than` hours ago are deleted in batches of `batch_size`,
//! each batch within `timeout` seconds; with `clean_invocation_logs` their
//! invocation logs go too. `paused` stops it without forgetting it.

use std::str::FromStr;

use serde_json::{json, Map, Value};

use crate::definition::{describe, parse_bool};
use crate::error::{ApiError, ApiResult};

#[derive(Debug, Clone)]
pub struct CleanupConfig {
    pub schedule: String,
    cron: croner::Cron,
    pub clear_older_than_hours: u32,
    pub batch_size: u32,
    pub timeout_sec: u32,
    pub clean_invocation_logs: bool,
    pub paused: bool,
}

impl PartialEq for CleanupConfig {
    fn eq(&self, o: &Self) -> bool {
        self.to_json() == o.to_json()
    }
}
impl Eq for CleanupConfig {}

pub const DEFAULT_BATCH_SIZE: u32 = 10_000;
pub const DEFAULT_TIMEOUT_SEC: u32 = 60;

/// Parses a cron expression of five fields (minute hour day month
/// weekday), as Hasura's schedules are.
pub fn parse_schedule(key: &str, s: &str) -> ApiResult<croner::Cron> {
    if s.split_whitespace().count() != 5 {
        return Err(ApiError::invalid(format!(
            "invalid value for key \"{key}\": \"{s}\" is not a cron expression of five fields (minute hour day month weekday)"
        ))
        .with_hint("E.g. \"0 0 * * *\" for every day at midnight UTC."));
    }
    croner::Cron::from_str(s).map_err(|e| {
        ApiError::invalid(format!("invalid value for key \"{key}\": \"{s}\" is not a valid cron expression ({e})"))
            .with_hint("E.g. \"0 0 * * *\" for every day at midnight UTC, \"*/10 * * * *\" for every ten minutes.")
    })
}

/// A positive whole number no larger than `max`, or the default.
pub fn positive(key: &str, v: Option<&Value>, default: u32, max: u32) -> ApiResult<u32> {
    match v {
        None | Some(Value::Null) => Ok(default),
        Some(n) => match n.as_u64() {
            Some(x) if x >= 1 && x <= u64::from(max) => Ok(x as u32),
            _ => Err(ApiError::invalid(format!(
                "invalid value for key \"{key}\": expected a whole number from 1 to {max}, got {}",
                describe(n)
            ))),
        },
    }
}

pub fn parse(v: &Value) -> ApiResult<CleanupConfig> {
    let o: &Map<String, Value> = v.as_object().ok_or_else(|| {
        ApiError::invalid(format!("invalid value for key \"cleanup_config\": expected an object, got {}", describe(v)))
            .with_hint("E.g. {\"schedule\": \"0 0 * * *\", \"clear_older_than\": 168}.")
    })?;
    const KNOWN: &[&str] =
        &["schedule", "clear_older_than", "batch_size", "timeout", "clean_invocation_logs", "paused"];
    if let Some(k) = o.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(ApiError::invalid(format!("unknown key \"cleanup_config.{k}\""))
            .with_hint(format!("The keys of \"cleanup_config\" are: {}.", KNOWN.join(", "))));
    }
    let schedule = o
        .get("schedule")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::invalid("key \"cleanup_config.schedule\" (a cron expression, in UTC) is required"))?;
    let cron = parse_schedule("cleanup_config.schedule", schedule)?;
    let clear_older_than_hours = match o.get("clear_older_than") {
        None | Some(Value::Null) => {
            return Err(ApiError::invalid("key \"cleanup_config.clear_older_than\" (hours) is required"))
        }
        v => positive("cleanup_config.clear_older_than", v, 0, 24 * 365 * 100)?,
    };
    Ok(CleanupConfig {
        schedule: schedule.to_owned(),
        cron,
        clear_older_than_hours,
        batch_size: positive("cleanup_config.batch_size", o.get("batch_size"), DEFAULT_BATCH_SIZE, 1_000_000)?,
        timeout_sec: positive("cleanup_config.timeout", o.get("timeout"), DEFAULT_TIMEOUT_SEC, 86_400)?,
        clean_invocation_logs: parse_bool(
            "cleanup_config.clean_invocation_logs",
            o.get("clean_invocation_logs"),
            false,
        )?,
        paused: parse_bool("cleanup_config.paused", o.get("paused"), false)?,
    })
}

impl CleanupConfig {
    pub fn to_json(&self) -> Value {
        json!({
            "schedule": self.schedule,
            "clear_older_than": self.clear_older_than_hours,
            "batch_size": self.batch_size,
            "timeout": self.timeout_sec,
            "clean_invocation_logs": self.clean_invocation_logs,
            "paused": self.paused,
        })
    }

    /// The first time the schedule fires after `epoch_secs` (UTC), in
    /// seconds since the epoch.
    pub fn next_after(&self, epoch_secs: i64) -> Option<i64> {
        let t = chrono::DateTime::from_timestamp(epoch_secs, 0)?;
        self.cron.find_next_occurrence(&t, false).ok().map(|n| n.timestamp())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_round_trip() {
        let c = parse(&json!({"schedule": "0 0 * * *", "clear_older_than": 168})).unwrap();
        assert_eq!(
            c.to_json(),
            json!({"schedule": "0 0 * * *", "clear_older_than": 168, "batch_size": 10000, "timeout": 60,
                   "clean_invocation_logs": false, "paused": false})
        );
        assert_eq!(parse(&c.to_json()).unwrap(), c);
    }

    #[test]
    fn the_schedule_is_cron_in_utc() {
        let c = parse(&json!({"schedule": "30 2 * * *", "clear_older_than": 1})).unwrap();
        // 2024-01-01T00:00:00Z -> 02:30 the same day.
        assert_eq!(c.next_after(1_704_067_200), Some(1_704_067_200 + 2 * 3600 + 1800));
        // Strictly after: at 02:30 itself, the next is a day later.
        assert_eq!(c.next_after(1_704_076_200), Some(1_704_076_200 + 86_400));
        let every = parse(&json!({"schedule": "*/10 * * * *", "clear_older_than": 1})).unwrap();
        assert_eq!(every.next_after(1_704_067_201), Some(1_704_067_200 + 600));
    }

    #[test]
    fn bad_configs_name_the_key() {
        let err = |v: Value| parse(&v).unwrap_err().message;
        assert!(err(json!({"clear_older_than": 1})).contains("cleanup_config.schedule"));
        assert!(err(json!({"schedule": "0 0 * *", "clear_older_than": 1})).contains("five fields"));
        assert!(err(json!({"schedule": "99 0 * * *", "clear_older_than": 1})).contains("not a valid cron expression"));
        assert!(err(json!({"schedule": "0 0 * * *"})).contains("clear_older_than"));
        assert!(err(json!({"schedule": "0 0 * * *", "clear_older_than": 0})).contains("from 1 to"));
        assert!(err(json!({"schedule": "0 0 * * *", "clear_older_than": 1, "batch_size": "x"})).contains("batch_size"));
        assert!(err(json!({"schedule": "0 0 * * *", "clear_older_than": 1, "paused": 1})).contains("true or false"));
        assert!(err(json!({"schedule": "0 0 * * *", "clear_older_than": 1, "when": 1})).contains("unknown key"));
    }
}
