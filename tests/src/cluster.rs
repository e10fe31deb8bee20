//! Throwaway PostgreSQL clusters for the end-to-end tests: `initdb` and
//! `pg_ctl` run as the `postgres` OS user (PostgreSQL refuses root), the
//! data directory lives under /tmp and is removed when the cluster drops.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The PostgreSQL installation the tests run: `PGWH_PG_BIN` (what `make
/// test` sets for each major), else Debian's PostgreSQL 15.
pub fn pg_bin() -> String {
    std::env::var("PGWH_PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".to_string())
}

/// Environment variables every test cluster's server has, for the
/// `*_from_env` features.
pub const SERVER_ENV: &[(&str, &str)] = &[
    ("PGWH_TEST_URL", "http://127.0.0.1:9/from-env"),
    ("PGWH_TEST_HOST", "127.0.0.1:9"),
    ("PGWH_TEST_SECRET", "s3cr3t-value"),
    ("PGWH_TEST_CRLF", "bad\r\nvalue"),
];

pub struct Cluster {
    pub dir: PathBuf,
    pub port: u16,
    extra_env: Vec<(String, String)>,
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn as_postgres(program: &str) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--", &format!("{}/{program}", pg_bin())]);
    c
}

fn run(mut c: Command, what: &str) {
    let out = c.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    if !out.status.success() {
        panic!(
            "{what} failed: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Cluster {
    /// A new cluster with pg_webhooks preloaded and `settings` appended to
    /// postgresql.conf.
    pub fn start(settings: &str) -> Cluster {
        Self::start_with_env(settings, &[])
    }

    pub fn start_with_env(settings: &str, env: &[(&str, &str)]) -> Cluster {
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let dir = PathBuf::from(format!("/tmp/pgwh-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        run(
            {
                let mut c = Command::new("chown");
                c.args(["postgres:postgres", dir.to_str().unwrap()]);
                c
            },
            "chown",
        );
        let mut initdb = as_postgres("initdb");
        initdb.args([
            "-D",
            dir.join("data").to_str().unwrap(),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        ]);
        run(initdb, "initdb");
        let port = free_port();
        let conf = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             shared_preload_libraries = 'pg_webhooks'\nfsync = off\nfull_page_writes = off\n\
             max_connections = 60\nlog_min_messages = warning\n{settings}\n",
            dir.display()
        );
        let conf_path = dir.join("data/postgresql.conf");
        let mut existing = std::fs::read_to_string(&conf_path).unwrap();
        existing.push_str(&conf);
        std::fs::write(&conf_path, existing).unwrap();
        let c = Cluster { dir, port, extra_env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() };
        c.pg_ctl_start();
        c
    }

    /// A streaming standby of this cluster (`pg_basebackup -R`), started:
    /// its own directory and port, the primary's settings otherwise.
    pub fn start_standby(&self) -> Cluster {
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let dir = PathBuf::from(format!("/tmp/pgwh-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut chown = Command::new("chown");
        chown.args(["postgres:postgres", dir.to_str().unwrap()]);
        run(chown, "chown");
        let mut backup = as_postgres("pg_basebackup");
        backup.args([
            "-D",
            dir.join("data").to_str().unwrap(),
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
            "-X",
            "stream",
            "-R",
            "--no-sync",
        ]);
        run(backup, "pg_basebackup");
        let port = free_port();
        let conf_path = dir.join("data/postgresql.conf");
        let mut conf = std::fs::read_to_string(&conf_path).unwrap();
        conf.push_str(&format!("port = {port}\nunix_socket_directories = '{}'\n", dir.display()));
        std::fs::write(&conf_path, conf).unwrap();
        let c = Cluster { dir, port, extra_env: self.extra_env.clone() };
        c.pg_ctl_start();
        c
    }

    /// Promotes a standby, waiting until it accepts writes.
    pub fn promote(&self) {
        let mut c = as_postgres("pg_ctl");
        c.args(["-D", self.data().to_str().unwrap(), "-w", "-t", "60", "promote"]);
        run(c, "pg_ctl promote");
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    pub fn pg_ctl_start(&self) {
        let mut c = as_postgres("pg_ctl");
        c.args([
            "-D",
            self.data().to_str().unwrap(),
            "-l",
            self.log_path().to_str().unwrap(),
            "-w",
            "-t",
            "60",
            "start",
        ]);
        for (k, v) in SERVER_ENV {
            c.env(k, v);
        }
        for (k, v) in &self.extra_env {
            c.env(k, v);
        }
        run(c, "pg_ctl start");
    }

    pub fn pg_ctl_stop(&self, mode: &str) {
        let mut c = as_postgres("pg_ctl");
        c.args(["-D", self.data().to_str().unwrap(), "-m", mode, "-w", "-t", "60", "stop"]);
        run(c, "pg_ctl stop");
    }

    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn conn_str(&self, db: &str, user: &str) -> String {
        format!("host=127.0.0.1 port={} user={user} dbname={db} connect_timeout=10", self.port)
    }

    pub fn connect(&self, db: &str) -> postgres::Client {
        self.connect_as(db, "postgres")
    }

    pub fn connect_as(&self, db: &str, user: &str) -> postgres::Client {
        postgres::Client::connect(&self.conn_str(db, user), postgres::NoTls)
            .unwrap_or_else(|e| panic!("connect to {db} as {user}: {e}"))
    }

    /// A new database with the extension installed, named after the test.
    pub fn fresh_db(&self, name: &str) -> (String, postgres::Client) {
        let mut admin = self.connect("postgres");
        let db = format!("t_{}", name.replace(|c: char| !c.is_ascii_alphanumeric(), "_"));
        admin.batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).unwrap();
        admin.batch_execute(&format!("CREATE DATABASE {db}")).unwrap();
        let mut client = self.connect(&db);
        client.batch_execute("CREATE EXTENSION pg_webhooks").unwrap();
        (db, client)
    }

    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let mut c = as_postgres("pg_ctl");
        c.args(["-D", self.data().to_str().unwrap(), "-m", "immediate", "-w", "stop"]);
        let _ = c.output();
        if std::env::var_os("PGWH_KEEP_CLUSTERS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
