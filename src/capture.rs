//! Capture: the AFTER ROW trigger `webhooks.capture(name)` that writes one
//! event per changed row into `webhooks.event_log`, in the writing
//! transaction.
//!
//! This is the hot path of every write to a watched table, so the work is
//! split in two. Once per backend and trigger, [`compile`] reads the
//! definition, resolves its columns against the firing relation (a partition
//! may number them differently from its parent) and prepares one INSERT plan
//! per operation. Per row, the trigger only compares the watched columns (for
//! UPDATE) and executes the prepared plan, with the row passed as a
//! composite value so PostgreSQL's own `to_jsonb` renders it.
//!
//! Compiled entries are keyed by the trigger's OID and dropped when the
//! relation's relcache entry is invalidated: `create_event_trigger` with
//! `replace` rewrites the trigger (CREATE OR REPLACE TRIGGER), and DDL on the
//! table does the same, so every backend recompiles on its next row.
//!
//! Capture runs with the extension owner's rights: the writing role needs no
//! privilege on schema webhooks. Every name in the generated SQL is
//! schema-qualified, so the caller's `search_path` cannot change it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{CStr, CString};

use pgrx::prelude::*;
use pgrx::trigger_support::{
    trigger_fired_after, trigger_fired_by_delete, trigger_fired_by_insert, trigger_fired_by_truncate, trigger_fired_for_row,
};
use pgrx::PgTupleDesc;
use pgrx::spi::{quote_identifier, quote_literal};
use webhooks_core::definition::{Columns, Definition, OpSpec};

use crate::catalog;
use crate::errors::spi;

/// One compiled trigger, valid until its relation is invalidated.
struct Compiled {
    relid: pg_sys::Oid,
    owner: pg_sys::Oid,
    insert: Option<pg_sys::SPIPlanPtr>,
    update: Option<pg_sys::SPIPlanPtr>,
    delete: Option<pg_sys::SPIPlanPtr>,
    /// The columns whose change makes an UPDATE an event.
    watched: Vec<Watched>,
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
    static COMPILED: RefCell<HashMap<pg_sys::Oid, Compiled>> = RefCell::new(HashMap::new());
    /// Relations invalidated since the last row.
    static STALE: RefCell<Option<Vec<pg_sys::Oid>>> = const { RefCell::new(None) };
    /// Every relation was invalidated (or the list was busy).
    static STALE_ALL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Registers the relcache callback; called from `_PG_init`.
pub fn init() {
    unsafe { pg_sys::CacheRegisterRelcacheCallback(Some(on_relcache_invalidation), pg_sys::Datum::from(0)) };
}

/// Only records what went stale: it may run in the middle of anything,
/// including a compile, so it touches nothing else.
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

/// Drops compiled entries of invalidated relations, freeing their plans.
fn sweep_stale() {
    let all = STALE_ALL.with(|a| a.replace(false));
    let rels = STALE.with(|s| s.borrow_mut().take());
    if !all && rels.is_none() {
        return;
    }
    let dropped: Vec<Compiled> = COMPILED.with(|c| {
        let mut c = c.borrow_mut();
        let keys: Vec<pg_sys::Oid> = c
            .iter()
            .filter(|(_, e)| all || rels.as_ref().is_some_and(|r| r.contains(&e.relid)))
            .map(|(k, _)| *k)
            .collect();
        keys.into_iter().filter_map(|k| c.remove(&k)).collect()
    });
    for e in dropped {
        for plan in [e.insert, e.update, e.delete].into_iter().flatten() {
            unsafe { pg_sys::SPI_freeplan(plan) };
        }
    }
}

#[pg_schema]
mod webhooks {
    use pgrx::prelude::*;

    /// `webhooks.capture(name)`: the AFTER ROW trigger function.
    #[pg_trigger]
    fn capture<'a>(
        trigger: &'a PgTrigger<'a>,
    ) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, std::convert::Infallible> {
        unsafe { super::capture_row(trigger.trigger_data()) };
        Ok(None)
    }
}

