//! Capture: the AFTER ROW trigger `webhooks.capture(name)` that writes one
//! event per changed row into `webhooks.event_log`, in the writing
//! transaction.
//!
//! This is the hot path of every write to a watched table, so the work is
//! split in two. Once per backend and trigger, [`compile`] reads the
//! definition and resolves its columns against the firing relation (a
//! partition may number them differently from its parent). Per row, the
//! trigger only compares the watched columns (for UPDATE), builds the
//! payload in one pass ([`payload`]) and appends the event
//! ([`event_log::append`]); no SQL statement runs (types without a direct
//! conversion go through `to_jsonb`, called as a function).
//!
//! Compiled entries are keyed by the trigger's OID and dropped when the
//! relation's relcache entry is invalidated: `create_event_trigger` with
//! `replace` rewrites the trigger (CREATE OR REPLACE TRIGGER), and DDL on the
//! table does the same, so every backend recompiles on its next row.
//!
//! The definition is read with the extension owner's rights, and the event
//! is written without any privilege check: the writing role needs no
//! privilege on schema webhooks, and its `search_path` changes nothing.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::rc::Rc;

use pgrx::prelude::*;
use pgrx::trigger_support::{
    trigger_fired_after, trigger_fired_by_delete, trigger_fired_by_insert, trigger_fired_by_truncate,
    trigger_fired_for_row,
};
use pgrx::PgTupleDesc;
use webhooks_core::definition::{Columns, Definition, OpSpec, Ordering};

use crate::payload::{self, Row, RowShape};
use crate::{catalog, definitions, event_log};

/// One compiled trigger, valid until its relation is invalidated.
struct Compiled {
    relid: pg_sys::Oid,
    /// [`generation`] when the definition was read: a newer one means some
    /// definition changed since, and this one is read again.
    generation: u64,
    insert: Option<RowShape>,
    update: Option<RowShape>,
    delete: Option<RowShape>,
    /// The columns whose change makes an UPDATE an event.
    watched: Vec<Watched>,
    /// The event's trigger, schema and table names as text datums; they
    /// and the shapes are allocated in `cxt`.
    names: [pg_sys::Datum; 3],
    /// How the event's `ordering_key` is made.
    order: OrderKey,
    cxt: pg_sys::MemoryContext,
}

/// The `ordering_key` of a trigger's events.
enum OrderKey {
    /// `"ordering": "none"`: NULL.
    None,
    /// `"trigger"`: one key for all, `''` (a text datum in `cxt`).
    Trigger(pg_sys::Datum),
    /// `"key"`: the row's key columns, with their output functions.
    Key(Vec<(i16, pg_sys::Oid)>),
}

impl OrderKey {
    /// The key of a row, as a text datum in the current memory context:
    /// the JSON array of the key columns' text forms.
    ///
    /// # Safety
    /// `tuple` must be a tuple of `tupdesc`.
    unsafe fn of(&self, tuple: pg_sys::HeapTuple, tupdesc: pg_sys::TupleDesc) -> Option<pg_sys::Datum> {
        match self {
            OrderKey::None => None,
            OrderKey::Trigger(empty) => Some(*empty),
            OrderKey::Key(cols) => {
                let mut parts = Vec::with_capacity(cols.len());
                for (attnum, output) in cols {
                    let n = std::num::NonZeroUsize::new(*attnum as usize)?;
                    // SAFETY: reads an attribute of a tuple of this
                    // descriptor; the output function takes its type and
                    // returns a palloc'd C string.
                    let part = unsafe {
                        match pgrx::heap_getattr_raw(tuple, n, tupdesc) {
                            Some(d) => serde_json::Value::String(
                                CStr::from_ptr(pg_sys::OidOutputFunctionCall(*output, d))
                                    .to_string_lossy()
                                    .into_owned(),
                            ),
                            None => serde_json::Value::Null,
                        }
                    };
                    parts.push(part);
                }
                let text = CString::new(serde_json::Value::Array(parts).to_string()).ok()?;
                // SAFETY: copies the string into a text in the current memory context.
                Some(pg_sys::Datum::from(unsafe { pg_sys::cstring_to_text(text.as_ptr()) }))
            }
        }
    }
}

