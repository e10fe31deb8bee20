//! The SQL API of schema `webhooks`: create, delete, invoke, redeliver and
//! Hasura's `query` entry point.
//!
//! Arguments are validated by the core crate; what needs the catalog (the
//! table, its columns, the caller's privileges) is checked here, as the
//! caller. The writes to schema webhooks and the table trigger are then made
//! with the extension owner's rights.
//!
//! Every function here runs with `search_path = pg_catalog, pg_temp` (its
//! SET clause), and what runs with the owner's rights runs in
//! [`catalog::as_owner`]. An event trigger belongs to the role that created
//! it: changing, deleting, pausing, resuming, invoking or redelivering it
//! needs membership in that role (see [`catalog::may_manage`]).

use pgrx::pg_sys::panic::{CaughtError, ErrorReport};
use pgrx::prelude::*;
use pgrx::spi::{quote_identifier, quote_literal, quote_qualified_identifier};
use pgrx::JsonB;
use serde_json::{json, Value};
use webhooks_core::definition::{self, Context, Definition};
use webhooks_core::query::{self, Request};
use webhooks_core::{ApiError, SqlState};

use crate::catalog::{self, Table};
use crate::definitions::{self, Found, Lock};
use crate::errors::{raise, spi, OrRaise};
use crate::json_arg::JsonArg;
use crate::settings;
use crate::{event_log, payload};

/// The table trigger that captures rows for event trigger `name`.
pub fn table_trigger_name(name: &str) -> String {
    format!("pg_webhooks_{name}")
}

/// The operations that may have a condition, as keys and as SQL.
const OPS: [(&str, &str); 3] = [("insert", "INSERT"), ("update", "UPDATE"), ("delete", "DELETE")];

/// The table trigger of one operation with a `condition`: its own trigger,
/// since a WHEN clause applies to every event of its trigger. `:` cannot
/// occur in an event trigger name, so no two names collide.
pub fn op_trigger_name(name: &str, op: &str) -> String {
    format!("pg_webhooks_{name}:{op}")
}

/// Creates an event trigger, or replaces it with `"replace": true`. Returns
/// the stored definition with every default filled in.
#[pg_extern(schema = "webhooks")]
#[search_path(pg_catalog, pg_temp)]
fn create_event_trigger(args: Option<JsonArg>) -> JsonB {
    JsonB(create(&not_null("args", args).value("args")))
}

/// Deletes an event trigger. Its undelivered events are archived, never sent.
#[pg_extern(schema = "webhooks")]
#[search_path(pg_catalog, pg_temp)]
fn delete_event_trigger(name: Option<&str>) {
    delete(not_null("name", name))
}

/// Requeues one event: tries = 0, not delivered, not errored.
#[pg_extern(schema = "webhooks")]
#[search_path(pg_catalog, pg_temp)]
fn redeliver_event(event_id: Option<pgrx::Uuid>) {
    redeliver(not_null("event_id", event_id))
}

/// Requeues the errored events of one trigger created in `[since, until)`
/// (NULL: unbounded) in one statement, with tries reset; archived events
/// are never requeued. Returns how many.
#[pg_extern(schema = "webhooks")]
#[search_path(pg_catalog, pg_temp)]
fn redeliver_events(
    trigger_name: Option<&str>,
    since: default!(Option<pgrx::datum::TimestampWithTimeZone>, "NULL"),
    until: default!(Option<pgrx::datum::TimestampWithTimeZone>, "NULL"),
) -> i64 {
    let name = not_null("trigger_name", trigger_name);
    let caller = catalog::current_user();
    let owner = catalog::extension_owner();
    let n = catalog::as_owner(owner, || {
        managed_trigger(name, caller, owner, Lock::None);
        event_log::requeue_failed(name, since, until)
    });
    if n > 0 {
        crate::wake::note_event_written();
    }
    n
}

/// Enqueues a MANUAL event with `data = {"old": null, "new": payload}`.
#[pg_extern(schema = "webhooks")]
#[search_path(pg_catalog, pg_temp)]
fn invoke_event_trigger(name: Option<&str>, payload: Option<JsonArg>) -> pgrx::Uuid {
    invoke(not_null("name", name), &not_null("payload", payload).value("payload"))
}

