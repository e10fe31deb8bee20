//! Hasura's request and response transforms (`request_transform`,
//! `response_transform`): parsed and checked when a definition is created,
//! applied to each attempt.
//!
//! A request transform may set the method, rewrite the URL (a Kriti string
//! template), replace the query string (an object of templates, or one
//! template giving the whole query string), add and remove headers, and
//! replace the body: in version 1 `body` is a Kriti template giving JSON;
//! in version 2 it is `{"action": "remove"}`, `{"action": "transform",
//! "template": ...}` or `{"action": "x_www_form_urlencoded",
//! "form_template": {field: template}}`. Templates see `$body` (the
//! payload), `$base_url` (the webhook URL, resolved), `$session_variables`
//! and `$query_params` (the URL's query as `[[key, value]]`). A response
//! transform's templates see `$body` (the answer, parsed as JSON, or null)
//! and `$request` (the request's bindings: `body`, `base_url`,
//! `session_variables`, `query_params`).

use serde_json::{json, Map, Value};

use crate::definition::describe;
use crate::error::{ApiError, ApiResult};
use crate::kriti::{self, escape_uri, Bindings, Template};

/// A request transform, ready to apply.
#[derive(Debug, Clone)]
pub struct RequestTransform {
    method: Option<String>,
    url: Option<Template>,
    query: Option<Query>,
    add_headers: Vec<(String, Template)>,
    remove_headers: Vec<String>,
    body: Option<BodyFn>,
    /// The transform as stored (what was given, with `version` and
    /// `template_engine` filled in).
    stored: Value,
}

/// A response transform, ready to apply.
#[derive(Debug, Clone)]
pub struct ResponseTransform {
    body: Option<BodyFn>,
    stored: Value,
}

impl PartialEq for RequestTransform {
    fn eq(&self, other: &Self) -> bool {
        self.stored == other.stored
    }
}
impl Eq for RequestTransform {}
impl PartialEq for ResponseTransform {
    fn eq(&self, other: &Self) -> bool {
        self.stored == other.stored
    }
}
impl Eq for ResponseTransform {}

#[derive(Debug, Clone)]
enum Query {
    /// Key and value templates; a key or value that renders as `null` drops
    /// the parameter; no value template: the key alone.
    Pairs(Vec<(Template, Option<Template>)>),
    /// One template giving the whole query string.
    Whole(Template),
}

#[derive(Debug, Clone)]
enum BodyFn {
    Remove,
    Json(Template),
    /// Version 1 with `content_type: application/x-www-form-urlencoded`:
    /// the template gives an object whose fields are form-encoded.
    JsonAsForm(Template),
    Form(Vec<(String, Template)>),
}

/// The request a transform produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Transformed {
    pub method: String,
    pub url: String,
    /// `None`: no body at all.
    pub body: Option<Body>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    Json(String),
    Form(String),
}

impl Body {
    pub fn text(&self) -> &str {
        match self {
            Body::Json(s) | Body::Form(s) => s,
        }
    }
    pub fn content_type(&self) -> &'static str {
        match self {
            Body::Json(_) => "application/json",
            Body::Form(_) => "application/x-www-form-urlencoded",
        }
    }
}

/// What a request transform reads.
pub struct Input<'a> {
    /// The payload the webhook would receive.
    pub payload: &'a Value,
    /// The webhook URL with its environment variables resolved.
    pub base_url: &'a str,
}

impl Input<'_> {
    fn session_variables(&self) -> &Value {
        self.payload.pointer("/event/session_variables").unwrap_or(&Value::Null)
    }

    /// The URL's query as Hasura gives it: `[[key, value or null]]`.
    fn query_params(&self) -> Value {
        let query = url::Url::parse(self.base_url).ok().and_then(|u| u.query().map(str::to_owned));
        let pairs = query.iter().flat_map(|q| q.split('&')).filter(|p| !p.is_empty()).map(|p| {
            let decode =
                |s: &str| percent_encoding::percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned();
            match p.split_once('=') {
                Some((k, v)) => json!([decode(k), decode(v)]),
                None => json!([decode(p), null]),
            }
        });
        Value::Array(pairs.collect())
    }

    /// `$request` of a response transform.
    fn as_request_value(&self) -> Value {
        json!({
            "body": self.payload,
            "base_url": self.base_url,
            "session_variables": self.session_variables(),
            "query_params": self.query_params(),
        })
    }
}

// ---------------------------------------------------------------- parsing

fn invalid(key: &str, what: impl std::fmt::Display) -> ApiError {
    ApiError::invalid(format!("invalid value for key \"{key}\": {what}"))
}

