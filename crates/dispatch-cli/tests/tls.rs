//! TLS against the real binary: `dispatch server --tls-cert --tls-key` with
//! a CA and a server certificate for 127.0.0.1 and localhost made here with
//! rcgen; the CLI with `--ca`, SDK workers on both transports, the generic
//! worker, clients that do not trust the CA, plain HTTP on the TLS port,
//! and bearer tokens over TLS.

mod common;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, POLL_EVERY, Server, create_token, id_of, ok, run_cli, stderr, unique_type};
use dispatch_client::{Client, ClientError, TrustStore};
use dispatch_worker::{TaskContext, TaskError, Transport, Worker};
use serde_json::{Value, json};

/// How long anything here may take to happen.
const WITHIN: Duration = Duration::from_secs(10);

/// A private CA and a server certificate it signed, as PEM files.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// A CA named "Dispatch test CA" and a certificate for `localhost` and
    /// `127.0.0.1` signed by it, with their keys.
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Dispatch test CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA cert");
        let key = rcgen::KeyPair::generate().expect("server key");
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("server params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "dispatch server");
        let cert = params.signed_by(&key, &ca).expect("server cert");
        let pki = Pki { dir };
        std::fs::write(pki.ca(), ca.pem()).expect("write ca.pem");
        std::fs::write(pki.cert(), cert.pem()).expect("write cert.pem");
        std::fs::write(pki.key(), key.serialize_pem()).expect("write key.pem");
        pki
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }

    fn trust(&self) -> TrustStore {
        let pem = std::fs::read(self.ca()).expect("read ca.pem");
        TrustStore::with_ca_pem(&pem).expect("a usable CA")
    }

    /// A TLS server with this certificate and `args`.
    async fn server(&self, args: &[&str]) -> Server {
        let cert = self.cert();
        let key = self.key();
        let mut all = vec![
            "--tls-cert",
            cert.to_str().expect("utf-8 path"),
            "--tls-key",
            key.to_str().expect("utf-8 path"),
        ];
        all.extend_from_slice(args);
        Server::with_tls(&self.ca(), &all).await
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[tokio::test]
async fn the_cli_submits_and_shows_a_task_over_https_with_its_ca() {
    let pki = Pki::new();
    let server = pki.server(&[]).await;
    assert!(
        server.url.starts_with("https://127.0.0.1:"),
        "{}",
        server.url
    );
    let ca = pki.ca();
    let out = run_cli(
        &[
            "--server",
            &server.url,
            "--ca",
            path(&ca),
            "--json",
            "submit",
            "tls.cli",
            "--payload",
            r#"{"n":1}"#,
        ],
        &[],
    );
    let task: Value = serde_json::from_str(&ok(&out)).expect("JSON task");
    let id = id_of(&task);
    // DISPATCH_CA does what --ca does, and the host may be a name too.
    let by_name = server.url.replace("127.0.0.1", "localhost");
    let out = run_cli(
        &["--server", &by_name, "--json", "task", &id],
        &[("DISPATCH_CA", path(&ca))],
    );
    let shown: Value = serde_json::from_str(&ok(&out)).expect("JSON task");
    assert_eq!(shown["id"], task["id"]);
    assert_eq!(shown["payload"], json!({"n": 1}));
}

#[tokio::test]
async fn clients_that_do_not_trust_the_ca_are_refused() {
    let pki = Pki::new();
    let server = pki.server(&[]).await;
    let out = run_cli(&["--server", &server.url, "tasks"], &[]);
    assert!(!out.status.success(), "trusted without the CA");
    let err = stderr(&out);
    assert!(
        err.contains("certificate is not trusted")
            && err.contains("--ca")
            && err.contains("invalid peer certificate"),
        "{err}"
    );
    // Another CA is no better.
    let other = Pki::new();
    let out = run_cli(
        &["--server", &server.url, "--ca", path(&other.ca()), "tasks"],
        &[],
    );
    assert!(!out.status.success(), "trusted with another CA");
    assert!(
        stderr(&out).contains("invalid peer certificate"),
        "{}",
        stderr(&out)
    );
    // A --ca that is not a certificate is named.
    let out = run_cli(
        &["--server", &server.url, "--ca", path(&pki.key()), "tasks"],
        &[],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("--ca {}", path(&pki.key())))
            && stderr(&out).contains("no CERTIFICATE section"),
        "{}",
        stderr(&out)
    );
    // The Rust client without the CA fails to connect, with rustls' reason.
    let client = Client::with_trust(&server.url, &TrustStore::empty()).expect("client");
    match client.health().await {
        Err(e @ ClientError::Unreachable { .. }) => {
            let chain = error_chain(&e);
            assert!(chain.contains("invalid peer certificate"), "{chain}");
        }
        other => panic!("expected a certificate error, got {other:?}"),
    }
    // Refused handshakes are the client's business: the server goes on
    // and says nothing above debug level about them.
    server.api().get("/healthz").await.expect(200);
    let logs = server.logs();
    assert!(
        !logs.contains("ERROR") && !logs.contains("handshake"),
        "{logs}"
    );
}