/// A fresh Standard Webhooks signing secret (`whsec_` and the base64 of 32
/// bytes from the operating system's cryptographic source), for
/// `signing_secret`.
#[pg_extern(schema = "webhooks")]
#[search_path(pg_catalog, pg_temp)]
fn generate_signing_secret() -> String {
    webhooks_core::signing::generate().unwrap_or_else(|e| error!("pg_webhooks: {e}"))
}

/// Stops delivery for one trigger; capture goes on.
#[pg_extern(schema = "webhooks")]
#[search_path(pg_catalog, pg_temp)]
fn pause_event_trigger(name: Option<&str>) {
    set_paused(not_null("name", name), true)
}

/// Restarts delivery for one trigger; its backlog flows.
#[pg_extern(schema = "webhooks")]
#[search_path(pg_catalog, pg_temp)]
fn resume_event_trigger(name: Option<&str>) {
    set_paused(not_null("name", name), false)
}

fn set_paused(name: &str, paused: bool) {
    let caller = catalog::current_user();
    let owner = catalog::extension_owner();
    catalog::as_owner(owner, || {
        managed_trigger(name, caller, owner, Lock::ForUpdate);
        definitions::set_paused(name, paused, paused.then_some("paused by pause_event_trigger()"));
    });
    if !paused {
        crate::wake::note_event_written();
    }
}

/// Pauses or resumes the `cleanup_config` of `triggers` (every trigger with
/// one that the caller may manage, when `None`); it is kept in the stored
/// definition as `"paused"`.
fn set_cleanups_paused(triggers: Option<Vec<String>>, paused: bool) {
    let caller = catalog::current_user();
    let owner = catalog::extension_owner();
    catalog::as_owner(owner, || {
        let named = triggers.is_some();
        let names = triggers.unwrap_or_else(definitions::names_with_cleanup_config);
        for name in names {
            let Some(found) = definitions::find(&name, Lock::ForUpdate) else { raise(unknown_trigger(&name)) };
            if !named && !catalog::may_manage(caller, found.owner, owner) {
                continue;
            }
            check_may_manage(&found, caller, owner);
            let mut stored = definitions::definition(&name).map(|d| d.0).unwrap_or_default();
            if stored.get("cleanup_config").is_none_or(Value::is_null) {
                raise(
                    ApiError::new(
                        SqlState::ObjectNotInPrerequisiteState,
                        format!("event trigger {} has no cleanup_config to pause or resume", json!(name)),
                    )
                    .with_hint("Give it one with create_event_trigger and \"replace\": true, e.g. \"cleanup_config\": {\"schedule\": \"0 0 * * *\", \"clear_older_than\": 168}."),
                );
            }
            stored["cleanup_config"]["paused"] = json!(paused);
            definitions::replace(&name, &stored);
        }
    });
}

/// Runs a Hasura API body: `{"type": ..., "args": ...}`, v1 or v2 names, or
/// `bulk` (all or nothing). Answers as Hasura does.
#[pg_extern(schema = "webhooks")]
#[search_path(pg_catalog, pg_temp)]
fn query(body: Option<JsonArg>) -> JsonB {
    let request = query::parse(&not_null("body", body).value("body")).or_raise();
    JsonB(run(request))
}

/// The management functions do something: a NULL argument is an error, not
/// a silent NULL result.
fn not_null<T>(arg: &str, v: Option<T>) -> T {
    v.unwrap_or_else(|| {
        raise(ApiError::new(SqlState::NullValueNotAllowed, format!("argument \"{arg}\" must not be NULL")))
    })
}

