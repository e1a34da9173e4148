//! SSH host keys: the cluster's SSH host CA, which signs the host
//! certificates of nodes in `certificates` mode, and the persistent key sets
//! of nodes in `managed` mode. Both live in the state directory, private
//! halves with mode 0600; private keys leave it only on their own node's
//! mTLS stream and are never logged.
//!
//! ```text
//! STATE/ssh/host_ca          the CA's private key (OpenSSH format, 0600)
//! STATE/ssh/host_ca.pub      its public key line
//! STATE/ssh/hosts/NODE/ssh_host_ed25519_key(.pub)   managed keys (0600 / 0644)
//! ```

pub mod cli;
pub mod flags;
pub mod known_hosts;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use dfleet_proto::domain::HostKeyMode;
use dfleet_proto::pb;
use ssh_key::certificate::{Builder, CertType};
use ssh_key::rand_core::OsRng;
use ssh_key::{Algorithm, HashAlg, LineEnding, PrivateKey, PublicKey};

use crate::fleet::{Command, FleetHandle, HostKeyContext, Outbound, SshHosts};
use crate::pki::write_private;

/// How far back a certificate's validity starts: nodes whose clock lags the
/// coordinator's still accept it at once.
const BACKDATE: Duration = Duration::from_secs(300);

/// The one key type dfleet makes for nodes.
pub const KEY_FILE: &str = "ssh_host_ed25519_key";

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Key {
        what: String,
        source: ssh_key::Error,
    },
    #[error("{}: {why}", path.display())]
    Unsafe { path: PathBuf, why: String },
    #[error("refused to certify {key:?}: {why}")]
    Refused { key: String, why: String },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SshError + use<> {
    let path = path.to_path_buf();
    move |source| SshError::Io {
        action,
        path,
        source,
    }
}

fn key_err(what: impl Into<String>) -> impl FnOnce(ssh_key::Error) -> SshError {
    let what = what.into();
    move |source| SshError::Key { what, source }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The cluster's SSH host CA.
pub struct SshCa {
    key: PrivateKey,
    public: String,
}

impl std::fmt::Debug for SshCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private key.
        f.debug_struct("SshCa")
            .field("public", &self.public)
            .finish()
    }
}

/// A certificate as issued.
#[derive(Debug, Clone)]
pub struct Issued {
    pub certificate: String,
    pub valid_before_unix: u64,
}

impl SshCa {
    /// Loads the CA from `dir/ssh/host_ca`, creating it on first start.
    /// A key readable by group or others, or not a regular file, is refused.
    pub fn load_or_create(state_dir: &Path, cluster: &str) -> Result<SshCa, SshError> {
        let dir = state_dir.join("ssh");
        let key_path = dir.join("host_ca");
        if !key_path.exists() {
            fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
                .map_err(io("setting the mode of", &dir))?;
            let mut key = PrivateKey::random(&mut OsRng, Algorithm::Ed25519)
                .map_err(key_err("generating the SSH host CA key"))?;
            key.set_comment(format!("dfleet SSH host CA {cluster}"));
            let text = key
                .to_openssh(LineEnding::LF)
                .map_err(key_err("encoding the SSH host CA key"))?;
            write_private(&key_path, text.as_bytes(), 0o600).map_err(|e| SshError::Unsafe {
                path: key_path.clone(),
                why: e.to_string(),
            })?;
            let public = key
                .public_key()
                .to_openssh()
                .map_err(key_err("encoding the SSH host CA public key"))?;
            let pub_path = dir.join("host_ca.pub");
            write_private(&pub_path, format!("{public}\n").as_bytes(), 0o644).map_err(|e| {
                SshError::Unsafe {
                    path: pub_path.clone(),
                    why: e.to_string(),
                }
            })?;
        }
        let key = read_private(&key_path)?;
        let public = key
            .public_key()
            .to_openssh()
            .map_err(key_err("encoding the SSH host CA public key"))?;
        Ok(SshCa { key, public })
    }

    /// `ssh-ed25519 AAAA… dfleet SSH host CA NAME`.
    pub fn public_key(&self) -> &str {
        &self.public
    }

    /// `SHA256:…`, as `ssh-keygen -lf` prints it.
    pub fn fingerprint(&self) -> String {
        self.key.fingerprint(HashAlg::Sha256).to_string()
    }

