//! The cluster's certificate authority: created on first start, it signs node
//! certificates from CSRs (naming the node the inventory says, never what the
//! CSR asks for), admin certificates, and the coordinator's own server
//! certificate; and it reads the role out of a peer's certificate.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType, SerialNumber,
};
use time::OffsetDateTime;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{action}: {source}")]
    Rcgen {
        action: &'static str,
        source: rcgen::Error,
    },
    #[error("certificate signing request: {0}")]
    Csr(rcgen::Error),
    #[error("peer certificate: {0}")]
    Peer(String),
}

fn rc(action: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
    move |source| PkiError::Rcgen { action, source }
}

/// Who a verified peer certificate says it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Node(String),
    Admin(String),
}

/// What the coordinator keeps from a verified peer certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    pub role: Role,
    /// Lowercase hex of the certificate's serial number.
    pub serial: String,
    pub not_before_unix: i64,
    pub not_after_unix: i64,
}

/// Certificates the CA signs start this long before they are signed, for
/// clocks a little behind the coordinator's.
pub const BACKDATE_SECS: i64 = 60;

/// A certificate the CA just signed.
#[derive(Debug, Clone)]
pub struct Issued {
    pub der: Vec<u8>,
    pub serial: String,
    pub not_after_unix: i64,
}

/// The cluster CA, loaded from (or created in) the state directory.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_der: Vec<u8>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

