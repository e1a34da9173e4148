//! The sandbox that runs a command inside an open image generation
//! (`dfleet image exec NAME -- CMD`, `dfleet image shell NAME`): the
//! generation's tree becomes the command's root, with its own `/proc`,
//! `/sys`, `/dev` and `/run`, in private mount and PID namespaces. It
//! replaces the usual script that bind-mounts the host's `/proc`, `/sys` and
//! `/dev` into the shared root and chroots into it.
//!
//! # Stages
//!
//! Unsharing a mount namespace needs a single-threaded process, a new PID
//! namespace only takes the children of the process that asked for it, and
//! dfleet has no `unsafe` code, so no `pre_exec` hook between fork and exec.
//! The sandbox is therefore built by re-executing the `dfleet` binary through
//! two hidden subcommands, each a fresh single-threaded process that `main`
//! dispatches ([`dispatch`]) before clap or the tokio runtime start:
//!
//! 1. [`SANDBOX_SUBCOMMAND`], started by [`Sandbox::command`]: asks for
//!    SIGKILL when its parent dies, unshares a mount and a PID namespace,
//!    makes every mount private, then mounts inside the root a read-only
//!    sysfs on `/sys`, a tmpfs on `/dev` holding only `null`, `zero`, `full`,
//!    `random`, `urandom` and `tty` bound from the host (never the host's
//!    disks), a new devpts instance on `/dev/pts`, tmpfs on `/dev/shm` and
//!    `/run`, and the host's `resolv.conf` read-only so package downloads
//!    resolve names. It writes a `policy-rc.d` so that package scripts start
//!    no daemons, starts stage 2, and exits with its status.
//! 2. [`INIT_SUBCOMMAND`], PID 1 of the new PID namespace: asks for SIGKILL
//!    when its parent dies, mounts a proc that shows the new namespace,
//!    chroots into the root, runs the command with a clean environment and
//!    the caller's stdin, stdout and stderr, reaps every orphan while it
//!    waits, and exits with the command's status.
//!
//! # Why nothing outlives the command
//!
//! - Every mount is made in the private mount namespace, after the whole
//!   tree was made private, so the host's mount table never changes, and the
//!   kernel drops the namespace with its mounts when its last process exits.
//!   There is no unmount step that a killed run could skip.
//! - When PID 1 of a PID namespace exits, the kernel kills every other
//!   process in it, including daemons a package script managed to fork.
//! - The parent-death signal chains the stages to the caller: if the caller
//!   dies, even by SIGKILL, stage 1 gets SIGKILL, then stage 2, and the
//!   namespaces empty. Each stage checks after asking that its parent is
//!   still the process that started it, which closes the window in which the
//!   parent died before the request. The kernel sends the signal when the
//!   *thread* that started the child exits, so a caller must start the
//!   sandbox from a thread that lives as long as it waits (a tokio worker, or
//!   the main thread; not a `spawn_blocking` thread).
//!
//! The only trace outside the namespaces is `usr/sbin/policy-rc.d` in the
//! tree, while the command runs. A killed run leaves it behind; it carries
//! [`POLICY_MARKER`], and the next run or publishing the generation removes
//! it ([`remove_leftover_policy`]). An administrator's own `policy-rc.d`
//! (without the marker) is used as it is and never removed. Two sandboxes
//! must not run in the same tree at once (the caller holds the generation's
//! lock): the second would take the first one's file for a leftover.
//!
//! # Exit status and the terminal
//!
//! Like `docker run`, the sandbox exits with the command's status, `128 + N`
//! when the command was killed by signal N, [`EXIT_NOT_FOUND`] (127) when
//! the command does not exist in the image, [`EXIT_CANNOT_EXECUTE`] (126)
//! when it exists but cannot be run, and [`EXIT_SETUP_FAILED`] (125) when
//! the sandbox itself could not be set up; its message names the path and
//! the operation.
//!
//! Stage 1 leaves the caller's process group once stage 2 runs, so a Ctrl-C
//! on the terminal reaches the command (and stage 2, which as PID 1 of its
//! namespace ignores it) but cannot kill stage 1 and tear the sandbox down
//! under an interactive shell. The caller itself stays in the foreground
//! group: it should catch SIGINT and SIGQUIT while it waits, as `docker run`
//! and `unshare --fork` do.

