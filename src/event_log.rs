//! `webhooks.event_log` and `webhooks.event_invocation_logs`: every read and
//! write of the event tables from Rust. Capture and `invoke_event_trigger`
//! append events; the SQL functions archive and requeue them; the worker
//! claims them, records attempts and releases locks. Adding a column to the
//! event log touches this file, `sql/tables.sql` and the upgrade script.
//!
//! An event is *pending* while it is not delivered, not error and not
//! archived ([`pending!`]); `locked` is set while an attempt is in flight.
//!
//! Appending is the hot path of every watched write, so it does not go
//! through SQL: events are written straight into the heap and its indexes,
//! the way COPY does (a prepared INSERT run through SPI spent most of its
//! time starting up the executor for one row). The table and its indexes
//! are opened at a transaction's first event and kept open while the
//! statement runs, so a statement that changes many rows opens them once.
//! They are closed at the end of every statement (the executor and utility
//! hooks below), so that DDL later in the same transaction (ALTER EXTENSION
//! UPDATE, DROP EXTENSION) never finds them in use, and at commit at the
//! latest. The insert is what an INSERT would do for this table: heap insert
//! (with TOAST for large payloads), then every index through the executor's
//! own `ExecInsertIndexTuples`, which evaluates the fetch index's predicate
//! and checks the primary key. No privilege is checked and no `search_path`
//! is used.
//!
//! The rest runs through SPI, with the owner's rights (the SQL functions,
//! in [`crate::catalog::as_owner`]) or in the worker, whose session pins
//! `search_path`; each statement runs inside the caller's transaction, and
//! the worker commits before any HTTP request goes out.

use std::cell::RefCell;
use std::panic::AssertUnwindSafe;

use pgrx::prelude::*;
use webhooks_core::retry::Verdict;

use crate::errors::spi;
use crate::plans;

/// The condition for a pending event of `webhooks.event_log e`, written once
/// for every statement here (the fetch index in `sql/tables.sql` and the
/// view in `sql/operations.sql` spell it out the same way).
macro_rules! pending {
    () => {
        "NOT e.delivered AND NOT e.error AND NOT e.archived"
    };
}

// ---- Appending --------------------------------------------------------------

/// The columns of `webhooks.event_log` an append fills. Others (there are
/// none in this version) are left NULL, as is `ordering_key` of events
/// without one.
#[derive(Clone, Copy, PartialEq)]
enum Col {
    Id,
    TriggerName,
    SchemaName,
    TableName,
    Payload,
    Delivered,
    Error,
    Archived,
    Tries,
    CreatedAt,
    Locked,
    NextRetryAt,
    OrderingKey,
    Unknown,
}

impl Col {
    fn of(name: &str) -> (Col, pg_sys::Oid) {
        match name {
            "id" => (Col::Id, pg_sys::UUIDOID),
            "trigger_name" => (Col::TriggerName, pg_sys::TEXTOID),
            "schema_name" => (Col::SchemaName, pg_sys::TEXTOID),
            "table_name" => (Col::TableName, pg_sys::TEXTOID),
            "payload" => (Col::Payload, pg_sys::JSONBOID),
            "delivered" => (Col::Delivered, pg_sys::BOOLOID),
            "error" => (Col::Error, pg_sys::BOOLOID),
            "archived" => (Col::Archived, pg_sys::BOOLOID),
            "tries" => (Col::Tries, pg_sys::INT4OID),
            "created_at" => (Col::CreatedAt, pg_sys::TIMESTAMPTZOID),
            "locked" => (Col::Locked, pg_sys::TIMESTAMPTZOID),
            "next_retry_at" => (Col::NextRetryAt, pg_sys::TIMESTAMPTZOID),
            "ordering_key" => (Col::OrderingKey, pg_sys::TEXTOID),
            _ => (Col::Unknown, pg_sys::InvalidOid),
        }
    }
}

/// One event to append. The text values are datums of type text, the
/// payload a jsonb datum.
pub struct Event {
    pub id: pgrx::Uuid,
    pub trigger_name: pg_sys::Datum,
    pub schema_name: pg_sys::Datum,
    pub table_name: pg_sys::Datum,
    pub payload: pg_sys::Datum,
    /// A text datum: the key of an ordered trigger's event, else None.
    pub ordering_key: Option<pg_sys::Datum>,
}

/// `webhooks.event_log`, open for inserts.
struct Open {
    rel: pg_sys::Relation,
    estate: *mut pg_sys::EState,
    rri: *mut pg_sys::ResultRelInfo,
    slot: *mut pg_sys::TupleTableSlot,
    cols: std::rc::Rc<[Col]>,
}

impl Open {
    fn handle(&self) -> Open {
        Open { rel: self.rel, estate: self.estate, rri: self.rri, slot: self.slot, cols: self.cols.clone() }
    }
}

