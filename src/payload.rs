//! The event's payload, built as jsonb in one pass:
//!
//! ```json
//! {"op": "UPDATE", "data": {"old": {...}, "new": {...}},
//!  "session_variables": ..., "trace_context": ...}
//! ```
//!
//! A row becomes a JSON object exactly as PostgreSQL's `to_jsonb(row)`
//! renders it, without going through SQL. The common column types (integers,
//! booleans, text, dates and timestamps) are converted here the way
//! `to_jsonb` converts them (integers as numbers, date and time values
//! through `JsonEncodeDateTime`); every other type goes through `to_jsonb`
//! itself, called directly for that column. Each row is deformed once and
//! pushed into the payload in the same pass that builds it.

use std::ffi::{CStr, CString};

use pgrx::pg_sys::JsonbIteratorToken::{WJB_KEY, WJB_VALUE};
use pgrx::prelude::*;

/// How one column becomes a JSON value.
enum Kind {
    Int2,
    Int4,
    Int8,
    Bool,
    /// text and varchar: the string itself.
    Text,
    /// date, timestamp, timestamptz: ISO 8601 as `to_jsonb` writes them.
    DateTime(pg_sys::Oid),
    /// Anything else: `to_jsonb(value)` for the column's type.
    ToJsonb(*mut pg_sys::FmgrInfo),
}

struct Column {
    /// Index into the deformed row.
    index: usize,
    key: CString,
    kind: Kind,
}

/// Which columns of a row go into the payload, and how each is converted.
/// The list is Rust memory; the `to_jsonb` call info of each column lives
/// in the memory context given to [`RowShape::new`], which must outlive it.
pub struct RowShape {
    columns: Vec<Column>,
}

impl RowShape {
    /// The shape of a row of `tupdesc`: every live column, or only `only`
    /// (names that exist: the caller has checked them).
    ///
    /// # Safety
    /// `tupdesc` must be a valid descriptor and `cxt` a memory context that outlives the shape.
    pub unsafe fn new(tupdesc: pg_sys::TupleDesc, only: Option<&[String]>, cxt: pg_sys::MemoryContext) -> RowShape {
        // SAFETY: the descriptor's attributes are read within natts; allocations go to `cxt`.
        unsafe {
            let natts = (*tupdesc).natts as usize;
            let attrs = crate::compat::attributes(tupdesc);
            let name_of = |a: &pg_sys::FormData_pg_attribute| CStr::from_ptr(a.attname.data.as_ptr()).to_owned();
            let picked: Vec<usize> = match only {
                None => (0..natts).filter(|&i| !attrs[i].attisdropped).collect(),
                Some(cols) => cols
                    .iter()
                    .filter_map(|c| {
                        (0..natts).find(|&i| !attrs[i].attisdropped && name_of(attrs[i]).to_bytes() == c.as_bytes())
                    })
                    .collect(),
            };
            let columns = picked
                .into_iter()
                .map(|i| {
                    let typid = attrs[i].atttypid;
                    let kind = match typid {
                        pg_sys::INT2OID => Kind::Int2,
                        pg_sys::INT4OID => Kind::Int4,
                        pg_sys::INT8OID => Kind::Int8,
                        pg_sys::BOOLOID => Kind::Bool,
                        pg_sys::TEXTOID | pg_sys::VARCHAROID => Kind::Text,
                        pg_sys::DATEOID | pg_sys::TIMESTAMPOID | pg_sys::TIMESTAMPTZOID => Kind::DateTime(typid),
                        _ => Kind::ToJsonb(to_jsonb_for(typid, cxt)),
                    };
                    Column { index: i, key: name_of(attrs[i]), kind }
                })
                .collect::<Vec<_>>();
            let mut columns = columns;
            columns.sort_by(|a, b| key_order(&a.key, &b.key));
            RowShape { columns }
        }
    }
}

