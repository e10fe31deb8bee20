//! The `webhooks.*` settings. Registered in every process that loads the
//! library, so SHOW and SET know them; the worker reads them on SIGHUP.

use std::ffi::CString;

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::pg_sys;
use webhooks_core::definition::Limits;
use webhooks_core::destination::NetPolicy;
use webhooks_core::env_policy::EnvPolicy;
use webhooks_core::tls::TlsSettings;

pub static DATABASE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static MAX_WORKERS: GucSetting<i32> = GucSetting::<i32>::new(8);
pub static BATCH_SIZE: GucSetting<i32> = GucSetting::<i32>::new(200);
pub static MAX_CONCURRENT: GucSetting<i32> = GucSetting::<i32>::new(1024);
pub static MAX_CONCURRENT_PER_TRIGGER: GucSetting<i32> = GucSetting::<i32>::new(0);
pub static POLL_INTERVAL_MS: GucSetting<i32> = GucSetting::<i32>::new(1000);
pub static RESPONSE_BODY_LIMIT: GucSetting<i32> = GucSetting::<i32>::new(16 * 1024);
pub static RETENTION: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static ALLOWED_ENV_VARS: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static MAX_DEFINITION_SIZE: GucSetting<i32> = GucSetting::<i32>::new(64 * 1024);
pub static MAX_TIMEOUT_SEC: GucSetting<i32> = GucSetting::<i32>::new(300);
pub static ALLOW_NETWORKS: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static DENY_NETWORKS: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static CA_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static TLS_CLIENT_CERT: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static TLS_CLIENT_KEY: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// Registers the settings. `webhooks.database` and `webhooks.max_workers`
/// take effect at server start only, and PostgreSQL refuses such settings
/// from a library loaded later, so they exist only when the library is
/// preloaded.
pub fn register(preloading: bool) {
    if preloading {
        register_server_start();
    }
    register_reloadable();
}

fn register_server_start() {
    GucRegistry::define_string_guc(
        c"webhooks.database",
        c"When set, the only database whose events pg_webhooks delivers; when empty, every database with the extension.",
        c"Takes effect at server start.",
        &DATABASE,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"webhooks.max_workers",
        c"Delivery workers that run at once: one per database with the extension.",
        c"Each is a background worker and counts against max_worker_processes, as does the launcher. Takes effect at server start.",
        &MAX_WORKERS,
        1,
        crate::shmem::MAX_WORKERS as i32,
        GucContext::Postmaster,
        GucFlags::default(),
    );
}

