//! One HTTP attempt, made with hyper on tokio, and what came of it.
//!
//! A webhook sender needs none of a general client's conveniences, so each
//! behaviour is chosen here: redirects are not followed (a 3xx is a failed
//! attempt), no proxy is read from the environment, every attempt has one
//! deadline for connect, TLS, send and reading the response, response
//! bodies are read up to a limit, no compression is asked for, HTTP/1.1
//! only. Connections are kept alive in a pool of our own (by scheme, host,
//! port and TLS configuration), so that a connection costs little more than
//! hyper's two buffers: thousands can be open at once. Names are looked up
//! by [`CachingResolver`], which applies the destination policy to every
//! address, as [`CachingResolver::check_url`] does to an address in the URL.
//! TLS is rustls with the configuration [`crate::tls`] builds.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

use crate::resolve::{CachingResolver, ResolveError, SharedPolicy};

/// `User-Agent` of every request.
pub const USER_AGENT: &str = concat!("pg_webhooks/", env!("CARGO_PKG_VERSION"));

/// One HTTP attempt to make.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The caller's handle, given back with the outcome.
    pub tag: u64,
    /// The request method (POST but where a request transform changed it).
    pub method: String,
    pub url: String,
    /// Every header but User-Agent (always set) and Content-Type, set from
    /// `content_type` unless one of `headers` gives it.
    pub headers: Vec<(String, String)>,
    /// `None`: the request has no body.
    pub content_type: Option<&'static str>,
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

/// An HTTP client configured for webhooks (see the module's comment). One
/// client serves every concurrent attempt: attempts are futures run on the
/// pool's runtime, sharing its kept-alive connections.
pub struct Client {
    pub(crate) max_body: usize,
    resolver: CachingResolver,
    pub(crate) tls: SharedTls,
    /// Kept-alive connections by destination, with when each was last used.
    idle: Mutex<HashMap<Destination, Vec<(Instant, Sender)>>>,
    /// The TLS connector of the current configuration, and its version.
    connector: Mutex<Option<(u64, tokio_rustls::TlsConnector)>>,
    /// Connections open (in use or idle), and how many may be: each is a
    /// file descriptor, and idle ones to other destinations must not push
    /// the worker past its open file limit.
    open: Arc<AtomicUsize>,
    max_open: AtomicUsize,
    /// When idle connections of every destination were last looked over.
    swept: Mutex<Instant>,
}

/// Counts one open connection for as long as it lives: from before its
/// socket is made until its connection task ends, or until it fails.
struct OpenConnection(Arc<AtomicUsize>);

impl OpenConnection {
    fn new(open: &Arc<AtomicUsize>) -> OpenConnection {
        open.fetch_add(1, AtomicOrdering::Relaxed);
        OpenConnection(open.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, AtomicOrdering::Relaxed);
    }
}

type Sender = SendRequest<Full<Bytes>>;

/// Where a connection goes: a connection is reused only for the same
/// scheme, host, port and TLS configuration.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Destination {
    https: bool,
    host: String,
    port: u16,
    tls_version: u64,
}

/// A kept-alive connection unused this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How often the idle connections of destinations no longer used are
/// looked over, so that they close too.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// hyper's read buffer: answers are small, and a larger one would cost
/// this much again for every open connection. A longer answer is read in
/// several reads.
const READ_BUFFER: usize = 1024;

/// The TLS configuration shared with the client's owner, and its version
/// (None: [`crate::tls::default_config`]).
pub type SharedTls = Arc<RwLock<(u64, Option<Arc<rustls::ClientConfig>>)>>;

/// Replaces the TLS configuration `tls`'s client uses from its next attempt
/// on; connections made with the old one are not used again.
pub fn set_tls(tls: &SharedTls, config: Arc<rustls::ClientConfig>) {
    if let Ok(mut t) = tls.write() {
        *t = (t.0 + 1, Some(config));
    }
}