    /// A host certificate for `public_key` (an OpenSSH public key line),
    /// valid for `principals` from a few minutes ago for `validity`.
    pub fn certify_host(
        &self,
        public_key: &str,
        node: &str,
        principals: &[String],
        validity: Duration,
    ) -> Result<Issued, SshError> {
        let refused = |why: String| SshError::Refused {
            key: public_key.chars().take(80).collect(),
            why,
        };
        let key = PublicKey::from_openssh(public_key.trim()).map_err(|e| refused(e.to_string()))?;
        if key.algorithm() != Algorithm::Ed25519 {
            return Err(refused(format!(
                "a {} key; dfleet certifies ssh-ed25519 host keys",
                key.algorithm()
            )));
        }
        if key.key_data() == self.key.public_key().key_data() {
            return Err(refused("that is the CA's own key".into()));
        }
        let now = unix_now();
        let valid_before = now + validity.as_secs();
        let mut b = Builder::new_with_random_nonce(
            &mut OsRng,
            key.key_data().clone(),
            now.saturating_sub(BACKDATE.as_secs()),
            valid_before,
        )
        .map_err(key_err("starting a certificate"))?;
        let serial = {
            use ssh_key::rand_core::RngCore;
            OsRng.next_u64().max(1)
        };
        b.serial(serial)
            .and_then(|b| b.cert_type(CertType::Host))
            .and_then(|b| b.key_id(format!("dfleet:{node}:{now}")))
            .map_err(key_err("filling a certificate"))?;
        for p in principals {
            b.valid_principal(p.clone())
                .map_err(key_err(format!("principal {p:?}")))?;
        }
        b.comment(node)
            .map_err(key_err("commenting a certificate"))?;
        let cert = b
            .sign(&self.key)
            .map_err(key_err("signing a certificate"))?;
        Ok(Issued {
            certificate: cert
                .to_openssh()
                .map_err(key_err("encoding a certificate"))?,
            valid_before_unix: valid_before,
        })
    }
}

/// Reads an OpenSSH private key file that only its owner may read.
fn read_private(path: &Path) -> Result<PrivateKey, SshError> {
    let meta = fs::symlink_metadata(path).map_err(io("reading", path))?;
    if !meta.file_type().is_file() {
        return Err(SshError::Unsafe {
            path: path.to_path_buf(),
            why: "not a regular file".into(),
        });
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(SshError::Unsafe {
            path: path.to_path_buf(),
            why: format!(
                "mode {:o}: a private key must not be readable by group or others (chmod 600)",
                meta.permissions().mode() & 0o777
            ),
        });
    }
    let text = fs::read_to_string(path).map_err(io("reading", path))?;
    PrivateKey::from_openssh(text.as_bytes())
        .map_err(key_err(format!("parsing {}", path.display())))
}

/// The managed key sets, one directory per node under `STATE/ssh/hosts`.
/// Creating and rotating go through one lock, so two streams of the same
/// node never make two different keys.
#[derive(Debug)]
pub struct ManagedKeys {
    dir: PathBuf,
    lock: Mutex<()>,
}

/// One node's managed key.
#[derive(Clone)]
pub struct ManagedKey {
    pub private_openssh: String,
    pub public: String,
    pub fingerprint: String,
}

