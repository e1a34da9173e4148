//! The one seam through which the agent reaches the operating system.
//!
//! Every path the agent reads is a node path such as `/proc/meminfo`; [`HostRoot`] maps it under a
//! configurable root directory. On a node the root is `/`; in a test or a demo fleet each simulated
//! node is a sandbox directory (see [`crate::sandbox`]), so a whole fleet runs in one process.
//! Architecture invariant: no other module calls `std::fs`, `rustix` or `Command` on node paths.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// Output kept from a command, per stream. Check commands are meant to say one line; a runaway
/// one must not fill the agent's RAM.
const MAX_OUTPUT_BYTES: usize = 64 * 1024;

/// An I/O failure on a node path, saying what was being done.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct OsError {
    pub op: &'static str,
    /// The path as the OS saw it (under the root).
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl OsError {
    pub fn kind(&self) -> io::ErrorKind {
        self.source.kind()
    }
}

/// Filesystem numbers from `statvfs(3)`, in bytes and inodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FsStats {
    pub size_bytes: u64,
    /// `(blocks - bfree) * frsize`, as `df` counts it.
    pub used_bytes: u64,
    /// What an unprivileged writer may still use (`bavail * frsize`).
    pub avail_bytes: u64,
    pub inodes_total: u64,
    pub inodes_free: u64,
}

/// How a command run through [`HostRoot::run_command`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandOutcome {
    /// The command exited; `code` is `None` when a signal killed it.
    Exited {
        code: Option<i32>,
        stdout: String,
        stderr: String,
    },
    /// It ran longer than its timeout and was killed with its process group.
    TimedOut { after: Duration },
    /// It could not be started at all.
    SpawnFailed { error: String },
}

impl CommandOutcome {
    /// Exited with status 0.
    pub fn success(&self) -> bool {
        matches!(self, CommandOutcome::Exited { code: Some(0), .. })
    }

    /// One line for a log or a reply: `exit 0: …`, `exit 2: …`, `killed by a signal`,
    /// `timed out after 30s`, `could not run: …`.
    pub fn summary(&self) -> String {
        let with_line = |what: String| match self.first_line() {
            "" => what,
            line => format!("{what}: {line}"),
        };
        match self {
            CommandOutcome::Exited {
                code: Some(code), ..
            } => with_line(format!("exit code {code}")),
            CommandOutcome::Exited { code: None, .. } => {
                with_line("killed by a signal".to_string())
            }
            CommandOutcome::TimedOut { after } => {
                format!("timed out after {}s", after.as_secs_f64())
            }
            CommandOutcome::SpawnFailed { error } => format!("could not run: {error}"),
        }
    }

    /// The first non-empty line of stdout, else of stderr: what a check reports.
    pub fn first_line(&self) -> &str {
        match self {
            CommandOutcome::Exited { stdout, stderr, .. } => first_line(stdout)
                .or_else(|| first_line(stderr))
                .unwrap_or(""),
            _ => "",
        }
    }
}

fn first_line(s: &str) -> Option<&str> {
    s.lines().map(str::trim).find(|l| !l.is_empty())
}

/// Where programs are looked for (the agent's `PATH`), on the node or in a sandbox.
pub const PROGRAM_DIRS: [&str; 6] = [
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// The machine as the agent sees it, rooted at a directory (`/` on a real node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRoot {
    root: PathBuf,
}

impl Default for HostRoot {
    fn default() -> Self {
        HostRoot::system()
    }
}

impl HostRoot {
    /// The real machine.
    pub fn system() -> Self {
        HostRoot {
            root: PathBuf::from("/"),
        }
    }

    /// A machine laid out under `root`, e.g. a sandbox directory.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        HostRoot { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether this is the real machine rather than a directory standing in for one.
    pub fn is_system(&self) -> bool {
        self.root == Path::new("/")
    }

    /// Maps a node path (absolute, like `/proc/meminfo`) under the root. `..` components are
    /// dropped rather than resolved so that a path taken from the machine (a mount point, an
    /// overlay option) can never climb out of a sandbox.
    pub fn path(&self, node_path: impl AsRef<Path>) -> PathBuf {
        let mut out = self.root.clone();
        for c in node_path.as_ref().components() {
            if let Component::Normal(part) = c {
                out.push(part);
            }
        }
        out
    }

    pub fn read_to_string(&self, node_path: impl AsRef<Path>) -> Result<String, OsError> {
        let path = self.path(node_path);
        fs::read_to_string(&path).map_err(|source| OsError {
            op: "reading",
            path,
            source,
        })
    }

