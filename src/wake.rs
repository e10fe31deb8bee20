//! What a commit tells other processes: that it wrote events or dropped the
//! extension (the database's worker wakes), that it created the extension
//! (the launcher starts a worker for the database), and that it changed
//! definitions (every backend's capture recompiles). And what DROP DATABASE
//! tells the worker of that database: to stop, so that the drop can go on.
//!
//! Capture and the definitions trigger only set backend-local flags; a
//! transaction callback, registered once per backend, acts on them at
//! commit: once per transaction, not per row, and with nothing but atomics
//! and a SetLatch. A prepared transaction's flags are dropped at PREPARE:
//! `COMMIT PREPARED`, from whichever backend runs it, wakes the worker and
//! marks definitions changed ([`after_utility`]), since that backend cannot
//! know what the prepared transaction did.

use std::cell::Cell;

use pgrx::prelude::*;

use crate::shmem;

thread_local! {
    static WROTE_EVENTS: Cell<bool> = const { Cell::new(false) };
    static DEFINITIONS_CHANGED: Cell<bool> = const { Cell::new(false) };
    static EXTENSION_CREATED: Cell<bool> = const { Cell::new(false) };
    static REGISTERED: Cell<bool> = const { Cell::new(false) };
}

fn register() {
    if !REGISTERED.with(|r| r.replace(true)) {
        // SAFETY: registers a callback for the life of the backend.
        unsafe { pg_sys::RegisterXactCallback(Some(on_xact_event), std::ptr::null_mut()) };
    }
}

/// Called after an event is written in the current transaction.
pub fn note_event_written() {
    if !WROTE_EVENTS.with(|w| w.replace(true)) {
        register();
    }
}

/// Called when the current transaction changes `webhooks.event_triggers`.
pub fn note_definitions_changed() {
    if !DEFINITIONS_CHANGED.with(|w| w.replace(true)) {
        register();
    }
}

/// Called by CREATE EXTENSION pg_webhooks: at commit, the launcher starts
/// a worker for this database.
pub fn note_extension_created() {
    if !EXTENSION_CREATED.with(|w| w.replace(true)) {
        register();
    }
}

/// Runs at every transaction end of this backend. It must not fail: at
/// COMMIT an ERROR would be promoted to PANIC.
///
/// # Safety
/// Called by PostgreSQL only, on the backend's main thread.
#[pg_guard]
unsafe extern "C-unwind" fn on_xact_event(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    match event {
        pg_sys::XactEvent::XACT_EVENT_COMMIT | pg_sys::XactEvent::XACT_EVENT_PARALLEL_COMMIT => {
            // Definitions first: a worker woken for events of a new
            // definition finds it; a backend that sees the new generation
            // takes its snapshot after this commit became visible.
            if DEFINITIONS_CHANGED.with(|w| w.replace(false)) {
                shmem::definitions_changed();
            }
            if WROTE_EVENTS.with(|w| w.replace(false)) {
                shmem::wake_worker();
            }
            if EXTENSION_CREATED.with(|w| w.replace(false)) {
                shmem::request_worker();
            }
        }
        pg_sys::XactEvent::XACT_EVENT_ABORT
        | pg_sys::XactEvent::XACT_EVENT_PARALLEL_ABORT
        | pg_sys::XactEvent::XACT_EVENT_PREPARE => {
            WROTE_EVENTS.with(|w| w.set(false));
            DEFINITIONS_CHANGED.with(|w| w.set(false));
            EXTENSION_CREATED.with(|w| w.set(false));
        }
        _ => {}
    }
}

/// Called before every utility statement runs. DROP DATABASE, and CREATE
/// DATABASE from a template, fail while another process is connected to
/// that database (they wait five seconds for it to leave): the worker
/// serving it is asked to stop first, and the launcher waits a while before
/// it starts one there again.
///
/// # Safety
/// `pstmt` must be the statement PostgreSQL is about to run.
pub unsafe fn before_utility(pstmt: *mut pg_sys::PlannedStmt) {
    // SAFETY: the planned statement and its utility node are valid while the
    // hook runs; names are NUL-terminated strings of the parse tree, and
    // the options a list of DefElem nodes.
    unsafe {
        let node = (*pstmt).utilityStmt;
        if node.is_null() {
            return;
        }
        let name = match (*node).type_ {
            pg_sys::NodeTag::T_DropdbStmt => (*node.cast::<pg_sys::DropdbStmt>()).dbname.cast_const(),
            pg_sys::NodeTag::T_CreatedbStmt => {
                let options = pgrx::PgList::<pg_sys::DefElem>::from_pg((*node.cast::<pg_sys::CreatedbStmt>()).options);
                let template = options
                    .iter_ptr()
                    .find(|d| !(**d).arg.is_null() && std::ffi::CStr::from_ptr((**d).defname) == c"template");
                match template {
                    Some(d) => pg_sys::defGetString(d),
                    None => return,
                }
            }
            _ => return,
        };
        let db = pg_sys::get_database_oid(name, true);
        if db != pg_sys::Oid::INVALID {
            shmem::stop_worker_of(db);
        }
    }
}

/// Called after every utility statement has run: a `COMMIT PREPARED` that
/// succeeded may have committed events and definition changes; a DROP
/// EXTENSION wakes this database's worker at commit, so that it stops.
///
/// # Safety
/// `pstmt` must be the statement PostgreSQL just ran.
pub unsafe fn after_utility(pstmt: *mut pg_sys::PlannedStmt) {
    // SAFETY: the planned statement and its utility node are valid while the
    // hook that ran them returns.
    let (commit_prepared, drop_extension) = unsafe {
        let node = (*pstmt).utilityStmt;
        if node.is_null() {
            return;
        }
        (
            (*node).type_ == pg_sys::NodeTag::T_TransactionStmt
                && (*node.cast::<pg_sys::TransactionStmt>()).kind
                    == pg_sys::TransactionStmtKind::TRANS_STMT_COMMIT_PREPARED,
            (*node).type_ == pg_sys::NodeTag::T_DropStmt
                && (*node.cast::<pg_sys::DropStmt>()).removeType == pg_sys::ObjectType::OBJECT_EXTENSION,
        )
    };
    if commit_prepared {
        shmem::definitions_changed();
        shmem::wake_worker();
    }
    if drop_extension {
        note_event_written();
    }
}