impl std::fmt::Debug for ManagedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagedKey")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl ManagedKeys {
    pub fn new(state_dir: &Path) -> ManagedKeys {
        ManagedKeys {
            dir: state_dir.join("ssh").join("hosts"),
            lock: Mutex::new(()),
        }
    }

    fn key_path(&self, node: &str) -> PathBuf {
        self.dir.join(node).join(KEY_FILE)
    }

    /// The node's public key line, if it has a managed key yet.
    pub fn public(&self, node: &str) -> Option<String> {
        let path = self.key_path(node).with_extension("pub");
        fs::read_to_string(path).ok().map(|s| s.trim().to_string())
    }

    /// The node's key, made on first use.
    pub fn get_or_create(&self, node: &str) -> Result<ManagedKey, SshError> {
        let _held = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let path = self.key_path(node);
        if path.exists() {
            return describe(read_private(&path)?);
        }
        self.create(node)
    }

    /// A new key for the node, replacing its old one.
    pub fn rotate(&self, node: &str) -> Result<ManagedKey, SshError> {
        let _held = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.create(node)
    }

    fn create(&self, node: &str) -> Result<ManagedKey, SshError> {
        let path = self.key_path(node);
        let dir = path.parent().unwrap_or(&self.dir).to_path_buf();
        fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
        for d in [&self.dir, &dir] {
            fs::set_permissions(d, fs::Permissions::from_mode(0o700))
                .map_err(io("setting the mode of", d))?;
        }
        let mut key = PrivateKey::random(&mut OsRng, Algorithm::Ed25519)
            .map_err(key_err(format!("generating {node}'s host key")))?;
        key.set_comment(format!("root@{node}"));
        let described = describe(key)?;
        let unsafe_err = |p: &Path| {
            let p = p.to_path_buf();
            move |e: crate::pki::PkiError| SshError::Unsafe {
                path: p,
                why: e.to_string(),
            }
        };
        // The public half last: a key whose .pub exists is complete.
        write_private(&path, described.private_openssh.as_bytes(), 0o600)
            .map_err(unsafe_err(&path))?;
        let pub_path = path.with_extension("pub");
        write_private(
            &pub_path,
            format!("{}\n", described.public).as_bytes(),
            0o644,
        )
        .map_err(unsafe_err(&pub_path))?;
        Ok(described)
    }
}

fn describe(key: PrivateKey) -> Result<ManagedKey, SshError> {
    Ok(ManagedKey {
        private_openssh: key
            .to_openssh(LineEnding::LF)
            .map_err(key_err("encoding a host key"))?
            .to_string(),
        public: key
            .public_key()
            .to_openssh()
            .map_err(key_err("encoding a host key"))?,
        fingerprint: key.fingerprint(HashAlg::Sha256).to_string(),
    })
}

/// The names a node's certificate is valid for: its name, its FQDN when the
/// boot network has a domain, and its address.
pub fn principals(
    node: &dfleet_provisioner::inventory::NodeEntry,
    domain: Option<&str>,
) -> Vec<String> {
    let mut p = vec![node.name.as_str().to_string()];
    if let Some(d) = domain.filter(|d| !d.is_empty()) {
        p.push(format!("{}.{d}", node.name.as_str()));
    }
    p.push(node.ip.to_string());
    p
}

/// The coordinator's SSH material.
#[derive(Debug)]
pub struct Ssh {
    pub ca: SshCa,
    pub managed: ManagedKeys,
}

/// The answer to a node's `HostKeyRequest`, from its inventory context.
pub fn answer(
    ssh: &Ssh,
    node: &str,
    ctx: &HostKeyContext,
    request: &pb::HostKeyRequest,
) -> pb::HostKeys {
    let mut out = pb::HostKeys {
        mode: pb::HostKeyMode::from(ctx.mode) as i32,
        ..Default::default()
    };
    match ctx.mode {
        HostKeyMode::Certificates => {
            if request.public_keys.is_empty() {
                out.error = "no public key to certify".into();
            }
            for key in &request.public_keys {
                match ssh
                    .ca
                    .certify_host(key, node, &ctx.principals, ctx.validity)
                {
                    Ok(issued) => out.certificates.push(pb::HostCertificate {
                        public_key: key.clone(),
                        certificate: issued.certificate,
                        valid_before_unix: issued.valid_before_unix,
                    }),
                    Err(e) => out.error = e.to_string(),
                }
            }
        }
        HostKeyMode::Managed => match ssh.managed.get_or_create(node) {
            Ok(k) => out.keys.push(pb::ManagedHostKey {
                private_key: k.private_openssh,
                public_key: k.public,
            }),
            Err(e) => out.error = e.to_string(),
        },
    }
    out
}

