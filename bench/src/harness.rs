//! Child processes and the temporary data folder, each cleaned up when its
//! guard is dropped: on success, on error, on a timeout and on Ctrl-C alike.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use dispatch_client::Client;

/// A temporary folder, removed with everything in it on drop.
pub(crate) struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates a fresh folder under the system's temporary directory.
    pub(crate) fn new(prefix: &str) -> Result<TempDir> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&path)
            .with_context(|| format!("cannot create the temporary folder {}", path.display()))?;
        Ok(TempDir { path })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A child process that is stopped when the guard is dropped: its stdin is
/// closed, it gets SIGTERM, and SIGKILL if it is still there after a grace
/// period. Its stdout, when captured, is read to the end by a thread.
pub(crate) struct ChildGuard {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Option<JoinHandle<std::io::Result<String>>>,
}

/// How long a child has between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(3);

impl ChildGuard {
    /// Starts `cmd`. With `capture`, its stdin is a pipe (closing it asks the
    /// child to stop) and its stdout is collected.
    pub(crate) fn spawn(name: &str, mut cmd: Command, capture: bool) -> Result<ChildGuard> {
        if capture {
            cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().map(|mut out| {
            std::thread::spawn(move || {
                let mut s = String::new();
                out.read_to_string(&mut s).map(|_| s)
            })
        });
        Ok(ChildGuard {
            name: name.to_owned(),
            child,
            stdin,
            stdout,
        })
    }

    /// The exit status, if the child has exited.
    pub(crate) fn exited(&mut self) -> Result<Option<ExitStatus>> {
        self.child
            .try_wait()
            .with_context(|| format!("cannot check on {}", self.name))
    }

    /// Closes the child's stdin, waits up to `timeout` for it to exit, and
    /// returns what it printed. An exit other than success is an error.
    pub(crate) async fn finish(mut self, timeout: Duration) -> Result<String> {
        drop(self.stdin.take());
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.exited()? {
                break status;
            }
            if Instant::now() >= deadline {
                bail!("{} did not stop within {timeout:?}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        if !status.success() {
            bail!("{} failed: {status}", self.name);
        }
        let out = match self.stdout.take() {
            Some(h) => h
                .join()
                .map_err(|_| anyhow::anyhow!("the reader of {}'s output panicked", self.name))?
                .with_context(|| format!("cannot read {}'s output", self.name))?,
            None => String::new(),
        };
        Ok(out)
    }

    fn stop(&mut self) {
        drop(self.stdin.take());
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // SIGTERM first so that the server shuts down cleanly; std alone can
        // only send SIGKILL.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + GRACE;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
        // The reader thread ends with the child's stdout; do not wait on it.
        drop(self.stdout.take());
    }
}

/// A `dispatch server` child on a loopback port, with its data and log in a
/// temporary folder. Fields drop in order: the process, then the folder.
pub(crate) struct Server {
    process: ChildGuard,
    url: String,
    log: PathBuf,
    dir: TempDir,
}

impl Server {
    /// Starts `dispatch server` and waits until `/healthz` answers.
    pub(crate) async fn start(
        dispatch: &Path,
        durability: &str,
        store: Option<&str>,
        deadline: Instant,
    ) -> Result<Server> {
        let mut dir = TempDir::new("dispatch-bench")?;
        let log = dir.path().join("server.log");
        // The port may be taken between our probe and the server's bind: try
        // a few.
        let mut last_err = None;
        for _ in 0..3 {
            let port = free_port()?;
            let url = format!("http://127.0.0.1:{port}");
            let log_file = File::create(&log).context("cannot create the server log")?;
            let mut cmd = Command::new(dispatch);
            cmd.args(["server", "--listen", &format!("127.0.0.1:{port}")]);
            match store {
                Some(url) => cmd.args(["--store", url]),
                None => cmd.arg("--data").arg(dir.path().join("data")),
            };
            cmd.args(["--durability", durability])
                .stdin(Stdio::null())
                .stdout(log_file.try_clone()?)
                .stderr(log_file);
            let process = ChildGuard::spawn("dispatch server", cmd, false)
                .with_context(|| format!("(binary {})", dispatch.display()))?;
            let mut server = Server {
                process,
                url,
                log: log.clone(),
                dir,
            };
            match server.wait_healthy(deadline).await {
                Ok(()) => return Ok(server),
                Err(e) => {
                    last_err = Some(e.context(format!("server log:\n{}", server.log_tail())));
                    // Take the folder back for the next try; the process is
                    // stopped by its guard.
                    let Server {
                        process, dir: d, ..
                    } = server;
                    drop(process);
                    dir = d;
                }
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("the server did not start")))
    }

    async fn wait_healthy(&mut self, deadline: Instant) -> Result<()> {
        let client = Client::new(&self.url)?;
        let limit = (Instant::now() + Duration::from_secs(30)).min(deadline);
        loop {
            if let Some(status) = self.process.exited()? {
                bail!("dispatch server exited at start: {status}");
            }
            if client.health().await.is_ok() {
                return Ok(());
            }
            if Instant::now() >= limit {
                bail!("dispatch server did not answer /healthz within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// Fails if the server process has exited.
    pub(crate) fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.process.exited()? {
            bail!(
                "dispatch server exited: {status}\nserver log:\n{}",
                self.log_tail()
            );
        }
        Ok(())
    }

    /// The last lines of the server's log.
    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Whether `/healthz` says this server leads.
    pub(crate) async fn is_leader(&self) -> bool {
        let Ok(client) = Client::new(&self.url) else {
            return false;
        };
        client.health().await.is_ok_and(|h| h["role"] == "leader")
    }

    /// The data folder's size on disk, in bytes.
    pub(crate) fn data_bytes(&self) -> u64 {
        dir_size(&self.dir.path().join("data"))
    }
}

fn dir_size(p: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(p) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// A loopback port that was free a moment ago.
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(l.local_addr()?.port())
}
