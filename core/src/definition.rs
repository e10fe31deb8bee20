//! An event trigger's definition: parsing the arguments of
//! `create_event_trigger` (Hasura's v1 and v2 keys), validating every rule of
//! the contract, and the normalized form that is stored and returned.
//!
//! Nothing here touches PostgreSQL. Whether the table and its columns exist
//! is checked by the glue; environment variables are looked up through the
//! [`Context`] the caller passes, which also says which variables the caller
//! may use and how large a definition may be, so tests can supply their own.

use serde_json::{json, Map, Value};

use crate::cleanup::{self, CleanupConfig};
use crate::env_policy::EnvPolicy;
use crate::env_template;
use crate::error::{ApiError, ApiResult, SqlState};
use crate::transform::{self, RequestTransform, ResponseTransform};

/// At most this many headers per definition.
pub const MAX_HEADERS: usize = 64;
/// The longest webhook URL (template or resolved) accepted, in bytes.
pub const MAX_URL_BYTES: usize = 8192;
/// The longest header value accepted, in bytes.
pub const MAX_HEADER_VALUE_BYTES: usize = 8192;

/// Hasura's limit on trigger names, kept so definitions stay portable.
pub const MAX_NAME_LEN: usize = 42;

/// Headers pg_webhooks sets itself or that would break the HTTP framing.
const RESERVED_HEADERS: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "host",
    "connection",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
];

/// Keys of Hasura's event trigger API that pg_webhooks does not implement.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRef {
    pub schema: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Columns {
    All,
    List(Vec<String>),
}

impl Columns {
    pub fn names(&self) -> &[String] {
        match self {
            Columns::All => &[],
            Columns::List(v) => v,
        }
    }

    fn to_json(&self) -> Value {
        match self {
            Columns::All => json!("*"),
            Columns::List(v) => json!(v),
        }
    }
}

/// What one operation (insert, update or delete) captures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpSpec {
    /// For UPDATE: the event is written only if one of these changed value.
    pub columns: Columns,
    /// The columns that appear in `old` and `new`.
    pub payload: Columns,
    /// A SQL boolean expression over `OLD` and `NEW`, as in `CREATE TRIGGER
    /// ... WHEN (...)`: rows for which it is not true make no event.
    /// PostgreSQL checks it when the trigger is created.
    pub condition: Option<String>,
}

/// The longest `condition` accepted, in bytes.
pub const MAX_CONDITION_BYTES: usize = 8 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Webhook {
    /// A URL, possibly with `{{ENV_VAR}}` parts.
    Url(String),
    /// The name of an environment variable that holds the URL.
    FromEnv(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValue {
    Value(String),
    FromEnv(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: HeaderValue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryConf {
    pub num_retries: i32,
    pub interval_sec: i32,
    pub timeout_sec: i32,
    pub backoff: Backoff,
    /// The longest wait of exponential backoff.
    pub max_interval_sec: i32,
}

/// How the wait between attempts grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backoff {
    /// `interval_sec` every time (Hasura's behaviour).
    Fixed,
    /// `interval_sec * 2^(n-1)` before retry n, up to `max_interval_sec`,
    /// with jitter.
    Exponential,
}

impl Backoff {
    pub fn as_str(self) -> &'static str {
        match self {
            Backoff::Fixed => "fixed",
            Backoff::Exponential => "exponential",
        }
    }
}

impl Default for RetryConf {
    fn default() -> Self {
        RetryConf { num_retries: 0, interval_sec: 10, timeout_sec: 60, backoff: Backoff::Fixed, max_interval_sec: 3600 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Definition {
    pub name: String,
    pub table: TableRef,
    pub webhook: Webhook,
    pub insert: Option<OpSpec>,
    pub update: Option<OpSpec>,
    pub delete: Option<OpSpec>,
    pub headers: Vec<Header>,
    pub retry_conf: RetryConf,
    pub enable_manual: bool,
    /// Standard Webhooks signing, when asked for.
    pub signing: Option<Signing>,
    /// Limits on this trigger's requests, when asked for.
    pub throttle: Throttle,
    /// In what order its events are delivered.
    pub ordering: Ordering,
    /// Hasura's `request_transform`: method, URL, query, headers and body
    /// rewritten per event.
    pub request_transform: Option<RequestTransform>,
    /// Hasura's `response_transform`: what is stored of a 2xx answer.
    pub response_transform: Option<ResponseTransform>,
    /// Hasura's `cleanup_config`: the worker's scheduled cleanup of this
    /// trigger's ended events.
    pub cleanup: Option<CleanupConfig>,
    /// Whether changes applied by logical replication are captured too.
    pub trigger_on_replication: bool,
}

/// `"ordering"`: which events wait for which.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Ordering {
    /// Concurrently, in no promised order.
    #[default]
    None,
    /// Events of the same row (its primary key, or replica identity index)
    /// one at a time, in the order they were written; rows concurrently.
    Key,
    /// Every event of the trigger one at a time, in the order written.
    Trigger,
}

impl Ordering {
    pub fn as_str(self) -> &'static str {
        match self {
            Ordering::None => "none",
            Ordering::Key => "key",
            Ordering::Trigger => "trigger",
        }
    }
}

/// `"throttle"`: at most `max_concurrency` requests of the trigger in flight
/// (instead of `webhooks.max_concurrent_per_trigger`) and at most
/// `per_second` started per second, evenly spaced. `None`: no such limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Throttle {
    pub max_concurrency: Option<u32>,
    pub per_second: Option<u32>,
}

/// Where a definition's signing secrets come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signing {
    /// `signing_secret`: one or more `whsec_...` secrets, space-separated.
    Secrets(String),
    /// `signing_secret_from_env`: the name of an environment variable
    /// holding them.
    FromEnv(String),
}

/// The parsed arguments of `create_event_trigger`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateArgs {
    pub definition: Definition,
    pub replace: bool,
}

pub use crate::env_template::EnvLookup;

/// Bounds a grantee cannot lift: set by superusers through settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `webhooks.max_definition_size`: the arguments as JSON text, in bytes.
    pub max_definition_bytes: usize,
    /// `webhooks.max_timeout`: the largest `retry_conf.timeout_sec`.
    pub max_timeout_sec: i32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_definition_bytes: 64 * 1024, max_timeout_sec: 300 }
    }
}

/// What creating a definition may consult, and within which bounds.
pub struct Context<'a> {
    /// The server's environment.
    pub env: EnvLookup<'a>,
    /// Which of its variables the caller may use.
    pub env_policy: &'a EnvPolicy,
    pub limits: Limits,
}

impl Context<'_> {
    /// The value of `var` for key `key`: refused first when the caller may
    /// not use it (saying nothing of whether it exists), then looked up.
    fn read_env(&self, key: &str, var: &str) -> ApiResult<String> {
        self.env_policy.check(key, var)?;
        (self.env)(var).ok_or_else(|| missing_env(key, var))
    }
}

