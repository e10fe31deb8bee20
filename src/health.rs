//! The one owner of `webhooks.endpoint_state`: the delivery worker's record
//! of which triggers' endpoints it treats as down (a row per down endpoint;
//! no row: up), for `webhooks.event_stats`. The worker decides; this module
//! only writes what it decided, in the worker's round transaction.
//!
//! The table came with 0.3.0's schema: with the previous release's tables
//! (before `ALTER EXTENSION UPDATE`) nothing is recorded.

use pgrx::prelude::*;

use crate::errors::spi;

fn table_exists() -> bool {
    spi(Spi::get_one::<bool>("SELECT pg_catalog.to_regclass('webhooks.endpoint_state') IS NOT NULL")).unwrap_or(false)
}

/// Records that trigger `name`'s endpoint is down after `failures` failed
/// attempts in a row, the last of which said `last_error`.
pub fn mark_down(name: &str, failures: i32, last_error: &str) {
    if !table_exists() {
        return;
    }
    spi(Spi::run_with_args(
        "INSERT INTO webhooks.endpoint_state (trigger_name, down_since, failures, last_error)
         VALUES ($1, pg_catalog.now(), $2, $3)
         ON CONFLICT (trigger_name) DO UPDATE
         SET down_since = pg_catalog.now(), failures = excluded.failures, last_error = excluded.last_error",
        &[name.into(), failures.into(), last_error.into()],
    ));
}

/// Records that trigger `name`'s endpoint answers again.
pub fn mark_up(name: &str) {
    if !table_exists() {
        return;
    }
    spi(Spi::run_with_args(
        "DELETE FROM webhooks.endpoint_state WHERE trigger_name OPERATOR(pg_catalog.=) $1",
        &[name.into()],
    ));
}

/// Forgets every recorded state: a worker starts with every endpoint up.
pub fn reset() {
    if table_exists() {
        spi(Spi::run("DELETE FROM webhooks.endpoint_state"));
    }
}
