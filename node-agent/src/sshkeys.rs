//! SSH host keys the agent puts in place for sshd: at start a key pair made
//! for this boot (so sshd always has a key, coordinator or not), then what
//! the coordinator gives for the node's mode: a host certificate for that
//! key, or the node's own persistent (managed) key. Everything is written
//! into the node's RAM upper layer, before sshd starts (the unit orders the
//! agent before it) or followed by a restart of the running sshd.
//!
//! Files: `/etc/ssh/ssh_host_ed25519_key` (0600) and `.pub`, the certificate
//! `/etc/ssh/ssh_host_ed25519_key-cert.pub`, and the drop-in
//! `/etc/ssh/sshd_config.d/50-dfleet-host-keys.conf` naming them (a HostKey
//! line makes sshd serve only that key, not image keys). What was installed
//! is served is recorded in `/run/dfleet-agent/host-keys` for the reports and
//! the `ssh-host-keys` readiness check: only once sshd serves it.

use std::path::Path;

use dfleet_proto::pb;

use crate::os::{CommandOutcome, HostRoot};

pub const KEY: &str = "/etc/ssh/ssh_host_ed25519_key";
pub const CERT: &str = "/etc/ssh/ssh_host_ed25519_key-cert.pub";
pub const DROP_IN: &str = "/etc/ssh/sshd_config.d/50-dfleet-host-keys.conf";
/// What the agent installed: `ORIGIN FINGERPRINT VALID_BEFORE` (origin
/// `boot`, `certificate` or `coordinator`).
pub const RECORD: &str = "/run/dfleet-agent/host-keys";
const SSHD: &str = "/usr/sbin/sshd";
/// The unit systemctl knows sshd by (Debian's `ssh.service` has it as its
/// alias).
const SSHD_UNIT: &str = "sshd.service";
/// How long a restart of sshd may take before the agent gives up on it.
const SSHD_RESTART: std::time::Duration = std::time::Duration::from_secs(90);

#[derive(Debug, thiserror::Error)]
pub enum SshKeyError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("ssh-keygen: {0}")]
    Keygen(String),
    #[error("the coordinator's answer: {0}")]
    Answer(String),
    #[error("restarting sshd: {0}")]
    Sshd(String),
}

/// The host key material of this node.
#[derive(Debug, Clone)]
pub struct SshKeys {
    root: HostRoot,
}

/// What is in place now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub origin: String,
    pub fingerprint: String,
    pub valid_before_unix: u64,
}

impl SshKeys {
    pub fn new(root: HostRoot) -> SshKeys {
        SshKeys { root }
    }

    /// Whether this node runs sshd at all; without it there is nothing to do.
    pub fn has_sshd(&self) -> bool {
        self.root.exists(SSHD)
    }

    /// What the record says is installed.
    pub fn installed(&self) -> Option<Installed> {
        parse_record(&self.root.read_to_string(RECORD).ok()?)
    }

    /// The expiry of the host certificate sshd serves, when it certifies
    /// `public` (so a new stream to the coordinator need not ask again).
    pub fn current_certificate(&self, public: &str) -> Option<u64> {
        let i = self.installed()?;
        let key = crate::parse::hostkey::parse(public).ok()?;
        (i.origin == "certificate" && i.fingerprint == key.fingerprint && self.root.exists(CERT))
            .then_some(i.valid_before_unix)
    }