use std::ffi::{CStr, OsStr, OsString};
use std::fs::{self, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::os::unix::fs::{PermissionsExt as _, symlink};
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus};

use rustix::io::Errno;
use rustix::mount::{MountFlags, MountPropagationFlags};
use rustix::process::{Signal, WaitOptions};
use rustix::thread::UnshareFlags;

/// The hidden subcommand of stage 1, which sets up the namespaces.
pub const SANDBOX_SUBCOMMAND: &str = "__dfleet-image-sandbox";
/// The hidden subcommand of stage 2, PID 1 inside the sandbox.
pub const INIT_SUBCOMMAND: &str = "__dfleet-image-init";

/// Exit status when the sandbox could not be set up (as `docker run`).
pub const EXIT_SETUP_FAILED: u8 = 125;
/// Exit status when the command exists in the image but cannot be run.
pub const EXIT_CANNOT_EXECUTE: u8 = 126;
/// Exit status when the command does not exist in the image.
pub const EXIT_NOT_FOUND: u8 = 127;

/// The line that marks a `policy-rc.d` as the sandbox's own.
pub const POLICY_MARKER: &str = "written by dfleet image exec";

/// Where Debian's `invoke-rc.d` looks for the policy, inside the root.
const POLICY_DIR: &str = "usr/sbin";
const POLICY_NAME: &str = "policy-rc.d";
/// Exit status 101 means "action forbidden" to `invoke-rc.d`.
const POLICY_SCRIPT: &str = "#!/bin/sh\n\
    # written by dfleet image exec: no service starts while a command runs\n\
    # inside an image. dfleet removes this file when the command ends.\n\
    exit 101\n";

/// The command's `PATH`: Debian's default for root.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The host devices bound into the sandbox's `/dev`. No disk is among them.
const HOST_DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// A failure to set up or run the sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{} cannot be a sandbox's root: {reason}", root.display())]
    NotARoot { root: PathBuf, reason: String },
    #[error("{} is not a directory of the tree (a symlink would lead outside it)", .0.display())]
    NotADirectory(PathBuf),
    #[error("the process that started the sandbox (pid {0}) has already exited")]
    ParentGone(u32),
    #[error("the sandbox's command line: {0}")]
    Usage(String),
}

fn io_err<E: Into<io::Error>>(
    op: impl Into<String>,
    path: &Path,
) -> impl FnOnce(E) -> SandboxError + '_ {
    let op = op.into();
    move |e| SandboxError::Io {
        op,
        path: path.to_path_buf(),
        source: e.into(),
    }
}

/// A command to run inside an image tree; [`Sandbox::command`] turns it into
/// the process to spawn.
#[derive(Debug, Clone)]
pub struct Sandbox {
    root: PathBuf,
    argv: Vec<OsString>,
    debian_frontend: Option<OsString>,
}

impl Sandbox {
    /// Runs `argv` (program and arguments, looked up in the image's `PATH`)
    /// inside the tree at `root`.
    pub fn new<I, S>(root: impl Into<PathBuf>, argv: I) -> Sandbox
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        Sandbox {
            root: root.into(),
            argv: argv.into_iter().map(Into::into).collect(),
            debian_frontend: None,
        }
    }

    /// Sets `DEBIAN_FRONTEND` in the command's environment (e.g.
    /// `noninteractive`); by default it is not set.
    pub fn debian_frontend(mut self, value: impl Into<OsString>) -> Sandbox {
        self.debian_frontend = Some(value.into());
        self
    }

    /// The process to spawn: `self_exe` (the `dfleet` binary, normally
    /// `/proc/self/exe`) as stage 1. stdin, stdout and stderr are inherited
    /// unless the caller changes them; its exit status is the command's (see
    /// the module documentation).
    pub fn command(&self, self_exe: &Path) -> Command {
        let args = StageArgs {
            parent: std::process::id(),
            debian_frontend: self.debian_frontend.clone(),
            root: self.root.clone(),
            argv: self.argv.clone(),
        };
        let mut cmd = Command::new(self_exe);
        cmd.arg(SANDBOX_SUBCOMMAND).args(args.to_args());
        cmd
    }
}

