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

/// A coordinator and `count` simulated nodes, all ready on compute:7.
struct Sim {
    dir: tempfile::TempDir,
    ns: Vec<TestNode>,
    c: Coordinator,
    events: EventWatch,
    boots: Arc<Mutex<Vec<Boot>>>,
    sims: Vec<SimNode>,
}

async fn simulated(k: u8, count: u8) -> Result<Sim> {
    simulated_with(k, count, |_| String::new()).await
}

/// [`simulated`] with more inventory, made from the test's directory.
async fn simulated_with(k: u8, count: u8, more: impl Fn(&Path) -> String) -> Result<Sim> {
    init();
    let dir = tempfile::tempdir()?;
    let ns = nodes(k, count);
    let toml = setup(dir.path(), &ns, k)? + &more(dir.path());
    let c = Coordinator::start(dir.path(), &toml).await?;
    let mut events = c.watch().await?;
    let boots = Arc::new(Mutex::new(Vec::new()));
    let sims = boot_fleet(&c, &mut events, dir.path(), &ns, "compute:7", &boots).await?;
    Ok(Sim {
        dir,
        ns,
        c,
        events,
        boots,
        sims,
    })
}

/// The generations `node` booted, in order.
fn booted<'a>(boots: &'a [Boot], node: &str) -> Vec<&'a str> {
    boots
        .iter()
        .filter(|b| b.node == node)
        .map(|b| b.generation.as_str())
        .collect()
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
    let Sim {
        dir,
        ns,
        c,
        mut events,
        boots,
        sims: _sims,
    } = simulated(31, 20).await?;

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
        out.contains("rollout 1 (onto compute:8): 20 nodes (0 skipped)"),
        "{out}"
    );
    // A second rollout while this one runs is refused.
    let e = c.cli_err(&["rollout", "start", "compute:8"]).await?;
    assert!(e.contains("rollout 1 (onto compute:8) is running"), "{e}");

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
        let mine = booted(&boots, &n.name);
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
    let (_, metrics) = dfleet_tests::http_get(&c.metrics, "/metrics").await?;
    for line in [
        "dfleet_rollout_info{id=\"1\",target=\"compute:8\",state=\"completed\"} 1",
        "dfleet_rollout_nodes{step=\"done\"} 20",
        "dfleet_rollout_nodes{step=\"pending\"} 0",
        "dfleet_reboots_frozen 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in:\n{metrics}"
        );
    }
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
    let Sim {
        dir: _dir,
        ns: _ns,
        c,
        mut events,
        boots: _boots,
        sims: _sims,
    } = simulated(32, 3).await?;

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

/// Waits for the rollout event whose detail contains `what`.
async fn rollout_event(events: &mut EventWatch, what: &str) -> Result<Event> {
    events
        .wait_for(&format!("the rollout to be {what}"), |e| {
            e.kind == EventKind::Rollout && e.detail.contains(what)
        })
        .await
}

/// Waits for `node`'s step event saying it failed.
async fn node_failed(events: &mut EventWatch, node: &str) -> Result<Event> {
    events
        .wait_for(&format!("{node} to fail"), |e| {
            e.kind == EventKind::RolloutStep && e.node == node && e.detail.contains("failed")
        })
        .await
}