fn run(request: Request) -> Value {
    match request {
        Request::Create(args) => {
            create(&args);
            query::success()
        }
        Request::Delete { name } => {
            delete(&name);
            query::success()
        }
        Request::Redeliver { event_id } => {
            let id = uuid::Uuid::parse_str(&event_id).unwrap_or_else(|_| {
                raise(ApiError::invalid(format!(
                    "invalid value for key \"event_id\": {} is not a UUID",
                    json!(event_id)
                )))
            });
            redeliver(pgrx::Uuid::from_bytes(*id.as_bytes()));
            query::success()
        }
        Request::Invoke { name, payload } => {
            let id = invoke(&name, &payload);
            json!({"event_id": id.to_string()})
        }
        Request::SetCleanupsPaused { triggers, paused } => {
            set_cleanups_paused(triggers, paused);
            query::success()
        }
        Request::CleanupLogs { name, hours, batch_size, timeout_sec, with_logs } => {
            let caller = catalog::current_user();
            let owner = catalog::extension_owner();
            let removed = catalog::as_owner(owner, || {
                managed_trigger(&name, caller, owner, Lock::None);
                event_log::cleanup_trigger(&name, hours, batch_size, timeout_sec, with_logs)
            });
            match removed {
                Ok(n) => json!({"message": "success", "deleted_event_logs": n}),
                Err(e) => raise(
                    ApiError::new(
                        SqlState::ObjectInUse,
                        format!("the cleanup of event trigger {} stopped: {e}", json!(name)),
                    )
                    .with_hint("Raise \"timeout\" or lower \"batch_size\" and run it again."),
                ),
            }
        }
        Request::Bulk(items) => Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| within(&format!("bulk args[{i}]"), move || run(item)))
                .collect(),
        ),
    }
}

/// Runs `f`; an ERROR it raises is raised again with `context: ` before its
/// message (the SQLSTATE and hint stay), so that the caller learns which
/// part of a bulk request or an import failed.
fn within<R>(context: &str, f: impl FnOnce() -> R + std::panic::UnwindSafe) -> R {
    let context = context.to_string();
    PgTryBuilder::new(f)
        .catch_others(move |e| match e {
            CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => {
                let mut report =
                    ErrorReport::new(r.sql_error_code(), format!("{context}: {}", r.message()), "pg_webhooks");
                if let Some(hint) = r.hint() {
                    report = report.set_hint(hint.to_string());
                }
                report.report(PgLogLevel::ERROR);
                unreachable!()
            }
            other => other.rethrow(),
        })
        .execute()
}

/// Creates every event trigger of a Hasura v2 metadata export, all or
/// nothing. Returns `{"created": [names], "unsupported": [{"trigger", "key",
/// "reason"}, ...]}`.
#[pg_extern(schema = "webhooks")]
#[search_path(pg_catalog, pg_temp)]
fn import_hasura_metadata(metadata: Option<JsonArg>) -> JsonB {
    let import = webhooks_core::hasura_metadata::parse(&not_null("metadata", metadata).value("metadata")).or_raise();
    let mut created = Vec::with_capacity(import.creates.len());
    for args in import.creates {
        let name = args["name"].as_str().unwrap_or("").to_string();
        within(&format!("event trigger {}", json!(name)), move || create(&args));
        created.push(name);
    }
    JsonB(json!({"created": created, "unsupported": import.unsupported}))
}

pub fn create(args: &Value) -> Value {
    let caller = catalog::current_user();
    let env_policy = settings::env_policy_for_current_user();
    let ctx = Context { env: &|var| std::env::var(var).ok(), env_policy: &env_policy, limits: settings::limits() };
    let parsed = definition::parse_create_args(args, &ctx).or_raise();
    let def = parsed.definition;
    // Resolved once, by the caller, and locked: the checks and the DDL below
    // are about this one table.
    let table = catalog::resolve_table(&def.table.schema, &def.table.name);
    catalog::check_table_privileges(&table);
    let attnums = listed_attnums(&def, &table);
    check_ordering(&def, &table);
    let mut stored = def.to_json();
    let owner = catalog::extension_owner();

    catalog::as_owner(owner, || {
        let previous = if parsed.replace {
            match definitions::find(&def.name, Lock::ForUpdate) {
                Some(found) => {
                    check_may_manage(&found, caller, owner);
                    definitions::replace(&def.name, &stored);
                    Some((found.schema, found.table))
                }
                None => {
                    insert_definition(&def.name, &stored, caller, owner);
                    None
                }
            }
        } else {
            insert_definition(&def.name, &stored, caller, owner);
            None
        };

        spi(Spi::run(&table_trigger_sql(&def, &table)));
        let tgoid = table_trigger_oid(&def.name, &table).unwrap_or_else(|| {
            error!("pg_webhooks: the table trigger of \"{}\" is not on {} as expected", def.name, table.qualified)
        });
        record_column_dependencies(tgoid, &table, &attnums);
        // Conditions are stored as PostgreSQL prints them, as they read
        // after a rename.
        let with_conditions = create_op_triggers(&def, &table).to_json();
        set_replication_firing(&def, &table);
        if with_conditions != stored {
            definitions::replace(&def.name, &with_conditions);
            stored = with_conditions;
        }

        // Moved to another table: drop the old table's trigger, now that the
        // definition and the new trigger are in place.
        if let Some((schema, name)) = previous {
            if (schema.as_str(), name.as_str()) != (def.table.schema.as_str(), def.table.name.as_str()) {
                drop_table_trigger(&def.name, &schema, &name);
            }
        }
    });
    stored
}

