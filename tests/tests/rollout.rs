//! Rolling reboots on a simulated fleet: a real coordinator and real agents
//! over mutual TLS, each node on its own 127.x address with a sandbox root,
//! whose reboot ends its agent and boots the generation its rendered
//! pxelinux menu names (a new boot id, an empty upper layer, a new key, so
//! it enrolls again).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use dfleet_proto::domain::{Event, EventKind};
use dfleet_tests::{Boot, Coordinator, EventWatch, SimNode, Target, TestNode, nodes};

fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The test inventory with a boot network on loopback (the rendered menus
/// are what the simulated nodes boot from; nothing answers DHCP) and two
/// published generations of `compute`.
fn setup(dir: &Path, ns: &[TestNode], k: u8) -> Result<String> {
    let t = dfleet_tests::loopback_boot_toml(dir, k, ns);
    for g in ["compute:7", "compute:8"] {
        dfleet_tests::publish_generation(&dir.join("images"), g)?;
    }
    Ok(t)
}

/// Starts every node on `generation` and waits until each is ready.
async fn boot_fleet(
    c: &Coordinator,
    events: &mut EventWatch,
    dir: &Path,
    ns: &[TestNode],
    generation: &str,
    boots: &Arc<Mutex<Vec<Boot>>>,
) -> Result<Vec<SimNode>> {
    let names = format!("cn[01-{:02}]", ns.len());
    c.cli(&["node", "assign", &names, generation]).await?;
    let target = Target {
        grpc: c.grpc.clone(),
        ca: c.ca(),
    };
    let mut sims = Vec::new();
    for n in ns {
        sims.push(
            SimNode::boot(
                &target,
                n,
                &dir.join(&n.name),
                &dir.join("tftp"),
                generation,
                boots.clone(),
            )
            .await?,
        );
    }
    for n in ns {
        events.wait(EventKind::Ready, &n.name).await?;
    }
    Ok(sims)
}

/// The rollout's step events, in order: (node, step).
fn steps(events: &[Event]) -> Vec<(String, String)> {
    events
        .iter()
        .filter(|e| e.kind == EventKind::RolloutStep)
        .filter_map(|e| {
            let step = e.detail.split(": ").nth(1)?.split_whitespace().next()?;
            Some((e.node.clone(), step.to_string()))
        })
        .collect()
}

/// All events so far, through the CLI.
async fn all_events(c: &Coordinator) -> Result<Vec<Event>> {
    c.cli(&["events", "--json", "--last", "100000"])
        .await?
        .lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("event {l:?}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rollout_moves_twenty_nodes_with_canaries_batches_and_the_unavailable_cap() -> Result<()>
{
    init();
    let dir = tempfile::tempdir()?;
    let ns = nodes(31, 20);
    let c = Coordinator::start(dir.path(), &setup(dir.path(), &ns, 31)?).await?;
    let mut events = c.watch().await?;
    let boots = Arc::new(Mutex::new(Vec::new()));
    let _sims = boot_fleet(&c, &mut events, dir.path(), &ns, "compute:7", &boots).await?;

    // Drain and undrain commands run as argument vectors: {node} arrives as
    // one argument ($0 of the script), whatever it holds.
    let drained = dir.path().join("drained.log");
    let undrained = dir.path().join("undrained.log");
    let drain = format!("sh -c 'echo \"$0\" >> {}' {{node}}", drained.display());
    let undrain = format!("sh -c 'echo \"$0\" >> {}' {{node}}", undrained.display());
    let out = c
        .cli(&[
            "rollout",
            "start",
            "compute:8",
            "--canary",
            "2",
            "--batch",
            "25%",
            "--max-unavailable",
            "4",
            "--order",
            "name",
            "--ready-timeout",
            "2m",
            "--drain-cmd",
            &drain,
            "--undrain-cmd",
            &undrain,
        ])
        .await?;
    assert!(
        out.contains("rollout 1 onto compute:8: 20 nodes (0 skipped)"),
        "{out}"
    );
    // A second rollout while this one runs is refused.
    let e = c.cli_err(&["rollout", "start", "compute:8"]).await?;
    assert!(e.contains("rollout 1 onto compute:8 is running"), "{e}");

    events
        .wait_for("the rollout to complete", |e| {
            e.kind == EventKind::Rollout && e.detail.contains("completed")
        })
        .await?;

    // Every node runs compute:8 now, booted exactly once more.
    let status = c.status_json().await?;
    for n in status["nodes"].as_array().context("nodes")? {
        assert_eq!(n["report"]["booted"]["stamp"]["generation"], 8, "{n}");
        assert_eq!(n["state"], "ready", "{n}");
    }
    let boots = boots.lock().unwrap().clone();
    for n in &ns {
        let mine: Vec<&str> = boots
            .iter()
            .filter(|b| b.node == n.name)
            .map(|b| b.generation.as_str())
            .collect();
        assert_eq!(mine, ["compute:7", "compute:8"], "{}", n.name);
    }
    let all = all_events(&c).await?;
    let orders: HashMap<&str, usize> = all
        .iter()
        .filter(|e| e.kind == EventKind::RebootOrdered)
        .fold(HashMap::new(), |mut m, e| {
            *m.entry(e.node.as_str()).or_default() += 1;
            m
        });
    assert_eq!(orders.len(), 20);
    assert!(orders.values().all(|&n| n == 1), "{orders:?}");

    // Canaries first: cn01 and cn02 were done before any other node moved.
    let steps = steps(&all);
    let first_other = steps
        .iter()
        .position(|(n, _)| n != "cn01" && n != "cn02")
        .context("other nodes moved")?;
    let canaries_done = steps
        .iter()
        .filter(|(n, s)| (n == "cn01" || n == "cn02") && s == "done")
        .count();
    let done_before: usize = steps[..first_other]
        .iter()
        .filter(|(_, s)| s == "done")
        .count();
    assert_eq!((canaries_done, done_before), (2, 2), "{steps:?}");

    // Never more than 4 nodes out of service, and batches of 25% (5 nodes,
    // capped at 4 by --max-unavailable).
    let mut out_of_service: HashSet<&str> = HashSet::new();
    let mut most = 0;
    for (n, s) in &steps {
        match s.as_str() {
            "done" | "failed" => {
                out_of_service.remove(n.as_str());
            }
            _ => {
                out_of_service.insert(n.as_str());
            }
        }
        most = most.max(out_of_service.len());
    }
    assert_eq!(most, 4, "{steps:?}");

    // Each node was drained once and undrained once, by name.
    for log in [&drained, &undrained] {
        let mut lines: Vec<String> = std::fs::read_to_string(log)?
            .lines()
            .map(String::from)
            .collect();
        lines.sort();
        let mut want: Vec<String> = ns.iter().map(|n| n.name.clone()).collect();
        want.sort();
        assert_eq!(lines, want, "{}", log.display());
    }

    let st: serde_json::Value =
        serde_json::from_str(&c.cli(&["rollout", "status", "--json"]).await?)?;
    assert_eq!(st["rollout"]["state"], "completed", "{st}");
    let text = c.cli(&["rollout", "status"]).await?;
    assert!(
        text.contains("20/20 nodes finished") && text.contains("20 done"),
        "{text}"
    );
    let history = c.cli(&["rollout", "history"]).await?;
    assert!(
        history.contains("compute:8") && history.contains("completed"),
        "{history}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_freeze_and_a_closed_window_hold_new_reboots() -> Result<()> {
    init();
    let dir = tempfile::tempdir()?;
    let ns = nodes(32, 3);
    let c = Coordinator::start(dir.path(), &setup(dir.path(), &ns, 32)?).await?;
    let mut events = c.watch().await?;
    let boots = Arc::new(Mutex::new(Vec::new()));
    let _sims = boot_fleet(&c, &mut events, dir.path(), &ns, "compute:7", &boots).await?;

    let frozen = c.cli(&["reboots", "freeze"]).await?;
    assert!(frozen.contains("reboots frozen"), "{frozen}");
    c.cli(&["rollout", "start", "compute:8", "--batch", "3"])
        .await?;
    // The start ran a first planning step: frozen, so every node waits.
    let st: serde_json::Value =
        serde_json::from_str(&c.cli(&["rollout", "status", "--json"]).await?)?;
    assert_eq!(st["frozen_by"], "uid:0", "{st}");
    let pending = |st: &serde_json::Value| {
        st["rollout"]["nodes"]
            .as_array()
            .map(|a| a.iter().filter(|n| n["step"] == "pending").count())
    };
    assert_eq!(pending(&st), Some(3), "{st}");
    assert!(
        c.cli(&["rollout", "status"])
            .await?
            .contains("REBOOTS FROZEN")
    );

    // Thawed: the rollout goes on by itself and completes.
    c.cli(&["reboots", "thaw"]).await?;
    events
        .wait_for("the rollout to complete", |e| {
            e.kind == EventKind::Rollout && e.detail.contains("completed")
        })
        .await?;

    // A window that is never open now: the next rollout holds every node.
    let now = jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC);
    let other_day = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
        [(now.weekday().to_monday_zero_offset() as usize + 3) % 7];
    c.cli(&[
        "rollout",
        "start",
        "compute:7",
        "--batch",
        "3",
        "--window",
        &format!("{other_day} 00:00-24:00 UTC"),
    ])
    .await?;
    let st: serde_json::Value =
        serde_json::from_str(&c.cli(&["rollout", "status", "--json"]).await?)?;
    assert_eq!(pending(&st), Some(3), "{st}");
    assert_eq!(st["rollout"]["window_open"], false, "{st}");
    assert!(
        c.cli(&["rollout", "status"])
            .await?
            .contains("window closed")
    );
    // Abort: nothing had rebooted, so every node goes back (it was never
    // switched) and the rollout ends aborted.
    c.cli(&["rollout", "abort"]).await?;
    events
        .wait_for("the rollout to end aborted", |e| {
            e.kind == EventKind::Rollout && e.detail.contains("aborted")
        })
        .await?;
    let st: serde_json::Value =
        serde_json::from_str(&c.cli(&["rollout", "status", "--json"]).await?)?;
    let reverted = st["rollout"]["nodes"]
        .as_array()
        .map(|a| a.iter().filter(|n| n["step"] == "reverted").count());
    assert_eq!(reverted, Some(3), "{st}");
    Ok(())
}
