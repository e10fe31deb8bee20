//! A fast webhook receiver for the benchmarks: 200 at once, keep-alive, one
//! thread per connection, no allocation per request beyond the buffer.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub struct FastReceiver {
    pub port: u16,
    pub count: Arc<AtomicU64>,
    /// When set, (row id, arrival) of each request, for the latency run.
    pub arrivals: Arc<Mutex<Vec<(i64, Instant)>>>,
    pub record_arrivals: Arc<AtomicBool>,
}

impl FastReceiver {
    pub fn start(port: u16) -> FastReceiver {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the receiver");
        let port = listener.local_addr().unwrap().port();
        let count = Arc::new(AtomicU64::new(0));
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::new(AtomicBool::new(false));
        let (c, a, r) = (count.clone(), arrivals.clone(), record.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (c, a, r) = (c.clone(), a.clone(), r.clone());
                std::thread::spawn(move || serve(stream, c, a, r));
            }
        });
        FastReceiver { port, count, arrivals, record_arrivals: record }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn content_length(head: &[u8]) -> usize {
    let text = String::from_utf8_lossy(head);
    for line in text.split("\r\n") {
        if let Some((n, v)) = line.split_once(':') {
            if n.trim().eq_ignore_ascii_case("content-length") {
                return v.trim().parse().unwrap_or(0);
            }
        }
    }
    0
}

/// The `id` of the row in the event's `new` object: the latency run writes
/// rows whose only integer column is `id`.
fn row_id(body: &[u8]) -> Option<i64> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v["event"]["data"]["new"]["id"].as_i64()
}

fn serve(mut s: TcpStream, count: Arc<AtomicU64>, arrivals: Arc<Mutex<Vec<(i64, Instant)>>>, record: Arc<AtomicBool>) {
    let _ = s.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut chunk = [0u8; 64 * 1024];
    loop {
        // Serve every complete request in the buffer.
        while let Some(end) = find(&buf, b"\r\n\r\n") {
            let len = content_length(&buf[..end]);
            let total = end + 4 + len;
            if buf.len() < total {
                break;
            }
            if record.load(Ordering::Relaxed) {
                if let Some(id) = row_id(&buf[end + 4..total]) {
                    arrivals.lock().unwrap().push((id, Instant::now()));
                }
            }
            count.fetch_add(1, Ordering::Relaxed);
            if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").is_err() {
                return;
            }
            buf.drain(..total);
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A receiver at internet latency: answers each request `delay` after it
/// arrived, on kept-alive connections, and keeps the peak of requests held
/// at once. Event-driven (tokio, on one thread of its own), so that
/// thousands of waiting requests cost the machine little, as they would
/// cost a real webhook elsewhere. [`SlowReceiver::hanging_after`] answers
/// at once until it has answered a number of requests, then never again:
/// requests wait until the sender's timeout.
pub struct SlowReceiver {
    pub port: u16,
    pub count: Arc<AtomicU64>,
    /// Requests arrived and not answered yet, and the most there were.
    pub holding: Arc<AtomicU64>,
    pub peak: Arc<AtomicU64>,
    /// Closes every connection of a hanging receiver when set.
    pub release: Arc<AtomicBool>,
}

/// How a [`SlowReceiver`] answers.
#[derive(Clone, Copy)]
enum Answer {
    After(std::time::Duration),
    HangAfter(u64),
}

impl SlowReceiver {
    /// Answers every request `delay` after it arrived, on `port` (0: any).
    pub fn start(port: u16, delay: std::time::Duration) -> SlowReceiver {
        Self::serve(port, Answer::After(delay))
    }

    /// Answers the first `answered` requests at once (which opens the
    /// sender's window as a working webhook would), then none.
    pub fn hanging_after(answered: u64) -> SlowReceiver {
        Self::serve(0, Answer::HangAfter(answered))
    }

    fn serve(port: u16, answer: Answer) -> SlowReceiver {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the receiver");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (count, holding, peak) =
            (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let release = Arc::new(AtomicBool::new(false));
        let (c, h, p, r) = (count.clone(), holding.clone(), peak.clone(), release.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((stream, _)) = listener.accept().await else { continue };
                    let (c, h, p, r) = (c.clone(), h.clone(), p.clone(), r.clone());
                    tokio::spawn(serve_slowly(stream, answer, c, h, p, r));
                }
            });
        });
        SlowReceiver { port, count, holding, peak, release }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }
}

async fn serve_slowly(
    mut s: tokio::net::TcpStream,
    answer: Answer,
    count: Arc<AtomicU64>,
    holding: Arc<AtomicU64>,
    peak: Arc<AtomicU64>,
    release: Arc<AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = s.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(2048);
    let mut chunk = [0u8; 2048];
    loop {
        while let Some(end) = find(&buf, b"\r\n\r\n") {
            let total = end + 4 + content_length(&buf[..end]);
            if buf.len() < total {
                break;
            }
            let now = holding.fetch_add(1, Ordering::Relaxed) + 1;
            peak.fetch_max(now, Ordering::Relaxed);
            let arrived = count.fetch_add(1, Ordering::Relaxed);
            match answer {
                Answer::After(delay) => tokio::time::sleep(delay).await,
                Answer::HangAfter(n) if arrived < n => {}
                Answer::HangAfter(_) => {
                    while !release.load(Ordering::Relaxed) {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                    holding.fetch_sub(1, Ordering::Relaxed);
                    return;
                }
            }
            holding.fetch_sub(1, Ordering::Relaxed);
            if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await.is_err() {
                return;
            }
            buf.drain(..total);
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}
