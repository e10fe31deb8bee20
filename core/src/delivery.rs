//! HTTP delivery: the webhook body, one attempt with ureq, and the pool of
//! threads that make attempts concurrently.
//!
//! Nothing here calls into PostgreSQL. The worker's main thread hands
//! [`Attempt`]s to the pool and gets [`Outcome`]s back over a channel; the
//! pool's threads only do HTTP, with every signal blocked so that
//! PostgreSQL's signal handlers always run on the main thread.

use std::io::Read;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

/// `User-Agent` of every request.
pub const USER_AGENT: &str = concat!("pg_webhooks/", env!("CARGO_PKG_VERSION"));

/// The JSON body the webhook receives. `event` is the event log's payload
/// (`{"op", "data", "session_variables", "trace_context"}`) as JSON text;
/// `created_at` is an ISO 8601 timestamp.
#[allow(clippy::too_many_arguments)]
pub fn webhook_body(
    id: &str,
    created_at: &str,
    trigger: &str,
    schema: &str,
    table: &str,
    event: &str,
    max_retries: i32,
    current_retry: i32,
) -> String {
    let s = |v: &str| Value::String(v.to_string()).to_string();
    format!(
        "{{\"id\":{},\"created_at\":{},\"trigger\":{{\"name\":{}}},\"table\":{{\"schema\":{},\"name\":{}}},\"event\":{event},\"delivery_info\":{{\"max_retries\":{max_retries},\"current_retry\":{current_retry}}}}}",
        s(id),
        s(created_at),
        s(trigger),
        s(schema),
        s(table),
    )
}

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
}

impl Outcome {
    pub fn status(&self) -> Option<u16> {
        self.response.as_ref().map(|r| r.status)
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
#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    max_body: usize,
}

impl Client {
    pub fn new(max_body: usize) -> Client {
        let agent = ureq::Agent::config_builder()
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
            .build()
            .new_agent();
        Client { agent, max_body }
    }

    /// Makes one attempt. Never panics on network trouble: every failure is
    /// an `Outcome` with an error.
    pub fn send(&self, a: &Attempt) -> Outcome {
        let started = SystemTime::now();
        let t0 = Instant::now();
        let (response, error) = match self.exchange(a) {
            Ok((resp, read_error)) => (Some(resp), read_error),
            Err(e) => (None, Some(e)),
        };
        Outcome { tag: a.tag, response, error, started, duration: t0.elapsed() }
    }

    fn exchange(&self, a: &Attempt) -> Result<(Response, Option<String>), String> {
        let mut req = self
            .agent
            .post(&a.url)
            .config()
            .timeout_global(Some(a.timeout))
            .build()
            .header("Content-Type", "application/json");
        for (name, value) in &a.headers {
            req = req.header(name, value);
        }
        let mut resp = req.send(a.body.as_bytes()).map_err(describe_error)?;
        let status = resp.status().as_u16();
        let headers: Vec<(String, String)> = resp
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        // Read one byte past the limit to know whether the body was cut.
        let mut buf = Vec::new();
        let read = resp.body_mut().as_reader().take(self.max_body as u64 + 1).read_to_end(&mut buf);
        let read_error = read.err().map(|e| format!("reading the response body failed: {e}"));
        let body_truncated = buf.len() > self.max_body;
        buf.truncate(self.max_body);
        Ok((Response { status, headers, body: String::from_utf8_lossy(&buf).into_owned(), body_truncated }, read_error))
    }
}

fn describe_error(e: ureq::Error) -> String {
    match e {
        ureq::Error::Timeout(t) => format!("timed out ({t})"),
        ureq::Error::Io(io) => format!("connection failed: {io}"),
        ureq::Error::HostNotFound => "host not found".into(),
        other => other.to_string(),
    }
}

/// Threads that make attempts concurrently. Attempts go in through
/// [`Pool::submit`]; outcomes come out of [`Pool::outcomes`], and `notify`
/// runs after each one is queued (the worker writes to a pipe its main
/// thread waits on).
pub struct Pool {
    jobs: Option<Sender<Attempt>>,
    job_rx: Arc<Mutex<Receiver<Attempt>>>,
    out_tx: Sender<Outcome>,
    outcomes: Receiver<Outcome>,
    client: Client,
    notify: Arc<dyn Fn() + Send + Sync>,
    threads: usize,
}

impl Pool {
    pub fn new(threads: usize, client: Client, notify: Arc<dyn Fn() + Send + Sync>) -> Pool {
        let (job_tx, job_rx) = mpsc::channel::<Attempt>();
        let (out_tx, out_rx) = mpsc::channel::<Outcome>();
        let mut pool = Pool {
            jobs: Some(job_tx),
            job_rx: Arc::new(Mutex::new(job_rx)),
            out_tx,
            outcomes: out_rx,
            client,
            notify,
            threads: 0,
        };
        pool.grow(threads.max(1));
        pool
    }

