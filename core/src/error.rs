//! Errors that reach the SQL caller. Each carries the SQLSTATE from
//! PostgreSQL's own table, so the glue can raise it unchanged.

use std::fmt;

/// The SQLSTATEs pg_webhooks raises, named as in PostgreSQL's errcodes.txt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlState {
    /// 22023: a malformed argument.
    InvalidParameterValue,
    /// 42P01: the table does not exist.
    UndefinedTable,
    /// 42703: a named column does not exist.
    UndefinedColumn,
    /// 42710: an event trigger of that name exists already.
    DuplicateObject,
    /// 42704: no event trigger of that name.
    UndefinedObject,
    /// 42809: the relation exists but is not a table.
    WrongObjectType,
    /// P0002: no event with that id.
    NoDataFound,
    /// 55006: the event is being delivered right now.
    ObjectInUse,
    /// 55000: the object does not allow this (manual invocation disabled).
    ObjectNotInPrerequisiteState,
    /// 42501: the caller lacks a privilege.
    InsufficientPrivilege,
    /// 22004: a NULL argument.
    NullValueNotAllowed,
    /// 0A000: a Hasura feature pg_webhooks does not implement.
    FeatureNotSupported,
    /// 54000: a definition or a part of it is larger than allowed.
    ProgramLimitExceeded,
    /// 42601: a condition that is not one SQL expression.
    SyntaxError,
}

impl SqlState {
    pub fn code(self) -> &'static str {
        match self {
            SqlState::InvalidParameterValue => "22023",
            SqlState::UndefinedTable => "42P01",
            SqlState::UndefinedColumn => "42703",
            SqlState::DuplicateObject => "42710",
            SqlState::UndefinedObject => "42704",
            SqlState::WrongObjectType => "42809",
            SqlState::NoDataFound => "P0002",
            SqlState::ObjectInUse => "55006",
            SqlState::ObjectNotInPrerequisiteState => "55000",
            SqlState::InsufficientPrivilege => "42501",
            SqlState::FeatureNotSupported => "0A000",
            SqlState::NullValueNotAllowed => "22004",
            SqlState::ProgramLimitExceeded => "54000",
            SqlState::SyntaxError => "42601",
        }
    }
}

/// An error for the SQL caller: a SQLSTATE, a message that names the key and
/// the value, and where one helps, a hint saying how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub state: SqlState,
    pub message: String,
    pub hint: Option<String>,
}

impl ApiError {
    pub fn new(state: SqlState, message: impl Into<String>) -> Self {
        ApiError { state, message: message.into(), hint: None }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(SqlState::InvalidParameterValue, message)
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Prefixes the message with where the error happened, e.g. the position
    /// inside a bulk request.
    pub fn within(mut self, context: &str) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.state.code())
    }
}

impl std::error::Error for ApiError {}

pub type ApiResult<T> = Result<T, ApiError>;