/// `to_jsonb` prepared for an argument of type `typid`, allocated in `cxt`.
///
/// # Safety
/// `cxt` must outlive the returned function info.
unsafe fn to_jsonb_for(typid: pg_sys::Oid, cxt: pg_sys::MemoryContext) -> *mut pg_sys::FmgrInfo {
    // SAFETY: fmgr_info_cxt and the expression node are allocated in `cxt`.
    unsafe {
        let saved = pg_sys::MemoryContextSwitchTo(cxt);
        let finfo = pg_sys::palloc0(std::mem::size_of::<pg_sys::FmgrInfo>()) as *mut pg_sys::FmgrInfo;
        pg_sys::fmgr_info_cxt(pg_sys::Oid::from(pg_sys::F_TO_JSONB), finfo, cxt);
        // to_jsonb learns its argument's type from the call expression.
        let arg = pg_sys::makeNullConst(typid, -1, pg_sys::InvalidOid);
        let args = pg_sys::lappend(std::ptr::null_mut(), arg.cast());
        let call = pg_sys::makeFuncExpr(
            pg_sys::Oid::from(pg_sys::F_TO_JSONB),
            pg_sys::JSONBOID,
            args,
            pg_sys::InvalidOid,
            pg_sys::InvalidOid,
            pg_sys::CoercionForm::COERCE_EXPLICIT_CALL,
        );
        (*finfo).fn_expr = call.cast();
        pg_sys::MemoryContextSwitchTo(saved);
        finfo
    }
}

/// A row, deformed.
pub struct Row {
    values: Vec<pg_sys::Datum>,
    nulls: Vec<bool>,
}

impl Row {
    /// Deforms `tuple` into values and nulls.
    ///
    /// # Safety
    /// `tuple` must be a tuple of `tupdesc`.
    pub unsafe fn deform(tuple: pg_sys::HeapTuple, tupdesc: pg_sys::TupleDesc) -> Row {
        // SAFETY: the arrays have natts entries, as heap_deform_tuple writes.
        unsafe {
            let natts = (*tupdesc).natts as usize;
            let mut row = Row { values: vec![pg_sys::Datum::from(0); natts], nulls: vec![true; natts] };
            pg_sys::heap_deform_tuple(tuple, tupdesc, row.values.as_mut_ptr(), row.nulls.as_mut_ptr());
            row
        }
    }
}

/// Builds the payload of one event (`old` or `new` is None where the
/// operation has no such row).
///
/// The payload is assembled as a tree of `JsonbValue`s whose object keys
/// are already in jsonb's order (shorter keys first, then bytewise), and
/// serialized once: no key sorting and no intermediate documents.
///
/// # Safety
/// `old` and `new` must be rows of the relation `shape` was made for.
pub unsafe fn build(op: &CStr, old: Option<&Row>, new: Option<&Row>, shape: &RowShape) -> pg_sys::Datum {
    // SAFETY: every value is read through the shape's column indexes and types; the tree is
    // allocated in the current memory context and serialized before it ends.
    unsafe {
        let data = object(&mut [(c"new", row(new, shape)), (c"old", row(old, shape))]);
        let mut payload = object(&mut [
            (c"op", string(op)),
            (c"data", data),
            (c"trace_context", setting(c"hasura.tracecontext")),
            (c"session_variables", setting(c"hasura.user")),
        ]);
        pg_sys::Datum::from(pg_sys::JsonbValueToJsonb(&mut payload))
    }
}

/// The payload of a MANUAL event (`invoke_event_trigger`): `data.new` is
/// the given jsonb, `data.old` null, and the session variables and trace
/// context come from the settings, as for captured events.
///
/// # Safety
/// `new` must be a jsonb datum valid for the rest of the call.
pub unsafe fn build_manual(new: pg_sys::Datum) -> pg_sys::Datum {
    // SAFETY: the caller passes a jsonb datum; everything is allocated in
    // the current memory context.
    unsafe {
        let new = document(pg_sys::pg_detoast_datum(new.cast_mut_ptr()).cast());
        let data = object(&mut [(c"new", new), (c"old", null())]);
        let mut payload = object(&mut [
            (c"op", string(c"MANUAL")),
            (c"data", data),
            (c"trace_context", setting(c"hasura.tracecontext")),
            (c"session_variables", setting(c"hasura.user")),
        ]);
        pg_sys::Datum::from(pg_sys::JsonbValueToJsonb(&mut payload))
    }
}

