//! A webhook receiver on 127.0.0.1 for the end-to-end tests. It records
//! every request and answers according to the request's path:
//!
//! | path | answer |
//! |---|---|
//! | `/ok/...` | 200 |
//! | `/status/N/...` | status N |
//! | `/redirect/...` | 302 to `/ok/redirected` |
//! | `/retry-after-secs/N/...` | 503 with `Retry-After: N` |
//! | `/retry-after-date/N/...` | 503 with `Retry-After:` an HTTP date N s ahead |
//! | `/fail-first/K/...` | 500 for the first K requests of each `webhook-id`, then 200 |
//! | `/reject-first/K/...` | 409 (a failure that is not the endpoint's) for the first K requests of each `webhook-id`, then 200 |
//! | `/hang/...` | never answers (until the receiver stops) |
//! | `/hang-after/K/...` | 200 to the first K requests on this path, then never answers |
//! | `/slow/MS/...` | 200 after MS milliseconds |
//! | `/trickle/...` | a 200 whose body comes one byte every 200 ms, 100 bytes |
//! | `/big/...` | a 200 with a 10 MB body |
//! | `/garbage/...` | bytes that are not HTTP |
//! | `/retry-after-raw/V/...` | 503 with `Retry-After: V` (V taken as it is) |
//! | `/flaky/P/...` | 500 for the first attempt of P% of the events (by `webhook-id`), else 200 |
//! | `/down-until/MS/...` | 503 until the Unix time MS (milliseconds), then 200 |
//! | `/echo/...` | 400 whose body and `X-Echo` header repeat the request's headers |
//! | `/json/...` | 200 with the JSON body `{"done": true, "n": N}`, N the requests on this path so far |
//!
//! Connections are kept alive, as a real webhook's would be.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }

    /// The event id (`webhook-id`).
    pub fn event_id(&self) -> String {
        self.header("webhook-id").unwrap_or_default().to_string()
    }
}

#[derive(Default)]
struct State {
    received: Vec<Received>,
    per_event: HashMap<String, usize>,
    per_path: HashMap<String, usize>,
}

pub struct Receiver {
    pub port: u16,
    state: Arc<(Mutex<State>, Condvar)>,
    stop: Arc<AtomicBool>,
}

impl Receiver {
    pub fn start() -> Receiver {
        Self::start_on("127.0.0.1:0")
    }

