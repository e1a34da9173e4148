//! `dfleet demo`: a coordinator and a fleet of real agent processes on this
//! machine, each agent on its own loopback address (127.0.100.N), enrolling
//! from a privileged port over mutual TLS, and reading a sandbox root that
//! looks like a diskless node (overlay root, tmpfs upper with real files, NFS
//! lower with a generation stamp, SSH host keys). Every number it shows comes
//! from those files.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use dfleet_agent::sandbox::{self, Sandbox, SandboxSpec};
use dfleet_proto::domain::{Event, EventKind};
use dfleet_proto::pb;
use dfleet_provisioner::inventory::Inventory;
use tokio::process::{Child, Command};

use crate::client::{self, Target};

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// How many nodes.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u8).range(1..=200))]
    pub nodes: u8,
    /// Keep the demo's files here instead of a temporary directory.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Print the status once every node is ready, then stop (for scripts).
    #[arg(long)]
    pub exit_when_ready: bool,
}

struct DemoNode {
    name: String,
    mac: String,
    ip: Ipv4Addr,
    sandbox: Sandbox,
}

fn spec_for(i: u8, name: &str, mac: &str, ip: Ipv4Addr, root: bool) -> Result<SandboxSpec> {
    let mut spec = SandboxSpec::new(name, mac.parse()?, ip);
    // Every third node still carries the image's host keys: the warning the
    // status table shows as "shared!".
    spec.shared_image_keys = i % 3 == 1;
    let mib = 1u64 << 20;
    spec.upper_files = vec![
        (
            "/var/log/journal/system.journal".into(),
            (4 + u64::from(i) * 3) * mib,
        ),
        (
            "/var/lib/slurm/job_cache.db".into(),
            u64::from(i % 4) * 6 * mib + mib / 2,
        ),
        ("/tmp/scratch/input.dat".into(), u64::from(i) * mib * 2),
        ("/root/.bash_history".into(), 7000 + u64::from(i) * 311),
        ("/etc/motd".into(), 120),
    ];
    spec.whiteouts = vec![
        "/usr/share/doc/README".into(),
        "/etc/cron.daily/man-db".into(),
    ];
    if root {
        spec.tmpfs_bytes = Some(256 * mib);
    }
    Ok(spec)
}

pub async fn run(args: DemoArgs) -> Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!(
            "the demo's agents enroll from privileged source ports, as on a real node: run it as root"
        );
    }
    let agent_bin = std::env::current_exe()?
        .parent()
        .context("the dfleet binary's directory")?
        .join("dfleet-agent");
    if !agent_bin.exists() {
        bail!(
            "{} is missing: build both binaries (`cargo build --release --bins`)",
            agent_bin.display()
        );
    }
    let temp;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            temp = tempfile::Builder::new().prefix("dfleet-demo.").tempdir()?;
            temp.path().to_path_buf()
        }
    };
    let mut toml = format!(
        r#"# The demo's inventory, written by `dfleet demo`.
[cluster]
name = "demo"
state_dir = "{state}"
listen = ["127.0.0.1:0"]
metrics_listen = "127.0.0.1:0"
admin_socket = "{sock}"
report_interval = "5s"

[health]
stale_after = "20s"
lost_after = "60s"
overlay_used_warn_percent = 30
"#,
        state = dir.join("state").display(),
        sock = dir.join("admin.sock").display()
    );
    let mut nodes = Vec::new();
    for i in 1..=args.nodes {
        let name = format!("cn{i:02}");
        let mac = format!("52:54:00:de:00:{i:02x}");
        let ip = Ipv4Addr::new(127, 0, 100, i);
        toml.push_str(&format!(
            "\n[[nodes]]\nname = \"{name}\"\nmac = \"{mac}\"\nip = \"{ip}\"\nimage = \"compute\"\ngroups = [\"compute\", \"rack{}\"]\n",
            1 + (i - 1) / 4
        ));
        let spec = spec_for(i, &name, &mac, ip, true)?;
        let sandbox = sandbox::build(&dir.join("nodes").join(&name), &spec)
            .with_context(|| format!("building {name}'s sandbox"))?;
        nodes.push(DemoNode {
            name,
            mac,
            ip,
            sandbox,
        });
    }
    let config = dir.join("cluster.toml");
    std::fs::write(&config, &toml)?;
    let inv = Inventory::load(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let listeners = crate::daemon::bind(&inv).await?;
    let (trigger, shutdown) = crate::fleet::tokio_util_shutdown::channel();
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
    let daemon = tokio::spawn(crate::daemon::run(inv, listeners, shutdown, move |b| {
        let _ = bound_tx.send(b.clone());
    }));
    let bound = bound_rx.await.context("the coordinator did not start")?;
    let grpc = bound.grpc.first().context("no gRPC listener")?.to_string();

    let mut agents: Vec<Child> = Vec::new();
    for n in &nodes {
        let root = n.sandbox.dir();
        write_agent_config(root)?;
        agents.push(
            Command::new(&agent_bin)
                .arg("--config")
                .arg(root.join("etc/dfleet/agent.toml"))
                .arg("--root")
                .arg(root)
                .arg("--coordinator")
                .arg(&grpc)
                .arg("--ca")
                .arg(dir.join("state/ca.pem"))
                .arg("--state-dir")
                .arg(root.join("run/dfleet-agent"))
                .arg("--bind")
                .arg(n.ip.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(std::fs::File::create(
                    dir.join(format!("{}.log", n.name)),
                )?))
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting the agent of {}", n.name))?,
        );
    }
    let target = Target::Socket(bound.admin.clone());
    let result = show(&args, &dir, &bound, &target, &nodes).await;
    for mut a in agents {
        let _ = a.kill().await;
    }
    trigger.fire();
    let _ = daemon.await;
    for n in &mut nodes {
        if let Err(e) = n.sandbox.unmount() {
            eprintln!("dfleet demo: {e}");
        }
    }
    result
}