/// The process that runs `argv` inside the tree at `root`, with the default
/// settings: `Sandbox::new(root, argv).command(self_exe)`.
pub fn command(self_exe: &Path, root: &Path, argv: &[OsString]) -> Command {
    Sandbox::new(root, argv.iter().cloned()).command(self_exe)
}

/// Runs a sandbox stage when the process's command line (`args`, program
/// name first) names one, returning its exit status; `None` otherwise.
/// `main` calls it first, before anything starts a thread.
pub fn dispatch(args: impl IntoIterator<Item = OsString>) -> Option<ExitCode> {
    let mut args = args.into_iter();
    args.next()?;
    let stage = args.next()?;
    if stage == SANDBOX_SUBCOMMAND {
        Some(sandbox_main(args))
    } else if stage == INIT_SUBCOMMAND {
        Some(init_main(args))
    } else {
        None
    }
}

/// The arguments both stages take after their subcommand:
/// `--parent PID [--debian-frontend VALUE] ROOT -- PROGRAM [ARG…]`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StageArgs {
    /// The process expected to be the stage's parent.
    parent: u32,
    debian_frontend: Option<OsString>,
    root: PathBuf,
    argv: Vec<OsString>,
}

impl StageArgs {
    fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["--parent".into(), self.parent.to_string().into()];
        if let Some(value) = &self.debian_frontend {
            args.push("--debian-frontend".into());
            args.push(value.clone());
        }
        args.push(self.root.clone().into_os_string());
        args.push("--".into());
        args.extend(self.argv.iter().cloned());
        args
    }

    fn parse(args: impl IntoIterator<Item = OsString>) -> Result<StageArgs, SandboxError> {
        let usage = |what: &str| SandboxError::Usage(what.to_string());
        let mut args = args.into_iter();
        let mut parent = None;
        let mut debian_frontend = None;
        let root = loop {
            let arg = args.next().ok_or_else(|| usage("no root directory"))?;
            if arg == "--parent" {
                let value = args.next().ok_or_else(|| usage("--parent needs a pid"))?;
                let pid = value
                    .to_str()
                    .and_then(|v| v.parse::<u32>().ok())
                    .filter(|&pid| pid > 0)
                    .ok_or_else(|| usage("--parent needs a pid"))?;
                parent = Some(pid);
            } else if arg == "--debian-frontend" {
                let value = args
                    .next()
                    .ok_or_else(|| usage("--debian-frontend needs a value"))?;
                debian_frontend = Some(value);
            } else if arg.as_encoded_bytes().starts_with(b"-") {
                return Err(SandboxError::Usage(format!(
                    "unknown option {}",
                    arg.to_string_lossy()
                )));
            } else {
                break PathBuf::from(arg);
            }
        };
        if args.next().is_none_or(|sep| sep != "--") {
            return Err(usage("expected -- after the root directory"));
        }
        let argv: Vec<OsString> = args.collect();
        if argv.is_empty() {
            return Err(usage("no command"));
        }
        Ok(StageArgs {
            parent: parent.ok_or_else(|| usage("no --parent"))?,
            debian_frontend,
            root,
            argv,
        })
    }
}

/// Stage 1 ([`SANDBOX_SUBCOMMAND`]); `args` are those after the subcommand.
pub fn sandbox_main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    match run_sandbox(args) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("dfleet: image sandbox: {e}");
            ExitCode::from(EXIT_SETUP_FAILED)
        }
    }
}

