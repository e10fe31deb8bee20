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
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, SignalWakeFlags};
use pgrx::prelude::*;
use webhooks_core::definition::{Definition, HeaderValue, RetryConf, Webhook};
use webhooks_core::delivery::{webhook_body, Attempt, Client, Outcome, Pool};
use webhooks_core::env_policy::EnvPolicy;
use webhooks_core::env_template;
use webhooks_core::ApiError;
use webhooks_core::retry::{self, Verdict};

use crate::shmem::{self, WorkerShared};
use crate::{settings, store};

/// Registers the worker; called from `_PG_init` while preloading.
pub fn register() {
    BackgroundWorkerBuilder::new("pg_webhooks delivery worker")
        .set_type("pg_webhooks")
        .set_library("pg_webhooks")
        .set_function("pg_webhooks_worker_main")
        .enable_spi_access()
        .set_restart_time(Some(Duration::from_secs(1)))
        .load();
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_webhooks_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let database = settings::database();
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    let shared = shmem::shared().expect("the worker only runs when preloaded");
    shared.register_worker();
    log!("pg_webhooks: delivery worker started for database \"{database}\"");
    let mut worker = Worker::new(shared);
    worker.run();
    shared.unregister_worker();
    log!("pg_webhooks: delivery worker stopped");
    // Exit code 1: the postmaster starts the worker again after the restart
    // interval, unless the server is shutting down. So pg_terminate_backend()
    // restarts the worker rather than stopping delivery for good.
    unsafe { pg_sys::proc_exit(1) };
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
}


/// Outcomes are recorded when this many have piled up ...
fn flush_at() -> usize {
    (settings::BATCH_SIZE.get().max(2) / 2) as usize
}
/// ... or when the oldest has waited this long.
const FLUSH_AFTER: Duration = Duration::from_millis(20);

struct Worker {
    shared: &'static WorkerShared,
    pool: Pool,
    wake_fd: RawFd,
    in_flight: HashMap<u64, InFlight>,
    /// Per trigger: a claim may find more. Set by wake-ups, cleared by a
    /// claim that came back short.
    maybe_more: HashMap<String, bool>,
    /// Outcomes not yet recorded, and when the oldest arrived.
    pending: Vec<Outcome>,
    oldest_pending: Option<Instant>,
    /// When the next retry falls due, if no claim is pending anyway.
    next_due: Option<Instant>,
    definitions: HashMap<String, Cached>,
    next_tag: u64,
    /// The extension is installed and stale locks were released.
    ready: bool,
    /// `wake_requests` as last seen: a change means new work may be due.
    seen_wakes: u64,
    /// Per trigger, where the last claim stopped, and since when the cursor
    /// is in use. Events that commit late with an earlier due time sit
    /// behind it, so it is dropped when a claim comes back short and after
    /// CURSOR_LIFETIME.
    cursors: HashMap<String, (store::Cursor, Instant)>,
    /// When `webhooks.retention` was last applied.
    last_cleanup: Option<Instant>,
    /// Attempts prepared in the current round, per trigger: they go to the
    /// pool once the round's transaction (which claimed them) has committed.
    ready_to_send: Vec<(String, Vec<Attempt>)>,
}

/// A trigger's definition as last read, with the version of its row.
struct Cached {
    version: String,
    def: Definition,
    /// The environment variables its webhook and headers may use: all of
    /// them when its owner is a superuser, else `webhooks.allowed_env_vars`
    /// (checked again every round, as roles and the setting change).
    env_policy: EnvPolicy,
}

const CURSOR_LIFETIME: Duration = Duration::from_secs(1);
/// How often the worker applies `webhooks.retention`.
const RETENTION_EVERY: Duration = Duration::from_secs(10);

