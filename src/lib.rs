//! pg_webhooks: Hasura-style event triggers inside PostgreSQL.
//!
//! The PostgreSQL glue lives here; everything that does not call into
//! PostgreSQL is in the `pg_webhooks_core` crate (`core/`).
//!
//! - [`api`]: the SQL functions of schema `webhooks` (create, delete,
//!   invoke, redeliver, query).
//! - [`definitions`]: the one owner of `webhooks.event_triggers`.
//! - [`capture`]: the row trigger that writes events in the writing
//!   transaction; [`payload`] builds their jsonb and [`event_log`], the one
//!   owner of the event tables, appends them (and claims and records them
//!   for the worker).
//! - [`catalog`]: lookups of tables, columns and the extension owner, and
//!   running SQL with the owner's rights.
//! - [`errors`]: raising `ApiError`s with their SQLSTATE.
//! - [`json_arg`]: jsonb arguments that never fail as internal errors.
//! - [`settings`]: the `webhooks.*` settings.
//! - [`shmem`]: shared memory: a slot per delivery worker, the launcher's
//!   requests, the definitions generation.
//! - [`wake`]: what a commit tells other processes (once per transaction),
//!   and what DROP DATABASE tells a worker.
//! - [`health`]: the one owner of `webhooks.endpoint_state`, the worker's
//!   record of endpoints it treats as down.
//! - [`launcher`]: starts a delivery worker per database with the extension.
//! - [`worker`]: the background worker that delivers one database's events.
//! - [`status`] serves `webhooks.worker_status()`.
//! - [`compat`]: what differs between PostgreSQL majors.
//! - `sql/`: the tables, the DDL event triggers, the privileges and
//!   descriptions (`finalize.sql`), the upgrade scripts between releases
//!   (`pg_webhooks--A--B.sql`) and the released install scripts (`archive/`).

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

use pgrx::prelude::*;

mod api;
mod capture;
mod catalog;
mod compat;
mod definitions;
mod errors;
mod event_log;
mod health;
mod json_arg;
mod launcher;
mod payload;
mod plans;
mod settings;
mod shmem;
mod status;
mod wake;
mod worker;

::pgrx::pg_module_magic!(name, version);

extension_sql_file!("../sql/tables.sql", name = "tables", bootstrap);
extension_sql_file!(
    "../sql/ddl.sql",
    name = "ddl",
    requires = [capture::webhooks::capture, definitions::webhooks::_definitions_changed]
);
extension_sql_file!("../sql/operations.sql", name = "operations", requires = ["tables"]);
extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

/// Set in `_PG_init` when the library was loaded by
/// `shared_preload_libraries`, the only way the worker can run.
pub(crate) static PRELOADED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    hide_rust_backtraces();
    // SAFETY: a backend global, set by PostgreSQL before it loads libraries.
    let preloading = unsafe { pg_sys::process_shared_preload_libraries_in_progress };
    settings::register(preloading);
    if preloading {
        PRELOADED.store(true, std::sync::atomic::Ordering::Relaxed);
        shmem::init();
        launcher::register();
    }
    capture::init();
    event_log::init();
}

/// pgrx appends a Rust backtrace to the DETAIL of errors that pass through
/// its guards when `RUST_BACKTRACE` is set in the server's environment:
/// file paths and internals for any client to read. The standard library
/// decides once per process, from `RUST_LIB_BACKTRACE` first; setting it to
/// 0 here, while the process is still single-threaded (the postmaster
/// preloading, or a backend loading the library), keeps error details to
/// what PostgreSQL itself says. Panics on the worker's HTTP threads still
/// print their message to the server log.
fn hide_rust_backtraces() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none_or(|v| v != "0") {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
}

/// Called by CREATE EXTENSION: at commit, the launcher starts a worker for
/// this database; warns when nothing will be delivered here. (The name is
/// older than the launcher.)
#[pg_extern(schema = "webhooks")]
#[search_path(pg_catalog, pg_temp)]
fn _warn_if_not_preloaded() {
    wake::note_extension_created();
    if let Some(only) = settings::database().filter(|db| *db != catalog::database_name()) {
        ereport!(
            PgLogLevel::WARNING,
            PgSqlErrorCode::ERRCODE_WARNING,
            format!("webhooks.database = '{only}': events of this database are captured but nothing will be delivered"),
            "Set webhooks.database to '' (every database) or to this database, and restart PostgreSQL."
        );
    }
    if !PRELOADED.load(std::sync::atomic::Ordering::Relaxed) {
        ereport!(
            PgLogLevel::WARNING,
            PgSqlErrorCode::ERRCODE_WARNING,
            "pg_webhooks is not in shared_preload_libraries: events are captured but nothing will be delivered",
            "Add pg_webhooks to shared_preload_libraries in postgresql.conf and restart PostgreSQL."
        );
    }
}