    /// Listens on a given address (to come back on the same port).
    pub fn start_on(addr: &str) -> Receiver {
        let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new((Mutex::new(State::default()), Condvar::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            while !sp.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let (st, sp) = (st.clone(), sp.clone());
                        std::thread::spawn(move || serve(s, st, sp));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Receiver { port, state, stop }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.0.lock().unwrap().received.clone()
    }

    /// How many distinct events (`webhook-id`s) arrived; cheap, unlike
    /// scanning `received()`.
    pub fn distinct_events(&self) -> usize {
        self.state.0.lock().unwrap().per_event.len()
    }

    /// Requests whose path starts with `prefix`.
    pub fn received_on(&self, prefix: &str) -> Vec<Received> {
        self.received().into_iter().filter(|r| r.path.starts_with(prefix)).collect()
    }

    /// Waits until `pred` holds for the requests so far; panics after `timeout`.
    /// The receiver answers nobody while `pred` runs: keep it cheap.
    #[track_caller]
    pub fn wait_until(&self, timeout: Duration, what: &str, pred: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.state;
        let mut s = lock.lock().unwrap();
        loop {
            if pred(&s.received) {
                return s.received.clone();
            }
            let now = Instant::now();
            if now >= deadline {
                panic!("timed out after {timeout:?} waiting for {what}; got {} requests", s.received.len());
            }
            s = cv.wait_timeout(s, deadline - now).unwrap().0;
        }
    }

    /// Waits until at least `n` requests arrived on `prefix`.
    #[track_caller]
    pub fn wait_for(&self, prefix: &str, n: usize, timeout: Duration) -> Vec<Received> {
        self.wait_until(timeout, &format!("{n} requests on {prefix}"), |r| {
            r.iter().filter(|x| x.path.starts_with(prefix)).count() >= n
        })
        .into_iter()
        .filter(|r| r.path.starts_with(prefix))
        .collect()
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(stream: TcpStream, state: Arc<(Mutex<State>, Condvar)>, stop: Arc<AtomicBool>) {
    stream.set_read_timeout(Some(Duration::from_millis(200))).ok();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        // Request line, waiting while the connection is idle.
        let mut line = String::new();
        loop {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            match reader.read_line(&mut line) {
                Ok(0) => return,
                Ok(_) => break,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {
                    continue
                }
                Err(_) => return,
            }
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_string();
        let path = parts.next().unwrap_or_default().to_string();
        let mut headers = Vec::new();
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            if read_line_patiently(&mut reader, &mut h, &stop).is_none() {
                return;
            }
            let h = h.trim_end_matches(['\r', '\n']).to_string();
            if h.is_empty() {
                break;
            }
            if let Some((n, v)) = h.split_once(':') {
                let n = n.trim().to_ascii_lowercase();
                let v = v.trim().to_string();
                if n == "content-length" {
                    len = v.parse().unwrap_or(0);
                }
                headers.push((n, v));
            }
        }
        let mut body = vec![0u8; len];
        let mut got = 0;
        while got < len {
            match reader.read(&mut body[got..]) {
                Ok(0) => return,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => return,
            }
        }
        let req = Received {
            method,
            path: path.clone(),
            headers: headers.clone(),
            body: String::from_utf8_lossy(&body).into_owned(),
            at: Instant::now(),
        };
        let (attempt_of_event, on_path) = {
            let (lock, cv) = &*state;
            let mut s = lock.lock().unwrap();
            let n = s.per_event.entry(req.event_id()).or_default();
            *n += 1;
            let n = *n;
            let p = s.per_path.entry(path.clone()).or_default();
            *p += 1;
            let p = *p;
            s.received.push(req);
            cv.notify_all();
            (n, p)
        };
        if !answer(&mut out, &path, Counts { attempt_of_event, on_path }, &stop, &headers) {
            return;
        }
    }
}

fn read_line_patiently(r: &mut BufReader<TcpStream>, buf: &mut String, stop: &AtomicBool) -> Option<()> {
    loop {
        if stop.load(Ordering::SeqCst) {
            return None;
        }
        match r.read_line(buf) {
            Ok(0) => return None,
            Ok(_) => return Some(()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return None,
        }
    }
}

fn respond(out: &mut TcpStream, status: u16, extra: &str, body: &str) -> bool {
    let msg = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n{extra}\r\n{body}", body.len());
    out.write_all(msg.as_bytes()).is_ok()
}

/// Which request this is: of its event (`webhook-id`), of its path.
struct Counts {
    attempt_of_event: usize,
    on_path: usize,
}

/// Answers one request; false when the connection is done.
fn answer(
    out: &mut TcpStream,
    path: &str,
    Counts { attempt_of_event, on_path }: Counts,
    stop: &AtomicBool,
    headers: &[(String, String)],
) -> bool {
    let event_hash = headers
        .iter()
        .find(|(n, _)| n == "webhook-id")
        .map(|(_, v)| v.bytes().fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64)))
        .unwrap_or(0);
    let seg: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let num = |i: usize| seg.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    match seg.first().copied().unwrap_or("") {
        "ok" => respond(out, 200, "", "ok"),
        "json" => {
            respond(out, 200, "Content-Type: application/json\r\n", &format!("{{\"done\": true, \"n\": {on_path}}}"))
        }
        "status" => respond(out, num(1) as u16, "", "status"),
        "redirect" => respond(out, 302, "Location: /ok/redirected\r\n", ""),
        "retry-after-secs" => respond(out, 503, &format!("Retry-After: {}\r\n", num(1)), "later"),
        "retry-after-date" => {
            let at = SystemTime::now() + Duration::from_secs(num(1));
            respond(out, 503, &format!("Retry-After: {}\r\n", httpdate::fmt_http_date(at)), "later")
        }
        "fail-first" => {
            if attempt_of_event as u64 <= num(1) {
                respond(out, 500, "", "failing")
            } else {
                respond(out, 200, "", "ok")
            }
        }
        "reject-first" => {
            if attempt_of_event as u64 <= num(1) {
                respond(out, 409, "", "not yet")
            } else {
                respond(out, 200, "", "ok")
            }
        }
        "hang-after" if on_path as u64 <= num(1) => respond(out, 200, "", "ok"),
        "hang" | "hang-after" => {
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(50));
            }
            false
        }
        "slow" => {
            std::thread::sleep(Duration::from_millis(num(1)));
            respond(out, 200, "", "ok")
        }
        "trickle" => {
            if out.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n").is_err() {
                return false;
            }
            for _ in 0..100 {
                if stop.load(Ordering::SeqCst) || out.write_all(b"x").is_err() {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            true
        }
        "big" => {
            let body = "y".repeat(10 * 1024 * 1024);
            respond(out, 200, "", &body)
        }
        "retry-after-raw" => {
            respond(out, 503, &format!("Retry-After: {}\r\n", seg.get(1).copied().unwrap_or("")), "later")
        }
        "flaky" => {
            if attempt_of_event == 1 && event_hash % 100 < num(1) {
                respond(out, 500, "", "flaky")
            } else {
                respond(out, 200, "", "ok")
            }
        }
        "down-until" => {
            let now_ms = SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis();
            if now_ms < u128::from(num(1)) {
                respond(out, 503, "", "down")
            } else {
                respond(out, 200, "", "ok")
            }
        }
        "echo" => {
            let all: Vec<String> = headers.iter().map(|(n, v)| format!("{n}={v}")).collect();
            let all = all.join(";");
            respond(out, 400, &format!("X-Echo: {all}\r\n"), &all)
        }
        "garbage" => {
            let _ = out.write_all(b"this is not HTTP at all\r\n\r\n");
            false
        }
        _ => respond(out, 404, "", "no such path"),
    }
}