fn run_sandbox(args: impl IntoIterator<Item = OsString>) -> Result<u8, SandboxError> {
    let args = StageArgs::parse(args)?;
    die_with_parent(args.parent, || {
        rustix::process::getppid().and_then(|p| u32::try_from(p.as_raw_nonzero().get()).ok())
    })?;
    let root = validate_root(&args.root, &args.argv[0])?;

    // rustix deprecates its safe `unshare` only because CLONE_FILES could
    // close descriptors under other threads; this passes NEWNS and NEWPID
    // only, in a process with a single thread.
    #[allow(deprecated)]
    rustix::thread::unshare(UnshareFlags::NEWNS | UnshareFlags::NEWPID)
        .map_err(io_err("unsharing the mount and PID namespaces for", &root))?;
    // Before anything is mounted: with shared propagation, the mounts below
    // would appear in the host's mount table.
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
    )
    .map_err(io_err("making every mount private, from", Path::new("/")))?;

    mount_sys(&root)?;
    mount_dev(&root)?;
    mount_run(&root)?;
    bind_resolv_conf(&root)?;
    let policy = Policy::install(&root)?;

    let init = StageArgs {
        parent: std::process::id(),
        root: root.clone(),
        ..args
    };
    // `/proc/self/exe` is this very binary, even if the file was replaced
    // by an upgrade since it started.
    let exe = Path::new("/proc/self/exe");
    let child = Command::new(exe)
        .arg0("dfleet")
        .arg(INIT_SUBCOMMAND)
        .args(init.to_args())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => {
            policy.remove();
            return Err(io_err("starting the sandbox's init stage", exe)(e));
        }
    };
    // Leave the caller's (foreground) process group, so that a Ctrl-C meant
    // for the command cannot kill this stage and with it the sandbox. The
    // command stays in the caller's group, in the foreground. Failing is
    // harmless (only Ctrl-C would reach this stage).
    let _ = rustix::process::setpgid(None, None);
    let status = child.wait();
    policy.remove();
    let status = status.map_err(io_err("waiting for the sandbox's init stage", exe))?;
    Ok(exit_code(status))
}

/// Stage 2 ([`INIT_SUBCOMMAND`]); `args` are those after the subcommand.
pub fn init_main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    match run_init(args) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("dfleet: image sandbox: {e}");
            ExitCode::from(EXIT_SETUP_FAILED)
        }
    }
}

fn run_init(args: impl IntoIterator<Item = OsString>) -> Result<u8, SandboxError> {
    let args = StageArgs::parse(args)?;
    // Inside the new PID namespace `getppid` says 0 whoever the parent is;
    // the host's /proc, still mounted at /proc, gives its host pid.
    die_with_parent(args.parent, || {
        fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| parse_ppid(&status))
    })?;
    let root = &args.root;
    let proc = mount_point(root, "proc")?;
    mount(
        "proc",
        &proc,
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        None,
    )?;
    // The network namespace and the kernel are the host's: a package script
    // must not change their settings.
    for rel in ["sys", "sysrq-trigger"] {
        let path = proc.join(rel);
        // A kernel built without magic SysRq has no sysrq-trigger.
        if path.exists() {
            bind_read_only(&path, &path)?;
        }
    }
    std::os::unix::fs::chroot(root).map_err(io_err("changing the root to", root))?;
    std::env::set_current_dir("/").map_err(io_err("changing directory to", Path::new("/")))?;

    let program = &args.argv[0];
    let mut cmd = Command::new(program);
    cmd.args(&args.argv[1..])
        .env_clear()
        .env("PATH", PATH)
        .env("HOME", "/root")
        .env("LANG", "C.UTF-8")
        .env("SYSTEMD_OFFLINE", "1");
    if let Some(term) = std::env::var_os("TERM") {
        cmd.env("TERM", term);
    }
    if let Some(frontend) = &args.debian_frontend {
        cmd.env("DEBIAN_FRONTEND", frontend);
    }
    let child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            let (code, what) = match e.kind() {
                io::ErrorKind::NotFound => (EXIT_NOT_FOUND, "command not found".to_string()),
                _ => (EXIT_CANNOT_EXECUTE, e.to_string()),
            };
            eprintln!(
                "dfleet: {}: {what} (in {})",
                program.to_string_lossy(),
                root.display()
            );
            return Ok(code);
        }
    };
    wait_reaping(child.id())
}