fn register_reloadable() {
    GucRegistry::define_int_guc(
        c"webhooks.batch_size",
        c"Events the worker claims per fetch.",
        c"",
        &BATCH_SIZE,
        1,
        100_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"webhooks.max_concurrent_deliveries",
        c"HTTP requests the worker keeps in flight at once.",
        c"Each is a kept-alive connection (a file descriptor); they cost memory only while in use.",
        &MAX_CONCURRENT,
        1,
        65_536,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"webhooks.max_concurrent_per_trigger",
        c"HTTP requests in flight at once for one event trigger; 0 means a quarter of webhooks.max_concurrent_deliveries.",
        c"Keeps slow or hanging webhooks from taking every delivery slot.",
        &MAX_CONCURRENT_PER_TRIGGER,
        0,
        65_536,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"webhooks.poll_interval",
        c"How often the worker looks for due events when nothing wakes it.",
        c"Commits that write events wake the worker at once; this is the fallback.",
        &POLL_INTERVAL_MS,
        10,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"webhooks.response_body_limit",
        c"How much of a webhook's response body is read and kept in event_invocation_logs.",
        c"",
        &RESPONSE_BODY_LIMIT,
        0,
        64 * 1024 * 1024,
        GucContext::Sighup,
        GucFlags::UNIT_BYTE,
    );
    GucRegistry::define_string_guc(
        c"webhooks.retention",
        c"When set (an interval such as '7 days'), the worker deletes finished events older than this.",
        c"It runs webhooks.cleanup_event_logs(NULL, retention) every 10 seconds. Unset keeps everything.",
        &RETENTION,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"webhooks.allowed_env_vars",
        c"Environment variables of the server that roles other than superusers may use in definitions.",
        c"Names (HOOK_TOKEN) and prefixes (HOOK_*), separated by commas; empty allows none. Superusers may use any.",
        &ALLOWED_ENV_VARS,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"webhooks.max_definition_size",
        c"The largest event trigger definition create_event_trigger accepts, as JSON text.",
        c"",
        &MAX_DEFINITION_SIZE,
        1024,
        64 * 1024 * 1024,
        GucContext::Suset,
        GucFlags::UNIT_BYTE,
    );
    GucRegistry::define_string_guc(
        c"webhooks.allow_networks",
        c"Networks (CIDRs) webhooks may be sent to; empty allows every address.",
        c"Checked against every address a webhook's host resolves to; the connection goes to a checked address.",
        &ALLOW_NETWORKS,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"webhooks.deny_networks",
        c"Networks (CIDRs) webhooks are never sent to, such as 169.254.169.254/32; wins over webhooks.allow_networks.",
        c"Checked against every address a webhook's host resolves to; a refused attempt fails without connecting.",
        &DENY_NETWORKS,
        GucContext::Sighup,
        GucFlags::default(),
    );
    for (name, short, setting) in [
        (
            c"webhooks.ca_file",
            c"A PEM bundle of the CAs HTTPS webhooks are checked against, instead of the system's store.",
            &CA_FILE,
        ),
        (c"webhooks.tls_client_cert", c"A PEM client certificate (chain) for mutual TLS.", &TLS_CLIENT_CERT),
        (c"webhooks.tls_client_key", c"The PEM private key of webhooks.tls_client_cert.", &TLS_CLIENT_KEY),
    ] {
        GucRegistry::define_string_guc(
            name,
            short,
            c"Read by the delivery worker at start and on reload.",
            setting,
            GucContext::Sighup,
            GucFlags::default(),
        );
    }
    GucRegistry::define_int_guc(
        c"webhooks.max_timeout",
        c"The largest retry_conf.timeout_sec a definition may give; longer stored timeouts are cut to it.",
        c"",
        &MAX_TIMEOUT_SEC,
        1,
        24 * 3600,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
}

/// The destination policy of `webhooks.allow_networks` and
/// `webhooks.deny_networks`, and the entries that are not CIDRs.
pub fn destinations() -> (NetPolicy, Vec<String>) {
    NetPolicy::from_settings(&text(&ALLOW_NETWORKS), &text(&DENY_NETWORKS))
}

/// `webhooks.ca_file`, `webhooks.tls_client_cert` and `webhooks.tls_client_key`.
pub fn tls() -> TlsSettings {
    TlsSettings { ca_file: text(&CA_FILE), client_cert: text(&TLS_CLIENT_CERT), client_key: text(&TLS_CLIENT_KEY) }
}

/// The environment variables a role that is not a superuser may use.
pub fn restricted_env_policy() -> EnvPolicy {
    EnvPolicy::from_setting(&text(&ALLOWED_ENV_VARS))
}

/// What the current user may do with the server's environment.
pub fn env_policy_for_current_user() -> EnvPolicy {
    // SAFETY: superuser() only reads the current user id and the role cache.
    if unsafe { pg_sys::superuser() } {
        EnvPolicy::unrestricted()
    } else {
        restricted_env_policy()
    }
}

/// The bounds of `webhooks.max_definition_size` and `webhooks.max_timeout`.
pub fn limits() -> Limits {
    Limits { max_definition_bytes: MAX_DEFINITION_SIZE.get().max(0) as usize, max_timeout_sec: max_timeout_sec() }
}

pub fn max_timeout_sec() -> i32 {
    MAX_TIMEOUT_SEC.get().max(1)
}

/// A string setting's value, trimmed; empty when unset.
fn text(setting: &GucSetting<Option<CString>>) -> String {
    setting.get().map(|v| v.to_string_lossy().trim().to_string()).unwrap_or_default()
}

/// `webhooks.retention`, if set and not empty.
pub fn retention() -> Option<String> {
    Some(text(&RETENTION)).filter(|s| !s.is_empty())
}

/// `webhooks.database`, if set and not empty.
pub fn database() -> Option<String> {
    Some(text(&DATABASE)).filter(|s| !s.is_empty())
}

pub fn max_workers() -> usize {
    MAX_WORKERS.get().clamp(1, crate::shmem::MAX_WORKERS as i32) as usize
}

/// The worker's open file limit, once it has raised it (0: not known).
static OPEN_FILE_LIMIT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Records the worker's open file limit, which bounds its connections.
pub fn set_open_file_limit(n: usize) {
    OPEN_FILE_LIMIT.store(n, std::sync::atomic::Ordering::Relaxed);
}

/// `webhooks.max_concurrent_deliveries`, within what the worker's open file
/// limit leaves after a margin for the server's own files (a WARNING says
/// so when the setting is cut).
pub fn max_concurrent() -> usize {
    let wanted = MAX_CONCURRENT.get().max(1) as usize;
    match OPEN_FILE_LIMIT.load(std::sync::atomic::Ordering::Relaxed) {
        0 => wanted,
        limit => {
            // What the worker's own PostgreSQL side keeps open (relations,
            // WAL, the latch's epoll set, the wake-up pipe) stays far below
            // this margin.
            let room = limit.saturating_sub(256).max(1);
            if wanted > room {
                static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
                if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    pgrx::warning!(
                        "pg_webhooks: webhooks.max_concurrent_deliveries = {wanted} is more connections than the open file limit ({limit}) leaves; {room} are used. Raise the limit (LimitNOFILE, ulimit -n) to use more"
                    );
                }
                room
            } else {
                wanted
            }
        }
    }
}

pub fn max_concurrent_per_trigger() -> usize {
    match MAX_CONCURRENT_PER_TRIGGER.get() {
        0 => (max_concurrent() / 4).max(1),
        n => (n as usize).min(max_concurrent()),
    }
}

/// The value of any setting (such as `hasura.user`), or None when unset or
/// empty. The string belongs to PostgreSQL's GUC machinery: valid until the
/// setting changes, so use it at once.
pub fn text_setting(name: &std::ffi::CStr) -> Option<&'static std::ffi::CStr> {
    // SAFETY: GetConfigOption with missing_ok returns NULL for an unknown
    // setting, else a NUL-terminated string it owns.
    unsafe {
        let v = pg_sys::GetConfigOption(name.as_ptr(), true, false);
        if v.is_null() || *v == 0 {
            return None;
        }
        Some(std::ffi::CStr::from_ptr(v))
    }
}