unsafe fn capture_row(td: &pg_sys::TriggerData) {
    let event = td.tg_event;
    if !trigger_fired_for_row(event) || !trigger_fired_after(event) || trigger_fired_by_truncate(event) {
        error!("webhooks.capture() must be fired AFTER INSERT, UPDATE or DELETE FOR EACH ROW");
    }
    let trigger = &*td.tg_trigger;
    let rel = td.tg_relation;
    let tupdesc = (*rel).rd_att;

    sweep_stale();
    let have = COMPILED.with(|c| c.borrow().contains_key(&trigger.tgoid));
    if !have {
        let compiled = compile(trigger, rel);
        COMPILED.with(|c| c.borrow_mut().insert(trigger.tgoid, compiled));
    }

    // Copy out what the row needs; the map is not borrowed while SQL runs.
    let (plan, owner, changed) = COMPILED.with(|c| {
        let c = c.borrow();
        let e = &c[&trigger.tgoid];
        if trigger_fired_by_insert(event) {
            (e.insert, e.owner, true)
        } else if trigger_fired_by_delete(event) {
            (e.delete, e.owner, true)
        } else {
            let changed = e.update.is_some() && e.watched.iter().any(|w| w.changed(td.tg_trigtuple, td.tg_newtuple, tupdesc));
            (e.update, e.owner, changed)
        }
    });
    let Some(plan) = plan else { return };
    if !changed {
        return;
    }

    let mut values = [pg_sys::Datum::from(0); 5];
    let mut nulls = [b' ' as std::ffi::c_char; 5];
    values[0] = new_event_id().into_datum().unwrap();
    for (i, name) in [(1, c"hasura.user"), (2, c"hasura.tracecontext")] {
        match setting(name) {
            Some(v) => values[i] = pg_sys::Datum::from(pg_sys::cstring_to_text(v.as_ptr())),
            None => nulls[i] = b'n' as _,
        }
    }
    let (old, new) = if trigger_fired_by_insert(event) {
        (std::ptr::null_mut(), td.tg_trigtuple)
    } else if trigger_fired_by_delete(event) {
        (td.tg_trigtuple, std::ptr::null_mut())
    } else {
        (td.tg_trigtuple, td.tg_newtuple)
    };
    for (i, tuple) in [(3, old), (4, new)] {
        if tuple.is_null() {
            nulls[i] = b'n' as _;
        } else {
            values[i] = pg_sys::heap_copy_tuple_as_datum(tuple, tupdesc);
        }
    }

    catalog::as_owner(owner, || {
        if pg_sys::SPI_connect() != pg_sys::SPI_OK_CONNECT as i32 {
            error!("pg_webhooks: SPI_connect failed");
        }
        let rc = pg_sys::SPI_execute_plan(plan, values.as_mut_ptr(), nulls.as_ptr(), false, 0);
        if rc != pg_sys::SPI_OK_INSERT as i32 {
            error!("pg_webhooks: writing the event failed (SPI code {rc})");
        }
        pg_sys::SPI_finish();
    });
    crate::wake::note_event_written();
}

/// A time-ordered (v7) uuid: new events append to the primary key index.
pub fn new_event_id() -> pgrx::Uuid {
    pgrx::Uuid::from_bytes(webhooks_core::ids::next_v7())
}

/// The value of a setting such as `hasura.user`, or None when unset or empty.
pub fn setting(name: &CStr) -> Option<&'static CStr> {
    unsafe {
        let v = pg_sys::GetConfigOption(name.as_ptr(), true, false);
        if v.is_null() || *v == 0 {
            return None;
        }
        Some(CStr::from_ptr(v))
    }
}

impl Watched {
    unsafe fn changed(&self, old: pg_sys::HeapTuple, new: pg_sys::HeapTuple, tupdesc: pg_sys::TupleDesc) -> bool {
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

/// Binary equality for types without an equality operator (json, point...):
/// the same bytes after detoasting.
unsafe fn same_image(a: pg_sys::Datum, b: pg_sys::Datum, typlen: i16, typbyval: bool) -> bool {
    if typbyval {
        return a == b;
    }
    match typlen {
        -1 => {
            let va = pg_sys::pg_detoast_datum(a.cast_mut_ptr());
            let vb = pg_sys::pg_detoast_datum(b.cast_mut_ptr());
            let la = pgrx::varsize_any(va);
            let lb = pgrx::varsize_any(vb);
            la == lb && std::slice::from_raw_parts(va as *const u8, la) == std::slice::from_raw_parts(vb as *const u8, lb)
        }
        -2 => CStr::from_ptr(a.cast_mut_ptr()) == CStr::from_ptr(b.cast_mut_ptr()),
        n => {
            let n = n as usize;
            std::slice::from_raw_parts(a.cast_mut_ptr::<u8>(), n) == std::slice::from_raw_parts(b.cast_mut_ptr::<u8>(), n)
        }
    }
}

/// Reads the definition and prepares the plans for this trigger on this
/// relation.
unsafe fn compile(trigger: &pg_sys::Trigger, rel: pg_sys::Relation) -> Compiled {
    if trigger.tgnargs != 1 {
        error!("webhooks.capture() takes the event trigger's name as its one argument");
    }
    let name = CStr::from_ptr(*trigger.tgargs).to_string_lossy().into_owned();
    let owner = catalog::extension_owner();
    let relid = (*rel).rd_id;
    let stored = catalog::as_owner(owner, || {
        spi(Spi::get_one_with_args::<pgrx::JsonB>(
            "SELECT definition FROM webhooks.event_triggers WHERE name OPERATOR(pg_catalog.=) $1",
            &[name.as_str().into()],
        ))
    });
    let Some(stored) = stored else {
        // The definition is gone but its table trigger is not (someone
        // edited webhooks.event_triggers by hand). Capture nothing.
        warning!("pg_webhooks: event trigger \"{name}\" has no definition; its table trigger captures nothing");
        return Compiled { relid, owner, insert: None, update: None, delete: None, watched: Vec::new() };
    };
    let def = Definition::from_stored(&stored.0)
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
            watched.push(Watched { attnum, collation: att.attcollation, typlen: att.attlen, typbyval: att.attbyval, eq });
        }
    }