pub const NODE_URI_PREFIX: &str = "dfleet://node/";
pub const ADMIN_URI_PREFIX: &str = "dfleet://admin/";

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> PkiError + 'a {
    move |source| PkiError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` atomically with `mode` (temp file, fsync, rename).
pub fn write_private(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io("creating", &tmp))?;
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io("setting the mode of", &tmp))?;
    f.write_all(bytes).map_err(io("writing", &tmp))?;
    f.sync_all().map_err(io("syncing", &tmp))?;
    fs::rename(&tmp, path).map_err(io("renaming into place", path))?;
    Ok(())
}

fn random_serial() -> SerialNumber {
    // 16 random bytes with the top bit clear, so the DER integer stays positive.
    let mut bytes = [0u8; 16];
    for b in &mut bytes {
        *b = fastrand::u8(..);
    }
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn odt(unix_secs: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(unix_secs).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

impl Ca {
    /// Loads the CA from `dir/ca.pem` and `dir/ca.key`, creating both on first
    /// start (the key with mode 0600).
    pub fn load_or_create(dir: &Path, cluster: &str) -> Result<Ca, PkiError> {
        let cert_path = dir.join("ca.pem");
        let key_path = dir.join("ca.key");
        if !key_path.exists() {
            let key = KeyPair::generate().map_err(rc("generating the CA key"))?;
            let mut params = CertificateParams::default();
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, format!("dfleet cluster CA {cluster}"));
            params.distinguished_name = dn;
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            let now = unix(SystemTime::now());
            params.not_before = odt(now - 3600);
            params.not_after = odt(now + 20 * 365 * 86400);
            params.serial_number = Some(random_serial());
            let cert = params
                .self_signed(&key)
                .map_err(rc("self-signing the CA"))?;
            write_private(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
            write_private(&cert_path, cert.pem().as_bytes(), 0o644)?;
        }
        let key_pem = fs::read_to_string(&key_path).map_err(io("reading", &key_path))?;
        let meta = fs::metadata(&key_path).map_err(io("reading", &key_path))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(PkiError::Io {
                action: "checking the mode of",
                path: key_path,
                source: std::io::Error::other(
                    "the CA key must not be readable by group or others (chmod 600)",
                ),
            });
        }
        let cert_pem = fs::read_to_string(&cert_path).map_err(io("reading", &cert_path))?;
        let key = KeyPair::from_pem(&key_pem).map_err(rc("parsing the CA key"))?;
        let issuer =
            Issuer::from_ca_cert_pem(&cert_pem, key).map_err(rc("parsing the CA certificate"))?;
        let cert_der = pem_to_der(&cert_pem)?;
        Ok(Ca {
            issuer,
            cert_pem,
            cert_der,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    fn sign(
        &self,
        public_key: &impl PublicKeyData,
        common_name: &str,
        sans: Vec<SanType>,
        client: bool,
        lifetime: Duration,
    ) -> Result<Issued, PkiError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.subject_alt_names = sans;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        params.use_authority_key_identifier_extension = true;
        let now = unix(SystemTime::now());
        // Allow a minute of clock skew between the coordinator and its nodes.
        params.not_before = odt(now - BACKDATE_SECS);
        let not_after = now + lifetime.as_secs().max(1) as i64;
        params.not_after = odt(not_after);
        let serial = random_serial();
        let serial_hex = hex(&serial.to_bytes());
        params.serial_number = Some(serial);
        let cert = params
            .signed_by(public_key, &self.issuer)
            .map_err(rc("signing a certificate"))?;
        Ok(Issued {
            der: cert.der().to_vec(),
            serial: serial_hex,
            not_after_unix: not_after,
        })
    }

    /// Signs a node's CSR. Only the CSR's public key is used: the subject and
    /// names come from the inventory.
    pub fn sign_node(
        &self,
        csr_der: &[u8],
        node: &str,
        lifetime: Duration,
    ) -> Result<Issued, PkiError> {
        let csr = parse_csr(csr_der)?;
        let uri = format!("{NODE_URI_PREFIX}{node}");
        let sans = vec![SanType::URI(uri.try_into().map_err(rc("naming the node"))?)];
        self.sign(&csr.public_key, node, sans, true, lifetime)
    }

    /// Signs an administrator's CSR for `user`.
    pub fn sign_admin(
        &self,
        csr_der: &[u8],
        user: &str,
        lifetime: Duration,
    ) -> Result<Issued, PkiError> {
        let csr = parse_csr(csr_der)?;
        let uri = format!("{ADMIN_URI_PREFIX}{user}");
        let sans = vec![SanType::URI(
            uri.try_into().map_err(rc("naming the admin"))?,
        )];
        self.sign(&csr.public_key, user, sans, true, lifetime)
    }

    /// Makes a fresh server key and certificate for the coordinator, naming
    /// `server_name` (what agents verify) and the given addresses. Returned as
    /// (certificate PEM, key PEM).
    pub fn server_identity(
        &self,
        server_name: &str,
        ips: &[std::net::IpAddr],
        lifetime: Duration,
    ) -> Result<(String, String), PkiError> {
        let key = KeyPair::generate().map_err(rc("generating the server key"))?;
        let mut sans = vec![
            SanType::DnsName(server_name.try_into().map_err(rc("naming the server"))?),
            SanType::DnsName("localhost".try_into().map_err(rc("naming the server"))?),
        ];
        sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        let issued = self.sign(&key, server_name, sans, false, lifetime)?;
        Ok((der_to_pem("CERTIFICATE", &issued.der), key.serialize_pem()))
    }
}

fn parse_csr(der: &[u8]) -> Result<CertificateSigningRequestParams, PkiError> {
    CertificateSigningRequestParams::from_der(&der.to_vec().into()).map_err(PkiError::Csr)
}

/// The DER of the public key a CSR carries, to bind an approval to one key.
pub fn csr_public_key(csr_der: &[u8]) -> Result<Vec<u8>, PkiError> {
    Ok(parse_csr(csr_der)?.public_key.der_bytes().to_vec())
}

/// PEM-encodes DER bytes.
pub fn der_to_pem(label: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(label, der))
}

fn pem_to_der(text: &str) -> Result<Vec<u8>, PkiError> {
    pem::parse(text)
        .map(pem::Pem::into_contents)
        .map_err(|e| PkiError::Peer(format!("parsing PEM: {e}")))
}

/// Reads role, serial and expiry from a peer certificate that TLS already
/// verified against the cluster CA.
pub fn peer_identity(der: &[u8]) -> Result<PeerIdentity, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| PkiError::Peer(format!("parsing: {e}")))?;
    let mut role = None;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(uri) = name {
                if let Some(node) = uri.strip_prefix(NODE_URI_PREFIX) {
                    role = Some(Role::Node(node.to_string()));
                } else if let Some(user) = uri.strip_prefix(ADMIN_URI_PREFIX) {
                    role = Some(Role::Admin(user.to_string()));
                }
            }
        }
    }
    let role = role.ok_or_else(|| {
        PkiError::Peer("no dfleet:// role in its subject alternative names".into())
    })?;
    Ok(PeerIdentity {
        role,
        serial: hex(cert.raw_serial()),
        not_before_unix: cert.validity().not_before.timestamp(),
        not_after_unix: cert.validity().not_after.timestamp(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr() -> (KeyPair, Vec<u8>) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["evil".to_string()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "someone-else");
        let csr = params.serialize_request(&key).unwrap();
        (key, csr.der().to_vec())
    }

    #[test]
    fn ca_key_is_private_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path(), "t").unwrap();
        let mode = fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = Ca::load_or_create(dir.path(), "t").unwrap();
        assert_eq!(ca.cert_pem(), again.cert_pem());
    }

    #[test]
    fn a_group_readable_ca_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        Ca::load_or_create(dir.path(), "t").unwrap();
        fs::set_permissions(dir.path().join("ca.key"), fs::Permissions::from_mode(0o640)).unwrap();
        let err = Ca::load_or_create(dir.path(), "t").unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn node_certificate_names_the_inventory_node_not_the_csr() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path(), "t").unwrap();
        let (_, csr) = csr();
        let issued = ca
            .sign_node(&csr, "cn0001", Duration::from_secs(60))
            .unwrap();
        let id = peer_identity(&issued.der).unwrap();
        assert_eq!(id.role, Role::Node("cn0001".into()));
        assert_eq!(id.serial, issued.serial);
        assert_eq!(id.not_after_unix, issued.not_after_unix);
        let (_, cert) = x509_parser::parse_x509_certificate(&issued.der).unwrap();
        assert!(cert.subject().to_string().contains("cn0001"));
        assert!(!format!("{:?}", cert.subject_alternative_name()).contains("evil"));
    }

    #[test]
    fn renewing_with_the_same_key_gives_a_new_serial() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path(), "t").unwrap();
        let (_, csr) = csr();
        let a = ca.sign_node(&csr, "cn1", Duration::from_secs(60)).unwrap();
        let b = ca.sign_node(&csr, "cn1", Duration::from_secs(60)).unwrap();
        assert_ne!(a.serial, b.serial);
    }

    #[test]
    fn admin_role_is_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path(), "t").unwrap();
        let (_, csr) = csr();
        let issued = ca
            .sign_admin(&csr, "alice", Duration::from_secs(60))
            .unwrap();
        assert_eq!(
            peer_identity(&issued.der).unwrap().role,
            Role::Admin("alice".into())
        );
    }

    #[test]
    fn garbage_csr_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path(), "t").unwrap();
        assert!(matches!(
            ca.sign_node(b"nope", "cn1", Duration::from_secs(1)),
            Err(PkiError::Csr(_))
        ));
    }

    /// The CSR of an enrollment and a peer's certificate are the two things
    /// the CA parses from the network: any bytes, and damaged good ones, give
    /// an answer or an error, never a panic.
    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        fn ca() -> &'static (Ca, Vec<u8>, Vec<u8>) {
            static CA: std::sync::OnceLock<(Ca, Vec<u8>, Vec<u8>)> = std::sync::OnceLock::new();
            CA.get_or_init(|| {
                let dir = tempfile::tempdir().unwrap();
                let ca = Ca::load_or_create(dir.path(), "t").unwrap();
                let (_, csr) = csr();
                let cert = ca
                    .sign_node(&csr, "cn1", Duration::from_secs(60))
                    .unwrap()
                    .der;
                (ca, csr, cert)
            })
        }

        fn damage(mut bytes: Vec<u8>, flips: &[(prop::sample::Index, u8)]) -> Vec<u8> {
            for (at, v) in flips {
                let i = at.index(bytes.len());
                bytes[i] = *v;
            }
            bytes
        }

        proptest! {
        #![proptest_config(ProptestConfig {
            // Nothing is written into the source tree.
            failure_persistence: None,
            ..ProptestConfig::with_cases(2048)
        })]

            #[test]
            fn any_csr_bytes_are_signed_or_refused(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
                let _ = ca().0.sign_node(&bytes, "cn1", Duration::from_secs(60));
                let _ = peer_identity(&bytes);
            }

            #[test]
            fn damaged_csrs_and_certificates_are_signed_or_refused(
                flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
            ) {
                let (ca, csr, cert) = ca();
                let _ = ca.sign_node(&damage(csr.clone(), &flips), "cn1", Duration::from_secs(60));
                if let Ok(id) = peer_identity(&damage(cert.clone(), &flips)) {
                    // Whatever parses names a role; it was never trusted
                    // without the TLS chain check.
                    let _ = id.role;
                }
            }
        }
    }
}
