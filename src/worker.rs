//! The delivery worker: a background worker that claims due events, hands
//! them to HTTP threads, and records what happened.
//!
//! One loop iteration is one short transaction: record the outcomes that
//! arrived, then claim more events within the free delivery slots. The
//! attempts go to the thread pool only after the commit, so no transaction
//! is open while a request is in flight. The loop sleeps on its latch (set
//! by committing backends, `redeliver_event`, `invoke_event_trigger` and
//! signals) and on a pipe the HTTP threads write to when an outcome is ready.

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering as AtomicOrdering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pgrx::bgworkers::{BackgroundWorker, SignalWakeFlags};
use pgrx::prelude::*;
use webhooks_core::body::WebhookBody;
use webhooks_core::definition::{Definition, Ordering, RetryConf, Throttle};
use webhooks_core::env_policy::EnvPolicy;
use webhooks_core::http::{set_tls, Attempt, Client, Outcome, SharedTls};
use webhooks_core::pool::Pool;
use webhooks_core::request;
use webhooks_core::resolve::SharedPolicy;
use webhooks_core::retry::{self, Verdict};
use webhooks_core::tls;
use webhooks_core::transform::{Input, ResponseTransform};

use crate::shmem::{self, WorkerSlot};
use crate::{catalog, definitions, event_log, health, settings};

/// A delivery worker, started by the launcher for the database of shared
/// memory slot `arg`. It first checks that the extension is installed
/// there; if not, it says so in its slot and exits.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_webhooks_worker_main(arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    // A background worker ignores SIGHUP until its handler is set: a reload
    // between the postmaster's fork and here is lost, and the worker would
    // keep the configuration it was forked with. Read it once now.
    // SAFETY: on the main thread, before any transaction, as PostgreSQL's
    // own processes do on SIGHUP.
    unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
    let shared = shmem::shared().expect("the worker only runs when preloaded");
    let Some(slot) = shared.slots.get(arg.value()) else {
        error!("pg_webhooks: delivery worker started for slot {} of {}", arg.value(), shmem::MAX_WORKERS)
    };
    // SAFETY: registers a callback for the life of the process; its
    // argument is the slot index, checked above.
    unsafe { pg_sys::before_shmem_exit(Some(on_exit), arg) };
    let database = pg_sys::Oid::from(slot.database.load(AtomicOrdering::Acquire));
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(database), None);
    slot.register_worker();
    let (installed, name) =
        BackgroundWorker::transaction(|| (catalog::extension_installed(), catalog::database_name()));
    if !installed {
        debug1!("pg_webhooks: database \"{name}\" has no pg_webhooks extension; nothing to deliver there");
        slot.state.store(shmem::state::ABSENT, AtomicOrdering::Release);
        // SAFETY: ends the process, as a background worker does.
        unsafe { pg_sys::proc_exit(0) };
    }
    slot.state.store(shmem::state::SERVING, AtomicOrdering::Release);
    log!("pg_webhooks: delivery worker started for database \"{name}\"");
    raise_open_file_limit();
    let mut worker = Worker::new(slot);
    match worker.run() {
        Stop::Terminated => log!("pg_webhooks: delivery worker for database \"{name}\" stopped"),
        Stop::Dropped => {
            log!("pg_webhooks: the extension was dropped from database \"{name}\"; its delivery worker stops");
            slot.state.store(shmem::state::ABSENT, AtomicOrdering::Release);
        }
    }
    // Whatever the reason, the launcher decides what comes next: a new
    // worker after a pause, unless the extension or the database is gone.
    // So pg_terminate_backend() restarts the worker rather than stopping
    // delivery for good.
    // SAFETY: ends the process, as a background worker does.
    unsafe { pg_sys::proc_exit(0) };
}

/// Every connection to a webhook is a file descriptor, on top of the
/// server's own: the soft limit (often 1,024) is raised to the hard limit,
/// so that `webhooks.max_concurrent_deliveries` connections fit. The
/// connections the pool may open are capped below what is left
/// ([`settings::max_concurrent`]).
fn raise_open_file_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit read and write the struct given, for
    // this process only.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        let want = lim.rlim_max.min(1 << 20);
        if lim.rlim_cur < want {
            let raised = libc::rlimit { rlim_cur: want, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                debug1!("pg_webhooks: open file limit raised from {} to {want}", lim.rlim_cur);
                lim.rlim_cur = want;
            }
        }
    }
    settings::set_open_file_limit(lim.rlim_cur as usize);
}

/// Runs as the worker's process exits, however it exits (an ERROR, FATAL
/// while connecting): the slot shows that no worker runs.
///
/// # Safety
/// Called by PostgreSQL only, with the slot index registered above.
#[pg_guard]
unsafe extern "C-unwind" fn on_exit(_code: i32, arg: pg_sys::Datum) {
    if let Some(slot) = shmem::shared().and_then(|s| s.slots.get(arg.value())) {
        slot.unregister_worker();
        if let Some(s) = shmem::shared() {
            s.wake_launcher();
        }
    }
}

/// Why [`Worker::run`] returned.
enum Stop {
    /// SIGTERM: the server stops, or someone terminated the worker.
    Terminated,
    /// The extension is no longer installed in the database.
    Dropped,
}