impl Definition {
    /// The normalized definition: every default filled in, keys in a fixed
    /// order. This is what `create_event_trigger` returns and stores.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("name".into(), json!(self.name));
        m.insert("table".into(), json!({"schema": self.table.schema, "name": self.table.name}));
        match &self.webhook {
            Webhook::Url(u) => m.insert("webhook".into(), json!(u)),
            Webhook::FromEnv(e) => m.insert("webhook_from_env".into(), json!(e)),
        };
        for (key, op) in [("insert", &self.insert), ("update", &self.update), ("delete", &self.delete)] {
            if let Some(op) = op {
                let mut spec = json!({"columns": op.columns.to_json(), "payload": op.payload.to_json()});
                if let Some(c) = &op.condition {
                    spec["condition"] = json!(c);
                }
                m.insert(key.into(), spec);
            }
        }
        let headers: Vec<Value> = self
            .headers
            .iter()
            .map(|h| match &h.value {
                HeaderValue::Value(v) => json!({"name": h.name, "value": v}),
                HeaderValue::FromEnv(e) => json!({"name": h.name, "value_from_env": e}),
            })
            .collect();
        m.insert("headers".into(), Value::Array(headers));
        match &self.signing {
            Some(Signing::Secrets(s)) => m.insert("signing_secret".into(), json!(s)),
            Some(Signing::FromEnv(e)) => m.insert("signing_secret_from_env".into(), json!(e)),
            None => None,
        };
        m.insert(
            "retry_conf".into(),
            json!({
                "num_retries": self.retry_conf.num_retries,
                "interval_sec": self.retry_conf.interval_sec,
                "timeout_sec": self.retry_conf.timeout_sec,
                "backoff": self.retry_conf.backoff.as_str(),
                "max_interval_sec": self.retry_conf.max_interval_sec,
            }),
        );
        m.insert("enable_manual".into(), json!(self.enable_manual));
        m.insert("ordering".into(), json!(self.ordering.as_str()));
        if self.throttle != Throttle::default() {
            let mut t = Map::new();
            if let Some(n) = self.throttle.max_concurrency {
                t.insert("max_concurrency".into(), json!(n));
            }
            if let Some(r) = self.throttle.per_second {
                t.insert("per_second".into(), json!(r));
            }
            m.insert("throttle".into(), Value::Object(t));
        }
        if let Some(t) = &self.request_transform {
            m.insert("request_transform".into(), t.to_json());
        }
        if let Some(t) = &self.response_transform {
            m.insert("response_transform".into(), t.to_json());
        }
        if let Some(c) = &self.cleanup {
            m.insert("cleanup_config".into(), c.to_json());
        }
        m.insert("trigger_on_replication".into(), json!(self.trigger_on_replication));
        Value::Object(m)
    }

    /// Reads back a stored definition. It was validated when stored, so the
    /// environment is not consulted again.
    pub fn from_stored(v: &Value) -> ApiResult<Definition> {
        let ctx = Context {
            env: &|_| Some("http://stored.invalid/".into()),
            env_policy: &EnvPolicy::unrestricted(),
            limits: Limits { max_definition_bytes: usize::MAX, max_timeout_sec: i32::MAX },
        };
        parse_definition(v, &ctx, false).map(|a| a.definition)
    }

    /// Every column named in a `columns` or `payload` list, each once, in the
    /// order of first mention.
    pub fn listed_columns(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for op in [&self.insert, &self.update, &self.delete].into_iter().flatten() {
            for c in op.columns.names().iter().chain(op.payload.names()) {
                if !out.contains(c) {
                    out.push(c.clone());
                }
            }
        }
        out
    }
}

/// Parses and validates the arguments of `create_event_trigger`.
pub fn parse_create_args(v: &Value, ctx: &Context) -> ApiResult<CreateArgs> {
    let size = v.to_string().len();
    if size > ctx.limits.max_definition_bytes {
        return Err(ApiError::new(
            SqlState::ProgramLimitExceeded,
            format!(
                "the event trigger definition is {size} bytes long, more than webhooks.max_definition_size ({} bytes)",
                ctx.limits.max_definition_bytes
            ),
        )
        .with_hint("Shorten the definition (headers, URL, column lists), or ask a superuser to raise webhooks.max_definition_size."));
    }
    parse_definition(v, ctx, true)
}

fn parse_definition(v: &Value, ctx: &Context, check_env: bool) -> ApiResult<CreateArgs> {
    let obj = v.as_object().ok_or_else(|| {
        ApiError::invalid(format!(
            "create_event_trigger expects a JSON object of arguments, got {}",
            describe(v)
        ))
        .with_hint(r#"Pass e.g. '{"name": "t", "table": "users", "webhook": "http://...", "insert": {"columns": "*"}}'::jsonb."#)
    })?;

    for key in obj.keys() {
        const KNOWN: &[&str] = &[
            "name",
            "table",
            "webhook",
            "webhook_from_env",
            "insert",
            "update",
            "delete",
            "headers",
            "retry_conf",
            "replace",
            "enable_manual",
            "source",
            "signing_secret",
            "signing_secret_from_env",
            "throttle",
            "ordering",
            "request_transform",
            "response_transform",
            "cleanup_config",
            "trigger_on_replication",
        ];
        if !KNOWN.contains(&key.as_str()) {
            return Err(unknown_key("", key, KNOWN));
        }
    }

    let name = parse_name(obj.get("name"))?;
    let table = parse_table(obj.get("table"))?;

    let webhook = match (obj.get("webhook"), obj.get("webhook_from_env")) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid("keys \"webhook\" and \"webhook_from_env\" exclude each other")
                .with_hint("Give exactly one of them."))
        }
        (None, None) | (Some(Value::Null), None) | (None, Some(Value::Null)) => return Err(ApiError::invalid(
            "one of the keys \"webhook\" or \"webhook_from_env\" is required",
        )
        .with_hint(
            "Give the URL in \"webhook\", or the name of an environment variable holding it in \"webhook_from_env\".",
        )),
        (Some(w), None) => {
            let url = expect_str("webhook", w)?;
            if check_env {
                check_length("webhook", url, MAX_URL_BYTES)?;
                let resolved = env_template::render_with(url, &|var| ctx.read_env("webhook", var))?;
                check_url("webhook", &resolved, url)?;
            }
            Webhook::Url(url.to_string())
        }
        (None, Some(e)) => {
            let var = parse_env_name("webhook_from_env", e)?;
            if check_env {
                let value = ctx.read_env("webhook_from_env", &var)?;
                check_url("webhook_from_env", &value, &format!("the value of {var}"))?;
            }
            Webhook::FromEnv(var)
        }
    };

    let insert = parse_op("insert", obj.get("insert"))?;
    let update = parse_op("update", obj.get("update"))?;
    let delete = parse_op("delete", obj.get("delete"))?;
    let headers = parse_headers(obj.get("headers"), ctx, check_env)?;
    let retry_conf = parse_retry_conf(obj.get("retry_conf"), ctx.limits.max_timeout_sec)?;
    let replace = parse_bool("replace", obj.get("replace"), false)?;
    let enable_manual = parse_bool("enable_manual", obj.get("enable_manual"), true)?;
    let signing = parse_signing(obj.get("signing_secret"), obj.get("signing_secret_from_env"), ctx, check_env)?;
    parse_source(obj.get("source"))?;
    let throttle = parse_throttle(obj.get("throttle"))?;
    let ordering = match obj.get("ordering") {
        None | Some(Value::Null) => Ordering::None,
        Some(Value::String(s)) if s == "none" => Ordering::None,
        Some(Value::String(s)) if s == "key" => Ordering::Key,
        Some(Value::String(s)) if s == "trigger" => Ordering::Trigger,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "invalid value for key \"ordering\": expected \"none\", \"key\" or \"trigger\", got {}",
                describe(other)
            )))
        }
    };

    let request_transform = match obj.get("request_transform") {
        None | Some(Value::Null) => None,
        Some(t) => Some(transform::parse_request(t)?),
    };
    let response_transform = match obj.get("response_transform") {
        None | Some(Value::Null) => None,
        Some(t) => Some(transform::parse_response(t)?),
    };
    let cleanup = match obj.get("cleanup_config") {
        None | Some(Value::Null) => None,
        Some(c) => Some(cleanup::parse(c)?),
    };
    let trigger_on_replication = parse_bool("trigger_on_replication", obj.get("trigger_on_replication"), false)?;

    if insert.is_none() && update.is_none() && delete.is_none() && !enable_manual {
        return Err(ApiError::invalid(
            "the event trigger captures nothing: none of \"insert\", \"update\", \"delete\" is given and \"enable_manual\" is false",
        )
        .with_hint("Add at least one operation, e.g. \"insert\": {\"columns\": \"*\"}, or set \"enable_manual\" to true."));
    }

    Ok(CreateArgs {
        definition: Definition {
            name,
            table,
            webhook,
            insert,
            update,
            delete,
            headers,
            retry_conf,
            enable_manual,
            signing,
            throttle,
            ordering,
            request_transform,
            response_transform,
            cleanup,
            trigger_on_replication,
        },
        replace,
    })
}

