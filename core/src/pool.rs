//! The threads that make HTTP attempts concurrently, lane by lane.
//!
//! Nothing here calls into PostgreSQL. The worker's main thread hands
//! [`Attempt`]s to the pool and collects [`Outcome`]s; the pool's threads
//! only do HTTP, with every signal blocked so that PostgreSQL's signal
//! handlers always run on the main thread.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::http::{Attempt, Client, Outcome};

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
    /// Attempts that may be on the wire at once, all lanes (the threads).
    capacity: usize,
    /// A lane whose endpoint failed this many attempts in a row stops
    /// sending its queue until [`Pool::clear_failures`]: the worker, which
    /// sees the same outcomes, decides what comes next.
    halt_after: usize,
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
    /// The lane's own limit on attempts on the wire, instead of `per_lane`.
    limit: Option<usize>,
    /// At most one start per this interval (a per-second rate, evenly
    /// spaced), and when the next start may come.
    spacing: Option<Duration>,
    next_start: Option<Instant>,
    /// Endpoint failures in a row ([`Outcome::is_endpoint_failure`]).
    failures: usize,
}

impl LaneState {
    fn new(name: &str) -> LaneState {
        LaneState {
            name: name.to_string(),
            queued: VecDeque::new(),
            running: 0,
            limit: None,
            spacing: None,
            next_start: None,
            failures: 0,
        }
    }

    /// Whether the lane's concurrency allows another attempt on the wire.
    fn has_room(&self, per_lane: usize) -> bool {
        self.running < self.limit.unwrap_or(per_lane) && !self.queued.is_empty()
    }

    /// When the lane's rate lets the next attempt start (None: now).
    fn paced_until(&self, now: Instant) -> Option<Instant> {
        self.next_start.filter(|t| *t > now)
    }

    /// Books a start now: the next may come one spacing after the one
    /// this start was due at, so that a thread's small lateness does not
    /// lower the rate; a lane that was idle longer than a spacing starts
    /// from now, banking no burst.
    fn started(&mut self, now: Instant) {
        if let Some(spacing) = self.spacing {
            let base = match self.next_start {
                Some(due) if now.saturating_duration_since(due) < spacing => due,
                _ => now,
            };
            self.next_start = Some(base + spacing);
        }
    }
}

impl PoolState {
    fn lane(&mut self, name: &str) -> &mut LaneState {
        match self.lanes.iter().position(|l| l.name == name) {
            Some(i) => &mut self.lanes[i],
            None => {
                self.lanes.push(LaneState::new(name));
                self.lanes.last_mut().expect("just pushed")
            }
        }
    }

    /// Whether some lane has an attempt a thread may send now.
    fn has_work(&self, now: Instant) -> bool {
        let share = self.fair_share();
        self.lanes.iter().any(|l| self.may_send(l, share, now))
    }

    /// What one lane may have on the wire while others want to send too:
    /// the capacity shared evenly by the lanes with work (queued or on the
    /// wire), so that slow or hanging webhooks cannot take every slot from
    /// a healthy one. Alone, a lane has `per_lane` (or its own limit).
    fn fair_share(&self) -> usize {
        let active = self.lanes.iter().filter(|l| l.running > 0 || !l.queued.is_empty()).count().max(1);
        (self.capacity / active).max(1)
    }

    /// Whether lane `l` may put another attempt on the wire now.
    fn may_send(&self, l: &LaneState, share: usize, now: Instant) -> bool {
        l.has_room(self.per_lane) && l.running < share && l.failures < self.halt_after && l.paced_until(now).is_none()
    }

    /// The next attempt a thread may send, with its lane's index; else the
    /// earliest time a lane's rate lets one start, if a lane waits for it.
    fn take(&mut self, now: Instant) -> Result<(usize, Attempt), Option<Instant>> {
        let n = self.lanes.len();
        let share = self.fair_share();
        let mut earliest: Option<Instant> = None;
        for k in 0..n {
            let i = (self.next_lane + k) % n;
            let lane = &mut self.lanes[i];
            if !lane.has_room(self.per_lane) || lane.running >= share || lane.failures >= self.halt_after {
                continue;
            }
            if let Some(t) = lane.paced_until(now) {
                earliest = Some(earliest.map_or(t, |e| e.min(t)));
                continue;
            }
            if let Some(a) = lane.queued.pop_front() {
                lane.running += 1;
                lane.started(now);
                self.next_lane = (i + 1) % n;
                return Ok((i, a));
            }
        }
        Err(earliest)
    }
}

