//! A store that SQLite opened read-only heals once its file is writable
//! again, without a restart: the real failure, with file modes. Root
//! ignores file modes, so as root the server runs as `nobody` (through
//! `setpriv`); without `setpriv` the test has nothing to show and returns.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Api, BIN, free_port};
use serde_json::json;

const NOBODY: u32 = 65534;

/// A `dispatch server` on `data`, as `nobody` when this runs as root.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(data: &Path, as_nobody: bool) -> (Process, String) {
    let listen = format!("127.0.0.1:{}", free_port());
    let mut cmd = if as_nobody {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN]);
        c
    } else {
        Command::new(BIN)
    };
    cmd.args(["server", "--listen", &listen, "--data"])
        .arg(data)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().expect("spawn the server");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("the listening line");
    assert!(line.contains(&listen), "{line}");
    (Process(child), format!("http://{listen}"))
}

/// The status of a submission (the test client refuses 5xx answers; a
/// 503 is what this test expects first).
async fn submit_status(url: &str) -> u16 {
    common::install_crypto_provider();
    reqwest::Client::new()
        .post(format!("{url}/v1/tasks"))
        .json(&json!({"type": "t"}))
        .send()
        .await
        .expect("an answer")
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_store_opened_read_only_heals_once_writable() {
    let root = rustix::process::getuid().is_root();
    if root && Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("skipped: running as root without setpriv");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    if root {
        std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY)).unwrap();
    }
    // A store with one task in it.
    {
        let (_server, url) = start(&data, root);
        assert_eq!(submit_status(&url).await, 201);
    }
    let db = data.join("dispatch.db");
    let mode = |m: u32| std::fs::set_permissions(&db, std::fs::Permissions::from_mode(m));
    mode(0o444).unwrap();
    let (_server, url) = start(&data, root);
    let status = submit_status(&url).await;
    assert_eq!(status, 503, "a write on a read-only file");
    // Writable again: the next writes go through, no restart.
    mode(0o644).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match submit_status(&url).await {
            201 => break,
            503 => {}
            other => panic!("answered {other}"),
        }
        assert!(Instant::now() < deadline, "still 503 after 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let health = Api::new(&url).get("/healthz").await.expect(200);
    assert_eq!(health["status"], "ok", "{health}");
}
