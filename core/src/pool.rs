//! Concurrent HTTP attempts, lane by lane, on a small event-driven runtime.
//!
//! Nothing here calls into PostgreSQL. The worker's main thread hands
//! [`Attempt`]s to the pool and collects [`Outcome`]s. The pool runs a tokio
//! runtime of [`RUNTIME_THREADS`] threads (created with every signal blocked,
//! so that PostgreSQL's signal handlers always run on the main thread): a
//! dispatcher task starts attempts as tasks when their lane may send, and
//! a task whose attempt ended goes on with the next one that may start,
//! so thousands can be in flight on kept-alive connections without a
//! thread each.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::http::{Attempt, Client, Outcome};

/// The runtime's threads: the attempts' I/O is event-driven, and the
/// machine's cores are shared with PostgreSQL.
pub const RUNTIME_THREADS: usize = 2;

/// Attempts a lane may have on the wire before its endpoint has answered
/// well: each attempt the endpoint answers (not an endpoint failure) lets
/// one more be in flight, up to the lane's limit, so the window doubles
/// every round trip; an endpoint failure sets it back. An endpoint that is
/// down from the start gets this many requests, not the whole backlog at
/// once. (The figure is TCP's initial window, RFC 6928.)
pub const INITIAL_WINDOW: usize = 10;

/// Attempts in flight concurrently, in lanes (one per event trigger). At
/// most `per_lane` attempts of one lane are on the wire at once (or the
/// lane's own limit), never more than the capacity in all, and lanes with
/// work share the capacity evenly, so slow or hanging webhooks cannot take
/// every slot from a healthy one.
///
/// `notify` runs when an outcome arrives while none were waiting (the worker
/// writes to a pipe its main thread waits on), and again each time
/// `notify_every` more have piled up.
pub struct Pool {
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

struct Shared {
    state: Mutex<PoolState>,
    /// Wakes the dispatcher: work was queued, limits changed, or a lane's
    /// rate sets when its next attempt may start.
    dispatch: tokio::sync::Notify,
    client: Client,
    notify: Arc<dyn Fn() + Send + Sync>,
}

struct PoolState {
    lanes: Vec<LaneState>,
    /// Where the next search for work starts, so lanes take turns.
    next_lane: usize,
    per_lane: usize,
    notify_every: usize,
    /// Attempts that may be on the wire at once, all lanes.
    capacity: usize,
    /// Attempts on the wire, all lanes.
    running: usize,
    /// A lane whose endpoint failed this many attempts in a row stops
    /// sending its queue until [`Pool::clear_failures`]: the worker, which
    /// sees the same outcomes, decides what comes next.
    halt_after: usize,
    outcomes: Vec<Outcome>,
    closed: bool,
}

struct LaneState {
    name: String,
    queued: VecDeque<Attempt>,
    running: usize,
    /// The lane's own limit on attempts on the wire, instead of `per_lane`.
    limit: Option<usize>,
    /// Attempts on the wire the lane's endpoint has earned, at most the
    /// limit ([`INITIAL_WINDOW`]).
    window: usize,
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
            window: INITIAL_WINDOW,
            spacing: None,
            next_start: None,
            failures: 0,
        }
    }

    /// Whether the lane's concurrency allows another attempt on the wire.
    fn has_room(&self, per_lane: usize) -> bool {
        self.running < self.window.min(self.limit.unwrap_or(per_lane)) && !self.queued.is_empty()
    }

    /// Counts an outcome against the endpoint: failures in a row, and the
    /// window (one more per answered attempt, back to the initial one on an
    /// endpoint failure).
    fn answered(&mut self, outcome: &Outcome, per_lane: usize) {
        if outcome.is_endpoint_failure() {
            self.failures += 1;
            self.window = INITIAL_WINDOW;
        } else if outcome.tried {
            self.failures = 0;
            self.window = (self.window + 1).min(self.limit.unwrap_or(per_lane).max(INITIAL_WINDOW));
        }
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

    /// What one lane may have on the wire while others want to send too:
    /// the capacity shared evenly by the lanes with work (queued or on the
    /// wire), so that slow or hanging webhooks cannot take every slot from
    /// a healthy one. Alone, a lane has `per_lane` (or its own limit).
    fn fair_share(&self) -> usize {
        let active = self.lanes.iter().filter(|l| l.running > 0 || !l.queued.is_empty()).count().max(1);
        (self.capacity / active).max(1)
    }

    /// The next attempt that may start, with its lane's index; else the
    /// earliest time a lane's rate lets one start, if a lane waits for it.
    fn take(&mut self, now: Instant) -> Result<(usize, Attempt), Option<Instant>> {
        if self.running >= self.capacity {
            return Err(None);
        }
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
                self.running += 1;
                self.next_lane = (i + 1) % n;
                return Ok((i, a));
            }
        }
        Err(earliest)
    }
}