/// `"ordering": "key"` needs a key: the table's primary key or replica
/// identity index. Any ordering needs 0.3.0's event log.
fn check_ordering(def: &Definition, table: &Table) {
    use webhooks_core::definition::Ordering;
    if def.ordering == Ordering::None {
        return;
    }
    if !event_log::has_ordering_key() {
        raise(
            ApiError::new(
                SqlState::FeatureNotSupported,
                "\"ordering\" needs the extension's 0.3.0 objects: this database still has an earlier version's",
            )
            .with_hint("Run ALTER EXTENSION pg_webhooks UPDATE in this database."),
        );
    }
    if def.ordering == Ordering::Key && catalog::key_attnums_of(table.oid).is_empty() {
        raise(
            ApiError::invalid(format!(
                "invalid value for key \"ordering\": \"key\" orders the events of each row by its key, and table {} has no primary key and no replica identity index",
                table.qualified
            ))
            .with_hint("Add a primary key (or ALTER TABLE ... REPLICA IDENTITY USING INDEX), or use \"ordering\": \"trigger\"."),
        );
    }
}

/// Stores a new definition owned by `caller`; an existing name is an error.
fn insert_definition(name: &str, stored: &Value, caller: pg_sys::Oid, extension_owner: pg_sys::Oid) {
    // The previous release's tables (before ALTER EXTENSION ... UPDATE) have
    // no owner column: the trigger would belong to the extension's owner,
    // so only its members may create one.
    if !definitions::owner_column_exists() && !catalog::may_manage(caller, extension_owner, extension_owner) {
        raise(
            ApiError::new(
                SqlState::ObjectNotInPrerequisiteState,
                "pg_webhooks was upgraded but ALTER EXTENSION pg_webhooks UPDATE has not run in this database",
            )
            .with_hint("Until it runs, only superusers and the extension's owner may create event triggers; ask one to run it."),
        );
    }
    if !definitions::insert(name, stored, caller) {
        raise(
            ApiError::new(SqlState::DuplicateObject, format!("event trigger \"{name}\" already exists"))
                .with_hint("Pass \"replace\": true to replace its definition, or choose another name."),
        );
    }
}

fn check_may_manage(found: &Found, caller: pg_sys::Oid, extension_owner: pg_sys::Oid) {
    if !catalog::may_manage(caller, found.owner, extension_owner) {
        raise(
            ApiError::new(
                SqlState::InsufficientPrivilege,
                format!(
                    "permission denied for event trigger {}: it belongs to role {}",
                    json!(found.name),
                    json!(catalog::role_name(found.owner))
                ),
            )
            .with_hint(
                "Only members of the role that created an event trigger, the extension's owner and superusers may change, delete, pause, resume, invoke or redeliver it.",
            ),
        );
    }
}

/// Event trigger `name`, which `caller` may manage: 42704 when it does not
/// exist, 42501 when it belongs to a role `caller` is not a member of. Runs
/// with the owner's rights (it reads webhooks.event_triggers).
fn managed_trigger(name: &str, caller: pg_sys::Oid, extension_owner: pg_sys::Oid, lock: Lock) -> Found {
    let Some(found) = definitions::find(name, lock) else { raise(unknown_trigger(name)) };
    check_may_manage(&found, caller, extension_owner);
    found
}

