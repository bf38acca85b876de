//! The small chaos run: 5k tasks through HTTP and gRPC worker processes,
//! two worker SIGKILLs and one server SIGKILL (restarted on the same data),
//! then nothing acknowledged may be lost and every duplicate execution must
//! be explained by a kill.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process, kill_process_group};

/// The `dispatch` binary, as cargo reports it after building it. Built
/// the way `cargo test --workspace` builds it (for `dispatch-cli`'s own
/// end-to-end tests, with the workspace's features), so inside such a run
/// this is a no-op and never rebuilds dependencies with other features.
fn dispatch_binary() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "test",
        "--workspace",
        "--locked",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ])
    .current_dir(env!("CARGO_MANIFEST_DIR"))
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    let child = cmd.spawn().expect("cannot run cargo");
    // A build that hangs (a lock held by a stuck cargo, say) is killed at
    // its deadline instead of holding the test for ever.
    let mut child = Watched::new(child, CARGO_DEADLINE, "cargo test --no-run");
    let stdout = child.child().stdout.take().expect("cargo's stdout");
    let mut exe = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("cargo's output");
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact"
            && msg["target"]["name"] == "dispatch"
            && msg["target"]["kind"][0] == "bin"
            && msg["profile"]["test"] == false
            && let Some(path) = msg["executable"].as_str()
        {
            exe = Some(PathBuf::from(path));
        }
    }
    assert!(
        child.wait().success(),
        "cargo test --workspace --no-run failed"
    );
    exe.expect("cargo built no dispatch binary")
}

/// How long the nested build may take: a cold build of the workspace on
/// a loaded two-core machine, with room to spare.
const CARGO_DEADLINE: Duration = Duration::from_secs(1_800);

/// A child process killed (SIGKILL) when its deadline passes, from a
/// watchdog thread, and killed and reaped when dropped.
struct Watched {
    child: Child,
    done: std::sync::mpsc::Sender<()>,
}

impl Watched {
    fn new(child: Child, deadline: Duration, what: &'static str) -> Watched {
        let pid = child.id() as i32;
        let (done, finished) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = finished.recv_timeout(deadline)
            {
                eprintln!("{what} did not finish within {deadline:?}: killed");
                if let Some(pid) = Pid::from_raw(pid) {
                    let _ = kill_process(pid, Signal::KILL);
                }
            }
        });
        Watched { child, done }
    }

    fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Waits for the child to exit (or be killed at its deadline).
    fn wait(&mut self) -> std::process::ExitStatus {
        let status = self.child.wait().expect("wait for the child");
        let _ = self.done.send(());
        status
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        let _ = self.done.send(());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The chaos run, in its own process group with the server and workers it
/// starts. Dropped (the test failed), it closes the run's stdin so that
/// the run stops its children and removes its folder, then SIGKILLs the
/// whole group in case it did not; if the test process itself is killed,
/// the closed stdin is what stops the run.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline && matches!(self.0.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Some(group) = Pid::from_raw(self.0.id() as i32) {
            let _ = kill_process_group(group, Signal::KILL);
        }
        let _ = self.0.wait();
    }
}

#[test]
fn small_chaos_run_loses_nothing_and_explains_every_duplicate() {
    let dispatch = dispatch_binary();
    let child = Command::new(env!("CARGO_BIN_EXE_dispatch-chaos"))
        .arg("--dispatch")
        .arg(&dispatch)
        .args(["--tasks", "5000", "--workers", "4", "--concurrency", "16"])
        .args(["--worker-kills", "2", "--server-kills", "1"])
        .args(["--seed", "7", "--server-down-ms", "200"])
        .args(["--timeout-secs", "90", "--json", "--stop-when-stdin-closes"])
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("cannot start dispatch-chaos");
    let mut guard = Guard(child);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = guard.0.try_wait().expect("dispatch-chaos") {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(110),
            "dispatch-chaos did not stop by itself"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut out = String::new();
    std::io::Read::read_to_string(
        guard.0.stdout.as_mut().expect("dispatch-chaos stdout"),
        &mut out,
    )
    .expect("dispatch-chaos output");
    assert!(
        status.code().is_some_and(|c| c <= 1),
        "dispatch-chaos failed to run: {status}"
    );
    let r: serde_json::Value = serde_json::from_str(&out).expect("a JSON report");
    assert_eq!(r["acknowledged"], 5000, "{r:#}");
    assert_eq!(r["terminal"], 5000, "{r:#}");
    assert_eq!(r["lost"], 0, "{r:#}");
    assert_eq!(r["unexplained"], 0, "{r:#}");
    assert_eq!(r["unlogged_results"], 0, "{r:#}");
    assert_eq!(r["worker_kills"], 2, "{r:#}");
    assert_eq!(r["server_kills"], 1, "{r:#}");
    assert!(
        r["executions"].as_u64() >= Some(5000),
        "every task ran: {r:#}"
    );
    assert_eq!(
        r["duplicate_executions"],
        r["explained_by_worker_kill"].as_u64().unwrap()
            + r["explained_by_server_kill"].as_u64().unwrap(),
        "{r:#}"
    );
    assert_eq!(r["passed"], true, "{r:#}");
    assert!(status.success(), "{status}");
}
