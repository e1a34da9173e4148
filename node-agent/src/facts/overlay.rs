//! The root filesystem's layout and the RAM its overlay's upper layer uses.

use std::collections::VecDeque;
use std::time::Duration;

use dfleet_proto::domain::OverlayFacts;
use tokio::time::Instant;

use crate::facts::walk::{self, WalkLimits};
use crate::os::{HostRoot, OsError};
use crate::parse::mountinfo::{self, Mount, MountinfoError};

/// Where the mount table is read.
pub const MOUNTINFO: &str = "/proc/self/mountinfo";

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error(transparent)]
    Read(#[from] OsError),
    #[error(transparent)]
    Parse(#[from] MountinfoError),
    #[error("no mount at / in {MOUNTINFO}")]
    NoRoot,
}

/// What is mounted at `/`, and when it is an overlay, its layers and the mounts holding them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootLayout {
    pub root: Mount,
    pub overlay: Option<OverlayLayout>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayLayout {
    /// Top-most first.
    pub lowerdirs: Vec<String>,
    pub upperdir: Option<String>,
    pub workdir: Option<String>,
    /// The mount holding the upper directory (a tmpfs at `/run/dfleet/rw` when designed).
    pub upper_mount: Option<Mount>,
    /// The mount holding the first lower directory (NFS at `/run/dfleet/lower` when designed).
    pub lower_mount: Option<Mount>,
}

impl RootLayout {
    /// Reads and interprets the mount table.
    pub fn read(root: &HostRoot) -> Result<RootLayout, LayoutError> {
        let text = root.read_to_string(MOUNTINFO)?;
        RootLayout::from_mounts(&mountinfo::parse(&text)?)
    }

    pub fn from_mounts(mounts: &[Mount]) -> Result<RootLayout, LayoutError> {
        let root = mountinfo::root_mount(mounts).ok_or(LayoutError::NoRoot)?;
        let overlay = (root.fstype == "overlay").then(|| {
            let opts = mountinfo::overlay_options(&root.super_options);
            let holder = |dir: Option<&String>| {
                dir.and_then(|d| mountinfo::mount_containing(mounts, d))
                    // The overlay itself is at "/", which prefixes everything; a layer directory
                    // held by the overlay would be a layer inside itself, i.e. unknown.
                    .filter(|m| m.id != root.id)
                    .cloned()
            };
            OverlayLayout {
                upper_mount: holder(opts.upperdir.as_ref()),
                lower_mount: holder(opts.lowerdirs.first()),
                lowerdirs: opts.lowerdirs,
                upperdir: opts.upperdir,
                workdir: opts.workdir,
            }
        });
        Ok(RootLayout {
            root: root.clone(),
            overlay,
        })
    }

    pub fn first_lowerdir(&self) -> Option<&str> {
        self.overlay.as_ref()?.lowerdirs.first().map(String::as_str)
    }

    pub fn upperdir(&self) -> Option<&str> {
        self.overlay.as_ref()?.upperdir.as_deref()
    }

    /// The lower layer's mount source, e.g. `10.0.0.1:/srv/dfleet/images/compute/7`; empty when
    /// unknown or not an overlay.
    pub fn lower_source(&self) -> String {
        self.overlay
            .as_ref()
            .and_then(|o| o.lower_mount.as_ref())
            .map(|m| m.source.clone())
            .unwrap_or_default()
    }

    /// The facts the mount table alone gives; sizes are filled by [`measure_upper`].
    pub fn facts(&self) -> OverlayFacts {
        let mut f = OverlayFacts {
            root_is_overlay: self.overlay.is_some(),
            root_fstype: self.root.fstype.clone(),
            root_source: self.root.source.clone(),
            ..OverlayFacts::default()
        };
        if let Some(o) = &self.overlay {
            f.lowerdirs = o.lowerdirs.clone();
            f.upperdir = o.upperdir.clone().unwrap_or_default();
            f.workdir = o.workdir.clone().unwrap_or_default();
            if let Some(m) = &o.upper_mount {
                f.upper_fstype = m.fstype.clone();
                f.upper_source = m.source.clone();
                f.upper_mount_point = m.mount_point.clone();
            }
        }
        f
    }
}

/// Fills `facts` with the upper layer's filesystem numbers and a bounded walk of it. Blocking:
/// run it in `spawn_blocking`. Failures go into `facts.error`; nothing here touches the lower.
/// `walk_due` decides, from the fresh statfs numbers, whether the (costly)
/// walk runs this time; without it the walk fields stay as they are.
pub fn measure_upper(
    root: &HostRoot,
    facts: &mut OverlayFacts,
    limits: &WalkLimits,
    deadline: Instant,
    walk_due: impl FnOnce(&OverlayFacts) -> bool,
) -> bool {
    if !facts.root_is_overlay {
        return false;
    }
    if facts.upperdir.is_empty() {
        push_error(
            facts,
            "overlay root has no upperdir option (read-only overlay)",
        );
        return false;
    }
    let upperdir = facts.upperdir.clone();
    match root.statfs(&upperdir) {
        Ok(st) => {
            facts.size_bytes = st.size_bytes;
            facts.used_bytes = st.used_bytes;
            facts.avail_bytes = st.avail_bytes;
            facts.inodes_total = st.inodes_total;
            facts.inodes_free = st.inodes_free;
        }
        Err(e) => push_error(facts, &e.to_string()),
    }
    if !walk_due(facts) {
        return false;
    }
    match walk::walk_upper(root, &upperdir, limits, deadline) {
        Ok(w) => {
            facts.largest_paths = w.largest;
            facts.whiteouts = w.whiteouts;
            facts.walked_entries = w.walked_entries;
            facts.walk_truncated = w.truncated;
        }
        Err(e) => push_error(facts, &format!("walking upper: {e}")),
    }
    true
}

/// Appends a reason to `facts.error`, keeping earlier ones.
pub fn push_error(facts: &mut OverlayFacts, msg: &str) {
    if !facts.error.is_empty() {
        facts.error.push_str("; ");
    }
    facts.error.push_str(msg);
}

/// Growth of the upper layer's used bytes over a sliding window of recent reports.
#[derive(Debug, Clone)]
pub struct GrowthTracker {
    window: Duration,
    samples: VecDeque<(Instant, u64)>,
}

impl GrowthTracker {
    /// Growth is measured between the newest sample and the oldest one no older than `window`.
    pub fn new(window: Duration) -> Self {
        GrowthTracker {
            window,
            samples: VecDeque::new(),
        }
    }

    /// Records `used_bytes` at `now` and returns the growth in bytes per second (negative when the
    /// upper shrinks, 0 until two samples at different times exist).
    pub fn record(&mut self, now: Instant, used_bytes: u64) -> f64 {
        if self.samples.back().is_some_and(|(t, _)| now < *t) {
            // Time never goes back with tokio's monotonic clock; start over if it does anyway.
            self.samples.clear();
        }
        self.samples.push_back((now, used_bytes));
        // Keep one sample older than the window start at most, so the window is always spanned.
        while self.samples.len() > 2 && now.duration_since(self.samples[1].0) >= self.window {
            self.samples.pop_front();
        }
        let (t0, u0) = self.samples[0];
        let dt = now.duration_since(t0).as_secs_f64();
        if dt <= 0.0 {
            return 0.0;
        }
        (used_bytes as f64 - u0 as f64) / dt
    }
}

/// Seconds until the upper is full at this growth rate, when it grows at all.
pub fn seconds_to_full(avail_bytes: u64, growth_bytes_per_second: f64) -> Option<u64> {
    (growth_bytes_per_second > 0.0)
        .then(|| (avail_bytes as f64 / growth_bytes_per_second).ceil() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(fixture: &str) -> RootLayout {
        RootLayout::from_mounts(&mountinfo::parse(fixture).unwrap()).unwrap()
    }

    #[test]
    fn diskless_layout_facts() {
        let l = layout(include_str!("../../tests/fixtures/mountinfo-diskless.txt"));
        let f = l.facts();
        assert!(f.root_is_overlay);
        assert_eq!(f.lowerdirs, vec!["/run/dfleet/lower"]);
        assert_eq!(f.upperdir, "/run/dfleet/rw/upper");
        assert_eq!(f.workdir, "/run/dfleet/rw/work");
        assert_eq!(
            (f.upper_fstype.as_str(), f.upper_mount_point.as_str()),
            ("tmpfs", "/run/dfleet/rw")
        );
        assert_eq!(l.lower_source(), "10.0.0.1:/srv/dfleet/images/compute/7");
    }

    #[test]
    fn a_disk_root_says_so() {
        let l = layout(include_str!("../../tests/fixtures/mountinfo-host-ext4.txt"));
        let f = l.facts();
        assert!(!f.root_is_overlay);
        assert_eq!(
            (f.root_fstype.as_str(), f.root_source.as_str()),
            ("ext4", "/dev/vda")
        );
        assert_eq!(f.upperdir, "");
        assert_eq!(l.lower_source(), "");
    }

    #[test]
    fn layer_dirs_on_the_overlay_itself_have_no_holder() {
        let l = layout(
            "1 0 0:40 / / rw - overlay overlay rw,lowerdir=/l,upperdir=/u/upper,workdir=/u/work\n",
        );
        let o = l.overlay.unwrap();
        assert_eq!(o.upper_mount, None);
        assert_eq!(o.lower_mount, None);
    }

    #[test]
    fn growth_over_a_window() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut g = GrowthTracker::new(s(300));
        assert_eq!(g.record(t0, 1_000), 0.0);
        assert_eq!(g.record(t0 + s(10), 2_000), 100.0);
        assert_eq!(g.record(t0 + s(20), 5_000), 200.0);
        // 400 s later the first two samples are out of the window: (9000-5000)/400.
        assert_eq!(g.record(t0 + s(420), 9_000), 10.0);
        // The oldest kept sample (t=20) spans the window: (8000-5000)/500.
        assert_eq!(g.record(t0 + s(520), 8_000), 6.0);
        assert_eq!(g.record(t0 + s(920), 4_000), -10.0);
        assert_eq!(seconds_to_full(1_000, 10.0), Some(100));
        assert_eq!(seconds_to_full(1_001, 10.0), Some(101));
        assert_eq!(seconds_to_full(1_000, -10.0), None);
        assert_eq!(seconds_to_full(1_000, 0.0), None);
    }
}
