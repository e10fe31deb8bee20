//! Raising the core crate's `ApiError`s as PostgreSQL ERRORs.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use webhooks_core::{ApiError, SqlState};

fn errcode(state: SqlState) -> PgSqlErrorCode {
    use PgSqlErrorCode::*;
    match state {
        SqlState::InvalidParameterValue => ERRCODE_INVALID_PARAMETER_VALUE,
        SqlState::UndefinedTable => ERRCODE_UNDEFINED_TABLE,
        SqlState::UndefinedColumn => ERRCODE_UNDEFINED_COLUMN,
        SqlState::DuplicateObject => ERRCODE_DUPLICATE_OBJECT,
        SqlState::UndefinedObject => ERRCODE_UNDEFINED_OBJECT,
        SqlState::WrongObjectType => ERRCODE_WRONG_OBJECT_TYPE,
        SqlState::NoDataFound => ERRCODE_NO_DATA_FOUND,
        SqlState::ObjectInUse => ERRCODE_OBJECT_IN_USE,
        SqlState::ObjectNotInPrerequisiteState => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        SqlState::InsufficientPrivilege => ERRCODE_INSUFFICIENT_PRIVILEGE,
        SqlState::FeatureNotSupported => ERRCODE_FEATURE_NOT_SUPPORTED,
        SqlState::NullValueNotAllowed => ERRCODE_NULL_VALUE_NOT_ALLOWED,
        SqlState::ProgramLimitExceeded => ERRCODE_PROGRAM_LIMIT_EXCEEDED,
        SqlState::SyntaxError => ERRCODE_SYNTAX_ERROR,
    }
}

/// Raises `e` as an ERROR; never returns.
pub fn raise(e: ApiError) -> ! {
    let mut report = ErrorReport::new(errcode(e.state), e.message, "pg_webhooks");
    if let Some(hint) = e.hint {
        report = report.set_hint(hint);
    }
    report.report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

/// Unwraps a core result, raising its error.
pub trait OrRaise<T> {
    fn or_raise(self) -> T;
}

impl<T> OrRaise<T> for Result<T, ApiError> {
    fn or_raise(self) -> T {
        self.unwrap_or_else(|e| raise(e))
    }
}

/// Unwraps an SPI result. A query that returned no row gives the default
/// (`None`s); any other SPI failure is a bug, reported as an internal error.
pub fn spi<T: Default>(r: Result<T, pgrx::spi::Error>) -> T {
    match r {
        Ok(v) => v,
        Err(pgrx::spi::Error::InvalidPosition) => T::default(),
        Err(e) => error!("pg_webhooks: SPI failed: {e}"),
    }
}
