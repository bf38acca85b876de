//! HTTPS on the one listener: REST (HTTP/1.1 and HTTP/2) and gRPC (HTTP/2)
//! behind rustls with the `ring` provider.
//!
//! [`TlsFiles`] names a PEM certificate chain and a PEM private key;
//! [`acceptor`] loads and checks them at start-up, so a wrong file stops the
//! server with an error naming it rather than failing every handshake.
//! The server offers `h2` and `http/1.1` by ALPN; the connection loop
//! (`crate::serve`) serves the one negotiated.
//!
//! [`TlsListener`] is the listener of that loop: it accepts TCP
//! connections and runs their handshakes concurrently (each in its own
//! task, bounded in number and in time), handing over only the streams
//! whose handshake succeeded. A client that fails its handshake, or sends
//! plain HTTP, costs one debug line and never stops the accept loop; plain
//! HTTP is answered `400` with a hint to use `https://`, as Go's server
//! does.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How long a client has to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress at most; past this, new connections wait in the
/// kernel's accept queue.
const MAX_HANDSHAKES: usize = 1024;

/// The body of the answer to a plain-HTTP request on the TLS port.
const PLAIN_HTTP_BODY: &str = "this server speaks HTTPS only: use an https:// URL\n";

/// The certificate and key the server presents.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// PEM file with the certificate chain, the server's certificate first.
    pub cert: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Why the certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        /// `the TLS certificate` or `the TLS key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// A file is not the PEM it should be.
    #[error("{path} is not a usable {what}: {reason}")]
    Pem {
        /// `PEM certificate chain` or `PEM private key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the pair (the key does not match the certificate, an
    /// unsupported key type).
    #[error("cannot use the certificate {cert} with the key {key}: {source}")]
    Pair {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        source: rustls::Error,
    },
    /// The TLS settings a standby forwards with could not be made.
    #[error("cannot set up TLS to forward to the leader: {0}")]
    Forwarding(rustls::Error),
}