    /// The public key line of this boot's key, making the key pair (and the
    /// drop-in naming it) when this boot has none yet or `fresh` asks for a
    /// new one.
    pub fn boot_key(&self, fresh: bool) -> Result<String, SshKeyError> {
        if !fresh
            && let Some(i) = self.installed()
            && let Ok(public) = self.root.read_to_string(format!("{KEY}.pub"))
        {
            // Ours from earlier in this boot (the record is in /run).
            if crate::parse::hostkey::parse(&public).is_ok_and(|k| k.fingerprint == i.fingerprint) {
                return Ok(public.trim().to_string());
            }
        }
        let dir = self.root.path("/etc/ssh");
        std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
        let tmp = self.root.path(format!("{KEY}.dfleet-new"));
        let _ = std::fs::remove_file(&tmp);
        let _ = std::fs::remove_file(tmp.with_extension("dfleet-new.pub"));
        let out = std::process::Command::new(self.root.resolve_program("ssh-keygen"))
            .args([
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "dfleet-boot-key",
                "-f",
            ])
            .arg(&tmp)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| SshKeyError::Keygen(e.to_string()))?;
        if !out.status.success() {
            return Err(SshKeyError::Keygen(
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
        let public = std::fs::read_to_string(format!("{}.pub", tmp.display()))
            .map_err(io("reading", Path::new(&format!("{}.pub", tmp.display()))))?;
        let private = std::fs::read(&tmp).map_err(io("reading", &tmp))?;
        self.put_key(&private, public.trim())?;
        let _ = std::fs::remove_file(&tmp);
        let _ = std::fs::remove_file(format!("{}.pub", tmp.display()));
        self.remove_cert()?;
        self.write_drop_in(false)?;
        self.record(&installed("boot", public.trim(), 0)?)?;
        Ok(public.trim().to_string())
    }

    /// Puts the coordinator's answer in place (the files only: see
    /// [`SshKeys::serve`]). Returns what is installed.
    pub fn install(
        &self,
        answer: &pb::HostKeys,
        boot_public: &str,
    ) -> Result<Installed, SshKeyError> {
        if !answer.error.is_empty() {
            return Err(SshKeyError::Answer(answer.error.clone()));
        }
        if let Some(k) = answer.keys.first() {
            self.put_key(k.private_key.as_bytes(), k.public_key.trim())?;
            self.remove_cert()?;
            self.write_drop_in(false)?;
            return installed("coordinator", k.public_key.trim(), 0);
        }
        let Some(c) = answer
            .certificates
            .iter()
            .find(|c| same_key(&c.public_key, boot_public))
        else {
            return Err(SshKeyError::Answer(
                "no certificate for this boot's key".into(),
            ));
        };
        self.write(
            CERT,
            format!("{}\n", c.certificate.trim()).as_bytes(),
            0o644,
        )?;
        self.write_drop_in(true)?;
        installed("certificate", boot_public, c.valid_before_unix)
    }

    /// Makes sshd serve what [`SshKeys::install`] put in place, then records
    /// it. A running sshd (started after the agent stopped waiting for the
    /// coordinator, or before this agent restarted) is restarted and waited
    /// for: its unit is `Type=notify` and sshd says it is ready once it
    /// listens again, whereas a reload returns before the re-executed sshd
    /// listens, so a check right after it could still meet the old key. The
    /// listener alone restarts (`KillMode=process`): open sessions stay. An
    /// sshd not started yet is left alone: it reads the files when it starts.
    /// Nothing happens when it already serves exactly that (a managed key
    /// sent again on a new stream).
    pub async fn serve(&self, installed: &Installed) -> Result<(), SshKeyError> {
        if self.installed().as_ref() == Some(installed) {
            return Ok(());
        }
        if let Some(systemctl) = self.systemctl() {
            let state = match self
                .root
                .run_command(
                    &[systemctl.clone(), "is-active".into(), SSHD_UNIT.into()],
                    SSHD_RESTART,
                )
                .await
            {
                CommandOutcome::Exited { stdout, .. } => stdout.trim().to_string(),
                other => return Err(SshKeyError::Sshd(format!("systemctl is-active: {other:?}"))),
            };
            if matches!(state.as_str(), "active" | "activating" | "reloading") {
                match self
                    .root
                    .run_command(
                        &[systemctl, "try-restart".into(), SSHD_UNIT.into()],
                        SSHD_RESTART,
                    )
                    .await
                {
                    CommandOutcome::Exited { code: Some(0), .. } => {
                        tracing::info!("sshd restarted with the new host keys")
                    }
                    CommandOutcome::Exited { code, stderr, .. } => {
                        return Err(SshKeyError::Sshd(format!(
                            "systemctl try-restart {SSHD_UNIT} exited with {}: {}",
                            code.map_or("a signal".to_string(), |c| c.to_string()),
                            stderr.trim()
                        )));
                    }
                    CommandOutcome::TimedOut { after } => {
                        return Err(SshKeyError::Sshd(format!(
                            "systemctl try-restart {SSHD_UNIT} did not finish within {}s",
                            after.as_secs()
                        )));
                    }
                    CommandOutcome::SpawnFailed { error } => return Err(SshKeyError::Sshd(error)),
                }
            }
        }
        self.record(installed)
    }

    /// The systemctl to drive sshd with: the machine's own (under a sandbox
    /// root, one the sandbox provides; never the host's, whose sshd is not
    /// the node's).
    fn systemctl(&self) -> Option<String> {
        self.root
            .own_program("systemctl")
            .map(|p| p.to_string_lossy().into_owned())
    }

    fn put_key(&self, private: &[u8], public: &str) -> Result<(), SshKeyError> {
        self.write(KEY, private, 0o600)?;
        self.write(
            &format!("{KEY}.pub"),
            format!("{public}\n").as_bytes(),
            0o644,
        )
    }

    fn remove_cert(&self) -> Result<(), SshKeyError> {
        let path = self.root.path(CERT);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("removing", &path)(e)),
            _ => Ok(()),
        }
    }

