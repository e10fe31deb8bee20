//! Catalog lookups and the switch to the extension owner's rights.

use pgrx::prelude::*;
use webhooks_core::{ApiError, SqlState};

use crate::errors::{raise, spi};

/// A table an event trigger may watch.
pub struct Table {
    pub oid: pg_sys::Oid,
    /// `schema.table`, each part quoted where needed: for messages and SQL.
    pub qualified: String,
}

/// Finds `schema.name`; it must be an ordinary or partitioned table.
pub fn resolve_table(schema: &str, name: &str) -> Table {
    let qualified = pgrx::spi::quote_qualified_identifier(schema, name);
    let row = spi(Spi::get_two_with_args::<pg_sys::Oid, i8>(
        "SELECT c.oid, c.relkind::pg_catalog.\"char\" FROM pg_catalog.pg_class c
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname OPERATOR(pg_catalog.=) $1 AND c.relname OPERATOR(pg_catalog.=) $2",
        &[schema.into(), name.into()],
    ));
    match row {
        (Some(oid), Some(kind)) => {
            if kind as u8 != b'r' && kind as u8 != b'p' {
                raise(
                    ApiError::new(SqlState::WrongObjectType, format!("invalid value for key \"table\": {qualified} is not a table"))
                        .with_hint("Event triggers watch ordinary or partitioned tables, not views, foreign tables or other relations."),
                );
            }
            Table { oid, qualified }
        }
        _ => raise(
            ApiError::new(SqlState::UndefinedTable, format!("invalid value for key \"table\": table {qualified} does not exist"))
                .with_hint("Give {\"schema\": ..., \"name\": ...} of an existing table; a bare name means schema public."),
        ),
    }
}

/// The caller must be able to read the table (events carry its rows) and to
/// put triggers on it.
pub fn check_table_privileges(table: &Table) {
    let ok = spi(Spi::get_one_with_args::<bool>(
        "SELECT pg_catalog.has_table_privilege($1, 'SELECT') AND pg_catalog.has_table_privilege($1, 'TRIGGER')",
        &[table.oid.into()],
    ));
    if ok != Some(true) {
        raise(
            ApiError::new(
                SqlState::InsufficientPrivilege,
                format!("permission denied to watch table {}: SELECT and TRIGGER privileges on it are required", table.qualified),
            )
            .with_hint("Ask the table's owner to GRANT SELECT, TRIGGER on it, or run this as the owner."),
        );
    }
}

/// The attribute number of a live column, if it exists.
pub fn column_attnum(table: pg_sys::Oid, column: &str) -> Option<i16> {
    spi(Spi::get_one_with_args::<i16>(
        "SELECT attnum FROM pg_catalog.pg_attribute
         WHERE attrelid = $1 AND attname OPERATOR(pg_catalog.=) $2 AND attnum > 0 AND NOT attisdropped",
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

/// Runs `f` as the extension owner. Should `f` raise an ERROR, the
/// (sub)transaction abort restores the caller's identity.
pub fn as_owner<R>(owner: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    let mut saved_user = pg_sys::Oid::INVALID;
    let mut saved_ctx: i32 = 0;
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_ctx);
        pg_sys::SetUserIdAndSecContext(owner, saved_ctx | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32);
    }
    let result = f();
    unsafe { pg_sys::SetUserIdAndSecContext(saved_user, saved_ctx) };
    result
}