thread_local! {
    static OPEN: RefCell<Option<Open>> = const { RefCell::new(None) };
    /// Set while an insert runs: a query it runs (an index expression)
    /// must not close the table under it.
    static INSERTING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

static mut PREV_EXECUTOR_END: pg_sys::ExecutorEnd_hook_type = None;
static mut PREV_PROCESS_UTILITY: pg_sys::ProcessUtility_hook_type = None;

/// Installs the hooks that close the table after each statement, and the
/// transaction callback; called from `_PG_init`.
pub fn init() {
    // SAFETY: hooks are set once, in _PG_init, on the main thread, chaining the previous ones.
    unsafe {
        PREV_EXECUTOR_END = pg_sys::ExecutorEnd_hook;
        pg_sys::ExecutorEnd_hook = Some(executor_end);
        PREV_PROCESS_UTILITY = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(process_utility);
        pg_sys::RegisterXactCallback(Some(on_xact_event), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(on_subxact_event), std::ptr::null_mut());
    }
}

/// Appends one event in the current (sub)transaction, without SQL and
/// without a privilege check.
pub fn append(event: &Event) {
    let open = OPEN.with(|o| o.borrow().as_ref().map(Open::handle));
    let open = open.unwrap_or_else(|| {
        // SAFETY: capture and invoke append inside a transaction.
        let open = unsafe { Open::new() };
        let handle = open.handle();
        OPEN.with(|o| *o.borrow_mut() = Some(open));
        handle
    });
    // No borrow is held while PostgreSQL inserts (an index expression may
    // run a query, whose end calls close()).
    INSERTING.with(|i| i.set(true));
    // SAFETY: `open` was opened in this transaction (an abort forgets it), and the event's datums
    // come from capture or invoke with the column types.
    unsafe { open.insert(event) };
    INSERTING.with(|i| i.set(false));
}

/// Closes the table if it is open. Called when a statement ends.
fn close() {
    if INSERTING.with(|i| i.get()) {
        return;
    }
    if let Some(open) = OPEN.with(|o| o.borrow_mut().take()) {
        // SAFETY: the handle was opened in this transaction and is closed once.
        unsafe { open.close() };
    }
}

impl Open {
    /// Opens `webhooks.event_log` and its indexes for appends.
    ///
    /// # Safety
    /// Must be called inside a transaction.
    unsafe fn new() -> Open {
        // SAFETY: opens the table inside the current transaction, with the transaction's resource
        // owner and memory, which outlive the handle (closed by close() or forgotten at abort).
        unsafe {
            let nsp = pg_sys::get_namespace_oid(c"webhooks".as_ptr(), true);
            let relid = if nsp == pg_sys::InvalidOid {
                pg_sys::InvalidOid
            } else {
                pg_sys::get_relname_relid(c"event_log".as_ptr(), nsp)
            };
            if relid == pg_sys::InvalidOid {
                error!("pg_webhooks: table webhooks.event_log does not exist; is the extension installed in this database?");
            }
            // Owned by the transaction and allocated in its memory, not the
            // statement's: a capture may first run deep inside a nested query.
            let saved_owner = pg_sys::CurrentResourceOwner;
            pg_sys::CurrentResourceOwner = pg_sys::TopTransactionResourceOwner;
            let saved_cxt = pg_sys::MemoryContextSwitchTo(pg_sys::TopTransactionContext);

            let rel = pg_sys::table_open(relid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
            let tupdesc = (*rel).rd_att;
            let natts = (*tupdesc).natts as usize;
            let attrs = crate::compat::attributes(tupdesc);
            let mut cols: Vec<Col> = Vec::with_capacity(natts);
            for att in attrs {
                if att.attisdropped {
                    cols.push(Col::Unknown);
                    continue;
                }
                let name = std::ffi::CStr::from_ptr(att.attname.data.as_ptr()).to_string_lossy();
                let (col, typ) = Col::of(&name);
                if col != Col::Unknown && att.atttypid != typ {
                    error!(
                        "pg_webhooks: column webhooks.event_log.{name} has an unexpected type; reinstall the extension"
                    );
                }
                cols.push(col);
            }
            let estate = pg_sys::CreateExecutorState();
            let rri = pg_sys::palloc0(std::mem::size_of::<pg_sys::ResultRelInfo>()) as *mut pg_sys::ResultRelInfo;
            (*rri).type_ = pg_sys::NodeTag::T_ResultRelInfo;
            pg_sys::InitResultRelInfo(rri, rel, 1, std::ptr::null_mut(), 0);
            pg_sys::ExecOpenIndices(rri, false);
            let slot = pg_sys::MakeSingleTupleTableSlot(tupdesc, &pg_sys::TTSOpsHeapTuple);

            pg_sys::MemoryContextSwitchTo(saved_cxt);
            pg_sys::CurrentResourceOwner = saved_owner;
            Open { rel, estate, rri, slot, cols: cols.into() }
        }
    }

    /// Writes one event into the heap and every index.
    ///
    /// # Safety
    /// `self` must be open in the current transaction, and the event's datums of the right types.
    unsafe fn insert(&self, event: &Event) {
        // SAFETY: the relation, executor state and slot were made for this table in this
        // transaction; the datums are of the column types checked when it was opened.
        unsafe {
            let now = pg_sys::GetCurrentTransactionStartTimestamp();
            let n = self.cols.len();
            let mut values = vec![pg_sys::Datum::from(0); n];
            let mut nulls = vec![false; n];
            let id = event.id.into_datum().unwrap();
            for (i, col) in self.cols.iter().enumerate() {
                values[i] = match col {
                    Col::Id => id,
                    Col::TriggerName => event.trigger_name,
                    Col::SchemaName => event.schema_name,
                    Col::TableName => event.table_name,
                    Col::Payload => event.payload,
                    Col::Delivered | Col::Error | Col::Archived => false.into(),
                    Col::Tries => 0i32.into(),
                    Col::CreatedAt | Col::NextRetryAt => now.into(),
                    Col::OrderingKey if event.ordering_key.is_some() => event.ordering_key.expect("checked"),
                    Col::OrderingKey | Col::Locked | Col::Unknown => {
                        nulls[i] = true;
                        pg_sys::Datum::from(0)
                    }
                };
            }
            let tuple = pg_sys::heap_form_tuple((*self.rel).rd_att, values.as_mut_ptr(), nulls.as_mut_ptr());
            pg_sys::simple_heap_insert(self.rel, tuple);
            pg_sys::ExecStoreHeapTuple(tuple, self.slot, false);
            crate::compat::insert_index_tuples(self.rri, self.slot, self.estate);
            pg_sys::ExecClearTuple(self.slot);
            let econtext = (*self.estate).es_per_tuple_exprcontext;
            if !econtext.is_null() {
                pg_sys::MemoryContextReset((*econtext).ecxt_per_tuple_memory);
            }
            pg_sys::heap_freetuple(tuple);
        }
    }

    /// Closes the table, keeping its lock until the transaction ends.
    ///
    /// # Safety
    /// `self` must be open in the current transaction.
    unsafe fn close(self) {
        // SAFETY: releases exactly what new() made, under the same resource owner.
        unsafe {
            let saved_owner = pg_sys::CurrentResourceOwner;
            pg_sys::CurrentResourceOwner = pg_sys::TopTransactionResourceOwner;
            pg_sys::ExecDropSingleTupleTableSlot(self.slot);
            pg_sys::ExecCloseIndices(self.rri);
            // The lock stays until the transaction ends, as for any INSERT.
            pg_sys::table_close(self.rel, pg_sys::NoLock as pg_sys::LOCKMODE);
            pg_sys::FreeExecutorState(self.estate);
            pg_sys::CurrentResourceOwner = saved_owner;
        }
    }
}

// The hooks call the next hook (or PostgreSQL's own function) directly, not
// through pgrx's guarded wrappers: an ERROR there must reach the caller as
// PostgreSQL raised it, with every field (position, constraint name...),
// not re-raised from Rust. Nothing in these frames needs dropping.
extern "C-unwind" {
    #[link_name = "standard_ExecutorEnd"]
    fn pg_standard_executor_end(query: *mut pg_sys::QueryDesc);
    #[link_name = "standard_ProcessUtility"]
    fn pg_standard_process_utility(
        pstmt: *mut pg_sys::PlannedStmt,
        query_string: *const std::ffi::c_char,
        read_only_tree: bool,
        context: pg_sys::ProcessUtilityContext::Type,
        params: pg_sys::ParamListInfo,
        query_env: *mut pg_sys::QueryEnvironment,
        dest: *mut pg_sys::DestReceiver,
        qc: *mut pg_sys::QueryCompletion,
    );
}

/// The ExecutorEnd hook: closes the event log when a statement ends.
///
/// # Safety
/// Called by PostgreSQL only, on the backend's main thread.
unsafe extern "C-unwind" fn executor_end(query: *mut pg_sys::QueryDesc) {
    // SAFETY: the hook chain as PostgreSQL calls it, with its query.
    unsafe {
        match PREV_EXECUTOR_END {
            Some(prev) => prev(query),
            None => pg_standard_executor_end(query),
        }
        statement_done();
    }
}

/// The ProcessUtility hook: closes the event log when a utility statement
/// ends, and tells [`crate::wake`] about statements other processes must
/// hear of (DROP DATABASE, DROP EXTENSION, COMMIT PREPARED).
///
/// # Safety
/// Called by PostgreSQL only, on the backend's main thread.
#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn process_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query_string: *const std::ffi::c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    // SAFETY: the hook chain as PostgreSQL calls it, with its arguments.
    unsafe {
        crate::wake::before_utility(pstmt);
        match PREV_PROCESS_UTILITY {
            Some(prev) => prev(pstmt, query_string, read_only_tree, context, params, query_env, dest, qc),
            None => {
                pg_standard_process_utility(pstmt, query_string, read_only_tree, context, params, query_env, dest, qc)
            }
        }
        statement_done();
        crate::wake::after_utility(pstmt);
    }
}

#[pg_guard]
extern "C-unwind" fn statement_done() {
    close();
}

/// Closes the table before commit or PREPARE (a statement that ran no
/// executor end, such as a portal closed at commit); forgets it on abort,
/// where the transaction's resource owner releases it.
///
/// # Safety
/// Called by PostgreSQL only, on the backend's main thread.
#[pg_guard]
unsafe extern "C-unwind" fn on_xact_event(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    match event {
        pg_sys::XactEvent::XACT_EVENT_PRE_COMMIT
        | pg_sys::XactEvent::XACT_EVENT_PARALLEL_PRE_COMMIT
        | pg_sys::XactEvent::XACT_EVENT_PRE_PREPARE => close(),
        pg_sys::XactEvent::XACT_EVENT_ABORT | pg_sys::XactEvent::XACT_EVENT_PARALLEL_ABORT => {
            INSERTING.with(|i| i.set(false));
            OPEN.with(|o| std::mem::forget(o.borrow_mut().take()));
        }
        _ => {}
    }
}

/// An insert that failed inside a subtransaction (caught by an exception
/// block) is over: the table may be closed again.
///
/// # Safety
/// Called by PostgreSQL only, on the backend's main thread.
#[pg_guard]
unsafe extern "C-unwind" fn on_subxact_event(
    event: pg_sys::SubXactEvent::Type,
    _sub: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    if event == pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB {
        INSERTING.with(|i| i.set(false));
    }
}

// ---- What the SQL functions do to events ----------------------------------

/// Archives the undelivered events of a trigger being deleted, pending
/// and errored alike: never sent, and never requeued by a later trigger of
/// the same name.
pub fn archive_undelivered(trigger: &str) {
    spi(Spi::run_with_args(
        "UPDATE webhooks.event_log e SET archived = true
         WHERE e.trigger_name OPERATOR(pg_catalog.=) $1 AND NOT e.delivered AND NOT e.archived",
        &[trigger.into()],
    ));
}

/// An event as `redeliver_event` sees it, locked.
pub struct Stored {
    pub trigger: String,
    /// An attempt is in flight.
    pub locked: bool,
    /// Its trigger was deleted.
    pub archived: bool,
}

/// Event `id`, locked FOR UPDATE, if it exists.
pub fn lock_event(id: pgrx::Uuid) -> Option<Stored> {
    let (locked, trigger, archived) = spi(Spi::get_three_with_args::<bool, String, bool>(
        "SELECT locked IS NOT NULL, trigger_name, archived FROM webhooks.event_log
         WHERE id OPERATOR(pg_catalog.=) $1 FOR UPDATE",
        &[id.into()],
    ));
    Some(Stored { locked: locked?, trigger: trigger?, archived: archived? })
}

/// Queues event `id` again: tries = 0, not delivered, not errored, due now.
pub fn requeue(id: pgrx::Uuid) {
    spi(Spi::run_with_args(
        "UPDATE webhooks.event_log
         SET tries = 0, delivered = false, error = false, archived = false, locked = NULL,
             next_retry_at = pg_catalog.now()
         WHERE id OPERATOR(pg_catalog.=) $1",
        &[id.into()],
    ));
}

/// Requeues trigger `name`'s errored (not archived) events created in
/// `[since, until)`, NULL bounds open; returns how many.
pub fn requeue_failed(
    name: &str,
    since: Option<pgrx::datum::TimestampWithTimeZone>,
    until: Option<pgrx::datum::TimestampWithTimeZone>,
) -> i64 {
    spi(Spi::get_one_with_args::<i64>(
        "WITH requeued AS (
             UPDATE webhooks.event_log
             SET tries = 0, error = false, locked = NULL, next_retry_at = pg_catalog.now()
             WHERE trigger_name OPERATOR(pg_catalog.=) $1 AND error AND NOT archived
               AND ($2::timestamptz IS NULL OR created_at OPERATOR(pg_catalog.>=) $2)
               AND ($3::timestamptz IS NULL OR created_at OPERATOR(pg_catalog.<) $3)
             RETURNING 1)
         SELECT pg_catalog.count(*) FROM requeued",
        &[name.into(), since.into(), until.into()],
    ))
    .unwrap_or(0)
}

