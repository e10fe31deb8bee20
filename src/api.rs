//! The SQL API of schema `webhooks`: create, delete, invoke, redeliver and
//! Hasura's `query` entry point.
//!
//! Arguments are validated by the core crate; what needs the catalog (the
//! table, its columns, the caller's privileges) is checked here, as the
//! caller. The writes to schema webhooks and the table trigger are then made
//! with the extension owner's rights.

use pgrx::pg_sys::panic::{CaughtError, ErrorReport};
use pgrx::prelude::*;
use pgrx::spi::{quote_identifier, quote_literal, quote_qualified_identifier};
use pgrx::JsonB;
use serde_json::{json, Value};
use webhooks_core::definition::{self, Definition};
use webhooks_core::query::{self, Request};
use webhooks_core::{ApiError, SqlState};

use crate::catalog::{self, Table};
use crate::errors::{raise, spi, OrRaise};
use crate::json_arg::JsonArg;

/// The table trigger that captures rows for event trigger `name`.
pub fn table_trigger_name(name: &str) -> String {
    format!("pg_webhooks_{name}")
}

/// Creates an event trigger, or replaces it with `"replace": true`. Returns
/// the stored definition with every default filled in.
#[pg_extern(schema = "webhooks")]
fn create_event_trigger(args: Option<JsonArg>) -> JsonB {
    JsonB(create(&not_null("args", args).value("args")))
}

/// Deletes an event trigger. Its undelivered events are archived, never sent.
#[pg_extern(schema = "webhooks")]
fn delete_event_trigger(name: Option<&str>) {
    delete(not_null("name", name))
}

/// Requeues one event: tries = 0, not delivered, not errored.
#[pg_extern(schema = "webhooks")]
fn redeliver_event(event_id: Option<pgrx::Uuid>) {
    redeliver(not_null("event_id", event_id))
}

/// Enqueues a MANUAL event with `data = {"old": null, "new": payload}`.
#[pg_extern(schema = "webhooks")]
fn invoke_event_trigger(name: Option<&str>, payload: Option<JsonArg>) -> pgrx::Uuid {
    invoke(not_null("name", name), &not_null("payload", payload).value("payload"))
}

/// Stops delivery for one trigger; capture goes on.
#[pg_extern(schema = "webhooks")]
fn pause_event_trigger(name: Option<&str>) {
    set_paused(not_null("name", name), true)
}

/// Restarts delivery for one trigger; its backlog flows.
#[pg_extern(schema = "webhooks")]
fn resume_event_trigger(name: Option<&str>) {
    set_paused(not_null("name", name), false)
}

fn set_paused(name: &str, paused: bool) {
    let owner = catalog::extension_owner();
    let found = catalog::as_owner(owner, || {
        spi(Spi::get_one_with_args::<bool>(
            "UPDATE webhooks.event_triggers SET paused = $2 WHERE name OPERATOR(pg_catalog.=) $1 RETURNING true",
            &[name.into(), paused.into()],
        ))
    });
    if found.is_none() {
        raise(unknown_trigger(name));
    }
    if !paused {
        crate::wake::note_event_written();
    }
}

/// Runs a Hasura API body: `{"type": ..., "args": ...}`, v1 or v2 names, or
/// `bulk` (all or nothing). Answers as Hasura does.
#[pg_extern(schema = "webhooks")]
fn query(body: Option<JsonArg>) -> JsonB {
    let request = query::parse(&not_null("body", body).value("body")).or_raise();
    JsonB(run(request))
}

