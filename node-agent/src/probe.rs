//! The lower probe: the only code that touches the shared lower layer.
//!
//! A node's root image is an NFS mount. When the server hangs, every system call on the lower
//! blocks in the kernel and cannot be cancelled. So the probe runs its reads in one blocking job
//! with a timeout (5 s by default, node_exporter's stuck-mount rule), keeps at most one job
//! outstanding — a hung job is never joined by a second one — and caches what the last answered
//! job read (generation stamp, host keys) for the report path.
//!
//! Architecture invariant: nothing else on the report path reads through the lower, so a hung NFS
//! server makes one check fail instead of freezing the agent.

use std::sync::Arc;
use std::time::Duration;

use dfleet_proto::domain::{Check, GenerationRef, HostKey};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::facts::hostkeys::{self, Layers};
use crate::os::HostRoot;
use crate::parse::stamp;

/// The name of the check this probe produces.
pub const CHECK_NAME: &str = "lower-reachable";

/// Where the image keeps its generation stamp, relative to the image root.
pub const STAMP_PATH: &str = "/etc/dfleet/generation";

/// What a probe job looks at, derived from the mount table at each report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeTarget {
    /// The path whose filesystem is stat'ed: the first lowerdir, or `/` without an overlay.
    pub stat_path: String,
    /// The generation stamp: `<first lowerdir>/etc/dfleet/generation`, or `/etc/dfleet/generation`
    /// without an overlay.
    pub stamp_path: String,
    /// The overlay's layers, for the host keys' origins; `None` without an overlay.
    pub layers: Option<Layers>,
}

impl ProbeTarget {
    /// The target for an overlay root with this first lower directory and upper directory.
    pub fn overlay(lowerdir: &str, upperdir: &str) -> Self {
        let lower = lowerdir.trim_end_matches('/');
        ProbeTarget {
            stat_path: lowerdir.to_string(),
            stamp_path: format!("{lower}{STAMP_PATH}"),
            layers: Some(Layers {
                upperdir: upperdir.to_string(),
                lowerdir: Some(lowerdir.to_string()),
            }),
        }
    }

    /// The target when `/` is not an overlay: the root itself is what could hang (an NFS root).
    pub fn plain_root() -> Self {
        ProbeTarget {
            stat_path: "/".to_string(),
            stamp_path: STAMP_PATH.to_string(),
            layers: None,
        }
    }
}

/// What one answered probe job read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LowerSnapshot {
    /// `Ok` when the lower answered `statfs`, else why not.
    pub stat: Result<(), String>,
    /// The generation stamp, or why it could not be read.
    pub stamp: Result<GenerationRef, String>,
    pub host_keys: Vec<HostKey>,
}

/// What the report path gets from [`Probe::run`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeOutcome {
    /// The `lower-reachable` check.
    pub check: Check,
    /// From the last job that answered; `None` before any did.
    pub snapshot: Option<LowerSnapshot>,
}

impl ProbeOutcome {
    pub fn stamp(&self) -> Option<&GenerationRef> {
        self.snapshot.as_ref()?.stamp.as_ref().ok()
    }

    pub fn host_keys(&self) -> &[HostKey] {
        self.snapshot
            .as_ref()
            .map(|s| s.host_keys.as_slice())
            .unwrap_or(&[])
    }
}

type Job = Arc<dyn Fn(ProbeTarget) -> LowerSnapshot + Send + Sync>;

struct Outstanding {
    handle: JoinHandle<LowerSnapshot>,
    started: Instant,
}

/// Probes the lower layer with at most one blocking job in flight.
pub struct Probe {
    job: Job,
    timeout: Duration,
    outstanding: Option<Outstanding>,
    last: Option<LowerSnapshot>,
    jobs_started: u64,
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probe")
            .field("timeout", &self.timeout)
            .field("outstanding", &self.outstanding.is_some())
            .field("last", &self.last)
            .finish_non_exhaustive()
    }
}

impl Probe {
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

    /// The real probe: `statfs` of the lower, then its generation stamp and the host keys.
    pub fn new(root: HostRoot, timeout: Duration) -> Self {
        Probe::with_job(move |target| read_lower(&root, &target), timeout)
    }

    /// A probe running `job` in place of the real reads (tests inject a job that hangs).
    pub fn with_job(
        job: impl Fn(ProbeTarget) -> LowerSnapshot + Send + Sync + 'static,
        timeout: Duration,
    ) -> Self {
        Probe {
            job: Arc::new(job),
            timeout,
            outstanding: None,
            last: None,
            jobs_started: 0,
        }
    }

    /// How many blocking jobs this probe has started (a hung lower must not make this grow).
    pub fn jobs_started(&self) -> u64 {
        self.jobs_started
    }

    /// Whether a job that timed out is still blocked.
    pub fn is_stuck(&self) -> bool {
        self.outstanding
            .as_ref()
            .is_some_and(|o| !o.handle.is_finished())
    }