fn parse_throttle(v: Option<&Value>) -> ApiResult<Throttle> {
    let o = match v {
        None | Some(Value::Null) => return Ok(Throttle::default()),
        Some(Value::Object(o)) => o,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "invalid value for key \"throttle\": expected an object like {{\"max_concurrency\": 4, \"per_second\": 50}}, got {}",
                describe(other)
            )))
        }
    };
    const KEYS: &[&str] = &["max_concurrency", "per_second"];
    for k in o.keys() {
        if !KEYS.contains(&k.as_str()) {
            return Err(unknown_key("throttle.", k, KEYS));
        }
    }
    let limit = |key: &str| -> ApiResult<Option<u32>> {
        match o.get(key) {
            None | Some(Value::Null) => Ok(None),
            v => parse_int(&format!("throttle.{key}"), v, 1, 1).map(|n| Some(n as u32)),
        }
    };
    Ok(Throttle { max_concurrency: limit("max_concurrency")?, per_second: limit("per_second")? })
}

/// Validates an event trigger name: `^[A-Za-z][A-Za-z0-9_-]*$`, at most 42
/// characters.
pub fn parse_name(v: Option<&Value>) -> ApiResult<String> {
    let v = required("name", v)?;
    let name = expect_str("name", v)?;
    validate_name(name)?;
    Ok(name.to_string())
}

pub fn validate_name(name: &str) -> ApiResult<()> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !first_ok || !rest_ok {
        return Err(ApiError::invalid(format!("invalid value for key \"name\": {}", json!(name)))
            .with_hint("A name starts with a letter and holds only letters, digits, \"_\" and \"-\"."));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(ApiError::invalid(format!(
            "invalid value for key \"name\": {} is {} characters long, the limit is {MAX_NAME_LEN}",
            json!(name),
            name.len()
        ))
        .with_hint("Choose a shorter name."));
    }
    Ok(())
}

fn parse_table(v: Option<&Value>) -> ApiResult<TableRef> {
    let v = required("table", v)?;
    let (schema, name) = match v {
        Value::String(s) => ("public".to_string(), s.clone()),
        Value::Object(o) => {
            for key in o.keys() {
                if key != "schema" && key != "name" {
                    return Err(unknown_key("table.", key, &["schema", "name"]));
                }
            }
            let name = expect_str("table.name", required("table.name", o.get("name"))?)?.to_string();
            let schema = match o.get("schema") {
                None | Some(Value::Null) => "public".to_string(),
                Some(s) => expect_str("table.schema", s)?.to_string(),
            };
            (schema, name)
        }
        other => {
            return Err(ApiError::invalid(format!(
                "invalid value for key \"table\": expected {{\"schema\": ..., \"name\": ...}} or a table name, got {}",
                describe(other)
            )))
        }
    };
    for (key, value) in [("table.schema", &schema), ("table.name", &name)] {
        if value.is_empty() || value.contains('\0') {
            return Err(ApiError::invalid(format!("invalid value for key \"{key}\": {}", json!(value)))
                .with_hint("Give the name of an existing table."));
        }
    }
    Ok(TableRef { schema, name })
}

fn parse_op(key: &str, v: Option<&Value>) -> ApiResult<Option<OpSpec>> {
    let v = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(v) => v,
    };
    let o = v.as_object().ok_or_else(|| {
        ApiError::invalid(format!(
            "invalid value for key \"{key}\": expected an object like {{\"columns\": \"*\"}}, got {}",
            describe(v)
        ))
    })?;
    for k in o.keys() {
        if k != "columns" && k != "payload" && k != "condition" {
            return Err(unknown_key(&format!("{key}."), k, &["columns", "payload", "condition"]));
        }
    }
    let columns_key = format!("{key}.columns");
    let columns = parse_columns(&columns_key, required(&columns_key, o.get("columns"))?)?;
    let payload = match o.get("payload") {
        None | Some(Value::Null) => Columns::All,
        Some(p) => parse_columns(&format!("{key}.payload"), p)?,
    };
    let condition = match o.get("condition") {
        None | Some(Value::Null) => None,
        Some(Value::String(c)) if c.trim().is_empty() => {
            return Err(ApiError::invalid(format!("invalid value for key \"{key}.condition\": the condition is empty"))
                .with_hint("Give a SQL boolean expression over OLD and NEW, or leave the key out."))
        }
        Some(Value::String(c)) if c.len() > MAX_CONDITION_BYTES => {
            return Err(ApiError::invalid(format!(
                "invalid value for key \"{key}.condition\": {} bytes, more than {MAX_CONDITION_BYTES}",
                c.len()
            )))
        }
        Some(Value::String(c)) if c.contains('\0') => {
            return Err(ApiError::invalid(format!(
                "invalid value for key \"{key}.condition\": it contains a NUL character"
            )))
        }
        Some(Value::String(c)) => Some(c.trim().to_string()),
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "invalid value for key \"{key}.condition\": expected a SQL expression as a string, got {}",
                describe(other)
            )))
        }
    };
    Ok(Some(OpSpec { columns, payload, condition }))
}

fn parse_columns(key: &str, v: &Value) -> ApiResult<Columns> {
    match v {
        Value::String(s) if s == "*" => Ok(Columns::All),
        Value::Array(items) => {
            if items.is_empty() {
                return Err(ApiError::invalid(format!("invalid value for key \"{key}\": the column list is empty"))
                    .with_hint("List at least one column, or give \"*\" for all columns."));
            }
            let mut names: Vec<String> = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let name = item.as_str().ok_or_else(|| {
                    ApiError::invalid(format!(
                        "invalid value for key \"{key}[{i}]\": expected a column name, got {}",
                        describe(item)
                    ))
                })?;
                if name.is_empty() || name.contains('\0') {
                    return Err(ApiError::invalid(format!("invalid value for key \"{key}[{i}]\": {}", json!(name))));
                }
                if names.iter().any(|n| n == name) {
                    return Err(ApiError::invalid(format!(
                        "invalid value for key \"{key}\": column {} is listed twice",
                        json!(name)
                    )));
                }
                names.push(name.to_string());
            }
            Ok(Columns::List(names))
        }
        other => Err(ApiError::invalid(format!(
            "invalid value for key \"{key}\": expected \"*\" or a list of column names, got {}",
            describe(other)
        ))),
    }
}

