//! The server's certificate: from the configured paths, or self-signed in
//! the data directory on first start (and reused after).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::limits::{MAX_UNAUTHENTICATED_STREAMS, UNAUTHENTICATED_RECEIVE_WINDOW_BYTES};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("certificate generation failed: {0}")]
    Generate(String),
    #[error("TLS setup failed: {0}")]
    Rustls(String),
}

/// The certificate the server presents, and where a client finds it.
pub struct ServerIdentity {
    pub certificates: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub cert_path: PathBuf,
    /// SHA-256 of the leaf certificate, hex, colon-separated.
    pub fingerprint: String,
}

fn file_error(path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

fn read_pem(
    cert_path: &Path,
    key_path: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let cert_bytes = std::fs::read(cert_path).map_err(|e| file_error(cert_path, e))?;
    let certificates = rustls_pemfile::certs(&mut cert_bytes.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(cert_path, e))?;
    if certificates.is_empty() {
        return Err(file_error(cert_path, "no certificate in the file"));
    }
    let key_bytes = std::fs::read(key_path).map_err(|e| file_error(key_path, e))?;
    let key = rustls_pemfile::private_key(&mut key_bytes.as_slice())
        .map_err(|e| file_error(key_path, e))?
        .ok_or_else(|| file_error(key_path, "no private key in the file"))?;
    Ok((certificates, key))
}

/// The self-signed certificate's file in the data directory (clients on
/// the same host find it there).
pub const CERT_FILE: &str = "cert.pem";

/// Loads the configured certificate, or the one made before in `data_dir`,
/// or makes a self-signed one there for localhost, 127.0.0.1 and ::1.
pub fn load_or_create(
    cert: Option<(&Path, &Path)>,
    data_dir: &Path,
) -> Result<ServerIdentity, TlsError> {
    let (cert_path, key_path) = match cert {
        Some((cert, key)) => (cert.to_path_buf(), key.to_path_buf()),
        None => {
            let (cert, key) = (data_dir.join(CERT_FILE), data_dir.join("key.pem"));
            if !cert.exists() || !key.exists() {
                std::fs::create_dir_all(data_dir).map_err(|e| file_error(data_dir, e))?;
                let names = vec![
                    "localhost".to_string(),
                    "127.0.0.1".to_string(),
                    "::1".to_string(),
                ];
                let generated = rcgen::generate_simple_self_signed(names)
                    .map_err(|e| TlsError::Generate(e.to_string()))?;
                write_private(&key, generated.signing_key.serialize_pem().as_bytes())?;
                std::fs::write(&cert, generated.cert.pem()).map_err(|e| file_error(&cert, e))?;
            }
            (cert, key)
        }
    };
    let (certificates, key) = read_pem(&cert_path, &key_path)?;
    let fingerprint = fingerprint(&certificates[0]);
    Ok(ServerIdentity {
        certificates,
        key,
        cert_path,
        fingerprint,
    })
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(|e| file_error(path, e))?;
    file.write_all(bytes).map_err(|e| file_error(path, e))
}

pub fn fingerprint(certificate: &CertificateDer<'_>) -> String {
    let digest = Sha256::digest(certificate.as_ref());
    digest
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Bytes a connection's peer may send ahead of what the server has read,
/// once its `Hello` succeeded: sized for pipelining thousands of small
/// frames on each of many streams.
pub const RECEIVE_WINDOW_BYTES: u32 = 32 << 20;

/// QUIC server config: TLS 1.3, ALPN `omniroute/1`. A new connection gets
/// the small stream count and receive window of one without a `Hello`
/// (`MAX_UNAUTHENTICATED_STREAMS`, `UNAUTHENTICATED_RECEIVE_WINDOW_BYTES`);
/// its `Hello` raises them to `server.max_streams_per_connection` and
/// [`RECEIVE_WINDOW_BYTES`].
pub fn quic_server_config(identity: &ServerIdentity) -> Result<quinn::ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(identity.certificates.clone(), identity.key.clone_key())
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    tls.alpn_protocols = vec![omniroute_protocol::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(MAX_UNAUTHENTICATED_STREAMS.into())
        .max_concurrent_uni_streams(0u32.into())
        .stream_receive_window((8u32 << 20).into())
        .receive_window(UNAUTHENTICATED_RECEIVE_WINDOW_BYTES.into())
        .send_window(32 << 20)
        .max_idle_timeout(Some(
            std::time::Duration::from_secs(60)
                .try_into()
                .expect("60 s fits"),
        ));
    config.transport_config(Arc::new(transport));
    Ok(config)
}