/// Where a request failed, for the outcome: the error and whether the
/// endpoint was tried.
type Failure = (String, bool);

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
            max_body,
            resolver: CachingResolver::with_policy(policy),
            tls,
            idle: Mutex::new(HashMap::new()),
            connector: Mutex::new(None),
            open: Arc::new(AtomicUsize::new(0)),
            max_open: AtomicUsize::new(usize::MAX),
            swept: Mutex::new(Instant::now()),
        }
    }

    /// Sets how many connections may be open at once, in use or idle: a
    /// new connection beyond it first closes the longest idle one.
    pub fn set_max_open(&self, n: usize) {
        self.max_open.store(n.max(1), AtomicOrdering::Relaxed);
    }

    /// Connections open now, in use or idle.
    pub fn open_connections(&self) -> usize {
        self.open.load(AtomicOrdering::Relaxed)
    }

    /// Closes the connection that has been idle longest, of any destination.
    fn close_longest_idle(&self) {
        let Ok(mut idle) = self.idle.lock() else { return };
        let oldest = idle
            .iter()
            .flat_map(|(dest, list)| list.iter().enumerate().map(move |(i, (used, _))| (*used, dest, i)))
            .min_by_key(|(used, _, _)| *used)
            .map(|(_, dest, i)| (dest.clone(), i));
        if let Some((dest, i)) = oldest {
            let list = idle.get_mut(&dest).expect("found in it");
            // Dropping the last sender ends the connection's task, which
            // closes the socket.
            drop(list.remove(i));
            if list.is_empty() {
                idle.remove(&dest);
            }
        }
    }

    /// The TLS connector for the current configuration, and its version.
    fn tls_connector(&self) -> (u64, tokio_rustls::TlsConnector) {
        let (version, config) = self.tls.read().map(|t| t.clone()).unwrap_or_default();
        let mut current = self.connector.lock().unwrap_or_else(|e| e.into_inner());
        match current.as_ref() {
            Some((v, c)) if *v == version => (version, c.clone()),
            _ => {
                let connector = tokio_rustls::TlsConnector::from(config.unwrap_or_else(crate::tls::default_config));
                *current = Some((version, connector.clone()));
                (version, connector)
            }
        }
    }

    /// Makes one attempt. Never panics on network trouble: every failure is
    /// an `Outcome` with an error. Runs on a tokio runtime.
    pub async fn send(&self, a: &Attempt) -> Outcome {
        let started = SystemTime::now();
        let t0 = Instant::now();
        let (response, error, tried) = match self.exchange(a).await {
            Ok((resp, read_error)) => (Some(resp), read_error, true),
            Err((e, tried)) => (None, Some(e), tried),
        };
        Outcome { tag: a.tag, response, error, started, duration: t0.elapsed(), tried }
    }

    /// The exchange; an error says what failed and whether the endpoint was
    /// tried (false: the destination policy refused it, or the request
    /// could not be made).
    async fn exchange(&self, a: &Attempt) -> Result<(Response, Option<String>), Failure> {
        let deadline = tokio::time::Instant::now() + a.timeout;
        let timed_out = || (format!("timed out after {}", millis(a.timeout)), true);
        let url = url::Url::parse(&a.url).map_err(|e| (format!("the URL {:?} is not valid: {e}", a.url), false))?;
        self.resolver.check_url(&url).map_err(|e| (format!("not connected: {e}"), false))?;
        let (request, dest) = self.request(a, &url)?;
        let (response, sender) =
            tokio::time::timeout_at(deadline, self.round_trip(&dest, request)).await.map_err(|_| timed_out())??;
        let status = response.status().as_u16();
        let headers: Vec<(String, String)> = response
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        // Read one byte past the limit to know whether the body was cut.
        let mut body = response.into_body();
        let mut buf = Vec::new();
        let mut read_error = None;
        let mut complete = false;
        while buf.len() <= self.max_body {
            match tokio::time::timeout_at(deadline, body.frame()).await {
                Err(_) => {
                    read_error = Some(format!("timed out reading the response body (after {})", millis(a.timeout)));
                    break;
                }
                Ok(None) => {
                    complete = true;
                    break;
                }
                Ok(Some(Ok(frame))) => {
                    if let Ok(bytes) = frame.into_data() {
                        let room = self.max_body + 1 - buf.len();
                        buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
                    }
                }
                Ok(Some(Err(e))) => {
                    read_error = Some(format!("reading the response body failed: {}", chain(&e)));
                    break;
                }
            }
        }
        if complete {
            // The whole answer was read: the connection may carry the next.
            self.check_in(dest, sender);
        }
        let body_truncated = buf.len() > self.max_body;
        buf.truncate(self.max_body);
        Ok((Response { status, headers, body: String::from_utf8_lossy(&buf).into_owned(), body_truncated }, read_error))
    }

    /// The request for `a`, in origin form, and where it goes.
    fn request(&self, a: &Attempt, url: &url::Url) -> Result<(http::Request<Full<Bytes>>, Destination), Failure> {
        let unmade = |e: &dyn std::fmt::Display| (format!("the request could not be made: {e}"), false);
        let https = match url.scheme() {
            "https" => true,
            "http" => false,
            other => return Err(unmade(&format!("the scheme {other:?} is not http or https"))),
        };
        let host = url.host_str().ok_or_else(|| unmade(&"the URL has no host"))?;
        let port = url.port_or_known_default().ok_or_else(|| unmade(&"the URL has no port"))?;
        let authority = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        };
        let target = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        };
        let method = http::Method::from_bytes(a.method.as_bytes()).map_err(|e| unmade(&e))?;
        let mut builder = http::Request::builder()
            .method(method)
            .uri(target)
            .header(http::header::HOST, authority)
            .header(http::header::USER_AGENT, USER_AGENT);
        if let Some(ct) =
            a.content_type.filter(|_| !a.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("content-type")))
        {
            builder = builder.header(http::header::CONTENT_TYPE, ct);
        }
        for (name, value) in &a.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let has_authorization = a.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("authorization"));
        if let Some(credentials) = basic_credentials(url).filter(|_| !has_authorization) {
            builder = builder.header(http::header::AUTHORIZATION, credentials);
        }
        let request = builder.body(Full::new(Bytes::from(a.body.clone()))).map_err(|e| unmade(&e))?;
        let dest = Destination {
            https,
            host: host.trim_start_matches('[').trim_end_matches(']').to_string(),
            port,
            tls_version: if https { self.tls_connector().0 } else { 0 },
        };
        Ok((request, dest))
    }

    /// Sends the request on a kept-alive connection, or a new one. A
    /// request that a reused connection could not carry (the server had
    /// closed it, as servers do with idle connections) goes once more on a
    /// new connection: at least once allows that, and it is not a failure
    /// of the endpoint.
    async fn round_trip(
        &self,
        dest: &Destination,
        request: http::Request<Full<Bytes>>,
    ) -> Result<(http::Response<hyper::body::Incoming>, Sender), Failure> {
        let request = match self.check_out(dest).await {
            Some(mut sender) => match sender.try_send_request(request).await {
                Ok(response) => return Ok((response, sender)),
                Err(mut e) if e.error().is_canceled() || e.error().is_incomplete_message() => match e.take_message() {
                    Some(request) => request,
                    None => return Err(describe(e.error(), &dest.host)),
                },
                Err(e) => return Err(describe(e.error(), &dest.host)),
            },
            None => request,
        };
        let mut sender = self.connect(dest).await?;
        let response = sender.send_request(request).await.map_err(|e| describe(&e, &dest.host))?;
        Ok((response, sender))
    }

    /// A kept-alive connection to `dest` that is ready for a request.
    async fn check_out(&self, dest: &Destination) -> Option<Sender> {
        loop {
            let (used, mut sender) = {
                let mut idle = self.idle.lock().ok()?;
                let list = idle.get_mut(dest)?;
                let next = list.pop();
                if list.is_empty() {
                    idle.remove(dest);
                }
                next?
            };
            if used.elapsed() < IDLE_TIMEOUT && !sender.is_closed() && sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    /// Keeps a connection whose exchange completed for the next request,
    /// and lets connections unused for [`IDLE_TIMEOUT`] go, at most
    /// [`SWEEP_EVERY`] after (a checkout never takes one: it checks the
    /// same). Not swept at every check-in: that walked every idle
    /// connection of the destination, hundreds, for each request.
    fn check_in(&self, dest: Destination, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            let now = Instant::now();
            let usable = |(used, s): &(Instant, Sender)| now.duration_since(*used) < IDLE_TIMEOUT && !s.is_closed();
            idle.entry(dest).or_default().push((now, sender));
            let mut swept = self.swept.lock().unwrap_or_else(|e| e.into_inner());
            if now.duration_since(*swept) >= SWEEP_EVERY {
                *swept = now;
                idle.retain(|_, list| {
                    list.retain(usable);
                    !list.is_empty()
                });
            }
        }
    }

    /// A new connection to `dest`: each allowed address in turn, then TLS
    /// when the scheme asks for it, then HTTP/1.1, whose connection task
    /// runs on the runtime until either side closes it.
    async fn connect(&self, dest: &Destination) -> Result<Sender, Failure> {
        if self.open.load(AtomicOrdering::Relaxed) >= self.max_open.load(AtomicOrdering::Relaxed) {
            self.close_longest_idle();
        }
        let counted = OpenConnection::new(&self.open);
        let addrs = self.resolver.lookup(&dest.host).await.map_err(|e| match e {
            ResolveError::Refused(why) => (format!("not connected: {why}"), false),
            e @ ResolveError::NotFound(_) => (e.to_string(), true),
        })?;
        let mut last = None;
        let mut tcp = None;
        for mut addr in addrs {
            addr.set_port(dest.port);
            match tokio::net::TcpStream::connect(addr).await {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let tcp = tcp.ok_or_else(|| {
            (format!("connection failed: {}", last.map_or_else(|| "no address".to_string(), |e| e.to_string())), true)
        })?;
        let _ = tcp.set_nodelay(true);
        if dest.https {
            let name = rustls::pki_types::ServerName::try_from(dest.host.clone())
                .map_err(|e| (format!("TLS with {} failed: {e}", dest.host), false))?;
            let (_, connector) = self.tls_connector();
            let tls = connector
                .connect(name, tcp)
                .await
                .map_err(|e| (format!("TLS with {} failed: {}", dest.host, tls_reason(&e)), true))?;
            http1_over(tls, counted).await
        } else {
            http1_over(tcp, counted).await
        }
    }
}

/// An HTTP/1.1 connection over `io`, whose task runs on the runtime (and
/// keeps `counted`) until either side closes it.
async fn http1_over<T>(io: T, counted: OpenConnection) -> Result<Sender, Failure>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper::client::conn::http1::Builder::new();
    builder.read_buf_exact_size(Some(READ_BUFFER));
    let (sender, conn) =
        builder.handshake(TokioIo::new(io)).await.map_err(|e| (format!("connection failed: {}", chain(&e)), true))?;
    tokio::spawn(async move {
        let _ = conn.await;
        drop(counted);
    });
    Ok(sender)
}

/// The rustls error inside a failed TLS handshake, else the I/O error.
fn tls_reason(e: &std::io::Error) -> String {
    match find_cause::<rustls::Error>(e) {
        Some(t) => t.to_string(),
        None => e.to_string(),
    }
}

/// What a failed exchange says, in the words the invocation log keeps; the
/// endpoint was tried.
fn describe(e: &hyper::Error, host: &str) -> Failure {
    if let Some(t) = find_cause::<rustls::Error>(e) {
        return (format!("TLS with {host} failed: {t}"), true);
    }
    if let Some(io) = find_cause::<std::io::Error>(e) {
        return (format!("connection failed: {io}"), true);
    }
    (format!("request failed: {}", chain(e)), true)
}

fn millis(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

/// Every distinct message in an error's chain of causes, outermost first.
fn chain(e: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = cur {
        let text = err.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = next_cause(err);
    }
    parts.join(": ")
}

/// `Basic` credentials from the URL's user information (RFC 7617: the
/// percent-decoded `user:password`, in base64), if it has any. A header the
/// definition sets takes precedence over them.
fn basic_credentials(url: &url::Url) -> Option<String> {
    use base64::Engine as _;
    if url.username().is_empty() && url.password().is_none() {
        return None;
    }
    let decode = |s: &str| percent_encoding::percent_decode_str(s).collect::<Vec<u8>>();
    let mut pair = decode(url.username());
    pair.push(b':');
    pair.extend(decode(url.password().unwrap_or("")));
    Some(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair)))
}