/// A new event id: time-ordered (v7), so new events append to the primary
/// key index.
pub fn new_event_id() -> pgrx::Uuid {
    pgrx::Uuid::from_bytes(webhooks_core::ids::next_v7())
}

/// Appends an event with text names and a built payload (see
/// [`crate::payload`]): the MANUAL events of `invoke_event_trigger`.
pub fn append_named(id: pgrx::Uuid, trigger: &str, schema: &str, table: &str, payload: pg_sys::Datum) {
    let text = |s: &str| {
        let c = std::ffi::CString::new(s).expect("names have no NUL");
        // SAFETY: cstring_to_text copies into the current memory context,
        // which outlives the append below.
        pg_sys::Datum::from(unsafe { pg_sys::cstring_to_text(c.as_ptr()) })
    };
    append(&Event {
        id,
        trigger_name: text(trigger),
        schema_name: text(schema),
        table_name: text(table),
        payload,
        ordering_key: None,
    });
}

// ---- What the worker does to events ---------------------------------------

/// An event claimed for delivery.
pub struct Claimed {
    pub id: pgrx::Uuid,
    pub trigger: String,
    pub schema: String,
    pub table: String,
    /// The `event` object as JSON text.
    pub event: String,
    /// Attempts before this one.
    pub tries: i32,
    /// ISO 8601.
    pub created_at: String,
    /// When it was due: with `id`, its place in the fetch order.
    pub due: pgrx::datum::TimestampWithTimeZone,
}

