//! The event store as the worker uses it: claim due events, record attempt
//! results, release locks. Each function runs inside the caller's
//! transaction; the worker commits before any HTTP request goes out.

use pgrx::prelude::*;
use pgrx::JsonB;

use crate::errors::spi;

/// An event claimed for delivery.
pub struct Claimed {
    pub id: String,
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
    /// The request as logged (secrets redacted), JSON text.
    pub request: String,
    /// The response (status, headers, body) or the error, JSON text.
    pub response: String,
    pub started_epoch: f64,
    pub duration_ms: f64,
    /// 'd' delivered, 'r' retry, 'f' failed for good.
    pub verdict: char,
    pub retry_delay_sec: f64,
}

thread_local! {
    /// The worker's hot statements, parsed and planned once per process.
    /// PostgreSQL's plan cache replans them when what they use changes
    /// (DROP and CREATE EXTENSION included).
    static PLANS: std::cell::RefCell<std::collections::HashMap<&'static str, std::rc::Rc<pgrx::spi::OwnedPreparedStatement>>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// The kept plan of `sql` (with parameters of `types`), prepared on first use.
fn plan(
    c: &pgrx::spi::SpiClient<'_>,
    sql: &'static str,
    types: &[pg_sys::Oid],
) -> std::rc::Rc<pgrx::spi::OwnedPreparedStatement> {
    if let Some(p) = PLANS.with(|p| p.borrow().get(sql).cloned()) {
        return p;
    }
    let oids: Vec<pgrx::PgOid> = types.iter().map(|t| pgrx::PgOid::from(*t)).collect();
    let prepared =
        c.prepare_mut(sql, &oids).unwrap_or_else(|e| error!("pg_webhooks: preparing a statement failed: {e}"));
    let kept = std::rc::Rc::new(prepared.keep());
    PLANS.with(|p| p.borrow_mut().insert(sql, kept.clone()));
    kept
}

/// Whether the extension is installed in the worker's database. When it
/// is, the transaction also holds a lock on it, so that a concurrent DROP
/// EXTENSION waits for the round to finish instead of pulling the tables
/// from under it.
pub fn extension_installed() -> bool {
    unsafe {
        let oid = pg_sys::get_extension_oid(c"pg_webhooks".as_ptr(), true);
        if oid == pg_sys::Oid::INVALID {
            return false;
        }
        pg_sys::LockDatabaseObject(pg_sys::ExtensionRelationId, oid, 0, pg_sys::AccessShareLock as i32);
        // Dropped while we waited for the lock?
        pg_sys::get_extension_oid(c"pg_webhooks".as_ptr(), true) == oid
    }
}

/// Locks left by a worker that died: at start, every lock is stale.
pub fn release_stale_locks() -> i64 {
    spi(Spi::get_one::<i64>(
        "WITH r AS (UPDATE webhooks.event_log SET locked = NULL WHERE locked IS NOT NULL RETURNING 1)
         SELECT count(*) FROM r",
    ))
    .unwrap_or(0)
}

/// A trigger that is not paused, as the worker checks it every round: its
/// row version (a change means its definition must be read again) and
/// whether its owner is a superuser (who may use any environment variable).
pub struct TriggerState {
    pub name: String,
    pub version: String,
    pub owner_is_superuser: bool,
}

/// Every trigger that is not paused; definitions are not read (see
/// [`definitions_of`]), so a large one costs nothing while unchanged.
pub fn trigger_states() -> Vec<TriggerState> {
    // Before ALTER EXTENSION ... UPDATE there is no owner column: every
    // trigger is the extension owner's.
    let sql = if crate::catalog::owner_column_exists() {
        "SELECT t.name, t.xmin::pg_catalog.text,
                COALESCE((SELECT r.rolsuper FROM pg_catalog.pg_roles r
                          WHERE r.oid OPERATOR(pg_catalog.=) t.owner::pg_catalog.oid), false)
         FROM webhooks.event_triggers t WHERE NOT t.paused"
    } else {
        "SELECT t.name, t.xmin::pg_catalog.text,
                COALESCE((SELECT r.rolsuper FROM pg_catalog.pg_roles r JOIN pg_catalog.pg_extension e
                          ON r.oid OPERATOR(pg_catalog.=) e.extowner
                          WHERE e.extname OPERATOR(pg_catalog.=) 'pg_webhooks'), false)
         FROM webhooks.event_triggers t WHERE NOT t.paused"
    };
    Spi::connect(|c| {
        let rows = spi(c.select(sql, None, &[]).map(Some))
        .expect("select returns a table");
        rows.into_iter()
            .map(|r| TriggerState {
                name: spi(r.get::<String>(1)).unwrap_or_default(),
                version: spi(r.get::<String>(2)).unwrap_or_default(),
                owner_is_superuser: spi(r.get::<bool>(3)).unwrap_or(false),
            })
            .collect()
    })
}

/// The definitions of `names`, with their row versions.
pub fn definitions_of(names: Vec<String>) -> Vec<(String, String, JsonB)> {
    if names.is_empty() {
        return Vec::new();
    }
    Spi::connect(|c| {
        let rows = spi(c
            .select(
                "SELECT t.name, t.xmin::pg_catalog.text, t.definition FROM webhooks.event_triggers t
                 WHERE t.name OPERATOR(pg_catalog.=) ANY ($1)",
                None,
                &[names.into()],
            )
            .map(Some))
        .expect("select returns a table");
        rows.into_iter()
            .map(|r| {
                (
                    spi(r.get::<String>(1)).unwrap_or_default(),
                    spi(r.get::<String>(2)).unwrap_or_default(),
                    spi(r.get::<JsonB>(3)).expect("definition is NOT NULL"),
                )
            })
            .collect()
    })
}

/// The claim (see [`claim`]).
const CLAIM: &str = "WITH lim AS (SELECT * FROM unnest($1::text[], $2::int4[], $3::timestamptz[], $4::uuid[])
                                   AS l(name, n, after_due, after_id)),
                 due AS (
                     SELECT d.id FROM lim CROSS JOIN LATERAL (
                         SELECT e.id FROM webhooks.event_log e
                         WHERE e.trigger_name = lim.name
                           AND NOT e.delivered AND NOT e.error AND NOT e.archived AND e.locked IS NULL
                           AND e.next_retry_at <= pg_catalog.now()
                           AND (e.next_retry_at, e.id) > (lim.after_due, lim.after_id)
                         ORDER BY e.next_retry_at, e.id
                         LIMIT lim.n
                         FOR UPDATE SKIP LOCKED) d)
                 UPDATE webhooks.event_log e SET locked = pg_catalog.now()
                 FROM due WHERE e.id = due.id
                 RETURNING e.id::text, e.trigger_name, e.schema_name, e.table_name, e.payload::text, e.tries,
                           pg_catalog.to_json(e.created_at) #>> '{}', e.next_retry_at";

