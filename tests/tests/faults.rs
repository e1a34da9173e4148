//! Crash safety: the coordinator is SIGKILLed while its agents report, each
//! time right after an administrator's change was acknowledged. After every
//! crash its store passes SQLite's integrity check, every acknowledged
//! change is in it, and the fleet comes back by itself.

use anyhow::{Context, Result, ensure};
use dfleet_agent::sandbox::{self, SandboxSpec};
use dfleet_proto::domain::{Event, EventKind};
use dfleet_tests::{Agent, Coordinator, Settings, cluster_toml, nodes};

fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn now_ms() -> Result<i64> {
    Ok(std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64)
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
    let mut agents = Vec::new();
    for n in &ns {
        let root = d.join(&n.name);
        sandbox::build(&root, &SandboxSpec::new(&n.name, n.mac.parse()?, n.ip))?;
        agents.push(Agent::start(&c, n, &root).await?);
    }
    for n in &ns {
        events.wait(EventKind::Ready, &n.name).await?;
    }
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

        let restarted = now_ms()?;
        c = Coordinator::start(d, &toml).await?;
        let log = c.cli(&["events", "--json", "--last", "100000"]).await?;
        let log: Vec<Event> = log
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?;
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
                .wait_for(&format!("{} connected again", m.name), |e| {
                    e.kind == EventKind::Connected && e.node == m.name && e.at_unix_ms >= restarted
                })
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