#[tokio::test]
async fn plain_http_on_the_tls_port_fails_cleanly_and_the_server_goes_on() {
    let pki = Pki::new();
    let server = pki.server(&[]).await;
    let plain = server.url.replace("https://", "http://");
    let resp = reqwest::Client::new()
        .get(format!("{plain}/healthz"))
        .send()
        .await
        .expect("an answer, not a reset");
    assert_eq!(resp.status().as_u16(), 400);
    let text = resp.text().await.expect("body");
    assert!(text.contains("https://"), "{text}");
    // Bytes that are neither HTTP nor TLS: the connection is closed.
    let addr = server.url.trim_start_matches("https://").to_owned();
    let mut tcp = TcpStream::connect(&addr).expect("connect");
    tcp.set_read_timeout(Some(WITHIN)).expect("timeout");
    tcp.write_all(&[0u8; 64]).expect("write");
    let mut rest = Vec::new();
    let _ = tcp.read_to_end(&mut rest);
    assert!(rest.len() < 64, "no HTTP answer to garbage: {rest:?}");
    // A client that connects and says nothing does not hold up the others.
    let _silent = TcpStream::connect(&addr).expect("connect");
    let api = server.api();
    for _ in 0..3 {
        api.get("/healthz").await.expect(200);
    }
    let out = run_cli(
        &["--server", &server.url, "--ca", path(&pki.ca()), "tasks"],
        &[],
    );
    ok(&out);
    let logs = server.logs();
    assert!(!logs.contains("ERROR"), "{logs}");
}

#[tokio::test]
async fn sdk_workers_run_tasks_over_tls_on_both_transports() {
    let pki = Pki::new();
    let server = pki.server(&[]).await;
    let api = server.api();
    for transport in [Transport::Http, Transport::Grpc] {
        let kind = unique_type("tls.sdk");
        let name = format!("tls-{transport:?}").to_lowercase();
        let worker = Worker::builder(server.url.clone())
            .trust(pki.trust())
            .transport(transport)
            .name(name.clone())
            .concurrency(2)
            .poll_wait(Duration::from_millis(500))
            .handle(
                kind.clone(),
                |ctx: TaskContext, payload: Value| async move {
                    Ok::<_, TaskError>(json!({"echo": payload, "attempt": ctx.attempt}))
                },
            )
            .build()
            .expect("worker");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(worker.run(async move {
            let _ = stopped.await;
        }));
        let id = api.submit_id(&kind, json!({"over": "tls"})).await;
        let done = api
            .wait_task(&id, WITHIN, |t| t["state"] == "succeeded")
            .await;
        assert_eq!(
            done["result"]["echo"],
            json!({"over": "tls"}),
            "{transport:?}"
        );
        let workers = api.workers().await;
        assert!(
            workers.iter().any(|w| w["name"] == name.as_str()),
            "{transport:?}: {workers:?}"
        );
        let _ = stop.send(());
        tokio::time::timeout(WITHIN, running)
            .await
            .expect("the worker stops")
            .expect("join")
            .expect("the worker ran");
    }
}

/// A `dispatch worker` child process, SIGKILLed and reaped when dropped.
struct WorkerProcess(Child);

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_generic_worker_runs_tasks_over_https() {
    let pki = Pki::new();
    let server = pki.server(&[]).await;
    let api = server.api();
    let kind = unique_type("tls.generic");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("worker.toml");
    std::fs::write(
        &config,
        format!(
            "server = \"{}\"\nname = \"tls-generic\"\n[types.\"{kind}\"]\ncommand = [\"cat\"]\n",
            server.url
        ),
    )
    .expect("write worker.toml");
    let child = Command::new(BIN)
        .args(["worker", "--config", path(&config), "--ca", path(&pki.ca())])
        .env_remove("DISPATCH_SERVER")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn dispatch worker");
    let _worker = WorkerProcess(child);
    let deadline = Instant::now() + WITHIN;
    while !api
        .workers()
        .await
        .iter()
        .any(|w| w["name"] == "tls-generic")
    {
        assert!(
            Instant::now() < deadline,
            "the generic worker did not register"
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
    let id = api.submit_id(&kind, json!({"piped": true})).await;
    let done = api
        .wait_task(&id, WITHIN, |t| t["state"] == "succeeded")
        .await;
    assert_eq!(done["result"], json!({"piped": true}));
}

#[tokio::test]
async fn tokens_still_guard_a_tls_server() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let tokens = dir.path().join("tokens");
    let token = create_token(&tokens, "admin", "ops");
    let server = pki.server(&["--tokens", path(&tokens)]).await;
    let api = server.api();
    let refused = api.get("/v1/tasks").await;
    refused.expect(401);
    let ca = pki.ca();
    let out = run_cli(&["--server", &server.url, "--ca", path(&ca), "tasks"], &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--token"), "{}", stderr(&out));
    let out = run_cli(
        &[
            "--server",
            &server.url,
            "--ca",
            path(&ca),
            "--token",
            &token,
            "submit",
            "tls.token",
        ],
        &[],
    );
    assert!(ok(&out).contains("submitted task"), "{}", ok(&out));
}

/// An error and its causes, joined.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}