/// The management functions do something: a NULL argument is an error, not
/// a silent NULL result.
fn not_null<T>(arg: &str, v: Option<T>) -> T {
    v.unwrap_or_else(|| raise(ApiError::new(SqlState::NullValueNotAllowed, format!("argument \"{arg}\" must not be NULL"))))
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
                let mut report = ErrorReport::new(r.sql_error_code(), format!("{context}: {}", r.message()), "pg_webhooks");
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
    let parsed = definition::parse_create_args(args, &|var| std::env::var(var).ok()).or_raise();
    let def = parsed.definition;
    let table = catalog::resolve_table(&def.table.schema, &def.table.name);
    catalog::check_table_privileges(&table);
    let attnums = listed_attnums(&def, &table);
    let stored = def.to_json();
    let owner = catalog::extension_owner();

    catalog::as_owner(owner, || {
        let previous = if parsed.replace {
            let previous = spi(Spi::get_two_with_args::<String, String>(
                "SELECT schema_name, table_name FROM webhooks.event_triggers
                 WHERE name OPERATOR(pg_catalog.=) $1 FOR UPDATE",
                &[def.name.as_str().into()],
            ));
            spi(Spi::run_with_args(
                "INSERT INTO webhooks.event_triggers (name, definition) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE
                 SET definition = excluded.definition, updated_at = pg_catalog.now()",
                &[def.name.as_str().into(), JsonB(stored.clone()).into()],
            ));
            match previous {
                (Some(schema), Some(name)) => Some((schema, name)),
                _ => None,
            }
        } else {
            let inserted = spi(Spi::get_one_with_args::<bool>(
                "INSERT INTO webhooks.event_triggers (name, definition) VALUES ($1, $2)
                 ON CONFLICT (name) DO NOTHING RETURNING true",
                &[def.name.as_str().into(), JsonB(stored.clone()).into()],
            ));
            if inserted.is_none() {
                raise(
                    ApiError::new(SqlState::DuplicateObject, format!("event trigger \"{}\" already exists", def.name))
                        .with_hint("Pass \"replace\": true to replace its definition, or choose another name."),
                );
            }
            None
        };

        spi(Spi::run(&table_trigger_sql(&def, &table)));
        record_column_dependencies(&def.name, &table, &attnums);

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
    if def.insert.is_some() {
        events.push("INSERT");
    }
    if def.update.is_some() {
        events.push("UPDATE");
    }
    if def.delete.is_some() {
        events.push("DELETE");
    }
    let (events, when) = if events.is_empty() { ("INSERT".to_string(), " WHEN (false)") } else { (events.join(" OR "), "") };
    format!(
        "CREATE OR REPLACE TRIGGER {} AFTER {events} ON {} FOR EACH ROW{when} EXECUTE FUNCTION webhooks.capture({})",
        quote_identifier(table_trigger_name(&def.name)),
        table.qualified,
        quote_literal(&def.name)
    )
}

/// Makes the table trigger depend on every listed column, as a trigger's
/// `UPDATE OF` columns do: DROP COLUMN of one is refused (or drops the
/// trigger, and so the event trigger, with CASCADE), and renames are tracked.
/// Dependencies already recorded are left alone, so this can run again.
fn record_column_dependencies(name: &str, table: &Table, attnums: &[i16]) {
    if attnums.is_empty() {
        return;
    }
    let Some(tgoid) = spi(Spi::get_one_with_args::<pg_sys::Oid>(
        "SELECT oid FROM pg_catalog.pg_trigger WHERE tgrelid = $1 AND tgname OPERATOR(pg_catalog.=) $2",
        &[table.oid.into(), table_trigger_name(name).as_str().into()],
    )) else {
        return;
    };
    let recorded: Vec<i16> = Spi::connect(|c| {
        spi(c
            .select(
                "SELECT refobjsubid::int2 FROM pg_catalog.pg_depend
                 WHERE classid = 'pg_catalog.pg_trigger'::pg_catalog.regclass AND objid = $1
                   AND refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND refobjid = $2 AND refobjsubid > 0",
                None,
                &[tgoid.into(), table.oid.into()],
            )
            .map(Some))
        .map(|rows| rows.into_iter().filter_map(|r| r.get::<i16>(1).ok().flatten()).collect())
        .unwrap_or_default()
    });
    let trigger = pg_sys::ObjectAddress { classId: pg_sys::TriggerRelationId, objectId: tgoid, objectSubId: 0 };
    for &attnum in attnums.iter().filter(|a| !recorded.contains(a)) {
        let column =
            pg_sys::ObjectAddress { classId: pg_sys::RelationRelationId, objectId: table.oid, objectSubId: attnum as i32 };
        unsafe { pg_sys::recordDependencyOn(&trigger, &column, pg_sys::DependencyType::DEPENDENCY_NORMAL) };
    }
    unsafe { pg_sys::CommandCounterIncrement() };
}

/// Records the column dependencies of event trigger `name`'s table trigger
/// again. pg_dump does not carry them; the DDL event trigger calls this when
/// pg_restore (or anyone) creates a `pg_webhooks_*` trigger.
#[pg_extern(schema = "webhooks")]
fn _record_dependencies(name: &str) {
    let owner = catalog::extension_owner();
    catalog::as_owner(owner, || {
        let Some(stored) = spi(Spi::get_one_with_args::<JsonB>(
            "SELECT definition FROM webhooks.event_triggers WHERE name OPERATOR(pg_catalog.=) $1",
            &[name.into()],
        )) else {
            return;
        };
        let def = Definition::from_stored(&stored.0).or_raise();
        let table = catalog::resolve_table(&def.table.schema, &def.table.name);
        let attnums = listed_attnums(&def, &table);
        record_column_dependencies(name, &table, &attnums);
    });
}

fn drop_table_trigger(name: &str, schema: &str, table: &str) {
    let qualified = quote_qualified_identifier(schema, table);
    let exists = spi(Spi::get_one_with_args::<bool>(
        "SELECT pg_catalog.to_regclass($1) IS NOT NULL",
        &[qualified.as_str().into()],
    ));
    if exists == Some(true) {
        spi(Spi::run(&format!(
            "DROP TRIGGER IF EXISTS {} ON {qualified}",
            quote_identifier(table_trigger_name(name))
        )));
    }
}

fn unknown_trigger(name: &str) -> ApiError {
    ApiError::new(SqlState::UndefinedObject, format!("event trigger {} does not exist", json!(name)))
        .with_hint("SELECT name FROM webhooks.event_triggers lists the event triggers.")
}

pub fn delete(name: &str) {
    let owner = catalog::extension_owner();
    catalog::as_owner(owner, || {
        let row = spi(Spi::get_two_with_args::<String, String>(
            "DELETE FROM webhooks.event_triggers WHERE name OPERATOR(pg_catalog.=) $1 RETURNING schema_name, table_name",
            &[name.into()],
        ));
        let (Some(schema), Some(table)) = row else { raise(unknown_trigger(name)) };
        spi(Spi::run_with_args(
            "UPDATE webhooks.event_log SET archived = true
             WHERE trigger_name OPERATOR(pg_catalog.=) $1 AND NOT delivered AND NOT error AND NOT archived",
            &[name.into()],
        ));
        drop_table_trigger(name, &schema, &table);
    });
}

pub fn redeliver(event_id: pgrx::Uuid) {
    let owner = catalog::extension_owner();
    catalog::as_owner(owner, || {
        let (locked, trigger) = spi(Spi::get_two_with_args::<bool, String>(
            "SELECT locked IS NOT NULL, trigger_name FROM webhooks.event_log WHERE id OPERATOR(pg_catalog.=) $1 FOR UPDATE",
            &[event_id.into()],
        ));
        let (Some(locked), Some(trigger)) = (locked, trigger) else {
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
        let exists = spi(Spi::get_one_with_args::<bool>(
            "SELECT true FROM webhooks.event_triggers WHERE name OPERATOR(pg_catalog.=) $1",
            &[trigger.as_str().into()],
        ));
        if exists.is_none() {
            raise(unknown_trigger(&trigger).with_hint("The event's trigger was deleted; its events cannot be sent."));
        }
        spi(Spi::run_with_args(
            "UPDATE webhooks.event_log
             SET tries = 0, delivered = false, error = false, archived = false, locked = NULL,
                 next_retry_at = pg_catalog.now()
             WHERE id OPERATOR(pg_catalog.=) $1",
            &[event_id.into()],
        ));
    });
    crate::wake::note_event_written();
}

pub fn invoke(name: &str, payload: &Value) -> pgrx::Uuid {
    let owner = catalog::extension_owner();
    let id = crate::capture::new_event_id();
    catalog::as_owner(owner, || {
        let stored = spi(Spi::get_one_with_args::<JsonB>(
            "SELECT definition FROM webhooks.event_triggers WHERE name OPERATOR(pg_catalog.=) $1",
            &[name.into()],
        ));
        let Some(stored) = stored else { raise(unknown_trigger(name)) };
        let def = Definition::from_stored(&stored.0).or_raise();
        if !def.enable_manual {
            raise(
                ApiError::new(
                    SqlState::ObjectNotInPrerequisiteState,
                    format!("event trigger {} does not allow manual invocation (\"enable_manual\" is false)", json!(name)),
                )
                .with_hint("Replace the definition with \"enable_manual\": true to allow it."),
            );
        }
        let text = |name: &std::ffi::CStr| crate::capture::setting(name).map(|v| v.to_string_lossy().into_owned());
        spi(Spi::run_with_args(
            "INSERT INTO webhooks.event_log (id, trigger_name, schema_name, table_name, payload)
             VALUES ($1, $2, $3, $4, pg_catalog.jsonb_build_object(
                 'op', 'MANUAL'::pg_catalog.text,
                 'data', pg_catalog.jsonb_build_object('old', NULL::pg_catalog.jsonb, 'new', $5::pg_catalog.jsonb),
                 'session_variables', $6::pg_catalog.jsonb,
                 'trace_context', $7::pg_catalog.jsonb))",
            &[
                id.into(),
                name.into(),
                def.table.schema.as_str().into(),
                def.table.name.as_str().into(),
                JsonB(payload.clone()).into(),
                text(c"hasura.user").into(),
                text(c"hasura.tracecontext").into(),
            ],
        ));
    });
    crate::wake::note_event_written();
    id
}
