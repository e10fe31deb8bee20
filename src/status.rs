//! `webhooks.worker_status()`: what the delivery workers are doing, read
//! from shared memory.

use std::sync::atomic::Ordering;

use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;

use crate::catalog;
use crate::shmem::{self, state};

fn timestamp(micros: i64) -> Option<TimestampWithTimeZone> {
    (micros != 0).then(|| TimestampWithTimeZone::try_from(micros).ok()).flatten()
}

type Row = (Option<i32>, Option<String>, Option<TimestampWithTimeZone>, Option<TimestampWithTimeZone>, i64, i64, i64);

/// One row per database a delivery worker serves, the current database's
/// first; when none serves the current database, a row for it with a NULL
/// pid. No row at all when the library is not preloaded.
#[pg_extern(schema = "webhooks")]
#[search_path(pg_catalog, pg_temp)]
#[allow(clippy::type_complexity)]
fn worker_status() -> TableIterator<
    'static,
    (
        name!(pid, Option<i32>),
        name!(database, Option<String>),
        name!(started_at, Option<TimestampWithTimeZone>),
        name!(last_wakeup, Option<TimestampWithTimeZone>),
        name!(in_flight, i64),
        name!(delivered, i64),
        name!(failed, i64),
    ),
> {
    let Some(s) = shmem::shared() else { return TableIterator::new(Vec::new()) };
    // SAFETY: reads a backend global.
    let mine = unsafe { pg_sys::MyDatabaseId }.to_u32();
    let mut rows: Vec<(bool, Row)> = Vec::new();
    for slot in &s.slots {
        let db = slot.database.load(Ordering::Acquire);
        let pid = slot.pid.load(Ordering::Relaxed);
        if db == 0 || pid == 0 || slot.state.load(Ordering::Acquire) != state::SERVING {
            continue;
        }
        rows.push((
            db == mine,
            (
                Some(pid),
                catalog::database_name_of(pg_sys::Oid::from(db)),
                timestamp(slot.started_at.load(Ordering::Relaxed)),
                timestamp(slot.last_wakeup.load(Ordering::Relaxed)),
                slot.in_flight.load(Ordering::Relaxed),
                slot.delivered.load(Ordering::Relaxed) as i64,
                slot.failed.load(Ordering::Relaxed) as i64,
            ),
        ));
    }
    if !rows.iter().any(|(m, _)| *m) {
        rows.push((true, (None, catalog::database_name_of(pg_sys::Oid::from(mine)), None, None, 0, 0, 0)));
    }
    rows.sort_by_key(|(m, r)| (!m, r.1.clone()));
    TableIterator::new(rows.into_iter().map(|(_, r)| r).collect::<Vec<_>>())
}
