//! The benchmark's webhook: answers every request 200 at once, on kept-alive
//! connections, one thread per connection. It counts requests and, for the
//! latency run, notes when each one arrived.
//!
//! `receiver PORT` serves until killed; the benchmark driver also runs the
//! same server in-process through [`pg_webhooks_bench`]'s library code.

fn main() {
    let port: u16 = std::env::args().nth(1).and_then(|p| p.parse().ok()).unwrap_or(8787);
    let server = pg_webhooks_bench::FastReceiver::start(port);
    eprintln!("receiver listening on 127.0.0.1:{}", server.port);
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
