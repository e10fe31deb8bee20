//! Appending events to `webhooks.event_log`: the write half of the event
//! store, used by capture on every watched row.
//!
//! Events are written straight into the heap and its indexes, the way
//! COPY does, not through SQL: a prepared INSERT run through SPI spent most
//! of its time starting up the executor for one row. The table and its
//! indexes are opened at a transaction's first event and kept open while
//! the statement runs, so a statement that changes many rows opens them
//! once. They are closed at the end of every statement (the executor and
//! utility hooks below), so that DDL later in the same transaction (ALTER
//! EXTENSION UPDATE, DROP EXTENSION) never finds them in use, and at commit
//! at the latest.
//!
//! The insert is what an INSERT would do for this table: heap insert (with
//! TOAST for large payloads), then every index through the executor's own
//! `ExecInsertIndexTuples`, which evaluates the fetch index's predicate and
//! checks the primary key. Nothing of this runs with the caller's rights:
//! no privilege is checked, no `search_path` is used.

use std::cell::RefCell;

use pgrx::prelude::*;

/// The columns of `webhooks.event_log` capture fills. Others (there are
/// none in this version) are left NULL.
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
            _ => (Col::Unknown, pg_sys::InvalidOid),
        }
    }
}

/// One event as capture hands it over. The text values are datums of type
/// text, the payload a jsonb datum.
pub struct Event {
    pub id: pgrx::Uuid,
    pub trigger_name: pg_sys::Datum,
    pub schema_name: pg_sys::Datum,
    pub table_name: pg_sys::Datum,
    pub payload: pg_sys::Datum,
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
    unsafe {
        PREV_EXECUTOR_END = pg_sys::ExecutorEnd_hook;
        pg_sys::ExecutorEnd_hook = Some(executor_end);
        PREV_PROCESS_UTILITY = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(process_utility);
        pg_sys::RegisterXactCallback(Some(on_xact_event), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(on_subxact_event), std::ptr::null_mut());
    }
}

/// Writes one event in the current (sub)transaction.
pub fn write(event: &Event) {
    let open = OPEN.with(|o| o.borrow().as_ref().map(Open::handle));
    let open = open.unwrap_or_else(|| {
        let open = unsafe { Open::new() };
        let handle = open.handle();
        OPEN.with(|o| *o.borrow_mut() = Some(open));
        handle
    });
    // No borrow is held while PostgreSQL inserts (an index expression may
    // run a query, whose end calls close()).
    INSERTING.with(|i| i.set(true));
    unsafe { open.insert(event) };
    INSERTING.with(|i| i.set(false));
}

/// Closes the table if it is open. Called when a statement ends.
fn close() {
    if INSERTING.with(|i| i.get()) {
        return;
    }
    if let Some(open) = OPEN.with(|o| o.borrow_mut().take()) {
        unsafe { open.close() };
    }
}

impl Open {
    unsafe fn new() -> Open {
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
        let attrs = (*tupdesc).attrs.as_slice(natts);
        let mut cols: Vec<Col> = Vec::with_capacity(natts);
        for att in attrs {
            if att.attisdropped {
                cols.push(Col::Unknown);
                continue;
            }
            let name = std::ffi::CStr::from_ptr(att.attname.data.as_ptr()).to_string_lossy();
            let (col, typ) = Col::of(&name);
            if col != Col::Unknown && att.atttypid != typ {
                error!("pg_webhooks: column webhooks.event_log.{name} has an unexpected type; reinstall the extension");
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

    unsafe fn insert(&self, event: &Event) {
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
                Col::Locked | Col::Unknown => {
                    nulls[i] = true;
                    pg_sys::Datum::from(0)
                }
            };
        }
        let tuple = pg_sys::heap_form_tuple((*self.rel).rd_att, values.as_mut_ptr(), nulls.as_mut_ptr());
        pg_sys::simple_heap_insert(self.rel, tuple);
        pg_sys::ExecStoreHeapTuple(tuple, self.slot, false);
        pg_sys::ExecInsertIndexTuples(self.rri, self.slot, self.estate, false, false, std::ptr::null_mut(), std::ptr::null_mut());
        pg_sys::ExecClearTuple(self.slot);
        let econtext = (*self.estate).es_per_tuple_exprcontext;
        if !econtext.is_null() {
            pg_sys::MemoryContextReset((*econtext).ecxt_per_tuple_memory);
        }
        pg_sys::heap_freetuple(tuple);
    }

    unsafe fn close(self) {
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

unsafe extern "C-unwind" fn executor_end(query: *mut pg_sys::QueryDesc) {
    match PREV_EXECUTOR_END {
        Some(prev) => prev(query),
        None => pg_standard_executor_end(query),
    }
    statement_done();
}

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
    match PREV_PROCESS_UTILITY {
        Some(prev) => prev(pstmt, query_string, read_only_tree, context, params, query_env, dest, qc),
        None => pg_standard_process_utility(pstmt, query_string, read_only_tree, context, params, query_env, dest, qc),
    }
    statement_done();
}

#[pg_guard]
extern "C-unwind" fn statement_done() {
    close();
}

/// Closes the table before commit or PREPARE (a statement that ran no
/// executor end, such as a portal closed at commit); forgets it on abort,
/// where the transaction's resource owner releases it.
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
