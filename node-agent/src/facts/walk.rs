//! A bounded walk of the overlay's upper directory: what eats the node's RAM, and how many files
//! of the image were deleted (whiteouts).
//!
//! The upper layer can hold millions of files (a job unpacking a dataset into `/tmp`), so the walk
//! stops at an entry budget and a deadline and says it was cut short; it never stalls a report.
//! It is synchronous: the caller runs it in `spawn_blocking`.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::ReadDir;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::time::Duration;

use dfleet_proto::domain::PathUsage;
use tokio::time::Instant;

use crate::os::{HostRoot, OsError};

/// How far a walk may go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalkLimits {
    pub max_entries: u64,
    pub time_budget: Duration,
    /// How many files and, separately, how many directories to report.
    pub top_n: usize,
}

impl Default for WalkLimits {
    fn default() -> Self {
        WalkLimits {
            max_entries: 100_000,
            time_budget: Duration::from_millis(200),
            top_n: 10,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WalkResult {
    /// The largest files and the largest directories (up to `top_n` of each), largest first.
    /// Paths are relative to the upper directory and start with `/`.
    pub largest: Vec<PathUsage>,
    pub whiteouts: u64,
    pub walked_entries: u64,
    /// The walk hit a budget: sizes and counts cover only what was seen.
    pub truncated: bool,
}

/// Keeps the `n` largest (bytes, path) pairs seen.
struct TopN {
    n: usize,
    heap: BinaryHeap<Reverse<(u64, String)>>,
}

impl TopN {
    fn new(n: usize) -> Self {
        TopN {
            n,
            heap: BinaryHeap::new(),
        }
    }

    fn offer(&mut self, bytes: u64, path: &str) {
        if self.n == 0 {
            return;
        }
        if self.heap.len() < self.n {
            self.heap.push(Reverse((bytes, path.to_string())));
        } else if self
            .heap
            .peek()
            .is_some_and(|Reverse((min, _))| bytes > *min)
        {
            self.heap.pop();
            self.heap.push(Reverse((bytes, path.to_string())));
        }
    }

    fn into_usages(self, is_dir: bool) -> impl Iterator<Item = PathUsage> {
        self.heap
            .into_iter()
            .map(move |Reverse((bytes, path))| PathUsage {
                path,
                bytes,
                is_dir,
            })
    }
}

/// One directory being read: its path relative to the upper, the rest of its entries, and the
/// bytes found below it so far.
struct Frame {
    rel: String,
    entries: ReadDir,
    bytes: u64,
}

/// Walks `upperdir` (a node path) depth-first without following symlinks.
///
/// Sizes are allocated bytes (`st_blocks * 512`, what `du` shows), because on tmpfs that is the
/// RAM a file holds; a sparse file counts for what it really uses. A directory's size is the sum
/// of the files below it (directory entries themselves are not counted). The upper directory
/// itself is not listed: its total is the filesystem's used bytes.
///
/// Only the top directory failing to open is an error; an unreadable subdirectory is skipped.
pub fn walk_upper(
    root: &HostRoot,
    upperdir: &str,
    limits: &WalkLimits,
    deadline: Instant,
) -> Result<WalkResult, OsError> {
    let mut files = TopN::new(limits.top_n);
    let mut dirs = TopN::new(limits.top_n);
    let mut out = WalkResult::default();
    let mut stack = vec![Frame {
        rel: String::new(),
        entries: root.read_dir(upperdir)?,
        bytes: 0,
    }];

    while let Some(frame) = stack.last_mut() {
        let Some(entry) = frame.entries.next() else {
            // Directory done: report it and add its total to its parent.
            let done = stack.pop().expect("stack is not empty");
            if let Some(parent) = stack.last_mut() {
                parent.bytes += done.bytes;
                dirs.offer(done.bytes, &done.rel);
            }
            continue;
        };
        if out.walked_entries >= limits.max_entries
            || (out.walked_entries % 64 == 0 && Instant::now() >= deadline)
        {
            out.truncated = true;
            // Fold the partial totals up so the directories seen so far are still reported.
            while let Some(done) = stack.pop() {
                if let Some(parent) = stack.last_mut() {
                    parent.bytes += done.bytes;
                    dirs.offer(done.bytes, &done.rel);
                }
            }
            break;
        }
        out.walked_entries += 1;
        let Ok(entry) = entry else { continue };
        // DirEntry::metadata is lstat: symlinks are measured, never followed.
        let Ok(meta) = entry.metadata() else { continue };
        let rel = format!("{}/{}", frame.rel, entry.file_name().to_string_lossy());
        let file_type = meta.file_type();
        if file_type.is_dir() {
            // An unreadable directory (permissions, vanished meanwhile) is skipped.
            if let Ok(entries) = std::fs::read_dir(entry.path()) {
                stack.push(Frame {
                    rel,
                    entries,
                    bytes: 0,
                });
            }
            continue;
        }
        if file_type.is_char_device() && meta.rdev() == 0 {
            // An overlayfs whiteout: a file of the image deleted on this node.
            out.whiteouts += 1;
            continue;
        }
        let bytes = meta.blocks().saturating_mul(512);
        frame.bytes += bytes;
        files.offer(bytes, &rel);
    }

    let mut largest: Vec<PathUsage> = files
        .into_usages(false)
        .chain(dirs.into_usages(true))
        .collect();
    largest.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.path.cmp(&b.path)));
    out.largest = largest;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn write(dir: &std::path::Path, rel: &str, bytes: usize) {
        let p = dir.join(rel.trim_start_matches('/'));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, vec![0x5a; bytes]).unwrap();
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    #[test]
    fn largest_files_and_directories() {
        let t = tempfile::tempdir().unwrap();
        let upper = t.path().join("upper");
        write(&upper, "/var/log/big.log", 256 * 1024);
        write(&upper, "/var/log/small.log", 8 * 1024);
        write(&upper, "/tmp/job/out.dat", 128 * 1024);
        write(&upper, "/tmp/x", 4096);
        write(&upper, "/etc/motd", 4096);
        std::os::unix::fs::symlink("/nonexistent/target", upper.join("dangling")).unwrap();

        let root = HostRoot::new(t.path());
        let limits = WalkLimits {
            top_n: 3,
            ..WalkLimits::default()
        };
        let r = walk_upper(&root, "/upper", &limits, far()).unwrap();
        assert!(!r.truncated);
        // 5 files + 1 symlink + 5 directories (var, var/log, tmp, tmp/job, etc).
        assert_eq!(r.walked_entries, 11);
        let summary: Vec<(&str, u64, bool)> = r
            .largest
            .iter()
            .map(|p| (p.path.as_str(), p.bytes, p.is_dir))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("/var", 264 * 1024, true),
                ("/var/log", 264 * 1024, true),
                ("/var/log/big.log", 256 * 1024, false),
                ("/tmp", 132 * 1024, true),
                ("/tmp/job/out.dat", 128 * 1024, false),
                ("/var/log/small.log", 8 * 1024, false),
            ]
        );
    }

    #[test]
    fn the_entry_budget_truncates() {
        let t = tempfile::tempdir().unwrap();
        for i in 0..50 {
            write(t.path(), &format!("/u/d/f{i}"), 0);
        }
        let limits = WalkLimits {
            max_entries: 20,
            ..WalkLimits::default()
        };
        let r = walk_upper(&HostRoot::new(t.path()), "/u", &limits, far()).unwrap();
        assert!(r.truncated);
        assert_eq!(r.walked_entries, 20);
    }

    #[tokio::test(start_paused = true)]
    async fn a_passed_deadline_truncates_at_once() {
        let t = tempfile::tempdir().unwrap();
        write(t.path(), "/u/a", 10);
        let r = walk_upper(
            &HostRoot::new(t.path()),
            "/u",
            &WalkLimits::default(),
            Instant::now(),
        )
        .unwrap();
        assert!(r.truncated);
        assert_eq!(r.walked_entries, 0);
    }

    #[test]
    fn a_missing_upper_is_an_error() {
        let t = tempfile::tempdir().unwrap();
        let err = walk_upper(
            &HostRoot::new(t.path()),
            "/nope",
            &WalkLimits::default(),
            far(),
        )
        .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }
}