    /// Probes once. Waits at most the timeout; returns at once while an earlier job is still
    /// blocked, without starting another.
    pub async fn run(&mut self, target: ProbeTarget) -> ProbeOutcome {
        if let Some(o) = self.outstanding.take() {
            if !o.handle.is_finished() {
                let stuck_for = Instant::now().duration_since(o.started);
                self.outstanding = Some(o);
                return self.unresponsive(&target, stuck_for);
            }
            // The stuck job answered after all; keep what it read, then probe afresh.
            if let Ok(snapshot) = o.handle.await {
                self.last = Some(snapshot);
            }
        }

        let started = Instant::now();
        let job = Arc::clone(&self.job);
        let job_target = target.clone();
        let mut handle = tokio::task::spawn_blocking(move || job(job_target));
        self.jobs_started += 1;
        match tokio::time::timeout(self.timeout, &mut handle).await {
            Ok(Ok(snapshot)) => {
                let check = match &snapshot.stat {
                    Ok(()) => Check::pass(
                        CHECK_NAME,
                        format!(
                            "{} answered in {} ms",
                            target.stat_path,
                            Instant::now().duration_since(started).as_millis()
                        ),
                    ),
                    Err(e) => Check::fail(CHECK_NAME, e.clone()),
                };
                self.last = Some(snapshot);
                ProbeOutcome {
                    check,
                    snapshot: self.last.clone(),
                }
            }
            Ok(Err(join_error)) => ProbeOutcome {
                check: Check::fail(CHECK_NAME, format!("lower probe failed: {join_error}")),
                snapshot: self.last.clone(),
            },
            Err(_elapsed) => {
                self.outstanding = Some(Outstanding { handle, started });
                self.unresponsive(&target, self.timeout)
            }
        }
    }

    fn unresponsive(&self, target: &ProbeTarget, for_: Duration) -> ProbeOutcome {
        ProbeOutcome {
            check: Check::fail(
                CHECK_NAME,
                format!(
                    "lower {} unresponsive for {}s (statfs did not return; timeout {}s)",
                    target.stat_path,
                    for_.as_secs(),
                    self.timeout.as_secs()
                ),
            ),
            snapshot: self.last.clone(),
        }
    }
}

/// The real probe job. Blocking; may hang as long as the NFS server does.
pub fn read_lower(root: &HostRoot, target: &ProbeTarget) -> LowerSnapshot {
    if let Err(e) = root.statfs(&target.stat_path) {
        return LowerSnapshot {
            stat: Err(e.to_string()),
            stamp: Err("lower not reachable".to_string()),
            host_keys: Vec::new(),
        };
    }
    let stamp = root
        .read_to_string(&target.stamp_path)
        .map_err(|e| e.to_string())
        .and_then(|text| stamp::parse(&text).map_err(|e| format!("{}: {e}", target.stamp_path)));
    LowerSnapshot {
        stat: Ok(()),
        stamp,
        host_keys: hostkeys::collect(root, target.layers.as_ref()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfleet_proto::domain::{CheckStatus, Generation};
    use std::sync::Mutex;
    use std::sync::mpsc;

    fn target() -> ProbeTarget {
        ProbeTarget::overlay("/run/dfleet/lower", "/run/dfleet/rw/upper")
    }

    fn good() -> LowerSnapshot {
        LowerSnapshot {
            stat: Ok(()),
            stamp: Ok(GenerationRef {
                image: "compute".into(),
                generation: Generation(7),
            }),
            host_keys: Vec::new(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_lower_fails_the_check_and_is_not_probed_twice() {
        let (release, blocked) = mpsc::channel::<()>();
        let blocked = Mutex::new(blocked);
        let (started_tx, started) = mpsc::channel::<()>();
        let started_tx = Mutex::new(started_tx);
        let mut probe = Probe::with_job(
            move |_| {
                let _ = started_tx.lock().unwrap().send(());
                // Blocks like a statfs on a dead NFS server, until the test lets go.
                let _ = blocked.lock().unwrap().recv();
                good()
            },
            Duration::from_secs(5),
        );

        // Blocking jobs stop paused time from auto-advancing, so move the clock by hand once the
        // probe is waiting on its timeout.
        let (first, ()) = tokio::join!(
            probe.run(target()),
            tokio::time::advance(Duration::from_secs(6))
        );
        assert_eq!(first.check.name, "lower-reachable");
        assert_eq!(first.check.status, CheckStatus::Fail);
        assert_eq!(
            first.check.detail,
            "lower /run/dfleet/lower unresponsive for 5s (statfs did not return; timeout 5s)"
        );
        assert_eq!(first.snapshot, None);
        // The job really is running (and blocked), not merely queued.
        started.recv().unwrap();
        assert!(probe.is_stuck());

        tokio::time::advance(Duration::from_secs(10)).await;
        let second = probe.run(target()).await;
        assert_eq!(second.check.status, CheckStatus::Fail);
        assert!(
            second
                .check
                .detail
                .starts_with("lower /run/dfleet/lower unresponsive for 16s"),
            "{}",
            second.check.detail
        );
        assert_eq!(probe.jobs_started(), 1, "a second blocking job was started");
        assert!(started.try_recv().is_err());

        // Let the hung job go so the runtime can shut down.
        release.send(()).unwrap();
    }

    #[tokio::test]
    async fn an_answering_lower_passes_and_its_reads_are_cached() {
        let mut probe = Probe::with_job(|_| good(), Duration::from_secs(5));
        let out = probe.run(target()).await;
        assert_eq!(out.check.status, CheckStatus::Pass);
        assert!(
            out.check
                .detail
                .starts_with("/run/dfleet/lower answered in ")
        );
        assert_eq!(out.stamp().unwrap().to_string(), "compute:7");
        assert!(!probe.is_stuck());
    }

    #[tokio::test]
    async fn a_failing_statfs_is_named() {
        let t = tempfile::tempdir().unwrap();
        let mut probe = Probe::new(HostRoot::new(t.path()), Duration::from_secs(5));
        let out = probe.run(target()).await;
        assert_eq!(out.check.status, CheckStatus::Fail);
        assert!(
            out.check
                .detail
                .starts_with(&format!("statfs {}/run/dfleet/lower: ", t.path().display())),
            "{}",
            out.check.detail
        );
        assert_eq!(out.stamp(), None);
    }
}
