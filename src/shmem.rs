//! Shared memory between backends, the launcher and the delivery workers:
//! one slot per delivery worker (its database, its latch, its counters for
//! `webhooks.worker_status()`), the launcher's latch and the requests
//! backends leave for it, and the definitions generation that capture
//! checks.
//!
//! The launcher alone assigns and frees slots; a worker writes only its
//! own. Everything is atomics: backends touch this memory at commit, where
//! nothing may fail.
//!
//! It exists only when the library is in shared_preload_libraries; every
//! accessor copes with its absence.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicPtr, AtomicU32, AtomicU64, Ordering};

use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PGRXSharedMemory, PgAtomic};

/// The most delivery workers (databases served at once) the shared memory
/// has room for; `webhooks.max_workers` chooses up to this many.
pub const MAX_WORKERS: usize = 128;

/// How many CREATE EXTENSION commits can wait for the launcher at once;
/// beyond that the launcher looks at every database again.
const MAX_REQUESTS: usize = 16;

/// What a slot's worker is doing. Written by the launcher when it assigns a
/// slot (`STARTING`) and by the worker after that.
pub mod state {
    /// The slot is free.
    pub const FREE: u32 = 0;
    /// The launcher registered a worker that has not decided yet.
    pub const STARTING: u32 = 1;
    /// The worker found the extension and delivers.
    pub const SERVING: u32 = 2;
    /// The worker found no extension in its database and exited: nothing to
    /// serve until CREATE EXTENSION.
    pub const ABSENT: u32 = 3;
    /// The worker exited for another reason (terminated, an error, its
    /// database being dropped): the launcher decides whether to start it
    /// again.
    pub const EXITED: u32 = 4;
}

#[repr(C)]
#[derive(Default)]
pub struct WorkerSlot {
    /// The database this slot serves; 0 while free.
    pub database: AtomicU32,
    pub state: AtomicU32,
    /// Set by DROP DATABASE (or CREATE DATABASE from this one) before it
    /// asks the worker to stop: the launcher waits before it starts a
    /// worker there again.
    pub dropping: AtomicBool,
    /// The worker's latch while it runs, else null.
    latch: AtomicPtr<pg_sys::Latch>,
    pub pid: AtomicI32,
    /// Timestamps as PostgreSQL's TimestampTz (microseconds since 2000).
    pub started_at: AtomicI64,
    pub last_wakeup: AtomicI64,
    pub in_flight: AtomicI64,
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    /// Wake-ups asked for by committing backends of its database.
    pub wake_requests: AtomicU64,
}

#[repr(C)]
pub struct Shared {
    /// The launcher's latch while it runs, else null.
    launcher_latch: AtomicPtr<pg_sys::Latch>,
    /// Databases where CREATE EXTENSION committed (0: an empty entry).
    requests: [AtomicU32; MAX_REQUESTS],
    /// A request found no empty entry: look at every database.
    requests_overflowed: AtomicBool,
    /// Bumped by every commit that changed `webhooks.event_triggers` (any
    /// database): capture recompiles what it compiled before.
    pub definitions_generation: AtomicU64,
    pub slots: [WorkerSlot; MAX_WORKERS],
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            launcher_latch: AtomicPtr::default(),
            requests: std::array::from_fn(|_| AtomicU32::new(0)),
            requests_overflowed: AtomicBool::new(false),
            definitions_generation: AtomicU64::new(0),
            slots: std::array::from_fn(|_| WorkerSlot::default()),
        }
    }
}

// SAFETY: only atomics, and the latch pointers point into shared memory
// (a PGPROC's latch), mapped at the same address in every process.
unsafe impl PGRXSharedMemory for Shared {}

// SAFETY: the only shared memory segment of this name.
static SHARED: PgAtomic<Shared> = unsafe { PgAtomic::new(c"pg_webhooks") };

/// Asks for the shared memory; called from `_PG_init` while preloading.
pub fn init() {
    pg_shmem_init!(SHARED);
}

/// The shared state, when the library was preloaded (otherwise there is
/// none, and nobody to wake).
pub fn shared() -> Option<&'static Shared> {
    crate::PRELOADED.load(Ordering::Relaxed).then(|| SHARED.get())
}

/// Sets a latch published in shared memory, if any.
fn set_latch(latch: &AtomicPtr<pg_sys::Latch>) {
    let latch = latch.load(Ordering::Acquire);
    if !latch.is_null() {
        // SAFETY: latches published here are PGPROC latches, which live in
        // shared memory for as long as the server; SetLatch on a latch
        // whose owner exited is a harmless no-op.
        unsafe { pg_sys::SetLatch(latch) };
    }
}

fn my_database() -> u32 {
    // SAFETY: reads a backend global.
    unsafe { pg_sys::MyDatabaseId }.to_u32()
}