/// Asks for SIGKILL when the parent dies, then checks that the parent is
/// still `expected`: if it died first, the request came too late.
fn die_with_parent(
    expected: u32,
    parent: impl FnOnce() -> Option<u32>,
) -> Result<(), SandboxError> {
    rustix::process::set_parent_process_death_signal(Some(Signal::KILL)).map_err(|e| {
        SandboxError::Io {
            op: "asking for SIGKILL when the parent exits".to_string(),
            path: PathBuf::from("/proc/self"),
            source: e.into(),
        }
    })?;
    if parent() != Some(expected) {
        return Err(SandboxError::ParentGone(expected));
    }
    Ok(())
}

/// The `PPid:` field of `/proc/PID/status`.
fn parse_ppid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Waits for the command as PID 1 does: every orphan in the namespace is
/// reparented to this process, so it reaps them too, until the command
/// itself exits.
fn wait_reaping(command: u32) -> Result<u8, SandboxError> {
    loop {
        match rustix::process::wait(WaitOptions::empty()) {
            Ok(Some((pid, status)))
                if u32::try_from(pid.as_raw_nonzero().get()).ok() == Some(command) =>
            {
                return Ok(code_of(status.exit_status(), status.terminating_signal()));
            }
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => {
                return Err(io_err("waiting for the command in", Path::new("/"))(e));
            }
        }
    }
}

fn exit_code(status: ExitStatus) -> u8 {
    code_of(status.code(), status.signal())
}

/// A process's exit status as a shell reports it: its exit code, or 128 + N
/// when signal N killed it.
fn code_of(code: Option<i32>, signal: Option<i32>) -> u8 {
    match (code, signal) {
        (Some(code), _) => u8::try_from(code & 0xff).unwrap_or(EXIT_SETUP_FAILED),
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(u8::MAX),
        (None, None) => EXIT_SETUP_FAILED,
    }
}

/// Checks that `root` can be a sandbox's root and returns its canonical
/// path: a directory other than the host's `/`, holding `bin/sh` or the
/// command.
fn validate_root(root: &Path, program: &OsStr) -> Result<PathBuf, SandboxError> {
    let canonical = fs::canonicalize(root).map_err(io_err("resolving the image root", root))?;
    let not_a_root = |reason: String| SandboxError::NotARoot {
        root: canonical.clone(),
        reason,
    };
    let meta = fs::metadata(&canonical).map_err(io_err("reading", &canonical))?;
    if !meta.is_dir() {
        return Err(not_a_root("it is not a directory".into()));
    }
    let host = fs::metadata("/").map_err(io_err("reading", Path::new("/")))?;
    if canonical == Path::new("/") || (meta.dev(), meta.ino()) == (host.dev(), host.ino()) {
        return Err(not_a_root("it is the host's own root".into()));
    }
    if !exists_in(&canonical, Path::new("bin/sh")) && !command_in(&canonical, program) {
        return Err(not_a_root(format!(
            "it holds neither bin/sh nor {}",
            program.to_string_lossy()
        )));
    }
    Ok(canonical)
}

/// Whether `rel` exists under `root`. A final symlink is not followed: it
/// points into the image, not into the host.
fn exists_in(root: &Path, rel: &Path) -> bool {
    fs::symlink_metadata(root.join(rel)).is_ok()
}

/// Whether `program` is in the tree, where the command will look for it.
fn command_in(root: &Path, program: &OsStr) -> bool {
    let program = Path::new(program);
    if program.as_os_str().as_encoded_bytes().contains(&b'/') {
        let rel = program.strip_prefix("/").unwrap_or(program);
        return exists_in(root, rel);
    }
    PATH.split(':').any(|dir| {
        let dir = dir.trim_start_matches('/');
        exists_in(root, &Path::new(dir).join(program))
    })
}

