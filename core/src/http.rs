//! One HTTP attempt, made with ureq, and what came of it.
//!
//! ureq's defaults are not a webhook sender's: here redirects are not
//! followed (a 3xx is a failed attempt), statuses are not errors, no proxy is
//! read from the environment, every attempt has one timeout for connect,
//! send and response, and response bodies are read up to a limit.

use std::io::Read;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

use crate::resolve::SharedPolicy;

/// `User-Agent` of every request.
pub const USER_AGENT: &str = concat!("pg_webhooks/", env!("CARGO_PKG_VERSION"));

/// One HTTP attempt to make.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The caller's handle, given back with the outcome.
    pub tag: u64,
    pub url: String,
    /// Every header but Content-Type and User-Agent, which are always set.
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Bounds the whole attempt: connect, send, and reading the response.
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// The body, cut to the client's limit, as text (invalid UTF-8 replaced).
    pub body: String,
    pub body_truncated: bool,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub tag: u64,
    /// The response, if one came (whatever its status).
    pub response: Option<Response>,
    /// Why no response came, or why reading it failed.
    pub error: Option<String>,
    pub started: SystemTime,
    pub duration: Duration,
    /// Whether the endpoint was tried at all: false when the destination
    /// policy refused every address, or the request could not be made (an
    /// environment variable missing). Such failures say nothing about the
    /// endpoint's health.
    pub tried: bool,
}

impl Outcome {
    /// Whether this outcome says the endpoint itself is in trouble (see
    /// [`crate::retry::is_endpoint_failure`]): only for an endpoint that
    /// was tried.
    pub fn is_endpoint_failure(&self) -> bool {
        self.tried && crate::retry::is_endpoint_failure(self.completed_status())
    }

    pub fn status(&self) -> Option<u16> {
        self.response.as_ref().map(|r| r.status)
    }

    /// The status that decides the attempt: none when the exchange did not
    /// complete, even if a status line came (a body cut off by the timeout
    /// is a failed attempt, to be retried).
    pub fn completed_status(&self) -> Option<u16> {
        if self.error.is_some() {
            None
        } else {
            self.status()
        }
    }

    /// What happened, in a few words, for log lines.
    pub fn summary(&self) -> String {
        match (self.status(), &self.error) {
            (Some(s), _) => format!("HTTP {s}"),
            (None, Some(e)) => e.clone(),
            (None, None) => "no response".into(),
        }
    }

    /// The response as stored in `event_invocation_logs.response`.
    pub fn response_json(&self) -> Value {
        match (&self.response, &self.error) {
            (Some(r), err) => json!({
                "status": r.status,
                "headers": r.headers.iter().map(|(n, v)| json!({"name": n, "value": v})).collect::<Vec<_>>(),
                "body": r.body,
                "body_truncated": r.body_truncated,
                "error": err,
            }),
            (None, err) => json!({"error": err.clone().unwrap_or_else(|| "no response".into())}),
        }
    }
}

/// An HTTP client configured for webhooks: no redirects followed (a 3xx is
/// returned as it is), statuses are not errors, no proxy from the
/// environment, and bodies read up to a limit.
///
/// Each client keeps one agent (one connection pool) per timeout, made on
/// first use: the timeout is part of the agent's configuration rather than
/// a per-request override, which ureq would copy for every request.
#[derive(Clone)]
pub struct Client {
    agents: std::cell::RefCell<Vec<(Duration, ureq::Agent)>>,
    /// The TLS version the agents were made with.
    agents_tls: std::cell::Cell<u64>,
    pub(crate) max_body: usize,
    /// Which addresses may be connected to (checked in the resolver).
    pub(crate) policy: SharedPolicy,
    /// The TLS configuration, with a version: agents are made anew when it
    /// changes (on reload).
    pub(crate) tls: SharedTls,
}

/// The TLS configuration shared by every thread's client, and its version.
pub type SharedTls = std::sync::Arc<std::sync::RwLock<(u64, ureq::tls::TlsConfig)>>;

/// Replaces the TLS configuration every client of `tls` uses from its next
/// attempt on.
pub fn set_tls(tls: &SharedTls, config: ureq::tls::TlsConfig) {
    if let Ok(mut t) = tls.write() {
        *t = (t.0 + 1, config);
    }
}

impl Client {
    /// A client that may connect anywhere.
    pub fn new(max_body: usize) -> Client {
        Client::with_policy(max_body, SharedPolicy::default())
    }

    /// A client whose connections follow `policy`, which its owner may
    /// replace at any time (the worker does on reload).
    pub fn with_policy(max_body: usize, policy: SharedPolicy) -> Client {
        Client::with_parts(max_body, policy, SharedTls::default())
    }

