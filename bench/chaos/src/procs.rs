//! Child processes: the `dispatch server` or its replicas (killed, or
//! stopped and continued, and restarted on the same store and port) and the
//! worker processes. Every child is stopped
//! when its guard is dropped, on success, error or Ctrl-C alike.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use dispatch_client::Client;
use rustix::process::{Pid, Signal, kill_process};

/// Microseconds since the Unix epoch: the one clock shared by this process
/// and the workers' execution logs.
pub(crate) fn epoch_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// How long a child has between SIGTERM and SIGKILL when it is stopped.
const GRACE: Duration = Duration::from_secs(3);

/// A running child process, stopped on drop.
pub(crate) struct Proc {
    name: String,
    child: Child,
    /// SIGTERM and a grace period before SIGKILL on drop (else SIGKILL).
    graceful: bool,
}

impl Proc {
    pub(crate) fn spawn(name: &str, mut cmd: Command, graceful: bool) -> Result<Proc> {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        Ok(Proc {
            name: name.to_owned(),
            child,
            graceful,
        })
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if the child has exited.
    pub(crate) fn exited(&mut self) -> Result<Option<ExitStatus>> {
        self.child
            .try_wait()
            .with_context(|| format!("cannot check on {}", self.name))
    }

    fn signal(&self, sig: Signal) {
        if let Some(pid) = Pid::from_raw(self.child.id() as i32) {
            let _ = kill_process(pid, sig);
        }
    }

    /// SIGSTOP: the process freezes where it stands.
    pub(crate) fn sigstop(&self) {
        self.signal(Signal::STOP);
    }

    /// SIGCONT: a frozen process goes on.
    pub(crate) fn sigcont(&self) {
        self.signal(Signal::CONT);
    }

    /// SIGKILL, then reap. Returns the time of the kill.
    pub(crate) fn sigkill(&mut self) -> Result<u64> {
        if let Some(status) = self.exited()? {
            bail!("{} had already exited ({status})", self.name);
        }
        let at = epoch_us();
        self.signal(Signal::KILL);
        self.child
            .wait()
            .with_context(|| format!("cannot reap {}", self.name))?;
        Ok(at)
    }

    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        if self.graceful {
            // A frozen child would not act on SIGTERM.
            self.signal(Signal::CONT);
            self.signal(Signal::TERM);
            let deadline = Instant::now() + GRACE;
            while Instant::now() < deadline {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How to start `dispatch server`, again and again on the same store.
pub(crate) struct ServerSpec {
    /// What to call it in messages (`dispatch server`, `replica 2`).
    pub(crate) name: String,
    /// The `dispatch` binary.
    pub(crate) bin: PathBuf,
    /// The loopback port, the same across restarts.
    pub(crate) port: u16,
    /// Where its stdout and stderr are appended.
    pub(crate) log: PathBuf,
    /// Every other argument: the store (`--data DIR` or `--store URL`),
    /// `--durability`, `--lease-ms`, ...
    pub(crate) args: Vec<String>,
}

/// The `dispatch server` child; `None` while it is down.
pub(crate) struct Server {
    spec: ServerSpec,
    proc: Option<Proc>,
    url: String,
    starts: u32,
}

impl Server {
    /// Starts the server and waits until `/healthz` answers.
    pub(crate) async fn start(spec: ServerSpec) -> Result<Server> {
        let url = format!("http://127.0.0.1:{}", spec.port);
        let mut server = Server {
            spec,
            proc: None,
            url,
            starts: 0,
        };
        server.boot().await?;
        Ok(server)
    }

    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// The server's process id, while it runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::pid)
    }

    async fn boot(&mut self) -> Result<()> {
        let log = open_append(&self.spec.log)?;
        let mut cmd = Command::new(&self.spec.bin);
        cmd.arg("server")
            .args(["--listen", &format!("127.0.0.1:{}", self.spec.port)])
            .args(&self.spec.args)
            .stdout(log.try_clone()?)
            .stderr(log);
        self.starts += 1;
        let proc = Proc::spawn(&self.spec.name, cmd, true)
            .with_context(|| format!("(binary {})", self.spec.bin.display()))?;
        self.proc = Some(proc);
        self.wait_healthy().await
    }

    async fn wait_healthy(&mut self) -> Result<()> {
        let client = Client::new(&self.url)?;
        let limit = Instant::now() + Duration::from_secs(60);
        loop {
            self.check_alive()?;
            if client.health().await.is_ok() {
                return Ok(());
            }
            if Instant::now() >= limit {
                bail!(
                    "{} (start {}) did not answer /healthz within 60 s\nserver log:\n{}",
                    self.spec.name,
                    self.starts,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGSTOPs the server; returns the time of the stop.
    pub(crate) fn sigstop(&self) -> Result<u64> {
        let proc = self
            .proc
            .as_ref()
            .ok_or_else(|| anyhow!("{} is not running", self.spec.name))?;
        let at = epoch_us();
        proc.sigstop();
        Ok(at)
    }

    /// SIGCONTs a server SIGSTOPped.
    pub(crate) fn sigcont(&self) {
        if let Some(proc) = &self.proc {
            proc.sigcont();
        }
    }

    /// SIGKILLs the server; returns the time of the kill.
    pub(crate) fn sigkill(&mut self) -> Result<u64> {
        let mut proc = self
            .proc
            .take()
            .ok_or_else(|| anyhow!("the server is not running"))?;
        proc.sigkill()
    }

    /// Starts the server again on the same data folder and port.
    pub(crate) async fn restart(&mut self) -> Result<()> {
        if self.proc.is_some() {
            bail!("the server is already running");
        }
        self.boot().await
    }

    /// Fails if the server process has exited on its own.
    pub(crate) fn check_alive(&mut self) -> Result<()> {
        if let Some(proc) = &mut self.proc
            && let Some(status) = proc.exited()?
        {
            bail!(
                "{} exited: {status}\nserver log:\n{}",
                self.spec.name,
                self.log_tail()
            );
        }
        Ok(())
    }

    /// The last lines of the server's log.
    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.spec.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

/// Opens `path` for appending, creating it.
pub(crate) fn open_append(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))
}

/// A loopback port that was free a moment ago.
pub(crate) fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(l.local_addr()?.port())
}

/// The `dispatch` binary: `--dispatch`, else next to this one.
pub(crate) fn dispatch_binary(given: Option<&Path>) -> Result<PathBuf> {
    let path = match given {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()
            .context("cannot locate this binary")?
            .with_file_name("dispatch"),
    };
    if !path.is_file() {
        bail!(
            "no dispatch binary at {}: build it (cargo build --release -p dispatch-cli), \
             pass --dispatch, or use bench/chaos/run",
            path.display()
        );
    }
    Ok(path)
}
