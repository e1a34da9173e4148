//! Readiness checks: named pass/fail/skipped verdicts from the facts, plus configured commands.
//!
//! Names are stable (the coordinator and operators match on them): `overlay-root`,
//! `lower-reachable` (see [`crate::probe`]), `generation`, `systemd`, and each configured check
//! command under its own name.

use std::time::Duration;

use dfleet_proto::domain::{BootedGeneration, Check, GenerationRef, OverlayFacts};
use serde::Deserialize;

use crate::os::{CommandOutcome, HostRoot};
use crate::parse::stamp;

pub const OVERLAY_ROOT: &str = "overlay-root";
pub const GENERATION: &str = "generation";
pub const SSH_HOST_KEYS: &str = "ssh-host-keys";
pub const SYSTEMD: &str = "systemd";

/// A configured check command, e.g. `slurmd` registered or NHC.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckCommand {
    pub name: String,
    /// Program and arguments, run without a shell.
    pub argv: Vec<String>,
    #[serde(default = "default_check_timeout", with = "seconds")]
    pub timeout: Duration,
}

fn default_check_timeout() -> Duration {
    Duration::from_secs(30)
}

mod seconds {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_secs_f64(f64::deserialize(d)?.max(0.0)))
    }
}

/// `/` is the designed overlay: overlay fstype, a lower layer, and the upper in RAM (tmpfs, or a
/// filesystem on a zram device).
/// On a node that runs sshd: whether it serves the coordinator's host key
/// material (a certificate or its managed key), not only the key this boot
/// made while waiting for it. `None` without sshd.
pub fn ssh_host_keys(root: &crate::os::HostRoot) -> Option<Check> {
    let keys = crate::sshkeys::SshKeys::new(root.clone());
    if !keys.has_sshd() {
        return None;
    }
    Some(match keys.installed() {
        Some(i) if i.origin == "certificate" => Check::pass(
            SSH_HOST_KEYS,
            format!("host certificate, key {}", i.fingerprint),
        ),
        Some(i) if i.origin == "coordinator" => {
            Check::pass(SSH_HOST_KEYS, format!("managed key {}", i.fingerprint))
        }
        Some(i) => Check::fail(
            SSH_HOST_KEYS,
            format!(
                "no host key material from the coordinator: sshd serves this boot's own key {}",
                i.fingerprint
            ),
        ),
        None => Check::fail(SSH_HOST_KEYS, "no host key put in place by the agent"),
    })
}

pub fn overlay_root(facts: &OverlayFacts) -> Check {
    if facts.root_fstype.is_empty() {
        return Check::fail(
            OVERLAY_ROOT,
            format!("root filesystem unknown: {}", facts.error),
        );
    }
    if !facts.root_is_overlay {
        return Check::fail(
            OVERLAY_ROOT,
            format!(
                "root is {} ({}), not an overlay",
                facts.root_fstype, facts.root_source
            ),
        );
    }
    if facts.lowerdirs.is_empty() {
        return Check::fail(OVERLAY_ROOT, "overlay root has no lower layer");
    }
    if facts.upperdir.is_empty() {
        return Check::fail(OVERLAY_ROOT, "overlay root has no upper layer (read-only)");
    }
    if facts.upper_fstype.is_empty() {
        return Check::fail(
            OVERLAY_ROOT,
            format!("no mount holds the upper directory {}", facts.upperdir),
        );
    }
    let in_ram = facts.upper_fstype == "tmpfs" || facts.upper_source.starts_with("/dev/zram");
    if !in_ram {
        return Check::fail(
            OVERLAY_ROOT,
            format!(
                "upper {} is on {} ({}), not in RAM",
                facts.upperdir, facts.upper_fstype, facts.upper_source
            ),
        );
    }
    Check::pass(
        OVERLAY_ROOT,
        format!(
            "overlay of {} with upper on {} at {}",
            facts.lowerdirs.join(":"),
            facts.upper_fstype,
            facts.upper_mount_point
        ),
    )
}

/// The booted generation equals the assigned one, and the stamp agrees with the export mounted.
/// `stamp_error` says why no stamp is known, when it is not.
pub fn generation(
    booted: &BootedGeneration,
    stamp_error: Option<&str>,
    assigned: Option<&GenerationRef>,
) -> Check {
    let Some(assigned) = assigned else {
        return Check::skipped(GENERATION, "no generation assigned");
    };
    let Some(stamp) = &booted.stamp else {
        return Check::fail(
            GENERATION,
            format!(
                "booted generation unknown ({}); assigned {assigned}",
                stamp_error.unwrap_or("no stamp read yet")
            ),
        );
    };
    if let Some(from_source) = stamp::from_lower_source(&booted.lower_source)
        && &from_source != stamp
    {
        return Check::fail(
            GENERATION,
            format!(
                "stamp says {stamp} but the lower is mounted from {} ({from_source})",
                booted.lower_source
            ),
        );
    }
    if stamp != assigned {
        return Check::fail(GENERATION, format!("booted {stamp}, assigned {assigned}"));
    }
    Check::pass(GENERATION, format!("booted {stamp}"))
}

