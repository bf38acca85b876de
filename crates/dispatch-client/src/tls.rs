//! Which servers a client trusts over `https://`.
//!
//! A [`TrustStore`] holds the certificate authorities a server's certificate
//! may chain to: the operating system's (read from its store by
//! rustls-native-certs, so the CAs an administrator installed count), plus
//! any given in PEM, such as the private CA that signed a Dispatch
//! server's certificate (`--ca`). Its rustls configurations name the `ring`
//! provider themselves, so no process-wide provider has to be installed.
//! The worker SDK hands the same roots to its gRPC channel.

use std::sync::{Arc, OnceLock};

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// Why a trust store could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The CA certificate given is not usable PEM.
    #[error("not a usable PEM CA certificate: {0}")]
    BadCa(String),
    /// No certificate authority to trust at all.
    #[error(
        "no trusted certificate authorities: the system's store has none and no CA certificate was given"
    )]
    NoRoots,
    /// rustls refused the configuration.
    #[error("cannot set up TLS: {0}")]
    Config(#[from] rustls::Error),
}

/// The certificate authorities a client trusts. Cheap to clone.
#[derive(Clone, Debug)]
pub struct TrustStore {
    roots: Arc<RootCertStore>,
}

impl TrustStore {
    /// The operating system's certificate authorities.
    pub fn system() -> Result<TrustStore, TlsError> {
        let roots = system_roots().clone();
        if roots.is_empty() {
            return Err(TlsError::NoRoots);
        }
        Ok(TrustStore {
            roots: Arc::new(roots),
        })
    }

    /// The operating system's certificate authorities plus every
    /// certificate in `pem` (a private CA).
    pub fn with_ca_pem(pem: &[u8]) -> Result<TrustStore, TlsError> {
        let mut roots = system_roots().clone();
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::BadCa(e.to_string()))?;
        if certs.is_empty() {
            return Err(TlsError::BadCa("no CERTIFICATE section found".into()));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| TlsError::BadCa(e.to_string()))?;
        }
        Ok(TrustStore {
            roots: Arc::new(roots),
        })
    }

    /// Trusts no one: for a client that only speaks `http://`.
    pub fn empty() -> TrustStore {
        TrustStore {
            roots: Arc::new(RootCertStore::empty()),
        }
    }

    /// The trusted roots.
    pub fn roots(&self) -> &RootCertStore {
        &self.roots
    }

    /// A rustls client configuration that trusts these roots, with the
    /// `ring` provider and the safe default protocol versions, offering
    /// `alpn` (e.g. `http/1.1`).
    pub fn client_config(&self, alpn: &[&[u8]]) -> Result<rustls::ClientConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(self.roots.clone())
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }
}

/// The system's roots, read once per process. Certificates the store holds
/// but rustls cannot parse are skipped, as browsers do.
fn system_roots() -> &'static RootCertStore {
    static ROOTS: OnceLock<RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        // Errors reading the store are not fatal (a missing folder is
        // normal on minimal systems): with no roots at all, a store made
        // without a CA answers `TlsError::NoRoots`.
        let found = rustls_native_certs::load_native_certs();
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(found.certs);
        roots
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_not_a_ca() {
        let e = TrustStore::with_ca_pem(b"hello").expect_err("refused");
        assert_eq!(
            e.to_string(),
            "not a usable PEM CA certificate: no CERTIFICATE section found"
        );
    }

    #[test]
    fn a_broken_section_is_not_a_ca() {
        let pem = b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n";
        let e = TrustStore::with_ca_pem(pem).expect_err("refused");
        assert!(matches!(e, TlsError::BadCa(_)), "{e:?}");
    }

    #[test]
    fn the_config_offers_the_given_protocols() {
        let config = TrustStore::empty()
            .client_config(&[b"http/1.1"])
            .expect("config");
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }
}