async fn show(
    args: &DemoArgs,
    dir: &Path,
    bound: &crate::daemon::Bound,
    target: &Target,
    nodes: &[DemoNode],
) -> Result<()> {
    println!(
        "dfleet demo: {} nodes, files in {}",
        nodes.len(),
        dir.display()
    );
    println!("waiting for every agent to enroll and report ready…");
    let mut c = client::connect(target).await?;
    let mut events = c
        .events(pb::EventsRequest {
            after_id: 0,
            follow: true,
            last: 0,
        })
        .await?
        .into_inner();
    let mut ready = std::collections::BTreeSet::new();
    while ready.len() < nodes.len() {
        let Some(e) = tokio::time::timeout(Duration::from_secs(120), events.message())
            .await
            .context(
                "the agents did not all become ready within two minutes; see the *.log files",
            )??
        else {
            bail!("the event stream ended");
        };
        let e = Event::try_from(e)?;
        if e.kind == EventKind::Ready {
            ready.insert(e.node);
        }
    }
    let resp = c.status(pb::StatusRequest::default()).await?.into_inner();
    println!(
        "\n$ dfleet status\n{}",
        crate::cli::status_table(&resp, false)?
    );
    let sock = bound.admin.display();
    println!("Try, in another terminal (as root):");
    println!("  dfleet --socket {sock} status");
    println!("  dfleet --socket {sock} node show cn02");
    println!("  dfleet --socket {sock} top");
    println!("  dfleet --socket {sock} events --follow");
    println!("  dfleet --socket {sock} status 'cn[01-04]' --json");
    if let Some(m) = bound.metrics {
        println!("  curl -s http://{m}/metrics | grep dfleet_node_overlay_used_bytes");
    }
    if let Some(last) = nodes.last() {
        println!(
            "{} ({}, {}) is filling its overlay with a growing log: watch its time-to-full fall in `dfleet top`.",
            last.name, last.mac, last.ip
        );
    }
    println!("Ctrl-C stops the demo and removes what it made.");
    if args.exit_when_ready {
        return Ok(());
    }
    // One node keeps writing to its upper layer, so growth and time-to-full
    // have something to show.
    let grower = nodes.last().map(|n| &n.sandbox);
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    let mut written = 0u64;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tick.tick() => {
                if let Some(s) = grower
                    && written < 192 << 20 {
                        written += 3 << 20;
                        if let Err(e) = s.grow_upper("/var/log/app/debug.log", written) {
                            tracing::warn!(error = %e, "growing the demo log");
                        }
                    }
            }
            e = events.message() => match e {
                Ok(Some(e)) => {
                    if let Ok(e) = Event::try_from(e)
                        && !matches!(e.kind, EventKind::Ready | EventKind::CertRenewed) {
                            println!("{}", crate::cli::event_line(&e));
                        }
                }
                _ => break,
            },
        }
    }
    println!("stopping");
    Ok(())
}

/// The agent's own settings for a sandboxed node: everything else comes from
/// its command line.
pub fn write_agent_config(root: &Path) -> Result<()> {
    let path = root.join("etc/dfleet/agent.toml");
    std::fs::create_dir_all(path.parent().context("a parent")?)?;
    std::fs::write(
        &path,
        "# A sandboxed node: the agent's settings come from its command line.\n",
    )
    .with_context(|| format!("writing {}", path.display()))
}