/// One event trigger as the worker serves it: its definition, and where its
/// claims stand. Rate limits, breakers and ordering hang here.
struct Lane {
    /// The row version of the definition (its `xmin`): a change means the
    /// definition is read again.
    version: String,
    def: Definition,
    /// The environment variables its webhook and headers may use: all of
    /// them when its owner is a superuser, else `webhooks.allowed_env_vars`
    /// (checked again every round, as roles and the setting change).
    env_policy: EnvPolicy,
    /// A claim may find more due events: set by wake-ups, cleared by a
    /// claim that came back short.
    maybe_more: bool,
    /// Where the last full claim stopped, and since when the cursor is in
    /// use. Events that commit late with an earlier due time sit behind it,
    /// so it is dropped when a claim comes back short and after
    /// CURSOR_LIFETIME.
    cursor: Option<(event_log::Cursor, Instant)>,
    /// Whether its endpoint answers.
    health: Health,
    /// `"ordering": "trigger"`: the event ahead failed and waits for its
    /// retry until then; nothing is claimed before.
    held_until: Option<Instant>,
    /// When its `cleanup_config` runs next (seconds since the epoch), if it
    /// has one that is not paused.
    cleanup_at: Option<i64>,
}

/// Endpoint failures ([`Outcome::is_endpoint_failure`]) in a row after which
/// a trigger's endpoint is treated as down.
const DOWN_AFTER: u32 = 5;
/// The shortest wait between two probes of a down endpoint.
const MIN_PROBE_WAIT: Duration = Duration::from_secs(1);

/// A lane's endpoint: up, counting failures in a row, or down. While it is
/// down the lane claims nothing but one probe at a time, at the pace of the
/// trigger's backoff; failures there do not spend the events' attempts.
#[derive(Default)]
struct Health {
    failures: u32,
    down: Option<Down>,
}

struct Down {
    /// Probes that failed since the endpoint went down.
    probes_failed: i32,
    next_probe: Instant,
    /// A probe is claimed or on the wire.
    probing: bool,
}

impl Lane {
    fn new(version: String, def: Definition, env_policy: EnvPolicy) -> Lane {
        let cleanup_at = next_cleanup(&def);
        Lane {
            version,
            def,
            env_policy,
            maybe_more: true,
            cursor: None,
            health: Health::default(),
            held_until: None,
            cleanup_at,
        }
    }

    /// The endpoint is down and the next probe is due.
    fn probe_due(&self, now: Instant) -> bool {
        self.health.down.as_ref().is_some_and(|d| !d.probing && now >= d.next_probe)
    }
}

fn epoch_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64
}

/// The next time `def`'s cleanup runs, from now.
fn next_cleanup(def: &Definition) -> Option<i64> {
    def.cleanup.as_ref().filter(|c| !c.paused).and_then(|c| c.next_after(epoch_secs()))
}

/// Applies a trigger's response transform to a 2xx answer: its output is
/// stored as the response body; if it fails, the attempt counts as a 500
/// (retried as any failure), with the reason as the body.
fn transform_response(t: &ResponseTransform, o: &mut Outcome, f: &InFlight) {
    let Some((payload, base_url)) = &f.original else { return };
    if o.error.is_some() || !o.status().is_some_and(|s| (200..300).contains(&s)) {
        return;
    }
    let Some(r) = o.response.as_mut() else { return };
    let payload: serde_json::Value = serde_json::from_str(payload).unwrap_or_default();
    match t.apply(&r.body, &Input { payload: &payload, base_url }) {
        Ok(body) => r.body = body,
        Err(why) => {
            r.status = 500;
            r.body = format!("the response transform failed: {why}");
        }
    }
}

/// How long to wait before probe `n` (1-based) of a down endpoint: the
/// trigger's backoff, at least MIN_PROBE_WAIT.
fn probe_wait(conf: &RetryConf, n: i32) -> Duration {
    retry::delay(conf, n, retry::random_unit()).max(MIN_PROBE_WAIT)
}

/// A claimed event, keyed by its tag, from its claim until its result is
/// recorded.
struct InFlight {
    event_id: pgrx::Uuid,
    trigger: String,
    tries_before: i32,
    retry: RetryConf,
    /// The request as logged, secrets redacted (JSON text).
    request_log: String,
    /// Values taken from the environment for this request (URL parts,
    /// header values): never logged, scrubbed from what the webhook answers.
    secrets: Vec<String>,
    /// Sent to probe a down endpoint.
    probe: bool,
    /// The request transform failed: the event fails at once.
    transform_failed: bool,
    /// The payload and webhook URL a response transform reads.
    original: Option<(String, String)>,
}

/// Outcomes are recorded when this many have piled up ...
fn flush_at() -> usize {
    (settings::BATCH_SIZE.get().max(2) / 2) as usize
}
/// ... or when the oldest has waited this long.
const FLUSH_AFTER: Duration = Duration::from_millis(20);

const CURSOR_LIFETIME: Duration = Duration::from_secs(1);
/// How often the worker applies `webhooks.retention`.
const RETENTION_EVERY: Duration = Duration::from_secs(10);

