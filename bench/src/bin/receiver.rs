//! The benchmark's webhooks, to run by hand: `receiver PORT` answers every
//! request 200 at once, on kept-alive connections, one thread per
//! connection; `receiver PORT DELAY_MS` answers each request DELAY_MS after
//! it arrived (event-driven, as at internet latency) and prints how many
//! requests it holds once a second. Both serve until killed; the benchmark
//! driver runs the same servers in-process through [`pg_webhooks_bench`].

use std::sync::atomic::Ordering;
use std::time::Duration;

fn main() {
    let port: u16 = std::env::args().nth(1).and_then(|p| p.parse().ok()).unwrap_or(8787);
    match std::env::args().nth(2).and_then(|d| d.parse().ok()) {
        None => {
            let server = pg_webhooks_bench::FastReceiver::start(port);
            eprintln!("receiver listening on 127.0.0.1:{}", server.port);
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        Some(ms) => {
            let server = pg_webhooks_bench::SlowReceiver::start(port, Duration::from_millis(ms));
            eprintln!("receiver listening on 127.0.0.1:{}, answering after {ms} ms", server.port);
            loop {
                std::thread::sleep(Duration::from_secs(1));
                let (n, held, peak) = (
                    server.count.load(Ordering::Relaxed),
                    server.holding.load(Ordering::Relaxed),
                    server.peak.swap(0, Ordering::Relaxed),
                );
                eprintln!("{n} requests, {held} held now, at most {peak} in the last second");
            }
        }
    }
}