impl Pool {
    pub fn new(threads: usize, per_lane: usize, client: Client, notify: Arc<dyn Fn() + Send + Sync>) -> Pool {
        let state = PoolState {
            lanes: Vec::new(),
            next_lane: 0,
            per_lane: per_lane.max(1),
            notify_every: 64,
            halt_after: usize::MAX,
            capacity: 0,
            outcomes: Vec::new(),
            closed: false,
            idle: 0,
        };
        let mut pool = Pool { shared: Arc::new((Mutex::new(state), Condvar::new())), client, notify, threads: 0 };
        pool.grow(threads.max(1));
        pool
    }

    /// Adds threads until there are `threads` of them. They are created
    /// with every signal blocked (a thread inherits its creator's mask), so
    /// that no signal can reach one before it could block them itself:
    /// PostgreSQL's handlers must run on the main thread only.
    pub fn grow(&mut self, threads: usize) {
        let saved = block_all_signals();
        while self.threads < threads {
            let shared = self.shared.clone();
            // Each thread has its own agent, so its own connection pool: a
            // shared pool is a lock every thread takes twice per request.
            let client = Client::with_parts(self.client.max_body, self.client.policy.clone(), self.client.tls.clone());
            let notify = self.notify.clone();
            std::thread::Builder::new()
                .name(format!("pg_webhooks-http-{}", self.threads))
                .spawn(move || {
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
                                let l = &mut st.lanes[lane];
                                l.running -= 1;
                                if outcome.is_endpoint_failure() {
                                    l.failures += 1;
                                } else if outcome.tried {
                                    l.failures = 0;
                                }
                                st.outcomes.push(outcome);
                                let n = st.outcomes.len();
                                wake = n == 1 || n % st.notify_every == 0;
                            }
                            let job = loop {
                                if st.closed {
                                    break None;
                                }
                                let now = Instant::now();
                                let paced = match st.take(now) {
                                    Ok(work) => {
                                        // The slot this thread freed may let
                                        // an idle one run work of that lane.
                                        if freed && st.idle > 0 && st.has_work(now) {
                                            cv.notify_one();
                                        }
                                        break Some(work);
                                    }
                                    Err(paced) => paced,
                                };
                                if wake {
                                    // Say so before sleeping, not after.
                                    break None;
                                }
                                st.idle += 1;
                                // A lane held back by its rate is due again
                                // at `paced`: sleep no longer than that.
                                st = match paced {
                                    Some(t) => match cv.wait_timeout(st, t.saturating_duration_since(now)) {
                                        Ok((g, _)) => g,
                                        Err(_) => return,
                                    },
                                    None => match cv.wait(st) {
                                        Ok(g) => g,
                                        Err(_) => return,
                                    },
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
        restore_signals(&saved);
        if let Ok(mut st) = self.shared.0.lock() {
            st.capacity = self.threads;
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

    /// Stops sending a lane's queue after `n` endpoint failures in a row.
    pub fn halt_after(&self, n: usize) {
        let (lock, cv) = &*self.shared;
        if let Ok(mut st) = lock.lock() {
            st.halt_after = n.max(1);
        }
        cv.notify_all();
    }

    /// Lets a halted lane send again (its next attempt is a probe, or its
    /// endpoint is back).
    pub fn clear_failures(&self, lane: &str) {
        let (lock, cv) = &*self.shared;
        if let Ok(mut st) = lock.lock() {
            st.lane(lane).failures = 0;
        }
        cv.notify_all();
    }

    /// Sets one lane's limits: at most `max_concurrency` attempts on the
    /// wire (None: the pool's `per_lane`), at most `per_second` started per
    /// second, evenly spaced (None: no rate).
    pub fn set_limits(&self, lane: &str, max_concurrency: Option<usize>, per_second: Option<u32>) {
        let (lock, cv) = &*self.shared;
        if let Ok(mut st) = lock.lock() {
            let l = st.lane(lane);
            l.limit = max_concurrency.map(|n| n.max(1));
            l.spacing = per_second.map(|r| Duration::from_secs_f64(1.0 / f64::from(r.max(1))));
            if l.spacing.is_none() {
                l.next_start = None;
            }
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

    /// Attempts of `lane` on the wire.
    pub fn running_in(&self, lane: &str) -> usize {
        let (lock, _) = &*self.shared;
        lock.lock().map(|st| st.lanes.iter().find(|l| l.name == lane).map_or(0, |l| l.running)).unwrap_or(0)
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
/// handlers (PostgreSQL's) only ever run on the main thread. Returns the
/// mask it replaced.
pub fn block_all_signals() -> libc::sigset_t {
    // SAFETY: zeroed sigset_t values are valid arguments to sigfillset and
    // pthread_sigmask, which fill them; pthread_sigmask changes only the
    // calling thread's mask.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
        old
    }
}

/// Puts back a mask [`block_all_signals`] returned.
fn restore_signals(mask: &libc::sigset_t) {
    // SAFETY: sets the calling thread's mask to one read from it before.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, mask, std::ptr::null_mut()) };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The signals blocked in the calling thread, as a bit set of 1..=64.
    fn blocked_here() -> u64 {
        // SAFETY: reads the calling thread's mask into a zeroed set.
        unsafe {
            let mut cur: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut cur);
            (1..=64).filter(|&s| libc::sigismember(&cur, s) == 1).fold(0, |m, s| m | 1 << (s - 1))
        }
    }

    #[test]
    fn threads_start_with_signals_blocked_and_the_caller_keeps_its_mask() {
        let before = blocked_here();
        let pool = Pool::new(2, 1, Client::new(1024), Arc::new(|| {}));
        assert_eq!(blocked_here(), before, "the creating thread's mask is restored");
        // Every HTTP thread blocks SIGHUP, SIGTERM and SIGUSR1 (from birth,
        // as it inherited the mask grow() set while creating it). A thread
        // names itself once it runs: look until both have.
        let masks = || -> Vec<u64> {
            let mut found = Vec::new();
            for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
                let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
                if comm.starts_with("pg_webhooks-htt") {
                    let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
                    if let Some(blk) = status.lines().find_map(|l| l.strip_prefix("SigBlk:")) {
                        found.push(u64::from_str_radix(blk.trim(), 16).unwrap());
                    }
                }
            }
            found
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut found = masks();
        while found.len() < 2 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            found = masks();
        }
        assert!(found.len() >= 2, "found {} HTTP threads", found.len());
        for mask in found {
            for sig in [libc::SIGHUP, libc::SIGTERM, libc::SIGUSR1, libc::SIGINT] {
                assert_ne!(mask & (1 << (sig - 1)), 0, "signal {sig} blocked");
            }
        }
        drop(pool);
    }
    use crate::http::test_server::{attempt, serve_once};
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{TcpListener, TcpStream};

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
        let pool = Pool::new(
            8,
            8,
            Client::new(100),
            Arc::new(move || {
                n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }),
        );
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

    /// A server that answers 200 to every request on kept-alive
    /// connections, recording when each arrived.
    fn recording_server() -> (String, Arc<Mutex<Vec<Instant>>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", l.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let s = s.unwrap();
                let seen = s2.clone();
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
                            seen.lock().unwrap().push(Instant::now());
                            let mut w: &TcpStream = &s;
                            w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").unwrap();
                        }
                    }
                });
            }
        });
        (url, seen)
    }

