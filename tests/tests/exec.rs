//! `dfleet exec` across real agent processes: the order goes over each
//! agent's mTLS stream, the agent really runs the command (programs a
//! node's sandbox provides in its bin directories win, so each node can
//! answer differently), and the CLI prints, gathers and sums up.

use std::path::Path;

use anyhow::{Context, Result};
use dfleet_agent::sandbox::{self, SandboxSpec};
use dfleet_proto::domain::EventKind;
use dfleet_tests::{Agent, Coordinator, Settings, TestNode, cluster_toml, nodes};

fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A sandbox for `n` whose `dfleet-test-exit` prints "exit N" and exits N,
/// N being the node's number modulo 3.
fn sandbox(dir: &Path, n: &TestNode, i: usize) -> Result<std::path::PathBuf> {
    let root = dir.join(&n.name);
    let spec = SandboxSpec::new(&n.name, n.mac.parse()?, n.ip);
    sandbox::build(&root, &spec).with_context(|| format!("building {}'s sandbox", n.name))?;
    let script = root.join("usr/local/sbin/dfleet-test-exit");
    std::fs::create_dir_all(script.parent().context("parent")?)?;
    let code = (i + 1) % 3;
    std::fs::write(
        &script,
        format!("#!/bin/sh\necho \"exit {code}\"\nexit {code}\n"),
    )?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    Ok(root)
}

/// (exit status, stdout, stderr) of `dfleet ARGS`.
async fn run(c: &Coordinator, args: &[&str]) -> Result<(i32, String, String)> {
    let o = c.cli_raw(args).await?;
    Ok((
        o.status.code().unwrap_or(-1),
        String::from_utf8(o.stdout)?,
        String::from_utf8(o.stderr)?,
    ))
}

