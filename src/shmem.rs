//! Shared memory between backends and the worker: the worker's latch, so a
//! commit that wrote events can wake it, and the worker's counters for
//! `webhooks.worker_status()`.
//!
//! It exists only when the library is in shared_preload_libraries; every
//! accessor copes with its absence.

use std::sync::atomic::{AtomicI32, AtomicI64, AtomicPtr, AtomicU32, AtomicU64, Ordering};

use pgrx::prelude::*;

#[repr(C)]
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
}

static mut SHARED: *mut WorkerShared = std::ptr::null_mut();
static mut PREV_SHMEM_REQUEST: pg_sys::shmem_request_hook_type = None;
static mut PREV_SHMEM_STARTUP: pg_sys::shmem_startup_hook_type = None;

/// Asks for the shared memory; called from `_PG_init` while preloading.
pub fn init() {
    unsafe {
        PREV_SHMEM_REQUEST = pg_sys::shmem_request_hook;
        pg_sys::shmem_request_hook = Some(shmem_request);
        PREV_SHMEM_STARTUP = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(shmem_startup);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn shmem_request() {
    if let Some(prev) = PREV_SHMEM_REQUEST {
        prev();
    }
    pg_sys::RequestAddinShmemSpace(std::mem::size_of::<WorkerShared>());
}

#[pg_guard]
unsafe extern "C-unwind" fn shmem_startup() {
    if let Some(prev) = PREV_SHMEM_STARTUP {
        prev();
    }
    let lock = &raw mut (*pg_sys::MainLWLockArray.add(21)).lock; // AddinShmemInitLock
    pg_sys::LWLockAcquire(lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
    let mut found = false;
    let ptr = pg_sys::ShmemInitStruct(c"pg_webhooks".as_ptr(), std::mem::size_of::<WorkerShared>(), &mut found)
        .cast::<WorkerShared>();
    if !found {
        ptr.write(WorkerShared {
            latch: AtomicPtr::new(std::ptr::null_mut()),
            pid: AtomicI32::new(0),
            started_at: AtomicI64::new(0),
            last_wakeup: AtomicI64::new(0),
            in_flight: AtomicI64::new(0),
            delivered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            wake_requests: AtomicU64::new(0),
            database: AtomicU32::new(0),
        });
    }
    SHARED = ptr;
    pg_sys::LWLockRelease(lock);
}

pub fn shared() -> Option<&'static WorkerShared> {
    unsafe { SHARED.as_ref() }
}

/// Wakes the delivery worker. Safe at commit: an atomic load and store and a
/// SetLatch, none of which can fail.
pub fn wake_worker() {
    if let Some(s) = shared() {
        if s.database.load(Ordering::Relaxed) != unsafe { pg_sys::MyDatabaseId }.to_u32() {
            return;
        }
        s.wake_requests.fetch_add(1, Ordering::Release);
        let latch = s.latch.load(Ordering::Acquire);
        if !latch.is_null() {
            unsafe { pg_sys::SetLatch(latch) };
        }
    }
}

impl WorkerShared {
    /// Called by the worker when it starts serving.
    pub fn register_worker(&self) {
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