fn template(key: &str, v: &Value, string: bool) -> ApiResult<Template> {
    let s =
        v.as_str().ok_or_else(|| invalid(key, format!("expected a Kriti template (a string), got {}", describe(v))))?;
    let parsed = if string { Template::parse_string(s) } else { Template::parse(s) };
    parsed.map_err(|e| {
        invalid(key, format!("Kriti syntax error: {e}")).with_hint(
            "Kriti templates are JSON with {{ ... }} expressions, e.g. {\"id\": {{$body.event.data.new.id}}}.",
        )
    })
}

fn check_keys(key: &str, o: &Map<String, Value>, known: &[&str]) -> ApiResult<()> {
    for k in o.keys() {
        if !known.contains(&k.as_str()) {
            return Err(ApiError::invalid(format!("unknown key \"{key}.{k}\""))
                .with_hint(format!("The keys of \"{key}\" are: {}.", known.join(", "))));
        }
    }
    Ok(())
}

fn version(key: &str, o: &Map<String, Value>) -> ApiResult<u64> {
    match o.get("version") {
        None | Some(Value::Null) => Ok(1),
        Some(v) if v.as_u64() == Some(1) || v.as_u64() == Some(2) => Ok(v.as_u64().unwrap_or(1)),
        Some(v) => Err(invalid(&format!("{key}.version"), format!("expected 1 or 2, got {}", describe(v)))),
    }
}

fn engine(key: &str, o: &Map<String, Value>) -> ApiResult<()> {
    match o.get("template_engine") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(s)) if s == "Kriti" => Ok(()),
        Some(v) => Err(invalid(&format!("{key}.template_engine"), format!("expected \"Kriti\", got {}", describe(v)))),
    }
}

fn stored(o: &Map<String, Value>, version: u64) -> Value {
    let mut m = o.clone();
    m.insert("version".into(), json!(version));
    m.insert("template_engine".into(), json!("Kriti"));
    Value::Object(m)
}

/// The body of a version 2 transform (or any response transform).
fn body_v2(key: &str, v: &Value) -> ApiResult<BodyFn> {
    let o = v.as_object().ok_or_else(|| {
        invalid(key, format!("expected an object with \"action\", got {}", describe(v))).with_hint(
            "In version 2, \"body\" is {\"action\": \"remove\" | \"transform\" | \"x_www_form_urlencoded\", ...}.",
        )
    })?;
    check_keys(key, o, &["action", "template", "form_template"])?;
    match o.get("action").and_then(Value::as_str) {
        Some("remove") => Ok(BodyFn::Remove),
        Some("transform") => {
            let t = o.get("template").ok_or_else(|| {
                ApiError::invalid(format!("key \"{key}.template\" is required with \"action\": \"transform\""))
            })?;
            Ok(BodyFn::Json(template(&format!("{key}.template"), t, false)?))
        }
        Some("x_www_form_urlencoded") => {
            let f = o.get("form_template").and_then(Value::as_object).ok_or_else(|| {
                ApiError::invalid(format!("key \"{key}.form_template\" (an object of field templates) is required with \"action\": \"x_www_form_urlencoded\""))
            })?;
            let fields = f
                .iter()
                .map(|(name, t)| Ok((name.clone(), template(&format!("{key}.form_template.{name}"), t, true)?)))
                .collect::<ApiResult<_>>()?;
            Ok(BodyFn::Form(fields))
        }
        other => Err(invalid(
            &format!("{key}.action"),
            format!(
                "expected \"remove\", \"transform\" or \"x_www_form_urlencoded\", got {}",
                other.map_or("nothing".into(), |s| format!("\"{s}\""))
            ),
        )),
    }
}