/// A mount point of the tree, which must be a directory: a symlink there
/// would be resolved from the host's root, outside the tree.
fn mount_point(root: &Path, rel: &str) -> Result<PathBuf, SandboxError> {
    let path = root.join(rel);
    let meta = fs::symlink_metadata(&path).map_err(io_err("looking for the mount point", &path))?;
    if !meta.is_dir() {
        return Err(SandboxError::NotADirectory(path));
    }
    Ok(path)
}

fn mount(
    fs_type: &str,
    target: &Path,
    flags: MountFlags,
    data: Option<&CStr>,
) -> Result<(), SandboxError> {
    rustix::mount::mount(fs_type, target, fs_type, flags, data)
        .map_err(io_err(format!("mounting {fs_type} on"), target))
}

fn bind(source: &Path, target: &Path) -> Result<(), SandboxError> {
    rustix::mount::mount_bind(source, target)
        .map_err(io_err(format!("binding {} on", source.display()), target))
}

fn bind_read_only(source: &Path, target: &Path) -> Result<(), SandboxError> {
    bind(source, target)?;
    // A bind mount takes its flags only from a remount.
    let flags = MountFlags::BIND
        | MountFlags::RDONLY
        | MountFlags::NOSUID
        | MountFlags::NODEV
        | MountFlags::NOEXEC;
    rustix::mount::mount_remount(target, flags, "")
        .map_err(io_err("making read-only the bind mount on", target))
}

fn mkdir(path: &Path, mode: u32) -> Result<(), SandboxError> {
    fs::DirBuilder::new()
        .mode(mode)
        .create(path)
        .map_err(io_err("creating the directory", path))?;
    // The mode given to mkdir goes through the umask.
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(io_err("setting the mode of", path))
}

fn mount_sys(root: &Path) -> Result<(), SandboxError> {
    let sys = mount_point(root, "sys")?;
    let flags = MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    mount("sysfs", &sys, flags, None)
}

/// A tmpfs `/dev` with a few host devices, a private devpts and `/dev/shm`.
fn mount_dev(root: &Path) -> Result<(), SandboxError> {
    let dev = mount_point(root, "dev")?;
    mount(
        "tmpfs",
        &dev,
        MountFlags::NOSUID | MountFlags::NOEXEC,
        Some(c"mode=755,size=65536k"),
    )?;
    for name in HOST_DEVICES {
        let target = dev.join(name);
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o666)
            .open(&target)
            .map_err(io_err("creating the mount point", &target))?;
        bind(&Path::new("/dev").join(name), &target)?;
    }
    let pts = dev.join("pts");
    mkdir(&pts, 0o755)?;
    // A new instance: the sandbox's terminals are not the host's, and
    // ptmx there opens this instance.
    mount(
        "devpts",
        &pts,
        MountFlags::NOSUID | MountFlags::NOEXEC,
        Some(c"newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )?;
    let shm = dev.join("shm");
    mkdir(&shm, 0o1777)?;
    mount(
        "tmpfs",
        &shm,
        MountFlags::NOSUID | MountFlags::NODEV,
        Some(c"mode=1777"),
    )?;
    for (name, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let link = dev.join(name);
        symlink(target, &link).map_err(io_err("creating the symlink", &link))?;
    }
    Ok(())
}

fn mount_run(root: &Path) -> Result<(), SandboxError> {
    let run = mount_point(root, "run")?;
    mount(
        "tmpfs",
        &run,
        MountFlags::NOSUID | MountFlags::NODEV,
        Some(c"mode=755"),
    )?;
    // Debian's /var/lock points here, and boot makes it.
    mkdir(&run.join("lock"), 0o1777)
}

/// Binds the host's `/etc/resolv.conf`, read-only, over the tree's when both
/// exist, so that package downloads resolve names.
fn bind_resolv_conf(root: &Path) -> Result<(), SandboxError> {
    let host = Path::new("/etc/resolv.conf");
    if !host.is_file() {
        return Ok(());
    }
    // Only over a regular file of the tree: a symlink (to systemd-resolved's
    // stub in /run, say) would be followed from the host's root.
    let etc = root.join("etc");
    let target = etc.join("resolv.conf");
    let regular = |p: &Path| fs::symlink_metadata(p).map(|m| m.file_type());
    if !regular(&etc).is_ok_and(|t| t.is_dir()) || !regular(&target).is_ok_and(|t| t.is_file()) {
        return Ok(());
    }
    bind_read_only(host, &target)
}

/// The `policy-rc.d` this run wrote, if any.
struct Policy {
    root: Option<PathBuf>,
}

impl Policy {
    /// Removes a leftover of a killed run, then writes the sandbox's policy
    /// unless the tree has its own.
    fn install(root: &Path) -> Result<Policy, SandboxError> {
        remove_leftover_policy(root)?;
        let dir = root.join(POLICY_DIR);
        if !fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
            eprintln!(
                "dfleet: warning: {} is not a directory: no policy-rc.d stops package scripts \
                 from starting services",
                dir.display()
            );
            return Ok(Policy { root: None });
        }
        let path = dir.join(POLICY_NAME);
        let mut file = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o755)
            .open(&path)
        {
            Ok(file) => file,
            // The administrator's own policy: it decides.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Ok(Policy { root: None });
            }
            Err(e) => return Err(io_err("creating", &path)(e)),
        };
        let written = file
            .write_all(POLICY_SCRIPT.as_bytes())
            .and_then(|()| file.set_permissions(fs::Permissions::from_mode(0o755)));
        if let Err(e) = written {
            let _ = fs::remove_file(&path);
            return Err(io_err("writing", &path)(e));
        }
        Ok(Policy {
            root: Some(root.to_path_buf()),
        })
    }

    /// Removes the policy this run wrote, if the file is still the
    /// sandbox's. A failure is only reported: the command has run, and the
    /// next run or publish removes the file.
    fn remove(self) {
        if let Some(root) = self.root
            && let Err(e) = remove_leftover_policy(&root)
        {
            eprintln!("dfleet: warning: {e}");
        }
    }
}

