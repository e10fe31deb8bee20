//! Catalog lookups, the checks on who may watch what, and the switch to the
//! extension owner's rights.
//!
//! The rule for everything that runs with the owner's rights: it runs under
//! [`as_owner`], which also pins `search_path` to `pg_catalog, pg_temp`, so
//! no operator, function or table of the caller's schemas can be picked up
//! (pg_temp is never searched for functions or operators). The statements
//! qualify their operators all the same.

use std::ffi::{CStr, CString};

use pgrx::prelude::*;
use webhooks_core::{ApiError, SqlState};

use crate::errors::{raise, spi};

/// The schema the extension's tables live in.
pub const SCHEMA: &str = "webhooks";

/// A table an event trigger may watch, resolved once: every later check and
/// the DDL use this oid (the DDL through `qualified`, under a lock that
/// keeps the name bound to it).
pub struct Table {
    pub oid: pg_sys::Oid,
    /// `schema.table`, each part quoted where needed: for messages and SQL.
    pub qualified: String,
}

/// Finds `schema.name` without consulting `search_path`, as the caller (so
/// that the caller needs USAGE on the schema, as for CREATE TRIGGER), and
/// locks it as CREATE TRIGGER does (SHARE ROW EXCLUSIVE) until the end of the
/// transaction: it cannot be renamed, dropped or replaced by another table
/// of that name before the capture trigger is on it. It must be an ordinary
/// or partitioned table, and not one of the extension's own.
pub fn resolve_table(schema: &str, name: &str) -> Table {
    let shown = pgrx::spi::quote_qualified_identifier(schema, name);
    let c_schema = CString::new(schema).expect("table names have no NUL (checked by the core crate)");
    let c_name = CString::new(name).expect("table names have no NUL (checked by the core crate)");
    // SAFETY: makeRangeVar copies nothing but keeps the pointers, which
    // live until the lookup returns; RangeVarGetRelidExtended raises
    // PostgreSQL errors (permission denied for the schema) through pgrx's
    // guard, and with RVR_MISSING_OK returns InvalidOid for a missing table.
    let oid = unsafe {
        let rv = pg_sys::makeRangeVar(c_schema.as_ptr().cast_mut(), c_name.as_ptr().cast_mut(), -1);
        pg_sys::RangeVarGetRelidExtended(
            rv,
            pg_sys::ShareRowExclusiveLock as pg_sys::LOCKMODE,
            pg_sys::RVROption::RVR_MISSING_OK,
            None,
            std::ptr::null_mut(),
        )
    };
    if oid == pg_sys::Oid::INVALID {
        raise(
            ApiError::new(
                SqlState::UndefinedTable,
                format!("invalid value for key \"table\": table {shown} does not exist"),
            )
            .with_hint("Give {\"schema\": ..., \"name\": ...} of an existing table; a bare name means schema public."),
        );
    }
    // SAFETY: the relation is locked, so its pg_class row stays; each call
    // returns palloc'd copies or plain values.
    let (kind, qualified, namespace) = unsafe {
        let kind = pg_sys::get_rel_relkind(oid) as u8;
        let namespace = pg_sys::get_rel_namespace(oid);
        let nsp = CStr::from_ptr(pg_sys::get_namespace_name(namespace)).to_string_lossy().into_owned();
        let rel = CStr::from_ptr(pg_sys::get_rel_name(oid)).to_string_lossy().into_owned();
        (kind, pgrx::spi::quote_qualified_identifier(nsp.as_str(), rel.as_str()), nsp)
    };
    if kind != pg_sys::RELKIND_RELATION && kind != pg_sys::RELKIND_PARTITIONED_TABLE {
        raise(
            ApiError::new(
                SqlState::WrongObjectType,
                format!("invalid value for key \"table\": {shown} is not a table"),
            )
            .with_hint(
                "Event triggers watch ordinary or partitioned tables, not views, foreign tables or other relations.",
            ),
        );
    }
    // SAFETY: a syscache lookup of the locked relation.
    if unsafe { pg_sys::get_rel_persistence(oid) } as u8 == pg_sys::RELPERSISTENCE_TEMP {
        raise(
            ApiError::new(
                SqlState::WrongObjectType,
                format!("invalid value for key \"table\": {qualified} is a temporary table"),
            )
            .with_hint(
                "A temporary table ends with its session, and no other session sees its rows; watch a permanent table.",
            ),
        );
    }
    if namespace == SCHEMA || belongs_to_extension(oid) {
        raise(
            ApiError::new(
                SqlState::WrongObjectType,
                format!("invalid value for key \"table\": {qualified} belongs to pg_webhooks and cannot be watched"),
            )
            .with_hint("Every event written to the event log would make another event. Watch your own tables."),
        );
    }
    Table { oid, qualified }
}