impl Drop for Compiled {
    fn drop(&mut self) {
        // SAFETY: the context was created for this entry and is deleted once.
        unsafe { pg_sys::MemoryContextDelete(self.cxt) };
    }
}

/// A watched column and how to compare its old and new value.
struct Watched {
    attnum: i16,
    collation: pg_sys::Oid,
    typlen: i16,
    typbyval: bool,
    /// The type's default equality (from the type cache, which lives as long
    /// as the backend); null when the type has none, as json and point.
    eq: *mut pg_sys::FmgrInfo,
}

thread_local! {
    static COMPILED: RefCell<HashMap<pg_sys::Oid, Rc<Compiled>>> = RefCell::new(HashMap::new());
    /// Transactions ended in this backend: without shared memory (the
    /// library not preloaded), a compiled entry lasts one transaction.
    static LOCAL_GENERATION: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// Relations invalidated since the last row.
    static STALE: RefCell<Option<Vec<pg_sys::Oid>>> = const { RefCell::new(None) };
    /// Every relation was invalidated (or the list was busy).
    static STALE_ALL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Registers the relcache and transaction callbacks; called from
/// `_PG_init`.
pub fn init() {
    // SAFETY: registers callbacks for the life of the backend, in _PG_init.
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(Some(on_relcache_invalidation), pg_sys::Datum::from(0));
        pg_sys::RegisterXactCallback(Some(on_xact_end), std::ptr::null_mut());
    }
}

/// Which definitions a compiled entry was read under. Definitions live in a
/// table, whose changes no relcache invalidation announces (a schema or a
/// partitioned parent renamed, a definition replaced while a REPEATABLE
/// READ writer had its snapshot): every commit that changes
/// `webhooks.event_triggers` bumps a counter in shared memory, and entries
/// read under an older count are read again. Without shared memory, entries
/// last one transaction.
fn generation() -> u64 {
    match crate::shmem::shared() {
        Some(s) => s.definitions_generation.load(std::sync::atomic::Ordering::Acquire),
        None => LOCAL_GENERATION.with(|g| g.get()),
    }
}

/// Counts transaction ends, for [`generation`] without shared memory.
///
/// # Safety
/// Called by PostgreSQL only, on the backend's main thread.
#[pg_guard]
unsafe extern "C-unwind" fn on_xact_end(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    if matches!(
        event,
        pg_sys::XactEvent::XACT_EVENT_COMMIT
            | pg_sys::XactEvent::XACT_EVENT_ABORT
            | pg_sys::XactEvent::XACT_EVENT_PREPARE
    ) {
        LOCAL_GENERATION.with(|g| g.set(g.get().wrapping_add(1)));
    }
}

/// Only records what went stale: it may run in the middle of anything,
/// including a compile, so it touches nothing else.
///
/// # Safety
/// Called by PostgreSQL only, on the backend's main thread.
#[pg_guard]
unsafe extern "C-unwind" fn on_relcache_invalidation(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    if relid == pg_sys::Oid::INVALID {
        STALE_ALL.with(|s| s.set(true));
    } else {
        STALE.with(|s| {
            if let Ok(mut s) = s.try_borrow_mut() {
                s.get_or_insert_with(Vec::new).push(relid);
            } else {
                STALE_ALL.with(|a| a.set(true));
            }
        });
    }
}

/// Drops compiled entries of invalidated relations, with their memory.
fn sweep_stale() {
    let all = STALE_ALL.with(|a| a.replace(false));
    let rels = STALE.with(|s| s.borrow_mut().take());
    if !all && rels.is_none() {
        return;
    }
    let dropped: Vec<Rc<Compiled>> = COMPILED.with(|c| {
        let mut c = c.borrow_mut();
        let keys: Vec<pg_sys::Oid> = c
            .iter()
            .filter(|(_, e)| all || rels.as_ref().is_some_and(|r| r.contains(&e.relid)))
            .map(|(k, _)| *k)
            .collect();
        keys.into_iter().filter_map(|k| c.remove(&k)).collect()
    });
    drop(dropped);
}

#[pg_schema]
mod webhooks {
    use pgrx::prelude::*;