struct Worker {
    shared: &'static WorkerSlot,
    pool: Pool,
    /// `webhooks.allow_networks` / `deny_networks`, read by every HTTP
    /// thread's resolver.
    destinations: SharedPolicy,
    /// The TLS configuration of every HTTP thread's client.
    tls: SharedTls,
    wake_fd: RawFd,
    /// Every trigger that is not paused, by name.
    lanes: HashMap<String, Lane>,
    in_flight: HashMap<u64, InFlight>,
    next_tag: u64,
    /// Outcomes not yet recorded, and when the oldest arrived.
    outcomes: Vec<Outcome>,
    oldest_outcome: Option<Instant>,
    /// When the next retry falls due, if no claim is pending anyway.
    next_due: Option<Instant>,
    /// The extension is installed and stale locks were released.
    ready: bool,
    /// `wake_requests` as last seen: a change means new work may be due.
    seen_wakes: u64,
    /// When `webhooks.retention` was last applied.
    last_cleanup: Option<Instant>,
    /// Whether freed memory went back to the system since the worker last
    /// had attempts in flight.
    trimmed: bool,
    /// Attempts claimed in the current round, per trigger: they go to the
    /// pool once the round's transaction (which claimed them) has committed.
    to_send: Vec<(String, Vec<Attempt>)>,
}