/// Whether relation `oid` is a member of this extension.
fn belongs_to_extension(oid: pg_sys::Oid) -> bool {
    // SAFETY: plain catalog lookups by oid.
    unsafe {
        let ext = pg_sys::get_extension_oid(c"pg_webhooks".as_ptr(), true);
        ext != pg_sys::Oid::INVALID && pg_sys::getExtensionOfObject(pg_sys::RelationRelationId, oid) == ext
    }
}

/// The caller must be able to read the table (events carry its rows) and to
/// put triggers on it, and must see every row of it: a table (or a
/// partition) whose row-level security applies to the caller is refused,
/// because events carry every row written, whatever the policies hide.
pub fn check_table_privileges(table: &Table) {
    let ok = spi(Spi::get_one_with_args::<bool>(
        "SELECT pg_catalog.has_table_privilege($1, 'SELECT') AND pg_catalog.has_table_privilege($1, 'TRIGGER')",
        &[table.oid.into()],
    ));
    if ok != Some(true) {
        raise(
            ApiError::new(
                SqlState::InsufficientPrivilege,
                format!(
                    "permission denied to watch table {}: SELECT and TRIGGER privileges on it are required",
                    table.qualified
                ),
            )
            .with_hint("Ask the table's owner to GRANT SELECT, TRIGGER on it, or run this as the owner."),
        );
    }
    let hidden = spi(Spi::get_one_with_args::<String>(
        "SELECT pg_catalog.min(t.rel::pg_catalog.regclass::pg_catalog.text)
         FROM (SELECT $1::pg_catalog.regclass AS rel
               UNION SELECT relid FROM pg_catalog.pg_partition_tree($1::pg_catalog.regclass)) t
         WHERE pg_catalog.row_security_active(t.rel)",
        &[table.oid.into()],
    ));
    if let Some(rel) = hidden {
        raise(
            ApiError::new(
                SqlState::InsufficientPrivilege,
                format!(
                    "permission denied to watch table {}: row-level security on {rel} applies to you, and events carry every row written",
                    table.qualified
                ),
            )
            .with_hint("Create the event trigger as the table's owner (without FORCE ROW LEVEL SECURITY) or as a role with BYPASSRLS."),
        );
    }
}

/// The attribute number of a live column, if it exists.
pub fn column_attnum(table: pg_sys::Oid, column: &str) -> Option<i16> {
    spi(Spi::get_one_with_args::<i16>(
        "SELECT attnum FROM pg_catalog.pg_attribute
         WHERE attrelid OPERATOR(pg_catalog.=) $1 AND attname OPERATOR(pg_catalog.=) $2
           AND attnum OPERATOR(pg_catalog.>) 0 AND NOT attisdropped",
        &[table.into(), column.into()],
    ))
}

/// The role that owns the extension: capture and the management functions
/// write to schema webhooks with its rights.
pub fn extension_owner() -> pg_sys::Oid {
    let owner = spi(Spi::get_one::<pg_sys::Oid>(
        "SELECT extowner FROM pg_catalog.pg_extension WHERE extname OPERATOR(pg_catalog.=) 'pg_webhooks'",
    ));
    owner.unwrap_or_else(|| error!("pg_webhooks: the extension is not installed in this database"))
}

/// Whether the extension is installed in the worker's database. When it
/// is, the transaction also holds a lock on it, so that a concurrent DROP
/// EXTENSION waits for the round to finish instead of pulling the tables
/// from under it.
/// The columns that identify a row of `rel` for ordered delivery: its
/// primary key, else its replica identity index; empty when it has neither
/// (REPLICA IDENTITY FULL or NOTHING without a primary key).
///
/// # Safety
/// `rel` must be an open relation.
pub unsafe fn key_attnums(rel: pg_sys::Relation) -> Vec<i16> {
    let mut out = Vec::new();
    for kind in [
        pg_sys::IndexAttrBitmapKind::INDEX_ATTR_BITMAP_PRIMARY_KEY,
        pg_sys::IndexAttrBitmapKind::INDEX_ATTR_BITMAP_IDENTITY_KEY,
    ] {
        // SAFETY: the relcache computes (and copies) the bitmap for an open
        // relation; members are offset by FirstLowInvalidHeapAttributeNumber.
        unsafe {
            let set = pg_sys::RelationGetIndexAttrBitmap(rel, kind);
            let mut m = -1;
            loop {
                m = pg_sys::bms_next_member(set, m);
                if m < 0 {
                    break;
                }
                out.push((m + pg_sys::FirstLowInvalidHeapAttributeNumber) as i16);
            }
        }
        if !out.is_empty() {
            break;
        }
    }
    out
}