fn parse_headers(v: Option<&Value>, ctx: &Context, check_env: bool) -> ApiResult<Vec<Header>> {
    let items = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) if check_env && items.len() > MAX_HEADERS => {
            return Err(ApiError::new(
                SqlState::ProgramLimitExceeded,
                format!("invalid value for key \"headers\": {} headers, the limit is {MAX_HEADERS}", items.len()),
            )
            .with_hint("Send fewer headers."))
        }
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "invalid value for key \"headers\": expected a list of {{\"name\": ..., \"value\": ...}}, got {}",
                describe(other)
            )))
        }
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = format!("headers[{i}]");
        let o = item.as_object().ok_or_else(|| {
            ApiError::invalid(format!(
                "invalid value for key \"{at}\": expected {{\"name\": ..., \"value\": ...}}, got {}",
                describe(item)
            ))
        })?;
        for k in o.keys() {
            if !["name", "value", "value_from_env"].contains(&k.as_str()) {
                return Err(unknown_key(&format!("{at}."), k, &["name", "value", "value_from_env"]));
            }
        }
        let name_key = format!("{at}.name");
        let name = expect_str(&name_key, required(&name_key, o.get("name"))?)?;
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(ApiError::invalid(format!(
                "invalid value for key \"{name_key}\": {} is not a valid HTTP header name",
                json!(name)
            ))
            .with_hint("Header names are made of letters, digits and !#$%&'*+-.^_`|~, without spaces."));
        }
        if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            return Err(ApiError::invalid(format!(
                "invalid value for key \"{name_key}\": header {} is set by pg_webhooks itself",
                json!(name)
            ))
            .with_hint("Remove this header from the definition."));
        }
        let value = match (o.get("value"), o.get("value_from_env")) {
            (Some(v), None) => {
                let key = format!("{at}.value");
                let s = expect_str(&key, v)?;
                if check_env {
                    check_length(&key, s, MAX_HEADER_VALUE_BYTES)?;
                }
                check_header_value(&key, s)?;
                HeaderValue::Value(s.to_string())
            }
            (None, Some(e)) => {
                let key = format!("{at}.value_from_env");
                let var = parse_env_name(&key, e)?;
                if check_env {
                    let val = ctx.read_env(&key, &var)?;
                    check_header_value(&format!("{key} (the value of {var})"), &val)?;
                }
                HeaderValue::FromEnv(var)
            }
            (Some(_), Some(_)) => {
                return Err(ApiError::invalid(format!(
                    "keys \"{at}.value\" and \"{at}.value_from_env\" exclude each other"
                )))
            }
            (None, None) => {
                return Err(ApiError::invalid(format!("key \"{at}.value\" or \"{at}.value_from_env\" is required")))
            }
        };
        out.push(Header { name: name.to_string(), value });
    }
    Ok(out)
}

fn check_header_value(key: &str, s: &str) -> ApiResult<()> {
    header_value_problem(s)
        .map_or(Ok(()), |why| Err(ApiError::invalid(format!("invalid value for key \"{key}\": {why}"))))
}

/// Why `s` cannot be sent as an HTTP header value (RFC 9110: visible
/// characters, spaces and tabs; no other control character), if it cannot.
pub fn header_value_problem(s: &str) -> Option<String> {
    let (at, c) = s.char_indices().find(|(_, c)| c.is_ascii_control() && *c != '\t')?;
    Some(format!(
        "a header value must not contain control characters (found {} at byte {at})",
        crate::webhook_url::describe_char(c)
    ))
}

/// RFC 9110 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn parse_retry_conf(v: Option<&Value>, max_timeout_sec: i32) -> ApiResult<RetryConf> {
    let o = match v {
        None | Some(Value::Null) => return Ok(RetryConf::default()),
        Some(Value::Object(o)) => o,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "invalid value for key \"retry_conf\": expected an object like {{\"num_retries\": 3}}, got {}",
                describe(other)
            )))
        }
    };
    const KEYS: &[&str] = &["num_retries", "interval_sec", "timeout_sec", "backoff", "max_interval_sec"];
    for k in o.keys() {
        if !KEYS.contains(&k.as_str()) {
            return Err(unknown_key("retry_conf.", k, KEYS));
        }
    }
    let d = RetryConf::default();
    let timeout_sec = parse_int("retry_conf.timeout_sec", o.get("timeout_sec"), d.timeout_sec, 1)?;
    if timeout_sec > max_timeout_sec {
        return Err(ApiError::invalid(format!(
            "invalid value for key \"retry_conf.timeout_sec\": {timeout_sec} is more than webhooks.max_timeout ({max_timeout_sec} s)"
        ))
        .with_hint(format!("Give at most {max_timeout_sec}, or ask a superuser to raise webhooks.max_timeout.")));
    }
    let backoff = match o.get("backoff") {
        None | Some(Value::Null) => d.backoff,
        Some(Value::String(s)) if s == "fixed" => Backoff::Fixed,
        Some(Value::String(s)) if s == "exponential" => Backoff::Exponential,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "invalid value for key \"retry_conf.backoff\": expected \"fixed\" or \"exponential\", got {}",
                describe(other)
            )))
        }
    };
    Ok(RetryConf {
        num_retries: parse_int("retry_conf.num_retries", o.get("num_retries"), d.num_retries, 0)?,
        interval_sec: parse_int("retry_conf.interval_sec", o.get("interval_sec"), d.interval_sec, 0)?,
        timeout_sec,
        backoff,
        max_interval_sec: parse_int("retry_conf.max_interval_sec", o.get("max_interval_sec"), d.max_interval_sec, 1)?,
    })
}

/// A part of the definition longer than `max` bytes is refused.
fn check_length(key: &str, s: &str, max: usize) -> ApiResult<()> {
    if s.len() > max {
        return Err(ApiError::new(
            SqlState::ProgramLimitExceeded,
            format!("invalid value for key \"{key}\": {} bytes long, the limit is {max}", s.len()),
        )
        .with_hint("Shorten it."));
    }
    Ok(())
}

fn parse_int(key: &str, v: Option<&Value>, default: i32, min: i32) -> ApiResult<i32> {
    let v = match v {
        None | Some(Value::Null) => return Ok(default),
        Some(v) => v,
    };
    let n = v.as_i64().or_else(|| v.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 1e18).map(|f| f as i64));
    match n {
        Some(n) if n >= min as i64 && n <= i32::MAX as i64 => Ok(n as i32),
        _ => Err(ApiError::invalid(format!(
            "invalid value for key \"{key}\": expected an integer >= {min}, got {}",
            describe(v)
        ))),
    }
}

pub fn parse_bool(key: &str, v: Option<&Value>, default: bool) -> ApiResult<bool> {
    match v {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(ApiError::invalid(format!(
            "invalid value for key \"{key}\": expected true or false, got {}",
            describe(other)
        ))),
    }
}

/// `source` is accepted for Hasura compatibility; only `"default"` exists.
pub fn parse_source(v: Option<&Value>) -> ApiResult<()> {
    match v {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(s)) if s == "default" => Ok(()),
        Some(other) => Err(ApiError::invalid(format!(
            "invalid value for key \"source\": {}; pg_webhooks serves only the source \"default\"",
            describe(other)
        ))
        .with_hint("Omit \"source\" or set it to \"default\".")),
    }
}