/// Answers one `HostKeyRequest` on the node's stream and records it.
pub async fn serve(
    ssh: Arc<Ssh>,
    fleet: FleetHandle,
    node: String,
    request: pb::HostKeyRequest,
    tx: Outbound,
) {
    let ctx = match fleet
        .ask(|reply| Command::HostKeyContext {
            node: node.clone(),
            reply,
        })
        .await
    {
        Ok(Some(ctx)) => ctx,
        _ => return,
    };
    let name = node.clone();
    let answered = tokio::task::spawn_blocking(move || {
        let a = answer(&ssh, &name, &ctx, &request);
        (a, ctx)
    })
    .await;
    let Ok((answer, ctx)) = answered else {
        return;
    };
    let managed_fingerprint = answer
        .keys
        .first()
        .and_then(|k| PublicKey::from_openssh(&k.public_key).ok())
        .map(|k| k.fingerprint(HashAlg::Sha256).to_string());
    let (detail, failed) = if !answer.error.is_empty() {
        (answer.error.clone(), true)
    } else if let Some(c) = answer.certificates.first() {
        (
            format!(
                "host certificate for {} valid until {}",
                ctx.principals.join(","),
                crate::cli::format_time(c.valid_before_unix as i64 * 1000)
            ),
            false,
        )
    } else {
        let fingerprints: Vec<String> = answer
            .keys
            .iter()
            .filter_map(|k| PublicKey::from_openssh(&k.public_key).ok())
            .map(|k| k.fingerprint(HashAlg::Sha256).to_string())
            .collect();
        (
            format!("managed host key {} sent", fingerprints.join(" ")),
            false,
        )
    };
    let _ = tx
        .send(Ok(pb::CoordinatorMessage {
            kind: Some(pb::coordinator_message::Kind::HostKeys(answer)),
        }))
        .await;
    let _ = fleet
        .send(Command::HostKeysIssued {
            node,
            detail,
            actor: String::new(),
            failed,
            managed_fingerprint,
        })
        .await;
}

/// The fleet's known_hosts text; managed nodes without a key get one now,
/// so the file is complete before they first boot.
pub fn known_hosts_text(ssh: &Ssh, hosts: &SshHosts) -> Result<String, SshError> {
    let mut out = Vec::with_capacity(hosts.nodes.len());
    for (name, principals, mode) in &hosts.nodes {
        let managed_key = match mode {
            HostKeyMode::Managed => Some(ssh.managed.get_or_create(name)?.public),
            HostKeyMode::Certificates => None,
        };
        out.push(known_hosts::Host {
            names: principals.clone(),
            mode: *mode,
            managed_key,
        });
    }
    Ok(known_hosts::render(
        &hosts.cluster,
        ssh.ca.public_key(),
        &hosts.patterns,
        &out,
    ))
}

