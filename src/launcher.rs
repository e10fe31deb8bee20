//! The launcher: one background worker per cluster that starts a delivery
//! worker for every database with the extension, and starts it again when
//! it stops.
//!
//! The launcher cannot see another database's `pg_extension`, so it asks:
//! a worker started for a database first checks whether the extension is
//! installed there and, if not, exits at once and says so in its slot
//! (`ABSENT`). The launcher asks every database it has not asked yet: all
//! of them when it starts, databases that appear in `pg_database` (created
//! from a template that has the extension, restored), and a database whose
//! CREATE EXTENSION just committed ([`crate::shmem::request_worker`]).
//!
//! Its main loop is named steps: [`Launcher::reap`] the workers that
//! stopped, [`Launcher::take_requests`], [`Launcher::scan`] `pg_database`
//! now and then, [`Launcher::start_workers`], and wait on the latch (set by
//! requests and by the postmaster when a worker it started starts or
//! stops).
//!
//! Like every worker that needs a database, it starts only once recovery
//! has finished: on a hot standby nothing runs, and a promoted standby
//! starts delivering.

use std::collections::HashMap;
use std::ffi::CStr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BackgroundWorkerStatus, DynamicBackgroundWorker, SignalWakeFlags,
};
use pgrx::prelude::*;

use crate::settings;
use crate::shmem::{self, state, Shared};

/// How often `pg_database` is read for databases that appeared.
const SCAN_EVERY: Duration = Duration::from_secs(5);
/// The first wait before a stopped worker is started again; it doubles with
/// every stop that came before the worker served, up to RESTART_MAX.
const RESTART_AFTER: Duration = Duration::from_secs(1);
const RESTART_MAX: Duration = Duration::from_secs(60);
/// After DROP DATABASE stopped a worker: time for the drop to finish
/// before the database is looked at again.
const AFTER_DROP: Duration = Duration::from_secs(10);
/// How long to wait before trying again when no worker could be started.
const NO_SLOT_RETRY: Duration = Duration::from_secs(10);

/// Registers the launcher; called from `_PG_init` while preloading.
pub fn register() {
    BackgroundWorkerBuilder::new("pg_webhooks launcher")
        .set_type("pg_webhooks launcher")
        .set_library("pg_webhooks")
        .set_function("pg_webhooks_launcher_main")
        // Shared memory and a connection (to shared catalogs only), from
        // the end of recovery on.
        .enable_spi_access()
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_webhooks_launcher_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    // No database: the launcher reads only pg_database, a shared catalog.
    BackgroundWorker::connect_worker_to_spi(None, None);
    let shared = shmem::shared().expect("the launcher only runs when preloaded");
    shared.register_launcher();
    let mut launcher = Launcher::new(shared);
    match settings::database() {
        Some(db) => log!("pg_webhooks: launcher started; webhooks.database = '{db}': only that database is served"),
        None => log!("pg_webhooks: launcher started"),
    }
    launcher.run();
    shared.unregister_launcher();
    // Exit code 1: the postmaster starts the launcher again (unless the
    // server is stopping), which adopts the workers still running.
    // SAFETY: ends the process, as a background worker does.
    unsafe { pg_sys::proc_exit(1) };
}

/// What the launcher wants for one database.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Want {
    /// Start a worker, which checks for the extension.
    Ask,
    /// A worker runs in this slot.
    Served(usize),
    /// The extension is not installed: nothing until CREATE EXTENSION.
    Absent,
    /// Start a worker again at this time.
    RestartAt(Instant),
}

struct Database {
    name: String,
    want: Want,
    /// Stops in a row before the worker served: the restart wait doubles.
    failures: u32,
    /// Whether the lack of a free worker was logged (once until it starts).
    no_slot_logged: bool,
    /// CREATE EXTENSION committed while a worker ran: if that worker exits
    /// finding no extension (it looked before the commit), ask again.
    asked_again: bool,
}

impl Database {
    fn new(name: String, want: Want) -> Database {
        Database { name, want, failures: 0, no_slot_logged: false, asked_again: false }
    }
}

struct Launcher {
    shared: &'static Shared,
    /// The handles of the workers this launcher started, by slot.
    handles: HashMap<usize, DynamicBackgroundWorker>,
    databases: HashMap<u32, Database>,
    next_scan: Instant,
    /// `webhooks.database`: serve only that one.
    only: Option<String>,
    max_workers: usize,
}