impl PoolState {
    /// Every attempt that may start now (none once the pool is closed),
    /// and the earliest time a lane's rate lets the next one start.
    fn take_all(&mut self, now: Instant) -> (Vec<(usize, Attempt)>, Option<Instant>) {
        let mut started = Vec::new();
        if self.closed {
            return (started, None);
        }
        loop {
            match self.take(now) {
                Ok(work) => started.push(work),
                Err(paced) => return (started, paced),
            }
        }
    }

    /// Takes back an attempt's slot and keeps its outcome; true when the
    /// caller should be told outcomes wait.
    fn finish(&mut self, lane: usize, outcome: Outcome) -> bool {
        let per_lane = self.per_lane;
        let l = &mut self.lanes[lane];
        l.running -= 1;
        l.answered(&outcome, per_lane);
        self.running -= 1;
        self.outcomes.push(outcome);
        let n = self.outcomes.len();
        n == 1 || n.is_multiple_of(self.notify_every)
    }
}

impl Shared {
    /// Starts every attempt that may start, then sleeps until something
    /// changes (or a paced lane's next start), until the pool closes.
    async fn dispatch(self: Arc<Shared>) {
        loop {
            let (started, paced) = {
                let Ok(mut st) = self.state.lock() else { return };
                if st.closed {
                    return;
                }
                st.take_all(Instant::now())
            };
            for (lane, attempt) in started {
                tokio::spawn(self.clone().carry(lane, attempt));
            }
            match paced {
                Some(at) => {
                    let _ = tokio::time::timeout_at(at.into(), self.dispatch.notified()).await;
                }
                None => self.dispatch.notified().await,
            }
        }
    }

    /// Sends `attempt`; then, as the dispatcher would, starts every
    /// attempt that may start now (the freed slot, and one more when the
    /// answer widened the lane's window), carrying the first on in this
    /// task: the slot an outcome frees is taken again without waking the
    /// dispatcher or spawning a task, each a thread wake-up on a busy
    /// machine. When a start waits for a lane's rate, the dispatcher is
    /// woken to keep that time.
    // Not an `async fn`: the future spawns itself, so its Send must be
    // stated (the compiler cannot infer it through the cycle).
    #[allow(clippy::manual_async_fn)]
    fn carry(self: Arc<Shared>, mut lane: usize, mut attempt: Attempt) -> impl std::future::Future<Output = ()> + Send {
        async move {
            loop {
                let outcome = self.client.send(&attempt).await;
                drop(attempt);
                let (wake, (started, paced)) = match self.state.lock() {
                    Ok(mut st) => (st.finish(lane, outcome), st.take_all(Instant::now())),
                    Err(_) => return,
                };
                if wake {
                    (self.notify)();
                }
                if paced.is_some() {
                    self.dispatch.notify_one();
                }
                let mut started = started.into_iter();
                let Some(next) = started.next() else { return };
                for (l, a) in started {
                    tokio::spawn(self.clone().carry(l, a));
                }
                (lane, attempt) = next;
            }
        }
    }

    /// Changes the state and wakes the dispatcher.
    fn update(&self, change: impl FnOnce(&mut PoolState)) {
        if let Ok(mut st) = self.state.lock() {
            change(&mut st);
        }
        self.dispatch.notify_one();
    }

    fn read<T: Default>(&self, look: impl FnOnce(&PoolState) -> T) -> T {
        self.state.lock().map(|st| look(&st)).unwrap_or_default()
    }
}

