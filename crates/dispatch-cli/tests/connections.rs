//! Connections are bounded: a slow request head is cut at the header
//! timeout, an idle keep-alive connection at the idle timeout, and past
//! the connection cap a new connection gets a 503 while the open ones are
//! still served.

mod common;

use std::time::{Duration, Instant};

use common::Server;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Longest any wait here may take on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(30);

fn addr(server: &Server) -> String {
    server.url.trim_start_matches("http://").to_owned()
}

async fn connect(server: &Server) -> TcpStream {
    TcpStream::connect(addr(server)).await.expect("connect")
}

/// Sends a keep-alive `GET /healthz` and reads its answer.
async fn healthz_on(conn: &mut TcpStream) -> String {
    conn.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    read_answer(conn).await
}

/// Reads one answer with a Content-Length body.
async fn read_answer(conn: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                return text;
            }
        }
        let n = tokio::time::timeout(PATIENCE, conn.read(&mut buf))
            .await
            .expect("an answer in time")
            .expect("read");
        assert!(n > 0, "connection closed mid-answer: {text:?}");
        got.extend_from_slice(&buf[..n]);
    }
}

/// Waits until the server closes `conn` (end of stream or reset); returns
/// what it sent before.
async fn closed_by_server(conn: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(PATIENCE, conn.read(&mut buf))
            .await
            .expect("the server closes the connection in time")
        {
            Ok(0) | Err(_) => return String::from_utf8_lossy(&got).into_owned(),
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn a_slowloris_head_is_cut_at_the_header_timeout() {
    let server = Server::with_args(&["--header-timeout-ms", "1000"]).await;
    let mut conn = connect(&server).await;
    let head = b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let started = Instant::now();
    let mut sent = 0;
    // One byte every 200 ms: the whole head would take 16 s. The server
    // must close the connection before it is complete.
    for b in head {
        if conn.write_all(&[*b]).await.is_err() {
            break;
        }
        sent += 1;
        let mut probe = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(200), conn.read(&mut probe)).await {
            Err(_) => {}
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => panic!(
                "the server answered a partial head: {:?}",
                String::from_utf8_lossy(&probe[..n])
            ),
        }
        assert!(started.elapsed() < PATIENCE, "never closed");
    }
    assert!(
        sent < head.len(),
        "the whole head went through ({sent} bytes)"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed before the timeout: {:?}",
        started.elapsed()
    );
    // The server itself is fine.
    let mut other = connect(&server).await;
    assert!(healthz_on(&mut other).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn a_silent_connection_is_cut_at_the_header_timeout() {
    let server = Server::with_args(&["--header-timeout-ms", "500"]).await;
    let mut conn = connect(&server).await;
    let sent = closed_by_server(&mut conn).await;
    assert!(sent.is_empty(), "{sent:?}");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let server = Server::with_args(&["--idle-timeout-ms", "1500"]).await;
    // Requests closer together than the timeout keep the connection.
    let mut busy = connect(&server).await;
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(3000) {
        let answer = healthz_on(&mut busy).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Then silence closes it, without an answer.
    let idle_from = Instant::now();
    let rest = closed_by_server(&mut busy).await;
    assert!(rest.is_empty(), "{rest:?}");
    assert!(
        idle_from.elapsed() >= Duration::from_millis(1400),
        "closed before the idle timeout: {:?}",
        idle_from.elapsed()
    );
}

#[tokio::test]
async fn past_the_connection_cap_new_connections_get_503_and_open_ones_are_served() {
    let server =
        Server::with_args(&["--max-connections", "5", "--header-timeout-ms", "60000"]).await;
    // The test's own client may still hold a pooled connection from the
    // start-up health check: wait until the server has closed it or let
    // it count; `keeper` is served either way.
    let mut keeper = connect(&server).await;
    assert!(healthz_on(&mut keeper).await.starts_with("HTTP/1.1 200"));
    let mut idle = Vec::new();
    let mut refused = 0;
    for _ in 0..10 {
        let mut c = connect(&server).await;
        // A refused connection is answered without being asked.
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(500), c.read(&mut buf)).await {
            Err(_) => idle.push(c),
            Ok(Ok(n)) => {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                assert!(text.starts_with("HTTP/1.1 503"), "{text}");
                assert!(text.contains("application/problem+json"), "{text}");
                assert!(text.contains("--max-connections"), "{text}");
                refused += 1;
            }
            Ok(Err(e)) => panic!("refused without an answer: {e}"),
        }
    }
    assert!(idle.len() <= 4, "{} idle connections accepted", idle.len());
    assert!(refused >= 6, "{refused} refused");
    // The connections already open are still served.
    assert!(healthz_on(&mut keeper).await.starts_with("HTTP/1.1 200"));
    // Closing some makes room again.
    drop(idle);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut c = connect(&server).await;
        c.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("write");
        let answer = closed_or_answer(&mut c).await;
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "no room after closing: {answer}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn closed_or_answer(conn: &mut TcpStream) -> String {
    let mut buf = [0u8; 4096];
    match tokio::time::timeout(PATIENCE, conn.read(&mut buf)).await {
        Ok(Ok(n)) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        _ => String::new(),
    }
}

#[tokio::test]
async fn a_silent_grpc_stream_outlives_the_idle_timeout() {
    use dispatch_worker::{TaskContext, Transport, Worker};
    // Heartbeats every 10 s: the stream is silent far longer than the
    // idle and header timeouts.
    let server = Server::with_args(&[
        "--idle-timeout-ms",
        "300",
        "--header-timeout-ms",
        "300",
        "--lease-ms",
        "30000",
    ])
    .await;
    let api = server.api();
    let worker = Worker::builder(server.url.clone())
        .transport(Transport::Grpc)
        .handle("echo", |_: TaskContext, p: serde_json::Value| async move {
            Ok(p)
        })
        .build()
        .expect("worker");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(async move {
        worker
            .run(async move {
                let _ = stop_rx.await;
            })
            .await
    });
    let deadline = Instant::now() + PATIENCE;
    let first = loop {
        let workers = api.workers().await;
        if let Some(w) = workers.first() {
            break w["id"].clone();
        }
        assert!(Instant::now() < deadline, "the worker never registered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let workers = api.workers().await;
    assert_eq!(workers.len(), 1, "{workers:?}");
    assert_eq!(workers[0]["id"], first, "the stream was cut and reopened");
    let id = api.submit_id("echo", serde_json::json!({"n": 1})).await;
    let done = api
        .wait_task(&id, PATIENCE, |t| t["state"] == "succeeded")
        .await;
    assert_eq!(done["result"], serde_json::json!({"n": 1}));
    let _ = stop_tx.send(());
    let _ = running.await;
}

#[tokio::test]
async fn a_heartbeat_with_a_body_keeps_its_connection() {
    let server = Server::start().await;
    let worker = server.api().register(&["t"], 1).await;
    let mut conn = connect(&server).await;
    for _ in 0..3 {
        // Head and body in separate writes, as many clients send them.
        let head = format!(
            "POST /v1/workers/{worker}/heartbeat HTTP/1.1\r\nhost: x\r\n\
             content-type: application/json\r\ncontent-length: 2\r\n\r\n"
        );
        conn.write_all(head.as_bytes()).await.expect("write head");
        conn.flush().await.expect("flush");
        tokio::time::sleep(Duration::from_millis(50)).await;
        conn.write_all(b"{}").await.expect("write body");
        let answer = read_answer(&mut conn).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let answer = healthz_on(&mut conn).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
}

/// The pid of the `dispatch server` whose data folder is `data`.
fn server_pid(data: &std::path::Path) -> u32 {
    let data = data.to_str().unwrap();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.contains(&&b"server"[..]) && args.contains(&data.as_bytes()) {
            return pid;
        }
    }
    panic!("no server process for {data}");
}

/// The soft and hard limits of open files of a process.
fn open_files(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let fields: Vec<&str> = line.split_whitespace().collect();
    (fields[3].to_owned(), fields[4].to_owned())
}

#[tokio::test]
async fn the_server_raises_its_open_files_limit_to_the_hard_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    // The server inherits a low soft limit from this process (the other
    // tests here need far fewer files).
    let mine = getrlimit(Resource::Nofile);
    if mine.maximum.is_some_and(|hard| hard <= 512) {
        return; // nothing to raise on this machine
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(512),
            maximum: mine.maximum,
        },
    )
    .expect("lower the soft limit");
    let server = Server::start().await;
    let pid = server_pid(server.data_dir());
    let (soft, hard) = open_files(pid);
    assert_eq!(soft, hard, "soft {soft}, hard {hard}");
    assert_ne!(soft, "512");
}