/// Parses `request_transform`.
pub fn parse_request(v: &Value) -> ApiResult<RequestTransform> {
    const KEY: &str = "request_transform";
    let o = v.as_object().ok_or_else(|| invalid(KEY, format!("expected an object, got {}", describe(v))))?;
    check_keys(
        KEY,
        o,
        &["version", "template_engine", "method", "url", "query_params", "request_headers", "body", "content_type"],
    )?;
    let version = version(KEY, o)?;
    engine(KEY, o)?;
    let method = match o.get("method") {
        None | Some(Value::Null) => None,
        Some(Value::String(m)) if !m.is_empty() && m.bytes().all(|b| b.is_ascii_alphabetic()) => {
            Some(m.to_ascii_uppercase())
        }
        Some(m) => {
            return Err(invalid(
                "request_transform.method",
                format!("expected an HTTP method such as \"GET\", got {}", describe(m)),
            ))
        }
    };
    let url = match o.get("url") {
        None | Some(Value::Null) => None,
        Some(u) => Some(template("request_transform.url", u, true)?),
    };
    let query = match o.get("query_params") {
        None | Some(Value::Null) => None,
        Some(Value::String(_)) => {
            Some(Query::Whole(template("request_transform.query_params", &o["query_params"], true)?))
        }
        Some(Value::Object(q)) => Some(Query::Pairs(
            q.iter()
                .map(|(k, val)| {
                    let at = format!("request_transform.query_params.{k}");
                    let key = Template::parse_string(k)
                        .map_err(|e| invalid(&at, format!("Kriti syntax error in the parameter name: {e}")))?;
                    let value = match val {
                        Value::Null => None,
                        t => Some(template(&at, t, true)?),
                    };
                    Ok((key, value))
                })
                .collect::<ApiResult<_>>()?,
        )),
        Some(q) => {
            return Err(invalid(
                "request_transform.query_params",
                format!("expected an object of templates or one template, got {}", describe(q)),
            ))
        }
    };
    let (add_headers, remove_headers) = match o.get("request_headers") {
        None | Some(Value::Null) => (Vec::new(), Vec::new()),
        Some(Value::Object(h)) => {
            check_keys("request_transform.request_headers", h, &["add_headers", "remove_headers"])?;
            let add = match h.get("add_headers") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Object(a)) => a
                    .iter()
                    .map(|(name, t)| {
                        let at = format!("request_transform.request_headers.add_headers.{name}");
                        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                            return Err(invalid(&at, format!("\"{name}\" is not a valid header name")));
                        }
                        Ok((name.clone(), template(&at, t, true)?))
                    })
                    .collect::<ApiResult<_>>()?,
                Some(a) => {
                    return Err(invalid(
                        "request_transform.request_headers.add_headers",
                        format!("expected an object of header templates, got {}", describe(a)),
                    ))
                }
            };
            let remove = match h.get("remove_headers") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(r)) => r
                    .iter()
                    .map(|n| {
                        n.as_str().map(str::to_owned).ok_or_else(|| {
                            invalid(
                                "request_transform.request_headers.remove_headers",
                                format!("expected header names, got {}", describe(n)),
                            )
                        })
                    })
                    .collect::<ApiResult<_>>()?,
                Some(r) => {
                    return Err(invalid(
                        "request_transform.request_headers.remove_headers",
                        format!("expected a list of header names, got {}", describe(r)),
                    ))
                }
            };
            (add, remove)
        }
        Some(h) => {
            return Err(invalid(
                "request_transform.request_headers",
                format!("expected {{\"add_headers\": {{...}}, \"remove_headers\": [...]}}, got {}", describe(h)),
            ))
        }
    };
    let form_v1 = match o.get("content_type") {
        None | Some(Value::Null) => false,
        Some(Value::String(c)) if c == "application/json" => false,
        Some(Value::String(c)) if c == "application/x-www-form-urlencoded" => true,
        Some(c) => {
            return Err(invalid(
                "request_transform.content_type",
                format!("expected \"application/json\" or \"application/x-www-form-urlencoded\", got {}", describe(c)),
            ))
        }
    };
    let body = match (version, o.get("body")) {
        (_, None | Some(Value::Null)) => None,
        (1, Some(b)) => {
            let t = template("request_transform.body", b, false)?;
            Some(if form_v1 { BodyFn::JsonAsForm(t) } else { BodyFn::Json(t) })
        }
        (_, Some(b)) => Some(body_v2("request_transform.body", b)?),
    };
    Ok(RequestTransform { method, url, query, add_headers, remove_headers, body, stored: stored(o, version) })
}

/// Parses `response_transform`.
pub fn parse_response(v: &Value) -> ApiResult<ResponseTransform> {
    const KEY: &str = "response_transform";
    let o = v.as_object().ok_or_else(|| invalid(KEY, format!("expected an object, got {}", describe(v))))?;
    check_keys(KEY, o, &["version", "template_engine", "body"])?;
    let version = version(KEY, o)?;
    engine(KEY, o)?;
    let body = match (version, o.get("body")) {
        (_, None | Some(Value::Null)) => None,
        (1, Some(b)) => Some(BodyFn::Json(template("response_transform.body", b, false)?)),
        (_, Some(b)) => Some(body_v2("response_transform.body", b)?),
    };
    Ok(ResponseTransform { body, stored: stored(o, version) })
}

// ---------------------------------------------------------------- applying

/// A template in string position gives a string, number or boolean;
/// anything else is an error, as in Hasura.
fn scalar(t: &Template, b: Bindings<'_>, what: &str) -> Result<String, String> {
    match t.eval(b).map_err(|e| format!("{what}: {e}"))? {
        Value::String(s) => Ok(s),
        v @ (Value::Number(_) | Value::Bool(_)) => Ok(v.to_string()),
        v => Err(format!("{what}: the template must give a string, number or boolean, got {}", describe(&v))),
    }
}

fn form_pair(out: &mut String, k: &str, v: &str) {
    if !out.is_empty() {
        out.push('&');
    }
    out.push_str(&escape_uri(k));
    out.push('=');
    out.push_str(&escape_uri(v));
}

