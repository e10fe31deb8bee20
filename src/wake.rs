//! Waking the worker when a transaction that wrote events commits.
//!
//! Capture only sets a backend-local flag; a transaction callback, registered
//! once per backend, acts on it at commit: once per transaction, not per row.

use std::cell::Cell;

use pgrx::prelude::*;

thread_local! {
    static WROTE_EVENTS: Cell<bool> = const { Cell::new(false) };
    static REGISTERED: Cell<bool> = const { Cell::new(false) };
}

/// Called after an event is written in the current transaction.
pub fn note_event_written() {
    if WROTE_EVENTS.with(|w| w.replace(true)) {
        return;
    }
    if !REGISTERED.with(|r| r.replace(true)) {
        // SAFETY: registers a callback for the life of the backend.
        unsafe { pg_sys::RegisterXactCallback(Some(on_xact_event), std::ptr::null_mut()) };
    }
}

/// Runs at every transaction end of this backend. It must not fail: at
/// COMMIT an ERROR would be promoted to PANIC.
#[pg_guard]
unsafe extern "C-unwind" fn on_xact_event(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    match event {
        pg_sys::XactEvent::XACT_EVENT_COMMIT | pg_sys::XactEvent::XACT_EVENT_PARALLEL_COMMIT
            if WROTE_EVENTS.with(|w| w.replace(false)) =>
        {
            crate::shmem::wake_worker();
        }
        pg_sys::XactEvent::XACT_EVENT_ABORT | pg_sys::XactEvent::XACT_EVENT_PARALLEL_ABORT => {
            WROTE_EVENTS.with(|w| w.set(false));
        }
        _ => {}
    }
}
