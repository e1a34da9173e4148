//! A real coordinator and real agent processes over mutual TLS on loopback:
//! enrollment (approved, pending, refused), status, stale and lost nodes, a
//! coordinator restart, forged claims, and certificate renewal.

use std::path::Path;

use anyhow::{Context, Result};
use dfleet_agent::link::Credentials;
use dfleet_agent::sandbox::{self, SandboxSpec};
use dfleet_proto::domain::EventKind;
use dfleet_proto::pb;
use dfleet_tests::{Agent, Coordinator, Settings, TestNode, cluster_toml, nodes};

fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn spec(n: &TestNode, shared_keys: bool) -> SandboxSpec {
    let mut s = SandboxSpec::new(&n.name, n.mac.parse().unwrap(), n.ip);
    s.shared_image_keys = shared_keys;
    s.upper_files = vec![
        ("/var/log/syslog".into(), 3 << 20),
        ("/var/lib/slurm/state.db".into(), 1 << 20),
        ("/tmp/small".into(), 4096),
    ];
    s
}

async fn sandbox_for(dir: &Path, n: &TestNode, shared_keys: bool) -> Result<std::path::PathBuf> {
    let root = dir.join(&n.name);
    sandbox::build(&root, &spec(n, shared_keys))
        .with_context(|| format!("building {}'s sandbox", n.name))?;
    Ok(root)
}