fn apply_body(body: &BodyFn, b: Bindings<'_>, what: &str) -> Result<Option<Body>, String> {
    Ok(match body {
        BodyFn::Remove => None,
        BodyFn::Json(t) => Some(Body::Json(t.eval(b).map_err(|e| format!("{what}: {e}"))?.to_string())),
        BodyFn::JsonAsForm(t) => {
            let v = t.eval(b).map_err(|e| format!("{what}: {e}"))?;
            let o = v
                .as_object()
                .ok_or_else(|| format!("{what}: a form-encoded body needs an object, got {}", describe(&v)))?;
            let mut out = String::new();
            for (k, x) in o {
                let text = match x {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                form_pair(&mut out, k, &text);
            }
            Some(Body::Form(out))
        }
        BodyFn::Form(fields) => {
            let mut out = String::new();
            for (k, t) in fields {
                let v = scalar(t, b, &format!("{what}.form_template.{k}"))?;
                form_pair(&mut out, k, &v);
            }
            Some(Body::Form(out))
        }
    })
}

impl RequestTransform {
    pub fn to_json(&self) -> Value {
        self.stored.clone()
    }

    /// Applies the transform to a request for `input`, whose headers are
    /// `headers` (changed in place). An error is the reason the event
    /// cannot be sent: it fails at once, without retries.
    pub fn apply(&self, input: &Input<'_>, headers: &mut Vec<(String, String)>) -> Result<Transformed, String> {
        let base_url = Value::String(input.base_url.to_owned());
        let qp = input.query_params();
        let sv = input.session_variables();
        let values =
            [("$body", input.payload), ("$base_url", &base_url), ("$session_variables", sv), ("$query_params", &qp)];
        let b = Bindings { values: &values, session_variables: Some(sv) };
        let mut url = match &self.url {
            Some(t) => scalar(t, b, "request_transform.url")?,
            None => input.base_url.to_owned(),
        };
        if let Some(q) = &self.query {
            let query = match q {
                Query::Whole(t) => scalar(t, b, "request_transform.query_params")?.trim_start_matches('?').to_owned(),
                Query::Pairs(pairs) => {
                    let mut out = String::new();
                    for (k, v) in pairs {
                        let key = scalar(k, b, "request_transform.query_params")?;
                        let value = v
                            .as_ref()
                            .map(|t| scalar(t, b, &format!("request_transform.query_params.{key}")))
                            .transpose()?;
                        if key == "null" || value.as_deref() == Some("null") {
                            continue;
                        }
                        if !out.is_empty() {
                            out.push('&');
                        }
                        out.push_str(&escape_uri(&key));
                        if let Some(v) = value {
                            out.push('=');
                            out.push_str(&escape_uri(&v));
                        }
                    }
                    out
                }
            };
            let mut parsed =
                url::Url::parse(&url).map_err(|e| format!("request_transform.url: \"{url}\" is not a URL ({e})"))?;
            parsed.set_query(if query.is_empty() { None } else { Some(&query) });
            url = parsed.to_string();
        }
        if self.url.is_some() {
            url::Url::parse(&url)
                .map_err(|e| format!("request_transform.url gave \"{url}\", which is not a URL ({e})"))?;
        }
        headers.retain(|(n, _)| !self.remove_headers.iter().any(|r| r.eq_ignore_ascii_case(n)));
        for (name, t) in &self.add_headers {
            let value = scalar(t, b, &format!("request_transform.request_headers.add_headers.{name}"))?;
            if let Some(why) = crate::definition::header_value_problem(&value) {
                return Err(format!("request_transform.request_headers.add_headers.{name}: {why}"));
            }
            headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
            headers.push((name.clone(), value));
        }
        let body = match &self.body {
            None => Some(Body::Json(input.payload.to_string())),
            Some(f) => apply_body(f, b, "request_transform.body")?,
        };
        Ok(Transformed { method: self.method.clone().unwrap_or_else(|| "POST".into()), url, body })
    }
}

impl ResponseTransform {
    pub fn to_json(&self) -> Value {
        self.stored.clone()
    }

    /// The response body to store for a 2xx answer `answer`, or why the
    /// transform failed.
    pub fn apply(&self, answer: &str, input: &Input<'_>) -> Result<String, String> {
        let Some(f) = &self.body else { return Ok(answer.to_owned()) };
        let body: Value = serde_json::from_str(answer).unwrap_or(Value::Null);
        let request = input.as_request_value();
        let values = [("$body", &body), ("$request", &request)];
        let b = Bindings { values: &values, session_variables: Some(input.session_variables()) };
        Ok(match apply_body(f, b, "response_transform.body")? {
            // Hasura stores a removed body as JSON null.
            None => "null".to_owned(),
            Some(b) => b.text().to_owned(),
        })
    }
}

pub use kriti::Error as TemplateError;

#[cfg(test)]
mod tests;