impl Pool {
    /// A pool of `capacity` attempts in flight, `per_lane` of one lane.
    ///
    /// The runtime's threads are created with every signal blocked (a
    /// thread inherits its creator's mask, and each blocks them again as it
    /// starts, as do the threads the runtime adds for name lookups), so
    /// that no signal can reach one: PostgreSQL's handlers must run on the
    /// main thread only.
    pub fn new(capacity: usize, per_lane: usize, client: Client, notify: Arc<dyn Fn() + Send + Sync>) -> Pool {
        let state = PoolState {
            lanes: Vec::new(),
            next_lane: 0,
            per_lane: per_lane.max(1),
            notify_every: 64,
            halt_after: usize::MAX,
            capacity: capacity.max(1),
            running: 0,
            outcomes: Vec::new(),
            closed: false,
        };
        client.set_max_open(capacity);
        let shared =
            Arc::new(Shared { state: Mutex::new(state), dispatch: tokio::sync::Notify::new(), client, notify });
        let saved = block_all_signals();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(RUNTIME_THREADS)
            .max_blocking_threads(4)
            .thread_name("pg_webhooks-http")
            .on_thread_start(|| {
                block_all_signals();
            })
            .enable_all()
            .build()
            .expect("starting the HTTP runtime");
        runtime.spawn(shared.clone().dispatch());
        restore_signals(&saved);
        Pool { shared, runtime: Some(runtime) }
    }

    /// Sets how many attempts may be in flight, all lanes. Lowering it lets
    /// those on the wire finish; no new one starts above it.
    pub fn set_capacity(&self, capacity: usize) {
        self.shared.client.set_max_open(capacity);
        self.shared.update(|st| st.capacity = capacity.max(1));
    }

    /// Sets how many attempts of one lane may be on the wire, and after how
    /// many waiting outcomes `notify` runs again.
    pub fn configure(&self, per_lane: usize, notify_every: usize) {
        self.shared.update(|st| {
            st.per_lane = per_lane.max(1);
            st.notify_every = notify_every.max(1);
        });
    }

    /// Stops sending a lane's queue after `n` endpoint failures in a row.
    pub fn halt_after(&self, n: usize) {
        self.shared.update(|st| st.halt_after = n.max(1));
    }

    /// Lets a halted lane send again (its next attempt is a probe, or its
    /// endpoint is back).
    pub fn clear_failures(&self, lane: &str) {
        self.shared.update(|st| st.lane(lane).failures = 0);
    }

    /// Sets one lane's limits: at most `max_concurrency` attempts on the
    /// wire (None: the pool's `per_lane`), at most `per_second` started per
    /// second, evenly spaced (None: no rate).
    pub fn set_limits(&self, lane: &str, max_concurrency: Option<usize>, per_second: Option<u32>) {
        self.shared.update(|st| {
            let l = st.lane(lane);
            l.limit = max_concurrency.map(|n| n.max(1));
            l.spacing = per_second.map(|r| Duration::from_secs_f64(1.0 / f64::from(r.max(1))));
            if l.spacing.is_none() {
                l.next_start = None;
            }
        });
    }

    pub fn submit(&self, lane: &str, a: Attempt) {
        self.submit_all(lane, vec![a]);
    }

    /// Queues attempts of one lane at once.
    pub fn submit_all(&self, lane: &str, attempts: Vec<Attempt>) {
        self.shared.update(|st| st.lane(lane).queued.extend(attempts));
    }

    /// Removes the attempts of `lane` that are not on the wire yet.
    pub fn withdraw(&self, lane: &str) -> Vec<Attempt> {
        self.shared.state.lock().map(|mut st| st.lane(lane).queued.drain(..).collect()).unwrap_or_default()
    }

    /// Attempts of `lane` queued or on the wire.
    pub fn load(&self, lane: &str) -> usize {
        self.shared.read(|st| st.lanes.iter().find(|l| l.name == lane).map_or(0, |l| l.queued.len() + l.running))
    }

    /// Attempts of `lane` on the wire.
    pub fn running_in(&self, lane: &str) -> usize {
        self.shared.read(|st| st.lanes.iter().find(|l| l.name == lane).map_or(0, |l| l.running))
    }

    /// Attempts on the wire, all lanes.
    pub fn running(&self) -> usize {
        self.shared.read(|st| st.running)
    }