/// An object of `pairs`, which must be in jsonb key order.
///
/// # Safety
/// The pairs' values must be valid JsonbValues for the current memory context.
unsafe fn object(pairs: &mut [(&CStr, pg_sys::JsonbValue)]) -> pg_sys::JsonbValue {
    // SAFETY: the array has room for every pair.
    unsafe {
        debug_assert!(pairs.windows(2).all(|w| key_order(w[0].0, w[1].0) == std::cmp::Ordering::Less));
        let array =
            pg_sys::palloc(std::mem::size_of::<pg_sys::JsonbPair>() * pairs.len().max(1)) as *mut pg_sys::JsonbPair;
        for (i, (k, v)) in pairs.iter().enumerate() {
            array.add(i).write(pg_sys::JsonbPair { key: string(k), value: *v, order: i as u32 });
        }
        let mut v: pg_sys::JsonbValue = std::mem::zeroed();
        v.type_ = pg_sys::jbvType::jbvObject;
        v.val.object.nPairs = pairs.len() as i32;
        v.val.object.pairs = array;
        v
    }
}

/// jsonb's order of object keys: shorter first, then bytewise.
fn key_order(a: &CStr, b: &CStr) -> std::cmp::Ordering {
    let (a, b) = (a.to_bytes(), b.to_bytes());
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

fn null() -> pg_sys::JsonbValue {
    // SAFETY: JsonbValue is plain data: all zeroes is a valid value, made a null below.
    let mut v: pg_sys::JsonbValue = unsafe { std::mem::zeroed() };
    v.type_ = pg_sys::jbvType::jbvNull;
    v
}

/// A jsonb document as a value of the tree.
///
/// # Safety
/// `jb` must point to a detoasted jsonb.
unsafe fn document(jb: *mut pg_sys::Jsonb) -> pg_sys::JsonbValue {
    // SAFETY: iterates the document PostgreSQL's way.
    unsafe {
        let mut v: pg_sys::JsonbValue = std::mem::zeroed();
        if pg_sys::JsonbExtractScalar(&mut (*jb).root, &mut v) {
            return v;
        }
        // A container: unpack it into a tree.
        let mut it = pg_sys::JsonbIteratorInit(&mut (*jb).root);
        let mut state: *mut pg_sys::JsonbParseState = std::ptr::null_mut();
        let mut top: *mut pg_sys::JsonbValue = std::ptr::null_mut();
        loop {
            let token = pg_sys::JsonbIteratorNext(&mut it, &mut v, false);
            if token == pg_sys::JsonbIteratorToken::WJB_DONE {
                break;
            }
            let scalar = token == WJB_KEY || token == WJB_VALUE || token == pg_sys::JsonbIteratorToken::WJB_ELEM;
            top = pg_sys::pushJsonbValue(&mut state, token, if scalar { &mut v } else { std::ptr::null_mut() });
        }
        *top
    }
}

/// A row as a JSON object of its shape's columns, or null.
///
/// # Safety
/// `row` must be a row of the relation `shape` was made for.
unsafe fn row(row: Option<&Row>, shape: &RowShape) -> pg_sys::JsonbValue {
    // SAFETY: the shape's indexes are within the row.
    unsafe {
        let Some(row) = row else { return null() };
        let mut pairs: Vec<(&CStr, pg_sys::JsonbValue)> = Vec::with_capacity(shape.columns.len());
        for col in &shape.columns {
            let value = if row.nulls[col.index] { null() } else { column(col, row.values[col.index]) };
            pairs.push((&col.key, value));
        }
        object(&mut pairs)
    }
}

/// One column's value as `to_jsonb` renders it.
///
/// # Safety
/// `d` must be a non-null value of the column's type.
unsafe fn column(col: &Column, d: pg_sys::Datum) -> pg_sys::JsonbValue {
    // SAFETY: each conversion reads a value of the type it is for.
    unsafe {
        let mut v: pg_sys::JsonbValue = std::mem::zeroed();
        match col.kind {
            Kind::Int2 => number(&mut v, d.value() as i16 as i64),
            Kind::Int4 => number(&mut v, d.value() as i32 as i64),
            Kind::Int8 => number(&mut v, d.value() as i64),
            Kind::Bool => {
                v.type_ = pg_sys::jbvType::jbvBool;
                v.val.boolean = d.value() != 0;
            }
            Kind::Text => {
                let t = pg_sys::pg_detoast_datum_packed(d.cast_mut_ptr());
                let len = pgrx::varsize_any_exhdr(t);
                if len > pg_sys::JENTRY_OFFLENMASK as usize {
                    ereport!(
                        ERROR,
                        PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
                        "string too long to represent as jsonb string",
                        format!(
                            "Due to an implementation restriction, jsonb strings cannot exceed {} bytes.",
                            pg_sys::JENTRY_OFFLENMASK
                        )
                    );
                }
                v.type_ = pg_sys::jbvType::jbvString;
                v.val.string.val = pgrx::vardata_any(t).cast_mut().cast();
                v.val.string.len = len as i32;
            }
            Kind::DateTime(typid) => {
                let s = pg_sys::JsonEncodeDateTime(std::ptr::null_mut(), d, typid, std::ptr::null());
                v.type_ = pg_sys::jbvType::jbvString;
                v.val.string.val = s;
                v.val.string.len = CStr::from_ptr(s).to_bytes().len() as i32;
            }
            Kind::ToJsonb(finfo) => {
                return document(pg_sys::FunctionCall1Coll(finfo, pg_sys::InvalidOid, d).cast_mut_ptr())
            }
        }
        v
    }
}

/// A JSON setting such as `hasura.user`, or null when unset or empty.
///
/// # Safety
/// Must be called in a backend.
unsafe fn setting(name: &CStr) -> pg_sys::JsonbValue {
    // SAFETY: jsonb_in parses the setting's text (raising an ERROR for bad JSON, as a cast would).
    unsafe {
        match crate::settings::text_setting(name) {
            None => null(),
            Some(text) => {
                let jb = pg_sys::OidInputFunctionCall(
                    pg_sys::Oid::from(pg_sys::F_JSONB_IN),
                    text.as_ptr().cast_mut(),
                    pg_sys::JSONBOID,
                    -1,
                );
                document(pg_sys::pg_detoast_datum(jb.cast_mut_ptr()).cast())
            }
        }
    }
}

/// A jsonb number, as `to_jsonb` makes of an integer.
///
/// # Safety
/// Must be called in a backend.
unsafe fn number(v: &mut pg_sys::JsonbValue, n: i64) {
    // SAFETY: int64_to_numeric allocates in the current memory context.
    unsafe {
        v.type_ = pg_sys::jbvType::jbvNumeric;
        v.val.numeric = pg_sys::int64_to_numeric(n);
    }
}

/// A jsonb string value pointing at `s` (which must outlive the build).
fn string(s: &CStr) -> pg_sys::JsonbValue {
    // SAFETY: JsonbValue is plain data: all zeroes is a valid value, made a string below.
    let mut v: pg_sys::JsonbValue = unsafe { std::mem::zeroed() };
    v.type_ = pg_sys::jbvType::jbvString;
    v.val.string.val = s.as_ptr().cast_mut();
    v.val.string.len = s.to_bytes().len() as i32;
    v
}
