//! HTTP delivery: the webhook body, one attempt with ureq, and the pool of
//! threads that make attempts concurrently.
//!
//! Nothing here calls into PostgreSQL. The worker's main thread hands
//! [`Attempt`]s to the pool and gets [`Outcome`]s back over a channel; the
//! pool's threads only do HTTP, with every signal blocked so that
//! PostgreSQL's signal handlers always run on the main thread.

use std::io::Read;
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
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
    max_body: usize,
}

impl Client {
    pub fn new(max_body: usize) -> Client {
        Client { agents: std::cell::RefCell::new(Vec::new()), max_body }
    }

    fn agent(&self, timeout: Duration) -> ureq::Agent {
        if let Some((_, a)) = self.agents.borrow().iter().find(|(t, _)| *t == timeout) {
            return a.clone();
        }
        let config = ureq::Agent::config_builder()
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
            crate::resolve::CachingResolver::default(),
        );
        self.agents.borrow_mut().push((timeout, agent.clone()));
        agent
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
        let mut req = self.agent(a.timeout).post(&a.url).header("Content-Type", "application/json");
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

fn describe_error(e: ureq::Error) -> String {
    match e {
        ureq::Error::Timeout(t) => format!("timed out ({t})"),
        ureq::Error::Io(io) => format!("connection failed: {io}"),
        ureq::Error::HostNotFound => "host not found".into(),
        other => other.to_string(),
    }
}

/// Threads that make attempts concurrently. Attempts are submitted to a
/// lane (one per event trigger); at most `per_lane` attempts of one lane are
/// on the wire at once, so one slow webhook cannot take every thread, and
/// lanes take turns. Threads pick the next attempt themselves: the caller
/// only hands work over and collects outcomes.
///
/// `notify` runs when an outcome arrives while none were waiting (the worker
/// writes to a pipe its main thread waits on), and again each time
/// `notify_every` more have piled up.
pub struct Pool {
    shared: Arc<(Mutex<PoolState>, Condvar)>,
    client: Client,
    notify: Arc<dyn Fn() + Send + Sync>,
    threads: usize,
}

struct PoolState {
    lanes: Vec<LaneState>,
    /// Where the next search for work starts, so lanes take turns.
    next_lane: usize,
    per_lane: usize,
    notify_every: usize,
    outcomes: Vec<Outcome>,
    closed: bool,
    /// Threads waiting for work: notifying costs a system call, so it is
    /// done only when someone waits.
    idle: usize,
}

struct LaneState {
    name: String,
    queued: VecDeque<Attempt>,
    running: usize,
}

impl PoolState {
    fn lane(&mut self, name: &str) -> &mut LaneState {
        match self.lanes.iter().position(|l| l.name == name) {
            Some(i) => &mut self.lanes[i],
            None => {
                self.lanes.push(LaneState { name: name.to_string(), queued: VecDeque::new(), running: 0 });
                self.lanes.last_mut().expect("just pushed")
            }
        }
    }

    /// Whether some lane has an attempt a thread may send now.
    fn has_work(&self) -> bool {
        self.lanes.iter().any(|l| l.running < self.per_lane && !l.queued.is_empty())
    }

    /// The next attempt a thread may send, with its lane's index.
    fn take(&mut self) -> Option<(usize, Attempt)> {
        let n = self.lanes.len();
        for k in 0..n {
            let i = (self.next_lane + k) % n;
            let lane = &mut self.lanes[i];
            if lane.running < self.per_lane {
                if let Some(a) = lane.queued.pop_front() {
                    lane.running += 1;
                    self.next_lane = (i + 1) % n;
                    return Some((i, a));
                }
            }
        }
        None
    }
}

impl Pool {
    pub fn new(threads: usize, per_lane: usize, client: Client, notify: Arc<dyn Fn() + Send + Sync>) -> Pool {
        let state = PoolState {
            lanes: Vec::new(),
            next_lane: 0,
            per_lane: per_lane.max(1),
            notify_every: 64,
            outcomes: Vec::new(),
            closed: false,
            idle: 0,
        };
        let mut pool = Pool { shared: Arc::new((Mutex::new(state), Condvar::new())), client, notify, threads: 0 };
        pool.grow(threads.max(1));
        pool
    }

    /// Adds threads until there are `threads` of them.
    pub fn grow(&mut self, threads: usize) {
        while self.threads < threads {
            let shared = self.shared.clone();
            // Each thread has its own agent, so its own connection pool: a
            // shared pool is a lock every thread takes twice per request.
            let client = Client::new(self.client.max_body);
            let notify = self.notify.clone();
            std::thread::Builder::new()
                .name(format!("pg_webhooks-http-{}", self.threads))
                .spawn(move || {
                    block_all_signals();
                    let (lock, cv) = &*shared;
                    let mut done: Option<(usize, Outcome)> = None;
                    loop {
                        // One lock per attempt: hand in the last outcome and
                        // take the next attempt in the same critical section.
                        // A thread with work to do never sleeps in between.
                        let (job, wake) = {
                            let Ok(mut st) = lock.lock() else { return };
                            let mut wake = false;
                            let freed = done.is_some();
                            if let Some((lane, outcome)) = done.take() {
                                st.lanes[lane].running -= 1;
                                st.outcomes.push(outcome);
                                let n = st.outcomes.len();
                                wake = n == 1 || n % st.notify_every == 0;
                            }
                            let job = loop {
                                if st.closed {
                                    break None;
                                }
                                if let Some(work) = st.take() {
                                    // The slot this thread freed may let an
                                    // idle one run work of that lane.
                                    if freed && st.idle > 0 && st.has_work() {
                                        cv.notify_one();
                                    }
                                    break Some(work);
                                }
                                if wake {
                                    // Say so before sleeping, not after.
                                    break None;
                                }
                                st.idle += 1;
                                st = match cv.wait(st) {
                                    Ok(g) => g,
                                    Err(_) => return,
                                };
                                st.idle -= 1;
                            };
                            (job, wake)
                        };
                        if wake {
                            notify();
                        }
                        match job {
                            Some((lane, job)) => done = Some((lane, client.send(&job))),
                            None if wake => continue,
                            None => return,
                        }
                    }
                })
                .expect("spawning an HTTP thread");
            self.threads += 1;
        }
    }

