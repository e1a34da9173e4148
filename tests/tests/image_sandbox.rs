//! The image sandbox (`dfleet image exec`) with real namespaces: a tiny
//! busybox root in a temporary directory, the built `dfleet` binary started
//! through `Sandbox::command`, and the host's own view of its mounts and
//! processes before, during and after. Needs root; skipped otherwise.

use std::fs;
use std::os::unix::fs::symlink;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use dfleet_provisioner::image::chroot::{POLICY_MARKER, Sandbox};
use dfleet_tests::bin;
use rustix::process::{Pid, PidfdFlags};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncBufReadExt, BufReader, Interest};
use tokio::process::Command;

/// How long the killed sandbox may take to vanish before the test fails.
const DEADLINE: Duration = Duration::from_secs(30);

fn is_root() -> bool {
    let root = rustix::process::geteuid().is_root();
    if !root {
        eprintln!("skipping: the image sandbox needs root (mount and PID namespaces)");
    }
    root
}

/// A minimal root file system: busybox and the libraries `ldd` lists, at
/// the same paths, applet symlinks in /bin, and empty mount points.
fn tiny_root() -> Result<(tempfile::TempDir, PathBuf)> {
    let dir = tempfile::tempdir()?;
    let root = dir.path().canonicalize()?;
    let busybox = Path::new("/usr/bin/busybox");
    let ldd = std::process::Command::new("ldd").arg(busybox).output()?;
    ensure!(ldd.status.success(), "ldd {}: {ldd:?}", busybox.display());
    let libraries = String::from_utf8(ldd.stdout)?;
    let files = std::iter::once(busybox)
        .chain(
            libraries
                .split_whitespace()
                .filter(|w| w.starts_with('/'))
                .map(Path::new),
        )
        .collect::<Vec<_>>();
    for file in files {
        let copy = root.join(file.strip_prefix("/")?);
        fs::create_dir_all(copy.parent().context("a parent")?)?;
        fs::copy(file, &copy).with_context(|| format!("copying {}", file.display()))?;
    }
    for dir in ["bin", "proc", "sys", "dev", "run", "tmp", "etc", "usr/sbin"] {
        fs::create_dir_all(root.join(dir))?;
    }
    fs::write(root.join("etc/resolv.conf"), "")?;
    for applet in ["sh", "cat", "sleep", "ls", "mount", "echo", "ps"] {
        symlink("/usr/bin/busybox", root.join("bin").join(applet))?;
    }
    Ok((dir, root))
}

fn sandbox(sandbox: Sandbox) -> Command {
    let mut cmd = Command::from(sandbox.command(&bin("dfleet")));
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    cmd
}

async fn run_in(root: &Path, script: &str) -> Result<Output> {
    Ok(sandbox(Sandbox::new(root, ["sh", "-c", script]))
        .output()
        .await?)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn mountinfo() -> Result<String> {
    Ok(fs::read_to_string("/proc/self/mountinfo")?)
}

/// Host pids of the processes whose root directory is `root`.
fn rooted_in(root: &Path) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| root_of(pid).as_deref() == Some(root))
        .collect()
}

fn root_of(pid: i32) -> Option<PathBuf> {
    fs::read_link(format!("/proc/{pid}/root")).ok()
}

/// The host's mount table is what it was, and nothing under the tree is
/// mounted or left in its mount points.
fn assert_host_clean(root: &Path, before: &str) -> Result<()> {
    let after = mountinfo()?;
    let leaked: Vec<&str> = after
        .lines()
        .filter(|l| !before.lines().any(|b| b == *l))
        .collect();
    ensure!(
        after == before,
        "the host's mount table changed: {leaked:#?}"
    );
    for dir in ["proc", "sys", "dev", "run"] {
        let left: Vec<_> = fs::read_dir(root.join(dir))?.collect();
        ensure!(left.is_empty(), "{dir} of the tree is not empty: {left:?}");
    }
    Ok(())
}