impl Worker {
    fn new(shared: &'static WorkerSlot) -> Worker {
        let (read_fd, write_fd) = wake_pipe();
        let notify: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
            // SAFETY: a write to a pipe this process owns for its lifetime.
            // A full pipe already wakes the main thread; losing this byte is
            // fine.
            unsafe { libc::write(write_fd, [1u8].as_ptr().cast(), 1) };
        });
        let destinations = SharedPolicy::default();
        let tls = SharedTls::default();
        let client =
            Client::with_parts(settings::RESPONSE_BODY_LIMIT.get().max(0) as usize, destinations.clone(), tls.clone());
        let worker = Worker {
            shared,
            destinations,
            tls,
            pool: Pool::new(settings::max_concurrent(), settings::max_concurrent_per_trigger(), client, notify),
            wake_fd: read_fd,
            lanes: HashMap::new(),
            in_flight: HashMap::new(),
            next_tag: 1,
            outcomes: Vec::new(),
            oldest_outcome: None,
            next_due: None,
            ready: false,
            seen_wakes: 0,
            last_cleanup: None,
            trimmed: true,
            to_send: Vec::new(),
        };
        worker.pool.halt_after(DOWN_AFTER as usize);
        worker.apply_destinations();
        worker.apply_tls();
        worker
    }

    /// Loads the TLS settings and files (at start and on every reload, so a
    /// renewed file is read again). A setting that cannot be
    /// used (a file missing or not PEM) is a WARNING, and HTTPS then trusts
    /// nothing until it is fixed: attempts fail rather than trust more than
    /// the operator asked for.
    fn apply_tls(&self) {
        let config = match tls::load(&settings::tls()) {
            Ok(loaded) => {
                debug1!("pg_webhooks: HTTPS webhooks are checked against {}", loaded.roots);
                loaded.config
            }
            Err(e) => {
                warning!("pg_webhooks: {e}; HTTPS webhooks fail until it is fixed");
                tls::trust_nothing()
            }
        };
        set_tls(&self.tls, config);
    }

    /// Hands the destination settings to the HTTP threads; entries that are
    /// not CIDRs are left out, with a WARNING.
    fn apply_destinations(&self) {
        let (policy, bad) = settings::destinations();
        for entry in bad {
            warning!(
                "pg_webhooks: \"{entry}\" in webhooks.allow_networks or webhooks.deny_networks is not a CIDR or an address; it is ignored"
            );
        }
        if let Ok(mut p) = self.destinations.write() {
            *p = policy;
        }
    }

    /// The main loop. The pool's threads take queued attempts themselves;
    /// outcomes pile up to be recorded in batches. A database round (record,
    /// refresh, claim) runs when something may be due (a wake-up, a
    /// timeout), when a lane's queue runs low, or when enough outcomes
    /// wait; its claims are sent once it has committed.
    fn run(&mut self) -> Stop {
        let mut woken = true;
        self.pool.configure(settings::max_concurrent_per_trigger(), flush_at());
        loop {
            if BackgroundWorker::sigterm_received() {
                self.shutdown();
                return Stop::Terminated;
            }
            if BackgroundWorker::sighup_received() {
                self.reload();
                woken = true;
            }
            woken |= self.new_wakeups();
            if woken {
                for lane in self.lanes.values_mut() {
                    lane.maybe_more = true;
                }
            }
            self.collect();
            if woken || self.round_is_due() {
                // An ERROR ends the process (the postmaster restarts it), so
                // no state survives a failed transaction.
                BackgroundWorker::transaction(AssertUnwindSafe(|| self.round()));
                if !self.ready {
                    self.shutdown();
                    return Stop::Dropped;
                }
                self.send();
            }
            self.shared.in_flight.store(self.in_flight.len() as i64, AtomicOrdering::Relaxed);
            self.apply_retention();
            self.run_scheduled_cleanups();
            self.trim_when_idle();
            woken = if self.lanes.keys().any(|t| self.wants_more(t)) { true } else { self.wait(self.sleep_time()) };
        }
    }

    /// Rereads the configuration file (SIGHUP) and applies what changed.
    fn reload(&mut self) {
        // SAFETY: called on the main thread between transactions, as
        // PostgreSQL's own processes do.
        unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        self.pool.set_capacity(settings::max_concurrent());
        self.pool.configure(settings::max_concurrent_per_trigger(), flush_at());
        self.apply_destinations();
        self.apply_tls();
        self.last_cleanup = None;
    }

    /// Whether committing backends asked for a wake-up since the last look.
    /// They bump the counter before they set the latch, so a wake-up is
    /// never lost between a latch reset and this check.
    fn new_wakeups(&mut self) -> bool {
        let wakes = self.shared.wake_requests.load(AtomicOrdering::Acquire);
        let new = wakes != self.seen_wakes;
        self.seen_wakes = wakes;
        new
    }

    /// Whether a round is worth it without a wake-up: a lane runs low,
    /// enough outcomes wait, or a retry fell due.
    fn round_is_due(&self) -> bool {
        let now = Instant::now();
        self.lanes.keys().any(|t| self.wants_more(t))
            || self.lanes.values().any(|l| l.probe_due(now))
            || self.outcomes.len() >= flush_at()
            || self.oldest_outcome.is_some_and(|t| t.elapsed() >= FLUSH_AFTER)
            || self.serial_outcome_waits()
            || self.next_due.is_some_and(|t| Instant::now() >= t)
    }

    /// How long to sleep when nothing is to be done: until the poll
    /// interval, the outcomes' flush, the next retry or the next cleanup.
    fn sleep_time(&self) -> Duration {
        let mut timeout = Duration::from_millis(settings::POLL_INTERVAL_MS.get().max(1) as u64);
        if let Some(t) = self.oldest_outcome {
            timeout = timeout.min(FLUSH_AFTER.saturating_sub(t.elapsed()));
        }
        if let Some(t) = self.next_due {
            timeout = timeout.min(t.saturating_duration_since(Instant::now()));
        }
        for d in self.lanes.values().filter_map(|l| l.health.down.as_ref()).filter(|d| !d.probing) {
            timeout = timeout.min(d.next_probe.saturating_duration_since(Instant::now()));
        }
        for held in self.lanes.values().filter(|l| l.maybe_more).filter_map(|l| l.held_until) {
            timeout = timeout.min(held.saturating_duration_since(Instant::now()));
        }
        if let (Some(_), Some(t)) = (settings::retention(), self.last_cleanup) {
            timeout = timeout.min(RETENTION_EVERY.saturating_sub(t.elapsed()));
        }
        if let Some(at) = self.lanes.values().filter_map(|l| l.cleanup_at).min() {
            timeout = timeout.min(Duration::from_secs((at - epoch_secs()).max(0) as u64));
        }
        timeout
    }

    /// Sleeps until the latch, an outcome, or the timeout. True when the
    /// time ran out (a retry or the poll may be due); wake-ups by committing
    /// backends are seen through their counter.
    fn wait(&mut self, timeout: Duration) -> bool {
        let events =
            pg_sys::WL_LATCH_SET | pg_sys::WL_SOCKET_READABLE | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH;
        // SAFETY: the worker's own latch and pipe, on the main thread.
        let rc = unsafe {
            let rc = pg_sys::WaitLatchOrSocket(
                pg_sys::MyLatch,
                events as i32,
                self.wake_fd,
                timeout.as_millis().clamp(0, i64::MAX as u128) as i64,
                pg_sys::PG_WAIT_EXTENSION,
            );
            pg_sys::ResetLatch(pg_sys::MyLatch);
            rc
        };
        drain(self.wake_fd);
        // SAFETY: reads the clock.
        self.shared.last_wakeup.store(unsafe { pg_sys::GetCurrentTimestamp() }, AtomicOrdering::Relaxed);
        pgrx::check_for_interrupts!();
        rc & pg_sys::WL_TIMEOUT as i32 != 0
    }

    /// Once the worker has nothing in flight, gives the memory a busy spell
    /// freed back to the system: glibc keeps freed blocks for reuse, and
    /// the blocks the HTTP threads freed sit in their own arenas, where the
    /// main thread's work cannot reuse them.
    fn trim_when_idle(&mut self) {
        if !self.in_flight.is_empty() || !self.outcomes.is_empty() {
            self.trimmed = false;
        } else if !self.trimmed {
            self.trimmed = true;
            #[cfg(target_env = "gnu")]
            // SAFETY: malloc_trim only returns free memory of glibc's
            // arenas to the system; it is safe to call from any thread at
            // any time.
            unsafe {
                libc::malloc_trim(0);
            }
        }
    }

    /// Runs the cleanup of `webhooks.retention`, at most every
    /// RETENTION_EVERY, in a transaction of its own.
    fn apply_retention(&mut self) {
        let Some(retention) = settings::retention() else { return };
        if !self.ready || self.last_cleanup.is_some_and(|t| t.elapsed() < RETENTION_EVERY) {
            return;
        }
        self.last_cleanup = Some(Instant::now());
        BackgroundWorker::transaction(AssertUnwindSafe(|| {
            if !catalog::extension_installed() {
                return;
            }
            event_log::lock_for_round();
            match event_log::cleanup(&retention) {
                Ok(n) if n > 0 => log!("pg_webhooks: webhooks.retention = '{retention}' removed {n} finished events"),
                Ok(_) => {}
                Err(e) => warning!("pg_webhooks: webhooks.retention = '{retention}' is not usable: {e}"),
            }
        }));
    }

    /// Runs the `cleanup_config`s that are due, each in a transaction of
    /// its own, and schedules their next runs.
    fn run_scheduled_cleanups(&mut self) {
        let now = epoch_secs();
        if !self.ready || !self.lanes.values().any(|l| l.cleanup_at.is_some_and(|at| at <= now)) {
            return;
        }
        let mut due = Vec::new();
        for (name, lane) in self.lanes.iter_mut().filter(|(_, l)| l.cleanup_at.is_some_and(|at| at <= now)) {
            lane.cleanup_at = next_cleanup(&lane.def);
            if let Some(c) = lane.def.cleanup.clone() {
                due.push((name.clone(), c));
            }
        }
        for (name, c) in due {
            BackgroundWorker::transaction(AssertUnwindSafe(|| {
                if !catalog::extension_installed() {
                    return;
                }
                event_log::lock_for_round();
                let hours = c.clear_older_than_hours;
                match event_log::cleanup_trigger(&name, hours, c.batch_size, c.timeout_sec, c.clean_invocation_logs) {
                    Ok(n) => log!(
                        "pg_webhooks: the cleanup_config of event trigger \"{name}\" removed {n} ended events older than {hours} hours"
                    ),
                    Err(e) => warning!("pg_webhooks: the cleanup_config of event trigger \"{name}\" stopped: {e}"),
                }
            }));
        }
    }

    /// Takes the outcomes that arrived.
    fn collect(&mut self) {
        let outcomes = self.pool.outcomes();
        if !outcomes.is_empty() {
            self.oldest_outcome.get_or_insert_with(Instant::now);
            self.outcomes.extend(outcomes);
        }
    }

    /// Whether a claim for `trigger` is worth a round now: more may be due
    /// and its queue is down to half a batch.
    fn wants_more(&self, trigger: &str) -> bool {
        self.lanes.get(trigger).is_some_and(|l| {
            l.health.down.is_none()
                && l.maybe_more
                && !waits_for_the_one_ahead(&self.pool, trigger, l, Instant::now())
                && room(&self.pool, trigger, &l.def.throttle) * 2 >= queue_target(&l.def.throttle)
        })
    }

    /// Whether an outcome waits that a `"trigger"`-ordered lane's next event
    /// waits for: recorded at once, not batched with others.
    fn serial_outcome_waits(&self) -> bool {
        self.outcomes.iter().any(|o| {
            self.in_flight
                .get(&o.tag)
                .and_then(|f| self.lanes.get(&f.trigger))
                .is_some_and(|l| l.def.ordering == Ordering::Trigger)
        })
    }

    /// One transaction: record outcomes, refresh the lanes, claim what they
    /// can take.
    fn round(&mut self) {
        if !self.ensure_ready() {
            return;
        }
        let outcomes = std::mem::take(&mut self.outcomes);
        self.oldest_outcome = None;
        self.record(outcomes);
        self.refresh_lanes();
        self.claim();
    }

    /// Whether the extension is installed; the first time it is, sets up
    /// the session and releases the locks a dead worker left. When it is
    /// gone, forgets everything claimed (it belonged to the dropped tables)
    /// and the worker stops.
    fn ensure_ready(&mut self) -> bool {
        if !catalog::extension_installed() {
            self.ready = false;
            self.in_flight.clear();
            self.lanes.clear();
            self.outcomes.clear();
            self.oldest_outcome = None;
            return false;
        }
        event_log::lock_for_round();
        if self.ready {
            return true;
        }
        Spi::run("SET search_path = pg_catalog, pg_temp").expect("setting search_path");
        // Every query of this session touches a batch of rows through an
        // index: the claim walks the fetch index in order and stops after a
        // batch, the updates join by primary key. The planner cannot see the
        // batch size inside the claim (a LIMIT from a lateral list) and, with
        // a large backlog or stale statistics, prefers plans that sort or
        // hash the whole table on every round (seen: a hash join over 1.3M
        // rows, a bitmap scan sorting the backlog, and JIT compiling them).
        // None of those ever pays off here.
        for setting in [
            "SET enable_bitmapscan = off",
            "SET enable_sort = off",
            "SET enable_hashjoin = off",
            "SET enable_mergejoin = off",
            "SET jit = off",
            // Its statements are planned once (see crate::plans).
            "SET plan_cache_mode = force_generic_plan",
        ] {
            Spi::run(setting).expect("planner setting");
        }
        health::reset();
        let released = event_log::release_stale_locks();
        if released > 0 {
            log!(
                "pg_webhooks: released {released} event locks left by a previous worker; they will be delivered again"
            );
        }
        self.ready = true;
        true
    }

    /// Brings the lanes up to date with the definitions: every round checks
    /// which triggers exist and are not paused, and their row versions; only
    /// a definition whose row changed is read and parsed again. The queued
    /// attempts of triggers deleted or paused since are released, not sent.
    fn refresh_lanes(&mut self) {
        let states = definitions::trigger_states();
        let restricted = settings::restricted_env_policy();
        let changed: Vec<String> = states
            .iter()
            .filter(|t| self.lanes.get(&t.name).is_none_or(|l| l.version != t.version))
            .map(|t| t.name.clone())
            .collect();
        if !changed.is_empty() {
            debug1!("pg_webhooks: reading the definitions of {}", changed.join(", "));
        }
        for (name, version, stored) in definitions::definitions_of(changed) {
            match Definition::from_stored(&stored.0) {
                Ok(def) => {
                    let t = def.throttle;
                    self.pool.set_limits(&name, t.max_concurrency.map(|n| n as usize), t.per_second);
                    match self.lanes.get_mut(&name) {
                        Some(lane) => {
                            if lane.def.cleanup != def.cleanup {
                                lane.cleanup_at = next_cleanup(&def);
                            }
                            lane.version = version;
                            lane.def = def;
                        }
                        None => {
                            let lane = Lane::new(version, def, restricted.clone());
                            self.lanes.insert(name, lane);
                        }
                    }
                }
                Err(e) => {
                    warning!("pg_webhooks: event trigger \"{name}\" has an invalid stored definition: {}", e.message)
                }
            }
        }
        for t in &states {
            if let Some(lane) = self.lanes.get_mut(&t.name) {
                lane.env_policy = if t.owner_is_superuser { EnvPolicy::unrestricted() } else { restricted.clone() };
            }
        }
        let gone: Vec<String> = self.lanes.keys().filter(|n| !states.iter().any(|t| t.name == **n)).cloned().collect();
        let mut released = Vec::new();
        for name in gone {
            if self.lanes.remove(&name).is_some_and(|l| l.health.down.is_some()) {
                health::mark_up(&name);
            }
            // A lane that comes back (resumed) starts with its endpoint up.
            self.pool.clear_failures(&name);
            for a in self.pool.withdraw(&name) {
                if let Some(f) = self.in_flight.remove(&a.tag) {
                    released.push(f.event_id);
                }
            }
        }
        event_log::unlock(released);
    }

    /// Claims due events for every lane with room, prepares their requests
    /// (sent after the commit), and works out when to look again.
    fn claim(&mut self) {
        // Unordered lanes and ordered lanes apart, each with its cursor.
        let (mut names, mut limits, mut cursors) = (Vec::new(), Vec::new(), Vec::new());
        let (mut ordered, mut ordered_limits, mut ordered_cursors) = (Vec::new(), Vec::new(), Vec::new());
        let now = Instant::now();
        for (name, lane) in &mut self.lanes {
            lane.cursor = lane.cursor.filter(|(_, since)| since.elapsed() < CURSOR_LIFETIME);
            let is_ordered = lane.def.ordering != Ordering::None;
            let limit = if lane.health.down.is_some() {
                // One probe, when it is due; nothing else.
                if !lane.probe_due(now) {
                    continue;
                }
                1
            } else {
                let room = room(&self.pool, name, &lane.def.throttle);
                if !lane.maybe_more || room == 0 {
                    continue;
                }
                if waits_for_the_one_ahead(&self.pool, name, lane, now) {
                    continue;
                }
                // "trigger": one at a time. A larger limit would not claim
                // more (each later event waits for the one ahead) but would
                // make the claim test every pending event for one.
                if lane.def.ordering == Ordering::Trigger {
                    1
                } else {
                    room as i32
                }
            };
            let cursor = if lane.health.down.is_some() { None } else { lane.cursor.map(|(c, _)| c) };
            if is_ordered {
                ordered.push(name.clone());
                ordered_limits.push(limit);
                ordered_cursors.push(cursor);
            } else {
                names.push(name.clone());
                limits.push(limit);
                cursors.push(cursor);
            }
        }
        let mut claimed = event_log::claim(names.clone(), limits.clone(), cursors);
        claimed.extend(event_log::claim_ordered(ordered.clone(), ordered_limits.clone(), ordered_cursors));
        names.extend(ordered);
        limits.extend(ordered_limits);
        let mut got: HashMap<String, usize> = HashMap::new();
        let mut last: HashMap<String, event_log::Cursor> = HashMap::new();
        for event in claimed {
            *got.entry(event.trigger.clone()).or_default() += 1;
            last.insert(event.trigger.clone(), (event.due, event.id));
            self.prepare(event);
        }
        for (name, limit) in names.iter().zip(&limits) {
            let Some(lane) = self.lanes.get_mut(name) else { continue };
            if let Some(down) = &mut lane.health.down {
                // The probe is on its way, or nothing was due to probe with.
                down.probing = got.contains_key(name);
                if !down.probing {
                    down.next_probe = now + MIN_PROBE_WAIT;
                }
                continue;
            }
            let full = got.get(name).copied().unwrap_or(0) >= *limit as usize;
            lane.maybe_more = full;
            // "key" keeps no cursor: the events a claim skipped because an
            // earlier one of their key was in flight lie behind it, and
            // would wait for the cursor's end. "trigger" skips none (it
            // claims the first pending event).
            lane.cursor = match (full, last.remove(name), lane.def.ordering) {
                (true, Some(cursor), Ordering::None | Ordering::Trigger) => {
                    Some((cursor, lane.cursor.map_or_else(Instant::now, |(_, since)| since)))
                }
                _ => None,
            };
        }
        // Nothing more to claim now: sleep until the next retry falls due
        // (lanes whose endpoint is down wait for their probe instead; an
        // ordered lane's due events that wait for the one ahead are claimed
        // when its outcome is recorded, so only its future retries count).
        self.next_due = if self.lanes.values().all(|l| !l.maybe_more || l.health.down.is_some()) {
            let up = |ordered: bool| -> Vec<String> {
                self.lanes
                    .iter()
                    .filter(|(_, l)| l.health.down.is_none() && (l.def.ordering != Ordering::None) == ordered)
                    .map(|(n, _)| n.clone())
                    .collect()
            };
            let unordered = event_log::seconds_until_next_due(up(false), false);
            let ordered = event_log::seconds_until_next_due(up(true), true);
            [unordered, ordered]
                .into_iter()
                .flatten()
                .reduce(f64::min)
                .map(|s| Instant::now() + Duration::from_secs_f64(s.max(0.0)))
        } else {
            None
        };
    }

    /// Builds the HTTP attempt for a claimed event and queues it in its lane.
    fn prepare(&mut self, event: event_log::Claimed) {
        let Some(lane) = self.lanes.get(&event.trigger) else {
            // Claimed by name from the lanes just refreshed: cannot happen.
            return;
        };
        let tag = self.next_tag;
        self.next_tag += 1;
        let id = event.id.to_string();
        let body = WebhookBody {
            id: &id,
            created_at: &event.created_at,
            trigger: &event.trigger,
            schema: &event.schema,
            table: &event.table,
            event: &event.event,
            max_retries: lane.def.retry_conf.num_retries,
            current_retry: event.tries,
        };
        let now_secs = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let request = request::build(&lane.def, &body, &|v| std::env::var(v).ok(), &lane.env_policy, now_secs);
        // Stored timeouts longer than webhooks.max_timeout (lowered since)
        // are cut to it.
        let timeout = Duration::from_secs(lane.def.retry_conf.timeout_sec.clamp(1, settings::max_timeout_sec()) as u64);
        self.in_flight.insert(
            tag,
            InFlight {
                event_id: event.id,
                trigger: event.trigger.clone(),
                tries_before: event.tries,
                retry: lane.def.retry_conf,
                request_log: request.logged,
                secrets: request.secrets,
                probe: lane.health.down.is_some(),
                transform_failed: request.transform_failed.is_some(),
                original: request.original,
            },
        );
        if let Some(error) = request.transform_failed.or(request.unsendable) {
            // Fails without a request; recorded with the next outcomes.
            self.oldest_outcome.get_or_insert_with(Instant::now);
            self.outcomes.push(Outcome {
                tag,
                response: None,
                error: Some(error),
                started: SystemTime::now(),
                duration: Duration::ZERO,
                tried: false,
            });
            return;
        }
        let attempt = Attempt {
            tag,
            method: request.method,
            url: request.url,
            headers: request.headers,
            content_type: request.content_type,
            body: request.body,
            timeout,
        };
        match self.to_send.iter_mut().find(|(t, _)| *t == event.trigger) {
            Some((_, list)) => list.push(attempt),
            None => self.to_send.push((event.trigger, vec![attempt])),
        }
    }

    /// Hands the attempts of the committed round to the pool.
    fn send(&mut self) {
        for (trigger, attempts) in std::mem::take(&mut self.to_send) {
            if self.lanes.get(&trigger).is_some_and(|l| l.health.down.is_some()) {
                // A probe: the pool halted the lane after its failures.
                self.pool.clear_failures(&trigger);
            }
            self.pool.submit_all(&trigger, attempts);
        }
    }

    /// Turns outcomes into verdicts and writes them; pauses the triggers
    /// whose webhook answered `410 Gone`.
    fn record(&mut self, outcomes: Vec<Outcome>) {
        let mut rows = Vec::with_capacity(outcomes.len());
        let mut gone: Vec<(String, String)> = Vec::new();
        for mut o in outcomes {
            let Some(f) = self.in_flight.remove(&o.tag) else { continue };
            if let Some(t) = self.lanes.get(&f.trigger).and_then(|l| l.def.response_transform.as_ref()) {
                transform_response(t, &mut o, &f);
            }
            let retry_after = o
                .response
                .as_ref()
                .and_then(|r| r.header("retry-after"))
                .and_then(|v| retry::parse_retry_after(v, SystemTime::now()));
            let mut verdict =
                retry::classify(o.completed_status(), retry_after, f.tries_before, &f.retry, retry::random_unit());
            if f.transform_failed {
                // As in Hasura: a request transform that fails is not retried.
                verdict = Verdict::Failed;
            }
            let happened = request::scrub_text(o.summary(), &f.secrets);
            if o.is_endpoint_failure() && verdict != Verdict::Gone {
                if self.endpoint_failed(&f, &happened) {
                    verdict = Verdict::Held;
                }
            } else if let Some(lane) = self.lanes.get_mut(&f.trigger).filter(|_| o.tried) {
                // It answered: whatever it said, the endpoint is up.
                lane.health.failures = 0;
                if lane.health.down.take().is_some() {
                    log!("pg_webhooks: the webhook of event trigger \"{}\" answers again; its events flow", f.trigger);
                    lane.maybe_more = true;
                    health::mark_up(&f.trigger);
                }
            }
            if let Some(lane) = self.lanes.get_mut(&f.trigger) {
                if lane.def.ordering != Ordering::None {
                    // The events behind this one may be claimed now (or,
                    // for "trigger", once its retry is due).
                    lane.maybe_more = true;
                    lane.held_until = match verdict {
                        Verdict::Retry(d) => Some(Instant::now() + d),
                        _ => None,
                    };
                }
            }
            match verdict {
                Verdict::Delivered => {
                    self.shared.delivered.fetch_add(1, AtomicOrdering::Relaxed);
                }
                Verdict::Retry(d) => debug1!(
                    "pg_webhooks: event {} of trigger \"{}\" failed ({}); retry in {:.1}s",
                    f.event_id,
                    f.trigger,
                    happened,
                    d.as_secs_f64()
                ),
                Verdict::Failed => {
                    self.shared.failed.fetch_add(1, AtomicOrdering::Relaxed);
                    log!(
                        "pg_webhooks: event {} of trigger \"{}\" failed after {} attempts ({})",
                        f.event_id,
                        f.trigger,
                        f.tries_before + 1,
                        happened
                    );
                }
                Verdict::Held => debug1!(
                    "pg_webhooks: event {} of trigger \"{}\" failed while its endpoint is down ({}); it waits",
                    f.event_id,
                    f.trigger,
                    happened
                ),
                Verdict::Gone => {
                    if !gone.iter().any(|(t, _)| *t == f.trigger) {
                        let reason = format!("the webhook answered 410 Gone on {}", httpdate::fmt_http_date(o.started));
                        gone.push((f.trigger.clone(), reason));
                    }
                }
            }
            rows.push(event_log::Recorded {
                event_id: f.event_id,
                log_id: event_log::new_event_id(),
                trigger: f.trigger,
                status: o.status().map(i32::from),
                request: f.request_log,
                response: request::scrub(o.response_json(), &f.secrets).to_string(),
                started_epoch: o.started.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64(),
                duration_ms: o.duration.as_secs_f64() * 1000.0,
                verdict,
            });
        }
        event_log::record(rows);
        for (trigger, reason) in gone {
            warning!(
                "pg_webhooks: event trigger \"{trigger}\" is paused: {reason}; its events stay pending. Resume it with webhooks.resume_event_trigger('{trigger}') once the webhook is back"
            );
            definitions::set_paused(&trigger, true, Some(&reason));
        }
    }

    /// Counts an endpoint failure of `f`'s lane. True when the endpoint is
    /// down: the event waits without spending its attempt. The failure that
    /// takes the count to DOWN_AFTER spends its attempt and puts the
    /// endpoint down: the lane's queued attempts are released unspent, and
    /// from then on it sends one probe at a time.
    fn endpoint_failed(&mut self, f: &InFlight, happened: &str) -> bool {
        let Some(lane) = self.lanes.get_mut(&f.trigger) else { return false };
        let now = Instant::now();
        if let Some(d) = &mut lane.health.down {
            if f.probe {
                d.probes_failed += 1;
                d.probing = false;
                d.next_probe = now + probe_wait(&lane.def.retry_conf, d.probes_failed + 1);
            }
            return true;
        }
        lane.health.failures += 1;
        if lane.health.failures < DOWN_AFTER {
            return false;
        }
        let wait = probe_wait(&lane.def.retry_conf, 1);
        lane.health.down = Some(Down { probes_failed: 0, next_probe: now + wait, probing: false });
        warning!(
            "pg_webhooks: the webhook of event trigger \"{}\" failed {} attempts in a row (last: {happened}); it is treated as down: its events wait, keeping their attempts, and one probe is sent every {:.0} s or more until it answers",
            f.trigger,
            lane.health.failures,
            wait.as_secs_f64()
        );
        health::mark_down(&f.trigger, lane.health.failures as i32, happened);
        let mut released = Vec::new();
        for a in self.pool.withdraw(&f.trigger) {
            if let Some(q) = self.in_flight.remove(&a.tag) {
                released.push(q.event_id);
            }
        }
        event_log::unlock(released);
        false
    }

    /// On SIGTERM: record what comes back within a short grace period, and
    /// release the rest (queued or still on the wire) so that it is
    /// delivered again.
    fn shutdown(&mut self) {
        let lanes: Vec<String> = self.lanes.keys().cloned().collect();
        for t in lanes {
            self.pool.withdraw(&t);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.pool.running() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.collect();
        if !self.ready {
            return;
        }
        BackgroundWorker::transaction(AssertUnwindSafe(|| {
            if !catalog::extension_installed() {
                return;
            }
            event_log::lock_for_round();
            let outcomes = std::mem::take(&mut self.outcomes);
            self.record(outcomes);
            let rest: Vec<pgrx::Uuid> = self.in_flight.values().map(|f| f.event_id).collect();
            if !rest.is_empty() {
                log!("pg_webhooks: stopping with {} deliveries claimed; they will be delivered again", rest.len());
            }
            event_log::unlock(rest);
        }));
        self.in_flight.clear();
    }
}