/// Where a trigger's previous claim stopped, in fetch order.
pub type Cursor = (pgrx::datum::TimestampWithTimeZone, pgrx::Uuid);

/// What to write after an attempt.
pub struct Recorded {
    pub event_id: pgrx::Uuid,
    pub log_id: pgrx::Uuid,
    pub trigger: String,
    pub status: Option<i32>,
    /// The request as logged (secrets redacted), JSON text. Both are
    /// stored as json without PostgreSQL parsing them: they must be valid
    /// JSON (serde serialized them, around a payload jsonb gave as text).
    pub request: String,
    /// The response (status, headers, body) or the error, JSON text.
    pub response: String,
    pub started_epoch: f64,
    pub duration_ms: f64,
    pub verdict: Verdict,
}

/// Takes the worker's locks for a round, in one fixed order: the
/// definitions, then the event log and the invocation logs. A round reads
/// the definitions and writes both event tables in an order that depends on
/// what it has to do; `ALTER EXTENSION ... UPDATE` (whose scripts lock the
/// same tables in the same order first) then waits for the round, or the
/// round for it, instead of the two deadlocking.
pub fn lock_for_round() {
    const LOCK: &str = "LOCK TABLE webhooks.event_triggers IN ACCESS SHARE MODE;
         LOCK TABLE webhooks.event_log, webhooks.event_invocation_logs IN ROW EXCLUSIVE MODE";
    Spi::connect_mut(|c| {
        let lock = plans::plan(c, LOCK, &[]);
        spi(c.update(&*lock, None, &[]).map(|_| ()));
    });
}

