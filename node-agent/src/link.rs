//! The agent's connections to its coordinator: dialing (from a privileged
//! source port for enrollment, which only root on the node can do), the TLS
//! channels, enrollment, and this boot's credentials kept in RAM.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use dfleet_proto::pb;
use hyper_util::rt::TokioIo;
use rcgen::{CertificateParams, KeyPair};
use tokio::net::{TcpSocket, TcpStream};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("making a key pair or request: {0}")]
    Key(#[from] rcgen::Error),
    #[error("resolving the coordinator address {0:?}: {1}")]
    Resolve(String, String),
    #[error("connecting to the coordinator at {addr}: {message}")]
    Connect { addr: String, message: String },
    #[error("the coordinator refused: {0}")]
    Refused(String),
    #[error("the coordinator: {0}")]
    Rpc(String),
}

impl LinkError {
    /// Whether retrying the same request can succeed without anything changing
    /// on this node (a network problem, a restart of the coordinator).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            LinkError::Connect { .. } | LinkError::Rpc(_) | LinkError::Resolve(..)
        )
    }
}

/// Where and how to reach the coordinator.
#[derive(Debug, Clone)]
pub struct Coordinator {
    pub addr: String,
    pub server_name: String,
    pub ca_pem: Vec<u8>,
    pub bind: Option<IpAddr>,
}

/// This boot's key and certificate.
#[derive(Clone)]
pub struct Credentials {
    pub node: String,
    pub key_pem: String,
    pub cert_der: Vec<u8>,
    pub not_after_unix: i64,
    pub issued_at_unix: i64,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The private key never reaches a log.
        f.debug_struct("Credentials")
            .field("node", &self.node)
            .field("not_after_unix", &self.not_after_unix)
            .finish_non_exhaustive()
    }
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub fn pem(label: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(label, der))
}

fn pem_body(text: &str) -> Option<Vec<u8>> {
    pem::parse(text).ok().map(pem::Pem::into_contents)
}

impl Credentials {
    /// When to renew: at two thirds of the certificate's life.
    pub fn renew_at_unix(&self) -> i64 {
        let life = (self.not_after_unix - self.issued_at_unix).max(1);
        self.issued_at_unix + life * 2 / 3
    }

    fn paths(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
        (
            dir.join("node.key"),
            dir.join("node.crt"),
            dir.join("node.meta"),
        )
    }

    /// Keeps the credentials for this boot, so that an agent restart does not
    /// need a second enrollment. `dir` must be in RAM (tmpfs under /run).
    pub fn save(&self, dir: &Path, boot_id: &str) -> Result<(), LinkError> {
        std::fs::create_dir_all(dir).map_err(|source| LinkError::Io {
            action: "creating",
            path: dir.to_path_buf(),
            source,
        })?;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        let (key, cert, meta) = Self::paths(dir);
        write_atomic(&key, self.key_pem.as_bytes(), 0o600)?;
        write_atomic(&cert, pem("CERTIFICATE", &self.cert_der).as_bytes(), 0o644)?;
        let m = format!(
            "node={}\nboot_id={}\nnot_after={}\nissued_at={}\n",
            self.node, boot_id, self.not_after_unix, self.issued_at_unix
        );
        write_atomic(&meta, m.as_bytes(), 0o644)
    }

    /// Credentials saved earlier in this boot and still valid, if any.
    pub fn load(dir: &Path, boot_id: &str) -> Option<Credentials> {
        let (key, cert, meta) = Self::paths(dir);
        let meta = std::fs::read_to_string(meta).ok()?;
        let field = |k: &str| {
            meta.lines()
                .find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix('=')))
                .map(str::to_string)
        };
        if field("boot_id")? != boot_id {
            return None;
        }
        let not_after_unix: i64 = field("not_after")?.parse().ok()?;
        if not_after_unix <= unix_now() {
            return None;
        }
        Some(Credentials {
            node: field("node")?,
            key_pem: std::fs::read_to_string(key).ok()?,
            cert_der: pem_body(&std::fs::read_to_string(cert).ok()?)?,
            not_after_unix,
            issued_at_unix: field("issued_at")?.parse().ok()?,
        })
    }
}

fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), LinkError> {
    crate::os::write_atomic(path, bytes, mode).map_err(|(action, source)| LinkError::Io {
        action,
        path: path.to_path_buf(),
        source,
    })
}

/// A fresh key pair and a CSR for it. The key never leaves this process
/// except into the agent's RAM state directory.
pub fn new_key_and_csr() -> Result<(KeyPair, Vec<u8>), LinkError> {
    let key = KeyPair::generate()?;
    let csr = CertificateParams::new(Vec::<String>::new())?.serialize_request(&key)?;
    Ok((key, csr.der().to_vec()))
}

async fn resolve(addr: &str) -> Result<SocketAddr, LinkError> {
    tokio::net::lookup_host(addr)
        .await
        .map_err(|e| LinkError::Resolve(addr.to_string(), e.to_string()))?
        .next()
        .ok_or_else(|| LinkError::Resolve(addr.to_string(), "no address".into()))
}