/// The attribute numbers of every listed column; an unknown column is an
/// error naming the key that lists it.
fn listed_attnums(def: &Definition, table: &Table) -> Vec<i16> {
    let mut attnums = Vec::new();
    for (op, spec) in [("insert", &def.insert), ("update", &def.update), ("delete", &def.delete)] {
        let Some(spec) = spec else { continue };
        for (list, cols) in [("columns", &spec.columns), ("payload", &spec.payload)] {
            for col in cols.names() {
                match catalog::column_attnum(table.oid, col) {
                    Some(a) => {
                        if !attnums.contains(&a) {
                            attnums.push(a)
                        }
                    }
                    None => raise(
                        ApiError::new(
                            SqlState::UndefinedColumn,
                            format!(
                                "invalid value for key \"{op}.{list}\": column {} does not exist in table {}",
                                json!(col),
                                table.qualified
                            ),
                        )
                        .with_hint("Column names are case-sensitive; list existing columns or give \"*\"."),
                    ),
                }
            }
        }
    }
    attnums
}

/// `CREATE OR REPLACE TRIGGER` for the definition's operations. A trigger
/// for manual invocation only still gets a table trigger, one that never
/// fires (`WHEN (false)`): it ties the definition to its table through
/// renames and drops.
fn table_trigger_sql(def: &Definition, table: &Table) -> String {
    let mut events = Vec::new();
    for (key, sql) in OPS {
        if op_spec(def, key).is_some_and(|spec| spec.condition.is_none()) {
            events.push(sql);
        }
    }
    let (events, when) =
        if events.is_empty() { ("INSERT".to_string(), " WHEN (false)") } else { (events.join(" OR "), "") };
    format!(
        "CREATE OR REPLACE TRIGGER {} AFTER {events} ON {} FOR EACH ROW{when} EXECUTE FUNCTION webhooks.capture({})",
        quote_identifier(table_trigger_name(&def.name)),
        table.qualified,
        quote_literal(&def.name)
    )
}

fn op_spec<'a>(def: &'a Definition, op: &str) -> Option<&'a webhooks_core::definition::OpSpec> {
    match op {
        "insert" => def.insert.as_ref(),
        "update" => def.update.as_ref(),
        _ => def.delete.as_ref(),
    }
}

fn op_spec_mut<'a>(def: &'a mut Definition, op: &str) -> Option<&'a mut webhooks_core::definition::OpSpec> {
    match op {
        "insert" => def.insert.as_mut(),
        "update" => def.update.as_mut(),
        _ => def.delete.as_mut(),
    }
}

/// Checks that `condition` is one SQL expression and nothing more: it is
/// pasted into `CREATE TRIGGER ... WHEN (...)`, so text such as `true)
/// EXECUTE FUNCTION f(); DROP ...` must never reach it. PostgreSQL's own
/// parser reads `SELECT (<condition>)`: exactly one statement, one target,
/// and no clause besides is the only shape accepted. Newlines around the
/// condition keep a trailing `--` comment from swallowing the parenthesis,
/// here and in the trigger alike.
fn check_one_expression(op: &str, condition: &str) {
    let sql = std::ffi::CString::new(format!("SELECT (\n{condition}\n)")).expect("checked for NUL");
    let key = format!("invalid value for key \"{op}.condition\"");
    let one = within(&key, || {
        // SAFETY: the raw parser reads a NUL-terminated string and returns a
        // List of RawStmt nodes in the current memory context (or raises a
        // syntax error); the nodes are read before the context goes.
        unsafe {
            let list = pgrx::PgList::<pg_sys::RawStmt>::from_pg(pg_sys::raw_parser(
                sql.as_ptr(),
                pg_sys::RawParseMode::RAW_PARSE_DEFAULT,
            ));
            if list.len() != 1 {
                return false;
            }
            let stmt = (*list.get_ptr(0).expect("one statement")).stmt;
            if stmt.is_null() || (*stmt).type_ != pg_sys::NodeTag::T_SelectStmt {
                return false;
            }
            let s = &*stmt.cast::<pg_sys::SelectStmt>();
            let targets = pgrx::PgList::<pg_sys::ResTarget>::from_pg(s.targetList);
            targets.len() == 1
                && s.distinctClause.is_null()
                && s.intoClause.is_null()
                && s.fromClause.is_null()
                && s.whereClause.is_null()
                && s.groupClause.is_null()
                && s.havingClause.is_null()
                && s.windowClause.is_null()
                && s.valuesLists.is_null()
                && s.sortClause.is_null()
                && s.limitOffset.is_null()
                && s.limitCount.is_null()
                && s.lockingClause.is_null()
                && s.withClause.is_null()
                && s.op == pg_sys::SetOperation::SETOP_NONE
                && (*targets.get_ptr(0).expect("one target")).name.is_null()
        }
    });
    if !one {
        raise(
            ApiError::new(SqlState::SyntaxError, format!("{key}: it must be one SQL expression, not {}", json!(condition)))
                .with_hint("Give a boolean expression over OLD and NEW, as in CREATE TRIGGER ... WHEN (...), e.g. \"NEW.status <> OLD.status\"."),
        );
    }
}