/// Removes `usr/sbin/policy-rc.d` from the tree at `root` when it is one the
/// sandbox wrote (it carries [`POLICY_MARKER`]), left behind by a run that
/// was killed; returns whether it did. An administrator's own file is kept.
/// Publishing a generation calls this so that no image ships the file.
pub fn remove_leftover_policy(root: &Path) -> Result<bool, SandboxError> {
    let path = root.join(POLICY_DIR).join(POLICY_NAME);
    match fs::symlink_metadata(&path) {
        Ok(meta) if meta.is_file() => {}
        Ok(_) => return Ok(false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_err("reading", &path)(e)),
    }
    let text = fs::read(&path).map_err(io_err("reading", &path))?;
    if !text
        .windows(POLICY_MARKER.len())
        .any(|w| w == POLICY_MARKER.as_bytes())
    {
        return Ok(false);
    }
    fs::remove_file(&path).map_err(io_err("removing", &path))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn stage_args_round_trip() {
        let a = StageArgs {
            parent: 4242,
            debian_frontend: Some("noninteractive".into()),
            root: "/srv/dfleet/images/compute/8".into(),
            argv: args(&["apt-get", "install", "-y", "--", "htop"]),
        };
        assert_eq!(StageArgs::parse(a.to_args()).unwrap(), a);
        let b = StageArgs {
            debian_frontend: None,
            ..a
        };
        assert_eq!(StageArgs::parse(b.to_args()).unwrap(), b);
    }

    #[test]
    fn stage_args_refuse_what_is_missing() {
        for (line, why) in [
            (&["/r", "--", "sh"][..], "no --parent"),
            (&["--parent", "0", "/r", "--", "sh"], "--parent needs a pid"),
            (&["--parent", "x", "/r", "--", "sh"], "--parent needs a pid"),
            (&["--parent", "7", "/r", "--"], "no command"),
            (&["--parent", "7", "/r", "sh"], "expected --"),
            (&["--parent", "7"], "no root directory"),
            (
                &["--parent", "7", "--user", "/r", "--", "sh"],
                "unknown option --user",
            ),
        ] {
            let e = StageArgs::parse(args(line)).unwrap_err().to_string();
            assert!(e.contains(why), "{line:?}: {e}");
        }
    }

    #[test]
    fn dispatch_only_takes_the_hidden_subcommands() {
        assert!(dispatch(args(&["dfleet", "status"])).is_none());
        assert!(dispatch(args(&["dfleet"])).is_none());
    }

    #[test]
    fn ppid_comes_from_the_status_file() {
        let status = "Name:\tdfleet\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t1\nNgid:\t0\n\
                      Pid:\t1\nPPid:\t73311\nTracerPid:\t0\n";
        assert_eq!(parse_ppid(status), Some(73311));
        assert_eq!(parse_ppid("Name:\tx\n"), None);
    }

    #[test]
    fn exit_codes_read_like_a_shell() {
        assert_eq!(code_of(Some(0), None), 0);
        assert_eq!(code_of(Some(7), None), 7);
        assert_eq!(code_of(None, Some(9)), 137);
        assert_eq!(code_of(None, None), EXIT_SETUP_FAILED);
    }

    #[test]
    fn the_policy_carries_its_marker() {
        assert!(POLICY_SCRIPT.starts_with("#!/bin/sh\n"));
        assert!(POLICY_SCRIPT.contains(POLICY_MARKER));
        assert!(POLICY_SCRIPT.ends_with("exit 101\n"));
    }

    #[test]
    fn policy_is_written_once_and_removed_only_when_ours() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let path = root.join("usr/sbin/policy-rc.d");

        // No usr/sbin: nothing written.
        assert!(Policy::install(root).unwrap().root.is_none());
        fs::create_dir_all(root.join("usr/sbin")).unwrap();

        let policy = Policy::install(root).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), POLICY_SCRIPT);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o7777,
            0o755
        );
        policy.remove();
        assert!(!path.exists());

        // A leftover from a killed run is replaced, then removed.
        fs::write(&path, POLICY_SCRIPT).unwrap();
        let policy = Policy::install(root).unwrap();
        assert!(policy.root.is_some());
        policy.remove();
        assert!(!path.exists());
        fs::write(&path, POLICY_SCRIPT).unwrap();
        assert!(remove_leftover_policy(root).unwrap());
        assert!(!remove_leftover_policy(root).unwrap());

        // The administrator's own is kept.
        let own = "#!/bin/sh\nexit 0\n";
        fs::write(&path, own).unwrap();
        let policy = Policy::install(root).unwrap();
        assert!(policy.root.is_none());
        policy.remove();
        assert!(!remove_leftover_policy(root).unwrap());
        assert_eq!(fs::read_to_string(&path).unwrap(), own);
    }

    #[test]
    fn a_root_needs_a_shell_or_the_command() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let e = validate_root(Path::new("/"), OsStr::new("sh")).unwrap_err();
        assert!(e.to_string().contains("the host's own root"), "{e}");
        let e = validate_root(root, OsStr::new("true")).unwrap_err();
        assert!(e.to_string().contains("neither bin/sh nor true"), "{e}");
        let e = validate_root(&root.join("missing"), OsStr::new("sh")).unwrap_err();
        assert!(e.to_string().starts_with("resolving the image root"), "{e}");

        fs::create_dir_all(root.join("usr/bin")).unwrap();
        // A symlink to a host path counts: it resolves inside the image.
        symlink("/usr/bin/busybox", root.join("usr/bin/true")).unwrap();
        let canonical = fs::canonicalize(root).unwrap();
        assert_eq!(validate_root(root, OsStr::new("true")).unwrap(), canonical);
        assert!(validate_root(root, OsStr::new("/usr/bin/true")).is_ok());
        assert!(validate_root(root, OsStr::new("false")).is_err());
        fs::create_dir(root.join("bin")).unwrap();
        fs::write(root.join("bin/sh"), "").unwrap();
        assert!(validate_root(root, OsStr::new("false")).is_ok());
    }
}