/// `dfleet ssh rotate`: managed nodes get a new key (sent now when they are
/// connected); connected nodes in certificates mode are ordered to make a
/// new key pair. Returns what was done, folded by outcome.
pub async fn rotate(
    ssh: &Arc<Ssh>,
    fleet: &FleetHandle,
    names: Vec<String>,
    actor: &str,
) -> Result<String, tonic::Status> {
    use dfleet_provisioner::nodeset::fold;
    let (order_id, targets) = fleet
        .ask(|reply| Command::SshTargets { names, reply })
        .await?;
    let (mut managed, mut ordered, mut later, mut failed) = (vec![], vec![], vec![], vec![]);
    for (node, mode, stream) in targets {
        let (message, detail, managed_fingerprint) = match mode {
            HostKeyMode::Managed => {
                let s = ssh.clone();
                let n = node.clone();
                let key = tokio::task::spawn_blocking(move || s.managed.rotate(&n))
                    .await
                    .map_err(|e| tonic::Status::internal(e.to_string()))?;
                let key = match key {
                    Ok(k) => k,
                    Err(e) => {
                        failed.push(node.clone());
                        let _ = fleet
                            .send(Command::HostKeysIssued {
                                node,
                                detail: format!("rotating the managed key: {e}"),
                                actor: actor.to_string(),
                                failed: true,
                                managed_fingerprint: None,
                            })
                            .await;
                        continue;
                    }
                };
                managed.push(node.clone());
                let detail = format!("managed host key rotated: now {}", key.fingerprint);
                let fingerprint = Some(key.fingerprint.clone());
                let message = pb::coordinator_message::Kind::HostKeys(pb::HostKeys {
                    mode: pb::HostKeyMode::Managed as i32,
                    keys: vec![pb::ManagedHostKey {
                        private_key: key.private_openssh,
                        public_key: key.public,
                    }],
                    ..Default::default()
                });
                (message, detail, fingerprint)
            }
            HostKeyMode::Certificates => {
                if stream.is_none() {
                    later.push(node);
                    continue;
                }
                ordered.push(node.clone());
                let message = pb::coordinator_message::Kind::Order(pb::Order {
                    id: order_id,
                    kind: Some(pb::order::Kind::RotateHostKeys(pb::RotateHostKeys {})),
                });
                (
                    message,
                    "ordered to make a new host key pair".to_string(),
                    None,
                )
            }
        };
        if let Some(stream) = &stream {
            let _ = stream
                .send(Ok(pb::CoordinatorMessage {
                    kind: Some(message),
                }))
                .await;
        }
        let _ = fleet
            .send(Command::HostKeysIssued {
                node,
                detail,
                actor: actor.to_string(),
                failed: false,
                managed_fingerprint,
            })
            .await;
    }
    let mut parts = Vec::new();
    if !managed.is_empty() {
        parts.push(format!(
            "new managed keys: {} ({}); run `dfleet ssh known-hosts` again",
            fold(&managed),
            managed.len()
        ));
    }
    if !ordered.is_empty() {
        parts.push(format!(
            "new key pairs ordered: {} ({})",
            fold(&ordered),
            ordered.len()
        ));
    }
    if !later.is_empty() {
        parts.push(format!(
            "not connected, a new key pair at their next boot: {} ({})",
            fold(&later),
            later.len()
        ));
    }
    if !failed.is_empty() {
        parts.push(format!(
            "failed (see the events): {} ({})",
            fold(&failed),
            failed.len()
        ));
    }
    Ok(parts.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_is_made_once_kept_private_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let ca = SshCa::load_or_create(dir.path(), "hpc").unwrap();
        let again = SshCa::load_or_create(dir.path(), "hpc").unwrap();
        assert_eq!(ca.public_key(), again.public_key());
        assert!(ca.public_key().starts_with("ssh-ed25519 "));
        assert!(
            format!("{ca:?}").contains("ssh-ed25519") && !format!("{ca:?}").contains("PRIVATE")
        );
        let key = dir.path().join("ssh/host_ca");
        assert_eq!(
            fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        let e = SshCa::load_or_create(dir.path(), "hpc")
            .unwrap_err()
            .to_string();
        assert!(e.contains("host_ca") && e.contains("chmod 600"), "{e}");
    }

    #[test]
    fn only_ed25519_keys_that_are_not_the_cas_own_are_certified() {
        let dir = tempfile::tempdir().unwrap();
        let ca = SshCa::load_or_create(dir.path(), "hpc").unwrap();
        let host = PrivateKey::random(&mut OsRng, Algorithm::Ed25519).unwrap();
        let line = host.public_key().to_openssh().unwrap();
        let p = vec!["cn01".to_string(), "10.0.0.11".to_string()];
        let issued = ca
            .certify_host(&line, "cn01", &p, Duration::from_secs(3600))
            .unwrap();
        assert!(
            issued
                .certificate
                .starts_with("ssh-ed25519-cert-v01@openssh.com ")
        );
        let cert = ssh_key::Certificate::from_openssh(&issued.certificate).unwrap();
        assert_eq!(cert.cert_type(), CertType::Host);
        assert_eq!(cert.valid_principals(), p);
        assert_eq!(cert.valid_before(), issued.valid_before_unix);
        for bad in ["ssh-ed25519 !!!", "", ca.public_key()] {
            assert!(
                ca.certify_host(bad, "cn01", &p, Duration::from_secs(60))
                    .is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_managed_key_stays_until_rotated() {
        let dir = tempfile::tempdir().unwrap();
        let keys = ManagedKeys::new(dir.path());
        assert_eq!(keys.public("cn01"), None);
        let a = keys.get_or_create("cn01").unwrap();
        assert_eq!(keys.get_or_create("cn01").unwrap().public, a.public);
        assert_eq!(keys.public("cn01").as_deref(), Some(a.public.as_str()));
        let private = dir.path().join("ssh/hosts/cn01").join(KEY_FILE);
        assert_eq!(
            fs::metadata(&private).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(!format!("{a:?}").contains("PRIVATE"));
        let b = keys.rotate("cn01").unwrap();
        assert_ne!(a.fingerprint, b.fingerprint);
        assert_eq!(
            keys.get_or_create("cn01").unwrap().fingerprint,
            b.fingerprint
        );
        assert_ne!(
            keys.get_or_create("cn02").unwrap().fingerprint,
            b.fingerprint
        );
    }
}