fn parse_signing(
    secret: Option<&Value>,
    from_env: Option<&Value>,
    ctx: &Context,
    check: bool,
) -> ApiResult<Option<Signing>> {
    let bad = |key: &str, why: String| {
        ApiError::invalid(format!("invalid value for key \"{key}\": {why}")).with_hint(
            "Give one or more secrets of the form whsec_<base64 of 24 to 64 bytes>, separated by spaces; webhooks.generate_signing_secret() makes one.",
        )
    };
    match (secret, from_env) {
        (None | Some(Value::Null), None | Some(Value::Null)) => Ok(None),
        (Some(_), Some(_)) => {
            Err(ApiError::invalid("keys \"signing_secret\" and \"signing_secret_from_env\" exclude each other")
                .with_hint("Give exactly one of them."))
        }
        (Some(v), None) => {
            let s = expect_str("signing_secret", v)?;
            crate::signing::parse(s).map_err(|why| bad("signing_secret", why))?;
            Ok(Some(Signing::Secrets(s.trim().to_string())))
        }
        (None, Some(v)) => {
            let var = parse_env_name("signing_secret_from_env", v)?;
            if check {
                let value = ctx.read_env("signing_secret_from_env", &var)?;
                crate::signing::parse(&value)
                    .map_err(|why| bad("signing_secret_from_env", format!("the value of {var}: {why}")))?;
            }
            Ok(Some(Signing::FromEnv(var)))
        }
    }
}

fn parse_env_name(key: &str, v: &Value) -> ApiResult<String> {
    let s = expect_str(key, v)?;
    if !env_template::is_env_name(s) {
        return Err(ApiError::invalid(format!(
            "invalid value for key \"{key}\": {} is not an environment variable name",
            json!(s)
        )));
    }
    Ok(s.to_string())
}

fn missing_env(key: &str, var: &str) -> ApiError {
    ApiError::invalid(format!(
        "invalid value for key \"{key}\": environment variable \"{var}\" is not set in the PostgreSQL server's environment"
    ))
    .with_hint(format!("Set {var} in the environment of the postmaster (e.g. the service unit) and restart it."))
}

/// Checks that a webhook URL is absolute `http://` or `https://` with a
/// host, and can be sent once normalized as the WHATWG URL standard does
/// (see [`crate::webhook_url`]).
pub fn check_url(key: &str, resolved: &str, shown: &str) -> ApiResult<()> {
    crate::webhook_url::normalize(resolved).map(|_| ()).map_err(|why| {
        ApiError::invalid(format!(
            "invalid value for key \"{key}\": {} {why}",
            json!(crate::webhook_url::redact_password(shown))
        ))
        .with_hint(
            "Give an absolute URL such as \"https://example.com/hook\"; percent-encode spaces and control characters.",
        )
    })
}

pub(crate) fn required<'a>(key: &str, v: Option<&'a Value>) -> ApiResult<&'a Value> {
    match v {
        None | Some(Value::Null) => Err(ApiError::invalid(format!("key \"{key}\" is required"))),
        Some(v) => Ok(v),
    }
}

pub(crate) fn expect_str<'a>(key: &str, v: &'a Value) -> ApiResult<&'a str> {
    v.as_str().ok_or_else(|| {
        ApiError::invalid(format!("invalid value for key \"{key}\": expected a string, got {}", describe(v)))
    })
}

pub(crate) fn unknown_key(prefix: &str, key: &str, known: &[&str]) -> ApiError {
    let close = known.iter().find(|k| is_near(k, key));
    let hint = match close {
        Some(k) => format!("Did you mean \"{prefix}{k}\"?"),
        None => format!(
            "Known keys here: {}.",
            known.iter().map(|k| format!("\"{prefix}{k}\"")).collect::<Vec<_>>().join(", ")
        ),
    };
    ApiError::invalid(format!("unknown key \"{prefix}{key}\"")).with_hint(hint)
}