#[tokio::test]
async fn a_command_runs_in_its_own_namespaces() -> Result<()> {
    if !is_root() {
        return Ok(());
    }
    let (_dir, root) = tiny_root()?;
    let script = "echo pid=$$; cat /proc/1/cmdline; echo; echo ---; cat /proc/mounts; echo ---; \
                  ls /dev; echo ---; export -p; echo hidden > /dev/null && echo null-ok; exit 7";
    let out = run_in(&root, script).await?;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(7),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let parts: Vec<&str> = stdout.split("---\n").collect();
    let [head, mounts, dev, rest] = parts[..] else {
        panic!("unexpected output:\n{stdout}");
    };

    // A new PID namespace: PID 1 is the init stage, the shell its first child.
    let mut head = head.lines();
    assert_eq!(head.next(), Some("pid=2"), "{stdout}");
    let init = head.next().unwrap_or_default();
    assert!(init.contains("__dfleet-image-init"), "PID 1 is {init:?}");

    let mounted = |fs_type: &str, point: &str| {
        mounts.lines().find(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1) == Some(&point) && f.get(2) == Some(&fs_type)
        })
    };
    for (fs_type, point) in [
        ("proc", "/proc"),
        ("sysfs", "/sys"),
        ("tmpfs", "/dev"),
        ("devpts", "/dev/pts"),
        ("tmpfs", "/dev/shm"),
        ("tmpfs", "/run"),
    ] {
        assert!(
            mounted(fs_type, point).is_some(),
            "no {fs_type} on {point}:\n{mounts}"
        );
    }
    let sys = mounted("sysfs", "/sys").unwrap_or_default();
    assert!(sys.contains(" ro,"), "{sys}");
    let pts = mounted("devpts", "/dev/pts").unwrap_or_default();
    assert!(pts.contains("ptmxmode=666"), "{pts}");
    if Path::new("/etc/resolv.conf").is_file() {
        let resolv = mounts.lines().find(|l| l.contains(" /etc/resolv.conf "));
        assert!(
            resolv.is_some_and(|l| l.contains(" ro,")),
            "resolv.conf: {resolv:?}"
        );
    }

    // Only a few host devices, never the host's disks.
    let mut devices: Vec<&str> = dev.lines().collect();
    devices.sort_unstable();
    assert_eq!(
        devices,
        [
            "fd", "full", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin", "stdout",
            "tty", "urandom", "zero"
        ]
    );

    // A clean environment, without the caller's variables.
    for var in [
        "PATH='/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'",
        "HOME='/root'",
        "LANG='C.UTF-8'",
        "SYSTEMD_OFFLINE='1'",
    ] {
        assert!(rest.contains(var), "{var} missing:\n{rest}");
    }
    assert!(
        !rest.contains("CARGO"),
        "the caller's environment leaked:\n{rest}"
    );
    assert!(!rest.contains("DEBIAN_FRONTEND"), "{rest}");
    assert!(rest.ends_with("null-ok\n"), "{rest}");

    // DEBIAN_FRONTEND only when asked.
    let out =
        sandbox(Sandbox::new(&root, ["sh", "-c", "export -p"]).debian_frontend("noninteractive"))
            .output()
            .await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("DEBIAN_FRONTEND='noninteractive'"));

    // A command killed by a signal, a missing command, a tree that is not a root.
    let out = run_in(&root, "kill -9 $$").await?;
    assert_eq!(out.status.code(), Some(128 + 9), "{}", text(&out.stderr));
    let out = sandbox(Sandbox::new(&root, ["no-such-command"]))
        .output()
        .await?;
    assert_eq!(out.status.code(), Some(127), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("no-such-command: command not found"));
    let empty = tempfile::tempdir()?;
    let out = sandbox(Sandbox::new(empty.path(), ["no-such-command"]))
        .output()
        .await?;
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("cannot be a sandbox's root"));
    Ok(())
}

#[tokio::test]
async fn the_host_keeps_no_mount_and_no_policy() -> Result<()> {
    if !is_root() {
        return Ok(());
    }
    let (_dir, root) = tiny_root()?;
    let policy = root.join("usr/sbin/policy-rc.d");
    let before = mountinfo()?;

    // The policy exists while the command runs, and goes with it.
    let out = run_in(&root, "cat /usr/sbin/policy-rc.d").await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let seen = text(&out.stdout);
    assert!(
        seen.contains(POLICY_MARKER) && seen.ends_with("exit 101\n"),
        "{seen}"
    );
    assert!(!policy.exists(), "the policy outlived the command");
    assert_host_clean(&root, &before)?;

    // One left by a killed run is replaced, then removed.
    fs::write(&policy, format!("#!/bin/sh\n# {POLICY_MARKER}\nexit 101\n"))?;
    let out = run_in(&root, "exit 0").await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!policy.exists(), "a leftover policy was not removed");

    // The administrator's own is used and kept.
    let own = "#!/bin/sh\n# the site's own\nexit 0\n";
    fs::write(&policy, own)?;
    let out = run_in(&root, "cat /usr/sbin/policy-rc.d").await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), own);
    assert_eq!(fs::read_to_string(&policy)?, own);
    assert_host_clean(&root, &before)
}

#[tokio::test]
async fn a_killed_sandbox_leaves_nothing_behind() -> Result<()> {
    if !is_root() {
        return Ok(());
    }
    let (_dir, root) = tiny_root()?;
    let before = mountinfo()?;
    let script = "sleep 1000 & sleep 1000 & echo started; wait";
    let mut stage1 = sandbox(Sandbox::new(&root, ["sh", "-c", script]))
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = stage1.stdout.take().context("stdout")?;

    tokio::time::timeout(DEADLINE, async {
        let mut lines = BufReader::new(stdout).lines();
        let line = lines.next_line().await?;
        ensure!(
            line.as_deref() == Some("started"),
            "the sandbox said {line:?}"
        );

        // Init, the shell and both sleeps, seen from the host.
        let pids = rooted_in(&root);
        ensure!(pids.len() >= 4, "processes in the tree: {pids:?}");
        let mut exits = Vec::new();
        for &pid in &pids {
            let fd = rustix::process::pidfd_open(
                Pid::from_raw(pid).context("a pid")?,
                PidfdFlags::empty(),
            )?;
            // Still the process found above, not a reused pid.
            ensure!(root_of(pid).as_deref() == Some(root.as_path()));
            // tokio deprecates its safe constructors because a registered
            // type could swap or close its descriptor behind the reactor's
            // back; an `OwnedFd` moved in cannot, and `unsafe` is forbidden.
            #[allow(deprecated)]
            let exit = AsyncFd::with_interest(fd, Interest::READABLE)?;
            exits.push(exit);
        }

        stage1.start_kill()?;
        let status = stage1.wait().await?;
        ensure!(status.signal() == Some(9), "stage 1 ended with {status}");
        // A pidfd becomes readable when its process has exited.
        for exit in &exits {
            drop(exit.readable().await?);
        }
        let left = rooted_in(&root);
        ensure!(left.is_empty(), "processes left in the tree: {left:?}");
        Ok(())
    })
    .await
    .context("the killed sandbox's processes did not exit")??;

    assert_host_clean(&root, &before)?;
    // Stage 1 had no chance to remove its policy-rc.d: the next run does.
    let policy = root.join("usr/sbin/policy-rc.d");
    assert!(fs::read_to_string(&policy)?.contains(POLICY_MARKER));
    let out = run_in(&root, "exit 0").await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!policy.exists());
    Ok(())
}
