//! PostgreSQL for the end-to-end tests: a fresh database on the server
//! that `./scripts/test` started (`DISPATCH_TEST_POSTGRES`), or a whole
//! throwaway cluster of one's own, for a test that restarts it.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

/// The server the test script started, or a failure saying how to get one.
pub(crate) fn server_url() -> String {
    std::env::var("DISPATCH_TEST_POSTGRES").unwrap_or_else(|_| {
        panic!(
            "DISPATCH_TEST_POSTGRES is not set: run the tests with ./scripts/test (or \
             ./scripts/with-postgres cargo test ...), which start a throwaway PostgreSQL"
        )
    })
}

/// `url` with its database replaced by `db`.
fn with_database(url: &str, db: &str) -> String {
    let (head, _) = url.rsplit_once('/').expect("a URL with a database");
    format!("{head}/{db}")
}

/// Runs one SQL statement with psql.
pub(crate) fn psql(url: &str, sql: &str) {
    let out = Command::new("psql")
        .arg(url)
        .args(["-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
        .stdin(Stdio::null())
        .output()
        .expect("run psql (apt-get install postgresql-client)");
    assert!(
        out.status.success(),
        "psql {sql:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A new, empty database on `server` (a postgres:// URL) and its URL.
pub(crate) fn fresh_database_on(server: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let db = format!(
        "dispatch_e2e_{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
    );
    psql(server, &format!("CREATE DATABASE {db}"));
    with_database(server, &db)
}

/// A new, empty database on the test script's server.
pub(crate) fn fresh_database() -> String {
    fresh_database_on(&server_url())
}

/// The folder of initdb and pg_ctl.
fn bindir() -> PathBuf {
    let on_path = Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    if let Some(p) = on_path {
        return PathBuf::from(p).parent().expect("a folder").to_owned();
    }
    let config = Command::new("pg_config").arg("--bindir").output();
    if let Ok(o) = config
        && o.status.success()
    {
        return PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
    }
    panic!("PostgreSQL's initdb is not installed: apt-get install postgresql");
}

fn is_root() -> bool {
    rustix::process::getuid().is_root()
}

/// A PostgreSQL program run as the cluster's owner (`postgres` as root).
fn as_owner(program: PathBuf) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// A throwaway cluster of this test's own, stopped and removed on drop.
pub(crate) struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub(crate) port: u16,
}

impl Cluster {
    /// initdb, then start on a free loopback port.
    pub(crate) fn start() -> Cluster {
        let bin = bindir();
        let dir = tempfile::tempdir().expect("temp dir");
        if is_root() {
            let ok = Command::new("chown")
                .arg("postgres:")
                .arg(dir.path())
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "chown the cluster folder to postgres");
        }
        let out = as_owner(bin.join("initdb"))
            .arg("-D")
            .arg(dir.path().join("data"))
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "-N",
            ])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = Cluster {
            port: super::free_port(),
            dir,
            bin,
        };
        cluster.pg_ctl("start");
        cluster
    }

    fn pg_ctl(&self, action: &str) {
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=on",
            self.port,
            self.dir.path().display()
        );
        let out = as_owner(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-l")
            .arg(self.dir.path().join("server.log"))
            .args(["-w", "-t", "60", "-m", "fast", "-o", &opts, action])
            .output()
            .expect("run pg_ctl");
        assert!(
            out.status.success(),
            "pg_ctl {action}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The cluster's `postgres` database.
    pub(crate) fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server (fast shutdown: connections are cut).
    pub(crate) fn stop(&self) {
        self.pg_ctl("stop");
    }

    /// Starts it again on the same port.
    pub(crate) fn start_again(&self) {
        self.pg_ctl("start");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = as_owner(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
