//! `JsonArg`: a `jsonb` argument whose parse failure is the caller's ERROR.
//!
//! pgrx's own `JsonB` converts through serde_json and panics (an internal
//! error) on JSON nested deeper than serde_json's recursion limit. Arguments
//! come from users, so the management functions take this type instead: it
//! keeps the parse error and lets the function raise 22023 with it.

use pgrx::pgrx_sql_entity_graph::metadata::{ArgumentError, ReturnsError, ReturnsRef, SqlMappingRef, SqlTranslatable};
use pgrx::prelude::*;
use pgrx::{direct_function_call, FromDatum};
use serde_json::Value;
use webhooks_core::ApiError;

use crate::errors::raise;

pub struct JsonArg(Result<Value, String>);

impl JsonArg {
    /// The value, or an ERROR naming the argument.
    pub fn value(self, name: &str) -> Value {
        self.0.unwrap_or_else(|e| {
            raise(
                ApiError::invalid(format!("invalid value for argument \"{name}\": {e}"))
                    .with_hint("JSON arguments may nest at most 128 levels deep."),
            )
        })
    }
}

impl FromDatum for JsonArg {
    unsafe fn from_polymorphic_datum(datum: pg_sys::Datum, is_null: bool, _: pg_sys::Oid) -> Option<JsonArg> {
        // SAFETY: the datum is a jsonb argument as PostgreSQL passes it.
        unsafe {
            if is_null {
                return None;
            }
            let detoasted = pg_sys::pg_detoast_datum_packed(datum.cast_mut_ptr());
            let text =
                direct_function_call::<&std::ffi::CStr>(pg_sys::jsonb_out, &[Some(pg_sys::Datum::from(detoasted))])
                    .expect("jsonb_out returns text");
            let parsed = match text.to_str() {
                Ok(s) => serde_json::from_str(s).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            pg_sys::pfree(text.as_ptr() as *mut std::ffi::c_void);
            Some(JsonArg(parsed))
        }
    }
}

// SAFETY: the SQL type is jsonb, which the argument is.
unsafe impl SqlTranslatable for JsonArg {
    const TYPE_IDENT: &'static str = pgrx::pgrx_resolved_type!(JsonArg);
    const TYPE_ORIGIN: pgrx::pgrx_sql_entity_graph::metadata::TypeOrigin =
        pgrx::pgrx_sql_entity_graph::metadata::TypeOrigin::External;
    const ARGUMENT_SQL: Result<SqlMappingRef, ArgumentError> = Ok(SqlMappingRef::literal("jsonb"));
    const RETURN_SQL: Result<ReturnsRef, ReturnsError> = Ok(ReturnsRef::One(SqlMappingRef::literal("jsonb")));
}

// SAFETY: arguments are unboxed through FromDatum, as for pgrx's own types.
unsafe impl<'fcx> pgrx::callconv::ArgAbi<'fcx> for JsonArg {
    unsafe fn unbox_arg_unchecked(arg: pgrx::callconv::Arg<'_, 'fcx>) -> Self {
        let index = arg.index();
        // SAFETY: pgrx passes an argument of this call.
        unsafe { arg.unbox_arg_using_from_datum().unwrap_or_else(|| panic!("argument {index} must not be null")) }
    }

    unsafe fn unbox_nullable_arg(arg: pgrx::callconv::Arg<'_, 'fcx>) -> pgrx::nullable::Nullable<Self> {
        // SAFETY: pgrx passes an argument of this call.
        unsafe { arg.unbox_arg_using_from_datum().into() }
    }
}