/// systemd's overall state, where systemd runs (`/run/systemd/system` exists, as
/// `sd_booted(3)` checks).
pub async fn systemd(root: &HostRoot, timeout: Duration) -> Check {
    if !root.exists("/run/systemd/system") {
        return Check::skipped(SYSTEMD, "no systemd");
    }
    let argv = ["systemctl", "is-system-running"].map(String::from);
    let out = root.run_command(&argv, timeout).await;
    let state = out.first_line().to_string();
    match &out {
        CommandOutcome::Exited { .. } if state == "running" => Check::pass(SYSTEMD, "running"),
        CommandOutcome::Exited { .. } if state.is_empty() => {
            Check::fail(SYSTEMD, "systemctl is-system-running printed nothing")
        }
        CommandOutcome::Exited { .. } => Check::fail(SYSTEMD, format!("system is {state}")),
        _ => Check::fail(SYSTEMD, out.summary()),
    }
}

/// Runs a configured check: exit 0 passes, anything else fails with the reason.
pub async fn command(root: &HostRoot, check: &CheckCommand) -> Check {
    let out = root.run_command(&check.argv, check.timeout).await;
    match &out {
        CommandOutcome::Exited { code: Some(0), .. } => {
            let line = out.first_line();
            Check::pass(&check.name, if line.is_empty() { "exit 0" } else { line })
        }
        _ => Check::fail(&check.name, out.summary()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfleet_proto::domain::{CheckStatus, Generation};

    fn g(image: &str, n: u64) -> GenerationRef {
        GenerationRef {
            image: image.into(),
            generation: Generation(n),
        }
    }

    fn booted(stamp: Option<GenerationRef>, source: &str) -> BootedGeneration {
        BootedGeneration {
            stamp,
            lower_source: source.into(),
        }
    }

    const SRC7: &str = "10.0.0.1:/srv/dfleet/images/compute/7";

    #[test]
    fn generation_verdicts() {
        let b = booted(Some(g("compute", 7)), SRC7);
        assert_eq!(generation(&b, None, None).status, CheckStatus::Skipped);
        assert_eq!(
            generation(&b, None, Some(&g("compute", 7))),
            Check::pass("generation", "booted compute:7")
        );
        assert_eq!(
            generation(&b, None, Some(&g("compute", 8))),
            Check::fail("generation", "booted compute:7, assigned compute:8")
        );
        let mismatch = booted(
            Some(g("compute", 7)),
            "10.0.0.1:/srv/dfleet/images/compute/6",
        );
        assert_eq!(
            generation(&mismatch, None, Some(&g("compute", 7))).detail,
            "stamp says compute:7 but the lower is mounted from \
             10.0.0.1:/srv/dfleet/images/compute/6 (compute:6)"
        );
        let unknown = booted(None, SRC7);
        assert_eq!(
            generation(
                &unknown,
                Some("lower not reachable"),
                Some(&g("compute", 7))
            )
            .detail,
            "booted generation unknown (lower not reachable); assigned compute:7"
        );
        // A lower whose source names no generation (a disk, a bind mount) is not a mismatch.
        let disk = booted(Some(g("compute", 7)), "/dev/vda");
        assert_eq!(
            generation(&disk, None, Some(&g("compute", 7))).status,
            CheckStatus::Pass
        );
    }

    #[test]
    fn overlay_root_verdicts() {
        let mut f = OverlayFacts {
            root_is_overlay: true,
            root_fstype: "overlay".into(),
            lowerdirs: vec!["/run/dfleet/lower".into()],
            upperdir: "/run/dfleet/rw/upper".into(),
            upper_fstype: "tmpfs".into(),
            upper_source: "tmpfs".into(),
            upper_mount_point: "/run/dfleet/rw".into(),
            ..OverlayFacts::default()
        };
        assert_eq!(overlay_root(&f).status, CheckStatus::Pass);
        f.upper_fstype = "ext4".into();
        f.upper_source = "/dev/zram0".into();
        assert_eq!(overlay_root(&f).status, CheckStatus::Pass);
        f.upper_source = "/dev/sda2".into();
        assert_eq!(
            overlay_root(&f).detail,
            "upper /run/dfleet/rw/upper is on ext4 (/dev/sda2), not in RAM"
        );
        let disk = OverlayFacts {
            root_fstype: "ext4".into(),
            root_source: "/dev/vda".into(),
            ..OverlayFacts::default()
        };
        assert_eq!(
            overlay_root(&disk),
            Check::fail("overlay-root", "root is ext4 (/dev/vda), not an overlay")
        );
    }

    fn cmd(name: &str, argv: &[&str], timeout: Duration) -> CheckCommand {
        CheckCommand {
            name: name.into(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            timeout,
        }
    }

    #[tokio::test]
    async fn check_commands_pass_and_fail_by_name() {
        let root = HostRoot::system();
        let ok = command(
            &root,
            &cmd(
                "nhc",
                &["sh", "-c", "echo all good"],
                Duration::from_secs(30),
            ),
        )
        .await;
        assert_eq!(ok, Check::pass("nhc", "all good"));
        let bad = command(
            &root,
            &cmd(
                "slurmd-registered",
                &["sh", "-c", "echo 'node cn01 not responding' >&2; exit 2"],
                Duration::from_secs(30),
            ),
        )
        .await;
        assert_eq!(
            bad,
            Check::fail("slurmd-registered", "exit code 2: node cn01 not responding")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_check_command_times_out() {
        let c = command(
            &HostRoot::system(),
            &cmd("gpfs-mounted", &["sleep", "1000"], Duration::from_secs(7)),
        )
        .await;
        assert_eq!(c, Check::fail("gpfs-mounted", "timed out after 7s"));
    }

    #[tokio::test]
    async fn systemd_is_skipped_where_it_does_not_run() {
        let t = tempfile::tempdir().unwrap();
        let c = systemd(&HostRoot::new(t.path()), Duration::from_secs(5)).await;
        assert_eq!(c, Check::skipped("systemd", "no systemd"));
    }

    #[test]
    fn check_commands_deserialize_with_a_default_timeout() {
        let c: CheckCommand = toml::from_str("name = \"nhc\"\nargv = [\"/usr/sbin/nhc\"]").unwrap();
        assert_eq!(c.timeout, Duration::from_secs(30));
        let c: CheckCommand =
            toml::from_str("name = \"nhc\"\nargv = [\"/usr/sbin/nhc\"]\ntimeout = 2.5").unwrap();
        assert_eq!(c.timeout, Duration::from_millis(2500));
        assert!(toml::from_str::<CheckCommand>("name = \"x\"\nargv = []\nbogus = 1").is_err());
    }

    #[tokio::test]
    async fn the_ssh_check_wants_the_coordinators_material_on_nodes_with_sshd() {
        let dir = tempfile::tempdir().unwrap();
        let root = crate::os::HostRoot::new(dir.path());
        assert_eq!(ssh_host_keys(&root), None, "no sshd, no check");
        std::fs::create_dir_all(dir.path().join("usr/sbin")).unwrap();
        std::fs::write(dir.path().join("usr/sbin/sshd"), "").unwrap();
        let c = ssh_host_keys(&root).unwrap();
        assert_eq!(
            (c.status, c.detail.as_str()),
            (CheckStatus::Fail, "no host key put in place by the agent")
        );
        let keys = crate::sshkeys::SshKeys::new(root.clone());
        let public = keys.boot_key(false).unwrap();
        let c = ssh_host_keys(&root).unwrap();
        assert!(
            c.status == CheckStatus::Fail && c.detail.contains("serves this boot's own key"),
            "{c:?}"
        );
        let managed = dfleet_proto::pb::HostKeys {
            mode: dfleet_proto::pb::HostKeyMode::Managed as i32,
            keys: vec![dfleet_proto::pb::ManagedHostKey {
                private_key: "-----BEGIN OPENSSH PRIVATE KEY-----\n".into(),
                public_key: public.clone(),
            }],
            ..Default::default()
        };
        let installed = keys.install(&managed, &public).unwrap();
        let c = ssh_host_keys(&root).unwrap();
        assert_eq!(
            c.status,
            CheckStatus::Fail,
            "in place, not served yet: {c:?}"
        );
        keys.serve(&installed).await.unwrap();
        let c = ssh_host_keys(&root).unwrap();
        assert!(
            c.status == CheckStatus::Pass && c.detail.starts_with("managed key SHA256:"),
            "{c:?}"
        );
    }
}
