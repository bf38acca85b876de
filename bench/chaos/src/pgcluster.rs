//! A throwaway PostgreSQL cluster for the replicas mode: `initdb` in the
//! run's temporary folder, started on a free loopback port, stopped
//! (immediate mode) when dropped. As root, the cluster is owned by and run
//! as the `postgres` user, which PostgreSQL requires.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// A running cluster of the run's own.
pub(crate) struct PgCluster {
    /// The cluster's folder: `data`, its log and its socket.
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
}

impl PgCluster {
    /// initdb in `dir` (created), then start on a free loopback port.
    pub(crate) fn start(dir: &Path) -> Result<PgCluster> {
        let bin = bindir()?;
        std::fs::create_dir(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        if is_root() {
            // The `postgres` user must reach its folder inside the run's.
            if let Some(parent) = dir.parent() {
                std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o711))
                    .with_context(|| format!("cannot open up {}", parent.display()))?;
            }
            let ok = Command::new("chown")
                .arg("postgres:")
                .arg(dir)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                bail!("cannot chown {} to the postgres user", dir.display());
            }
        }
        let out = as_owner(bin.join("initdb"))
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8"])
            .args(["--locale=C", "-N"])
            .stdin(Stdio::null())
            .output()
            .context("cannot run initdb")?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let cluster = PgCluster {
            dir: dir.to_owned(),
            bin,
            port: crate::procs::free_port()?,
        };
        cluster.pg_ctl("start")?;
        Ok(cluster)
    }

    fn pg_ctl(&self, action: &str) -> Result<()> {
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=on -c max_connections=200",
            self.port,
            self.dir.display()
        );
        let out = as_owner(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("postgres.log"))
            .args(["-w", "-t", "60", "-m", "fast", "-o", &opts, action])
            .stdin(Stdio::null())
            .output()
            .context("cannot run pg_ctl")?;
        if !out.status.success() {
            bail!(
                "pg_ctl {action} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// The cluster's `postgres` database.
    pub(crate) fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = as_owner(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The folder of initdb and pg_ctl: on the PATH, else `pg_config --bindir`.
fn bindir() -> Result<PathBuf> {
    let on_path = Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    if let Some(p) = on_path
        && let Some(dir) = Path::new(&p).parent()
    {
        return Ok(dir.to_owned());
    }
    let config = Command::new("pg_config").arg("--bindir").output();
    if let Ok(o) = config
        && o.status.success()
    {
        return Ok(PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    }
    bail!("PostgreSQL's initdb is not installed (apt-get install postgresql)")
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