/// Whether `webhooks.event_log` has 0.3.0's `ordering_key`.
pub fn has_ordering_key() -> bool {
    spi(Spi::get_one::<bool>(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_attribute
                        WHERE attrelid OPERATOR(pg_catalog.=) 'webhooks.event_log'::pg_catalog.regclass
                          AND attname OPERATOR(pg_catalog.=) 'ordering_key' AND NOT attisdropped)",
    ))
    .unwrap_or(false)
}

/// Locks left by a worker that died: at start, every lock is stale.
pub fn release_stale_locks() -> i64 {
    spi(Spi::get_one::<i64>(
        "WITH r AS (UPDATE webhooks.event_log SET locked = NULL WHERE locked IS NOT NULL RETURNING 1)
         SELECT count(*) FROM r",
    ))
    .unwrap_or(0)
}

/// The end of both claims: lock the events chosen in `due` and return the
/// columns [`claimed_row`] reads, in its order.
macro_rules! claim_tail {
    () => {
        "UPDATE webhooks.event_log e SET locked = pg_catalog.now()
         FROM due WHERE e.id = due.id
         RETURNING e.id, e.trigger_name, e.schema_name, e.table_name, e.payload::text, e.tries,
                   pg_catalog.to_json(e.created_at) #>> '{}', e.next_retry_at"
    };
}

/// The claim (see [`claim`]).
const CLAIM: &str = concat!(
    "WITH lim AS (SELECT l.* FROM unnest($1::text[], $2::int4[], $3::timestamptz[], $4::uuid[])
                                   AS l(name, n, after_due, after_id)
                  -- as of this statement's snapshot, not the round's
                  -- earlier look at the definitions: a trigger paused by
                  -- the transaction that wrote the event claims nothing
                  JOIN webhooks.event_triggers t ON t.name = l.name AND NOT t.paused),
                 due AS (
                     SELECT d.id FROM lim CROSS JOIN LATERAL (
                         SELECT e.id FROM webhooks.event_log e
                         WHERE e.trigger_name = lim.name
                           AND ",
    pending!(),
    " AND e.locked IS NULL
                           AND e.next_retry_at <= pg_catalog.now()
                           AND (e.next_retry_at, e.id) > (lim.after_due, lim.after_id)
                         ORDER BY e.next_retry_at, e.id
                         LIMIT lim.n
                         FOR UPDATE SKIP LOCKED) d)
 ",
    claim_tail!()
);

/// The claim of ordered triggers (see [`claim_ordered`]).
const CLAIM_ORDERED: &str = concat!(
    "WITH lim AS (SELECT l.* FROM unnest($1::text[], $2::int4[], $3::timestamptz[], $4::uuid[])
                                   AS l(name, n, after_due, after_id)
                  JOIN webhooks.event_triggers t ON t.name = l.name AND NOT t.paused),
                 due AS (
                     SELECT d.id FROM lim CROSS JOIN LATERAL (
                         SELECT e.id FROM webhooks.event_log e
                         WHERE e.trigger_name = lim.name
                           AND ",
    pending!(),
    " AND e.locked IS NULL
                           AND e.next_retry_at <= pg_catalog.now()
                           AND (e.ordering_key IS NULL OR NOT EXISTS (
                               SELECT FROM webhooks.event_log p
                               WHERE p.trigger_name = e.trigger_name AND p.ordering_key = e.ordering_key
                                 AND p.ordering_key IS NOT NULL
                                 AND NOT p.delivered AND NOT p.error AND NOT p.archived
                                 AND p.id < e.id))
                           AND (e.next_retry_at, e.id) > (lim.after_due, lim.after_id)
                         ORDER BY e.next_retry_at, e.id
                         LIMIT lim.n
                         FOR UPDATE SKIP LOCKED) d)
 ",
    claim_tail!()
);