    /// A client with a destination policy and a TLS configuration, both of
    /// which its owner may replace at any time.
    pub fn with_parts(max_body: usize, policy: SharedPolicy, tls: SharedTls) -> Client {
        Client {
            agents: std::cell::RefCell::new(Vec::new()),
            agents_tls: std::cell::Cell::new(0),
            max_body,
            policy,
            tls,
        }
    }

    fn agent(&self, timeout: Duration) -> ureq::Agent {
        let (version, tls) = self.tls.read().map(|t| (t.0, t.1.clone())).unwrap_or_default();
        if version != self.agents_tls.get() {
            self.agents.borrow_mut().clear();
            self.agents_tls.set(version);
        }
        if let Some((_, a)) = self.agents.borrow().iter().find(|(t, _)| *t == timeout) {
            return a.clone();
        }
        let config = ureq::Agent::config_builder()
            .tls_config(tls)
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .max_redirects_will_error(false)
            .proxy(None)
            .user_agent(USER_AGENT)
            .accept("")
            .accept_encoding("")
            .max_idle_connections(256)
            .max_idle_connections_per_host(256)
            .no_delay(true)
            // Requests and answers are small: buffers under malloc's mmap
            // threshold avoid an mmap/munmap per connection.
            .input_buffer_size(32 * 1024)
            .output_buffer_size(16 * 1024)
            .build();
        let agent = ureq::Agent::with_parts(
            config,
            ureq::unversioned::transport::DefaultConnector::new(),
            crate::resolve::CachingResolver::with_policy(self.policy.clone()),
        );
        self.agents.borrow_mut().push((timeout, agent.clone()));
        agent
    }

    /// Makes one attempt. Never panics on network trouble: every failure is
    /// an `Outcome` with an error.
    pub fn send(&self, a: &Attempt) -> Outcome {
        let started = SystemTime::now();
        let t0 = Instant::now();
        let (response, error, tried) = match self.exchange(a) {
            Ok((resp, read_error)) => (Some(resp), read_error, true),
            Err((e, tried)) => (None, Some(e), tried),
        };
        Outcome { tag: a.tag, response, error, started, duration: t0.elapsed(), tried }
    }

    /// The exchange; an error says what failed and whether the endpoint was
    /// tried (false: the destination policy refused it).
    fn exchange(&self, a: &Attempt) -> Result<(Response, Option<String>), (String, bool)> {
        let mut req = self.agent(a.timeout).post(&a.url).header("Content-Type", "application/json");
        for (name, value) in &a.headers {
            req = req.header(name, value);
        }
        let mut resp = req.send(a.body.as_bytes()).map_err(|e| {
            let refused = matches!(&e, ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::PermissionDenied);
            (describe_error(e, &a.url), !refused)
        })?;
        let status = resp.status().as_u16();
        let headers: Vec<(String, String)> = resp
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        // Read one byte past the limit to know whether the body was cut.
        let mut buf = Vec::new();
        let read = resp.body_mut().as_reader().take(self.max_body as u64 + 1).read_to_end(&mut buf);
        let read_error = read.err().map(|e| {
            if e.kind() == std::io::ErrorKind::TimedOut || e.to_string().contains("timeout") {
                format!("timed out reading the response body ({e})")
            } else {
                format!("reading the response body failed: {e}")
            }
        });
        let body_truncated = buf.len() > self.max_body;
        buf.truncate(self.max_body);
        Ok((Response { status, headers, body: String::from_utf8_lossy(&buf).into_owned(), body_truncated }, read_error))
    }
}

fn describe_error(e: ureq::Error, url: &str) -> String {
    let host = || url::Url::parse(url).ok().and_then(|u| u.host_str().map(str::to_string)).unwrap_or_default();
    match e {
        ureq::Error::Tls(t) => format!("TLS with {} failed: {t}", host()),
        ureq::Error::Rustls(t) => format!("TLS with {} failed: {t}", host()),
        ureq::Error::Timeout(t) => format!("timed out ({t})"),
        ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::PermissionDenied => format!("not connected: {io}"),
        ureq::Error::Io(io) if io.get_ref().is_some_and(|e| e.is::<rustls::Error>()) => {
            format!("TLS with {} failed: {io}", host())
        }
        ureq::Error::Io(io) => format!("connection failed: {io}"),
        ureq::Error::HostNotFound => "host not found".into(),
        other => other.to_string(),
    }
}

/// A server and an attempt for the tests of this module and of the pool.
#[cfg(test)]
mod outcome_tests {
    use super::*;

