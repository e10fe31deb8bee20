//! The worker's statements, each parsed and planned once per process.
//!
//! The worker's session runs with `plan_cache_mode = force_generic_plan`
//! (set in `worker::ensure_ready`): with the default, PostgreSQL plans a
//! parameterized statement anew for its parameters at every execution
//! while the custom plans look cheaper than the generic one, as they do
//! for the worker's array arguments, and planning was a third of the main
//! thread's time per round at low rates. The plan cache still replans a
//! statement when what it uses changes (DROP and CREATE EXTENSION
//! included).

use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use pgrx::spi::{OwnedPreparedStatement, SpiClient};

thread_local! {
    static PLANS: RefCell<HashMap<&'static str, Rc<OwnedPreparedStatement>>> = RefCell::new(HashMap::new());
}

/// The kept plan of `sql` (with parameters of `types`), prepared on first use.
pub fn plan(c: &SpiClient<'_>, sql: &'static str, types: &[pg_sys::Oid]) -> Rc<OwnedPreparedStatement> {
    if let Some(p) = PLANS.with(|p| p.borrow().get(sql).cloned()) {
        return p;
    }
    let oids: Vec<pgrx::PgOid> = types.iter().map(|t| pgrx::PgOid::from(*t)).collect();
    let prepared =
        c.prepare_mut(sql, &oids).unwrap_or_else(|e| error!("pg_webhooks: preparing a statement failed: {e}"));
    let kept = Rc::new(prepared.keep());
    PLANS.with(|p| p.borrow_mut().insert(sql, kept.clone()));
    kept
}
