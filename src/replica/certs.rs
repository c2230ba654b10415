//! The replicas' certificates: one cluster CA signs a certificate per
//! replica, whose only name (`replica-<id>`) is who it is. Each replica
//! presents its certificate both as the server of the connections it
//! accepts and as the client of the ones it makes, and trusts only the
//! cluster CA: holding a certificate the CA signed is what admits a peer.

use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

use crate::private_files;

/// The cluster CA's certificate and key, in the directory `generate` fills.
pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca.key";

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file could not be read, written or understood.
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    /// `generate` never overwrites: a cluster's keys are made once.
    #[error("{0}: already exists, not overwritten")]
    Exists(PathBuf),
    /// Replica ids are raft-rs's: not 0, each once.
    #[error("replica id {0} refused: ids are not 0 and each is given once")]
    Id(u64),
    /// rcgen refused the parameters or failed to sign.
    #[error("certificate generation failed: {0}")]
    Generate(String),
}

fn file_error(path: &Path, message: impl std::fmt::Display) -> CertError {
    CertError::File {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// The name replica `id`'s certificate carries, and the name a peer
/// connects to it by.
pub fn replica_name(id: u64) -> String {
    format!("replica-{id}")
}

/// The certificate and key files of replica `id` in `dir`.
pub fn replica_files(dir: &Path, id: u64) -> (PathBuf, PathBuf) {
    let name = replica_name(id);
    (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    )
}

/// Makes a cluster CA in `dir` (`ca.pem`, `ca.key`) and, signed by it, a
/// certificate and key for each of `ids` (`replica-<id>.pem`,
/// `replica-<id>.key`). Keys are owner-only. Refuses, before writing
/// anything, if any of these files exists.
pub fn generate(dir: &Path, ids: &[u64]) -> Result<(), CertError> {
    for (at, &id) in ids.iter().enumerate() {
        if id == 0 || ids[..at].contains(&id) {
            return Err(CertError::Id(id));
        }
    }
    let mut paths = vec![dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE)];
    for &id in ids {
        let (cert, key) = replica_files(dir, id);
        paths.extend([cert, key]);
    }
    if let Some(existing) = paths.iter().find(|path| path.exists()) {
        return Err(CertError::Exists(existing.clone()));
    }
    private_files::create_dir_all(dir).map_err(|e| file_error(dir, e))?;

    let generate_error = |e: rcgen::Error| CertError::Generate(e.to_string());
    let ca_key = KeyPair::generate().map_err(generate_error)?;
    let ca_params = ca_params().map_err(generate_error)?;
    let ca_cert = ca_params.self_signed(&ca_key).map_err(generate_error)?;
    write_new(&dir.join(CA_CERT_FILE), ca_cert.pem().as_bytes(), false)?;
    write_new(
        &dir.join(CA_KEY_FILE),
        ca_key.serialize_pem().as_bytes(),
        true,
    )?;

    let issuer = Issuer::new(ca_params, ca_key);
    for &id in ids {
        let key = KeyPair::generate().map_err(generate_error)?;
        let cert = replica_params(id)
            .and_then(|params| params.signed_by(&key, &issuer))
            .map_err(generate_error)?;
        let (cert_path, key_path) = replica_files(dir, id);
        write_new(&cert_path, cert.pem().as_bytes(), false)?;
        write_new(&key_path, key.serialize_pem().as_bytes(), true)?;
    }
    Ok(())
}

fn ca_params() -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "omniroute cluster CA");
    // It signs replica certificates only, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

fn replica_params(id: u64) -> Result<CertificateParams, rcgen::Error> {
    let name = replica_name(id);
    let mut params = CertificateParams::new(vec![name.clone()])?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // A replica is the server of the connections it accepts and the client
    // of those it makes, with the same certificate.
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// Writes a file that must not exist yet; `private`: owner-only.
fn write_new(path: &Path, bytes: &[u8], private: bool) -> Result<(), CertError> {
    let mut options = if private {
        private_files::options()
    } else {
        std::fs::OpenOptions::new()
    };
    let mut file = options
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => CertError::Exists(path.to_path_buf()),
            _ => file_error(path, e),
        })?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| file_error(path, e))
}