    #[test]
    fn only_tried_endpoints_fail_as_endpoints() {
        let o = |status: Option<u16>, error: Option<&str>, tried: bool| Outcome {
            tag: 0,
            response: status.map(|s| Response {
                status: s,
                headers: vec![],
                body: String::new(),
                body_truncated: false,
            }),
            error: error.map(str::to_string),
            started: SystemTime::now(),
            duration: Duration::ZERO,
            tried,
        };
        assert!(o(None, Some("connection failed: refused"), true).is_endpoint_failure());
        assert!(o(Some(503), None, true).is_endpoint_failure());
        assert!(o(Some(200), Some("timed out reading the response body"), true).is_endpoint_failure());
        assert!(!o(Some(404), None, true).is_endpoint_failure());
        assert!(!o(None, Some("environment variable \"X\" is not set"), false).is_endpoint_failure());
    }
}

#[cfg(test)]
pub(crate) mod test_server {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::{TcpListener, TcpStream};

    /// A one-shot server: answers the first request with `reply` and returns
    /// what it read.
    pub fn serve_once(reply: &'static [u8]) -> (String, std::thread::JoinHandle<String>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", l.local_addr().unwrap());
        let h = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut head = String::new();
            let mut len = 0;
            loop {
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
                head.push_str(&line);
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            let mut s: TcpStream = s;
            s.write_all(reply).unwrap();
            head + &String::from_utf8(body).unwrap()
        });
        (url, h)
    }

    pub fn attempt(url: &str, timeout_ms: u64) -> Attempt {
        Attempt {
            tag: 7,
            url: url.into(),
            headers: vec![("X-Custom".into(), "v".into())],
            body: "{\"a\":1}".into(),
            timeout: Duration::from_millis(timeout_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_server::{attempt, serve_once};
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn sends_body_and_headers_and_reads_the_response() {
        let (url, h) = serve_once(b"HTTP/1.1 201 Created\r\nRetry-After: 5\r\nContent-Length: 5\r\n\r\nhello");
        let o = Client::new(1024).send(&attempt(&url, 5000));
        let seen = h.join().unwrap();
        assert!(seen.starts_with("POST /hook HTTP/1.1\r\n"), "{seen}");
        let lower = seen.to_ascii_lowercase();
        assert!(lower.contains("content-type: application/json\r\n"), "{seen}");
        assert!(lower.contains(&format!("user-agent: {}\r\n", USER_AGENT.to_ascii_lowercase())), "{seen}");
        assert!(lower.contains("x-custom: v\r\n"), "{seen}");
        assert!(seen.ends_with("\r\n\r\n{\"a\":1}"), "{seen}");
        assert_eq!(o.tag, 7);
        let r = o.response.unwrap();
        assert_eq!((r.status, r.body.as_str(), r.body_truncated), (201, "hello", false));
        assert_eq!(r.header("retry-after"), Some("5"));
    }

    #[test]
    fn redirects_are_returned_not_followed() {
        let (url, h) =
            serve_once(b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/elsewhere\r\nContent-Length: 0\r\n\r\n");
        let o = Client::new(1024).send(&attempt(&url, 5000));
        h.join().unwrap();
        assert_eq!(o.status(), Some(302));
        assert!(o.error.is_none());
    }

    #[test]
    fn bodies_are_cut_at_the_limit() {
        let (url, h) = serve_once(b"HTTP/1.1 500 Oops\r\nContent-Length: 26\r\n\r\nabcdefghijklmnopqrstuvwxyz");
        let o = Client::new(10).send(&attempt(&url, 5000));
        h.join().unwrap();
        let r = o.response.unwrap();
        assert_eq!((r.status, r.body.as_str(), r.body_truncated), (500, "abcdefghij", true));
    }

    #[test]
    fn refused_connections_and_timeouts_are_outcomes() {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let o = Client::new(10).send(&attempt(&format!("http://127.0.0.1:{port}/"), 2000));
        assert!(o.response.is_none());
        assert!(o.error.unwrap().contains("connection failed"));

        let silent = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", silent.local_addr().unwrap());
        let o = Client::new(10).send(&attempt(&url, 300));
        assert!(o.response.is_none());
        assert!(o.error.as_deref().unwrap().contains("timed out"), "{:?}", o.error);
        assert!(o.duration < Duration::from_secs(3));
    }

    #[test]
    fn refused_destinations_are_never_connected_to() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let url = format!("http://{}/hook", l.local_addr().unwrap());
        let policy = SharedPolicy::default();
        *policy.write().unwrap() = crate::destination::NetPolicy::from_settings("", "127.0.0.0/8").0;
        let o = Client::with_policy(100, policy).send(&attempt(&url, 2000));
        // A refusal says nothing about the endpoint's health.
        assert!(!o.tried && !o.is_endpoint_failure());
        let e = o.error.unwrap();
        assert!(e.starts_with("not connected: destination 127.0.0.1 is refused by webhooks.deny_networks"), "{e}");
        assert!(o.response.is_none());
        assert_eq!(
            l.accept().map(|_| ()).unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock,
            "no connection was made"
        );
    }
}