impl Launcher {
    fn new(shared: &'static Shared) -> Launcher {
        let mut launcher = Launcher {
            shared,
            handles: HashMap::new(),
            databases: HashMap::new(),
            next_scan: Instant::now(),
            only: settings::database(),
            max_workers: settings::max_workers(),
        };
        launcher.adopt();
        launcher
    }

    /// After a restart of the launcher alone, workers it started before may
    /// still run: keep their slots (their exit shows in the slot's state).
    /// A slot whose worker never got to start is freed.
    fn adopt(&mut self) {
        for (i, slot) in self.shared.slots.iter().enumerate() {
            let db = slot.database.load(Ordering::Acquire);
            if db == 0 {
                continue;
            }
            let st = slot.state.load(Ordering::Acquire);
            if slot.pid.load(Ordering::Relaxed) != 0 && (st == state::STARTING || st == state::SERVING) {
                self.databases.insert(db, Database::new(String::new(), Want::Served(i)));
            } else {
                slot.free();
            }
        }
    }

    fn run(&mut self) {
        loop {
            if BackgroundWorker::sigterm_received() {
                return;
            }
            if BackgroundWorker::sighup_received() {
                // SAFETY: on the main thread between transactions.
                unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
            }
            self.reap();
            self.take_requests();
            if Instant::now() >= self.next_scan {
                self.scan();
            }
            self.start_workers();
            self.wait();
        }
    }

    /// Frees the slots whose worker stopped, and decides what comes next
    /// for their database: nothing when the extension is not there, else a
    /// restart after a pause.
    fn reap(&mut self) {
        for (i, slot) in self.shared.slots.iter().enumerate() {
            let db = slot.database.load(Ordering::Acquire);
            if db == 0 {
                continue;
            }
            let stopped = match self.handles.get(&i) {
                Some(h) => matches!(h.pid(), Err(BackgroundWorkerStatus::Stopped)),
                None => {
                    let st = slot.state.load(Ordering::Acquire);
                    slot.pid.load(Ordering::Relaxed) == 0 && (st == state::ABSENT || st == state::EXITED)
                }
            };
            if !stopped {
                // A worker that got to serve resets its database's backoff.
                if slot.state.load(Ordering::Relaxed) == state::SERVING {
                    if let Some(d) = self.databases.get_mut(&db) {
                        d.failures = 0;
                    }
                }
                continue;
            }
            self.handles.remove(&i);
            let st = slot.state.load(Ordering::Acquire);
            let dropping = slot.dropping.load(Ordering::Relaxed);
            slot.free();
            let Some(d) = self.databases.get_mut(&db) else { continue };
            if st == state::ABSENT {
                d.want = if std::mem::take(&mut d.asked_again) { Want::Ask } else { Want::Absent };
                d.failures = 0;
                continue;
            }
            d.asked_again = false;
            let wait = if dropping {
                AFTER_DROP
            } else {
                let wait = RESTART_AFTER.saturating_mul(1 << d.failures.min(6)).min(RESTART_MAX);
                d.failures += 1;
                wait
            };
            d.want = Want::RestartAt(Instant::now() + wait);
            // The database may be gone (dropped): look before restarting.
            self.next_scan = self.next_scan.min(Instant::now() + wait);
        }
    }

    /// Takes the databases where CREATE EXTENSION committed: a database not
    /// served is asked again at once; one not known yet is found by a scan
    /// now.
    fn take_requests(&mut self) {
        let requested = match self.shared.take_requests() {
            Some(r) => r,
            None => self.databases.keys().copied().collect(),
        };
        for db in requested {
            match self.databases.get_mut(&db) {
                Some(d) => {
                    if matches!(d.want, Want::Served(_)) {
                        d.asked_again = true;
                    } else {
                        d.want = Want::Ask;
                        d.failures = 0;
                    }
                }
                None => self.next_scan = Instant::now(),
            }
        }
    }

    /// Reads `pg_database`: databases not seen before are asked, databases
    /// gone are forgotten (their worker, if any, has lost its connection).
    fn scan(&mut self) {
        self.next_scan = Instant::now() + SCAN_EVERY;
        let found = BackgroundWorker::transaction(AssertUnwindSafe(list_databases));
        self.databases.retain(|oid, _| found.iter().any(|(o, _)| o == oid));
        for (oid, name) in found {
            if self.only.as_ref().is_some_and(|only| *only != name) {
                continue;
            }
            self.databases.entry(oid).or_insert_with(|| Database::new(String::new(), Want::Ask)).name = name;
        }
    }

