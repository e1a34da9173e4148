//! One report from all the collectors. Never fails as a whole: what cannot be read becomes an
//! `overlay.error` entry or a failing check with its reason.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dfleet_proto::domain::{
    BootedGeneration, Check, CheckStatus, GenerationRef, OverlayFacts, Report,
};
use tokio::time::Instant;

use crate::facts::overlay::{self, GrowthTracker, RootLayout};
use crate::facts::walk::WalkLimits;
use crate::facts::{identity, memory};
use crate::os::HostRoot;
use crate::probe::{self, Probe, ProbeTarget};
use crate::readiness::{self, CheckCommand};

/// What a collector does, beyond the machine it looks at.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectorConfig {
    pub walk: WalkLimits,
    /// Growth is measured over at least this much recent history.
    pub growth_window: Duration,
    pub probe_timeout: Duration,
    pub systemd_timeout: Duration,
    /// The walk of the upper layer (largest paths, whiteouts) runs at most
    /// this often, or sooner when usage moved by more than a twentieth of the
    /// upper's size; statfs numbers are fresh in every report.
    pub walk_interval: Duration,
    /// Extra readiness checks from the agent's own configuration, run in
    /// order after the built-in ones.
    pub checks: Vec<CheckCommand>,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        CollectorConfig {
            walk: WalkLimits::default(),
            growth_window: Duration::from_secs(300),
            probe_timeout: Probe::DEFAULT_TIMEOUT,
            systemd_timeout: Duration::from_secs(10),
            walk_interval: Duration::from_secs(60),
            checks: Vec::new(),
        }
    }
}

/// Collects reports about one machine, keeping what must persist between them (growth samples,
/// the lower probe and its cache).
#[derive(Debug)]
pub struct Collector {
    root: HostRoot,
    config: CollectorConfig,
    growth: GrowthTracker,
    probe: Probe,
    coordinator_checks: Vec<CheckCommand>,
    last_walk: Option<LastWalk>,
}

/// The result of the last walk of the upper layer, reused between walks.
#[derive(Debug, Clone)]
struct LastWalk {
    at: Instant,
    used_bytes: u64,
    largest_paths: Vec<dfleet_proto::domain::PathUsage>,
    whiteouts: u64,
    walked_entries: u64,
    walk_truncated: bool,
}

impl Collector {
    pub fn new(root: HostRoot, config: CollectorConfig) -> Self {
        let probe = Probe::new(root.clone(), config.probe_timeout);
        Collector::with_probe(root, config, probe)
    }

    /// A collector whose lower probe is given (tests inject one that hangs).
    pub fn with_probe(root: HostRoot, config: CollectorConfig, probe: Probe) -> Self {
        Collector {
            growth: GrowthTracker::new(config.growth_window),
            root,
            config,
            probe,
            coordinator_checks: Vec::new(),
            last_walk: None,
        }
    }

    pub fn root(&self) -> &HostRoot {
        &self.root
    }

    /// Sets the check commands the coordinator asks for (from the cluster
    /// inventory); they run after the agent's own.
    pub fn set_coordinator_checks(&mut self, checks: Vec<CheckCommand>) {
        self.coordinator_checks = checks;
    }

    /// The upper layer's used bytes right now: mount table and one `statfs`, no walk and nothing
    /// through the lower. Cheap enough to poll between reports; `None` when not an overlay or
    /// unreadable.
    pub fn upper_used_bytes(&self) -> Option<u64> {
        let layout = RootLayout::read(&self.root).ok()?;
        let upper = layout.upperdir()?;
        self.root.statfs(upper).ok().map(|st| st.used_bytes)
    }

