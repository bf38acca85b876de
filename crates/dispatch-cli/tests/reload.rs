//! Reloading without a restart, against the real binary: the token file
//! (on SIGHUP alone, and on a change of the file alone; a bad file keeps
//! the tokens in force), `dispatch token list` and `revoke`, and the TLS
//! certificate (a new pair serves new connections; a bad one keeps the
//! old).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Server, create_token, ok, run_cli, stderr};
use dispatch_client::{Client, TrustStore};
use serde_json::Value;

const WITHIN: Duration = Duration::from_secs(10);

/// The status of `GET /v1/queues` with `token`.
async fn status_with(url: &str, token: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("{url}/v1/queues"))
        .bearer_auth(token)
        .send()
        .await
        .expect("an answer")
        .status()
        .as_u16()
}

/// Waits until `token` gets `want`; panics after `WITHIN`.
async fn until_status(url: &str, token: &str, want: u16) {
    let deadline = Instant::now() + WITHIN;
    loop {
        let got = status_with(url, token).await;
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "still {got}, expected {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the server's log holds `text`.
fn until_logged(server: &Server, text: &str) {
    let deadline = Instant::now() + WITHIN;
    while !server.logs().contains(text) {
        assert!(
            Instant::now() < deadline,
            "no {text:?} in the log:\n{}",
            server.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Rewrites `file` with `text` of the same length and puts its
/// modification time back, so that only a SIGHUP can reveal the change.
fn rewrite_unseen(file: &Path, text: &str) {
    let before = std::fs::metadata(file).unwrap();
    assert_eq!(before.len(), text.len() as u64, "same size");
    std::fs::write(file, text).unwrap();
    let f = std::fs::File::options().write(true).open(file).unwrap();
    f.set_modified(before.modified().unwrap()).unwrap();
}

#[tokio::test]
async fn a_token_revoked_is_refused_after_sighup_alone() {
    common::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    let admin = create_token(&tokens, "admin", "ops");
    let app = create_token(&tokens, "submit", "app");
    let server = Server::with_args(&["--tokens", tokens.to_str().unwrap()]).await;
    let url = server.url.clone();
    assert_eq!(status_with(&url, &app).await, 200);

    // The app token's digest replaced by another of the same length, the
    // file's time kept: the watch cannot see it.
    let text = std::fs::read_to_string(&tokens).unwrap();
    let app_line = text
        .lines()
        .find(|l| l.contains(" app "))
        .unwrap()
        .to_owned();
    let digest = &app_line["sha256:".len().."sha256:".len() + 64];
    let other = digest.replace(&digest[..1], if &digest[..1] == "0" { "1" } else { "0" });
    rewrite_unseen(&tokens, &text.replace(digest, &other));
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(
        status_with(&url, &app).await,
        200,
        "not reloaded without a signal"
    );

    server.signal("HUP");
    until_status(&url, &app, 401).await;
    assert_eq!(status_with(&url, &admin).await, 200, "the others stay");

    // A bad file: the tokens in force stay, and the error is logged.
    let bad = format!("x{}\n", " ".repeat(text.len() - 2));
    rewrite_unseen(&tokens, &bad);
    server.signal("HUP");
    until_logged(&server, "cannot reload the token file");
    assert_eq!(status_with(&url, &admin).await, 200);
    assert_eq!(status_with(&url, &app).await, 401);
}

#[tokio::test]
async fn dispatch_token_revoke_takes_effect_when_the_file_changes() {
    common::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    let admin = create_token(&tokens, "admin", "ops");
    let app = create_token(&tokens, "submit,work", "app");
    let server = Server::with_args(&["--tokens", tokens.to_str().unwrap()]).await;
    assert_eq!(status_with(&server.url, &app).await, 200);

    // List: names, scopes and creation times; never a secret or digest.
    let out = run_cli(
        &[
            "token",
            "list",
            "--tokens",
            tokens.to_str().unwrap(),
            "--json",
        ],
        &[],
    );
    let listed: Vec<Value> = ok(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0]["name"], "ops");
    assert_eq!(listed[1]["name"], "app");
    assert_eq!(listed[1]["scopes"], serde_json::json!(["submit", "work"]));
    assert!(
        listed[1]["created"].as_str().unwrap().ends_with('Z'),
        "{}",
        listed[1]
    );
    let text = ok(&out)
        + &ok(&run_cli(
            &["token", "list", "--tokens", tokens.to_str().unwrap()],
            &[],
        ));
    assert!(!text.contains(&app) && !text.contains("sha256"), "{text}");

    let out = run_cli(
        &[
            "token",
            "revoke",
            "app",
            "--tokens",
            tokens.to_str().unwrap(),
        ],
        &[],
    );
    ok(&out);
    until_status(&server.url, &app, 401).await;
    assert_eq!(status_with(&server.url, &admin).await, 200);
    let out = run_cli(
        &[
            "token",
            "revoke",
            "app",
            "--tokens",
            tokens.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no token named"), "{}", stderr(&out));
    // A token created now is taken too.
    let fresh = create_token(&tokens, "submit", "later");
    until_status(&server.url, &fresh, 200).await;
}

/// A CA and a certificate it signed for 127.0.0.1, as PEM texts.
struct Pair {
    ca: String,
    cert: String,
    key: String,
}

fn pair(ca_name: &str) -> Pair {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, ca_name);
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    Pair {
        ca: ca.pem(),
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

/// Whether a fresh client trusting only `ca` gets an answer from `url`.
async fn trusted_by(url: &str, ca: &str) -> bool {
    let trust = TrustStore::with_ca_pem(ca.as_bytes()).unwrap();
    let client = Client::with_trust(url, &trust).unwrap();
    client.health().await.is_ok()
}

async fn until_trusted(url: &str, ca: &str) {
    let deadline = Instant::now() + WITHIN;
    while !trusted_by(url, ca).await {
        assert!(
            Instant::now() < deadline,
            "the new certificate is not served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_new_certificate_serves_new_connections_and_a_bad_one_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let (ca1, cert, key): (PathBuf, PathBuf, PathBuf) = (
        dir.path().join("ca1.pem"),
        dir.path().join("cert.pem"),
        dir.path().join("key.pem"),
    );
    let first = pair("first CA");
    std::fs::write(&ca1, &first.ca).unwrap();
    std::fs::write(&cert, &first.cert).unwrap();
    std::fs::write(&key, &first.key).unwrap();
    let server = Server::with_tls(
        &ca1,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    )
    .await;
    let url = server.url.clone();
    assert!(trusted_by(&url, &first.ca).await);
    // A connection opened before the change keeps working after it.
    let kept =
        Client::with_trust(&url, &TrustStore::with_ca_pem(first.ca.as_bytes()).unwrap()).unwrap();
    kept.health().await.expect("first answer");

    // A new pair, written in place: picked up by the watch.
    let second = pair("second CA");
    std::fs::write(&key, &second.key).unwrap();
    std::fs::write(&cert, &second.cert).unwrap();
    until_trusted(&url, &second.ca).await;
    assert!(
        !trusted_by(&url, &first.ca).await,
        "the old certificate is gone"
    );
    kept.health().await.expect("an open connection goes on");

    // A key that does not match: the pair in force stays.
    let third = pair("third CA");
    std::fs::write(&key, &third.key).unwrap();
    server.signal("HUP");
    until_logged(&server, "cannot reload the TLS certificate");
    assert!(trusted_by(&url, &second.ca).await);

    // The matching certificate completes the pair; SIGHUP loads it.
    std::fs::write(&cert, &third.cert).unwrap();
    server.signal("HUP");
    until_trusted(&url, &third.ca).await;
}