    /// Sets how many attempts of one lane may be on the wire, and after how
    /// many waiting outcomes `notify` runs again.
    pub fn configure(&self, per_lane: usize, notify_every: usize) {
        let (lock, cv) = &*self.shared;
        if let Ok(mut st) = lock.lock() {
            st.per_lane = per_lane.max(1);
            st.notify_every = notify_every.max(1);
        }
        cv.notify_all();
    }

    pub fn submit(&self, lane: &str, a: Attempt) {
        self.submit_all(lane, vec![a]);
    }

    /// Queues attempts of one lane at once, waking as many idle threads as
    /// there are attempts (and no more).
    pub fn submit_all(&self, lane: &str, attempts: Vec<Attempt>) {
        let (lock, cv) = &*self.shared;
        let wake = match lock.lock() {
            Ok(mut st) => {
                let n = attempts.len();
                st.lane(lane).queued.extend(attempts);
                n.min(st.idle)
            }
            Err(_) => 0,
        };
        for _ in 0..wake {
            cv.notify_one();
        }
    }

    /// Removes the attempts of `lane` that are not on the wire yet.
    pub fn withdraw(&self, lane: &str) -> Vec<Attempt> {
        let (lock, _) = &*self.shared;
        match lock.lock() {
            Ok(mut st) => st.lane(lane).queued.drain(..).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Attempts of `lane` queued or on the wire.
    pub fn load(&self, lane: &str) -> usize {
        let (lock, _) = &*self.shared;
        lock.lock()
            .map(|st| st.lanes.iter().find(|l| l.name == lane).map_or(0, |l| l.queued.len() + l.running))
            .unwrap_or(0)
    }

    /// Attempts on the wire, all lanes.
    pub fn running(&self) -> usize {
        let (lock, _) = &*self.shared;
        lock.lock().map(|st| st.lanes.iter().map(|l| l.running).sum()).unwrap_or(0)
    }

    /// Every outcome that has arrived, without waiting.
    pub fn outcomes(&self) -> Vec<Outcome> {
        let (lock, _) = &*self.shared;
        lock.lock().map(|mut st| std::mem::take(&mut st.outcomes)).unwrap_or_default()
    }

    pub fn threads(&self) -> usize {
        self.threads
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Idle threads end; busy ones end after their attempt. They are not
        // joined: a hanging attempt must not hold up the worker's exit.
        let (lock, cv) = &*self.shared;
        if let Ok(mut st) = lock.lock() {
            st.closed = true;
        }
        cv.notify_all();
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
        let pool = Pool::new(8, 8, Client::new(100), Arc::new(move || {
            n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }));
        for tag in 0..8 {
            pool.submit("lane", Attempt { tag, ..attempt(&url, 3000) });
        }
        let got = wait_outcomes(&pool, 8);
        assert_eq!(got, (0..8).map(|t| (t, Some(200))).collect::<Vec<_>>());
        assert!(notified.load(std::sync::atomic::Ordering::SeqCst) >= 1, "the caller is told outcomes arrived");
    }

    fn wait_outcomes(pool: &Pool, n: usize) -> Vec<(u64, Option<u16>)> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut got = Vec::new();
        while got.len() < n && Instant::now() < deadline {
            got.extend(pool.outcomes().into_iter().map(|o| (o.tag, o.status())));
            std::thread::sleep(Duration::from_millis(5));
        }
        got.sort();
        got
    }

    #[test]
    fn one_lane_cannot_take_every_thread() {
        // Lane "slow" hangs; with 4 threads and 2 per lane, lane "fast" still
        // gets through.
        let hang = TcpListener::bind("127.0.0.1:0").unwrap();
        let hang_url = format!("http://{}/", hang.local_addr().unwrap());
        let (fast_url, h) = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        let pool = Pool::new(4, 2, Client::new(100), Arc::new(|| {}));
        for tag in 0..6 {
            pool.submit("slow", Attempt { tag, ..attempt(&hang_url, 5000) });
        }
        std::thread::sleep(Duration::from_millis(100));
        pool.submit("fast", Attempt { tag: 100, ..attempt(&fast_url, 5000) });
        assert_eq!(wait_outcomes(&pool, 1), vec![(100, Some(200))]);
        h.join().unwrap();
        assert_eq!(pool.load("slow"), 6, "2 on the wire, 4 queued");
        assert_eq!(pool.withdraw("slow").len(), 4);
        drop(hang);
    }
}