    #[test]
    fn a_lane_rate_spaces_its_starts_evenly() {
        let (url, seen) = recording_server();
        let pool = Pool::new(8, 8, Client::new(100), Arc::new(|| {}));
        pool.set_limits("paced", None, Some(40));
        let started = Instant::now();
        for tag in 0..41 {
            pool.submit("paced", Attempt { tag, ..attempt(&url, 3000) });
        }
        assert_eq!(wait_outcomes(&pool, 41).len(), 41);
        let took = started.elapsed().as_secs_f64();
        // 41 starts at 40 per second: the first at once, the last a second
        // later, never several at a second's start.
        assert!((0.95..1.3).contains(&took), "41 attempts at 40/s took {took:.3} s");
        let mut at = seen.lock().unwrap().clone();
        at.sort();
        let gaps: Vec<f64> = at.windows(2).map(|w| w[1].duration_since(w[0]).as_secs_f64()).collect();
        let bunched = gaps.iter().filter(|g| **g < 0.010).count();
        assert!(bunched <= 2, "starts are spaced about 25 ms apart: {gaps:?}");
    }

    #[test]
    fn a_lane_limit_overrides_per_lane_and_other_lanes_are_unpaced() {
        let hang = TcpListener::bind("127.0.0.1:0").unwrap();
        let hang_url = format!("http://{}/", hang.local_addr().unwrap());
        let pool = Pool::new(8, 2, Client::new(100), Arc::new(|| {}));
        pool.set_limits("wide", Some(5), None);
        pool.set_limits("paced", None, Some(1));
        for tag in 0..8 {
            pool.submit("wide", Attempt { tag, ..attempt(&hang_url, 5000) });
        }
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(pool.running(), 5, "5 of the wide lane on the wire, not per_lane's 2");
        let (url, _) = recording_server();
        for tag in 100..103 {
            pool.submit("free", Attempt { tag, ..attempt(&url, 3000) });
        }
        let started = Instant::now();
        assert_eq!(wait_outcomes(&pool, 3).len(), 3);
        assert!(started.elapsed() < Duration::from_millis(500), "a lane without a rate is not held back");
        drop(hang);
    }