    /// `webhooks.capture(name)`: the AFTER ROW trigger function.
    #[pg_trigger]
    fn capture<'a>(
        trigger: &'a PgTrigger<'a>,
    ) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, std::convert::Infallible> {
        // SAFETY: PostgreSQL's trigger data for this call.
        unsafe { super::capture_row(trigger.trigger_data()) };
        Ok(None)
    }
}

/// Captures one row change for the firing trigger.
///
/// # Safety
/// `td` must be the trigger data PostgreSQL passed to this trigger call.
unsafe fn capture_row(td: &pg_sys::TriggerData) {
    // SAFETY: `td` and the relation, tuples and trigger it points to are valid for the call, as
    // PostgreSQL passes them.
    unsafe {
        let event = td.tg_event;
        if !trigger_fired_for_row(event) || !trigger_fired_after(event) || trigger_fired_by_truncate(event) {
            error!("webhooks.capture() must be fired AFTER INSERT, UPDATE or DELETE FOR EACH ROW");
        }
        let trigger = &*td.tg_trigger;
        let rel = td.tg_relation;
        let tupdesc = (*rel).rd_att;

        sweep_stale();
        let current = generation();
        let have = COMPILED.with(|c| c.borrow().get(&trigger.tgoid).is_some_and(|e| e.generation == current));
        if !have {
            let compiled = compile(trigger, rel);
            COMPILED.with(|c| c.borrow_mut().insert(trigger.tgoid, Rc::new(compiled)));
        }

        // Not borrowed from the map while the event is built: to_jsonb may run
        // SQL (a type's cast to json), which may fire this trigger again.
        let e = COMPILED.with(|c| c.borrow()[&trigger.tgoid].clone());
        {
            let (op, shape, old, new) = if trigger_fired_by_insert(event) {
                (c"INSERT", &e.insert, std::ptr::null_mut(), td.tg_trigtuple)
            } else if trigger_fired_by_delete(event) {
                (c"DELETE", &e.delete, td.tg_trigtuple, std::ptr::null_mut())
            } else {
                if e.update.is_none() || !e.watched.iter().any(|w| w.changed(td.tg_trigtuple, td.tg_newtuple, tupdesc))
                {
                    return;
                }
                (c"UPDATE", &e.update, td.tg_trigtuple, td.tg_newtuple)
            };
            let Some(shape) = shape else { return };
            let deform = |tuple: pg_sys::HeapTuple| (!tuple.is_null()).then(|| Row::deform(tuple, tupdesc));
            let payload = payload::build(op, deform(old).as_ref(), deform(new).as_ref(), shape);
            // The row's key: the new row's, or the old one's for a DELETE.
            let ordering_key = e.order.of(if new.is_null() { old } else { new }, tupdesc);
            event_log::append(&event_log::Event {
                id: event_log::new_event_id(),
                trigger_name: e.names[0],
                schema_name: e.names[1],
                table_name: e.names[2],
                payload,
                ordering_key,
            });
            crate::wake::note_event_written();
        }
    }
}

impl Watched {
    /// Whether the column's value differs between the old and the new row.
    ///
    /// # Safety
    /// `old` and `new` must be tuples of `tupdesc`.
    unsafe fn changed(&self, old: pg_sys::HeapTuple, new: pg_sys::HeapTuple, tupdesc: pg_sys::TupleDesc) -> bool {
        // SAFETY: heap_getattr reads attributes of tuples of this descriptor; the equality function
        // takes two values of the column's type.
        unsafe {
            let mut old_null = false;
            let mut new_null = false;
            let a = pgrx::pg_sys::heap_getattr(old, self.attnum as _, tupdesc, &mut old_null);
            let b = pgrx::pg_sys::heap_getattr(new, self.attnum as _, tupdesc, &mut new_null);
            match (old_null, new_null) {
                (true, true) => false,
                (true, false) | (false, true) => true,
                (false, false) => {
                    if !self.eq.is_null() {
                        let eq = pg_sys::FunctionCall2Coll(self.eq, self.collation, a, b);
                        eq.value() == 0
                    } else {
                        !same_image(a, b, self.typlen, self.typbyval)
                    }
                }
            }
        }
    }
}

