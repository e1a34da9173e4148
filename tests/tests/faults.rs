//! Faults, with real processes over real TLS:
//! - the coordinator SIGKILLed under load right after an acknowledged change:
//!   its store passes SQLite's integrity check, the change is in it, and the
//!   fleet comes back by itself;
//! - a node lost in the middle of a command, or of its enrollment;
//! - a network partition of some agents, which then heals.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use dfleet_agent::link;
use dfleet_proto::domain::{Event, EventKind};
use dfleet_tests::{
    Agent, Coordinator, Partition, Settings, Target, cluster_toml, node_sandbox, nodes, now_ms,
    sandbox_program, start_ready,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_coordinator_killed_under_load_keeps_every_acknowledged_change() -> Result<()> {
    init();
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let ns = nodes(44, 4);
    // Reports every second from every node: the store is busy when it dies.
    let toml = cluster_toml(d, &ns, &Settings::default());
    let mut c = Coordinator::start(d, &toml).await?;
    let mut events = c.watch().await?;
    let agents = start_ready(&c, d, &ns, &mut events).await?;
    drop(events);
    let port = c.grpc.rsplit(':').next().context("port")?.to_string();
    let toml = toml.replace("127.0.0.1:0\"]", &format!("127.0.0.1:{port}\"]"));
    let db = d.join("state/dfleet.db");

    for n in &ns[..3] {
        // Acknowledged, then the crash at once.
        let said = c.cli(&["node", "rearm", &n.name]).await?;
        c.kill().await?;
        dfleet_coordinator::store::check_file(&db)
            .with_context(|| format!("after the crash that followed rearming {}", n.name))?;

        let restarted = now_ms();
        c = Coordinator::start(d, &toml).await?;
        let log = event_log(&c).await?;
        ensure!(
            log.iter()
                .any(|e| e.kind == EventKind::Rearmed && e.node == n.name),
            "`{}` was acknowledged ({said}) but its event is gone",
            n.name
        );
        // The fleet comes back by itself.
        let mut events = c.watch().await?;
        for m in &ns {
            events
                .wait_since(EventKind::Connected, &m.name, restarted)
                .await?;
        }
    }
    let status = c.status_json().await?;
    for n in status["nodes"].as_array().context("nodes")? {
        ensure!(n["connected"] == true, "{n}");
    }
    for a in agents {
        a.kill().await?;
    }
    Ok(())
}

async fn event_log(c: &Coordinator) -> Result<Vec<Event>> {
    let log = c.cli(&["events", "--json", "--last", "100000"]).await?;
    Ok(log
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?)
}

fn enrollments(log: &[Event], node: &str) -> usize {
    log.iter()
        .filter(|e| e.kind == EventKind::Enrolled && e.node == node)
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_lost_mid_command_is_named_at_once_and_comes_back_by_itself() -> Result<()> {
    init();
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let ns = nodes(45, 3);
    let c = Coordinator::start(d, &cluster_toml(d, &ns, &Settings::default())).await?;
    let mut events = c.watch().await?;
    let mut agents = Vec::new();
    let pid_file = d.join("cn02.pid");
    for n in &ns {
        let root = node_sandbox(d, n)?;
        // Quick everywhere but on cn02, which says so and works on.
        let body = if n.name == "cn02" {
            format!(
                "echo $$ > '{}'\necho working\nexec sleep 600\n",
                pid_file.display()
            )
        } else {
            "echo done\n".to_string()
        };
        sandbox_program(&root, "dfleet-test-work", &body)?;
        agents.push(Agent::start(&c, n, &root).await?);
    }
    for n in &ns {
        events.wait(EventKind::Ready, &n.name).await?;
    }

    // No timeout: only the node's loss can end cn02's part.
    let mut caller = c.cli_spawn(&["exec", "cn[01-03]", "--", "dfleet-test-work"])?;
    let mut out = BufReader::new(caller.stdout.take().context("stdout")?).lines();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        seen.push(out.next_line().await?.context("exec ended early")?);
    }
    seen.sort_unstable();
    assert_eq!(seen, ["cn01: done", "cn02: working", "cn03: done"]);
    // The node vanishes.
    let lost_at = now_ms();
    agents.remove(1).kill().await?;
    let mut err = String::new();
    caller
        .stderr
        .take()
        .context("stderr")?
        .read_to_string(&mut err)
        .await?;
    let status = caller.wait().await?;
    assert_eq!(status.code(), Some(255), "{err}");
    assert!(
        err.contains(": 2 ok; unreachable: cn02 (1)")
            && err.contains("dfleet exec: cn02: unreachable: its stream ended during the command"),
        "the lost node is not named: {err}"
    );
    let gone = events.wait(EventKind::Disconnected, "cn02").await?;
    ensure!(gone.at_unix_ms >= lost_at, "{gone:?}");
    events
        .wait_for("the exec's end in the audit trail", |e| {
            e.kind == EventKind::Exec && e.detail.ends_with(": 2 ok; unreachable: cn02 (1)")
        })
        .await?;
    // What the agent ran is an orphan now; a real node's would be gone.
    let orphan: i32 = std::fs::read_to_string(&pid_file)?.trim().parse()?;
    if let Some(pid) = rustix::process::Pid::from_raw(orphan) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }

    // The agent restarts in the same boot: back on its certificate, with no
    // enrollment and nothing asked of an administrator.
    let restarted = now_ms();
    agents.push(Agent::start(&c, &ns[1], &d.join("cn02")).await?);
    events
        .wait_since(EventKind::Connected, "cn02", restarted)
        .await?;
    let log = event_log(&c).await?;
    assert_eq!(enrollments(&log, "cn02"), 1, "cn02 enrolled again");
    let all = c.cli(&["exec", "cn[01-03]", "--", "true"]).await?;
    assert_eq!(all, "");
    for a in agents {
        a.kill().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_lost_mid_enrollment_enrolls_again_by_itself() -> Result<()> {
    init();
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let ns = nodes(46, 1);
    let cn01 = &ns[0];
    // Long enough that cn01 is never given up during the test: only the
    // unfinished enrollment may let it in again.
    let settings = Settings {
        lost_after: "1h",
        ..Settings::default()
    };
    let c = Coordinator::start(d, &cluster_toml(d, &ns, &settings)).await?;
    let mut events = c.watch().await?;
    let root = node_sandbox(d, cn01)?;

    // cn01's enrollment reaches the coordinator and a certificate is
    // issued, but the agent dies before it keeps the answer.
    let l = link::Coordinator {
        addr: c.grpc.clone(),
        server_name: "dfleet-coordinator".into(),
        ca_pem: std::fs::read(c.ca())?,
        bind: Some(cn01.ip.into()),
    };
    let (key, csr) = link::new_key_and_csr()?;
    let boot_id = std::fs::read_to_string(root.join("proc/sys/kernel/random/boot_id"))?;
    l.enroll(&key, &csr, &cn01.mac, boot_id.trim())
        .await?
        .map_err(|(why, _)| anyhow::anyhow!("pending: {why}"))?;
    events.wait(EventKind::Enrolled, "cn01").await?;

    // Its agent starts again with nothing kept, in the same boot.
    let agent = Agent::start(&c, cn01, &root).await?;
    events.wait(EventKind::Ready, "cn01").await?;
    let log = event_log(&c).await?;
    let refused: Vec<&Event> = log
        .iter()
        .filter(|e| e.kind == EventKind::EnrollRefused)
        .collect();
    ensure!(refused.is_empty(), "refused on the way: {refused:?}");
    assert_eq!(enrollments(&log, "cn01"), 2);
    agent.kill().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partition_marks_its_nodes_blocks_nothing_and_heals() -> Result<()> {
    init();
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let ns = nodes(47, 4);
    // Stale quickly; never lost (which would ask for a new enrollment).
    let settings = Settings {
        stale_after: "3s",
        lost_after: "1h",
        ..Settings::default()
    };
    let c = Coordinator::start(d, &cluster_toml(d, &ns, &settings)).await?;
    let mut events = c.watch().await?;
    // cn03 and cn04 reach the coordinator through the partition.
    let partition = Partition::start(&c.grpc).await?;
    let behind = Target {
        grpc: partition.addr.clone(),
        ca: c.ca(),
    };
    let mut agents = Vec::new();
    for (i, n) in ns.iter().enumerate() {
        let root = node_sandbox(d, n)?;
        agents.push(if i < 2 {
            Agent::start(&c, n, &root).await?
        } else {
            Agent::start_via(&behind, n, &root).await?
        });
    }
    for n in &ns {
        events.wait(EventKind::Ready, &n.name).await?;
    }

    partition.cut();
    // Marked: their reports stop, so they go stale.
    for n in &ns[2..] {
        events.wait(EventKind::Stale, &n.name).await?;
    }
    let status = c.status_json().await?;
    for n in status["nodes"].as_array().context("nodes")? {
        let want = if ["cn03", "cn04"].contains(&n["name"].as_str().unwrap_or("")) {
            "stale"
        } else {
            "ready"
        };
        ensure!(n["state"] == want, "{n}");
    }
    // Not waited for: a command ends, naming them, once its timeout passes.
    let o = c
        .cli_raw(&["exec", "cn[01-04]", "-t", "2s", "--", "true"])
        .await?;
    let err = String::from_utf8(o.stderr)?;
    ensure!(o.status.code() != Some(0), "{err}");
    ensure!(
        err.contains(": 2 ok; timed out: cn[03-04] (2)")
            || err.contains(": 2 ok; unreachable: cn[03-04] (2)"),
        "{err}"
    );
    // Each side's keepalive finds the connection dead; nothing closed it.
    for n in &ns[2..] {
        events.wait(EventKind::Disconnected, &n.name).await?;
    }

    let healed = now_ms();
    partition.heal();
    for n in &ns[2..] {
        events.wait_since(EventKind::Ready, &n.name, healed).await?;
    }
    let all = c.cli(&["exec", "cn[01-04]", "--", "true"]).await?;
    assert_eq!(all, "");
    let status = c.status_json().await?;
    for n in status["nodes"].as_array().context("nodes")? {
        ensure!(n["connected"] == true && n["state"] == "ready", "{n}");
    }
    // Back on the certificates they had: no new enrollment.
    let log = event_log(&c).await?;
    for n in &ns {
        assert_eq!(enrollments(&log, &n.name), 1, "{} enrolled again", n.name);
    }
    for a in agents {
        a.kill().await?;
    }
    Ok(())
}

/// A tmpfs mounted for a test, lazily unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Result<Tmpfs> {
        std::fs::create_dir_all(at)?;
        let ok = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .status()?
            .success();
        ensure!(ok, "mounting a tmpfs at {}", at.display());
        Ok(Tmpfs(at.to_path_buf()))
    }

    /// Fills what is left with one file, and returns it.
    fn fill(&self) -> Result<PathBuf> {
        use std::io::Write;
        let path = self.0.join("filler");
        let mut f = std::fs::File::create(&path)?;
        let chunk = vec![0u8; 64 << 10];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(path)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_state_disk_refuses_changes_serves_reads_and_recovers() -> Result<()> {
    init();
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let ns = nodes(48, 3);
    let state = d.join("state");
    let disk = Tmpfs::mount(&state, "16m")?;
    let mut c =
        Coordinator::start_capturing(d, &cluster_toml(d, &ns, &Settings::default())).await?;
    let mut events = c.watch().await?;
    let mut agents = Vec::new();
    for n in &ns[..2] {
        agents.push(Agent::start(&c, n, &node_sandbox(d, n)?).await?);
    }
    for n in &ns[..2] {
        events.wait(EventKind::Ready, &n.name).await?;
    }

    let filler = disk.fill()?;
    // The change that finds the disk full is made but cannot be stored: it
    // is held, and the answer says so.
    let err = c.cli_err(&["node", "rearm", "cn01"]).await?;
    ensure!(
        err.contains("the change is made but not stored yet: database or disk is full")
            && err.contains("held in memory"),
        "{err}"
    );
    c.wait_log("store: writes fail; held in memory").await?;
    // From then on changes are refused, naming the place to free.
    let err = c.cli_err(&["node", "rearm", "cn02"]).await?;
    ensure!(
        err.contains("refused: the store")
            && err.contains("cannot be written since")
            && err.contains(&format!("Free space in {}", state.display())),
        "{err}"
    );
    // Reads and commands go on; the event log shows the held change.
    let o = c.cli_raw(&["status"]).await?;
    ensure!(
        o.status.success()
            && String::from_utf8(o.stderr)?.contains("dfleet status: warning: the store"),
        "no warning"
    );
    let status = c.status_json().await?;
    ensure!(
        status["store_problem"].is_string(),
        "{}",
        status["store_problem"]
    );
    for n in status["nodes"].as_array().context("nodes")?.iter().take(2) {
        ensure!(n["connected"] == true, "{n}");
    }
    let log = event_log(&c).await?;
    ensure!(
        log.iter()
            .any(|e| e.kind == EventKind::Rearmed && e.node == "cn01")
    );
    ensure!(
        !log.iter()
            .any(|e| e.kind == EventKind::Rearmed && e.node == "cn02")
    );
    assert_eq!(c.cli(&["exec", "cn[01-02]", "--", "true"]).await?, "");
    let (_, metrics) = dfleet_tests::http_get(&c.metrics, "/metrics").await?;
    ensure!(
        !metrics.contains("\ndfleet_store_held_writes 0\n")
            && metrics.contains("\ndfleet_store_held_writes "),
        "{metrics}"
    );
    // A node that enrolls now is told to come back: its certificate could
    // not be kept.
    let mut cn03 = Agent::start_logged(&c, &ns[2], &node_sandbox(d, &ns[2])?).await?;
    cn03.wait_log("enrollment deferred").await?;

    // Space returns: the held writes are stored, and all works again.
    std::fs::remove_file(&filler)?;
    c.wait_log("store: writes stored again").await?;
    events.wait(EventKind::Ready, "cn03").await?;
    c.cli(&["node", "rearm", "cn02"]).await?;
    agents.push(cn03);

    // What the store kept survives a crash.
    c.kill().await?;
    let db = state.join("dfleet.db");
    dfleet_coordinator::store::check_file(&db)?;
    let (store, _) = dfleet_coordinator::store::Store::open(&state)?;
    let stored = store.events(0, 100_000).await?;
    for node in ["cn01", "cn02"] {
        let rearms = stored
            .iter()
            .filter(|e| e.kind == EventKind::Rearmed && e.node == node)
            .count();
        assert_eq!(rearms, 1, "{node}");
    }
    for a in agents {
        a.kill().await?;
    }
    drop(store);
    Ok(())
}