/// Claims due events: up to `limits[i]` of trigger `names[i]`, oldest due
/// first, after `cursors[i]` when given, skipping rows another transaction
/// holds. The cursor lets a long backlog be drained without rescanning the
/// index entries of events delivered since the last vacuum.
pub fn claim(names: Vec<String>, limits: Vec<i32>, cursors: Vec<Option<Cursor>>) -> Vec<Claimed> {
    if names.is_empty() {
        return Vec::new();
    }
    let start = Some(pgrx::datum::TimestampWithTimeZone::negative_infinity());
    let (after_due, after_id): (Vec<_>, Vec<_>) = cursors
        .into_iter()
        .map(|c| match c {
            Some((due, id)) => (Some(due), id),
            None => (start, pgrx::Uuid::from_bytes([0; 16])),
        })
        .unzip();
    Spi::connect_mut(|c| {
        let claim = plan(
            c,
            CLAIM,
            &[pg_sys::TEXTARRAYOID, pg_sys::INT4ARRAYOID, pg_sys::TIMESTAMPTZARRAYOID, pg_sys::UUIDARRAYOID],
        );
        let rows =
            spi(c.update(&*claim, None, &[names.into(), limits.into(), after_due.into(), after_id.into()]).map(Some))
                .expect("update returns a table");
        let mut out: Vec<Claimed> = rows
            .into_iter()
            .map(|r| Claimed {
                id: spi(r.get::<String>(1)).unwrap_or_default(),
                trigger: spi(r.get::<String>(2)).unwrap_or_default(),
                schema: spi(r.get::<String>(3)).unwrap_or_default(),
                table: spi(r.get::<String>(4)).unwrap_or_default(),
                event: spi(r.get::<String>(5)).unwrap_or_default(),
                tries: spi(r.get::<i32>(6)).unwrap_or_default(),
                created_at: spi(r.get::<String>(7)).unwrap_or_default(),
                due: spi(r.get::<pgrx::datum::TimestampWithTimeZone>(8)).expect("next_retry_at is NOT NULL"),
            })
            .collect();
        // Best-effort order: the oldest due first (uuid text order is byte order).
        out.sort_by(|a, b| a.due.cmp(&b.due).then_with(|| a.id.cmp(&b.id)));
        out
    })
}