    /// Adds threads until there are `threads` of them.
    pub fn grow(&mut self, threads: usize) {
        while self.threads < threads {
            let job_rx = self.job_rx.clone();
            let out_tx = self.out_tx.clone();
            let client = self.client.clone();
            let notify = self.notify.clone();
            std::thread::Builder::new()
                .name(format!("pg_webhooks-http-{}", self.threads))
                .spawn(move || {
                    block_all_signals();
                    loop {
                        let job = match job_rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        let Ok(job) = job else { return };
                        let outcome = client.send(&job);
                        if out_tx.send(outcome).is_err() {
                            return;
                        }
                        notify();
                    }
                })
                .expect("spawning an HTTP thread");
            self.threads += 1;
        }
    }

    pub fn submit(&self, a: Attempt) {
        if let Some(jobs) = &self.jobs {
            // The threads only stop when the pool is dropped.
            let _ = jobs.send(a);
        }
    }

    /// Every outcome that has arrived, without waiting.
    pub fn outcomes(&self) -> Vec<Outcome> {
        self.outcomes.try_iter().collect()
    }

    /// Waits up to `timeout` for one outcome.
    pub fn wait_outcome(&self, timeout: Duration) -> Option<Outcome> {
        self.outcomes.recv_timeout(timeout).ok()
    }

    pub fn threads(&self) -> usize {
        self.threads
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Closing the job channel ends idle threads; busy ones end after
        // their attempt. They are not joined: a hanging attempt must not
        // hold up the worker's exit.
        self.jobs.take();
    }
}

/// Blocks every signal in the calling thread, so that the process's signal
/// handlers (PostgreSQL's) only ever run on the main thread.
pub fn block_all_signals() {
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn body_has_hasuras_shape() {
        let b = webhook_body(
            "0190d6c0-0000-7000-8000-000000000001",
            "2024-01-01T00:00:00+00:00",
            "t\"1",
            "public",
            "users",
            r#"{"op":"INSERT","data":{"old":null,"new":{"id":1}},"session_variables":null,"trace_context":null}"#,
            3,
            1,
        );
        let v: Value = serde_json::from_str(&b).unwrap();
        assert_eq!(
            v,
            json!({
                "id": "0190d6c0-0000-7000-8000-000000000001",
                "created_at": "2024-01-01T00:00:00+00:00",
                "trigger": {"name": "t\"1"},
                "table": {"schema": "public", "name": "users"},
                "event": {"op": "INSERT", "data": {"old": null, "new": {"id": 1}}, "session_variables": null, "trace_context": null},
                "delivery_info": {"max_retries": 3, "current_retry": 1}
            })
        );
    }

    /// A one-shot server: answers the first request with `reply` and returns
    /// what it read.
    fn serve_once(reply: &'static [u8]) -> (String, std::thread::JoinHandle<String>) {
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

    fn attempt(url: &str, timeout_ms: u64) -> Attempt {
        Attempt {
            tag: 7,
            url: url.into(),
            headers: vec![("X-Custom".into(), "v".into())],
            body: "{\"a\":1}".into(),
            timeout: Duration::from_millis(timeout_ms),
        }
    }

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
        let (url, h) = serve_once(b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/elsewhere\r\nContent-Length: 0\r\n\r\n");
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
    fn pool_delivers_concurrently_and_notifies() {
        // The server answers nobody until all 8 requests have arrived: only a
        // pool that really sends them at once gets 200s.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", l.local_addr().unwrap());
        let arrived = Arc::new((Mutex::new(0usize), std::sync::Condvar::new()));
        std::thread::spawn(move || {
            for s in l.incoming() {
                let s = s.unwrap();
                let arrived = arrived.clone();
                std::thread::spawn(move || {
                    let mut r = BufReader::new(s.try_clone().unwrap());
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            let mut body = [0u8; 7];
                            r.read_exact(&mut body).unwrap();
                            let (count, cv) = &*arrived;
                            let mut n = count.lock().unwrap();
                            *n += 1;
                            cv.notify_all();
                            let _ = cv.wait_timeout_while(n, Duration::from_secs(5), |n| *n < 8).unwrap();
                            let mut w: &TcpStream = &s;
                            w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").unwrap();
                        }
                    }
                });
            }
        });
        let notified = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let n = notified.clone();
        let pool = Pool::new(8, Client::new(100), Arc::new(move || {
            n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }));
        for tag in 0..8 {
            pool.submit(Attempt { tag, ..attempt(&url, 3000) });
        }
        let mut got: Vec<(u64, Option<u16>)> = (0..8)
            .map(|_| pool.wait_outcome(Duration::from_secs(10)).expect("outcome"))
            .map(|o| (o.tag, o.status()))
            .collect();
        got.sort();
        assert_eq!(got, (0..8).map(|t| (t, Some(200))).collect::<Vec<_>>());
        let deadline = Instant::now() + Duration::from_secs(5);
        while notified.load(std::sync::atomic::Ordering::SeqCst) < 8 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(notified.load(std::sync::atomic::Ordering::SeqCst), 8, "one notification per outcome");
    }
}