    #[test]
    fn a_lane_halts_after_failures_in_a_row_until_cleared() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let refused = format!("http://{}/", l.local_addr().unwrap());
        drop(l);
        let pool = Pool::new(1, 1, Client::new(100), Arc::new(|| {}));
        pool.halt_after(3);
        for tag in 0..10 {
            pool.submit("down", Attempt { tag, ..attempt(&refused, 1000) });
        }
        assert_eq!(wait_outcomes(&pool, 3).len(), 3);
        std::thread::sleep(Duration::from_millis(100));
        assert!(pool.outcomes().is_empty(), "nothing more is sent after 3 failures in a row");
        assert_eq!(pool.load("down"), 7);
        pool.clear_failures("down");
        assert_eq!(wait_outcomes(&pool, 3).len(), 3, "cleared: three more, then halted again");
        assert_eq!(pool.load("down"), 4);
    }

    #[test]
    fn a_hanging_lane_cannot_drift_onto_every_thread() {
        // Every thread that finishes a fast attempt takes the next lane in
        // turn: without a fair share, the hanging lane would collect every
        // thread (up to its per-lane limit of 6) and the fast lane starve.
        let hang = TcpListener::bind("127.0.0.1:0").unwrap();
        let hang_url = format!("http://{}/", hang.local_addr().unwrap());
        let (fast_url, _) = recording_server();
        let pool = Pool::new(6, 6, Client::new(100), Arc::new(|| {}));
        pool.submit_all("fast", (100..20_100).map(|tag| Attempt { tag, ..attempt(&fast_url, 3000) }).collect());
        pool.submit_all("hang", (0..20).map(|tag| Attempt { tag, ..attempt(&hang_url, 5000) }).collect());
        std::thread::sleep(Duration::from_millis(300));
        assert!(pool.load("fast") > 0, "the fast lane still has work");
        assert!(pool.running_in("hang") <= 3, "the hanging lane holds {} of 6 threads", pool.running_in("hang"));
        let fast = pool.outcomes().iter().filter(|o| o.tag >= 100 && o.status() == Some(200)).count();
        assert!(fast >= 100, "the fast lane went on: {fast} delivered");
        drop(hang);
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