impl Worker {
    fn new(shared: &'static WorkerShared) -> Worker {
        let (read_fd, write_fd) = wake_pipe();
        let notify: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
            // A full pipe already wakes the main thread; losing this byte is fine.
            unsafe { libc::write(write_fd, [1u8].as_ptr().cast(), 1) };
        });
        let client = Client::new(settings::RESPONSE_BODY_LIMIT.get().max(0) as usize);
        Worker {
            shared,
            pool: Pool::new(settings::max_concurrent(), settings::max_concurrent_per_trigger(), client, notify),
            wake_fd: read_fd,
            in_flight: HashMap::new(),
            maybe_more: HashMap::new(),
            pending: Vec::new(),
            oldest_pending: None,
            next_due: None,
            definitions: HashMap::new(),
            next_tag: 1,
            ready: false,
            seen_wakes: 0,
            cursors: HashMap::new(),
            last_cleanup: None,
            ready_to_send: Vec::new(),
        }
    }

    /// The main loop. The pool's threads take queued attempts themselves;
    /// outcomes pile up to be recorded in batches. A database round (record,
    /// then claim) runs when something may be due (latch, timeout), when a
    /// trigger's queue runs low, or when enough outcomes wait.
    fn run(&mut self) {
        let mut woken = true;
        self.pool.configure(settings::max_concurrent_per_trigger(), flush_at());
        loop {
            if BackgroundWorker::sigterm_received() {
                self.shutdown();
                return;
            }
            if BackgroundWorker::sighup_received() {
                unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
                self.pool.grow(settings::max_concurrent());
                self.pool.configure(settings::max_concurrent_per_trigger(), flush_at());
                self.last_cleanup = None;
                woken = true;
            }
            // Committing backends bump the counter before they set the latch,
            // so a wake-up is never lost between a latch reset and a check.
            let wakes = self.shared.wake_requests.load(Ordering::Acquire);
            if wakes != self.seen_wakes {
                self.seen_wakes = wakes;
                woken = true;
            }
            if woken {
                for more in self.maybe_more.values_mut() {
                    *more = true;
                }
            }
            self.collect();
            let lane_low = self.definitions.keys().any(|t| self.wants_more(t));
            let flush = self.pending.len() >= flush_at() || self.oldest_pending.is_some_and(|t| t.elapsed() >= FLUSH_AFTER);
            let retry_due = self.next_due.is_some_and(|t| Instant::now() >= t);
            if woken || lane_low || flush || retry_due {
                // An ERROR ends the process (the postmaster restarts it), so
                // no state survives a failed transaction.
                BackgroundWorker::transaction(AssertUnwindSafe(|| self.round()));
                // The claims are committed: now the requests may go out.
                for (trigger, attempts) in std::mem::take(&mut self.ready_to_send) {
                    self.pool.submit_all(&trigger, attempts);
                }
            }
            self.shared.in_flight.store(self.in_flight.len() as i64, Ordering::Relaxed);
            self.apply_retention();

            let mut timeout = Duration::from_millis(settings::POLL_INTERVAL_MS.get().max(1) as u64);
            if let Some(t) = self.oldest_pending {
                timeout = timeout.min(FLUSH_AFTER.saturating_sub(t.elapsed()));
            }
            if let Some(t) = self.next_due {
                timeout = timeout.min(t.saturating_duration_since(Instant::now()));
            }
            if let (Some(_), Some(t)) = (settings::retention(), self.last_cleanup) {
                timeout = timeout.min(RETENTION_EVERY.saturating_sub(t.elapsed()));
            }
            let more_now = self.definitions.keys().any(|t| self.wants_more(t));
            woken = if more_now { true } else { self.wait(timeout) };
        }
    }

    /// Sleeps until the latch, an outcome, or the timeout. True when the
    /// time ran out (a retry or the poll may be due); wake-ups by committing
    /// backends are seen through their counter.
    fn wait(&mut self, timeout: Duration) -> bool {
        let events = pg_sys::WL_LATCH_SET | pg_sys::WL_SOCKET_READABLE | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH;
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
        self.shared.last_wakeup.store(unsafe { pg_sys::GetCurrentTimestamp() }, Ordering::Relaxed);
        pgrx::check_for_interrupts!();
        rc & pg_sys::WL_TIMEOUT as i32 != 0
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
            if !store::extension_installed() {
                return;
            }
            match store::cleanup(&retention) {
                Ok(n) if n > 0 => log!("pg_webhooks: webhooks.retention = '{retention}' removed {n} finished events"),
                Ok(_) => {}
                Err(e) => warning!("pg_webhooks: webhooks.retention = '{retention}' is not usable: {e}"),
            }
        }));
    }

    /// Takes the outcomes that arrived.
    fn collect(&mut self) {
        let outcomes = self.pool.outcomes();
        if !outcomes.is_empty() {
            self.oldest_pending.get_or_insert_with(Instant::now);
            self.pending.extend(outcomes);
        }
    }

    /// How many more events of `trigger` the pool should get: it keeps a
    /// batch queued beyond what is on the wire.
    fn room(&self, trigger: &str) -> usize {
        let target = settings::BATCH_SIZE.get().max(1) as usize + settings::max_concurrent_per_trigger();
        target.saturating_sub(self.pool.load(trigger))
    }

    /// Whether a claim for `trigger` is worth a round now: more may be due
    /// and its queue is down to half a batch.
    fn wants_more(&self, trigger: &str) -> bool {
        self.maybe_more.get(trigger).copied().unwrap_or(true)
            && self.room(trigger) * 2 >= settings::BATCH_SIZE.get().max(1) as usize
    }

    /// One transaction: record outcomes, then claim what the lanes can take.
    fn round(&mut self) {
        if !store::extension_installed() {
            if self.ready {
                log!("pg_webhooks: the extension is not installed in this database; waiting for CREATE EXTENSION");
            }
            self.ready = false;
            // Whatever was claimed belongs to a dropped extension.
            self.in_flight.clear();
            self.maybe_more.clear();
            self.pending.clear();
            self.oldest_pending = None;
            self.definitions.clear();
            return;
        }
        if !self.ready {
            Spi::run("SET search_path = pg_catalog, pg_temp").expect("setting search_path");
            // Every query of this session touches a batch of rows through an
            // index: the claim walks the fetch index in order and stops after
            // a batch, the updates join by primary key. The planner cannot
            // see the batch size inside the claim (a LIMIT from a lateral
            // list) and, with a large backlog or stale statistics, prefers
            // plans that sort or hash the whole table on every round (seen:
            // a hash join over 1.3M rows, a bitmap scan sorting the backlog,
            // and JIT compiling them). None of those ever pays off here.
            for setting in [
                "SET enable_bitmapscan = off",
                "SET enable_sort = off",
                "SET enable_hashjoin = off",
                "SET enable_mergejoin = off",
                "SET jit = off",
            ] {
                Spi::run(setting).expect("planner setting");
            }
            let released = store::release_stale_locks();
            if released > 0 {
                log!("pg_webhooks: released {released} event locks left by a previous worker; they will be delivered again");
            }
            self.ready = true;
        }

        let outcomes = std::mem::take(&mut self.pending);
        self.oldest_pending = None;
        self.record(outcomes);
        self.refresh_definitions();

        // Deleted or paused triggers: what waits in the queue is released,
        // not sent.
        let gone: Vec<String> = self.maybe_more.keys().filter(|t| !self.definitions.contains_key(*t)).cloned().collect();
        let mut released = Vec::new();
        for t in gone {
            for a in self.pool.withdraw(&t) {
                if let Some(f) = self.in_flight.remove(&a.tag) {
                    released.push(f.event_id);
                }
            }
            self.maybe_more.remove(&t);
        }
        store::unlock(released);

        let mut names = Vec::new();
        let mut limits = Vec::new();
        for name in self.definitions.keys() {
            let more = *self.maybe_more.entry(name.clone()).or_insert(true);
            let room = self.room(name);
            if more && room > 0 {
                names.push(name.clone());
                limits.push(room as i32);
            }
        }
        self.cursors.retain(|_, (_, since)| since.elapsed() < CURSOR_LIFETIME);
        let cursors = names.iter().map(|n| self.cursors.get(n).map(|(c, _)| *c)).collect();
        let claimed = store::claim(names.clone(), limits.clone(), cursors);
        let mut got: HashMap<String, usize> = HashMap::new();
        let mut last: HashMap<String, store::Cursor> = HashMap::new();
        for event in claimed {
            *got.entry(event.trigger.clone()).or_default() += 1;
            let id = pgrx::Uuid::from_bytes(*uuid::Uuid::parse_str(&event.id).expect("uuid from the database").as_bytes());
            last.insert(event.trigger.clone(), (event.due, id));
            self.prepare(event);
        }
        for (name, limit) in names.iter().zip(&limits) {
            let full = got.get(name).copied().unwrap_or(0) >= *limit as usize;
            self.maybe_more.insert(name.clone(), full);
            match (full, last.remove(name)) {
                (true, Some(cursor)) => {
                    let since = self.cursors.get(name).map_or_else(Instant::now, |(_, s)| *s);
                    self.cursors.insert(name.clone(), (cursor, since));
                }
                _ => {
                    self.cursors.remove(name);
                }
            }
        }
        // Nothing more to claim now: sleep until the next retry falls due.
        let all_drained = self.maybe_more.values().all(|m| !m);
        self.next_due = if all_drained {
            store::seconds_until_next_due(self.definitions.keys().cloned().collect())
                .map(|s| Instant::now() + Duration::from_secs_f64(s.max(0.0)))
        } else {
            None
        };
    }

    /// Brings the cached definitions up to date: every round checks which
    /// triggers exist and are not paused, and their row versions; only a
    /// definition whose row changed is read and parsed again.
    fn refresh_definitions(&mut self) {
        let states = store::trigger_states();
        let restricted = settings::restricted_env_policy();
        let changed: Vec<String> = states
            .iter()
            .filter(|t| self.definitions.get(&t.name).is_none_or(|c| c.version != t.version))
            .map(|t| t.name.clone())
            .collect();
        if !changed.is_empty() {
            debug1!("pg_webhooks: reading the definitions of {}", changed.join(", "));
        }
        for (name, version, def) in store::definitions_of(changed) {
            match Definition::from_stored(&def.0) {
                Ok(def) => {
                    self.definitions.insert(name, Cached { version, def, env_policy: EnvPolicy::unrestricted() });
                }
                Err(e) => warning!("pg_webhooks: event trigger \"{name}\" has an invalid stored definition: {}", e.message),
            }
        }
        self.definitions.retain(|name, _| states.iter().any(|t| t.name == *name));
        for t in &states {
            if let Some(c) = self.definitions.get_mut(&t.name) {
                c.env_policy = if t.owner_is_superuser { EnvPolicy::unrestricted() } else { restricted.clone() };
            }
        }
    }

    /// Builds the HTTP attempt for a claimed event and queues it in its lane.
    fn prepare(&mut self, event: store::Claimed) {
        let Some(Cached { def, env_policy, .. }) = self.definitions.get(&event.trigger) else {
            // Claimed by name from the definitions just read: cannot happen.
            return;
        };
        let tag = self.next_tag;
        self.next_tag += 1;
        let event_id = pgrx::Uuid::from_bytes(*uuid::Uuid::parse_str(&event.id).expect("uuid from the database").as_bytes());
        let body = webhook_body(
            &event.id,
            &event.created_at,
            &event.trigger,
            &event.schema,
            &event.table,
            &event.event,
            def.retry_conf.num_retries,
            event.tries,
        );
        // The owner's policy again: webhooks.allowed_env_vars may have
        // shrunk, or the owner lost superuser, since the trigger was created.
        let read = |var: &str| -> Result<String, String> {
            if !env_policy.allows(var) {
                return Err(format!(
                    "environment variable \"{var}\" is not in webhooks.allowed_env_vars and the trigger's owner is not a superuser"
                ));
            }
            std::env::var(var).map_err(|_| format!("environment variable \"{var}\" is not set"))
        };
        let env = |v: &str| read(v).ok();
        let (url, url_logged) = match &def.webhook {
            Webhook::Url(template) => (
                env_template::render_with(template, &|v| read(v).map_err(ApiError::invalid)).map_err(|e| e.message),
                template.clone(),
            ),
            Webhook::FromEnv(var) => (read(var), format!("{{{{{var}}}}}")),
        };
        let now_secs = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let mut headers = Vec::with_capacity(def.headers.len() + 2);
        let mut logged = Vec::with_capacity(def.headers.len() + 2);
        let mut missing = url.as_ref().err().cloned();
        let mut secrets: Vec<String> = match &def.webhook {
            Webhook::Url(template) => env_template::variables(template).iter().filter_map(|v| env(v)).collect(),
            Webhook::FromEnv(_) => url.iter().cloned().collect(),
        };
        for h in &def.headers {
            match &h.value {
                HeaderValue::Value(v) => {
                    headers.push((h.name.clone(), v.clone()));
                    logged.push(serde_json::json!({"name": h.name, "value": v}));
                }
                HeaderValue::FromEnv(var) => {
                    match read(var) {
                        Ok(v) => {
                            secrets.push(v.clone());
                            headers.push((h.name.clone(), v));
                        }
                        Err(e) => missing = Some(e),
                    }
                    logged.push(serde_json::json!({"name": h.name, "value": format!("<redacted: from env {var}>")}));
                }
            }
        }
        for (n, v) in [("webhook-id", event.id.clone()), ("webhook-timestamp", now_secs.to_string())] {
            logged.push(serde_json::json!({"name": n, "value": v}));
            headers.push((n.to_string(), v));
        }
        let request_log = format!(
            "{{\"url\":{},\"headers\":{},\"payload\":{}}}",
            serde_json::Value::String(url_logged),
            serde_json::Value::Array(logged),
            body
        );
        self.in_flight.insert(
            tag,
            InFlight {
                event_id,
                trigger: event.trigger.clone(),
                tries_before: event.tries,
                retry: def.retry_conf,
                request_log,
                secrets,
            },
        );
        if let Some(error) = missing {
            // Fails without a request; recorded with the next outcomes.
            self.oldest_pending.get_or_insert_with(Instant::now);
            self.pending.push(Outcome { tag, response: None, error: Some(error), started: SystemTime::now(), duration: Duration::ZERO });
            return;
        }
        // Stored timeouts longer than webhooks.max_timeout (lowered since)
        // are cut to it.
        let timeout = Duration::from_secs(def.retry_conf.timeout_sec.clamp(1, settings::max_timeout_sec()) as u64);
        let attempt = Attempt { tag, url: url.expect("checked above"), headers, body, timeout };
        match self.ready_to_send.iter_mut().find(|(t, _)| *t == event.trigger) {
            Some((_, list)) => list.push(attempt),
            None => self.ready_to_send.push((event.trigger, vec![attempt])),
        }
    }

    /// Turns outcomes into verdicts and writes them.
    fn record(&mut self, outcomes: Vec<Outcome>) {
        let mut rows = Vec::with_capacity(outcomes.len());
        for o in outcomes {
            let Some(f) = self.in_flight.remove(&o.tag) else { continue };
            let status = o.status();
            let retry_after = o
                .response
                .as_ref()
                .and_then(|r| r.header("retry-after"))
                .and_then(|v| retry::parse_retry_after(v, SystemTime::now()));
            let verdict = retry::classify(o.completed_status(), retry_after, f.tries_before, &f.retry);
            let response = scrub(o.response_json(), &f.secrets);
            let happened = scrub_text(what_happened(&o), &f.secrets);
            let (code, delay) = match verdict {
                Verdict::Delivered => {
                    self.shared.delivered.fetch_add(1, Ordering::Relaxed);
                    ('d', 0.0)
                }
                Verdict::Retry(d) => {
                    debug1!(
                        "pg_webhooks: event {} of trigger \"{}\" failed ({}); retry in {:.1}s",
                        f.event_id,
                        f.trigger,
                        happened,
                        d.as_secs_f64()
                    );
                    ('r', d.as_secs_f64())
                }
                Verdict::Failed => {
                    self.shared.failed.fetch_add(1, Ordering::Relaxed);
                    log!(
                        "pg_webhooks: event {} of trigger \"{}\" failed after {} attempts ({})",
                        f.event_id,
                        f.trigger,
                        f.tries_before + 1,
                        happened
                    );
                    ('f', 0.0)
                }
            };
            rows.push(store::Recorded {
                event_id: f.event_id,
                log_id: pgrx::Uuid::from_bytes(webhooks_core::ids::next_v7()),
                trigger: f.trigger,
                status: status.map(i32::from),
                request: f.request_log,
                response: response.to_string(),
                started_epoch: o.started.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64(),
                duration_ms: o.duration.as_secs_f64() * 1000.0,
                verdict: code,
                retry_delay_sec: delay,
            });
        }
        store::record(rows);
    }

    /// On SIGTERM: record what comes back within a short grace period, and
    /// release the rest (queued or still on the wire) so that it is
    /// delivered again.
    fn shutdown(&mut self) {
        let lanes: Vec<String> = self.maybe_more.keys().cloned().collect();
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
            if !store::extension_installed() {
                return;
            }
            let outcomes = std::mem::take(&mut self.pending);
            self.record(outcomes);
            let rest: Vec<pgrx::Uuid> = self.in_flight.values().map(|f| f.event_id).collect();
            if !rest.is_empty() {
                log!("pg_webhooks: stopping with {} deliveries claimed; they will be delivered again", rest.len());
            }
            store::unlock(rest);
        }));
        self.in_flight.clear();
    }
}