    fn write_drop_in(&self, certificate: bool) -> Result<(), SshKeyError> {
        let mut text = format!(
            "# Written by dfleet-agent at boot: this node's own host key{}.\nHostKey {KEY}\n",
            if certificate {
                " and its certificate"
            } else {
                ""
            }
        );
        if certificate {
            text.push_str(&format!("HostCertificate {CERT}\n"));
        }
        self.write(DROP_IN, text.as_bytes(), 0o644)
    }

    fn record(&self, i: &Installed) -> Result<(), SshKeyError> {
        let line = format!("{} {} {}\n", i.origin, i.fingerprint, i.valid_before_unix);
        self.write(RECORD, line.as_bytes(), 0o600)
    }

    /// Writes a node file atomically with `mode` (a temporary file renamed).
    fn write(&self, node_path: &str, bytes: &[u8], mode: u32) -> Result<(), SshKeyError> {
        let path = self.root.path(node_path);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
        }
        crate::os::write_atomic(&path, bytes, mode).map_err(|(action, e)| io(action, &path)(e))
    }
}

/// What `public` installed with `origin` is.
fn installed(origin: &str, public: &str, valid_before: u64) -> Result<Installed, SshKeyError> {
    let fingerprint = crate::parse::hostkey::parse(public)
        .map(|k| k.fingerprint)
        .map_err(|e| SshKeyError::Answer(format!("{public:?}: {e}")))?;
    Ok(Installed {
        origin: origin.to_string(),
        fingerprint,
        valid_before_unix: valid_before,
    })
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SshKeyError {
    let path = path.display().to_string();
    move |source| SshKeyError::Io {
        action,
        path,
        source,
    }
}

/// When to ask for a new certificate: at two thirds of the life left of one
/// just installed (valid until `valid_before`), never sooner than a minute;
/// `None` for no certificate.
pub fn renew_in(valid_before: u64, now: u64) -> Option<std::time::Duration> {
    (valid_before > 0).then(|| {
        let left = valid_before.saturating_sub(now);
        std::time::Duration::from_secs((left * 2 / 3).max(60))
    })
}

/// The same key type and key, whatever the comments.
fn same_key(a: &str, b: &str) -> bool {
    let key = |s: &str| s.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    key(a) == key(b)
}

fn parse_record(text: &str) -> Option<Installed> {
    let mut words = text.split_whitespace();
    Some(Installed {
        origin: words.next()?.to_string(),
        fingerprint: words.next()?.to_string(),
        valid_before_unix: words.next()?.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn certificates_are_renewed_at_two_thirds_of_their_life() {
        let day = 86_400;
        assert_eq!(renew_in(0, 100), None);
        assert_eq!(
            renew_in(100 + 30 * day, 100),
            Some(std::time::Duration::from_secs(20 * day))
        );
        assert_eq!(renew_in(50, 100), Some(std::time::Duration::from_secs(60)));
    }

    #[test]
    fn a_boot_key_is_made_once_per_boot_and_replaced_by_what_the_coordinator_gives() {
        let dir = tempfile::tempdir().unwrap();
        let keys = SshKeys::new(HostRoot::new(dir.path()));
        let a = keys.boot_key(false).unwrap();
        assert!(a.starts_with("ssh-ed25519 "), "{a}");
        assert_eq!(keys.boot_key(false).unwrap(), a, "kept within the boot");
        let mode = std::fs::metadata(dir.path().join("etc/ssh/ssh_host_ed25519_key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(keys.installed().unwrap().origin, "boot");
        let drop_in =
            std::fs::read_to_string(dir.path().join(DROP_IN.trim_start_matches('/'))).unwrap();
        assert!(
            drop_in.contains("HostKey /etc/ssh/ssh_host_ed25519_key\n")
                && !drop_in.contains("HostCertificate")
        );

        // A certificate for another key is refused; one for this key installed.
        assert!(
            keys.install(&certificate_for("ssh-ed25519 BBBB"), &a)
                .is_err()
        );
        let i = keys.install(&certificate_for(&a), &a).unwrap();
        assert_eq!(
            (i.origin.as_str(), i.valid_before_unix),
            ("certificate", 42)
        );
        let drop_in =
            std::fs::read_to_string(dir.path().join(DROP_IN.trim_start_matches('/'))).unwrap();
        assert!(drop_in.contains("HostCertificate /etc/ssh/ssh_host_ed25519_key-cert.pub\n"));

        let b = keys.boot_key(true).unwrap();
        assert_ne!(a, b, "a fresh key on rotation");
        assert!(
            !dir.path().join(CERT.trim_start_matches('/')).exists(),
            "the old certificate goes"
        );
        let e = keys
            .install(
                &pb::HostKeys {
                    error: "no CA".into(),
                    ..Default::default()
                },
                &b,
            )
            .unwrap_err();
        assert!(e.to_string().contains("no CA"));
    }

    /// A sandbox systemctl that logs each call with the origin recorded at
    /// that moment, says sshd is `state`, and fails a restart when asked.
    fn fake_systemctl(root: &Path, state: &str, restart_fails: bool) {
        let script = format!(
            "#!/bin/sh\nprintf '%s %s record=%s\\n' \"$1\" \"$2\" \"$(cut -d' ' -f1 {root}/run/dfleet-agent/host-keys)\" >> {root}/systemctl.log\n\
             case \"$1\" in\n  is-active) echo {state}; [ {state} = active ];;\n  try-restart) {fail};;\nesac\n",
            root = root.display(),
            fail = if restart_fails {
                "echo 'Job for ssh.service failed.' >&2; exit 1"
            } else {
                "true"
            },
        );
        let path = root.join("usr/bin/systemctl");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// A sandbox with that systemctl, this boot's key, and a certificate for
    /// it installed (not served yet).
    fn certified_boot_key(
        state: &str,
        restart_fails: bool,
    ) -> (tempfile::TempDir, SshKeys, String, Installed) {
        let dir = tempfile::tempdir().unwrap();
        fake_systemctl(dir.path(), state, restart_fails);
        let keys = SshKeys::new(HostRoot::new(dir.path()));
        let public = keys.boot_key(false).unwrap();
        let i = keys.install(&certificate_for(&public), &public).unwrap();
        (dir, keys, public, i)
    }

    fn certificate_for(public: &str) -> pb::HostKeys {
        pb::HostKeys {
            mode: pb::HostKeyMode::Certificates as i32,
            certificates: vec![pb::HostCertificate {
                public_key: public.to_string(),
                certificate: "ssh-ed25519-cert-v01@openssh.com AAAA".into(),
                valid_before_unix: 42,
            }],
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_running_sshd_is_restarted_before_the_new_material_is_recorded() {
        let (dir, keys, public, i) = certified_boot_key("active", false);
        assert_eq!(
            keys.installed().unwrap().origin,
            "boot",
            "not before sshd serves it"
        );
        keys.serve(&i).await.unwrap();
        let log = std::fs::read_to_string(dir.path().join("systemctl.log")).unwrap();
        assert_eq!(
            log,
            "is-active sshd.service record=boot\ntry-restart sshd.service record=boot\n"
        );
        assert_eq!(keys.installed().unwrap(), i);
        assert_eq!(keys.current_certificate(&public), Some(42));
        // The same material again (a managed key on a new stream): sshd is
        // left alone.
        keys.serve(&i).await.unwrap();
        let again = std::fs::read_to_string(dir.path().join("systemctl.log")).unwrap();
        assert_eq!(again, log);
        // A new key pair (rotation) has no certificate yet.
        let rotated = keys.boot_key(true).unwrap();
        assert_eq!(keys.current_certificate(&rotated), None);
    }

    #[tokio::test]
    async fn an_sshd_not_started_yet_is_left_to_read_the_files_when_it_starts() {
        let (dir, keys, _, i) = certified_boot_key("inactive", false);
        keys.serve(&i).await.unwrap();
        let log = std::fs::read_to_string(dir.path().join("systemctl.log")).unwrap();
        assert_eq!(log, "is-active sshd.service record=boot\n");
        assert_eq!(keys.installed().unwrap().origin, "certificate");
    }

    #[tokio::test]
    async fn a_failed_restart_is_named_and_nothing_is_recorded_as_served() {
        let (_dir, keys, _, i) = certified_boot_key("active", true);
        let e = keys.serve(&i).await.unwrap_err().to_string();
        assert!(
            e.contains("try-restart sshd.service exited with 1: Job for ssh.service failed."),
            "{e}"
        );
        assert_eq!(keys.installed().unwrap().origin, "boot");
    }
}
