//! `dfleet exec` across real agent processes: the order goes over each
//! agent's mTLS stream, the agent really runs the command (programs a
//! node's sandbox provides in its bin directories win, so each node can
//! answer differently), and the CLI prints, gathers and sums up.

use std::path::Path;

use anyhow::{Context, Result};
use dfleet_agent::sandbox::{self, SandboxSpec};
use dfleet_proto::domain::{Event, EventKind};
use dfleet_tests::{Agent, Coordinator, Settings, TestNode, cluster_toml, nodes};
use tokio::io::{AsyncBufReadExt, BufReader};

fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A sandbox for `n` whose `dfleet-test-exit` prints "exit N" and exits N,
/// N being the node's number modulo 3. The fifth node booted compute:8, the
/// others compute:7.
fn sandbox(dir: &Path, n: &TestNode, i: usize) -> Result<std::path::PathBuf> {
    let root = dir.join(&n.name);
    let mut spec = SandboxSpec::new(&n.name, n.mac.parse()?, n.ip);
    if i == 4 {
        spec.image = "compute:8".parse()?;
    }
    sandbox::build(&root, &spec).with_context(|| format!("building {}'s sandbox", n.name))?;
    let code = (i + 1) % 3;
    dfleet_tests::sandbox_program(
        &root,
        "dfleet-test-exit",
        &format!("echo \"exit {code}\"\nexit {code}\n"),
    )?;
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

/// Whether process `pid` ended within a minute (its pidfd turns readable
/// when it does; a pid that no longer exists has ended). The wait has its
/// own limit, so a survivor fails the test instead of hanging it.
async fn ended(pid: i32) -> Result<bool> {
    let Some(pid) = rustix::process::Pid::from_raw(pid) else {
        return Ok(true);
    };
    let Ok(fd) = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) else {
        return Ok(true);
    };
    let ready = tokio::task::spawn_blocking(move || {
        let mut fds = [rustix::event::PollFd::new(
            &fd,
            rustix::event::PollFlags::IN,
        )];
        let minute = rustix::event::Timespec {
            tv_sec: 60,
            tv_nsec: 0,
        };
        rustix::event::poll(&mut fds, Some(&minute))
    })
    .await??;
    Ok(ready > 0)
}

/// Checks that each of the `n` processes whose pids `file` lists (one per
/// line) ends within a minute.
async fn all_ended(file: &Path, n: usize) -> Result<()> {
    let pids: Vec<i32> = std::fs::read_to_string(file)?
        .lines()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    anyhow::ensure!(pids.len() == n, "{pids:?}: expected {n}");
    for pid in pids {
        anyhow::ensure!(ended(pid).await?, "process {pid} is still running");
    }
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
    all_ended(&pids, 2)
        .await
        .context("a timed-out command's child survived")?;

    // Ctrl-C on the caller cancels what still runs: each agent kills the
    // command's whole group, and the audit trail says so.
    let pids = dir.path().join("cancelled-pids");
    let script = format!(
        "sleep 300 & echo $! >> {}; echo started; sleep 300",
        pids.display()
    );
    let mut caller = tokio::process::Command::new(dfleet_tests::bin("dfleet"))
        .arg("--socket")
        .arg(dir.path().join("admin.sock"))
        .args(["exec", "cn[01-02]", "--", "sh", "-c", &script])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(caller.stdout.take().context("stdout")?).lines();
    let mut started = 0;
    while started < 2 {
        let line = lines.next_line().await?.context("exec ended early")?;
        started += usize::from(line.ends_with(": started"));
    }
    let pid = rustix::process::Pid::from_raw(caller.id().context("caller pid")? as i32)
        .context("caller pid")?;
    rustix::process::kill_process(pid, rustix::process::Signal::INT)?;
    caller.wait().await?;
    all_ended(&pids, 2)
        .await
        .context("a cancelled command's child survived")?;
    let interrupted = events
        .wait_for("the interrupted exec's end", |e| {
            e.kind == EventKind::Exec && e.detail.contains("interrupted by the caller")
        })
        .await?;
    assert!(
        interrupted.detail.ends_with(
            "; interrupted by the caller, 2 nodes without a result, cancelled on cn[01-02] (2)"
        ),
        "{interrupted:?}"
    );

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

    // Sets by generation: the one node on compute:8, the reachable rest on 7.
    let (code, out, _) = run(&c, &["exec", "@gen:compute:8", "--", "dfleet-test-exit"]).await?;
    assert_eq!((code, out.as_str()), (2, "cn05: exit 2\n"));
    assert_eq!(
        c.cli(&["nodeset", "-f", "@gen:compute:7"]).await?,
        "cn[01-04]\n"
    );

    // --pick: that many distinct nodes, all from the set after exclusions.
    let (code, out, err) = run(
        &c,
        &[
            "exec",
            "cn[01-05]",
            "-x",
            "cn[01-02]",
            "--pick",
            "2",
            "--",
            "dfleet-test-exit",
        ],
    )
    .await?;
    let picked: std::collections::BTreeSet<&str> = out
        .lines()
        .filter_map(|l| l.split_once(": ").map(|(node, _)| node))
        .collect();
    assert!(
        out.lines().count() == 2
            && picked.len() == 2
            && picked.iter().all(|n| ["cn03", "cn04", "cn05"].contains(n)),
        "{out}"
    );
    assert!(code > 0 && err.contains("dfleet exec: 2 nodes in"), "{err}");

    // Output beyond --max-output is cut where the limit falls, with a note.
    let (code, out, err) = run(
        &c,
        &[
            "exec",
            "cn01",
            "-b",
            "--max-output",
            "100",
            "--",
            "seq",
            "100000",
        ],
    )
    .await?;
    assert_eq!(code, 0, "{err}");
    let full: String = (1..=100_000).map(|i| format!("{i}\n")).collect();
    assert_eq!(
        out,
        format!("{rule}\ncn01 (exit 0)\n{rule}\n{}\n", &full[..100])
    );
    assert!(
        err.contains(&format!(
            "{rule}\ncn01 (exit 0, stderr)\n{rule}\n[output truncated: more than --max-output bytes]\n"
        )),
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

    // audit --since takes a duration or a UTC time. One just after the start
    // of a command that runs 0.3 s keeps its end and drops its start.
    let (code, _, _) = run(&c, &["exec", "cn01", "--", "sleep", "0.3"]).await?;
    assert_eq!(code, 0);
    let events: Vec<Event> = c
        .cli(&["audit", "--json"])
        .await?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let start = events
        .iter()
        .find(|e| e.detail == "started `sleep 0.3` on cn01")
        .context("no start event")?;
    let since = jiff::Timestamp::from_millisecond(start.at_unix_ms + 1)?.to_string();
    let recent = c.cli(&["audit", "--since", &since]).await?;
    assert!(
        !recent.contains("started `sleep 0.3`")
            && recent.contains("finished `sleep 0.3` on cn01: 1 nodes in")
            && !recent.contains("dfleet-test-exit"),
        "since {since}:\n{recent}"
    );
    let hour = c.cli(&["audit", "--since", "1h"]).await?;
    assert_eq!(hour, c.cli(&["audit"]).await?);
    let err = c.cli_err(&["audit", "--since", "soon"]).await?;
    assert!(err.contains("--since \"soon\""), "{err}");

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