/// Claims due events of ordered triggers: up to `limits[i]` of trigger
/// `names[i]`, each the first pending event of its `ordering_key` (an
/// earlier one in flight, waiting for a retry or not yet committed to
/// delivered holds it back), and events without a key (MANUAL ones), after
/// `cursors[i]` when given (as [`claim`]'s).
pub fn claim_ordered(names: Vec<String>, limits: Vec<i32>, cursors: Vec<Option<Cursor>>) -> Vec<Claimed> {
    if names.is_empty() {
        return Vec::new();
    }
    let (after_due, after_id) = cursor_args(cursors);
    Spi::connect_mut(|c| {
        let claim = plans::plan(c, CLAIM_ORDERED, &CLAIM_ARGS);
        let rows =
            spi(c.update(&*claim, None, &[names.into(), limits.into(), after_due.into(), after_id.into()]).map(Some))
                .expect("update returns a table");
        let mut out: Vec<Claimed> = rows.into_iter().map(|r| claimed_row(&r)).collect();
        out.sort_by(|a, b| a.id.as_bytes().cmp(b.id.as_bytes()));
        out
    })
}

/// A row of [`claim_tail`]'s RETURNING list.
fn claimed_row(r: &pgrx::spi::SpiHeapTupleData) -> Claimed {
    Claimed {
        id: spi(r.get::<pgrx::Uuid>(1)).expect("id is the primary key"),
        trigger: spi(r.get::<String>(2)).unwrap_or_default(),
        schema: spi(r.get::<String>(3)).unwrap_or_default(),
        table: spi(r.get::<String>(4)).unwrap_or_default(),
        event: spi(r.get::<String>(5)).unwrap_or_default(),
        tries: spi(r.get::<i32>(6)).unwrap_or_default(),
        created_at: spi(r.get::<String>(7)).unwrap_or_default(),
        due: spi(r.get::<pgrx::datum::TimestampWithTimeZone>(8)).expect("next_retry_at is NOT NULL"),
    }
}

/// Claims due events: up to `limits[i]` of trigger `names[i]`, oldest due
/// first, after `cursors[i]` when given, skipping rows another transaction
/// holds. The cursor lets a long backlog be drained without rescanning the
/// index entries of events delivered since the last vacuum.
pub fn claim(names: Vec<String>, limits: Vec<i32>, cursors: Vec<Option<Cursor>>) -> Vec<Claimed> {
    if names.is_empty() {
        return Vec::new();
    }
    let (after_due, after_id) = cursor_args(cursors);
    Spi::connect_mut(|c| {
        let claim = plans::plan(c, CLAIM, &CLAIM_ARGS);
        let rows =
            spi(c.update(&*claim, None, &[names.into(), limits.into(), after_due.into(), after_id.into()]).map(Some))
                .expect("update returns a table");
        let mut out: Vec<Claimed> = rows.into_iter().map(|r| claimed_row(&r)).collect();
        // Best-effort order: the oldest due first, then by id.
        out.sort_by(|a, b| a.due.cmp(&b.due).then_with(|| a.id.as_bytes().cmp(b.id.as_bytes())));
        out
    })
}

/// The argument types of both claims: names, limits, cursors' due times and
/// ids.
const CLAIM_ARGS: [pg_sys::Oid; 4] =
    [pg_sys::TEXTARRAYOID, pg_sys::INT4ARRAYOID, pg_sys::TIMESTAMPTZARRAYOID, pg_sys::UUIDARRAYOID];

/// The cursors as the claims' two array arguments; a lane without one
/// starts before every event.
fn cursor_args(cursors: Vec<Option<Cursor>>) -> (Vec<Option<pgrx::datum::TimestampWithTimeZone>>, Vec<pgrx::Uuid>) {
    let start = Some(pgrx::datum::TimestampWithTimeZone::negative_infinity());
    cursors
        .into_iter()
        .map(|c| match c {
            Some((due, id)) => (Some(due), id),
            None => (start, pgrx::Uuid::from_bytes([0; 16])),
        })
        .unzip()
}