/// `trigger_on_replication`: the definition's triggers fire `ALWAYS` (also
/// when `session_replication_role` is `replica`, as in a logical
/// replication apply worker), or only on origin changes (the default).
fn set_replication_firing(def: &Definition, table: &Table) {
    let mode = if def.trigger_on_replication { "ALWAYS " } else { "" };
    let mut names = vec![table_trigger_name(&def.name)];
    for (op, _) in OPS {
        if op_spec(def, op).is_some_and(|spec| spec.condition.is_some()) {
            names.push(op_trigger_name(&def.name, op));
        }
    }
    for name in names {
        spi(Spi::run(&format!("ALTER TABLE {} ENABLE {mode}TRIGGER {}", table.qualified, quote_identifier(&name))));
    }
}

/// `CREATE OR REPLACE TRIGGER` for one operation with a condition.
fn op_trigger_sql(def: &Definition, table: &Table, op: &str, sql_op: &str, condition: &str) -> String {
    format!(
        "CREATE OR REPLACE TRIGGER {} AFTER {sql_op} ON {} FOR EACH ROW WHEN (\n{condition}\n) EXECUTE FUNCTION webhooks.capture({})",
        quote_identifier(op_trigger_name(&def.name, op)),
        table.qualified,
        quote_literal(&def.name)
    )
}

/// The condition of a trigger as PostgreSQL prints it (after renames, the
/// current names).
fn trigger_condition(tgoid: pg_sys::Oid) -> Option<String> {
    let current =
        spi(Spi::get_one::<bool>("SELECT pg_catalog.to_regprocedure('webhooks._trigger_condition(oid)') IS NOT NULL"));
    if current != Some(true) {
        raise(
            ApiError::new(
                SqlState::FeatureNotSupported,
                "conditions need the extension's 0.3.0 objects: this database still has an earlier version's",
            )
            .with_hint("Run ALTER EXTENSION pg_webhooks UPDATE in this database."),
        );
    }
    spi(Spi::get_one_with_args::<String>("SELECT webhooks._trigger_condition($1)", &[tgoid.into()]))
}

/// Creates (or replaces) the triggers of the operations with a condition,
/// drops those of operations without one, and returns the definition with
/// each condition as PostgreSQL stored it. An error in a condition
/// (PostgreSQL's own: a syntax error, an unknown column, OLD in an INSERT
/// condition, a type that is not boolean) keeps its SQLSTATE and names the
/// key.
fn create_op_triggers(def: &Definition, table: &Table) -> Definition {
    let mut stored = def.clone();
    // Every trigger that is needed exists before any is dropped: the DDL
    // event trigger deletes an event trigger one of whose triggers is
    // missing.
    for (op, sql_op) in OPS {
        let Some(condition) = op_spec(def, op).and_then(|spec| spec.condition.as_deref()) else { continue };
        check_one_expression(op, condition);
        let sql = op_trigger_sql(def, table, op, sql_op, condition);
        within(&format!("invalid value for key \"{op}.condition\""), || spi(Spi::run(&sql)));
        let name = op_trigger_name(&def.name, op);
        let tgoid = trigger_oid(table, &name)
            .unwrap_or_else(|| error!("pg_webhooks: the trigger {name} is not on {} as expected", table.qualified));
        if let (Some(spec), Some(text)) = (op_spec_mut(&mut stored, op), trigger_condition(tgoid)) {
            spec.condition = Some(text);
        }
    }
    for (op, _) in OPS {
        let name = op_trigger_name(&def.name, op);
        if op_spec(def, op).is_none_or(|spec| spec.condition.is_none()) && trigger_oid(table, &name).is_some() {
            spi(Spi::run(&format!("DROP TRIGGER {} ON {}", quote_identifier(&name), table.qualified)));
        }
    }
    stored
}