/// Binary equality for types without an equality operator (json, point...):
/// the same bytes after detoasting.
///
/// # Safety
/// `a` and `b` must be non-null values of one type with this length and passing convention.
unsafe fn same_image(a: pg_sys::Datum, b: pg_sys::Datum, typlen: i16, typbyval: bool) -> bool {
    // SAFETY: values of the given length and convention are read within their bounds (varlenas
    // after detoasting).
    unsafe {
        if typbyval {
            return a == b;
        }
        match typlen {
            -1 => {
                let va = pg_sys::pg_detoast_datum(a.cast_mut_ptr());
                let vb = pg_sys::pg_detoast_datum(b.cast_mut_ptr());
                let la = pgrx::varsize_any(va);
                let lb = pgrx::varsize_any(vb);
                la == lb
                    && std::slice::from_raw_parts(va as *const u8, la)
                        == std::slice::from_raw_parts(vb as *const u8, lb)
            }
            -2 => CStr::from_ptr(a.cast_mut_ptr()) == CStr::from_ptr(b.cast_mut_ptr()),
            n => {
                let n = n as usize;
                std::slice::from_raw_parts(a.cast_mut_ptr::<u8>(), n)
                    == std::slice::from_raw_parts(b.cast_mut_ptr::<u8>(), n)
            }
        }
    }
}

/// Reads the definition and resolves it against this relation.
///
/// # Safety
/// `trigger` and `rel` must be the firing trigger and relation.
unsafe fn compile(trigger: &pg_sys::Trigger, rel: pg_sys::Relation) -> Compiled {
    // SAFETY: the trigger's arguments and the relation's descriptor are valid for the call; the
    // memory context created here is owned by the result.
    unsafe {
        if trigger.tgnargs != 1 {
            error!("webhooks.capture() takes the event trigger's name as its one argument");
        }
        let name = CStr::from_ptr(*trigger.tgargs).to_string_lossy().into_owned();
        let owner = catalog::extension_owner();
        let relid = (*rel).rd_id;
        // The generation first, then the definition with a fresh snapshot:
        // a change that commits in between bumps the generation after this
        // read, and the entry is read again on the next row.
        let generation = generation();
        let stored = catalog::as_owner(owner, || definitions::definition_latest(&name));
        let Some(stored) = stored else {
            // The definition is gone but its table trigger is not (someone
            // edited webhooks.event_triggers by hand). Capture nothing.
            warning!("pg_webhooks: event trigger \"{name}\" has no definition; its table trigger captures nothing");
            return Compiled::empty(relid, generation);
        };
        let def = Definition::from_stored(&stored)
            .unwrap_or_else(|e| error!("pg_webhooks: stored definition of \"{name}\" is invalid: {}", e.message));

        let tupdesc = PgTupleDesc::from_pg_unchecked((*rel).rd_att);
        let attnum_of = |col: &str| -> i16 {
            for i in 0..tupdesc.len() {
                let att = tupdesc.get(i).unwrap();
                if !att.attisdropped && att.name() == col {
                    return att.attnum;
                }
            }
            error!(
                "pg_webhooks: column \"{col}\" named by event trigger \"{name}\" does not exist in {}",
                relation_name(rel)
            );
        };
        // Resolve every listed column now, so a broken definition fails loudly.
        for col in def.listed_columns() {
            attnum_of(&col);
        }

        let mut watched = Vec::new();
        if let Some(update) = &def.update {
            let attnums: Vec<i16> = match &update.columns {
                Columns::All => (0..tupdesc.len())
                    .map(|i| tupdesc.get(i).unwrap())
                    .filter(|a| !a.attisdropped)
                    .map(|a| a.attnum)
                    .collect(),
                Columns::List(cols) => cols.iter().map(|c| attnum_of(c)).collect(),
            };
            for attnum in attnums {
                let att = tupdesc.get(attnum as usize - 1).unwrap();
                let tc = pg_sys::lookup_type_cache(att.atttypid, pg_sys::TYPECACHE_EQ_OPR_FINFO as i32);
                let eq = if (*tc).eq_opr_finfo.fn_oid != pg_sys::Oid::INVALID {
                    &mut (*tc).eq_opr_finfo as *mut pg_sys::FmgrInfo
                } else {
                    std::ptr::null_mut()
                };
                watched.push(Watched {
                    attnum,
                    collation: att.attcollation,
                    typlen: att.attlen,
                    typbyval: att.attbyval,
                    eq,
                });
            }
        }

        let mut compiled = Compiled::empty(relid, generation);
        let cxt = compiled.cxt;
        let shape = |spec: &Option<OpSpec>| -> Option<RowShape> {
            Some(match &spec.as_ref()?.payload {
                Columns::All => RowShape::new((*rel).rd_att, None, cxt),
                Columns::List(cols) => RowShape::new((*rel).rd_att, Some(cols), cxt),
            })
        };
        compiled.insert = shape(&def.insert);
        compiled.update = shape(&def.update);
        compiled.delete = shape(&def.delete);
        compiled.watched = watched;
        let saved = pg_sys::MemoryContextSwitchTo(compiled.cxt);
        for (i, text) in [&def.name, &def.table.schema, &def.table.name].into_iter().enumerate() {
            let text = CString::new(text.as_str()).expect("names have no NUL");
            compiled.names[i] = pg_sys::Datum::from(pg_sys::cstring_to_text(text.as_ptr()));
        }
        let whole_trigger = || OrderKey::Trigger(pg_sys::Datum::from(pg_sys::cstring_to_text(c"".as_ptr())));
        compiled.order = match def.ordering {
            Ordering::None => OrderKey::None,
            Ordering::Trigger => whole_trigger(),
            Ordering::Key => {
                let cols: Vec<(i16, pg_sys::Oid)> = catalog::key_attnums(rel)
                    .into_iter()
                    .map(|attnum| {
                        let att = tupdesc.get(attnum as usize - 1).unwrap();
                        let (mut output, mut varlena) = (pg_sys::Oid::INVALID, false);
                        pg_sys::getTypeOutputInfo(att.atttypid, &mut output, &mut varlena);
                        (attnum, output)
                    })
                    .collect();
                if cols.is_empty() {
                    // The key was dropped since the trigger was made: order
                    // the whole trigger rather than not at all.
                    warning!(
                        "pg_webhooks: {} has no primary key or replica identity index any more; event trigger \"{name}\" delivers its events one at a time",
                        relation_name(rel)
                    );
                    whole_trigger()
                } else {
                    OrderKey::Key(cols)
                }
            }
        };
        pg_sys::MemoryContextSwitchTo(saved);
        compiled
    }
}