/// [`key_attnums`] of the table `relid` (locked by the caller).
pub fn key_attnums_of(relid: pg_sys::Oid) -> Vec<i16> {
    // SAFETY: the table is locked by the caller; the relation is opened
    // without another lock and closed before returning.
    unsafe {
        let rel = pg_sys::relation_open(relid, pg_sys::NoLock as pg_sys::LOCKMODE);
        let attnums = key_attnums(rel);
        pg_sys::relation_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
        attnums
    }
}

/// The current database's name.
pub fn database_name() -> String {
    // SAFETY: reads a backend global.
    database_name_of(unsafe { pg_sys::MyDatabaseId }).unwrap_or_default()
}

/// The name of database `oid`, if it exists.
pub fn database_name_of(oid: pg_sys::Oid) -> Option<String> {
    // SAFETY: a catalog lookup; the palloc'd name is copied at once.
    unsafe {
        let name = pg_sys::get_database_name(oid);
        (!name.is_null()).then(|| std::ffi::CStr::from_ptr(name).to_string_lossy().into_owned())
    }
}

pub fn extension_installed() -> bool {
    // SAFETY: catalog lookups by name and a lock on the extension's oid.
    unsafe {
        let oid = pg_sys::get_extension_oid(c"pg_webhooks".as_ptr(), true);
        if oid == pg_sys::Oid::INVALID {
            return false;
        }
        pg_sys::LockDatabaseObject(pg_sys::ExtensionRelationId, oid, 0, pg_sys::AccessShareLock as i32);
        // Dropped while we waited for the lock?
        pg_sys::get_extension_oid(c"pg_webhooks".as_ptr(), true) == oid
    }
}

/// The role calling, before any switch to the owner.
pub fn current_user() -> pg_sys::Oid {
    // SAFETY: reads a backend global.
    unsafe { pg_sys::GetUserId() }
}

/// Whether `caller` may change, delete, pause, resume, invoke or redeliver
/// an event trigger owned by `owner`: a member of the owner role (with its
/// privileges), of the extension's owner, or a superuser.
pub fn may_manage(caller: pg_sys::Oid, owner: pg_sys::Oid, extension_owner: pg_sys::Oid) -> bool {
    // SAFETY: role membership lookups; has_privs_of_role is true for superusers.
    unsafe { pg_sys::has_privs_of_role(caller, owner) || pg_sys::has_privs_of_role(caller, extension_owner) }
}

/// The name of role `oid`, or its number when it was dropped.
pub fn role_name(oid: pg_sys::Oid) -> String {
    // SAFETY: GetUserNameFromId with noerr returns NULL for a dropped role.
    unsafe {
        let name = pg_sys::GetUserNameFromId(oid, true);
        if name.is_null() {
            format!("{}", oid.to_u32())
        } else {
            CStr::from_ptr(name).to_string_lossy().into_owned()
        }
    }
}

/// Runs `f` as the extension owner, with `search_path` set to `pg_catalog,
/// pg_temp` for its duration. Should `f` raise an ERROR, the
/// (sub)transaction abort restores the caller's identity and settings.
pub fn as_owner<R>(owner: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    let mut saved_user = pg_sys::Oid::INVALID;
    let mut saved_ctx: i32 = 0;
    // SAFETY: the pair is saved here and restored below or by the abort;
    // NewGUCNestLevel/AtEOXact_GUC bracket the search_path change as
    // PostgreSQL does for a function's SET clause.
    let nest = unsafe {
        pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_ctx);
        pg_sys::SetUserIdAndSecContext(owner, saved_ctx | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32);
        let nest = pg_sys::NewGUCNestLevel();
        pg_sys::set_config_option(
            c"search_path".as_ptr(),
            c"pg_catalog, pg_temp".as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SAVE,
            true,
            0,
            false,
        );
        nest
    };
    let result = f();
    // SAFETY: undoes exactly what was done above, in reverse order.
    unsafe {
        pg_sys::AtEOXact_GUC(true, nest);
        pg_sys::SetUserIdAndSecContext(saved_user, saved_ctx);
    }
    result
}