/// When the next pending, unlocked event of these triggers is due, in
/// seconds from now (negative when already due); None when there is none.
/// With `future_only`, only events due later than now count: an ordered
/// trigger's due events wait for the one ahead of them, whose outcome (not
/// the clock) lets them go.
pub fn seconds_until_next_due(names: Vec<String>, future_only: bool) -> Option<f64> {
    if names.is_empty() {
        return None;
    }
    const NEXT_DUE: &str = concat!(
        "SELECT pg_catalog.date_part('epoch', pg_catalog.min(n.next_retry_at) - pg_catalog.clock_timestamp())::float8
         FROM pg_catalog.unnest($1::text[]) AS t(name) CROSS JOIN LATERAL (
             SELECT e.next_retry_at FROM webhooks.event_log e
             WHERE e.trigger_name = t.name AND ",
        pending!(),
        " AND e.locked IS NULL
               AND (NOT $2 OR e.next_retry_at > pg_catalog.clock_timestamp())
             ORDER BY e.next_retry_at, e.id LIMIT 1) n"
    );
    Spi::connect_mut(|c| {
        let next_due = plans::plan(c, NEXT_DUE, &[pg_sys::TEXTARRAYOID, pg_sys::BOOLOID]);
        let rows = spi(c.update(&*next_due, Some(1), &[names.into(), future_only.into()]).map(Some))
            .expect("select returns a table");
        rows.first().get_one::<f64>().ok().flatten()
    })
}

/// The record (see [`record`]).
const RECORD: &str = "WITH r AS (
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::int4[], $5::pg_catalog.json[], $6::pg_catalog.json[],
                                             $7::float8[], $8::float8[], $9::text[], $10::float8[])
                 AS r(event_id, log_id, trigger_name, status, request, response, started, duration_ms, verdict, delay)),
         logs AS (
             INSERT INTO webhooks.event_invocation_logs (id, event_id, trigger_name, status, request, response, created_at, duration_ms)
             SELECT log_id, event_id, trigger_name, status, request, response,
                    pg_catalog.to_timestamp(started), duration_ms
             FROM r)
         UPDATE webhooks.event_log e
         SET tries = e.tries + CASE WHEN r.verdict OPERATOR(pg_catalog.=) ANY ('{g,h}'::text[]) THEN 0 ELSE 1 END,
             locked = NULL,
             delivered = (r.verdict = 'd'),
             error = (r.verdict = 'f'),
             next_retry_at = CASE WHEN r.verdict = 'r'
                                  THEN pg_catalog.clock_timestamp() + pg_catalog.make_interval(secs => r.delay)
                                  ELSE e.next_retry_at END
         FROM r WHERE e.id = r.event_id";

/// Tells listeners of `webhooks_event_failed` (at commit) about each
/// event that used its last attempt: `{"trigger": ..., "event_id": ...}`.
const NOTIFY_FAILED: &str = "SELECT pg_catalog.pg_notify('webhooks_event_failed',
             pg_catalog.json_build_object('trigger', f.trigger_name, 'event_id', f.event_id)::text)
         FROM unnest($1::text[], $2::uuid[]) AS f(trigger_name, event_id)";

/// Writes the attempts' invocation logs and the events' new state, and
/// notifies listeners of the events that failed for good.
pub fn record(results: Vec<Recorded>) {
    if results.is_empty() {
        return;
    }
    let (failed_triggers, failed_ids): (Vec<String>, Vec<pgrx::Uuid>) =
        results.iter().filter(|r| r.verdict == Verdict::Failed).map(|r| (r.trigger.clone(), r.event_id)).unzip();
    let mut event_ids = Vec::with_capacity(results.len());
    let mut log_ids = Vec::with_capacity(results.len());
    let mut triggers = Vec::with_capacity(results.len());
    let mut statuses = Vec::with_capacity(results.len());
    let mut requests = Vec::with_capacity(results.len());
    let mut responses = Vec::with_capacity(results.len());
    let mut started = Vec::with_capacity(results.len());
    let mut durations = Vec::with_capacity(results.len());
    let mut verdicts = Vec::with_capacity(results.len());
    let mut delays = Vec::with_capacity(results.len());
    for r in results {
        event_ids.push(r.event_id);
        log_ids.push(r.log_id);
        triggers.push(r.trigger);
        statuses.push(r.status);
        // Sent as json, not text: the worker built both as JSON (serde's,
        // or the payload PostgreSQL gave it), and json_in would parse
        // every byte again on the worker's busiest path.
        requests.push(pgrx::datum::JsonString(r.request));
        responses.push(pgrx::datum::JsonString(r.response));
        started.push(r.started_epoch);
        durations.push(r.duration_ms);
        let (code, delay) = match r.verdict {
            Verdict::Delivered => ("d", 0.0),
            Verdict::Retry(d) => ("r", d.as_secs_f64()),
            Verdict::Failed => ("f", 0.0),
            Verdict::Gone => ("g", 0.0),
            Verdict::Held => ("h", 0.0),
        };
        verdicts.push(code.to_string());
        delays.push(delay);
    }
    Spi::connect_mut(|c| {
        let record = plans::plan(
            c,
            RECORD,
            &[
                pg_sys::UUIDARRAYOID,
                pg_sys::UUIDARRAYOID,
                pg_sys::TEXTARRAYOID,
                pg_sys::INT4ARRAYOID,
                pg_sys::JSONARRAYOID,
                pg_sys::JSONARRAYOID,
                pg_sys::FLOAT8ARRAYOID,
                pg_sys::FLOAT8ARRAYOID,
                pg_sys::TEXTARRAYOID,
                pg_sys::FLOAT8ARRAYOID,
            ],
        );
        spi(c
            .update(
                &*record,
                None,
                &[
                    event_ids.into(),
                    log_ids.into(),
                    triggers.into(),
                    statuses.into(),
                    requests.into(),
                    responses.into(),
                    started.into(),
                    durations.into(),
                    verdicts.into(),
                    delays.into(),
                ],
            )
            .map(|_| ()));
    });
    if !failed_ids.is_empty() {
        spi(Spi::run_with_args(NOTIFY_FAILED, &[failed_triggers.into(), failed_ids.into()]));
    }
}

