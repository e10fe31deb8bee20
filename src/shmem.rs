//! Shared memory between backends and the worker: the worker's latch, so a
//! commit that wrote events can wake it, and the worker's counters for
//! `webhooks.worker_status()`.
//!
//! It exists only when the library is in shared_preload_libraries; every
//! accessor copes with its absence.

use std::sync::atomic::{AtomicI32, AtomicI64, AtomicPtr, AtomicU32, AtomicU64, Ordering};

use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PGRXSharedMemory, PgAtomic};

#[repr(C)]
#[derive(Default)]
pub struct WorkerShared {
    /// The worker's latch while it runs, else null.
    latch: AtomicPtr<pg_sys::Latch>,
    pub pid: AtomicI32,
    /// Timestamps as PostgreSQL's TimestampTz (microseconds since 2000).
    pub started_at: AtomicI64,
    pub last_wakeup: AtomicI64,
    pub in_flight: AtomicI64,
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    /// Wake-ups asked for by committing backends.
    pub wake_requests: AtomicU64,
    /// The database the worker serves: commits elsewhere do not wake it.
    database: AtomicU32,
    /// Bumped by every commit that changed `webhooks.event_triggers` (any
    /// database): capture recompiles what it compiled before.
    pub definitions_generation: AtomicU64,
}

// SAFETY: only atomics, and the latch pointer points into shared memory
// (a PGPROC's latch), mapped at the same address in every process.
unsafe impl PGRXSharedMemory for WorkerShared {}

// SAFETY: the only shared memory segment of this name.
static SHARED: PgAtomic<WorkerShared> = unsafe { PgAtomic::new(c"pg_webhooks") };

/// Asks for the shared memory; called from `_PG_init` while preloading.
pub fn init() {
    pg_shmem_init!(SHARED);
}

/// The shared state, when the library was preloaded (otherwise there is
/// none, and nobody to wake).
pub fn shared() -> Option<&'static WorkerShared> {
    crate::PRELOADED.load(Ordering::Relaxed).then(|| SHARED.get())
}

/// Wakes the delivery worker. Safe at commit: an atomic load and store and a
/// SetLatch, none of which can fail.
pub fn wake_worker() {
    if let Some(s) = shared() {
        // SAFETY: reads a backend global.
        if s.database.load(Ordering::Relaxed) != unsafe { pg_sys::MyDatabaseId }.to_u32() {
            return;
        }
        s.wake_requests.fetch_add(1, Ordering::Release);
        let latch = s.latch.load(Ordering::Acquire);
        if !latch.is_null() {
            // SAFETY: the worker's latch lives in shared memory for as long
            // as the server; SetLatch on a latch whose owner exited is a
            // harmless no-op.
            unsafe { pg_sys::SetLatch(latch) };
        }
    }
}

/// Tells every backend's capture that definitions changed. Safe at commit:
/// one atomic add.
pub fn definitions_changed() {
    if let Some(s) = shared() {
        s.definitions_generation.fetch_add(1, Ordering::AcqRel);
    }
}

impl WorkerShared {
    /// Called by the worker when it starts serving.
    pub fn register_worker(&self) {
        // SAFETY: the calling process's own globals and the clock.
        unsafe {
            self.latch.store(pg_sys::MyLatch, Ordering::Release);
            self.pid.store(pg_sys::MyProcPid, Ordering::Relaxed);
            self.started_at.store(pg_sys::GetCurrentTimestamp(), Ordering::Relaxed);
            self.database.store(pg_sys::MyDatabaseId.to_u32(), Ordering::Relaxed);
        }
        self.in_flight.store(0, Ordering::Relaxed);
        self.delivered.store(0, Ordering::Relaxed);
        self.failed.store(0, Ordering::Relaxed);
    }

    pub fn unregister_worker(&self) {
        self.latch.store(std::ptr::null_mut(), Ordering::Release);
        self.pid.store(0, Ordering::Relaxed);
        self.in_flight.store(0, Ordering::Relaxed);
    }
}
