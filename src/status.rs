//! `webhooks.worker_status()`: what the delivery worker is doing, read from
//! shared memory.

use std::sync::atomic::Ordering;

use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;

use crate::{settings, shmem};

fn timestamp(micros: i64) -> Option<TimestampWithTimeZone> {
    (micros != 0).then(|| TimestampWithTimeZone::try_from(micros).ok()).flatten()
}

/// One row while the library is preloaded (pid is NULL while no worker
/// runs); no row otherwise.
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
    let pid = s.pid.load(Ordering::Relaxed);
    let running = pid != 0;
    let row = (
        running.then_some(pid),
        Some(settings::database()),
        if running { timestamp(s.started_at.load(Ordering::Relaxed)) } else { None },
        if running { timestamp(s.last_wakeup.load(Ordering::Relaxed)) } else { None },
        if running { s.in_flight.load(Ordering::Relaxed) } else { 0 },
        s.delivered.load(Ordering::Relaxed) as i64,
        s.failed.load(Ordering::Relaxed) as i64,
    );
    TableIterator::new(vec![row])
}