#[tokio::test(flavor = "multi_thread")]
async fn agents_enroll_report_and_show_in_status() -> Result<()> {
    init();
    let dir = tempfile::tempdir()?;
    let ns = nodes(11, 3);
    // A threshold every node crosses: its event must appear.
    let settings = Settings {
        overlay_warn_percent: 1,
        ..Settings::default()
    };
    let c = Coordinator::start(dir.path(), &cluster_toml(dir.path(), &ns, &settings)).await?;
    let mut events = c.watch().await?;
    let mut agents = Vec::new();
    for (i, n) in ns.iter().enumerate() {
        let root = sandbox_for(dir.path(), n, i == 0).await?;
        agents.push(Agent::start(&c, n, &root).await?);
    }
    for n in &ns {
        let e = events.wait(EventKind::Enrolled, &n.name).await?;
        assert!(e.detail.contains(&n.mac), "{}", e.detail);
        events.wait(EventKind::Ready, &n.name).await?;
    }

    let status = c.status_json().await?;
    let list = status["nodes"].as_array().context("nodes")?;
    assert_eq!(list.len(), 3);
    for (i, n) in ns.iter().enumerate() {
        let node = list
            .iter()
            .find(|v| v["name"] == n.name.as_str())
            .context("node in status")?;
        assert_eq!(node["state"], "ready", "{node}");
        let overlay = &node["report"]["overlay"];
        assert_eq!(overlay["root_is_overlay"], true);
        assert!(overlay["size_bytes"].as_u64().unwrap() > 0);
        assert_eq!(node["report"]["identity"]["boot_mac"], n.mac.as_str());
        let keys = node["report"]["host_keys"].as_array().context("keys")?;
        assert!(!keys.is_empty());
        let want = if i == 0 { "image" } else { "boot" };
        assert!(keys.iter().all(|k| k["origin"] == want), "{keys:?}");
    }

    let e = events.wait(EventKind::OverlayThreshold, "cn02").await?;
    assert!(e.detail.contains("warn at 1%"), "{}", e.detail);

    // The table names each node with its state and host-key origin.
    let table = c.cli(&["status"]).await?;
    assert!(
        table.contains("cn01") && table.contains("shared!"),
        "{table}"
    );
    assert!(table.contains("3 nodes: 3 ready"), "{table}");

    // `node show` lists the largest path of the upper layer, from the sandbox files.
    let show = c.cli(&["node", "show", "cn02"]).await?;
    let largest = spec(&ns[1], false)
        .upper_files
        .iter()
        .max_by_key(|f| f.1)
        .cloned()
        .context("files")?;
    assert!(show.contains(&largest.0), "{show}");

    // `top` shows the same fleet, fullest overlay first.
    let top = c.cli(&["top", "--once"]).await?;
    assert!(top.starts_with("NODE"), "{top}");
    assert_eq!(
        top.lines().filter(|l| l.starts_with("cn0")).count(),
        3,
        "{top}"
    );

    // Metrics carry the same numbers, with the right content type.
    let (ctype, body) = dfleet_tests::http_get(&c.metrics, "/metrics").await?;
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    let used = list[0]["report"]["overlay"]["used_bytes"].as_u64().unwrap();
    let name = list[0]["name"].as_str().unwrap();
    assert!(
        body.contains(&format!(
            "dfleet_node_overlay_used_bytes{{node=\"{name}\"}} {used}"
        )),
        "{body}"
    );
    assert!(body.contains("dfleet_connected_agents 3"), "{body}");
    assert!(
        body.contains(
            "dfleet_node_booted_generation_info{node=\"cn01\",image=\"compute\",generation="
        ),
        "{body}"
    );
    drop(agents);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn manual_policy_waits_for_approval() -> Result<()> {
    init();
    let dir = tempfile::tempdir()?;
    let ns = nodes(12, 1);
    let settings = Settings {
        policy: "manual",
        ..Settings::default()
    };
    let c = Coordinator::start(dir.path(), &cluster_toml(dir.path(), &ns, &settings)).await?;
    let mut events = c.watch().await?;
    let root = sandbox_for(dir.path(), &ns[0], false).await?;
    let _agent = Agent::start(&c, &ns[0], &root).await?;
    events.wait(EventKind::EnrollPending, "cn01").await?;
    let pending = c.cli(&["node", "pending"]).await?;
    assert!(
        pending.contains(&ns[0].mac) && pending.contains("cn01"),
        "{pending}"
    );
    assert_eq!(c.status_json().await?["nodes"][0]["state"], "pending");

    c.cli(&["node", "approve", "cn01"]).await?;
    let approved = events.wait(EventKind::Approved, "cn01").await?;
    assert!(approved.actor.starts_with("uid:"), "{approved:?}");
    events.wait(EventKind::Enrolled, "cn01").await?;
    events.wait(EventKind::Ready, "cn01").await?;
    assert!(
        c.cli(&["node", "pending"])
            .await?
            .contains("nothing pending")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_unknown_mac_unprivileged_port_and_second_enrollment() -> Result<()> {
    init();
    let dir = tempfile::tempdir()?;
    let ns = nodes(13, 2);
    let c = Coordinator::start(
        dir.path(),
        &cluster_toml(dir.path(), &ns, &Settings::default()),
    )
    .await?;
    let mut events = c.watch().await?;

    // A machine the inventory does not know.
    let stranger = TestNode {
        name: "stranger".into(),
        mac: "52:54:00:ff:ff:01".into(),
        ip: "127.13.0.99".parse()?,
    };
    let root = sandbox_for(dir.path(), &stranger, false).await?;
    let _s = Agent::start(&c, &stranger, &root).await?;
    let e = events
        .wait_for("unknown MAC refusal", |e| {
            e.kind == EventKind::EnrollRefused && e.detail.contains("unknown MAC 52:54:00:ff:ff:01")
        })
        .await?;
    assert!(e.detail.contains("127.13.0.99"), "{}", e.detail);
    let pending = c.cli(&["node", "pending"]).await?;
    assert!(
        pending.contains("52:54:00:ff:ff:01") && pending.contains("(unknown)"),
        "{pending}"
    );

    // A non-root process cannot use a privileged source port.
    let root = sandbox_for(dir.path(), &ns[1], false).await?;
    open_to_nobody(dir.path(), &root)?;
    let _nobody = Agent::start_as(&c, &ns[1], &root, Some(65534)).await?;
    let e = events
        .wait_for("unprivileged port refusal", |e| {
            e.kind == EventKind::EnrollRefused
                && e.detail.contains("not privileged")
                && e.detail.contains("127.13.0.2")
        })
        .await?;
    assert!(e.detail.contains("source port"), "{}", e.detail);

    // A node enrolls; a second request with its MAC, even from its own
    // address and a privileged port, is refused while the first is live.
    let root = sandbox_for(dir.path(), &ns[0], false).await?;
    let _a = Agent::start(&c, &ns[0], &root).await?;
    events.wait(EventKind::Ready, "cn01").await?;
    let coordinator = link(&c, ns[0].ip)?;
    let (key, csr) = dfleet_agent::link::new_key_and_csr()?;
    let err = coordinator
        .enroll(&key, &csr, &ns[0].mac, "another-boot")
        .await
        .err()
        .context("a second enrollment was accepted")?;
    assert!(
        err.to_string().contains("already holds a live stream"),
        "{err}"
    );
    events
        .wait_for("second enrollment refusal", |e| {
            e.kind == EventKind::EnrollRefused
                && e.node == "cn01"
                && e.detail.contains("second enrollment")
        })
        .await?;

    // After `node rearm`, one new enrollment is accepted.
    c.cli(&["node", "rearm", "cn01"]).await?;
    let (key, csr) = dfleet_agent::link::new_key_and_csr()?;
    let issued = coordinator
        .enroll(&key, &csr, &ns[0].mac, "another-boot")
        .await?;
    assert!(issued.is_ok(), "rearmed enrollment was not issued");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_agent_goes_stale_then_lost() -> Result<()> {
    init();
    let dir = tempfile::tempdir()?;
    let ns = nodes(14, 1);
    let settings = Settings {
        stale_after: "2s",
        lost_after: "4s",
        ..Settings::default()
    };
    let c = Coordinator::start(dir.path(), &cluster_toml(dir.path(), &ns, &settings)).await?;
    let mut events = c.watch().await?;
    let root = sandbox_for(dir.path(), &ns[0], false).await?;
    let agent = Agent::start(&c, &ns[0], &root).await?;
    events.wait(EventKind::Ready, "cn01").await?;
    agent.kill().await?;
    events.wait(EventKind::Disconnected, "cn01").await?;
    events.wait(EventKind::Stale, "cn01").await?;
    events.wait(EventKind::Lost, "cn01").await?;
    assert_eq!(c.status_json().await?["nodes"][0]["state"], "lost");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_coordinator_gets_its_agents_back_and_loses_nothing() -> Result<()> {
    init();
    let dir = tempfile::tempdir()?;
    let ns = nodes(15, 3);
    let toml = cluster_toml(dir.path(), &ns, &Settings::default());
    let c = Coordinator::start(dir.path(), &toml).await?;
    let mut events = c.watch().await?;
    let mut agents = Vec::new();
    for n in &ns {
        let root = sandbox_for(dir.path(), n, false).await?;
        agents.push(Agent::start(&c, n, &root).await?);
    }
    for n in &ns {
        events.wait(EventKind::Ready, &n.name).await?;
    }
    let before = c.cli(&["events", "--json", "--last", "100000"]).await?;
    let enrolled_before = before
        .lines()
        .filter(|l| l.contains("\"enrolled\""))
        .count();
    assert_eq!(enrolled_before, 3);
    let last_id = last_event_id(&before)?;
    drop(events);
    let port = c.grpc.rsplit(':').next().context("port")?.to_string();
    let mut c = c;
    c.kill().await?;

    // Restart on the address the agents know (the one the kernel picked for
    // the first run); the agents are still running and reconnect by themselves.
    let toml = toml.replace("127.0.0.1:0\"]", &format!("127.0.0.1:{port}\"]"));
    let c2 = Coordinator::start(dir.path(), &toml).await?;
    let mut events = c2.watch().await?;
    for n in &ns {
        events
            .wait_for(&format!("{} back", n.name), |e| {
                e.id > last_id && e.kind == EventKind::Connected && e.node == n.name
            })
            .await?;
    }
    let after = c2.cli(&["events", "--json", "--last", "100000"]).await?;
    for line in before.lines() {
        assert!(
            after.contains(line),
            "event lost across the restart: {line}"
        );
    }
    let enrolled_after = after.lines().filter(|l| l.contains("\"enrolled\"")).count();
    assert_eq!(
        enrolled_after, 3,
        "agents had to enroll again after the restart"
    );
    let status = c2.status_json().await?;
    for n in status["nodes"].as_array().context("nodes")? {
        assert!(
            n["report"]["overlay"]["size_bytes"].as_u64().unwrap_or(0) > 0,
            "{n}"
        );
    }
    drop(agents);
    Ok(())
}

fn last_event_id(json_lines: &str) -> Result<u64> {
    let mut max = 0;
    for line in json_lines.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        max = max.max(v["id"].as_u64().unwrap_or(0));
    }
    Ok(max)
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_claims_and_node_admin_calls_are_refused() -> Result<()> {
    init();
    let dir = tempfile::tempdir()?;
    let ns = nodes(16, 2);
    let c = Coordinator::start(
        dir.path(),
        &cluster_toml(dir.path(), &ns, &Settings::default()),
    )
    .await?;
    let mut events = c.watch().await?;
    let root = sandbox_for(dir.path(), &ns[0], false).await?;
    let _a = Agent::start(&c, &ns[0], &root).await?;
    events.wait(EventKind::Ready, "cn01").await?;

    // cn01's own certificate, taken from its RAM state directory.
    let boot_id = std::fs::read_to_string(root.join("proc/sys/kernel/random/boot_id"))?;
    let creds = Credentials::load(&root.join("run/dfleet-agent"), boot_id.trim())
        .context("cn01's credentials")?;
    let link = link(&c, ns[0].ip)?;

    // Claiming cn02 with cn01's certificate.
    let channel = link.channel(Some(&creds), false).await?;
    let mut client = pb::agent_client::AgentClient::new(channel.clone());
    let hello = pb::AgentMessage {
        kind: Some(pb::agent_message::Kind::Hello(pb::Hello {
            node: "cn02".into(),
            mac: ns[1].mac.clone(),
            boot_id: "x".into(),
            agent_version: "test".into(),
            protocol: 1,
        })),
    };
    let status = client
        .connect(tokio_stream::iter(vec![hello]))
        .await
        .err()
        .context("a stream claiming another node was accepted")?;
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    events
        .wait_for("stream refusal", |e| {
            e.kind == EventKind::StreamRefused
                && e.detail
                    .contains("certificate names cn01 but the stream claims cn02")
        })
        .await?;

    // A node certificate calling an admin RPC.
    let mut admin = pb::admin_client::AdminClient::new(channel);
    let status = admin
        .status(pb::StatusRequest::default())
        .await
        .err()
        .context("a node certificate was allowed an admin RPC")?;
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    let e = events
        .wait_for("admin refusal", |e| e.kind == EventKind::AdminRefused)
        .await?;
    assert_eq!(e.actor, "node:cn01");
    // Nor may it run commands on the fleet.
    let status = admin
        .exec(pb::ExecRequest {
            nodeset: "cn01".into(),
            argv: vec!["true".into()],
            ..Default::default()
        })
        .await
        .err()
        .context("a node certificate was allowed to exec")?;
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn short_lived_certificates_are_renewed_on_the_stream() -> Result<()> {
    init();
    let dir = tempfile::tempdir()?;
    let ns = nodes(17, 1);
    let settings = Settings {
        cert_lifetime: "2s",
        ..Settings::default()
    };
    let c = Coordinator::start(dir.path(), &cluster_toml(dir.path(), &ns, &settings)).await?;
    let mut events = c.watch().await?;
    let root = sandbox_for(dir.path(), &ns[0], false).await?;
    let _a = Agent::start(&c, &ns[0], &root).await?;
    events.wait(EventKind::Connected, "cn01").await?;
    for _ in 0..3 {
        events.wait(EventKind::CertRenewed, "cn01").await?;
    }
    // Through three renewals the one stream stayed up.
    assert!(
        !events
            .seen
            .iter()
            .any(|e| e.node == "cn01" && e.kind == EventKind::Disconnected),
        "{}",
        events.dump()
    );
    let status = c.status_json().await?;
    assert_eq!(status["nodes"][0]["connected"], true);
    Ok(())
}

/// A client link to the coordinator from `ip`, as an agent there would have.
fn link(c: &Coordinator, ip: std::net::Ipv4Addr) -> Result<dfleet_agent::link::Coordinator> {
    Ok(dfleet_agent::link::Coordinator {
        addr: c.grpc.clone(),
        server_name: "dfleet-coordinator".into(),
        ca_pem: std::fs::read(c.ca())?,
        bind: Some(ip.into()),
    })
}

/// Lets user `nobody` read a sandbox and write its agent state directory.
fn open_to_nobody(top: &Path, root: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(top, std::fs::Permissions::from_mode(0o755))?;
    let state = root.join("run/dfleet-agent");
    std::fs::create_dir_all(&state)?;
    std::os::unix::fs::chown(&state, Some(65534), Some(65534))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_and_sighup_reread_the_inventory_and_a_bad_file_changes_nothing() -> Result<()> {
    init();
    let dir = tempfile::tempdir()?;
    let ns = nodes(18, 2);
    let settings = Settings::default();
    let c = Coordinator::start(dir.path(), &cluster_toml(dir.path(), &ns[..1], &settings)).await?;
    let mut events = c.watch().await?;
    assert_eq!(
        c.status_json().await?["nodes"].as_array().map(Vec::len),
        Some(1)
    );

    // `dfleet reload` with a second node: it can enroll at once.
    std::fs::write(&c.config, cluster_toml(dir.path(), &ns, &settings))?;
    let out = c.cli(&["reload"]).await?;
    assert!(out.contains("1 added"), "{out}");
    let e = events
        .wait_for("reload", |e| e.kind == EventKind::InventoryReloaded)
        .await?;
    assert!(e.actor.starts_with("uid:"), "{e:?}");
    let root = sandbox_for(dir.path(), &ns[1], false).await?;
    let _a = Agent::start(&c, &ns[1], &root).await?;
    events.wait(EventKind::Ready, "cn02").await?;

    // A broken file: the error names file, line and field; nothing changes.
    let broken = cluster_toml(dir.path(), &ns, &settings).replace(&ns[1].mac, "52:54:00:zz:00:02");
    std::fs::write(&c.config, &broken)?;
    let out = c.cli_raw(&["reload"]).await?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let line = broken
        .lines()
        .position(|l| l.contains("zz"))
        .context("line")?
        + 1;
    assert!(
        err.contains(&format!("cluster.toml:{line}:")) && err.contains("mac"),
        "{err}"
    );
    assert_eq!(
        c.status_json().await?["nodes"].as_array().map(Vec::len),
        Some(2)
    );

    // SIGHUP with the node removed again.
    std::fs::write(&c.config, cluster_toml(dir.path(), &ns[..1], &settings))?;
    let hup = tokio::process::Command::new("kill")
        .args(["-HUP", &c.pid().to_string()])
        .status()
        .await?;
    assert!(hup.success());
    let e = events
        .wait_for("SIGHUP reload", |e| {
            e.kind == EventKind::InventoryReloaded && e.actor == "signal:SIGHUP"
        })
        .await?;
    assert!(e.detail.contains("1 removed"), "{}", e.detail);
    events.wait(EventKind::Disconnected, "cn02").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_coordinator_never_crashes_the_agent() -> Result<()> {
    init();
    let dir = tempfile::tempdir()?;
    let ns = nodes(19, 1);
    let toml = cluster_toml(dir.path(), &ns, &Settings::default());
    let c = Coordinator::start(dir.path(), &toml).await?;
    let port = c.grpc.rsplit(':').next().context("port")?.to_string();
    let root = sandbox_for(dir.path(), &ns[0], false).await?;
    // The coordinator goes away before the agent starts.
    let mut c = c;
    c.kill().await?;
    let mut agent = Agent::start_logged(&c, &ns[0], &root).await?;
    agent.wait_log("retrying with backoff").await?;
    assert!(
        agent.is_running(),
        "the agent exited while the coordinator was away"
    );

    // Back on the same address: the agent enrolls and reports.
    let toml = toml.replace("127.0.0.1:0\"]", &format!("127.0.0.1:{port}\"]"));
    let c2 = Coordinator::start(dir.path(), &toml).await?;
    let mut events = c2.watch().await?;
    events.wait(EventKind::Ready, "cn01").await?;
    agent.wait_log("reachable again").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_inventory_names_file_line_and_field() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ns = nodes(20, 2);
    let mut toml = cluster_toml(dir.path(), &ns, &Settings::default());
    toml = toml.replace(
        "ip = \"127.20.0.2\"",
        "ip = \"127.20.0.1\"\ncolour = \"blue\"",
    );
    let path = dir.path().join("cluster.toml");
    std::fs::write(&path, &toml)?;
    let out = tokio::process::Command::new(dfleet_tests::bin("dfleet"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .await?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let line_of = |needle: &str| toml.lines().position(|l| l.contains(needle)).map(|i| i + 1);
    let dup = toml
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains("127.20.0.1"))
        .nth(1)
        .map(|(i, _)| i + 1);
    assert!(
        err.contains(&format!("cluster.toml:{}:", dup.context("dup line")?)),
        "{err}"
    );
    assert!(err.contains("duplicate IP 127.20.0.1"), "{err}");
    assert!(
        err.contains(&format!(
            "cluster.toml:{}:",
            line_of("colour").context("line")?
        )),
        "{err}"
    );
    assert!(err.contains("colour"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn inventory_checks_run_on_the_node_and_name_the_failure() -> Result<()> {
    init();
    let dir = tempfile::tempdir()?;
    let ns = nodes(21, 1);
    let mut toml = cluster_toml(dir.path(), &ns, &Settings::default());
    toml.push_str("\n[[checks]]\nname = \"slurmd\"\ncommand = [\"false\"]\ntimeout = \"5s\"\n");
    let c = Coordinator::start(dir.path(), &toml).await?;
    let mut events = c.watch().await?;
    let root = sandbox_for(dir.path(), &ns[0], false).await?;
    let _a = Agent::start(&c, &ns[0], &root).await?;
    let e = events.wait(EventKind::NotReady, "cn01").await?;
    assert_eq!(e.detail, "failing: slurmd");
    let table = c.cli(&["status"]).await?;
    let row = table
        .lines()
        .find(|l| l.starts_with("cn01"))
        .context("row")?;
    assert!(
        row.contains("not-ready") && row.trim_end().ends_with("slurmd"),
        "{table}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_certificates_work_remotely_and_are_issued_on_the_socket_only() -> Result<()> {
    init();
    let dir = tempfile::tempdir()?;
    let ns = nodes(22, 1);
    let c = Coordinator::start(
        dir.path(),
        &cluster_toml(dir.path(), &ns, &Settings::default()),
    )
    .await?;
    let mut events = c.watch().await?;
    let out = dir.path().join("alice");
    c.cli(&[
        "admin",
        "cert",
        "issue",
        "alice",
        "--out",
        out.to_str().context("path")?,
    ])
    .await?;
    let e = events
        .wait_for("issue", |e| e.kind == EventKind::AdminCertIssued)
        .await?;
    assert!(
        e.detail.contains("alice") && e.actor.starts_with("uid:"),
        "{e:?}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(out.join("alice.key"))?
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let remote = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(dfleet_tests::bin("dfleet"));
        cmd.args(["--remote", &c.grpc, "--cert"])
            .arg(out.join("alice.crt"))
            .arg("--key")
            .arg(out.join("alice.key"))
            .arg("--ca")
            .arg(out.join("ca.crt"))
            .args(args);
        cmd
    };
    let status = remote(&["status", "--json"]).output().await?;
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&status.stdout)?;
    assert_eq!(v["nodes"][0]["name"], "cn01");

    // Remote admins act under their certificate's name.
    let rearm = remote(&["node", "rearm", "cn01"]).output().await?;
    assert!(
        rearm.status.success(),
        "{}",
        String::from_utf8_lossy(&rearm.stderr)
    );
    let e = events.wait(EventKind::Rearmed, "cn01").await?;
    assert_eq!(e.actor, "admin:alice");

    // But new admin certificates come from the local socket only.
    let again = remote(&[
        "admin",
        "cert",
        "issue",
        "mallory",
        "--out",
        out.to_str().context("path")?,
    ])
    .output()
    .await?;
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("local socket only"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    Ok(())
}
