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