    /// Every outcome that has arrived, without waiting.
    pub fn outcomes(&self) -> Vec<Outcome> {
        self.shared.state.lock().map(|mut st| std::mem::take(&mut st.outcomes)).unwrap_or_default()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Attempts still on the wire are dropped, not awaited: a hanging
        // attempt must not hold up the worker's exit.
        self.shared.update(|st| st.closed = true);
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
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

    /// A server that answers 200 to every request on kept-alive
    /// connections (a thread each, with a small stack), after running
    /// `before_answer`.
    fn keep_alive_server(before_answer: impl Fn() + Send + Sync + 'static) -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", l.local_addr().unwrap());
        let before_answer = Arc::new(before_answer);
        std::thread::spawn(move || {
            for s in l.incoming() {
                let s = s.unwrap();
                let before_answer = before_answer.clone();
                std::thread::Builder::new()
                    .stack_size(64 * 1024)
                    .spawn(move || {
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
                                before_answer();
                                let mut w: &TcpStream = &s;
                                w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").unwrap();
                            }
                        }
                    })
                    .unwrap();
            }
        });
        url
    }

    /// A server that answers nobody until `n` requests have arrived (or
    /// 10 s went by): only a pool that really has them all on the wire at
    /// once gets 200s.
    fn gathering_server(n: usize) -> String {
        let arrived = (Mutex::new(0usize), std::sync::Condvar::new());
        keep_alive_server(move || {
            let (count, cv) = &arrived;
            let mut got = count.lock().unwrap();
            *got += 1;
            cv.notify_all();
            let _ = cv.wait_timeout_while(got, Duration::from_secs(10), |got| *got < n).unwrap();
        })
    }

    #[test]
    fn pool_delivers_concurrently_and_notifies() {
        let url = gathering_server(8);
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

    /// Hundreds of requests on the wire at once, on the runtime's
    /// [`RUNTIME_THREADS`] threads: a request waiting for its answer holds
    /// no thread.
    #[test]
    fn hundreds_in_flight_on_two_threads() {
        let url = gathering_server(600);
        let pool = Pool::new(1000, 1000, Client::new(100), Arc::new(|| {}));
        open_window(&pool, "lane", 600);
        pool.submit_all("lane", (0..600).map(|tag| Attempt { tag, ..attempt(&url, 15_000) }).collect());
        let deadline = Instant::now() + Duration::from_secs(5);
        while pool.running() < 600 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(pool.running(), 600, "all on the wire at once");
        let got = wait_outcomes(&pool, 600);
        assert_eq!(got.len(), 600);
        assert!(got.iter().all(|(_, s)| *s == Some(200)), "every one answered once all 600 had arrived");
    }

    /// Has `n` attempts of `lane` answered, so that its window lets `n`
    /// more be on the wire than [`INITIAL_WINDOW`].
    fn open_window(pool: &Pool, lane: &str, n: usize) {
        let (url, _) = recording_server();
        pool.submit_all(
            lane,
            (0..n as u64).map(|tag| Attempt { tag: 1_000_000 + tag, ..attempt(&url, 3000) }).collect(),
        );
        let answered = wait_outcomes(pool, n);
        assert!(answered.len() == n && answered.iter().all(|(_, s)| *s == Some(200)), "warm-up answered");
    }

    /// Idle connections to other webhooks count against the capacity too
    /// (each is a file descriptor): the oldest idle one is closed first.
    #[test]
    fn idle_connections_make_room_for_new_ones_within_the_capacity() {
        let pool = Pool::new(2, 2, Client::new(100), Arc::new(|| {}));
        for (tag, lane) in ["a", "b", "c"].into_iter().enumerate() {
            let (url, _) = recording_server();
            pool.submit(lane, Attempt { tag: tag as u64, ..attempt(&url, 3000) });
            assert_eq!(wait_outcomes(&pool, 1), vec![(tag as u64, Some(200))]);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while pool.shared.client.open_connections() > 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(pool.shared.client.open_connections(), 2, "the first webhook's idle connection was closed");
    }

    #[test]
    fn a_lane_earns_its_window_and_an_endpoint_failure_takes_it_back() {
        let hang = TcpListener::bind("127.0.0.1:0").unwrap();
        let hang_url = format!("http://{}/", hang.local_addr().unwrap());
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let refused = format!("http://{}/", l.local_addr().unwrap());
        drop(l);
        let pool = Pool::new(1000, 1000, Client::new(100), Arc::new(|| {}));
        open_window(&pool, "earned", 30);
        open_window(&pool, "lost", 30);
        pool.submit("lost", Attempt { tag: 7, ..attempt(&refused, 1000) });
        assert_eq!(wait_outcomes(&pool, 1).len(), 1);
        for lane in ["fresh", "earned", "lost"] {
            pool.submit_all(lane, (0..100).map(|tag| Attempt { tag, ..attempt(&hang_url, 5000) }).collect());
        }
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(pool.running_in("fresh"), INITIAL_WINDOW, "a new lane starts with the initial window");
        assert_eq!(pool.running_in("earned"), INITIAL_WINDOW + 30, "one more per answered attempt");
        assert_eq!(pool.running_in("lost"), INITIAL_WINDOW, "an endpoint failure set the window back");
        drop(hang);
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
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        (keep_alive_server(move || s2.lock().unwrap().push(Instant::now())), seen)
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