/// Releases events whose attempt will not be recorded (the worker is
/// stopping): they are delivered again later.
pub fn unlock(ids: Vec<pgrx::Uuid>) {
    if ids.is_empty() {
        return;
    }
    spi(Spi::run_with_args("UPDATE webhooks.event_log SET locked = NULL WHERE id = ANY($1)", &[ids.into()]));
}

/// Applies `webhooks.retention`: deletes finished events older than
/// `retention` (an interval) through `webhooks.cleanup_event_logs`. A value
/// that is not an interval, or any other error, comes back as `Err` with
/// PostgreSQL's message and the worker goes on.
pub fn cleanup(retention: &str) -> Result<i64, String> {
    in_subtransaction(|| {
        Spi::get_one_with_args::<i64>(
            "SELECT webhooks.cleanup_event_logs(NULL, $1::pg_catalog.interval)",
            &[retention.into()],
        )
        .ok()
        .flatten()
        .unwrap_or(0)
    })
}

/// One cleanup of trigger `name` as its `cleanup_config` (or Hasura's
/// `cleanup_event_trigger_logs`) asks: events that ended (delivered or
/// dead) and were created more than `hours` ago, `batch` at a time, each
/// batch within `timeout_sec` (a batch that times out is rolled back and
/// ends the cleanup: what the batches before it deleted stays deleted);
/// with `with_logs` their invocation logs too. The number deleted, or the
/// error that stopped it with how many were deleted before.
pub fn cleanup_trigger(name: &str, hours: u32, batch: u32, timeout_sec: u32, with_logs: bool) -> Result<i64, String> {
    let sql = "WITH doomed AS (
            SELECT e.id FROM webhooks.event_log e
            WHERE e.trigger_name OPERATOR(pg_catalog.=) $1 AND (e.delivered OR e.error) AND e.locked IS NULL
              AND e.created_at OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) pg_catalog.make_interval(hours => $2))
            LIMIT $3
            FOR UPDATE SKIP LOCKED),
        logs AS (
            DELETE FROM webhooks.event_invocation_logs l USING doomed
            WHERE $4 AND l.event_id OPERATOR(pg_catalog.=) doomed.id)
        DELETE FROM webhooks.event_log e USING doomed WHERE e.id OPERATOR(pg_catalog.=) doomed.id";
    let mut removed = 0i64;
    loop {
        let n = in_subtransaction(|| {
            // The batch's own timeout; the caller's comes back after it (an
            // error rolls the setting back with the subtransaction).
            let set = "SELECT pg_catalog.set_config('statement_timeout', $1, true)";
            let before = spi(Spi::get_one::<String>("SELECT pg_catalog.current_setting('statement_timeout')"));
            spi(Spi::run_with_args(set, &[format!("{timeout_sec}s").into()]));
            let n = Spi::connect_mut(|c| {
                let args = [name.into(), (hours as i32).into(), (batch as i64).into(), with_logs.into()];
                spi(c.update(sql, None, &args).map(|t| t.len() as i64))
            });
            spi(Spi::run_with_args(set, &[before.unwrap_or_else(|| "0".into()).into()]));
            n
        })
        .map_err(|e| format!("{e} (after {removed} events were removed)"))?;
        removed += n;
        if n < batch as i64 {
            return Ok(removed);
        }
    }
}

/// Runs `f` in a subtransaction: an ERROR in it is rolled back and comes
/// back as `Err` with PostgreSQL's message; the caller's transaction goes
/// on. Settings `f` changes with `set_config(..., true)` end with it.
fn in_subtransaction<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    // SAFETY: the subtransaction is begun and released or rolled back here, restoring the memory
    // context and resource owner as PostgreSQL's PL handlers do.
    unsafe {
        let context = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        PgTryBuilder::new(AssertUnwindSafe(move || {
            let v = f();
            pg_sys::ReleaseCurrentSubTransaction();
            pg_sys::MemoryContextSwitchTo(context);
            pg_sys::CurrentResourceOwner = owner;
            Ok(v)
        }))
        .catch_others(move |e| {
            pg_sys::MemoryContextSwitchTo(context);
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
            pg_sys::MemoryContextSwitchTo(context);
            pg_sys::CurrentResourceOwner = owner;
            Err(match e {
                pgrx::pg_sys::panic::CaughtError::PostgresError(r)
                | pgrx::pg_sys::panic::CaughtError::ErrorReport(r) => r.message().to_string(),
                other => format!("{other:?}"),
            })
        })
        .execute()
    }
}