/// The oid of the trigger `name` on `table`, if there is one.
fn trigger_oid(table: &Table, name: &str) -> Option<pg_sys::Oid> {
    spi(Spi::get_one_with_args::<pg_sys::Oid>(
        "SELECT oid FROM pg_catalog.pg_trigger
         WHERE tgrelid OPERATOR(pg_catalog.=) $1 AND tgname OPERATOR(pg_catalog.=) $2",
        &[table.oid.into(), name.into()],
    ))
}

/// The oid of event trigger `name`'s table trigger on `table`. The trigger
/// was created by a qualified name under a lock on the table; this checks
/// that it landed on the table that was resolved and checked.
fn table_trigger_oid(name: &str, table: &Table) -> Option<pg_sys::Oid> {
    trigger_oid(table, &table_trigger_name(name))
}

/// Makes the table trigger depend on every listed column, as a trigger's
/// `UPDATE OF` columns do: DROP COLUMN of one is refused (or drops the
/// trigger, and so the event trigger, with CASCADE), and renames are tracked.
/// Dependencies already recorded are left alone, so this can run again.
fn record_column_dependencies(tgoid: pg_sys::Oid, table: &Table, attnums: &[i16]) {
    if attnums.is_empty() {
        return;
    }
    let recorded: Vec<i16> = Spi::connect(|c| {
        spi(c
            .select(
                "SELECT refobjsubid::pg_catalog.int2 FROM pg_catalog.pg_depend
                 WHERE classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_trigger'::pg_catalog.regclass
                   AND objid OPERATOR(pg_catalog.=) $1
                   AND refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
                   AND refobjid OPERATOR(pg_catalog.=) $2 AND refobjsubid OPERATOR(pg_catalog.>) 0",
                None,
                &[tgoid.into(), table.oid.into()],
            )
            .map(Some))
        .map(|rows| rows.into_iter().filter_map(|r| r.get::<i16>(1).ok().flatten()).collect())
        .unwrap_or_default()
    });
    let trigger = pg_sys::ObjectAddress { classId: pg_sys::TriggerRelationId, objectId: tgoid, objectSubId: 0 };
    for &attnum in attnums.iter().filter(|a| !recorded.contains(a)) {
        let column = pg_sys::ObjectAddress {
            classId: pg_sys::RelationRelationId,
            objectId: table.oid,
            objectSubId: attnum as i32,
        };
        // SAFETY: both addresses name existing objects (the trigger just
        // looked up, a live column of the locked table).
        unsafe { pg_sys::recordDependencyOn(&trigger, &column, pg_sys::DependencyType::DEPENDENCY_NORMAL) };
    }
    // SAFETY: makes the new pg_depend rows visible to later statements.
    unsafe { pg_sys::CommandCounterIncrement() };
}

/// Records the column dependencies of event trigger `name`'s table trigger
/// again. pg_dump does not carry them; the DDL event trigger calls this when
/// pg_restore (or anyone) creates a `pg_webhooks_*` trigger.
#[pg_extern(schema = "webhooks")]
#[search_path(pg_catalog, pg_temp)]
fn _record_dependencies(name: &str) {
    let owner = catalog::extension_owner();
    catalog::as_owner(owner, || {
        let Some(stored) = definitions::definition(name) else { return };
        let def = Definition::from_stored(&stored.0).or_raise();
        let table = catalog::resolve_table(&def.table.schema, &def.table.name);
        let attnums = listed_attnums(&def, &table);
        // A trigger of that name on another table is not ours to complete.
        if let Some(tgoid) = table_trigger_oid(name, &table) {
            record_column_dependencies(tgoid, &table, &attnums);
        }
    });
}

/// Archives the undelivered events of a trigger whose table trigger was
/// dropped; the DDL event trigger calls it (`sql/ddl.sql`).
#[pg_extern(schema = "webhooks")]
#[search_path(pg_catalog, pg_temp)]
fn _archive_pending(name: &str) {
    let owner = catalog::extension_owner();
    catalog::as_owner(owner, || event_log::archive_undelivered(name));
}

