//! The event's payload, built as jsonb in one pass:
//!
//! ```json
//! {"op": "UPDATE", "data": {"old": {...}, "new": {...}},
//!  "session_variables": ..., "trace_context": ...}
//! ```
//!
//! A row becomes JSON through PostgreSQL's own `to_jsonb`, called directly
//! (not through SQL), so every type renders exactly as `to_jsonb(row)` would
//! render it. The row's jsonb is then pushed into the payload as it is, or,
//! for a `payload` column list, key by key.

use std::ffi::{CStr, CString};

use pgrx::pg_sys::JsonbIteratorToken::{WJB_BEGIN_OBJECT, WJB_END_OBJECT, WJB_KEY, WJB_VALUE};
use pgrx::prelude::*;

/// Which columns of a row go into the payload.
pub enum Shape {
    Whole,
    Columns(Vec<CString>),
}

/// `to_jsonb` for one row type. Lives in a memory context the caller owns.
pub struct RowToJsonb {
    finfo: *mut pg_sys::FmgrInfo,
}

impl RowToJsonb {
    /// Prepares `to_jsonb(<rowtype>)`, allocated in `cxt`.
    pub unsafe fn new(rowtype: pg_sys::Oid, cxt: pg_sys::MemoryContext) -> RowToJsonb {
        let saved = pg_sys::MemoryContextSwitchTo(cxt);
        let finfo = pg_sys::palloc0(std::mem::size_of::<pg_sys::FmgrInfo>()) as *mut pg_sys::FmgrInfo;
        pg_sys::fmgr_info_cxt(pg_sys::Oid::from(pg_sys::F_TO_JSONB), finfo, cxt);
        // to_jsonb learns its argument's type from the call expression.
        let arg = pg_sys::makeNullConst(rowtype, -1, pg_sys::InvalidOid);
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
        RowToJsonb { finfo }
    }

    /// The row's jsonb, in the current memory context.
    pub unsafe fn row(&self, tuple: pg_sys::HeapTuple, tupdesc: pg_sys::TupleDesc) -> *mut pg_sys::Jsonb {
        let datum = pg_sys::heap_copy_tuple_as_datum(tuple, tupdesc);
        pg_sys::FunctionCall1Coll(self.finfo, pg_sys::InvalidOid, datum).cast_mut_ptr()
    }
}

/// Builds the payload of one event. `old` and `new` are the rows' jsonb
/// (null where the operation has none).
pub unsafe fn build(op: &CStr, old: *mut pg_sys::Jsonb, new: *mut pg_sys::Jsonb, shape: &Shape) -> pg_sys::Datum {
    let mut b = Builder { state: std::ptr::null_mut() };
    b.push(WJB_BEGIN_OBJECT, std::ptr::null_mut());
    b.key(c"op");
    b.value(&mut string(op));
    b.key(c"data");
    b.push(WJB_BEGIN_OBJECT, std::ptr::null_mut());
    b.key(c"old");
    b.row(old, shape);
    b.key(c"new");
    b.row(new, shape);
    b.push(WJB_END_OBJECT, std::ptr::null_mut());
    b.key(c"session_variables");
    b.setting(c"hasura.user");
    b.key(c"trace_context");
    b.setting(c"hasura.tracecontext");
    let done = b.push(WJB_END_OBJECT, std::ptr::null_mut());
    pg_sys::Datum::from(pg_sys::JsonbValueToJsonb(done))
}

struct Builder {
    state: *mut pg_sys::JsonbParseState,
}

impl Builder {
    unsafe fn push(&mut self, token: pg_sys::JsonbIteratorToken::Type, v: *mut pg_sys::JsonbValue) -> *mut pg_sys::JsonbValue {
        pg_sys::pushJsonbValue(&mut self.state, token, v)
    }

    unsafe fn key(&mut self, k: &CStr) {
        self.push(WJB_KEY, &mut string(k));
    }

    unsafe fn value(&mut self, v: &mut pg_sys::JsonbValue) {
        self.push(WJB_VALUE, v);
    }

    unsafe fn null(&mut self) {
        let mut v: pg_sys::JsonbValue = std::mem::zeroed();
        v.type_ = pg_sys::jbvType::jbvNull;
        self.value(&mut v);
    }

    /// A whole jsonb document as the value.
    unsafe fn document(&mut self, jb: *mut pg_sys::Jsonb) {
        let mut v: pg_sys::JsonbValue = std::mem::zeroed();
        v.type_ = pg_sys::jbvType::jbvBinary;
        v.val.binary.data = &mut (*jb).root;
        v.val.binary.len = (pgrx::varsize(jb.cast()) - pg_sys::VARHDRSZ) as i32;
        self.value(&mut v);
    }

    unsafe fn row(&mut self, jb: *mut pg_sys::Jsonb, shape: &Shape) {
        if jb.is_null() {
            return self.null();
        }
        match shape {
            Shape::Whole => self.document(jb),
            Shape::Columns(cols) => {
                self.push(WJB_BEGIN_OBJECT, std::ptr::null_mut());
                for col in cols {
                    self.key(col);
                    let bytes = col.as_bytes();
                    let found = pg_sys::getKeyJsonValueFromContainer(
                        &mut (*jb).root,
                        col.as_ptr(),
                        bytes.len() as i32,
                        std::ptr::null_mut(),
                    );
                    if found.is_null() {
                        self.null();
                    } else {
                        self.value(&mut *found);
                    }
                }
                self.push(WJB_END_OBJECT, std::ptr::null_mut());
            }
        }
    }

    /// A JSON setting such as `hasura.user`, or null when unset or empty.
    unsafe fn setting(&mut self, name: &CStr) {
        match crate::capture::setting(name) {
            None => self.null(),
            Some(text) => {
                let jb = pg_sys::OidInputFunctionCall(
                    pg_sys::Oid::from(pg_sys::F_JSONB_IN),
                    text.as_ptr().cast_mut(),
                    pg_sys::JSONBOID,
                    -1,
                );
                self.document(pg_sys::pg_detoast_datum(jb.cast_mut_ptr()).cast());
            }
        }
    }
}

/// A jsonb string value pointing at `s` (which must outlive the build).
fn string(s: &CStr) -> pg_sys::JsonbValue {
    let mut v: pg_sys::JsonbValue = unsafe { std::mem::zeroed() };
    v.type_ = pg_sys::jbvType::jbvString;
    v.val.string.val = s.as_ptr().cast_mut();
    v.val.string.len = s.to_bytes().len() as i32;
    v
}
