//! `webhooks.event_triggers`: every read and write of the definitions table
//! from Rust, for the SQL functions, capture and the worker alike. (The DDL
//! event triggers in `sql/ddl.sql` keep definitions in step with renames
//! and drops.)
//!
//! Everything here runs with the extension owner's rights: callers wrap it
//! in [`crate::catalog::as_owner`], or are the worker.

use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::Value;

use crate::errors::spi;
use crate::plans;

/// A definition's row as the management functions need it.
pub struct Found {
    pub name: String,
    pub schema: String,
    pub table: String,
    /// The role that created it (the extension's owner before 0.3.0's
    /// `ALTER EXTENSION ... UPDATE`).
    pub owner: pg_sys::Oid,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Lock {
    /// The row is about to change or go: concurrent changes wait.
    ForUpdate,
    None,
}

/// Whether the table has its `owner` column (0.3.0). The library is
/// installed before `ALTER EXTENSION pg_webhooks UPDATE` runs in each
/// database, and works with the previous release's tables until then:
/// there, every trigger counts as the extension owner's.
pub fn owner_column_exists() -> bool {
    has_column(c"owner")
}

/// Whether `webhooks.event_triggers` has `column` (0.3.0 added `owner` and
/// `paused_reason`).
fn has_column(column: &std::ffi::CStr) -> bool {
    // SAFETY: syscache lookups by name; each returns InvalidOid (or
    // InvalidAttrNumber) when the object is missing.
    unsafe {
        let nsp = pg_sys::get_namespace_oid(c"webhooks".as_ptr(), true);
        if nsp == pg_sys::Oid::INVALID {
            return false;
        }
        let rel = pg_sys::get_relname_relid(c"event_triggers".as_ptr(), nsp);
        rel != pg_sys::Oid::INVALID && pg_sys::get_attnum(rel, column.as_ptr()) != pg_sys::InvalidAttrNumber as i16
    }
}

/// The owner as a SQL expression over the row `alias`: the column, or
/// before the update the extension's owner.
fn owner_expr(alias: &str) -> String {
    if owner_column_exists() {
        format!("{alias}.owner::pg_catalog.oid")
    } else {
        extension_owner!().into()
    }
}

/// The extension's owner, as SQL: the owner of every trigger before 0.3.0.
macro_rules! extension_owner {
    () => {
        "(SELECT e.extowner FROM pg_catalog.pg_extension e WHERE e.extname OPERATOR(pg_catalog.=) 'pg_webhooks')"
    };
}
use extension_owner;

/// Trigger `name`'s row, locked as asked.
pub fn find(name: &str, lock: Lock) -> Option<Found> {
    let sql = format!(
        "SELECT t.schema_name, t.table_name, {} FROM webhooks.event_triggers t
         WHERE t.name OPERATOR(pg_catalog.=) $1{}",
        owner_expr("t"),
        if lock == Lock::ForUpdate { " FOR UPDATE" } else { "" }
    );
    Spi::connect(|c| {
        let rows = spi(c.select(&sql, Some(1), &[name.into()]).map(Some)).expect("select returns a table");
        let row = rows.into_iter().next()?;
        Some(Found {
            name: name.to_string(),
            schema: spi(row.get::<String>(1)).unwrap_or_default(),
            table: spi(row.get::<String>(2)).unwrap_or_default(),
            owner: spi(row.get::<pg_sys::Oid>(3)).unwrap_or(pg_sys::Oid::INVALID),
        })
    })
}

/// Trigger `name`'s stored definition, if it exists.
pub fn definition(name: &str) -> Option<JsonB> {
    spi(Spi::get_one_with_args::<JsonB>(
        "SELECT definition FROM webhooks.event_triggers WHERE name OPERATOR(pg_catalog.=) $1",
        &[name.into()],
    ))
}

/// Trigger `name`'s definition as last committed, whatever the snapshot of
/// the calling transaction (a REPEATABLE READ or SERIALIZABLE writer sees
/// the definition that is current when it writes, as PostgreSQL's own
/// triggers do after `CREATE OR REPLACE TRIGGER`).
pub fn definition_latest(name: &str) -> Option<Value> {
    let name = std::ffi::CString::new(name).expect("trigger names have no NUL");
    Spi::connect(|_| {
        // SAFETY: SPI is connected for the closure; the plan is prepared,
        // run with a fresh MVCC snapshot (read-only, so SPI uses it as
        // given) and freed here; the result is read before SPI disconnects.
        unsafe {
            let mut types = [pg_sys::TEXTOID];
            let plan = pg_sys::SPI_prepare(
                c"SELECT definition::pg_catalog.text FROM webhooks.event_triggers WHERE name OPERATOR(pg_catalog.=) $1"
                    .as_ptr(),
                1,
                types.as_mut_ptr(),
            );
            if plan.is_null() {
                error!("pg_webhooks: preparing the definition lookup failed");
            }
            let mut values = [pg_sys::Datum::from(pg_sys::cstring_to_text(name.as_ptr()))];
            let rc = pg_sys::SPI_execute_snapshot(
                plan,
                values.as_mut_ptr(),
                c" ".as_ptr(),
                pg_sys::GetLatestSnapshot(),
                std::ptr::null_mut(),
                true,
                false,
                1,
            );
            if rc != pg_sys::SPI_OK_SELECT as i32 {
                error!("pg_webhooks: the definition lookup failed ({rc})");
            }
            let table = pg_sys::SPI_tuptable;
            let found = if pg_sys::SPI_processed == 1 && !table.is_null() {
                let text = pg_sys::SPI_getvalue(*(*table).vals, (*table).tupdesc, 1);
                (!text.is_null()).then(|| std::ffi::CStr::from_ptr(text).to_string_lossy().into_owned())
            } else {
                None
            };
            pg_sys::SPI_freeplan(plan);
            found.map(|t| serde_json::from_str(&t).expect("a stored definition is JSON"))
        }
    })
}

/// Stores a new definition owned by `owner` (ignored before 0.3.0's
/// update). False when the name exists.
pub fn insert(name: &str, stored: &Value, owner: pg_sys::Oid) -> bool {
    let inserted = if owner_column_exists() {
        spi(Spi::get_one_with_args::<bool>(
            "INSERT INTO webhooks.event_triggers (name, definition, owner) VALUES ($1, $2, $3::pg_catalog.regrole)
             ON CONFLICT (name) DO NOTHING RETURNING true",
            &[name.into(), JsonB(stored.clone()).into(), owner.into()],
        ))
    } else {
        spi(Spi::get_one_with_args::<bool>(
            "INSERT INTO webhooks.event_triggers (name, definition) VALUES ($1, $2)
             ON CONFLICT (name) DO NOTHING RETURNING true",
            &[name.into(), JsonB(stored.clone()).into()],
        ))
    };
    inserted.is_some()
}

/// The triggers whose definition has a `cleanup_config`.
pub fn names_with_cleanup_config() -> Vec<String> {
    Spi::connect(|c| {
        let rows = spi(c
            .select(
                "SELECT t.name FROM webhooks.event_triggers t WHERE t.definition OPERATOR(pg_catalog.?) 'cleanup_config' ORDER BY t.name",
                None,
                &[],
            )
            .map(Some))
        .expect("select returns a table");
        rows.into_iter().filter_map(|r| spi(r.get::<String>(1))).collect()
    })
}

/// Swaps trigger `name`'s definition.
pub fn replace(name: &str, stored: &Value) {
    spi(Spi::run_with_args(
        "UPDATE webhooks.event_triggers SET definition = $2, updated_at = pg_catalog.now()
         WHERE name OPERATOR(pg_catalog.=) $1",
        &[name.into(), JsonB(stored.clone()).into()],
    ));
}

pub fn delete(name: &str) {
    spi(Spi::run_with_args("DELETE FROM webhooks.event_triggers WHERE name OPERATOR(pg_catalog.=) $1", &[name.into()]));
}

/// Pauses or resumes a trigger; `reason` says why it is paused (NULL once
/// resumed; not kept before 0.3.0's update).
pub fn set_paused(name: &str, paused: bool, reason: Option<&str>) {
    if has_column(c"paused_reason") {
        spi(Spi::run_with_args(
            "UPDATE webhooks.event_triggers SET paused = $2, paused_reason = $3 WHERE name OPERATOR(pg_catalog.=) $1",
            &[name.into(), paused.into(), reason.into()],
        ));
    } else {
        spi(Spi::run_with_args(
            "UPDATE webhooks.event_triggers SET paused = $2 WHERE name OPERATOR(pg_catalog.=) $1",
            &[name.into(), paused.into()],
        ));
    }
}

/// A trigger that is not paused, as the worker checks it every round: its
/// row version (a change means its definition must be read again) and
/// whether its owner is a superuser (who may use any environment variable).
pub struct TriggerState {
    pub name: String,
    pub version: String,
    pub owner_is_superuser: bool,
}

/// Every trigger that is not paused; definitions are not read (see
/// [`definitions_of`]), so a large one costs nothing while unchanged.
pub fn trigger_states() -> Vec<TriggerState> {
    // Prepared once (every round runs it); which one depends on whether
    // the extension's tables are 0.3.0's yet.
    macro_rules! states {
        ($owner:expr) => {
            concat!(
                "SELECT t.name, t.xmin::pg_catalog.text,
                        COALESCE((SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.oid OPERATOR(pg_catalog.=) ",
                $owner,
                "), false)
                 FROM webhooks.event_triggers t WHERE NOT t.paused"
            )
        };
    }
    const WITH_OWNER: &str = states!("t.owner::pg_catalog.oid");
    const EXTENSION_OWNER: &str = states!(extension_owner!());
    let sql = if owner_column_exists() { WITH_OWNER } else { EXTENSION_OWNER };
    Spi::connect_mut(|c| {
        let states = plans::plan(c, sql, &[]);
        let rows = spi(c.update(&*states, None, &[]).map(Some)).expect("select returns a table");
        rows.into_iter()
            .map(|r| TriggerState {
                name: spi(r.get::<String>(1)).unwrap_or_default(),
                version: spi(r.get::<String>(2)).unwrap_or_default(),
                owner_is_superuser: spi(r.get::<bool>(3)).unwrap_or(false),
            })
            .collect()
    })
}

/// The definitions of `names`, with their row versions.
pub fn definitions_of(names: Vec<String>) -> Vec<(String, String, JsonB)> {
    if names.is_empty() {
        return Vec::new();
    }
    Spi::connect(|c| {
        let rows = spi(c
            .select(
                "SELECT t.name, t.xmin::pg_catalog.text, t.definition FROM webhooks.event_triggers t
                 WHERE t.name OPERATOR(pg_catalog.=) ANY ($1)",
                None,
                &[names.into()],
            )
            .map(Some))
        .expect("select returns a table");
        rows.into_iter()
            .map(|r| {
                (
                    spi(r.get::<String>(1)).unwrap_or_default(),
                    spi(r.get::<String>(2)).unwrap_or_default(),
                    spi(r.get::<JsonB>(3)).expect("definition is NOT NULL"),
                )
            })
            .collect()
    })
}

#[pg_schema]
mod webhooks {
    use pgrx::prelude::*;

    /// The statement trigger on `webhooks.event_triggers` (`sql/ddl.sql`):
    /// whatever changes a definition (the SQL functions, the DDL event
    /// triggers, a superuser's UPDATE, pg_restore), every backend's capture
    /// recompiles once the change commits.
    #[pg_trigger]
    fn _definitions_changed<'a>(
        _trigger: &'a PgTrigger<'a>,
    ) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, std::convert::Infallible> {
        crate::wake::note_definitions_changed();
        Ok(None)
    }
}