    /// Starts a worker for every database that wants one, within
    /// `webhooks.max_workers` and the server's free worker slots.
    fn start_workers(&mut self) {
        let now = Instant::now();
        let mut due: Vec<u32> = self
            .databases
            .iter()
            .filter(|(_, d)| match d.want {
                Want::Ask => true,
                Want::RestartAt(t) => t <= now,
                _ => false,
            })
            .map(|(oid, _)| *oid)
            .collect();
        due.sort_unstable();
        for oid in due {
            let in_use = self.shared.slots.iter().filter(|s| s.database.load(Ordering::Relaxed) != 0).count();
            let free = self.shared.slots.iter().position(|s| s.database.load(Ordering::Relaxed) == 0);
            let d = self.databases.get_mut(&oid).expect("listed above");
            let (Some(index), true) = (free, in_use < self.max_workers) else {
                if !d.no_slot_logged {
                    d.no_slot_logged = true;
                    warning!(
                        "pg_webhooks: webhooks.max_workers = {} workers run already; database \"{}\" gets none until one stops",
                        self.max_workers,
                        d.name
                    );
                }
                d.want = Want::RestartAt(now + NO_SLOT_RETRY);
                continue;
            };
            let slot = &self.shared.slots[index];
            slot.assign(oid);
            match start_worker(index) {
                Ok(handle) => {
                    self.handles.insert(index, handle);
                    d.want = Want::Served(index);
                    d.no_slot_logged = false;
                }
                Err(_) => {
                    slot.free();
                    if !d.no_slot_logged {
                        d.no_slot_logged = true;
                        // SAFETY: reads a server setting.
                        let max = unsafe { pg_sys::max_worker_processes };
                        warning!(
                            "pg_webhooks: no background worker slot is free to deliver for database \"{}\"; raise max_worker_processes (now {max}) and restart PostgreSQL",
                            d.name
                        );
                    }
                    d.want = Want::RestartAt(now + NO_SLOT_RETRY);
                }
            }
        }
    }

    /// Sleeps until the latch or the next thing due.
    fn wait(&self) {
        let now = Instant::now();
        let mut until = self.next_scan;
        for d in self.databases.values() {
            if let Want::RestartAt(t) = d.want {
                until = until.min(t);
            }
        }
        let timeout = until.saturating_duration_since(now).max(Duration::from_millis(10));
        let events = pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH;
        // SAFETY: the launcher's own latch, on its main thread.
        unsafe {
            pg_sys::WaitLatch(pg_sys::MyLatch, events as i32, timeout.as_millis() as i64, pg_sys::PG_WAIT_EXTENSION);
            pg_sys::ResetLatch(pg_sys::MyLatch);
        }
        pgrx::check_for_interrupts!();
    }
}

/// Registers a delivery worker for slot `index`; the postmaster starts it
/// and tells this process (its latch) when it starts and stops.
fn start_worker(index: usize) -> Result<DynamicBackgroundWorker, pgrx::bgworkers::DynamicBackgroundWorkerLoadError> {
    BackgroundWorkerBuilder::new("pg_webhooks delivery worker")
        .set_type("pg_webhooks")
        .set_library("pg_webhooks")
        .set_function("pg_webhooks_worker_main")
        .enable_spi_access()
        .set_argument(Some(pg_sys::Datum::from(index)))
        // SAFETY: reads the process's own pid.
        .set_notify_pid(unsafe { pg_sys::MyProcPid })
        .set_restart_time(None)
        .load_dynamic()
}

/// The databases that accept connections and are not templates (or being
/// dropped), read from the shared catalog `pg_database`. In a transaction.
fn list_databases() -> Vec<(u32, String)> {
    let mut found = Vec::new();
    // SAFETY: a catalog heap scan in the current transaction, as
    // PostgreSQL's own launchers do; each tuple is read before the next
    // heap_getnext, and the scan and relation are closed in order.
    unsafe {
        let rel = pg_sys::table_open(pg_sys::DatabaseRelationId, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        let scan = pg_sys::table_beginscan_catalog(rel, 0, std::ptr::null_mut());
        loop {
            let tuple = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
            if tuple.is_null() {
                break;
            }
            let form = &*pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_database>(tuple);
            // datconnlimit -2 marks a database whose DROP was interrupted.
            if form.datallowconn && !form.datistemplate && form.datconnlimit != -2 {
                let name = CStr::from_ptr(form.datname.data.as_ptr()).to_string_lossy().into_owned();
                found.push((form.oid.to_u32(), name));
            }
        }
        pg_sys::table_endscan(scan);
        pg_sys::table_close(rel, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
    }
    found
}