    /// Reads everything once. `assigned` is the generation the coordinator wants this node on.
    pub async fn collect(&mut self, assigned: Option<&GenerationRef>) -> Report {
        let collected_at_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        let identity = identity::collect(&self.root);

        let layout = RootLayout::read(&self.root);
        let mut overlay = match &layout {
            Ok(l) => l.facts(),
            Err(e) => OverlayFacts {
                error: e.to_string(),
                ..OverlayFacts::default()
            },
        };
        overlay = self.measure(overlay).await;

        let memory = memory::collect(&self.root).unwrap_or_else(|e| {
            overlay::push_error(&mut overlay, &e);
            Default::default()
        });

        let (target, lower_source) = match &layout {
            Ok(l) => match (l.first_lowerdir(), l.upperdir()) {
                (Some(lower), Some(upper)) => {
                    (Some(ProbeTarget::overlay(lower, upper)), l.lower_source())
                }
                // An overlay without a lower or upper is broken; overlay-root says so.
                _ if l.overlay.is_some() => (None, String::new()),
                _ => (Some(ProbeTarget::plain_root()), String::new()),
            },
            Err(_) => (None, String::new()),
        };
        let (lower_check, snapshot) = match target {
            Some(target) => {
                let out = self.probe.run(target).await;
                (out.check, out.snapshot)
            }
            None => (
                Check::fail(
                    probe::CHECK_NAME,
                    "no lower layer known from the mount table",
                ),
                None,
            ),
        };
        // Without an overlay the probe still guards the reads of /etc (the root itself may be on
        // NFS), but there is no lower to call reachable: only its failure is worth a verdict.
        let lower_check = if overlay.root_is_overlay || lower_check.status == CheckStatus::Fail {
            lower_check
        } else {
            Check::skipped(
                probe::CHECK_NAME,
                "root is not an overlay; no shared lower layer",
            )
        };

        let (stamp, stamp_error) = match snapshot.as_ref().map(|s| &s.stamp) {
            Some(Ok(g)) => (Some(g.clone()), None),
            Some(Err(e)) => (None, Some(e.clone())),
            None => (None, None),
        };
        let booted = BootedGeneration {
            stamp,
            lower_source,
        };
        let host_keys = snapshot.map(|s| s.host_keys).unwrap_or_default();

        let mut checks = vec![
            readiness::overlay_root(&overlay),
            lower_check,
            readiness::generation(&booted, stamp_error.as_deref(), assigned),
            readiness::systemd(&self.root, self.config.systemd_timeout).await,
        ];
        checks.extend(readiness::ssh_host_keys(&self.root));
        for check in self.config.checks.iter().chain(&self.coordinator_checks) {
            checks.push(readiness::command(&self.root, check).await);
        }

        Report {
            collected_at_unix_ms,
            identity,
            overlay,
            memory,
            host_keys,
            checks,
            booted,
        }
    }

    /// statfs and walk of the upper in a blocking task, then growth from this sample.
    async fn measure(&mut self, facts: OverlayFacts) -> OverlayFacts {
        if !facts.root_is_overlay {
            return facts;
        }
        let root = self.root.clone();
        let limits = self.config.walk.clone();
        let started = Instant::now();
        let deadline = started + limits.time_budget;
        let fallback = facts.clone();
        let last = self.last_walk.clone();
        let interval = self.config.walk_interval;
        let (mut facts, walked) = tokio::task::spawn_blocking(move || {
            let mut facts = facts;
            let walked = overlay::measure_upper(&root, &mut facts, &limits, deadline, |now| {
                walk_due(last.as_ref(), now, started, interval)
            });
            (facts, walked)
        })
        .await
        .unwrap_or_else(|e| {
            let mut f = fallback;
            overlay::push_error(&mut f, &format!("measuring upper failed: {e}"));
            (f, false)
        });
        if walked {
            self.last_walk = Some(LastWalk {
                at: started,
                used_bytes: facts.used_bytes,
                largest_paths: facts.largest_paths.clone(),
                whiteouts: facts.whiteouts,
                walked_entries: facts.walked_entries,
                walk_truncated: facts.walk_truncated,
            });
        } else if let Some(w) = &self.last_walk {
            facts.largest_paths = w.largest_paths.clone();
            facts.whiteouts = w.whiteouts;
            facts.walked_entries = w.walked_entries;
            facts.walk_truncated = w.walk_truncated;
        }
        if facts.size_bytes > 0 {
            let growth = self.growth.record(started, facts.used_bytes);
            facts.growth_bytes_per_second = growth;
            facts.seconds_to_full = overlay::seconds_to_full(facts.avail_bytes, growth);
        }
        facts
    }
}