/// Loads and checks the certificate chain and key, and makes the acceptor
/// that offers `h2` and `http/1.1`.
pub(crate) fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, TlsError> {
    let certs = load_certs(&files.cert)?;
    let key = load_key(&files.key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let pair_error = |source| TlsError::Pair {
        cert: files.cert.clone(),
        key: files.key.clone(),
        source,
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(pair_error)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(pair_error)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The acceptor in force and the files it came from: [`Self::reload`]
/// reads them again (SIGHUP, or a change of either file, see
/// `crate::reload`); connections accepted after that get the new
/// certificate, those open keep theirs. A pair that does not load leaves
/// the acceptor in force as it was.
pub(crate) struct ReloadableAcceptor {
    files: TlsFiles,
    current: std::sync::RwLock<TlsAcceptor>,
}

impl ReloadableAcceptor {
    /// Loads the pair once, checked like at start-up.
    pub(crate) fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        Ok(ReloadableAcceptor {
            current: std::sync::RwLock::new(acceptor(files)?),
            files: files.clone(),
        })
    }

    /// The files it reads.
    pub(crate) fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// The acceptor for the next connection.
    fn get(&self) -> TlsAcceptor {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads the pair again and puts it in force.
    pub(crate) fn reload(&self) -> Result<(), TlsError> {
        let fresh = acceptor(&self.files)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }
}

/// The TLS settings a standby forwards to the leader with: the replicas
/// trust the certificates of this server's own chain (`--tls-cert`), as
/// replicas of one cluster share a certificate or its authority.
pub(crate) fn forwarding_config(
    files: Option<&TlsFiles>,
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    if let Some(files) = files {
        for cert in load_certs(&files.cert)? {
            // A certificate that cannot be an anchor is skipped: the
            // others may be.
            let _ = roots.add(cert);
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Forwarding)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    const WHAT: &str = "PEM certificate chain";
    let pem = read("the TLS certificate", path)?;
    let bad = |reason: String| TlsError::Pem {
        what: WHAT,
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no CERTIFICATE section found".into()));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read("the TLS key", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Pem {
        what: "PEM private key",
        path: path.to_owned(),
        reason: match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "no PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY section found".into()
            }
            other => other.to_string(),
        },
    })
}

/// The `axum::serve` listener of a TLS server: TCP accepts, concurrent
/// handshakes, completed TLS streams out.
pub(crate) struct TlsListener {
    tcp: TcpListener,
    acceptor: Arc<ReloadableAcceptor>,
    handshakes: JoinSet<Option<(TlsStream<TcpStream>, SocketAddr)>>,
}

impl TlsListener {
    pub(crate) fn new(tcp: TcpListener, acceptor: Arc<ReloadableAcceptor>) -> Self {
        TlsListener {
            tcp,
            acceptor,
            handshakes: JoinSet::new(),
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    // Cancel-safe, as `axum::serve` needs when shutdown wins the race:
    // both awaited futures are, and nothing else awaits.
    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            tokio::select! {
                accepted = self.tcp.accept(), if self.handshakes.len() < MAX_HANDSHAKES => {
                    match accepted {
                        Ok((tcp, peer)) => {
                            let acceptor = self.acceptor.get();
                            self.handshakes.spawn(handshake(acceptor, tcp, peer));
                        }
                        Err(e) => accept_error(e).await,
                    }
                }
                Some(done) = self.handshakes.join_next(), if !self.handshakes.is_empty() => {
                    if let Ok(Some(stream)) = done {
                        return stream;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// One client's handshake; `None` when it failed (logged at debug: a
/// client's mistake is not the server's error).
async fn handshake(
    acceptor: TlsAcceptor,
    mut tcp: TcpStream,
    peer: SocketAddr,
) -> Option<(TlsStream<TcpStream>, SocketAddr)> {
    let work = async {
        // A TLS connection opens with a handshake record (0x16); a letter
        // is the method of a plain-HTTP request.
        let mut first = [0u8; 1];
        if tcp.peek(&mut first).await? == 1 && first[0].is_ascii_alphabetic() {
            refuse_plain_http(&mut tcp).await?;
            return Err(std::io::Error::other("plain HTTP on the TLS port"));
        }
        acceptor.accept(tcp).await
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, work).await {
        Ok(Ok(stream)) => Some((stream, peer)),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}

/// Answers a plain-HTTP request with `400` and closes. The request head is
/// read first, so that closing does not reset the connection under the
/// client before it has read the answer.
async fn refuse_plain_http(tcp: &mut TcpStream) -> std::io::Result<()> {
    let mut head = [0u8; 4096];
    let _ = tcp.read(&mut head).await?;
    let reply = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{PLAIN_HTTP_BODY}",
        PLAIN_HTTP_BODY.len()
    );
    tcp.write_all(reply.as_bytes()).await?;
    tcp.shutdown().await
}

/// What `axum::serve`'s own TCP listener does with an accept error: a
/// connection that died in the queue is skipped, anything else (out of
/// file descriptors) is waited out.
async fn accept_error(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accept failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn new() -> Self {
            Files {
                dir: tempfile::tempdir().expect("temp dir"),
            }
        }

        fn write(&self, name: &str, text: &str) -> PathBuf {
            let path = self.dir.path().join(name);
            std::fs::write(&path, text).expect("write");
            path
        }
    }

    fn self_signed() -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    fn load(cert: PathBuf, key: PathBuf) -> Result<TlsAcceptor, TlsError> {
        acceptor(&TlsFiles { cert, key })
    }

    #[test]
    fn a_matching_pair_loads() {
        let f = Files::new();
        let (cert, key) = self_signed();
        let acceptor = load(f.write("c.pem", &cert), f.write("k.pem", &key)).expect("loads");
        assert_eq!(
            acceptor.config().alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }

    #[test]
    fn a_missing_file_is_named() {
        let f = Files::new();
        let (_, key) = self_signed();
        let missing = f.dir.path().join("nope.pem");
        let e = load(missing.clone(), f.write("k.pem", &key))
            .err()
            .expect("fails");
        assert!(matches!(e, TlsError::Read { .. }), "{e:?}");
        let text = e.to_string();
        assert!(
            text.starts_with("cannot read the TLS certificate"),
            "{text}"
        );
        assert!(text.contains(&missing.display().to_string()), "{text}");
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        let f = Files::new();
        let (_, key) = self_signed();
        let garbage = f.write("c.pem", "this is not PEM\n");
        let e = load(garbage.clone(), f.write("k.pem", &key))
            .err()
            .expect("fails");
        let text = e.to_string();
        assert!(
            text.contains(&garbage.display().to_string())
                && text.contains("no CERTIFICATE section"),
            "{text}"
        );
    }

    #[test]
    fn a_broken_pem_section_is_named() {
        let f = Files::new();
        let (_, key) = self_signed();
        let broken = f.write(
            "c.pem",
            "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
        );
        let e = load(broken.clone(), f.write("k.pem", &key))
            .err()
            .expect("fails");
        assert!(matches!(e, TlsError::Pem { .. }), "{e:?}");
        assert!(e.to_string().contains("PEM certificate chain"), "{e}");
    }

    #[test]
    fn a_certificate_is_not_a_key() {
        let f = Files::new();
        let (cert, _) = self_signed();
        let key_path = f.write("k.pem", &cert);
        let e = load(f.write("c.pem", &cert), key_path.clone())
            .err()
            .expect("fails");
        let text = e.to_string();
        assert!(
            text.contains(&key_path.display().to_string()) && text.contains("PRIVATE KEY"),
            "{text}"
        );
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let f = Files::new();
        let (cert, _) = self_signed();
        let (_, other_key) = self_signed();
        let e = load(f.write("c.pem", &cert), f.write("k.pem", &other_key))
            .err()
            .expect("fails");
        assert!(
            matches!(
                e,
                TlsError::Pair {
                    source: rustls::Error::InconsistentKeys(_),
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(
            e.to_string().starts_with("cannot use the certificate"),
            "{e}"
        );
    }
}