    /// An iterator over a directory's entries. `DirEntry::metadata` on its items does not follow
    /// symlinks (it is `lstat`), like [`HostRoot::symlink_metadata`].
    pub fn read_dir(&self, node_path: impl AsRef<Path>) -> Result<fs::ReadDir, OsError> {
        let path = self.path(node_path);
        fs::read_dir(&path).map_err(|source| OsError {
            op: "listing",
            path,
            source,
        })
    }

    /// The names in a directory, sorted, as UTF-8 (lossy).
    pub fn list_dir(&self, node_path: impl AsRef<Path>) -> Result<Vec<String>, OsError> {
        let path = self.path(&node_path);
        let mut names = Vec::new();
        for entry in self.read_dir(node_path)? {
            let entry = entry.map_err(|source| OsError {
                op: "listing",
                path: path.clone(),
                source,
            })?;
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    pub fn metadata(&self, node_path: impl AsRef<Path>) -> Result<fs::Metadata, OsError> {
        let path = self.path(node_path);
        fs::metadata(&path).map_err(|source| OsError {
            op: "stat",
            path,
            source,
        })
    }

    pub fn symlink_metadata(&self, node_path: impl AsRef<Path>) -> Result<fs::Metadata, OsError> {
        let path = self.path(node_path);
        fs::symlink_metadata(&path).map_err(|source| OsError {
            op: "lstat",
            path,
            source,
        })
    }

    /// Whether the path exists (following symlinks); an unreadable path counts as absent.
    pub fn exists(&self, node_path: impl AsRef<Path>) -> bool {
        self.path(node_path).exists()
    }

    /// `statvfs` of the filesystem holding the path. On NFS this always asks the server (unlike
    /// `stat`, which the attribute cache may answer), which is why the lower probe uses it.
    pub fn statfs(&self, node_path: impl AsRef<Path>) -> Result<FsStats, OsError> {
        let path = self.path(node_path);
        let st = rustix::fs::statvfs(&path).map_err(|e| OsError {
            op: "statfs",
            path,
            source: e.into(),
        })?;
        let frsize = if st.f_frsize > 0 {
            st.f_frsize
        } else {
            st.f_bsize
        };
        Ok(FsStats {
            size_bytes: st.f_blocks.saturating_mul(frsize),
            used_bytes: st
                .f_blocks
                .saturating_sub(st.f_bfree)
                .saturating_mul(frsize),
            avail_bytes: st.f_bavail.saturating_mul(frsize),
            inodes_total: st.f_files,
            inodes_free: st.f_ffree,
        })
    }

    /// The machine's own copy of a program: a path under the root, or the
    /// first of the standard `bin` directories under it that holds it.
    pub fn own_program(&self, program: &str) -> Option<PathBuf> {
        if program.contains('/') {
            let p = self.path(program);
            return p.is_file().then_some(p);
        }
        PROGRAM_DIRS
            .iter()
            .map(|dir| self.path(dir).join(program))
            .find(|p| p.is_file())
    }

    /// Where a program is found, as an absolute path when it is found at all:
    /// the machine's own ([`HostRoot::own_program`]); under a sandbox root,
    /// else the host's (so a simulated node can carry a fake `systemctl` and
    /// run everything else from the host). Spawning an absolute path needs
    /// no `PATH` search, which lets the standard library use `posix_spawn`
    /// instead of `fork` (the cost of `fork` grows with the parent's memory:
    /// it is what a swarm of agents in one process pays per command). A
    /// program found nowhere is returned as given, for the spawn error.
    pub fn resolve_program(&self, program: &str) -> PathBuf {
        self.own_program(program)
            .or_else(|| {
                (!self.is_system())
                    .then(|| HostRoot::new("/").own_program(program))
                    .flatten()
            })
            .unwrap_or_else(|| PathBuf::from(program))
    }

    /// Runs `argv` (no shell) with stdin closed, capturing its output. On timeout the whole
    /// process group is killed, so a check script's children die with it.
    pub async fn run_command(&self, argv: &[String], timeout: Duration) -> CommandOutcome {
        let Some((program, args)) = argv.split_first() else {
            return CommandOutcome::SpawnFailed {
                error: "empty command".to_string(),
            };
        };
        let program_path = self.resolve_program(program);
        let mut cmd = tokio::process::Command::new(&program_path);
        cmd.args(args.iter().map(OsStr::new))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);

        // A script written a moment ago can fail with ETXTBSY while another thread's fork still
        // holds its write descriptor; that clears by itself, so try a few times.
        const ETXTBSY: i32 = 26;
        let mut attempts = 0;
        let child = loop {
            match cmd.spawn() {
                Ok(child) => break child,
                Err(e) if e.raw_os_error() == Some(ETXTBSY) && attempts < 20 => {
                    attempts += 1;
                    tokio::task::yield_now().await;
                }
                Err(e) => {
                    return CommandOutcome::SpawnFailed {
                        error: format!("starting {}: {e}", program_path.display()),
                    };
                }
            }
        };
        let pid = child.id();
        match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Ok(Ok(out)) => CommandOutcome::Exited {
                code: out.status.code(),
                stdout: truncated(&out.stdout),
                stderr: truncated(&out.stderr),
            },
            Ok(Err(e)) => CommandOutcome::SpawnFailed {
                error: format!("waiting for {}: {e}", program_path.display()),
            },
            Err(_) => {
                // The child was its own group leader (process_group(0)), so its pid names the
                // group. kill_on_drop then reaps the leader itself.
                if let Some(pid) = pid.and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
                    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
                }
                CommandOutcome::TimedOut { after: timeout }
            }
        }
    }
}

