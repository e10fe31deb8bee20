//! The PostgreSQL internals whose signatures or layouts differ between the
//! majors pg_webhooks supports (15, 16 and 18), each in one place, gated by
//! the `pgNN` feature `cargo pgrx` builds with.

use pgrx::prelude::*;

/// The attributes of a tuple descriptor. PostgreSQL 18 moved the full
/// attributes behind `compact_attrs`; pgrx's `PgTupleDesc` reads them the
/// right way for each major.
///
/// # Safety
/// `tupdesc` must be a valid descriptor that outlives the returned
/// references.
pub unsafe fn attributes<'a>(tupdesc: pg_sys::TupleDesc) -> Vec<&'a pg_sys::FormData_pg_attribute> {
    // SAFETY: the caller passes a valid descriptor; PgTupleDesc borrows it
    // without taking ownership, and the attributes live in it.
    unsafe {
        let td = pgrx::PgTupleDesc::from_pg_unchecked(tupdesc);
        (0..td.len()).map(|i| &*(td.get(i).expect("within natts") as *const pg_sys::FormData_pg_attribute)).collect()
    }
}

/// Inserts the index entries of a new heap tuple, as an INSERT does
/// (PostgreSQL 16 added `onlySummarizing`).
///
/// # Safety
/// The arguments must be what the executor would pass for an INSERT into
/// the result relation.
pub unsafe fn insert_index_tuples(
    rri: *mut pg_sys::ResultRelInfo,
    slot: *mut pg_sys::TupleTableSlot,
    estate: *mut pg_sys::EState,
) {
    // SAFETY: as the caller promises.
    unsafe {
        #[cfg(feature = "pg15")]
        pg_sys::ExecInsertIndexTuples(rri, slot, estate, false, false, std::ptr::null_mut(), std::ptr::null_mut());
        #[cfg(any(feature = "pg16", feature = "pg18"))]
        pg_sys::ExecInsertIndexTuples(
            rri,
            slot,
            estate,
            false,
            false,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            false,
        );
    }
}