thread_local! {
    /// The slot that served this backend's database when last looked up.
    static MY_SLOT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Wakes the delivery worker of the current database, if one runs. Safe at
/// commit: atomic loads and stores and a SetLatch, none of which can fail.
pub fn wake_worker() {
    let Some(s) = shared() else { return };
    let db = my_database();
    let cached = MY_SLOT.with(|c| c.get());
    let index = if s.slots[cached].database.load(Ordering::Relaxed) == db {
        cached
    } else {
        match s.slots.iter().position(|slot| slot.database.load(Ordering::Relaxed) == db) {
            Some(i) => {
                MY_SLOT.with(|c| c.set(i));
                i
            }
            None => return,
        }
    };
    let slot = &s.slots[index];
    slot.wake_requests.fetch_add(1, Ordering::Release);
    set_latch(&slot.latch);
}

/// Tells the launcher that the extension was created in the current
/// database, so that it starts a worker there. Safe at commit.
pub fn request_worker() {
    let Some(s) = shared() else { return };
    let db = my_database();
    let placed = s.requests.iter().any(|r| {
        r.load(Ordering::Relaxed) == db || r.compare_exchange(0, db, Ordering::AcqRel, Ordering::Relaxed).is_ok()
    });
    if !placed {
        s.requests_overflowed.store(true, Ordering::Release);
    }
    set_latch(&s.launcher_latch);
}

/// Tells every backend's capture that definitions changed. Safe at commit:
/// one atomic add.
pub fn definitions_changed() {
    if let Some(s) = shared() {
        s.definitions_generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// The worker of database `db`'s slot, if one is assigned.
pub fn slot_of(db: pg_sys::Oid) -> Option<&'static WorkerSlot> {
    shared()?.slots.iter().find(|s| s.database.load(Ordering::Acquire) == db.to_u32())
}

/// Asks the worker of database `db`, if one runs, to stop (DROP DATABASE,
/// or CREATE DATABASE with it as template, is about to run), and the
/// launcher to leave that database alone for a while.
pub fn stop_worker_of(db: pg_sys::Oid) {
    let Some(slot) = slot_of(db) else { return };
    slot.dropping.store(true, Ordering::Release);
    let pid = slot.pid.load(Ordering::Acquire);
    if pid != 0 {
        // SAFETY: sends SIGTERM to the pid a worker published in its slot;
        // it clears the pid as it exits.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
}

impl Shared {
    /// Called by the launcher when it starts.
    pub fn register_launcher(&self) {
        // SAFETY: the calling process's own latch.
        self.launcher_latch.store(unsafe { pg_sys::MyLatch }, Ordering::Release);
    }

    pub fn unregister_launcher(&self) {
        self.launcher_latch.store(std::ptr::null_mut(), Ordering::Release);
    }

    /// Takes the databases that asked for a worker; `None` when some did
    /// not fit and every database must be looked at.
    pub fn take_requests(&self) -> Option<Vec<u32>> {
        let overflowed = self.requests_overflowed.swap(false, Ordering::AcqRel);
        let taken: Vec<u32> = self.requests.iter().map(|r| r.swap(0, Ordering::AcqRel)).filter(|&db| db != 0).collect();
        (!overflowed).then_some(taken)
    }

    pub fn wake_launcher(&self) {
        set_latch(&self.launcher_latch);
    }
}

impl WorkerSlot {
    /// Called by a worker when it has connected to its database.
    pub fn register_worker(&self) {
        // SAFETY: the calling process's own globals and the clock.
        unsafe {
            self.latch.store(pg_sys::MyLatch, Ordering::Release);
            self.pid.store(pg_sys::MyProcPid, Ordering::Relaxed);
            self.started_at.store(pg_sys::GetCurrentTimestamp(), Ordering::Relaxed);
            self.last_wakeup.store(0, Ordering::Relaxed);
        }
        self.in_flight.store(0, Ordering::Relaxed);
        self.delivered.store(0, Ordering::Relaxed);
        self.failed.store(0, Ordering::Relaxed);
        self.wake_requests.store(0, Ordering::Relaxed);
    }

    /// Called as the worker's process exits, however it exits: `ABSENT`
    /// stays, anything else becomes `EXITED`.
    pub fn unregister_worker(&self) {
        self.latch.store(std::ptr::null_mut(), Ordering::Release);
        self.pid.store(0, Ordering::Relaxed);
        self.in_flight.store(0, Ordering::Relaxed);
        let _ = self.state.compare_exchange(state::STARTING, state::EXITED, Ordering::AcqRel, Ordering::Relaxed);
        let _ = self.state.compare_exchange(state::SERVING, state::EXITED, Ordering::AcqRel, Ordering::Relaxed);
    }

    /// Called by the launcher to hand the slot to a new worker.
    pub fn assign(&self, db: u32) {
        self.dropping.store(false, Ordering::Relaxed);
        self.delivered.store(0, Ordering::Relaxed);
        self.failed.store(0, Ordering::Relaxed);
        self.state.store(state::STARTING, Ordering::Release);
        self.database.store(db, Ordering::Release);
    }

    /// Called by the launcher once the slot's worker has stopped.
    pub fn free(&self) {
        self.database.store(0, Ordering::Release);
        self.pid.store(0, Ordering::Relaxed);
        self.state.store(state::FREE, Ordering::Release);
    }
}