fn truncated(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_OUTPUT_BYTES)]).into_owned()
}

/// Writes `path` whole or not at all: a temporary file beside it with
/// `mode` (whatever the umask), synced, renamed into place. The error names
/// the step that failed.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), (&'static str, io::Error)> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let tmp = path.with_extension("dfleet-tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| ("creating", e))?;
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| ("setting the mode of", e))?;
    f.write_all(bytes).map_err(|e| ("writing", e))?;
    f.sync_all().map_err(|e| ("syncing", e))?;
    fs::rename(&tmp, path).map_err(|e| ("renaming into place", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn programs_resolve_to_absolute_paths_the_sandboxs_own_first() {
        let dir = tempfile::tempdir().unwrap();
        let own = dir.path().join("usr/sbin/systemctl");
        std::fs::create_dir_all(own.parent().unwrap()).unwrap();
        std::fs::write(&own, "#!/bin/sh\n").unwrap();
        let root = HostRoot::new(dir.path());
        assert_eq!(root.resolve_program("systemctl"), own);
        assert_eq!(root.own_program("systemctl"), Some(own));
        // Not in the sandbox: the host's, by its absolute path; but it is not
        // the sandbox's own.
        let sh = root.resolve_program("sh");
        assert!(sh.is_absolute() && sh.ends_with("bin/sh"), "{sh:?}");
        assert_eq!(root.own_program("sh"), None);
        let system = HostRoot::new("/");
        assert_eq!(system.resolve_program("sh"), sh);
        // Nowhere: as given, for the spawn error to name.
        assert_eq!(
            root.resolve_program("no-such-program"),
            PathBuf::from("no-such-program")
        );
    }

    #[test]
    fn node_paths_map_under_the_root_and_cannot_escape() {
        let r = HostRoot::new("/tmp/node1");
        assert_eq!(
            r.path("/proc/meminfo"),
            Path::new("/tmp/node1/proc/meminfo")
        );
        assert_eq!(
            r.path("/run/../../etc/shadow"),
            Path::new("/tmp/node1/run/etc/shadow")
        );
        assert_eq!(
            HostRoot::system().path("/proc/uptime"),
            Path::new("/proc/uptime")
        );
    }

    #[test]
    fn reading_a_missing_file_names_the_path() {
        let r = HostRoot::new("/nonexistent-dfleet-root");
        let err = r.read_to_string("/proc/meminfo").unwrap_err();
        assert_eq!(
            err.to_string().split(':').next().unwrap(),
            "reading /nonexistent-dfleet-root/proc/meminfo"
        );
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[tokio::test]
    async fn command_output_and_exit_code_are_captured() {
        let out = HostRoot::system()
            .run_command(
                &argv(&["sh", "-c", "echo hello; echo oops >&2; exit 3"]),
                Duration::from_secs(30),
            )
            .await;
        assert_eq!(
            out,
            CommandOutcome::Exited {
                code: Some(3),
                stdout: "hello\n".into(),
                stderr: "oops\n".into()
            }
        );
        assert_eq!(out.first_line(), "hello");
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_command_times_out() {
        let out = HostRoot::system()
            .run_command(&argv(&["sleep", "1000"]), Duration::from_secs(3))
            .await;
        assert_eq!(
            out,
            CommandOutcome::TimedOut {
                after: Duration::from_secs(3)
            }
        );
    }

    #[tokio::test]
    async fn a_missing_program_is_a_spawn_failure() {
        let out = HostRoot::system()
            .run_command(
                &argv(&["/nonexistent/dfleet-check"]),
                Duration::from_secs(3),
            )
            .await;
        assert!(
            matches!(&out, CommandOutcome::SpawnFailed { error } if error.contains("/nonexistent/dfleet-check")),
            "{out:?}"
        );
    }

    #[test]
    fn statfs_reports_a_nonzero_size() {
        let st = HostRoot::system().statfs("/").unwrap();
        assert!(
            st.size_bytes > 0 && st.used_bytes <= st.size_bytes,
            "{st:?}"
        );
    }
}
