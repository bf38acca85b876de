//! The files under `examples/` that package the server, checked as far as
//! this machine allows. The systemd unit: `systemd-analyze verify` accepts
//! it without a warning (its man page reference included, from `dispatch
//! man`), `systemd-analyze security` rates its exposure low, and its
//! ExecStart starts the real binary. The Dockerfile (no Docker engine
//! here, so the image itself is never built): its CMD starts the real
//! binary and its HEALTHCHECK command passes against it, and fails once
//! the server is gone.

mod common;

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{BIN, create_token, free_port, ok, run_cli};

fn example(path: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("examples/{path}: {e}"))
}

/// A server started from an example's command line, killed and reaped on
/// every way out.
struct Started(Child);

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `dispatch ARGS` with `env` and waits until it says it listens.
fn start(args: &[String], env: &[(&str, &str)]) -> Started {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("DISPATCH_LOG_FORMAT")
        .env_remove("DISPATCH_STORE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn dispatch");
    let stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let started = Started(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let up = rx
        .recv_timeout(Duration::from_secs(15))
        .is_ok_and(|l| l.contains("listening"));
    if !up {
        drop(started);
        let mut logs = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut logs);
        panic!("dispatch {args:?} did not start:\n{logs}");
    }
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    started
}

fn has(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// The value of the first uncommented `key=` line of a unit file.
fn unit_value<'a>(unit: &'a str, key: &str) -> &'a str {
    unit.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in the unit"))
}

#[test]
fn the_systemd_unit_verifies_and_starts_the_server() {
    let unit = example("systemd/dispatch.service");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let state = dir.path().join("state");

    // What the unit runs, with this build's binary, a fresh state folder
    // and a free port.
    let exec = unit_value(&unit, "ExecStart");
    let args: Vec<String> = exec
        .replace("127.0.0.1:7070", &format!("127.0.0.1:{port}"))
        .replace("/var/lib/dispatch", state.to_str().unwrap())
        .split_whitespace()
        .skip(1)
        .map(str::to_owned)
        .collect();
    assert_eq!(args[0], "server", "{exec}");
    let server = start(&args, &[]);
    drop(server);
    assert!(unit_value(&unit, "ExecReload").contains("-HUP $MAINPID"));

    if !has("systemd-analyze") {
        eprintln!("systemd-analyze is not installed: the unit is not verified");
        return;
    }
    let copy = dir.path().join("dispatch.service");
    std::fs::write(&copy, unit.replace("/usr/local/bin/dispatch", BIN)).unwrap();
    // `verify` looks up the man page the unit names: give it ours.
    let man = dir.path().join("man");
    ok(&run_cli(
        &["man", "--out", man.join("man1").to_str().unwrap()],
        &[],
    ));
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .env("MANPATH", &man)
        .output()
        .expect("run systemd-analyze verify");
    let complaints = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && complaints.trim().is_empty(),
        "systemd-analyze verify: {}\n{complaints}",
        verify.status
    );
    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&copy)
        .output()
        .expect("run systemd-analyze security");
    let report = String::from_utf8_lossy(&security.stdout);
    let exposure: f64 = report
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for dispatch.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{report}"));
    // systemd rates 0-10; below 2 is "OK", the best band.
    assert!(exposure < 2.0, "exposure {exposure}:\n{report}");
}

/// The JSON array after `instruction` in the Dockerfile (continued lines
/// joined).
fn dockerfile_array(dockerfile: &str, instruction: &str) -> Vec<String> {
    let joined = dockerfile.replace("\\\n", " ");
    let line = joined
        .lines()
        .find(|l| l.starts_with(instruction))
        .unwrap_or_else(|| panic!("no {instruction} in the Dockerfile"));
    let json = &line[line.find('[').expect("exec form")..];
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{instruction}: {e}: {json}"))
}

#[test]
fn the_dockerfile_command_and_health_check_run() {
    let dockerfile = example("Dockerfile");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let data = dir.path().join("data");
    let tokens: PathBuf = dir.path().join("tokens");
    create_token(&tokens, "admin", "ops");

    let entrypoint = dockerfile_array(&dockerfile, "ENTRYPOINT");
    assert_eq!(entrypoint, ["dispatch"]);
    let args: Vec<String> = dockerfile_array(&dockerfile, "CMD")
        .into_iter()
        .map(|a| match a.as_str() {
            "0.0.0.0:7070" => format!("0.0.0.0:{port}"),
            "/var/lib/dispatch" => data.to_str().unwrap().to_owned(),
            "/etc/dispatch/tokens" => tokens.to_str().unwrap().to_owned(),
            _ => a,
        })
        .collect();
    assert!(dockerfile.contains("ENV DISPATCH_LOG_FORMAT=json"));
    let server = start(&args, &[("DISPATCH_LOG_FORMAT", "json")]);

    let check = dockerfile_array(&dockerfile, "HEALTHCHECK");
    let check: Vec<String> = check
        .into_iter()
        .map(|a| a.replace("/7070", &format!("/{port}")))
        .collect();
    let run_check = || {
        Command::new(&check[0])
            .args(&check[1..])
            .output()
            .expect("run the health check")
    };
    let healthy = run_check();
    assert!(healthy.status.success(), "{healthy:?}");
    drop(server);
    let gone = run_check();
    assert!(!gone.status.success(), "healthy without a server: {gone:?}");
}