/// Whether the upper layer should be walked again: never walked, the last
/// walk is older than `interval`, or usage moved by more than a twentieth of
/// the upper's size since (so a sudden fill is explained at once).
fn walk_due(last: Option<&LastWalk>, now: &OverlayFacts, at: Instant, interval: Duration) -> bool {
    match last {
        None => true,
        Some(w) => {
            at.duration_since(w.at) >= interval
                || now.used_bytes.abs_diff(w.used_bytes) > now.size_bytes / 20
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use std::path::Path;
    use std::process::Command;

    use dfleet_proto::domain::{Generation, KeyOrigin, PathUsage};

    use crate::sandbox::{self, SandboxSpec};

    const MIB: u64 = 1024 * 1024;

    fn gen_ref(image: &str, n: u64) -> GenerationRef {
        GenerationRef {
            image: image.into(),
            generation: Generation(n),
        }
    }

    fn spec(name: &str, last_octet: u8) -> SandboxSpec {
        SandboxSpec::new(
            name,
            format!("52:54:00:00:00:{last_octet:02x}").parse().unwrap(),
            Ipv4Addr::new(10, 0, 0, last_octet),
        )
    }

    /// `ssh-keygen -lf` of a public key, as "BITS FINGERPRINT".
    fn ssh_keygen_lf(pub_path: &Path) -> String {
        let out = Command::new("ssh-keygen")
            .arg("-lf")
            .arg(pub_path)
            .output()
            .expect("ssh-keygen is required for the host key tests (install openssh-client)");
        assert!(
            out.status.success(),
            "ssh-keygen -lf {}: {out:?}",
            pub_path.display()
        );
        let text = String::from_utf8(out.stdout).unwrap();
        text.split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn check_names(r: &Report) -> Vec<(&str, CheckStatus)> {
        r.checks
            .iter()
            .map(|c| (c.name.as_str(), c.status))
            .collect()
    }

    #[tokio::test]
    async fn a_diskless_node_with_per_boot_keys_in_a_tmpfs() {
        let t = tempfile::tempdir().unwrap();
        let mut s = spec("cn01", 21);
        s.tmpfs_bytes = Some(64 * MIB);
        s.upper_files = vec![
            ("/var/log/slurmd.log".into(), 3 * MIB),
            ("/tmp/job/out.dat".into(), MIB),
            ("/etc/motd.local".into(), 4096),
        ];
        s.whiteouts = vec![
            "/usr/share/doc/bash/README".into(),
            "/etc/cron.daily/man-db".into(),
        ];
        let sb = sandbox::build(&t.path().join("cn01"), &s).unwrap();
        let mut c = Collector::new(sb.root(), CollectorConfig::default());

        let r = c.collect(Some(&gen_ref("compute", 7))).await;
        let o = &r.overlay;
        assert_eq!(o.error, "");
        assert!(o.root_is_overlay);
        assert_eq!(o.lowerdirs, vec!["/run/dfleet/lower"]);
        assert_eq!(
            (o.upper_fstype.as_str(), o.upper_mount_point.as_str()),
            ("tmpfs", "/run/dfleet/rw")
        );
        // The tmpfs the sandbox mounted: its size, and at least the bytes written into it.
        assert_eq!(o.size_bytes, 64 * MIB);
        assert!(o.used_bytes >= 4 * MIB + 4096, "{}", o.used_bytes);
        assert_eq!(o.avail_bytes, o.size_bytes - o.used_bytes);
        assert!(o.inodes_total > 0 && o.inodes_free < o.inodes_total);
        assert_eq!(o.whiteouts, 2);
        assert!(!o.walk_truncated);
        assert_eq!(
            &o.largest_paths[..3],
            &[
                PathUsage {
                    path: "/var".into(),
                    bytes: 3 * MIB,
                    is_dir: true
                },
                PathUsage {
                    path: "/var/log".into(),
                    bytes: 3 * MIB,
                    is_dir: true
                },
                PathUsage {
                    path: "/var/log/slurmd.log".into(),
                    bytes: 3 * MIB,
                    is_dir: false
                },
            ]
        );
        assert!(o.largest_paths.contains(&PathUsage {
            path: "/tmp/job/out.dat".into(),
            bytes: MIB,
            is_dir: false
        }));

        assert_eq!(r.memory.total_bytes, 16 << 30);
        assert!(r.memory.shmem_bytes >= 4 * MIB);
        assert_eq!(r.identity.hostname, "cn01");
        assert_eq!(r.identity.boot_mac, Some(s.mac));
        assert_eq!(r.identity.addresses, vec!["10.0.0.21"]);
        assert_eq!(r.identity.kernel, "6.1.0-28-amd64");
        assert_eq!(r.identity.uptime_seconds, 37);
        assert_eq!(r.identity.boot_id.len(), 36);

        assert_eq!(r.booted.stamp, Some(gen_ref("compute", 7)));
        assert_eq!(
            r.booted.lower_source,
            "10.0.0.1:/srv/dfleet/images/compute/7"
        );
        assert_eq!(
            check_names(&r),
            vec![
                ("overlay-root", CheckStatus::Pass),
                ("lower-reachable", CheckStatus::Pass),
                ("generation", CheckStatus::Pass),
                ("systemd", CheckStatus::Pass),
            ]
        );
        assert!(r.is_ready());

        // Keys generated at this boot live in the upper: origin Boot, fingerprints as ssh-keygen.
        let keys: Vec<(&str, &str, u32, KeyOrigin)> = r
            .host_keys
            .iter()
            .map(|k| (k.path.as_str(), k.key_type.as_str(), k.bits, k.origin))
            .collect();
        assert_eq!(
            keys,
            vec![
                (
                    "/etc/ssh/ssh_host_ecdsa_key",
                    "ecdsa-sha2-nistp256",
                    256,
                    KeyOrigin::Boot
                ),
                (
                    "/etc/ssh/ssh_host_ed25519_key",
                    "ssh-ed25519",
                    256,
                    KeyOrigin::Boot
                ),
            ]
        );
        for k in &r.host_keys {
            let pub_path = sb
                .upper_dir()
                .join(format!("{}.pub", k.path.trim_start_matches('/')));
            assert_eq!(
                format!("{} {}", k.bits, k.fingerprint),
                ssh_keygen_lf(&pub_path)
            );
            assert_eq!(k.comment, "root@cn01");
        }

        // The upper grows: growth is measured and time-to-full follows.
        sb.grow_upper("/scratch/big.bin", 8 * MIB).unwrap();
        let r2 = c.collect(Some(&gen_ref("compute", 7))).await;
        assert!(r2.overlay.used_bytes >= r.overlay.used_bytes + 8 * MIB);
        assert!(r2.overlay.growth_bytes_per_second > 0.0);
        assert!(r2.overlay.seconds_to_full.is_some());
        assert_eq!(r2.overlay.largest_paths[0].path, "/scratch");
        assert_eq!(r2.overlay.largest_paths[0].bytes, 8 * MIB);
        assert_eq!(c.upper_used_bytes(), Some(r2.overlay.used_bytes));

        // A reboot: new boot id, an empty upper, new keys.
        sb.regenerate_boot().unwrap();
        let r3 = c.collect(Some(&gen_ref("compute", 7))).await;
        assert_ne!(r3.identity.boot_id, r.identity.boot_id);
        assert_eq!(r3.overlay.whiteouts, 0);
        assert!(r3.overlay.used_bytes < MIB);
        assert_eq!(r3.host_keys.len(), 2);
        assert_ne!(r3.host_keys[1].fingerprint, r.host_keys[1].fingerprint);
        assert_eq!(r3.host_keys[1].origin, KeyOrigin::Boot);
    }

    #[tokio::test]
    async fn image_keys_are_reported_as_shared() {
        let t = tempfile::tempdir().unwrap();
        let mut s = spec("cn02", 22);
        s.shared_image_keys = true;
        let sb = sandbox::build(t.path(), &s).unwrap();
        let mut c = Collector::new(sb.root(), CollectorConfig::default());
        let r = c.collect(None).await;
        assert_eq!(r.host_keys.len(), 2);
        for k in &r.host_keys {
            assert_eq!(k.origin, KeyOrigin::Image, "{}", k.path);
            assert_eq!(k.comment, "root@image");
            let pub_path = sb
                .lower_dir()
                .join(format!("{}.pub", k.path.trim_start_matches('/')));
            assert_eq!(
                format!("{} {}", k.bits, k.fingerprint),
                ssh_keygen_lf(&pub_path)
            );
        }
        // No generation assigned: the check does not apply.
        assert_eq!(
            r.checks
                .iter()
                .find(|c| c.name == "generation")
                .unwrap()
                .status,
            CheckStatus::Skipped
        );

        // The image's key copied up (e.g. by a chmod) is still the shared key.
        let up = sb.upper_dir().join("etc/ssh");
        std::fs::create_dir_all(&up).unwrap();
        for f in ["ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"] {
            std::fs::copy(sb.lower_dir().join("etc/ssh").join(f), up.join(f)).unwrap();
        }
        let r = c.collect(None).await;
        let ed = r
            .host_keys
            .iter()
            .find(|k| k.key_type == "ssh-ed25519")
            .unwrap();
        assert_eq!(ed.origin, KeyOrigin::Image);

        // A private key removed from the merged view: Missing.
        std::fs::remove_file(sb.dir().join("etc/ssh/ssh_host_ecdsa_key")).unwrap();
        let r = c.collect(None).await;
        let ec = r
            .host_keys
            .iter()
            .find(|k| k.path == "/etc/ssh/ssh_host_ecdsa_key")
            .unwrap();
        assert_eq!(ec.origin, KeyOrigin::Missing);
        assert_eq!(ec.bits, 256);
    }

    #[tokio::test]
    async fn generation_and_check_commands_on_a_sandbox() {
        let t = tempfile::tempdir().unwrap();
        let sb = sandbox::build(t.path(), &spec("cn03", 23)).unwrap();
        let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect();
        let config = CollectorConfig {
            checks: vec![
                CheckCommand {
                    name: "nhc".into(),
                    argv: argv(&["sh", "-c", "echo healthy"]),
                    timeout: Duration::from_secs(30),
                },
                CheckCommand {
                    name: "slurmd-registered".into(),
                    argv: argv(&["sh", "-c", "echo 'slurmd: not registered'; exit 4"]),
                    timeout: Duration::from_secs(30),
                },
            ],
            ..CollectorConfig::default()
        };
        let mut c = Collector::new(sb.root(), config);

        let right = c.collect(Some(&gen_ref("compute", 7))).await;
        let gen_check = |r: &Report| {
            r.checks
                .iter()
                .find(|c| c.name == "generation")
                .unwrap()
                .clone()
        };
        assert_eq!(
            gen_check(&right),
            Check::pass("generation", "booted compute:7")
        );
        assert_eq!(right.failing_checks(), vec!["slurmd-registered"]);
        assert_eq!(
            right.checks.last().unwrap(),
            &Check::fail("slurmd-registered", "exit code 4: slurmd: not registered")
        );
        assert_eq!(
            right.checks[right.checks.len() - 2],
            Check::pass("nhc", "healthy")
        );

        let wrong = c.collect(Some(&gen_ref("compute", 8))).await;
        assert_eq!(
            gen_check(&wrong),
            Check::fail("generation", "booted compute:7, assigned compute:8")
        );

        // The stamp disagrees with the export the lower is mounted from.
        std::fs::write(
            sb.lower_dir().join("etc/dfleet/generation"),
            "image = \"compute\"\ngeneration = 8\n",
        )
        .unwrap();
        let odd = c.collect(Some(&gen_ref("compute", 8))).await;
        assert_eq!(
            gen_check(&odd).detail,
            "stamp says compute:8 but the lower is mounted from \
             10.0.0.1:/srv/dfleet/images/compute/7 (compute:7)"
        );
    }

    #[tokio::test]
    async fn a_disk_root_is_not_an_overlay() {
        let t = tempfile::tempdir().unwrap();
        let put = |rel: &str, text: &str| {
            let p = t.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        put(
            "proc/self/mountinfo",
            include_str!("../tests/fixtures/mountinfo-host-ext4.txt"),
        );
        put(
            "proc/meminfo",
            include_str!("../tests/fixtures/meminfo.txt"),
        );
        put(
            "proc/net/fib_trie",
            include_str!("../tests/fixtures/fib_trie.txt"),
        );
        put("etc/ssh/ssh_host_ed25519_key", "private\n");
        put(
            "etc/ssh/ssh_host_ed25519_key.pub",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMuCf84dp0k1fs2c+96ROhsvg2W+H9O+uv5ghSwtuKFd root@image\n",
        );
        let mut c = Collector::new(HostRoot::new(t.path()), CollectorConfig::default());
        let r = c.collect(Some(&gen_ref("compute", 7))).await;
        assert!(!r.overlay.root_is_overlay);
        assert_eq!(
            (
                r.overlay.root_fstype.as_str(),
                r.overlay.root_source.as_str()
            ),
            ("ext4", "/dev/vda")
        );
        assert_eq!(r.overlay.size_bytes, 0);
        assert_eq!(r.overlay.error, "");
        assert_eq!(r.memory.total_bytes, 24_683_656 * 1024);
        assert_eq!(r.identity.addresses, vec!["192.0.2.2"]);
        assert_eq!(
            check_names(&r),
            vec![
                ("overlay-root", CheckStatus::Fail),
                ("lower-reachable", CheckStatus::Skipped),
                ("generation", CheckStatus::Fail),
                ("systemd", CheckStatus::Skipped),
            ]
        );
        assert_eq!(
            r.checks[0].detail,
            "root is ext4 (/dev/vda), not an overlay"
        );
        assert!(
            r.checks[2]
                .detail
                .starts_with("booted generation unknown (reading "),
            "{}",
            r.checks[2].detail
        );
        // No shared lower to prove otherwise: a node-local key.
        assert_eq!(r.host_keys.len(), 1);
        assert_eq!(r.host_keys[0].origin, KeyOrigin::Boot);
        assert_eq!(
            r.host_keys[0].fingerprint,
            "SHA256:Y0CKHTgDcxeXPPJb1kQapwTdYMb4e/ECrMGaS/gytJc"
        );
    }

    #[tokio::test]
    async fn an_empty_machine_still_gives_a_report() {
        let t = tempfile::tempdir().unwrap();
        let mut c = Collector::new(HostRoot::new(t.path()), CollectorConfig::default());
        let r = c.collect(None).await;
        assert!(
            r.overlay.error.contains("proc/self/mountinfo"),
            "{}",
            r.overlay.error
        );
        assert!(
            r.overlay.error.contains("proc/meminfo"),
            "{}",
            r.overlay.error
        );
        assert_eq!(r.failing_checks(), vec!["overlay-root", "lower-reachable"]);
        assert!(
            r.checks[0]
                .detail
                .starts_with("root filesystem unknown: reading ")
        );
        assert!(r.collected_at_unix_ms > 1_600_000_000_000);
    }

    #[test]
    fn the_walk_is_repeated_only_when_due() {
        let t0 = Instant::now();
        let mut facts = OverlayFacts {
            size_bytes: 1000,
            used_bytes: 100,
            ..OverlayFacts::default()
        };
        let minute = Duration::from_secs(60);
        assert!(walk_due(None, &facts, t0, minute));
        let last = LastWalk {
            at: t0,
            used_bytes: 100,
            largest_paths: vec![],
            whiteouts: 0,
            walked_entries: 0,
            walk_truncated: false,
        };
        assert!(!walk_due(
            Some(&last),
            &facts,
            t0 + Duration::from_secs(10),
            minute
        ));
        assert!(walk_due(Some(&last), &facts, t0 + minute, minute));
        // A jump of more than 5 % of the size walks at once.
        facts.used_bytes = 151;
        assert!(walk_due(
            Some(&last),
            &facts,
            t0 + Duration::from_secs(10),
            minute
        ));
        facts.used_bytes = 149;
        assert!(!walk_due(
            Some(&last),
            &facts,
            t0 + Duration::from_secs(10),
            minute
        ));
    }
}