    let rowtype = (*(*rel).rd_rel).reltype;
    let prepare = |op: &str, spec: &Option<OpSpec>| -> Option<pg_sys::SPIPlanPtr> {
        let spec = spec.as_ref()?;
        let old = if op == "INSERT" { "NULL::pg_catalog.jsonb".to_string() } else { row_json("$4", &spec.payload) };
        let new = if op == "DELETE" { "NULL::pg_catalog.jsonb".to_string() } else { row_json("$5", &spec.payload) };
        let sql = format!(
            "INSERT INTO webhooks.event_log (id, trigger_name, schema_name, table_name, payload) \
             VALUES ($1, {name}, {schema}, {table}, pg_catalog.jsonb_build_object(\
             'op', {op}::pg_catalog.text, \
             'data', pg_catalog.jsonb_build_object('old', {old}, 'new', {new}), \
             'session_variables', $2::pg_catalog.jsonb, \
             'trace_context', $3::pg_catalog.jsonb))",
            name = quote_literal(&def.name),
            schema = quote_literal(&def.table.schema),
            table = quote_literal(&def.table.name),
            op = quote_literal(op),
        );
        Some(catalog::as_owner(owner, || prepare_kept(&sql, rowtype)))
    };
    let insert = prepare("INSERT", &def.insert);
    let update = prepare("UPDATE", &def.update);
    let delete = prepare("DELETE", &def.delete);
    Compiled { relid, owner, insert, update, delete, watched }
}

/// The JSON of a row (`param` is a composite parameter): the whole row, or
/// only the listed columns. jsonb_build_object takes at most 100 arguments,
/// so long lists are built in pieces and concatenated.
fn row_json(param: &str, payload: &Columns) -> String {
    match payload {
        Columns::All => format!("pg_catalog.to_jsonb({param})"),
        Columns::List(cols) => cols
            .chunks(50)
            .map(|chunk| {
                let args: Vec<String> = chunk
                    .iter()
                    .map(|c| format!("{}::pg_catalog.text, ({param}).{}", quote_literal(c), quote_identifier(c)))
                    .collect();
                format!("pg_catalog.jsonb_build_object({})", args.join(", "))
            })
            .collect::<Vec<_>>()
            .join(" OPERATOR(pg_catalog.||) "),
    }
}

unsafe fn prepare_kept(sql: &str, rowtype: pg_sys::Oid) -> pg_sys::SPIPlanPtr {
    let csql = CString::new(sql).expect("generated SQL has no NUL");
    let mut types = [pg_sys::UUIDOID, pg_sys::TEXTOID, pg_sys::TEXTOID, rowtype, rowtype];
    if pg_sys::SPI_connect() != pg_sys::SPI_OK_CONNECT as i32 {
        error!("pg_webhooks: SPI_connect failed");
    }
    let plan = pg_sys::SPI_prepare(csql.as_ptr(), types.len() as i32, types.as_mut_ptr());
    if plan.is_null() {
        error!("pg_webhooks: preparing the capture statement failed: {sql}");
    }
    pg_sys::SPI_keepplan(plan);
    pg_sys::SPI_finish();
    plan
}

unsafe fn relation_name(rel: pg_sys::Relation) -> String {
    let nsp = pg_sys::get_namespace_name((*(*rel).rd_rel).relnamespace);
    let name = CStr::from_ptr((*(*rel).rd_rel).relname.data.as_ptr());
    pgrx::spi::quote_qualified_identifier(CStr::from_ptr(nsp).to_string_lossy(), name.to_string_lossy())
}
