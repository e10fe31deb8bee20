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
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, SignalWakeFlags};
use pgrx::prelude::*;
use pgrx::JsonB;
use webhooks_core::definition::{Definition, HeaderValue, RetryConf, Webhook};
use webhooks_core::delivery::{webhook_body, Attempt, Client, Outcome, Pool};
use webhooks_core::env_template;
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

/// An attempt on its way, keyed by its tag.
struct InFlight {
    event_id: pgrx::Uuid,
    trigger: String,
    tries_before: i32,
    retry: RetryConf,
    /// The request as logged, secrets redacted (JSON text).
    request_log: String,
}

struct Worker {
    shared: &'static WorkerShared,
    pool: Pool,
    wake_fd: RawFd,
    in_flight: HashMap<u64, InFlight>,
    per_trigger: HashMap<String, usize>,
    /// Attempts that failed before any HTTP (a missing environment variable).
    early: Vec<Outcome>,
    definitions: HashMap<String, (String, Definition)>,
    next_tag: u64,
    /// The extension is installed and stale locks were released.
    ready: bool,
}

/// What a round leaves to do after its commit.
struct RoundResult {
    attempts: Vec<Attempt>,
    /// Go round again at once: a claim came back full.
    more: bool,
    /// Seconds until the next event is due, if known.
    next_due: Option<f64>,
}

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
            pool: Pool::new(settings::max_concurrent(), client, notify),
            wake_fd: read_fd,
            in_flight: HashMap::new(),
            per_trigger: HashMap::new(),
            early: Vec::new(),
            definitions: HashMap::new(),
            next_tag: 1,
            ready: false,
        }
    }

    fn run(&mut self) {
        loop {
            if BackgroundWorker::sigterm_received() {
                self.shutdown();
                return;
            }
            if BackgroundWorker::sighup_received() {
                unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
                self.pool.grow(settings::max_concurrent());
            }
            let mut outcomes = std::mem::take(&mut self.early);
            outcomes.extend(self.pool.outcomes());
            // An ERROR ends the process (the postmaster restarts it), so no state
            // survives a failed transaction.
            let round = BackgroundWorker::transaction(AssertUnwindSafe(|| self.round(outcomes)));
            for a in round.attempts {
                self.pool.submit(a);
            }
            self.shared.in_flight.store(self.in_flight.len() as i64, Ordering::Relaxed);
            if round.more || !self.early.is_empty() {
                continue;
            }
            let poll = Duration::from_millis(settings::POLL_INTERVAL_MS.get().max(1) as u64);
            let timeout = match round.next_due {
                Some(s) if s <= 0.0 => Duration::from_millis(1),
                Some(s) => Duration::from_secs_f64(s).min(poll),
                None => poll,
            };
            self.wait(timeout);
        }
    }

    fn wait(&mut self, timeout: Duration) {
        let events = pg_sys::WL_LATCH_SET | pg_sys::WL_SOCKET_READABLE | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH;
        unsafe {
            pg_sys::WaitLatchOrSocket(
                pg_sys::MyLatch,
                events as i32,
                self.wake_fd,
                timeout.as_millis().clamp(1, i64::MAX as u128) as i64,
                pg_sys::PG_WAIT_EXTENSION,
            );
            pg_sys::ResetLatch(pg_sys::MyLatch);
        }
        drain(self.wake_fd);
        self.shared.last_wakeup.store(unsafe { pg_sys::GetCurrentTimestamp() }, Ordering::Relaxed);
        pgrx::check_for_interrupts!();
    }

    /// One transaction: record outcomes, then claim what the free slots allow.
    fn round(&mut self, outcomes: Vec<Outcome>) -> RoundResult {
        let idle = RoundResult { attempts: Vec::new(), more: false, next_due: None };
        if !store::extension_installed() {
            if self.ready {
                log!("pg_webhooks: the extension is not installed in this database; waiting for CREATE EXTENSION");
            }
            self.ready = false;
            // Whatever was in flight belongs to a dropped extension.
            self.in_flight.clear();
            self.per_trigger.clear();
            self.definitions.clear();
            return idle;
        }
        if !self.ready {
            Spi::run("SET search_path = pg_catalog, pg_temp").expect("setting search_path");
            let released = store::release_stale_locks();
            if released > 0 {
                log!("pg_webhooks: released {released} event locks left by a previous worker; they will be delivered again");
            }
            self.ready = true;
        }

        self.record(outcomes);
        self.refresh_definitions();

        let cap = settings::max_concurrent_per_trigger();
        let batch = settings::BATCH_SIZE.get().max(1) as usize;
        let mut names = Vec::new();
        let mut limits = Vec::new();
        for name in self.definitions.keys() {
            let busy = self.per_trigger.get(name).copied().unwrap_or(0);
            let n = cap.saturating_sub(busy).min(batch);
            if n > 0 {
                names.push(name.clone());
                limits.push(n as i32);
            }
        }
        let claimed = store::claim(names.clone(), limits.clone());
        let mut got: HashMap<&str, usize> = HashMap::new();
        for c in &claimed {
            *got.entry(c.trigger.as_str()).or_default() += 1;
        }
        let more = names.iter().zip(&limits).any(|(n, l)| got.get(n.as_str()).copied().unwrap_or(0) >= *l as usize);
        let mut attempts = Vec::with_capacity(claimed.len());
        for event in claimed {
            if let Some(a) = self.prepare(event) {
                attempts.push(a);
            }
        }
        let next_due = if more { None } else { store::seconds_until_next_due(names) };
        RoundResult { attempts, more, next_due }
    }

    fn refresh_definitions(&mut self) {
        let mut seen = Vec::new();
        for (name, updated, def) in store::definitions() {
            seen.push(name.clone());
            if self.definitions.get(&name).is_some_and(|(u, _)| *u == updated) {
                continue;
            }
            match Definition::from_stored(&def.0) {
                Ok(d) => {
                    self.definitions.insert(name, (updated, d));
                }
                Err(e) => warning!("pg_webhooks: event trigger \"{name}\" has an invalid stored definition: {}", e.message),
            }
        }
        self.definitions.retain(|name, _| seen.contains(name));
    }

    /// Builds the HTTP attempt for a claimed event.
    fn prepare(&mut self, event: store::Claimed) -> Option<Attempt> {
        let Some((_, def)) = self.definitions.get(&event.trigger) else {
            // Claimed by name from the definitions just read: cannot happen.
            return None;
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
        let env = |v: &str| std::env::var(v).ok();
        let (url, url_logged) = match &def.webhook {
            Webhook::Url(template) => (env_template::render(template, &env).map_err(|e| e.message), template.clone()),
            Webhook::FromEnv(var) => {
                (env(var).ok_or_else(|| format!("environment variable \"{var}\" is not set")), format!("{{{{{var}}}}}"))
            }
        };
        let now_secs = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let mut headers = Vec::with_capacity(def.headers.len() + 2);
        let mut logged = Vec::with_capacity(def.headers.len() + 2);
        let mut missing = url.as_ref().err().cloned();
        for h in &def.headers {
            match &h.value {
                HeaderValue::Value(v) => {
                    headers.push((h.name.clone(), v.clone()));
                    logged.push(serde_json::json!({"name": h.name, "value": v}));
                }
                HeaderValue::FromEnv(var) => {
                    match env(var) {
                        Some(v) => headers.push((h.name.clone(), v)),
                        None => missing = Some(format!("environment variable \"{var}\" is not set")),
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
            },
        );
        *self.per_trigger.entry(event.trigger).or_default() += 1;
        if let Some(error) = missing {
            self.early.push(Outcome {
                tag,
                response: None,
                error: Some(error),
                started: SystemTime::now(),
                duration: Duration::ZERO,
            });
            return None;
        }
        Some(Attempt {
            tag,
            url: url.expect("checked above"),
            headers,
            body,
            timeout: Duration::from_secs(def.retry_conf.timeout_sec.max(1) as u64),
        })
    }

    /// Turns outcomes into verdicts and writes them.
    fn record(&mut self, outcomes: Vec<Outcome>) {
        let mut rows = Vec::with_capacity(outcomes.len());
        for o in outcomes {
            let Some(f) = self.in_flight.remove(&o.tag) else { continue };
            if let Some(n) = self.per_trigger.get_mut(&f.trigger) {
                *n = n.saturating_sub(1);
            }
            let status = o.status();
            let retry_after = o
                .response
                .as_ref()
                .and_then(|r| r.header("retry-after"))
                .and_then(|v| retry::parse_retry_after(v, SystemTime::now()));
            let verdict = retry::classify(status, retry_after, f.tries_before, &f.retry);
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
                        what_happened(&o),
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
                        what_happened(&o)
                    );
                    ('f', 0.0)
                }
            };
            rows.push(store::Recorded {
                event_id: f.event_id,
                log_id: pgrx::Uuid::from_bytes(*uuid::Uuid::now_v7().as_bytes()),
                trigger: f.trigger,
                status: status.map(i32::from),
                request: f.request_log,
                response: JsonB(o.response_json()),
                started_epoch: o.started.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64(),
                duration_ms: o.duration.as_secs_f64() * 1000.0,
                verdict: code,
                retry_delay_sec: delay,
            });
        }
        store::record(rows);
    }

    /// On SIGTERM: record what has come back within a short grace period,
    /// and release the rest so that they are delivered again.
    fn shutdown(&mut self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        let mut outcomes = std::mem::take(&mut self.early);
        while outcomes.len() < self.in_flight.len() && std::time::Instant::now() < deadline {
            match self.pool.wait_outcome(Duration::from_millis(50)) {
                Some(o) => outcomes.push(o),
                None => continue,
            }
        }
        outcomes.extend(self.pool.outcomes());
        if !self.ready {
            return;
        }
        BackgroundWorker::transaction(AssertUnwindSafe(|| {
            if !store::extension_installed() {
                return;
            }
            self.record(outcomes);
            let rest: Vec<pgrx::Uuid> = self.in_flight.values().map(|f| f.event_id).collect();
            if !rest.is_empty() {
                log!("pg_webhooks: stopping with {} deliveries in flight; they will be delivered again", rest.len());
            }
            store::unlock(rest);
        }));
        self.in_flight.clear();
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
