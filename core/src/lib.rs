//! The parts of pg_webhooks that never call into PostgreSQL. They are plain
//! Rust, tested with plain `#[test]`s, and used by the extension's glue.
//!
//! - [`definition`]: `create_event_trigger` arguments, their rules, the
//!   normalized definition.
//! - [`cleanup`]: `cleanup_config`, scheduled cleanup of a trigger's events.
//! - [`query`]: Hasura request bodies for `webhooks.query`.
//! - [`env_template`]: `{{ENV_VAR}}` in webhook URLs.
//! - [`env_policy`]: which environment variables a role may use.
//! - [`error`]: errors with the SQLSTATE they raise.
//! - [`retry`]: success, retry or failure of an attempt; `Retry-After`.
//! - [`hasura_metadata`]: event triggers from a Hasura metadata export.
//! - [`signing`]: Standard Webhooks signatures and secrets.
//! - [`webhook_url`]: URLs as sent (WHATWG-normalized) and as logged
//!   (passwords redacted).
//! - [`ids`]: time-ordered (v7) uuids without a system call each.
//! - [`kriti`]: Kriti templates (parsed once, evaluated per event).
//! - [`body`]: the JSON body a webhook receives.
//! - [`request`]: an attempt's URL, headers and logged form from a
//!   definition and an event; scrubbing secrets from what comes back.
//! - [`http`]: one HTTP attempt (hyper, with a kept-alive pool of its own)
//!   and its outcome.
//! - [`pool`]: attempts in flight concurrently, lane by lane, on a small
//!   tokio runtime; each lane's window.
//! - [`destination`]: which addresses webhooks may be sent to.
//! - [`tls`]: the certificates HTTPS webhooks are checked against, client
//!   certificates.
//! - [`transform`]: Hasura's request and response transforms.
//! - [`resolve`]: host names for the HTTP client, cached, with the
//!   destination policy applied to every address.

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod body;
pub mod cleanup;
pub mod definition;
pub mod destination;
pub mod env_policy;
pub mod env_template;
pub mod error;
pub mod hasura_metadata;
pub mod http;
pub mod ids;
pub mod kriti;
pub mod pool;
pub mod query;
pub mod request;
pub mod resolve;
pub mod retry;
pub mod signing;
pub mod tls;
pub mod transform;
pub mod webhook_url;

pub use error::{ApiError, ApiResult, SqlState};