/// When the next pending, unlocked event of these triggers is due, in
/// seconds from now (negative when already due); None when there is none.
pub fn seconds_until_next_due(names: Vec<String>) -> Option<f64> {
    if names.is_empty() {
        return None;
    }
    spi(Spi::get_one_with_args::<f64>(
        "SELECT pg_catalog.date_part('epoch', pg_catalog.min(n.next_retry_at) - pg_catalog.clock_timestamp())::float8
         FROM pg_catalog.unnest($1::text[]) AS t(name) CROSS JOIN LATERAL (
             SELECT e.next_retry_at FROM webhooks.event_log e
             WHERE e.trigger_name = t.name
               AND NOT e.delivered AND NOT e.error AND NOT e.archived AND e.locked IS NULL
             ORDER BY e.next_retry_at, e.id LIMIT 1) n",
        &[names.into()],
    ))
}

/// The record (see [`record`]).
const RECORD: &str = "WITH r AS (
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::int4[], $5::text[], $6::text[],
                                             $7::float8[], $8::float8[], $9::text[], $10::float8[])
                 AS r(event_id, log_id, trigger_name, status, request, response, started, duration_ms, verdict, delay)),
         logs AS (
             INSERT INTO webhooks.event_invocation_logs (id, event_id, trigger_name, status, request, response, created_at, duration_ms)
             SELECT log_id, event_id, trigger_name, status, request::pg_catalog.json, response::pg_catalog.json,
                    pg_catalog.to_timestamp(started), duration_ms
             FROM r)
         UPDATE webhooks.event_log e
         SET tries = e.tries + 1,
             locked = NULL,
             delivered = (r.verdict = 'd'),
             error = (r.verdict = 'f'),
             next_retry_at = CASE WHEN r.verdict = 'r'
                                  THEN pg_catalog.clock_timestamp() + pg_catalog.make_interval(secs => r.delay)
                                  ELSE e.next_retry_at END
         FROM r WHERE e.id = r.event_id";

/// Writes the attempts' invocation logs and the events' new state.
pub fn record(results: Vec<Recorded>) {
    if results.is_empty() {
        return;
    }
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
        requests.push(r.request);
        responses.push(r.response);
        started.push(r.started_epoch);
        durations.push(r.duration_ms);
        verdicts.push(r.verdict.to_string());
        delays.push(r.retry_delay_sec);
    }
    Spi::connect_mut(|c| {
        let record = plan(
            c,
            RECORD,
            &[
                pg_sys::UUIDARRAYOID,
                pg_sys::UUIDARRAYOID,
                pg_sys::TEXTARRAYOID,
                pg_sys::INT4ARRAYOID,
                pg_sys::TEXTARRAYOID,
                pg_sys::TEXTARRAYOID,
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
/// `retention` (an interval) through `webhooks.cleanup_event_logs`. It runs
/// in a subtransaction: a value that is not an interval, or any other
/// error, comes back as `Err` with PostgreSQL's message and the worker goes
/// on.
pub fn cleanup(retention: &str) -> Result<i64, String> {
    let retention = retention.to_string();
    unsafe {
        let context = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        PgTryBuilder::new(move || {
            let n = Spi::get_one_with_args::<i64>(
                "SELECT webhooks.cleanup_event_logs(NULL, $1::pg_catalog.interval)",
                &[retention.as_str().into()],
            );
            pg_sys::ReleaseCurrentSubTransaction();
            pg_sys::MemoryContextSwitchTo(context);
            pg_sys::CurrentResourceOwner = owner;
            Ok(n.ok().flatten().unwrap_or(0))
        })
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