fn drop_table_trigger(name: &str, schema: &str, table: &str) {
    let qualified = quote_qualified_identifier(schema, table);
    let relid = spi(Spi::get_one_with_args::<pg_sys::Oid>(
        "SELECT pg_catalog.to_regclass($1)::pg_catalog.oid",
        &[qualified.as_str().into()],
    ));
    let Some(relid) = relid else { return };
    let table = Table { oid: relid, qualified };
    let names = std::iter::once(table_trigger_name(name)).chain(OPS.iter().map(|(op, _)| op_trigger_name(name, op)));
    for tg in names {
        if trigger_oid(&table, &tg).is_some() {
            spi(Spi::run(&format!("DROP TRIGGER {} ON {}", quote_identifier(&tg), table.qualified)));
        }
    }
}

fn unknown_trigger(name: &str) -> ApiError {
    ApiError::new(SqlState::UndefinedObject, format!("event trigger {} does not exist", json!(name)))
        .with_hint("SELECT name FROM webhooks.event_triggers lists the event triggers.")
}

pub fn delete(name: &str) {
    let caller = catalog::current_user();
    let owner = catalog::extension_owner();
    catalog::as_owner(owner, || {
        let found = managed_trigger(name, caller, owner, Lock::ForUpdate);
        definitions::delete(name);
        event_log::archive_undelivered(name);
        drop_table_trigger(name, &found.schema, &found.table);
    });
}

pub fn redeliver(event_id: pgrx::Uuid) {
    let caller = catalog::current_user();
    let owner = catalog::extension_owner();
    catalog::as_owner(owner, || {
        let Some(event_log::Stored { trigger, locked, archived }) = event_log::lock_event(event_id) else {
            raise(
                ApiError::new(SqlState::NoDataFound, format!("event {event_id} does not exist"))
                    .with_hint("Event ids are in webhooks.event_log.id; cleaned-up events cannot be redelivered."),
            )
        };
        if locked {
            raise(
                ApiError::new(SqlState::ObjectInUse, format!("event {event_id} is being delivered right now"))
                    .with_hint("Try again when the attempt has finished."),
            );
        }
        if archived {
            // Its trigger was deleted; a trigger created since under the
            // same name is another trigger, with another table and webhook.
            raise(
                ApiError::new(
                    SqlState::ObjectNotInPrerequisiteState,
                    format!(
                        "event {event_id} was archived when event trigger {} was deleted; it cannot be sent",
                        json!(trigger)
                    ),
                )
                .with_hint(
                    "Archived events belong to a deleted trigger; invoke the current trigger with the payload instead.",
                ),
            );
        }
        let Some(found) = definitions::find(&trigger, Lock::None) else {
            raise(unknown_trigger(&trigger).with_hint("The event's trigger was deleted; its events cannot be sent."))
        };
        check_may_manage(&found, caller, owner);
        event_log::requeue(event_id);
    });
    crate::wake::note_event_written();
}

pub fn invoke(name: &str, payload: &Value) -> pgrx::Uuid {
    let caller = catalog::current_user();
    let owner = catalog::extension_owner();
    let id = event_log::new_event_id();
    catalog::as_owner(owner, || {
        managed_trigger(name, caller, owner, Lock::None);
        // The definition as last committed, as capture reads it, whatever
        // this transaction's snapshot.
        let Some(stored) = definitions::definition_latest(name) else { raise(unknown_trigger(name)) };
        let def = Definition::from_stored(&stored).or_raise();
        if !def.enable_manual {
            raise(
                ApiError::new(
                    SqlState::ObjectNotInPrerequisiteState,
                    format!(
                        "event trigger {} does not allow manual invocation (\"enable_manual\" is false)",
                        json!(name)
                    ),
                )
                .with_hint("Replace the definition with \"enable_manual\": true to allow it."),
            );
        }
        // SAFETY: the payload is built in the current memory context from a
        // jsonb datum that lives as long.
        let event = unsafe { payload::build_manual(JsonB(payload.clone()).into_datum().expect("jsonb is never NULL")) };
        event_log::append_named(id, name, &def.table.schema, &def.table.name, event);
    });
    crate::wake::note_event_written();
    id
}