/// Replaces every secret (a value from the environment) in a text by a
/// marker. Short values are left alone: they would match by accident.
fn scrub_text(mut text: String, secrets: &[String]) -> String {
    for s in secrets.iter().filter(|s| s.len() >= 4) {
        if text.contains(s.as_str()) {
            text = text.replace(s.as_str(), "<redacted>");
        }
    }
    text
}

/// `scrub_text` over a JSON value (a webhook may echo what it was sent).
fn scrub(v: serde_json::Value, secrets: &[String]) -> serde_json::Value {
    if secrets.is_empty() {
        return v;
    }
    match v {
        serde_json::Value::String(s) => serde_json::Value::String(scrub_text(s, secrets)),
        serde_json::Value::Array(a) => serde_json::Value::Array(a.into_iter().map(|x| scrub(x, secrets)).collect()),
        serde_json::Value::Object(m) => serde_json::Value::Object(m.into_iter().map(|(k, x)| (k, scrub(x, secrets))).collect()),
        other => other,
    }
}

fn what_happened(o: &Outcome) -> String {
    match (o.status(), &o.error) {
        (Some(s), _) => format!("HTTP {s}"),
        (None, Some(e)) => e.clone(),
        (None, None) => "no response".into(),
    }
}

/// A non-blocking pipe: HTTP threads write a byte when an outcome is ready,
/// the main thread waits on the read end along with its latch.
fn wake_pipe() -> (RawFd, RawFd) {
    let mut fds = [0; 2];
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
        error!("pg_webhooks: could not create a pipe: {}", std::io::Error::last_os_error());
    }
    (fds[0], fds[1])
}

fn drain(fd: RawFd) {
    let mut buf = [0u8; 256];
    while unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
}