/// The cause after `err`: its source, except that an `io::Error` that wraps
/// another error leads to that error (its own `source` skips it).
fn next_cause<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a (dyn StdError + 'static)> {
    match err.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
        Some(inner) => Some(inner as &(dyn StdError + 'static)),
        None => err.source(),
    }
}

/// The first cause of type `T` in `e`'s chain.
fn find_cause<'a, T: StdError + 'static>(e: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<T>() {
            return Some(t);
        }
        cur = next_cause(err);
    }
    None
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
    use std::io::{BufRead, BufReader, Read, Write};
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

    /// Makes one attempt on a runtime of its own.
    pub fn send(client: &Client, a: &Attempt) -> Outcome {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(client.send(a))
    }

    pub fn attempt(url: &str, timeout_ms: u64) -> Attempt {
        Attempt {
            tag: 7,
            method: "POST".into(),
            url: url.into(),
            headers: vec![("X-Custom".into(), "v".into())],
            content_type: Some("application/json"),
            body: "{\"a\":1}".into(),
            timeout: Duration::from_millis(timeout_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_server::{attempt, send, serve_once};
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn sends_body_and_headers_and_reads_the_response() {
        let (url, h) = serve_once(b"HTTP/1.1 201 Created\r\nRetry-After: 5\r\nContent-Length: 5\r\n\r\nhello");
        let o = send(&Client::new(1024), &attempt(&url, 5000));
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
    fn method_and_content_type_come_from_the_attempt() {
        const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        let (url, h) = serve_once(OK);
        let get = Attempt { method: "GET".into(), content_type: None, body: String::new(), ..attempt(&url, 5000) };
        assert_eq!(send(&Client::new(1024), &get).status(), Some(200));
        let seen = h.join().unwrap();
        assert!(seen.starts_with("GET /hook HTTP/1.1\r\n"), "{seen}");
        assert!(!seen.to_ascii_lowercase().contains("content-type"), "{seen}");
        let (url, h) = serve_once(OK);
        let form = Attempt {
            content_type: Some("application/x-www-form-urlencoded"),
            body: "a=1".into(),
            ..attempt(&url, 5000)
        };
        send(&Client::new(1024), &form);
        let seen = h.join().unwrap().to_ascii_lowercase();
        assert!(
            seen.contains("content-type: application/x-www-form-urlencoded\r\n") && seen.ends_with("\r\n\r\na=1"),
            "{seen}"
        );
        // A Content-Type among the headers wins.
        let (url, h) = serve_once(OK);
        let own = Attempt { headers: vec![("Content-Type".into(), "text/plain".into())], ..attempt(&url, 5000) };
        send(&Client::new(1024), &own);
        let seen = h.join().unwrap().to_ascii_lowercase();
        assert_eq!(seen.matches("content-type").count(), 1, "{seen}");
        assert!(seen.contains("content-type: text/plain\r\n"), "{seen}");
    }

    #[test]
    fn user_information_in_the_url_becomes_basic_credentials_unless_a_header_says_otherwise() {
        const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        let (url, h) = serve_once(OK);
        let url = url.replace("http://", "http://a%40b:p%20w@");
        send(&Client::new(1024), &attempt(&url, 5000));
        // base64 of "a@b:p w": decoded, as RFC 7617 wants the pair.
        assert!(h.join().unwrap().to_ascii_lowercase().contains("authorization: basic yubionagdw==\r\n"));
        let (url, h) = serve_once(OK);
        let mut a = attempt(&url.replace("http://", "http://ada:pw@"), 5000);
        a.headers.push(("Authorization".into(), "Bearer t".into()));
        send(&Client::new(1024), &a);
        let seen = h.join().unwrap();
        assert!(seen.contains("Bearer t") && !seen.contains("Basic"), "the definition's header wins: {seen}");
    }

    #[test]
    fn redirects_are_returned_not_followed() {
        let (url, h) =
            serve_once(b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/elsewhere\r\nContent-Length: 0\r\n\r\n");
        let o = send(&Client::new(1024), &attempt(&url, 5000));
        h.join().unwrap();
        assert_eq!(o.status(), Some(302));
        assert!(o.error.is_none());
    }

    #[test]
    fn bodies_are_cut_at_the_limit() {
        let (url, h) = serve_once(b"HTTP/1.1 500 Oops\r\nContent-Length: 26\r\n\r\nabcdefghijklmnopqrstuvwxyz");
        let o = send(&Client::new(10), &attempt(&url, 5000));
        h.join().unwrap();
        let r = o.response.unwrap();
        assert_eq!((r.status, r.body.as_str(), r.body_truncated), (500, "abcdefghij", true));
    }

    #[test]
    fn refused_connections_and_timeouts_are_outcomes() {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let o = send(&Client::new(10), &attempt(&format!("http://127.0.0.1:{port}/"), 2000));
        assert!(o.response.is_none());
        assert!(o.error.unwrap().contains("connection failed"));

        let silent = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", silent.local_addr().unwrap());
        let o = send(&Client::new(10), &attempt(&url, 300));
        assert!(o.response.is_none());
        assert!(o.error.as_deref().unwrap().contains("timed out"), "{:?}", o.error);
        assert!(o.duration < Duration::from_secs(3));
    }

    #[test]
    fn a_body_the_deadline_cuts_off_keeps_its_status_and_fails() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", l.local_addr().unwrap());
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 4096];
            let _ = std::io::Read::read(&mut s, &mut buf);
            std::io::Write::write_all(&mut s, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhello").unwrap();
            std::thread::sleep(Duration::from_secs(3));
        });
        let o = send(&Client::new(1024), &attempt(&url, 500));
        assert_eq!(o.status(), Some(200));
        assert_eq!(o.completed_status(), None, "an exchange that did not complete decides nothing");
        let e = o.error.unwrap();
        assert!(e.starts_with("timed out reading the response body"), "{e}");
        assert!(o.duration < Duration::from_secs(2), "the deadline bounds the body too: {:?}", o.duration);
    }

    #[test]
    fn a_request_that_cannot_be_made_says_so_and_tries_nothing() {
        let o = send(
            &Client::new(10),
            &Attempt { headers: vec![("X-Bad".into(), "line\nbreak".into())], ..attempt("http://127.0.0.1:9/", 1000) },
        );
        assert!(!o.tried, "{:?}", o.error);
        assert!(o.error.unwrap().starts_with("the request could not be made"));
    }

    #[test]
    fn refused_destinations_are_never_connected_to() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let url = format!("http://{}/hook", l.local_addr().unwrap());
        let policy = SharedPolicy::default();
        *policy.write().unwrap() = crate::destination::NetPolicy::from_settings("", "127.0.0.0/8").0;
        let o = send(&Client::with_policy(100, policy), &attempt(&url, 2000));
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