impl Compiled {
    /// A trigger that captures nothing, with its own memory context.
    ///
    /// # Safety
    /// Must be called in a backend, on its main thread.
    unsafe fn empty(relid: pg_sys::Oid, generation: u64) -> Compiled {
        // SAFETY: creates a child of CacheMemoryContext, freed by Drop.
        unsafe {
            let cxt = pg_sys::AllocSetContextCreateInternal(
                pg_sys::CacheMemoryContext,
                c"pg_webhooks capture".as_ptr(),
                pg_sys::ALLOCSET_SMALL_MINSIZE as usize,
                pg_sys::ALLOCSET_SMALL_INITSIZE as usize,
                pg_sys::ALLOCSET_SMALL_MAXSIZE as usize,
            );
            Compiled {
                relid,
                generation,
                insert: None,
                update: None,
                delete: None,
                watched: Vec::new(),
                names: [pg_sys::Datum::from(0); 3],
                order: OrderKey::None,
                cxt,
            }
        }
    }
}

/// `schema.table` of a relation, quoted where needed, for messages.
///
/// # Safety
/// `rel` must be an open relation.
unsafe fn relation_name(rel: pg_sys::Relation) -> String {
    // SAFETY: reads the open relation's pg_class row copy.
    unsafe {
        let nsp = pg_sys::get_namespace_name((*(*rel).rd_rel).relnamespace);
        let name = CStr::from_ptr((*(*rel).rd_rel).relname.data.as_ptr());
        pgrx::spi::quote_qualified_identifier(CStr::from_ptr(nsp).to_string_lossy(), name.to_string_lossy())
    }
}