/// Dials `target`, from a privileged source port when `privileged`. Without
/// the privilege (not root) the connection comes from an ordinary port and the
/// coordinator refuses the enrollment, saying why.
async fn dial(
    target: SocketAddr,
    bind: Option<IpAddr>,
    privileged: bool,
) -> std::io::Result<TcpStream> {
    let unspecified = if target.is_ipv4() {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    };
    let ip = bind.unwrap_or(unspecified);
    let new_socket = || {
        if target.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
    };
    if privileged {
        // Start at a random port so that many agents behind one address (tests,
        // simulated fleets) and quick reconnects do not collide.
        let span = 1023 - 512;
        let start = fastrand::u16(0..span);
        for i in 0..span {
            let port = 512 + (start + i) % span;
            let socket = new_socket()?;
            match socket.bind(SocketAddr::new(ip, port)) {
                Ok(()) => match socket.connect(target).await {
                    Ok(s) => return Ok(s),
                    Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => continue,
                    Err(e) => return Err(e),
                },
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    tracing::warn!(
                        "not allowed to use a privileged source port (not root?); enrolling from an ordinary port, which the coordinator will refuse"
                    );
                    break;
                }
                Err(e) => return Err(e),
            }
        }
    }
    let socket = new_socket()?;
    if bind.is_some() {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    socket.connect(target).await
}

impl Coordinator {
    fn tls(&self, identity: Option<&Credentials>) -> ClientTlsConfig {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .domain_name(self.server_name.clone());
        if let Some(c) = identity {
            tls = tls.identity(Identity::from_pem(
                pem("CERTIFICATE", &c.cert_der),
                &c.key_pem,
            ));
        }
        tls
    }

    /// A TLS channel to the coordinator, with a client certificate when given.
    pub async fn channel(
        &self,
        identity: Option<&Credentials>,
        privileged: bool,
    ) -> Result<Channel, LinkError> {
        let target = resolve(&self.addr).await?;
        let bind = self.bind;
        let err = |message: String| LinkError::Connect {
            addr: self.addr.clone(),
            message,
        };
        Endpoint::from_shared(format!("https://{target}"))
            .map_err(|e| err(e.to_string()))?
            .tls_config(self.tls(identity))
            .map_err(|e| err(e.to_string()))?
            .connect_timeout(Duration::from_secs(10))
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20))
            .connect_with_connector(tower::service_fn(move |_| async move {
                dial(target, bind, privileged).await.map(TokioIo::new)
            }))
            .await
            .map_err(|e| err(error_chain(&e)))
    }

    /// One enrollment attempt. `Ok(None)` means the request waits for an
    /// administrator's approval; retry after the returned delay.
    pub async fn enroll(
        &self,
        key: &KeyPair,
        csr_der: &[u8],
        mac: &str,
        boot_id: &str,
    ) -> Result<Result<Credentials, (String, Duration)>, LinkError> {
        let channel = self.channel(None, true).await?;
        let mut client = pb::enrollment_client::EnrollmentClient::new(channel);
        let resp = client
            .enroll(pb::EnrollRequest {
                csr_der: csr_der.to_vec(),
                mac: mac.to_string(),
                boot_id: boot_id.to_string(),
                agent_version: env!("CARGO_PKG_VERSION").into(),
            })
            .await
            .map_err(|s| match s.code() {
                tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled => {
                    LinkError::Rpc(s.message().to_string())
                }
                _ => LinkError::Refused(s.message().to_string()),
            })?
            .into_inner();
        match resp.outcome {
            Some(pb::enroll_response::Outcome::Issued(i)) => Ok(Ok(Credentials {
                node: i.node,
                key_pem: key.serialize_pem(),
                cert_der: i.cert_der,
                not_after_unix: i.not_after_unix,
                issued_at_unix: unix_now(),
            })),
            Some(pb::enroll_response::Outcome::Pending(p)) => Ok(Err((
                p.reason,
                Duration::from_secs(u64::from(p.retry_after_seconds.max(1))),
            ))),
            None => Err(LinkError::Rpc("an empty enrollment answer".into())),
        }
    }
}

/// The full cause chain of an error, for one readable line.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let msg = s.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_survive_an_agent_restart_in_the_same_boot_only() {
        let dir = tempfile::tempdir().unwrap();
        let c = Credentials {
            node: "cn1".into(),
            key_pem: "KEY".into(),
            cert_der: vec![1, 2, 3],
            not_after_unix: unix_now() + 3600,
            issued_at_unix: unix_now(),
        };
        c.save(dir.path(), "boot-a").unwrap();
        let mode = std::fs::metadata(dir.path().join("node.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let back = Credentials::load(dir.path(), "boot-a").unwrap();
        assert_eq!(back.node, "cn1");
        assert_eq!(back.cert_der, vec![1, 2, 3]);
        assert!(Credentials::load(dir.path(), "boot-b").is_none());
    }

    #[test]
    fn expired_credentials_are_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        let c = Credentials {
            node: "cn1".into(),
            key_pem: "KEY".into(),
            cert_der: vec![1],
            not_after_unix: unix_now() - 1,
            issued_at_unix: unix_now() - 10,
        };
        c.save(dir.path(), "b").unwrap();
        assert!(Credentials::load(dir.path(), "b").is_none());
    }

    #[test]
    fn renewal_is_at_two_thirds_of_life() {
        let c = Credentials {
            node: String::new(),
            key_pem: String::new(),
            cert_der: vec![],
            not_after_unix: 1300,
            issued_at_unix: 1000,
        };
        assert_eq!(c.renew_at_unix(), 1200);
    }

    #[test]
    fn debug_output_hides_the_key() {
        let c = Credentials {
            node: "cn1".into(),
            key_pem: "SECRET".into(),
            cert_der: vec![],
            not_after_unix: 0,
            issued_at_unix: 0,
        };
        assert!(!format!("{c:?}").contains("SECRET"));
    }
}