/// Each node's step in `rollout status --json`.
async fn node_steps(c: &Coordinator) -> Result<HashMap<String, (String, String)>> {
    let st: serde_json::Value =
        serde_json::from_str(&c.cli(&["rollout", "status", "--json"]).await?)?;
    Ok(st["rollout"]["nodes"]
        .as_array()
        .context("nodes")?
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap_or_default().to_string(),
                (
                    n["step"].as_str().unwrap_or_default().to_string(),
                    n["reason"].as_str().unwrap_or_default().to_string(),
                ),
            )
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_that_never_comes_back_fails_and_pauses_the_rollout_until_resumed() -> Result<()> {
    let Sim {
        dir: _dir,
        ns: _ns,
        c,
        mut events,
        boots: _boots,
        sims,
    } = simulated(33, 5).await?;
    sims[1]
        .stay_down
        .store(true, std::sync::atomic::Ordering::SeqCst);

    c.cli(&[
        "rollout",
        "start",
        "compute:8",
        "--canary",
        "1",
        "--batch",
        "2",
        "--order",
        "name",
        "--ready-timeout",
        "10s",
    ])
    .await?;
    let e = rollout_event(&mut events, "paused").await?;
    assert!(
        e.detail
            .contains("1 nodes failed, more than --max-failures 0"),
        "{}",
        e.detail
    );
    let steps = node_steps(&c).await?;
    assert_eq!(steps["cn01"].0, "done", "{steps:?}");
    assert_eq!(steps["cn02"].0, "failed", "{steps:?}");
    assert!(steps["cn02"].1.contains("not back"), "{steps:?}");
    assert_eq!(steps["cn03"].0, "done", "{steps:?}");
    assert_eq!(
        (steps["cn04"].0.as_str(), steps["cn05"].0.as_str()),
        ("pending", "pending")
    );

    // A human saw it: resume, and the rest goes on.
    c.cli(&["rollout", "resume"]).await?;
    rollout_event(&mut events, "completed").await?;
    let steps = node_steps(&c).await?;
    assert_eq!(steps["cn05"].0, "done", "{steps:?}");
    assert_eq!(steps["cn02"].0, "failed", "{steps:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn max_unavailable_holds_with_a_node_already_down_and_a_drain_check_times_out() -> Result<()>
{
    init();
    let dir = tempfile::tempdir()?;
    let ns = nodes(34, 4);
    let c = Coordinator::start(dir.path(), &setup(dir.path(), &ns, 34)?).await?;
    let mut events = c.watch().await?;
    let boots = Arc::new(Mutex::new(Vec::new()));
    // cn04 is down: its agent never starts.
    let _sims = boot_fleet(&c, &mut events, dir.path(), &ns[..3], "compute:7", &boots).await?;
    c.cli(&["node", "assign", "cn04", "compute:7"]).await?;

    c.cli(&[
        "rollout",
        "start",
        "compute:8",
        "--nodes",
        "cn[01-04]",
        "--batch",
        "4",
        "--max-unavailable",
        "1",
        "--max-failures",
        "9",
        "--order",
        "name",
        "--drain-cmd",
        "true",
        "--drain-timeout",
        "2s",
        // Never drained: cn01 (its jobs never end); every other node is.
        "--drained-check",
        "sh -c 'test \"$0\" != cn01' {node}",
    ])
    .await?;
    // cn04, down already, is the only node that may start: it fails (it
    // cannot be reached and no power command is configured) and, still
    // down, keeps the one unit of room.
    let e = node_failed(&mut events, "cn04").await?;
    assert!(e.detail.contains("unreachable"), "{}", e.detail);
    let steps = node_steps(&c).await?;
    for n in ["cn01", "cn02", "cn03"] {
        assert_eq!(steps[n].0, "pending", "{steps:?}");
    }

    // cn04 comes up on its own: room for one node, whose drained check
    // never passes, so it fails after --drain-timeout without a reboot.
    let target = Target {
        grpc: c.grpc.clone(),
        ca: c.ca(),
    };
    let _cn04 = SimNode::boot(
        &target,
        &ns[3],
        &dir.path().join("cn04"),
        &dir.path().join("tftp"),
        "compute:8",
        boots.clone(),
    )
    .await?;
    let e = node_failed(&mut events, "cn01").await?;
    assert!(e.detail.contains("not drained after 2s"), "{}", e.detail);
    let rebooted: Vec<Boot> = boots
        .lock()
        .unwrap()
        .iter()
        .filter(|b| b.node == "cn01")
        .cloned()
        .collect();
    assert_eq!(rebooted.len(), 1, "cn01 was rebooted: {rebooted:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_coordinator_killed_mid_rollout_resumes_and_reboots_no_node_twice() -> Result<()> {
    init();
    let dir = tempfile::tempdir()?;
    let ns = nodes(35, 6);
    let toml = setup(dir.path(), &ns, 35)?;
    let mut c = Coordinator::start(dir.path(), &toml).await?;
    let mut events = c.watch().await?;
    let boots = Arc::new(Mutex::new(Vec::new()));
    let _sims = boot_fleet(&c, &mut events, dir.path(), &ns, "compute:7", &boots).await?;

    c.cli(&[
        "rollout",
        "start",
        "compute:8",
        "--batch",
        "2",
        "--order",
        "name",
    ])
    .await?;
    // Killed right after the second wave's first reboot order.
    events.wait(EventKind::RebootOrdered, "cn03").await?;
    let port = c.grpc.rsplit(':').next().context("port")?.to_string();
    c.kill().await?;
    drop(events);

    // Back on the address the agents know; the rollout goes on by itself.
    let toml = toml.replace("127.0.0.1:0\"]", &format!("127.0.0.1:{port}\"]"));
    let c = Coordinator::start(dir.path(), &toml).await?;
    let mut events = c.watch().await?;
    rollout_event(&mut events, "completed").await?;
    let steps = node_steps(&c).await?;
    assert!(steps.values().all(|(s, _)| s == "done"), "{steps:?}");
    let boots = boots.lock().unwrap().clone();
    for n in &ns {
        let mine = booted(&boots, &n.name);
        assert_eq!(
            mine,
            ["compute:7", "compute:8"],
            "{} rebooted other than once",
            n.name
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn node_reboot_brings_each_node_back_on_its_assignment() -> Result<()> {
    let Sim {
        dir: _dir,
        ns,
        c,
        mut events,
        boots,
        sims: _sims,
    } = simulated(36, 3).await?;
    // A reboot needs nodes; cn03 is left alone.
    let e = c.cli_err(&["node", "reboot", ""]).await?;
    assert!(e.contains("a reboot needs a node set"), "{e}");
    let out = c
        .cli(&["node", "reboot", "cn[01-02]", "--batch", "1"])
        .await?;
    assert!(
        out.contains("a reboot, each node back on its assigned generation"),
        "{out}"
    );
    // `rollout wait` follows it to its end, printing each step.
    let waited = c.cli(&["rollout", "wait", "--timeout", "5m"]).await?;
    assert!(
        waited.contains("cn02: rollout 1: done") && waited.contains("2 done"),
        "{waited}"
    );
    rollout_event(&mut events, "completed").await?;
    let boots = boots.lock().unwrap().clone();
    for n in &ns {
        let mine = booted(&boots, &n.name);
        let want: &[&str] = if n.name == "cn03" {
            &["compute:7"]
        } else {
            &["compute:7", "compute:7"]
        };
        assert_eq!(mine, want, "{}", n.name);
    }
    let text = c.cli(&["rollout", "status"]).await?;
    assert!(
        text.contains("(reboot): completed") && text.contains("2 done"),
        "{text}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_canary_stops_the_rollout_and_abort_keeps_the_rest_on_their_generation()
-> Result<()> {
    let Sim {
        dir,
        ns,
        c,
        mut events,
        boots,
        sims: _sims,
    } = simulated_with(37, 4, |_| {
        "\n[[checks]]\nname = \"health\"\ncommand = [\"dfleet-test-health\"]\n".to_string()
    })
    .await?;
    // compute:8 is broken: a node booted on it never passes its health check.
    std::fs::write(dir.path().join("broken-generations"), "compute:8\n")?;
    c.cli(&[
        "rollout",
        "start",
        "compute:8",
        "--canary",
        "1",
        "--batch",
        "3",
        "--order",
        "name",
        "--ready-timeout",
        "5s",
    ])
    .await?;
    let e = node_failed(&mut events, "cn01").await?;
    assert!(
        e.detail.contains("on compute:8 but not ready"),
        "{}",
        e.detail
    );
    let e = rollout_event(&mut events, "paused").await?;
    assert!(e.detail.contains("canary cn01 failed"), "{}", e.detail);
    let waited = c.cli_err(&["rollout", "wait"]).await?;
    assert!(
        waited.contains("rollout 1 (compute:8) is paused: canary cn01 failed"),
        "{waited}"
    );
    let steps = node_steps(&c).await?;
    for n in ["cn02", "cn03", "cn04"] {
        assert_eq!(steps[n].0, "pending", "{steps:?}");
    }

    c.cli(&["rollout", "abort"]).await?;
    rollout_event(&mut events, "aborted").await?;
    let boots = boots.lock().unwrap().clone();
    assert_eq!(booted(&boots, "cn01"), ["compute:7", "compute:8"]);
    for n in &ns[1..] {
        assert_eq!(booted(&boots, &n.name), ["compute:7"], "{}", n.name);
        let menu = dir
            .path()
            .join("tftp/pxelinux.cfg")
            .join(format!("01-{}", n.mac.replace(':', "-")));
        let menu = std::fs::read_to_string(&menu)?;
        assert!(
            menu.split_whitespace()
                .any(|w| w == "dfleet.generation=compute:7"),
            "{menu}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_node_is_power_cycled_and_only_nodes_the_rollout_drained_are_undrained()
-> Result<()> {
    // The power "BMC" records its arguments and the password it was given.
    let power = |dir: &Path| {
        let script = dir.join("bmc.sh");
        std::fs::write(
            &script,
            "#!/bin/sh\nprintf '%s\\n' \"$@\" \"password=$TEST_BMC_PASSWORD\" > \"$0.$5.log\"\n",
        )
        .expect("the BMC script");
        let creds = dir.join("bmc.toml");
        std::fs::write(
            &creds,
            "user = \"ADMIN\"\npassword = \"hunter2\"\n[nodes.\"cn[02-03]\"]\nuser = \"root\"\n",
        )
        .expect("the credentials");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        format!(
            "\n[power]\ncommand = [\"{}\", \"-H\", \"{{bmc}}\", \"-U\", \"{{user}}\", \"{{node}}\", \"cycle\"]\n\
             bmc = \"{{node}}-ipmi\"\ncredentials = \"{}\"\npassword_env = \"TEST_BMC_PASSWORD\"\n",
            script.display(),
            creds.display()
        )
    };
    let Sim {
        dir,
        ns: _ns,
        c,
        mut events,
        boots,
        sims,
    } = simulated_with(38, 3, power).await?;
    // cn02 goes down and stays off until its BMC powers it on.
    sims[1]
        .stay_down
        .store(true, std::sync::atomic::Ordering::SeqCst);
    c.cli(&[
        "node",
        "reboot",
        "cn02",
        "--ready-timeout",
        "1s",
        "--max-failures",
        "1",
    ])
    .await?;
    node_failed(&mut events, "cn02").await?;
    rollout_event(&mut events, "completed").await?;
    // cn03 was drained by the admins before: it stays drained.
    let mark = |n: &str| dir.path().join(format!("drained-{n}"));
    std::fs::write(mark("cn03"), "by hand\n")?;
    let flag = |n: &str| format!("{}-{{node}}", dir.path().join(n).display());
    c.cli(&[
        "rollout",
        "start",
        "compute:8",
        "--batch",
        "3",
        "--order",
        "name",
        "--is-drained",
        &format!("test -e {}", flag("drained")),
        "--drain-cmd",
        &format!("touch {}", flag("drained")),
        "--undrain-cmd",
        &format!("rm {}", flag("drained")),
    ])
    .await?;
    let e = events
        .wait_for("cn02 power-cycled", |e| {
            e.kind == EventKind::RolloutStep && e.node == "cn02" && e.detail.contains("power")
        })
        .await?;
    assert!(
        e.detail.contains("-H cn02-ipmi -U root cn02 cycle"),
        "{}",
        e.detail
    );
    assert!(!e.detail.contains("hunter2"), "{}", e.detail);
    let log = std::fs::read_to_string(dir.path().join("bmc.sh.cn02.log"))?;
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        [
            "-H",
            "cn02-ipmi",
            "-U",
            "root",
            "cn02",
            "cycle",
            "password=hunter2"
        ]
    );
    sims[1].power_on();
    rollout_event(&mut events, "completed").await?;
    let steps = node_steps(&c).await?;
    for n in ["cn01", "cn02", "cn03"] {
        assert_eq!(steps[n].0, "done", "{steps:?}");
    }
    let boots = boots.lock().unwrap().clone();
    assert_eq!(booted(&boots, "cn02"), ["compute:7", "compute:8"]);
    // The rollout undrained what it drained, and left cn03 as it found it.
    assert!(!mark("cn01").exists() && !mark("cn02").exists());
    assert_eq!(std::fs::read_to_string(mark("cn03"))?, "by hand\n");
    let e = all_events(&c).await?;
    assert!(
        e.iter()
            .any(|e| e.node == "cn03" && e.detail.contains("drained before the rollout")),
        "no event says cn03 was drained before"
    );
    Ok(())
}