/// Waits until process `pid` has ended (its pidfd turns readable); a pid
/// that no longer exists has ended.
async fn ended(pid: i32) -> Result<()> {
    let Some(pid) = rustix::process::Pid::from_raw(pid) else {
        return Ok(());
    };
    let Ok(fd) = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) else {
        return Ok(());
    };
    // A pidfd is readable once the process has ended.
    tokio::task::spawn_blocking(move || {
        let mut fds = [rustix::event::PollFd::new(
            &fd,
            rustix::event::PollFlags::IN,
        )];
        rustix::event::poll(&mut fds, None)
    })
    .await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_runs_everywhere_folds_results_and_names_the_unreachable() -> Result<()> {
    init();
    let dir = tempfile::tempdir()?;
    let ns = nodes(39, 6);
    let c = Coordinator::start(
        dir.path(),
        &cluster_toml(dir.path(), &ns, &Settings::default()),
    )
    .await?;
    let mut events = c.watch().await?;
    // cn06 never starts: unreachable.
    let mut agents = Vec::new();
    for (i, n) in ns[..5].iter().enumerate() {
        let root = sandbox(dir.path(), n, i)?;
        agents.push(Agent::start(&c, n, &root).await?);
    }
    for n in &ns[..5] {
        events.wait(EventKind::Ready, &n.name).await?;
    }

    // Gathered: nodes with the same result and output under one header.
    let (code, out, err) = run(&c, &["exec", "cn[01-06]", "-b", "--", "dfleet-test-exit"]).await?;
    assert_eq!(code, 255, "unreachable wins: {out}{err}");
    let rule = "-".repeat(15);
    for want in [
        format!("{rule}\ncn03 (exit 0)\n{rule}\nexit 0\n"),
        format!("{rule}\ncn[01,04] (exit 1)\n{rule}\nexit 1\n"),
        format!("{rule}\ncn[02,05] (exit 2)\n{rule}\nexit 2\n"),
    ] {
        assert!(out.contains(&want), "no {want:?} in:\n{out}");
    }
    assert!(
        err.contains("dfleet exec: 6 nodes in")
            && err.contains(
                ": 1 ok; exit 1: cn[01,04] (2); exit 2: cn[02,05] (2); unreachable: cn06 (1)"
            ),
        "{err}"
    );
    // Without the unreachable node: the highest exit code.
    let (code, _, _) = run(
        &c,
        &[
            "exec",
            "cn[01-06]",
            "-x",
            "cn06",
            "-b",
            "--",
            "dfleet-test-exit",
        ],
    )
    .await?;
    assert_eq!(code, 2);

    // Line by line, each prefixed; through a shell only when asked.
    let (code, out, _) = run(
        &c,
        &["exec", "@state:ready", "--", "echo", "a;", "echo", "b"],
    )
    .await?;
    assert_eq!(code, 0);
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort_unstable();
    assert_eq!(
        lines,
        [
            "cn01: a; echo b",
            "cn02: a; echo b",
            "cn03: a; echo b",
            "cn04: a; echo b",
            "cn05: a; echo b"
        ]
    );
    let (code, out, _) = run(
        &c,
        &[
            "exec",
            "cn02",
            "--shell",
            "--",
            "echo a; echo b >&2; echo c",
        ],
    )
    .await?;
    assert_eq!((code, out.as_str()), (0, "cn02: a\ncn02: c\n"));

    // A timeout kills the command's whole process group.
    let pids = dir.path().join("pids");
    let script = format!("sleep 300 & echo $! >> {}; sleep 300", pids.display());
    let (code, _, err) = run(
        &c,
        &["exec", "cn[01-02]", "-t", "2s", "--", "sh", "-c", &script],
    )
    .await?;
    assert_eq!(code, 254, "{err}");
    assert!(err.contains("timed out: cn[01-02] (2)"), "{err}");
    let pids: Vec<i32> = std::fs::read_to_string(&pids)?
        .lines()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    assert_eq!(pids.len(), 2);
    for pid in pids {
        tokio::time::timeout(std::time::Duration::from_secs(60), ended(pid))
            .await
            .context("a timed-out command's child survived")??;
    }

    // Bad sets are clear errors; every exec is in the audit trail.
    let (code, _, err) = run(&c, &["exec", "cn[3-1]", "--", "true"]).await?;
    assert_ne!(code, 0);
    assert!(err.contains("reversed range \"3-1\""), "{err}");
    let (code, _, err) = run(&c, &["exec", "@nosuch", "--", "true"]).await?;
    assert_ne!(code, 0);
    assert!(
        err.contains("no node of the inventory is in group \"nosuch\""),
        "{err}"
    );
    let audit = c.cli(&["audit"]).await?;
    assert!(
        audit.lines().any(|l| l.contains(" exec ")
            && l.ends_with(": started `dfleet-test-exit` on cn[01-06] [uid:0]")),
        "{audit}"
    );
    assert!(
        audit.contains("unreachable: cn06 (1) [uid:0]")
            && audit.contains("timed out: cn[01-02] (2)"),
        "{audit}"
    );

    // A uid outside the admin group cannot reach the admin socket at all.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let o = tokio::process::Command::new(dfleet_tests::bin("dfleet"))
        .arg("--socket")
        .arg(dir.path().join("admin.sock"))
        .args(["exec", "cn01", "--", "true"])
        .uid(65534)
        .gid(65534)
        .output()
        .await?;
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("ermission denied"),
        "{err}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn nodeset_expands_folds_and_counts_with_the_fleets_groups() -> Result<()> {
    init();
    let dir = tempfile::tempdir()?;
    let ns = nodes(40, 3);
    let c = Coordinator::start(
        dir.path(),
        &cluster_toml(dir.path(), &ns, &Settings::default()),
    )
    .await?;
    let mut events = c.watch().await?;
    let root = sandbox(dir.path(), &ns[1], 1)?;
    let _a = Agent::start(&c, &ns[1], &root).await?;
    events.wait(EventKind::Ready, "cn02").await?;
    assert_eq!(
        c.cli(&["nodeset", "-f", "rack[1-2]-cn[01-02]", "x1"])
            .await?,
        "rack[1-2]-cn[01-02],x1\n"
    );
    assert_eq!(c.cli(&["nodeset", "-e", "cn[1-3]!cn2"]).await?, "cn1 cn3\n");
    assert_eq!(c.cli(&["nodeset", "-c", "cn[001-128,200]"]).await?, "129\n");
    assert_eq!(
        c.cli(&["nodeset", "-f", "@compute", "-x", "@state:ready"])
            .await?,
        "cn[01,03]\n"
    );
    assert_eq!(c.cli(&["nodeset", "-e", "@state:ready"]).await?, "cn02\n");
    let err = c.cli_err(&["nodeset", "-e", "@state:sleepy"]).await?;
    assert!(err.contains("unknown state \"sleepy\""), "{err}");
    // Status takes the same sets.
    let table = c.cli(&["status", "@state:ready"]).await?;
    assert!(table.contains("cn02") && !table.contains("cn01"), "{table}");
    Ok(())
}