/// What a replica needs for mutual TLS with its peers: the cluster CA it
/// trusts, and its own certificate and key.
pub struct ClusterTls {
    /// The cluster CA, the only root a peer's certificate may chain to.
    pub roots: RootCertStore,
    /// This replica's certificate (and any intermediates after it).
    pub certificates: Vec<CertificateDer<'static>>,
    /// This replica's private key.
    pub key: PrivateKeyDer<'static>,
}

impl ClusterTls {
    /// Reads the CA certificate, this replica's certificate and its key
    /// (PEM); an error names the file.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<ClusterTls, CertError> {
        let mut roots = RootCertStore::empty();
        for certificate in read_certificates(ca)? {
            roots.add(certificate).map_err(|e| file_error(ca, e))?;
        }
        let certificates = read_certificates(cert)?;
        let key_bytes = std::fs::read(key).map_err(|e| file_error(key, e))?;
        let key_der = rustls_pemfile::private_key(&mut key_bytes.as_slice())
            .map_err(|e| file_error(key, e))?
            .ok_or_else(|| file_error(key, "no private key in the file"))?;
        Ok(ClusterTls {
            roots,
            certificates,
            key: key_der,
        })
    }
}

/// The certificates of a PEM file, at least one.
fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let bytes = std::fs::read(path).map_err(|e| file_error(path, e))?;
    let certificates = rustls_pemfile::certs(&mut bytes.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certificates.is_empty() {
        return Err(file_error(path, "no certificate in the file"));
    }
    Ok(certificates)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::scratch::Scratch;

    // generate writes the CA and one pair per replica, keys owner-only, and
    // load reads each replica's files back.
    #[test]
    fn generate_then_load() {
        let scratch = Scratch::new("certs-generate");
        generate(&scratch.0, &[1, 2, 3]).expect("generated");
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&scratch.0.join(CA_KEY_FILE)), 0o600);
        for id in [1, 2, 3] {
            let (cert, key) = replica_files(&scratch.0, id);
            assert_eq!(mode(&key), 0o600);
            let tls = ClusterTls::load(&scratch.0.join(CA_CERT_FILE), &cert, &key).expect("loads");
            assert_eq!(tls.roots.len(), 1);
            assert_eq!(tls.certificates.len(), 1);
        }
    }

    // generate refuses to overwrite a cluster's files, and writes nothing
    // when it refuses; bad ids are refused.
    #[test]
    fn generate_refuses_existing_files_and_bad_ids() {
        let scratch = Scratch::new("certs-refuse");
        generate(&scratch.0, &[1]).expect("generated");
        let before = std::fs::read(scratch.0.join(CA_CERT_FILE)).unwrap();
        let refused = generate(&scratch.0, &[1, 2]);
        assert!(matches!(refused, Err(CertError::Exists(_))), "{refused:?}");
        assert_eq!(std::fs::read(scratch.0.join(CA_CERT_FILE)).unwrap(), before);
        assert!(!replica_files(&scratch.0, 2).0.exists());

        let fresh = Scratch::new("certs-ids");
        assert!(matches!(generate(&fresh.0, &[0]), Err(CertError::Id(0))));
        assert!(matches!(generate(&fresh.0, &[2, 2]), Err(CertError::Id(2))));
    }

    // load's errors name the file that is missing or holds no PEM.
    #[test]
    fn load_errors_name_the_file() {
        let scratch = Scratch::new("certs-load");
        generate(&scratch.0, &[1]).expect("generated");
        let (cert, key) = replica_files(&scratch.0, 1);
        let missing = scratch.0.join("nope.pem");
        let error = ClusterTls::load(&missing, &cert, &key)
            .err()
            .expect("refused");
        assert!(error.to_string().contains("nope.pem"), "{error}");
        // A key file given as the certificate has no certificate in it.
        let error = ClusterTls::load(&scratch.0.join(CA_CERT_FILE), &key, &key)
            .err()
            .expect("refused");
        assert!(error.to_string().contains("replica-1.key"), "{error}");
        assert!(error.to_string().contains("no certificate"), "{error}");
        let error = ClusterTls::load(&scratch.0.join(CA_CERT_FILE), &cert, &cert)
            .err()
            .expect("refused");
        assert!(error.to_string().contains("no private key"), "{error}");
    }
}