/// Whether a `"trigger"`-ordered lane waits for its event ahead: one at a
/// time, so not while that one is on the wire or waits for its retry.
fn waits_for_the_one_ahead(pool: &Pool, trigger: &str, lane: &Lane, now: Instant) -> bool {
    lane.def.ordering == Ordering::Trigger && (pool.load(trigger) > 0 || lane.held_until.is_some_and(|t| now < t))
}

/// How many more events of `trigger` the pool should get: it keeps a batch
/// queued beyond what may be on the wire (the trigger's
/// `throttle.max_concurrency`, else `webhooks.max_concurrent_per_trigger`).
/// A trigger with a rate keeps about a second of its rate queued instead.
fn room(pool: &Pool, trigger: &str, throttle: &Throttle) -> usize {
    let on_wire = throttle.max_concurrency.map_or_else(settings::max_concurrent_per_trigger, |n| n as usize);
    (queue_target(throttle) + on_wire.min(settings::max_concurrent())).saturating_sub(pool.load(trigger))
}

/// How many claimed events a lane keeps queued beyond those on the wire:
/// a batch, or about a second's worth for a trigger with a rate.
fn queue_target(throttle: &Throttle) -> usize {
    let batch = settings::BATCH_SIZE.get().max(1) as usize;
    throttle.per_second.map_or(batch, |r| batch.min(r as usize + 1))
}

/// A non-blocking pipe: HTTP threads write a byte when an outcome is ready,
/// the main thread waits on the read end along with its latch.
fn wake_pipe() -> (RawFd, RawFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
    if rc != 0 {
        error!("pg_webhooks: could not create a pipe: {}", std::io::Error::last_os_error());
    }
    (fds[0], fds[1])
}

/// Empties the wake-up pipe (non-blocking).
fn drain(fd: RawFd) {
    let mut buf = [0u8; 256];
    // SAFETY: reads at most the buffer's length into it.
    while unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
}