/// Two keys are near when one is a prefix of the other or they differ by a
/// couple of edits (`retry_config` for `retry_conf`, `webhok` for `webhook`).
fn is_near(a: &str, b: &str) -> bool {
    (a.len() >= 4 && b.len() >= 4 && (a.starts_with(b) || b.starts_with(a))) || edit_distance(a, b) <= 2
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// A short rendering of a JSON value for error messages.
pub fn describe(v: &Value) -> String {
    let kind = match v {
        Value::Null => return "null".into(),
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    let mut text = v.to_string();
    if text.chars().count() > 60 {
        text = text.chars().take(57).collect::<String>() + "...";
    }
    format!("{kind} {text}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOOK_URL" => Some("https://hooks.example.com/in".into()),
            "HOOK_HOST" => Some("hooks.example.com".into()),
            "SECRET" => Some("s3cr3t".into()),
            "BAD_HEADER" => Some("a\r\nInjected: 1".into()),
            "NOT_A_URL" => Some("ftp://x".into()),
            _ => None,
        }
    }

    fn parse(v: Value) -> ApiResult<CreateArgs> {
        parse_create_args(&v, &Context { env: &env, env_policy: &EnvPolicy::unrestricted(), limits: Limits::default() })
    }

    fn base() -> Value {
        json!({"name": "t1", "table": "users", "webhook": "http://127.0.0.1:9/hook", "insert": {"columns": "*"}})
    }

    fn with(key: &str, value: Value) -> Value {
        let mut b = base();
        b[key] = value;
        b
    }

    fn err(v: Value) -> ApiError {
        parse(v).expect_err("expected an error")
    }

    #[test]
    fn minimal_definition_gets_every_default() {
        let a = parse(base()).unwrap();
        assert!(!a.replace);
        assert_eq!(
            a.definition.to_json(),
            json!({
                "name": "t1",
                "table": {"schema": "public", "name": "users"},
                "webhook": "http://127.0.0.1:9/hook",
                "insert": {"columns": "*", "payload": "*"},
                "headers": [],
                "retry_conf": {"num_retries": 0, "interval_sec": 10, "timeout_sec": 60, "backoff": "fixed", "max_interval_sec": 3600},
                "enable_manual": true,
                "ordering": "none",
                "trigger_on_replication": false
            })
        );
    }

    #[test]
    fn full_definition_round_trips() {
        let v = json!({
            "name": "order-created_2",
            "table": {"schema": "Sales Data", "name": "Orders"},
            "webhook_from_env": "HOOK_URL",
            "insert": {"columns": "*", "payload": ["id", "select"]},
            "update": {"columns": ["status"], "payload": "*"},
            "delete": {"columns": "*"},
            "headers": [{"name": "X-Api-Key", "value_from_env": "SECRET"}, {"name": "X-Plain", "value": "v"}],
            "retry_conf": {"num_retries": 3, "interval_sec": 0, "timeout_sec": 1},
            "replace": true,
            "enable_manual": false,
            "source": "default"
        });
        let a = parse(v).unwrap();
        assert!(a.replace);
        let d = &a.definition;
        assert_eq!(d.table, TableRef { schema: "Sales Data".into(), name: "Orders".into() });
        assert_eq!(d.webhook, Webhook::FromEnv("HOOK_URL".into()));
        assert_eq!(d.retry_conf, RetryConf { num_retries: 3, interval_sec: 0, timeout_sec: 1, ..RetryConf::default() });
        assert_eq!(d.listed_columns(), vec!["id", "select", "status"]);
        let stored = d.to_json();
        assert_eq!(Definition::from_stored(&stored).unwrap(), *d);
        assert!(stored.get("replace").is_none() && stored.get("source").is_none());
    }

    #[test]
    fn non_object_arguments() {
        for v in [json!([1]), json!("x"), json!(null), json!(3)] {
            let e = err(v);
            assert_eq!(e.state, SqlState::InvalidParameterValue);
            assert!(e.message.contains("expects a JSON object"), "{}", e.message);
        }
    }

    #[test]
    fn unknown_keys_are_named_with_a_suggestion() {
        let e = err(with("retry_config", json!({})));
        assert_eq!(e.state, SqlState::InvalidParameterValue);
        assert_eq!(e.message, "unknown key \"retry_config\"");
        assert_eq!(e.hint.as_deref(), Some("Did you mean \"retry_conf\"?"));
        let e = err(with("insert", json!({"columns": "*", "paylod": "*"})));
        assert_eq!(e.message, "unknown key \"insert.paylod\"");
        let e = err(with("retry_conf", json!({"retries": 1})));
        assert_eq!(e.message, "unknown key \"retry_conf.retries\"");
        let e = err(with("table", json!({"name": "u", "shema": "public"})));
        assert_eq!(e.message, "unknown key \"table.shema\"");
        let e = err(with("headers", json!([{"name": "a", "valeu": "b"}])));
        assert_eq!(e.message, "unknown key \"headers[0].valeu\"");
    }

    #[test]
    fn hasuras_transform_cleanup_and_replication_keys_are_taken() {
        let d = parse(with("request_transform", json!({"version": 2, "method": "GET", "body": {"action": "remove"}})))
            .unwrap();
        let stored = d.definition.to_json();
        assert_eq!(stored["request_transform"]["method"], json!("GET"));
        assert_eq!(stored["trigger_on_replication"], json!(false));
        assert_eq!(Definition::from_stored(&stored).unwrap(), d.definition);
        let d = parse(with("cleanup_config", json!({"schedule": "0 0 * * *", "clear_older_than": 24}))).unwrap();
        assert_eq!(d.definition.cleanup.unwrap().batch_size, 10_000);
        assert!(parse(with("trigger_on_replication", json!(true))).unwrap().definition.trigger_on_replication);
        let e = err(with("trigger_on_replication", json!("yes")));
        assert!(e.message.contains("trigger_on_replication"), "{}", e.message);
        let e = err(with("response_transform", json!({"body": "{{"})));
        assert!(e.message.contains("response_transform.body"), "{}", e.message);
    }

    #[test]
    fn name_rule() {
        assert!(parse(with("name", json!("a"))).is_ok());
        assert!(parse(with("name", json!("A_b-9"))).is_ok());
        assert!(parse(with("name", json!("a".repeat(42)))).is_ok());
        for bad in ["", "1abc", "_a", "a b", "a.b", "ünï", "a;drop"] {
            let e = err(with("name", json!(bad)));
            assert_eq!(e.state, SqlState::InvalidParameterValue, "{bad}");
            assert!(e.message.starts_with("invalid value for key \"name\""), "{}", e.message);
        }
        let e = err(with("name", json!("a".repeat(43))));
        assert!(e.message.contains("43 characters long, the limit is 42"), "{}", e.message);
        let e = err(with("name", json!(5)));
        assert_eq!(e.message, "invalid value for key \"name\": expected a string, got number 5");
        let mut v = base();
        v.as_object_mut().unwrap().remove("name");
        assert_eq!(err(v).message, "key \"name\" is required");
    }

    #[test]
    fn table_forms() {
        let a = parse(with("table", json!({"name": "u"}))).unwrap();
        assert_eq!(a.definition.table, TableRef { schema: "public".into(), name: "u".into() });
        let a = parse(with("table", json!({"schema": "s", "name": "u"}))).unwrap();
        assert_eq!(a.definition.table.schema, "s");
        let e = err(with("table", json!(42)));
        assert!(e.message.starts_with("invalid value for key \"table\""), "{}", e.message);
        let e = err(with("table", json!({"schema": "s"})));
        assert_eq!(e.message, "key \"table.name\" is required");
        let e = err(with("table", json!("")));
        assert!(e.message.starts_with("invalid value for key \"table.name\""), "{}", e.message);
        let mut v = base();
        v.as_object_mut().unwrap().remove("table");
        assert_eq!(err(v).message, "key \"table\" is required");
    }

    #[test]
    fn webhook_rules() {
        assert!(parse(with("webhook", json!("https://x.example/a?b=c"))).is_ok());
        let a = parse(with("webhook", json!("https://{{HOOK_HOST}}/in"))).unwrap();
        assert_eq!(
            a.definition.webhook,
            Webhook::Url("https://{{HOOK_HOST}}/in".into()),
            "the template is stored, not its value"
        );
        for bad in ["ftp://x/y", "not a url", "/relative", "http://", "mailto:a@b"] {
            let e = err(with("webhook", json!(bad)));
            assert_eq!(e.state, SqlState::InvalidParameterValue, "{bad}");
            assert!(e.message.starts_with("invalid value for key \"webhook\""), "{bad}: {}", e.message);
        }
        let e = err(with("webhook", json!("http://{{NO_SUCH_VAR}}/x")));
        assert!(e.message.contains("NO_SUCH_VAR") && e.message.contains("webhook"), "{}", e.message);
        let e = err(with("webhook", json!(["http://x"])));
        assert!(e.message.contains("expected a string"), "{}", e.message);

        let mut v = base();
        v.as_object_mut().unwrap().remove("webhook");
        assert!(err(v.clone()).message.contains("one of the keys \"webhook\" or \"webhook_from_env\" is required"));
        v["webhook_from_env"] = json!("HOOK_URL");
        assert!(parse(v.clone()).is_ok());
        v["webhook_from_env"] = json!("MISSING_VAR");
        let e = err(v.clone());
        assert_eq!(e.state, SqlState::InvalidParameterValue);
        assert!(e.message.contains("\"MISSING_VAR\" is not set"), "{}", e.message);
        v["webhook_from_env"] = json!("NOT_A_URL");
        assert!(err(v.clone()).message.contains("must use http:// or https://"));
        v["webhook_from_env"] = json!("has space");
        assert!(err(v).message.contains("is not an environment variable name"));

        let e = err(with("webhook_from_env", json!("HOOK_URL")));
        assert!(e.message.contains("exclude each other"), "{}", e.message);
    }

    #[test]
    fn operation_specs() {
        let a = parse(with("update", json!({"columns": ["a", "b"], "payload": ["c"]}))).unwrap();
        assert_eq!(
            a.definition.update,
            Some(OpSpec {
                columns: Columns::List(vec!["a".into(), "b".into()]),
                payload: Columns::List(vec!["c".into()]),
                condition: None,
            })
        );
        let a = parse(with("update", json!({"columns": "*", "condition": "  NEW.a <> OLD.a "}))).unwrap();
        assert_eq!(a.definition.update.as_ref().unwrap().condition.as_deref(), Some("NEW.a <> OLD.a"));
        assert_eq!(a.definition.to_json()["update"]["condition"], "NEW.a <> OLD.a");
        assert!(parse(base()).unwrap().definition.to_json()["insert"].get("condition").is_none());
        for (v, want) in [
            (json!(""), "the condition is empty"),
            (json!(true), "expected a SQL expression as a string, got boolean true"),
            (json!("x".repeat(MAX_CONDITION_BYTES + 1)), "more than 8192"),
            (json!("a\u{0}b"), "NUL"),
        ] {
            let e = err(with("update", json!({"columns": "*", "condition": v})));
            assert!(e.message.starts_with("invalid value for key \"update.condition\""), "{}", e.message);
            assert!(e.message.contains(want), "{}", e.message);
        }
        let e = err(with("insert", json!({"columns": []})));
        assert_eq!(e.message, "invalid value for key \"insert.columns\": the column list is empty");
        let e = err(with("delete", json!({"columns": "*", "payload": []})));
        assert_eq!(e.message, "invalid value for key \"delete.payload\": the column list is empty");
        let e = err(with("update", json!({"payload": "*"})));
        assert_eq!(e.message, "key \"update.columns\" is required");
        let e = err(with("update", json!({"columns": "all"})));
        assert!(e.message.contains("expected \"*\" or a list of column names"), "{}", e.message);
        let e = err(with("update", json!({"columns": ["a", 1]})));
        assert!(e.message.starts_with("invalid value for key \"update.columns[1]\""), "{}", e.message);
        let e = err(with("update", json!({"columns": ["a", "a"]})));
        assert!(e.message.contains("listed twice"), "{}", e.message);
        let e = err(with("insert", json!(true)));
        assert!(e.message.starts_with("invalid value for key \"insert\""), "{}", e.message);
    }

    #[test]
    fn at_least_one_operation_or_manual() {
        let mut v = base();
        v.as_object_mut().unwrap().remove("insert");
        let a = parse(v.clone()).unwrap();
        let d = &a.definition;
        assert!(d.insert.is_none() && d.update.is_none() && d.delete.is_none() && d.enable_manual);
        v["enable_manual"] = json!(false);
        let e = err(v);
        assert!(e.message.contains("captures nothing"), "{}", e.message);
    }

    #[test]
    fn header_rules() {
        let a =
            parse(with("headers", json!([{"name": "X-A", "value": "1"}, {"name": "X-B", "value_from_env": "SECRET"}])))
                .unwrap();
        assert_eq!(a.definition.headers[1].value, HeaderValue::FromEnv("SECRET".into()));
        let e = err(with("headers", json!([{"name": "X Bad", "value": "1"}])));
        assert!(
            e.message.contains("\"headers[0].name\"") && e.message.contains("not a valid HTTP header name"),
            "{}",
            e.message
        );
        let e = err(with("headers", json!([{"name": "X-A", "value": "a\r\nX-Evil: 1"}])));
        assert!(
            e.message.contains("\"headers[0].value\"") && e.message.contains("(found U+000D at byte 1)"),
            "{}",
            e.message
        );
        let e = err(with("headers", json!([{"name": "X-A", "value": "a\nb"}])));
        assert!(e.message.contains("U+000A"));
        for (bad, shown) in [("a\u{7}b", "U+0007"), ("a\u{7f}", "U+007F"), ("\u{0}", "U+0000")] {
            let e = err(with("headers", json!([{"name": "X-A", "value": bad}])));
            assert!(
                e.message.contains("must not contain control characters") && e.message.contains(shown),
                "{}",
                e.message
            );
        }
        assert!(parse(with("headers", json!([{"name": "X-A", "value": "tab\there, ünïcode"}]))).is_ok());
        let e = err(with("headers", json!([{"name": "X-A", "value_from_env": "NOPE"}])));
        assert!(e.message.contains("\"NOPE\" is not set"), "{}", e.message);
        let e = err(with("headers", json!([{"name": "X-A", "value_from_env": "BAD_HEADER"}])));
        assert!(e.message.contains("control characters"), "{}", e.message);
        let e = err(with("headers", json!([{"name": "X-A"}])));
        assert!(e.message.contains("is required"), "{}", e.message);
        let e = err(with("headers", json!([{"name": "X-A", "value": "1", "value_from_env": "SECRET"}])));
        assert!(e.message.contains("exclude each other"), "{}", e.message);
        let e = err(with("headers", json!([{"name": "Webhook-Id", "value": "1"}])));
        assert!(e.message.contains("set by pg_webhooks itself"), "{}", e.message);
        let e = err(with("headers", json!({"X-A": "1"})));
        assert!(e.message.starts_with("invalid value for key \"headers\""), "{}", e.message);
        let e = err(with("headers", json!([{"name": "X-A", "value": 1}])));
        assert!(e.message.contains("expected a string"), "{}", e.message);
    }

    #[test]
    fn ordering_rules() {
        assert_eq!(parse(base()).unwrap().definition.ordering, Ordering::None);
        assert_eq!(parse(base()).unwrap().definition.to_json()["ordering"], "none");
        for (v, want) in [("none", Ordering::None), ("key", Ordering::Key), ("trigger", Ordering::Trigger)] {
            let d = parse(with("ordering", json!(v))).unwrap().definition;
            assert_eq!(d.ordering, want);
            assert_eq!(Definition::from_stored(&d.to_json()).unwrap().ordering, want);
        }
        for v in [json!("fifo"), json!(1), json!(true)] {
            let e = err(with("ordering", v));
            assert_eq!(e.state, SqlState::InvalidParameterValue);
            assert!(e
                .message
                .starts_with("invalid value for key \"ordering\": expected \"none\", \"key\" or \"trigger\""));
        }
    }

    #[test]
    fn throttle_rules() {
        let a = parse(with("throttle", json!({"max_concurrency": 3, "per_second": 50}))).unwrap();
        assert_eq!(a.definition.throttle, Throttle { max_concurrency: Some(3), per_second: Some(50) });
        assert_eq!(a.definition.to_json()["throttle"], json!({"max_concurrency": 3, "per_second": 50}));
        let a = parse(with("throttle", json!({"per_second": 5}))).unwrap();
        assert_eq!(a.definition.throttle, Throttle { max_concurrency: None, per_second: Some(5) });
        assert_eq!(a.definition.to_json()["throttle"], json!({"per_second": 5}));
        let a = parse(base()).unwrap();
        assert!(a.definition.to_json().get("throttle").is_none(), "no throttle, no key");
        for (v, want) in [
            (
                json!({"per_second": 0}),
                "invalid value for key \"throttle.per_second\": expected an integer >= 1, got number 0",
            ),
            (json!({"max_concurrency": -2}), "\"throttle.max_concurrency\": expected an integer >= 1"),
            (json!({"per_second": 0.5}), "got number 0.5"),
            (json!({"rate": 5}), "unknown key \"throttle.rate\""),
            (json!(10), "invalid value for key \"throttle\": expected an object"),
        ] {
            let e = err(with("throttle", v));
            assert_eq!(e.state, SqlState::InvalidParameterValue);
            assert!(e.message.contains(want), "{}", e.message);
        }
        let round_trip =
            Definition::from_stored(&parse(with("throttle", json!({"per_second": 7}))).unwrap().definition.to_json())
                .unwrap();
        assert_eq!(round_trip.throttle.per_second, Some(7));
    }

    #[test]
    fn retry_conf_rules() {
        let a = parse(with("retry_conf", json!({"num_retries": 5}))).unwrap();
        assert_eq!(a.definition.retry_conf, RetryConf { num_retries: 5, ..RetryConf::default() });
        let a = parse(with("retry_conf", json!({"backoff": "exponential", "max_interval_sec": 600}))).unwrap();
        assert_eq!(
            (a.definition.retry_conf.backoff, a.definition.retry_conf.max_interval_sec),
            (Backoff::Exponential, 600)
        );
        let a = parse(with("retry_conf", json!({"interval_sec": 2.0}))).unwrap();
        assert_eq!(a.definition.retry_conf.interval_sec, 2);
        for (k, v, want) in [
            ("num_retries", json!(-1), ">= 0, got number -1"),
            ("interval_sec", json!(-5), ">= 0, got number -5"),
            ("timeout_sec", json!(0), ">= 1, got number 0"),
            ("num_retries", json!(1.5), "got number 1.5"),
            ("num_retries", json!("3"), "got string \"3\""),
            ("timeout_sec", json!(1e12), "got number"),
            ("max_interval_sec", json!(0), ">= 1, got number 0"),
            ("backoff", json!("linear"), "expected \"fixed\" or \"exponential\", got string \"linear\""),
            ("backoff", json!(true), "got boolean true"),
        ] {
            let e = err(with("retry_conf", json!({ k: v })));
            assert_eq!(e.state, SqlState::InvalidParameterValue);
            assert!(e.message.starts_with(&format!("invalid value for key \"retry_conf.{k}\"")), "{}", e.message);
            assert!(e.message.contains(want), "{}", e.message);
        }
        let e = err(with("retry_conf", json!(3)));
        assert!(e.message.starts_with("invalid value for key \"retry_conf\""));
    }

    #[test]
    fn booleans_and_source() {
        assert!(parse(with("replace", json!(true))).unwrap().replace);
        let e = err(with("replace", json!("yes")));
        assert_eq!(e.message, "invalid value for key \"replace\": expected true or false, got string \"yes\"");
        let e = err(with("enable_manual", json!(1)));
        assert!(e.message.starts_with("invalid value for key \"enable_manual\""));
        assert!(parse(with("source", json!("default"))).is_ok());
        let e = err(with("source", json!("other_db")));
        assert!(e.message.contains("\"source\"") && e.message.contains("other_db"), "{}", e.message);
    }

    #[test]
    fn describe_truncates_long_values() {
        let d = describe(&json!("x".repeat(500)));
        assert!(d.len() < 80 && d.ends_with("..."), "{d}");
    }

    fn restricted(v: Value, allowed: &str) -> ApiResult<CreateArgs> {
        let looked_up = std::cell::RefCell::new(Vec::<String>::new());
        let lookup = |n: &str| {
            looked_up.borrow_mut().push(n.to_string());
            env(n)
        };
        let policy = EnvPolicy::from_setting(allowed);
        let r = parse_create_args(&v, &Context { env: &lookup, env_policy: &policy, limits: Limits::default() });
        for n in looked_up.borrow().iter() {
            assert!(policy.allows(n), "{n} was looked up although it is not allowed");
        }
        r
    }

    #[test]
    fn restricted_roles_use_only_allowed_variables() {
        // Allowed: used as before.
        let a = restricted(with("headers", json!([{"name": "X-A", "value_from_env": "SECRET"}])), "SECRET").unwrap();
        assert_eq!(a.definition.headers[0].value, HeaderValue::FromEnv("SECRET".into()));
        assert!(restricted(with("webhook", json!("https://{{HOOK_HOST}}/x")), "HOOK_*").is_ok());
        // Not allowed: the same refusal whether the variable exists or not.
        for (key, args) in [
            ("headers[0].value_from_env", with("headers", json!([{"name": "X-A", "value_from_env": "SECRET"}]))),
            ("headers[0].value_from_env", with("headers", json!([{"name": "X-A", "value_from_env": "NOPE"}]))),
            ("webhook", with("webhook", json!("https://{{HOOK_HOST}}/x"))),
            ("webhook", with("webhook", json!("https://x.example/?k={{NOPE}}"))),
            ("webhook_from_env", {
                let mut b = base();
                b.as_object_mut().unwrap().remove("webhook");
                b["webhook_from_env"] = json!("HOOK_URL");
                b
            }),
        ] {
            let e = restricted(args, "OTHER, X_*").unwrap_err();
            assert_eq!(e.state, SqlState::InsufficientPrivilege, "{e:?}");
            assert!(
                e.message.contains(&format!("\"{key}\"")) && e.message.contains("webhooks.allowed_env_vars"),
                "{e:?}"
            );
            assert!(!e.message.contains("not set"), "{e:?}");
        }
    }

    #[test]
    fn limits_bound_the_definition_and_its_parts() {
        let limits = Limits { max_definition_bytes: 1000, max_timeout_sec: 120 };
        let ctx = Context { env: &env, env_policy: &EnvPolicy::unrestricted(), limits };
        let ok = with("retry_conf", json!({"timeout_sec": 120}));
        assert_eq!(parse_create_args(&ok, &ctx).unwrap().definition.retry_conf.timeout_sec, 120);
        let e = parse_create_args(&with("retry_conf", json!({"timeout_sec": 121})), &ctx).unwrap_err();
        assert_eq!(e.state, SqlState::InvalidParameterValue);
        assert!(
            e.message.contains("\"retry_conf.timeout_sec\": 121 is more than webhooks.max_timeout (120 s)"),
            "{}",
            e.message
        );

        let big = with("headers", json!([{"name": "X-A", "value": "v".repeat(2000)}]));
        let e = parse_create_args(&big, &ctx).unwrap_err();
        assert_eq!(e.state, SqlState::ProgramLimitExceeded);
        assert!(e.message.contains("more than webhooks.max_definition_size (1000 bytes)"), "{}", e.message);

        let e = err(with(
            "headers",
            json!((0..65).map(|i| json!({"name": format!("X-{i}"), "value": "1"})).collect::<Vec<_>>()),
        ));
        assert_eq!(e.state, SqlState::ProgramLimitExceeded);
        assert!(e.message.contains("65 headers, the limit is 64"), "{}", e.message);
        let e = err(with("webhook", json!(format!("https://h.example/{}", "a".repeat(9000)))));
        assert_eq!(e.state, SqlState::ProgramLimitExceeded);
        assert!(e.message.contains("\"webhook\"") && e.message.contains("the limit is 8192"), "{}", e.message);
        let e = err(with("headers", json!([{"name": "X-A", "value": "v".repeat(9000)}])));
        assert!(e.message.contains("\"headers[0].value\"") && e.message.contains("the limit is 8192"), "{}", e.message);

        // Stored definitions are read back whatever today's limits.
        let mut d = parse(base()).unwrap().definition;
        d.retry_conf.timeout_sec = 3000;
        let stored = d.to_json();
        assert_eq!(Definition::from_stored(&stored).unwrap().retry_conf.timeout_sec, 3000);
    }

    #[test]
    fn signing_secrets() {
        let a = crate::signing::generate().unwrap();
        let b = crate::signing::generate().unwrap();
        let d = parse(with("signing_secret", json!(format!("{a} {b}")))).unwrap().definition;
        assert_eq!(d.signing, Some(Signing::Secrets(format!("{a} {b}"))));
        assert_eq!(d.to_json()["signing_secret"], json!(format!("{a} {b}")));
        assert_eq!(Definition::from_stored(&d.to_json()).unwrap().signing, d.signing);
        for bad in [json!("sk_nope"), json!("whsec_!!"), json!(""), json!(12)] {
            let e = err(with("signing_secret", bad.clone()));
            assert!(e.message.contains("\"signing_secret\""), "{bad}: {}", e.message);
        }
        let e = err(with("signing_secret", json!("whsec_c2hvcnQ=")));
        assert!(e.message.contains("decodes to 5 bytes") && !e.message.contains("c2hvcnQ"), "{}", e.message);
        let mut v = with("signing_secret", json!(a));
        v["signing_secret_from_env"] = json!("SIGNING");
        assert!(err(v).message.contains("exclude each other"));
        let e = err(with("signing_secret_from_env", json!("SECRET")));
        assert!(
            e.message.contains("the value of SECRET") && e.message.contains("does not start with"),
            "{}",
            e.message
        );
        let e = err(with("headers", json!([{"name": "Webhook-Signature", "value": "v1,x"}])));
        assert!(e.message.contains("set by pg_webhooks itself"), "{}", e.message);
    }
}
