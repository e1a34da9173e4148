//! `dfleet demo`: a coordinator and a fleet of real agent processes on this
//! machine, each agent on its own loopback address (127.0.100.N), enrolling
//! from a privileged port over mutual TLS, and reading a sandbox root that
//! looks like a diskless node (overlay root, tmpfs upper with real files, NFS
//! lower with a generation stamp, SSH host keys). Every number it shows comes
//! from those files.
//!
//! The demo also has a boot network on the nodes' loopback subnet and two
//! published generations of `compute`, so it can show a rolling reboot. The
//! coordinator renders its real boot files (DHCP configuration, per-node
//! pxelinux menus, kernels in the TFTP root, NFS exports) into the demo's
//! directory; nothing is sent anywhere. A node boots the generation its menu
//! names; its agent's reboot command ends the agent, as a reboot ends a real
//! one, and the node then boots again from its menu: a fresh sandbox (new
//! boot id, empty upper layer, per-boot host keys) and a new agent, which
//! enrolls again with a new key. The cross-process tests simulate rollouts
//! the same way (`dfleet_tests::SimNode`).

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use dfleet_agent::sandbox::{self, Sandbox, SandboxSpec};
use dfleet_proto::domain::{Event, EventKind, Generation, GenerationRef, MacAddr};
use dfleet_proto::pb;
use dfleet_proto::pb::admin_client::AdminClient;
use dfleet_provisioner::image::hygiene;
use dfleet_provisioner::image::manifest::Manifest;
use dfleet_provisioner::image::store::{GenState, ImageStore, Record};
use dfleet_provisioner::inventory::Inventory;
use dfleet_provisioner::nodeset;
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tonic::transport::Channel;

use crate::client::{self, Target};
use crate::fleet::tokio_util_shutdown::{self as shutdown, Shutdown};

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// How many nodes.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u8).range(1..=200))]
    pub nodes: u8,
    /// Keep the demo's files here instead of a temporary directory.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Stop by itself once every node is ready and the rollout onto
    /// compute:2 has completed and been printed (with --no-rollout: once
    /// every node is ready); for scripts and tests.
    #[arg(long)]
    pub exit_when_ready: bool,
    /// Boot the fleet on compute:1 and start no rollout.
    #[arg(long)]
    pub no_rollout: bool,
}

/// The image the demo publishes, and its two generations: the fleet boots
/// the first and rolls onto the second.
const IMAGE: &str = "compute";
const FIRST: u64 = 1;
const NEXT: u64 = 2;

/// `uname -r` of the demo's generations, and so of its nodes.
const KERNEL: &str = "6.1.0-28-amd64";

/// The management host of the demo's boot network (router, next server,
/// NFS server), on the nodes' loopback subnet. Its address is only data in
/// the rendered files: nothing is sent to it.
const SERVER: Ipv4Addr = Ipv4Addr::new(127, 0, 100, 254);

/// The agent's reboot command inside a node's sandbox.
const REBOOT_SCRIPT: &str = "usr/local/sbin/dfleet-demo-reboot";

/// The growing log of the last node: this much more every tick, up to the
/// most (within its 256 MiB upper layer).
const GROW_EVERY: Duration = Duration::from_secs(5);
const GROW_STEP: u64 = 3 << 20;
const GROW_MOST: u64 = 192 << 20;

/// Generation `n` of the demo's image.
fn generation(n: u64) -> GenerationRef {
    GenerationRef {
        image: IMAGE.to_string(),
        generation: Generation(n),
    }
}

/// A node of the demo, as its inventory entry has it. Its sandbox is built
/// anew, by [`spec_for`], at every boot.
#[derive(Debug, Clone)]
struct DemoNode {
    i: u8,
    name: String,
    mac: MacAddr,
    ip: Ipv4Addr,
}

impl DemoNode {
    fn new(i: u8) -> DemoNode {
        DemoNode {
            i,
            name: format!("cn{i:02}"),
            mac: MacAddr([0x52, 0x54, 0x00, 0xde, 0x00, i]),
            ip: Ipv4Addr::new(127, 0, 100, i),
        }
    }
}

/// What every boot of every node needs.
#[derive(Debug)]
struct Boots {
    /// The demo's directory: sandboxes under `nodes/`, agents' logs `NODE.log`.
    dir: PathBuf,
    agent_bin: PathBuf,
    /// Where agents reach the coordinator, and its CA certificate.
    grpc: String,
    ca: PathBuf,
    /// The TFTP root the coordinator writes menus and kernels into.
    tftp: PathBuf,
}

impl Boots {
    /// The node's sandbox: what its agent reads as `/`.
    fn root(&self, node: &DemoNode) -> PathBuf {
        self.dir.join("nodes").join(&node.name)
    }

    /// The agent's log, across the node's boots.
    fn log(&self, node: &DemoNode) -> PathBuf {
        self.dir.join(format!("{}.log", node.name))
    }

    /// The node's own pxelinux menu, as PXE firmware would fetch it.
    fn menu(&self, node: &DemoNode) -> PathBuf {
        self.tftp
            .join("pxelinux.cfg")
            .join(node.mac.pxelinux_form())
    }
}

/// How the node's sandbox looks when it boots `image`. The same at every
/// boot, so a node keeps its character across reboots.
fn spec_for(node: &DemoNode, image: &GenerationRef, coordinator: &str) -> SandboxSpec {
    let i = node.i;
    let mut spec = SandboxSpec::new(&node.name, node.mac, node.ip);
    spec.image = image.clone();
    spec.kernel = KERNEL.to_string();
    spec.nfs_server = SERVER.to_string();
    spec.coordinator = coordinator.to_string();
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
    // A real tmpfs, so the overlay's size and free space are a node's RAM
    // upper layer's (the demo runs as root).
    spec.tmpfs_bytes = Some(256 * mib);
    spec
}

/// The coordinator's listeners, once bound.
#[derive(Debug, Clone, Copy)]
struct Ports {
    grpc: SocketAddr,
    metrics: SocketAddr,
}

/// The demo's inventory: the nodes, and a boot network on their loopback
/// subnet whose files land in `dir`. Its reload commands are `true`: no DHCP
/// or NFS server runs, the rendered files are what the nodes boot from.
/// pxelinux is the one loader, so only its packages are needed. Without
/// `ports`, the kernel chooses them (port 0); with them, the inventory names
/// where the coordinator listens, which the menus then give the nodes.
fn inventory_toml(dir: &Path, nodes: &[DemoNode], ports: Option<Ports>) -> String {
    let (grpc, metrics) = ports.map_or(("127.0.0.1:0".into(), "127.0.0.1:0".into()), |p| {
        (p.grpc.to_string(), p.metrics.to_string())
    });
    let coordinator = ports.map_or(String::new(), |p| format!("coordinator = \"{}\"\n", p.grpc));
    let mut toml = format!(
        r#"# The demo's inventory, written by `dfleet demo`.
[cluster]
name = "demo"
state_dir = "{state}"
listen = ["{grpc}"]
metrics_listen = "{metrics}"
admin_socket = "{sock}"
report_interval = "5s"

[health]
stale_after = "20s"
lost_after = "60s"
overlay_used_warn_percent = 30

# Nothing serves DHCP, TFTP or NFS here: the coordinator renders the files,
# and each demo node boots what its pxelinux menu names.
[boot]
interface = "lo"
subnet = "127.0.100.0/24"
router = "{server}"
dns = ["{server}"]
domain = "demo.example"
next_server = "{server}"
dhcp = "dnsmasq"
dhcp_reload = ["true"]
loader = "pxelinux"
{coordinator}
[nfs]
server = "{server}"
export_root = "{images}"
reload = ["true"]

[paths]
tftp_root = "{tftp}"
dhcp_root = "{dhcp}"
exports_root = "{exports}"
images_root = "{images}"
"#,
        state = dir.join("state").display(),
        sock = dir.join("admin.sock").display(),
        server = SERVER,
        tftp = dir.join("tftp").display(),
        dhcp = dir.join("dhcp").display(),
        exports = dir.join("exports").display(),
        images = dir.join("images").display(),
    );
    for n in nodes {
        toml.push_str(&format!(
            "\n[[nodes]]\nname = \"{}\"\nmac = \"{}\"\nip = \"{}\"\nimage = \"{IMAGE}\"\ngroups = [\"compute\", \"rack{}\"]\n",
            n.name,
            n.mac,
            n.ip,
            1 + (n.i - 1) / 4
        ));
    }
    toml
}

/// Publishes `g` in the image store as `dfleet image publish` leaves a
/// generation, through the store's own code: a tree with its generation
/// stamp, the kernel and initramfs copied next to it with their hashes, a
/// manifest and a published record. The tree is a skeleton, and the kernel
/// and initramfs are small synthetic files (no system boots them: the demo's
/// nodes are sandboxes), but everything the boot network renders from them
/// — menus, copies in the TFTP root, exports — is real. Unlike publish, the
/// tree is not made immutable, so the demo's directory can be removed.
fn publish(store: &ImageStore, g: &GenerationRef) -> Result<String> {
    let _lock = store.lock(&g.image)?;
    let tree = store.tree(g);
    let os_release = tree.join("etc/os-release");
    std::fs::create_dir_all(tree.join("boot"))
        .and_then(|()| std::fs::create_dir_all(tree.join("etc")))
        .with_context(|| format!("creating the tree of {g} in {}", tree.display()))?;
    std::fs::write(
        &os_release,
        "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nID=debian\n",
    )
    .with_context(|| format!("writing {}", os_release.display()))?;
    hygiene::write_stamp(&tree, g)?;
    // Synthetic bytes, different for every generation.
    let kernel = tree.join(format!("boot/vmlinuz-{KERNEL}"));
    let bytes: Vec<u8> = (0..256 * 1024u32)
        .map(|i| (i.wrapping_mul(31).wrapping_add(g.generation.0 as u32) % 251) as u8)
        .collect();
    std::fs::write(&kernel, &bytes).with_context(|| format!("writing {}", kernel.display()))?;
    let scratch = tempfile::tempdir_in(store.image_dir(&g.image))
        .with_context(|| format!("a scratch directory in {}", store.root().display()))?;
    let initrd = scratch.path().join("initrd.img");
    std::fs::write(
        &initrd,
        format!("synthetic initramfs of {g}, made by dfleet demo\n"),
    )
    .with_context(|| format!("writing {}", initrd.display()))?;
    let boot = store.install_boot_files(g, KERNEL, &kernel, &initrd)?;
    let manifest = Manifest::build(&tree)?;
    manifest.write(&store.manifest_path(g))?;
    let now = jiff::Timestamp::now().as_millisecond().max(0) as u64;
    let mut record = Record::new(g, GenState::Published, "dfleet demo (synthetic)", now);
    record.published_ms = Some(now);
    record.digest = Some(manifest.digest());
    record.size_bytes = Some(manifest.total_bytes());
    record.boot = Some(boot);
    store.write_record(&record)?;
    Ok(format!(
        "{g} is published: kernel {KERNEL}, {} in {} entries, digest {}…",
        crate::cli::human_bytes(manifest.total_bytes()),
        manifest.entries().len(),
        &manifest.digest()[..12]
    ))
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
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            d.clone()
        }
        None => {
            temp = tempfile::Builder::new().prefix("dfleet-demo.").tempdir()?;
            temp.path().to_path_buf()
        }
    };
    // The nodes of a new demo boot and enroll afresh, which the state of an
    // earlier one (their certificates, its rollouts) would refuse.
    if dir.join("state").exists() {
        bail!(
            "{} holds an earlier demo (its state/ directory): remove it or give another --dir",
            dir.display()
        );
    }
    println!(
        "dfleet demo: {} nodes, files in {}",
        args.nodes,
        dir.display()
    );
    let store = ImageStore::new(dir.join("images"));
    for g in [FIRST, NEXT] {
        println!("{}", publish(&store, &generation(g))?);
    }
    let nodes: Vec<DemoNode> = (1..=args.nodes).map(DemoNode::new).collect();
    let config = dir.join("cluster.toml");
    let inventory = |ports| -> Result<Inventory> {
        std::fs::write(&config, inventory_toml(&dir, &nodes, ports))
            .with_context(|| format!("writing {}", config.display()))?;
        Inventory::load(&config).map_err(|e| anyhow::anyhow!("{e}"))
    };
    let listeners = crate::daemon::bind(&inventory(None)?).await?;
    // Bound on ports the kernel chose; the inventory the coordinator runs
    // with names them, so a reload reads what runs.
    let local = |l: Option<&tokio::net::TcpListener>| {
        l.context("a listener")?
            .local_addr()
            .context("a listener's address")
    };
    let inv = inventory(Some(Ports {
        grpc: local(listeners.grpc.first())?,
        metrics: local(listeners.metrics.as_ref())?,
    }))?;
    let (trigger, daemon_shutdown) = shutdown::channel();
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
    let daemon = tokio::spawn(crate::daemon::run(
        inv,
        listeners,
        daemon_shutdown,
        move |b| {
            let _ = bound_tx.send(b.clone());
        },
    ));
    let bound = bound_rx.await.context("the coordinator did not start")?;
    let boots = Arc::new(Boots {
        dir: dir.clone(),
        agent_bin,
        grpc: bound.grpc.first().context("no gRPC listener")?.to_string(),
        ca: dir.join("state/ca.pem"),
        tftp: dir.join("tftp"),
    });

    // The nodes run in tasks of their own until `stop` fires; Ctrl-C at any
    // point stops the demo and cleans up.
    let (stop_trigger, stop) = shutdown::channel();
    let (grow, grow_rx) = watch::channel(false);
    let mut fleet = JoinSet::new();
    let shown = Shown {
        args: &args,
        dir: &dir,
        bound: &bound,
        nodes: &nodes,
    };
    let result = tokio::select! {
        r = shown.run(&boots, &mut fleet, &stop, &grow, grow_rx) => r,
        _ = tokio::signal::ctrl_c() => Ok(()),
    };
    println!("stopping");
    stop_trigger.fire();
    while let Some(ended) = fleet.join_next().await {
        match ended {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("dfleet demo: {e:#}"),
            Err(e) => eprintln!("dfleet demo: a node's task: {e}"),
        }
    }
    trigger.fire();
    let _ = daemon.await;
    result
}

/// What the demo shows, and how.
struct Shown<'a> {
    args: &'a DemoArgs,
    dir: &'a Path,
    bound: &'a crate::daemon::Bound,
    nodes: &'a [DemoNode],
}

type Events = tonic::Streaming<pb::Event>;

impl Shown<'_> {
    async fn run(
        &self,
        boots: &Arc<Boots>,
        fleet: &mut JoinSet<Result<()>>,
        stop: &Shutdown,
        grow: &watch::Sender<bool>,
        grow_rx: watch::Receiver<bool>,
    ) -> Result<()> {
        let target = Target::Socket(self.bound.admin.clone());
        let mut c = client::connect(&target).await?;
        let mut events = c
            .events(pb::EventsRequest {
                after_id: 0,
                follow: true,
                last: 0,
            })
            .await?
            .into_inner();

        // Through the admin API, as `dfleet node assign` does: the
        // coordinator records the assignment and writes every node's menu.
        let names: Vec<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
        let all = nodeset::fold(&names);
        let first = generation(FIRST);
        println!("\n$ dfleet node assign {all} {first}");
        let detail = c
            .assign(pb::AssignRequest {
                nodeset: all.clone(),
                target: Some(first.into()),
            })
            .await
            .map_err(status_err)?
            .into_inner()
            .detail;
        println!("{detail}");
        if detail.contains("boot files not written") {
            bail!("the demo's nodes boot from the menus the coordinator writes, and it wrote none");
        }

        let last = self.nodes.last().map(|n| n.i);
        for n in self.nodes {
            let grows = (Some(n.i) == last).then(|| grow_rx.clone());
            fleet.spawn(run_node(n.clone(), boots.clone(), stop.clone(), grows));
        }
        println!("waiting for every agent to enroll and report ready…");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        let mut ready = std::collections::BTreeSet::new();
        while ready.len() < self.nodes.len() {
            let e = tokio::time::timeout_at(deadline, next_event(&mut events, fleet))
                .await
                .with_context(|| {
                    format!(
                        "the agents did not all become ready within two minutes; {}",
                        self.logs()
                    )
                })??;
            if e.kind == EventKind::Ready {
                ready.insert(e.node);
            }
        }
        self.print_status(&mut c).await?;

        if !self.args.no_rollout {
            self.rollout(&mut events, fleet).await?;
            self.print_status(&mut c).await?;
        }
        self.print_hints();
        if self.args.exit_when_ready {
            return Ok(());
        }
        // The last node keeps writing to its upper layer, so growth and
        // time-to-full have something to show.
        let _ = grow.send(true);
        loop {
            tokio::select! {
                e = events.message() => {
                    let e = e.map_err(status_err)?.context("the event stream ended")?;
                    let e = Event::try_from(e)?;
                    if !matches!(e.kind, EventKind::Ready | EventKind::CertRenewed) {
                        println!("{}", crate::cli::event_line(&e));
                    }
                }
                // A node that cannot boot again is shown; the rest go on.
                Some(ended) = fleet.join_next() => {
                    eprintln!("dfleet demo: {:#}", node_ended(ended));
                }
            }
        }
    }

    /// Where to look when nodes do not do what they should.
    fn logs(&self) -> String {
        format!(
            "each agent's log is {}/NODE.log (kept with --dir)",
            self.dir.display()
        )
    }

    async fn print_status(&self, c: &mut AdminClient<Channel>) -> Result<()> {
        let resp = c
            .status(pb::StatusRequest::default())
            .await
            .map_err(status_err)?
            .into_inner();
        println!(
            "\n$ dfleet status\n{}",
            crate::cli::status_table(&resp, false)?
        );
        Ok(())
    }

    /// Rolls every node onto the next generation with the real command,
    /// prints the rollout's events until it completes, then its status.
    async fn rollout(&self, events: &mut Events, fleet: &mut JoinSet<Result<()>>) -> Result<()> {
        let args = rollout_args(self.nodes.len());
        self.cli(&args.iter().map(String::as_str).collect::<Vec<_>>())
            .await?;
        // Each wave of nodes takes seconds; this only bounds a stuck one.
        let limit = Duration::from_secs(180 + 10 * self.nodes.len() as u64);
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let e = tokio::time::timeout_at(deadline, next_event(events, fleet))
                .await
                .with_context(|| {
                    format!(
                        "the rollout did not end within {}s; {}",
                        limit.as_secs(),
                        self.logs()
                    )
                })??;
            if matches!(
                e.kind,
                EventKind::Rollout
                    | EventKind::RolloutStep
                    | EventKind::RebootOrdered
                    | EventKind::Enrolled
            ) {
                println!("{}", crate::cli::event_line(&e));
            }
            if e.kind != EventKind::Rollout {
                continue;
            }
            match rollout_state(&e.detail) {
                Some("completed") => break,
                Some(s @ ("paused" | "aborted")) => {
                    self.cli(&["rollout", "status"]).await?;
                    bail!(
                        "the demo's rollout is {s}, not completed (above); {}",
                        self.logs()
                    );
                }
                _ => {}
            }
        }
        self.cli(&["rollout", "status"]).await
    }

    /// Runs a `dfleet rollout` command as the CLI does, in this process,
    /// after printing it.
    async fn cli(&self, args: &[&str]) -> Result<()> {
        println!("\n$ dfleet {}", args.join(" "));
        let argv = ["dfleet", "--socket"]
            .into_iter()
            .map(String::from)
            .chain([self.bound.admin.display().to_string()])
            .chain(args.iter().map(|a| a.to_string()));
        let cli = crate::cli::Cli::try_parse_from(argv)?;
        match &cli.command {
            crate::cli::Command::Rollout { command } => {
                crate::rollout::cli::rollout(&cli, command).await
            }
            _ => bail!("the demo runs only rollout commands itself"),
        }
    }

    fn print_hints(&self) {
        let sock = self.bound.admin.display();
        let node = |i: usize| {
            self.nodes
                .get(i - 1)
                .or(self.nodes.last())
                .map_or("cn01", |n| n.name.as_str())
        };
        println!("Try, in another terminal (as root):");
        println!("  dfleet --socket {sock} status");
        println!("  dfleet --socket {sock} node show {}", node(2));
        println!("  dfleet --socket {sock} top");
        println!("  dfleet --socket {sock} events --follow");
        if self.args.no_rollout {
            println!(
                "  dfleet --socket {sock} rollout start {} --canary 1 --batch 4",
                generation(NEXT)
            );
        } else {
            println!(
                "  dfleet --socket {sock} rollout start {} --batch 4    # roll back",
                generation(FIRST)
            );
        }
        println!("  dfleet --socket {sock} rollout status");
        println!(
            "  dfleet --socket {sock} node reboot {}    # back on the generation it is assigned",
            node(3)
        );
        println!("  dfleet --socket {sock} status 'cn[01-04]' --json");
        if let Some(m) = self.bound.metrics {
            println!("  curl -s http://{m}/metrics | grep dfleet_node_overlay_used_bytes");
        }
        if let Some(last) = self.nodes.last() {
            println!(
                "{} ({}, {}) is filling its overlay with a growing log: watch its time-to-full fall in `dfleet top`.",
                last.name, last.mac, last.ip
            );
        }
        if !self.args.exit_when_ready {
            println!("Ctrl-C stops the demo and removes what it made.");
        }
    }
}

/// The demo's rollout: everything onto the next generation, one canary,
/// then batches (three nodes, or an eighth of a larger fleet), as many out
/// of service at once.
fn rollout_args(nodes: usize) -> Vec<String> {
    let batch = (nodes / 8).max(3).to_string();
    [
        "rollout",
        "start",
        &generation(NEXT).to_string(),
        "--canary",
        "1",
        "--batch",
        &batch,
        "--max-unavailable",
        &batch,
    ]
    .map(String::from)
    .to_vec()
}

/// The state a rollout event reports, from its detail
/// (`rollout 1 (onto compute:2): completed`); `None` for its start.
fn rollout_state(detail: &str) -> Option<&str> {
    let rest = detail.strip_prefix("rollout ")?;
    let (_, state) = rest.split_once("): ")?;
    state.split_whitespace().next()
}

fn status_err(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", s.message())
}

/// The next event; or the error of a node whose task ended, since a node
/// runs until the demo stops.
async fn next_event(events: &mut Events, fleet: &mut JoinSet<Result<()>>) -> Result<Event> {
    tokio::select! {
        e = events.message() => {
            let e = e.map_err(status_err)?.context("the event stream ended")?;
            Ok(Event::try_from(e)?)
        }
        Some(ended) = fleet.join_next() => Err(node_ended(ended)),
    }
}

/// Why a node's task ended before the demo stopped it.
fn node_ended(ended: Result<Result<()>, tokio::task::JoinError>) -> anyhow::Error {
    match ended {
        Ok(Ok(())) => anyhow::anyhow!("a node stopped"),
        Ok(Err(e)) => e,
        Err(e) => anyhow::anyhow!("a node's task: {e}"),
    }
}

/// What a pxelinux menu boots.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MenuEntry {
    generation: GenerationRef,
    /// Paths in the TFTP root.
    kernel: String,
    initrd: String,
}

/// Reads the boot entry of a per-node pxelinux menu: its KERNEL and INITRD
/// lines and the `dfleet.generation=` the coordinator puts on its command line.
fn menu_entry(text: &str) -> Result<MenuEntry> {
    let line = |key: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(key)?.strip_prefix(' '))
            .map(|v| v.trim().to_string())
            .with_context(|| format!("no {key} line"))
    };
    let generation = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix("dfleet.generation="))
        .context("no dfleet.generation= on its command line")?;
    Ok(MenuEntry {
        generation: generation.parse()?,
        kernel: line("KERNEL")?,
        initrd: line("INITRD")?,
    })
}

/// One node for the life of the demo: it boots what its menu names and runs
/// its agent; when the agent ends (its reboot command ends it, as a reboot
/// would), the node boots again, until `stop` fires. With `grow`, once that
/// says so, it keeps writing a log into its upper layer.
async fn run_node(
    node: DemoNode,
    boots: Arc<Boots>,
    mut stop: Shutdown,
    grow: Option<watch::Receiver<bool>>,
) -> Result<()> {
    let mut boot = 0u32;
    loop {
        boot += 1;
        let menu = boots.menu(&node);
        let text = tokio::fs::read_to_string(&menu)
            .await
            .with_context(|| format!("{} boots from its menu {}", node.name, menu.display()))?;
        let entry = menu_entry(&text).with_context(|| format!("reading {}", menu.display()))?;
        for file in [&entry.kernel, &entry.initrd] {
            let path = boots.tftp.join(file);
            if !path.is_file() {
                bail!(
                    "{}'s menu {} names {}, which is missing",
                    node.name,
                    menu.display(),
                    path.display()
                );
            }
        }
        let sandbox = build_sandbox(&node, &boots, &entry.generation).await?;
        let mut agent = start_agent(&node, &boots, &sandbox, boot, &entry.generation)?;
        let stopped = run_boot(
            &node,
            &boots,
            &mut agent,
            &sandbox,
            &mut stop,
            grow.as_ref(),
        )
        .await;
        if matches!(stopped, Ok(true) | Err(_)) {
            let _ = agent.kill().await;
        }
        // The next boot mounts a fresh tmpfs: this one goes first, or the
        // new one would be mounted over it.
        let root = sandbox.dir().to_path_buf();
        tokio::task::spawn_blocking(move || {
            let mut sandbox = sandbox;
            sandbox.unmount()
        })
        .await?
        .with_context(|| {
            format!(
                "{} reboots: unmounting its sandbox in {}",
                node.name,
                root.display()
            )
        })?;
        if stopped? {
            return Ok(());
        }
    }
}

/// The node's sandbox booted on `image`: its last boot's agent credentials
/// are gone (RAM), the upper layer is a fresh tmpfs, the boot id and host
/// keys are new; the agent's reboot command ends the agent.
async fn build_sandbox(node: &DemoNode, boots: &Boots, image: &GenerationRef) -> Result<Sandbox> {
    let root = boots.root(node);
    let spec = spec_for(node, image, &boots.grpc);
    let name = node.name.clone();
    let what = format!("booting {name} on {image} in {}", root.display());
    tokio::task::spawn_blocking(move || -> Result<Sandbox> {
        let state = root.join("run/dfleet-agent");
        match std::fs::remove_dir_all(&state) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", state.display())),
        }
        let sandbox = sandbox::build(&root, &spec)?;
        let script = root.join(REBOOT_SCRIPT);
        write_file(
            &script,
            "#!/bin/sh\n# dfleet demo: a simulated reboot. The agent (this script's parent) ends,\n# and the demo boots the node again from its pxelinux menu.\nkill -TERM \"$PPID\"\n",
        )?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("making {} executable", script.display()))?;
        write_file(
            &root.join("etc/dfleet/agent.toml"),
            "# A sandboxed node: the agent's settings come from its command line,\n\
             # and its reboot ends it (see the script).\n\
             reboot_command = [\"dfleet-demo-reboot\"]\n",
        )?;
        Ok(sandbox)
    })
    .await?
    .context(what)
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    std::fs::create_dir_all(path.parent().context("a parent")?)
        .and_then(|()| std::fs::write(path, text))
        .with_context(|| format!("writing {}", path.display()))
}

/// Starts the node's agent; its log goes on in `NODE.log` across boots.
fn start_agent(
    node: &DemoNode,
    boots: &Boots,
    sandbox: &Sandbox,
    boot: u32,
    image: &GenerationRef,
) -> Result<Child> {
    use std::io::Write as _;
    let root = sandbox.dir();
    let log_path = boots.log(node);
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    writeln!(log, "dfleet demo: {} boot {boot}: {image}", node.name)
        .with_context(|| format!("writing {}", log_path.display()))?;
    Command::new(&boots.agent_bin)
        .arg("--config")
        .arg(root.join("etc/dfleet/agent.toml"))
        .arg("--root")
        .arg(root)
        .arg("--coordinator")
        .arg(&boots.grpc)
        .arg("--ca")
        .arg(&boots.ca)
        .arg("--state-dir")
        .arg(root.join("run/dfleet-agent"))
        .arg("--bind")
        .arg(node.ip.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        // Its own process group: Ctrl-C in the terminal reaches the demo,
        // which stops the agents itself, not a node that would "reboot".
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting the agent of {}", node.name))
}

/// Runs one boot of the node until its agent ends (`false`: it rebooted)
/// or the demo stops (`true`).
async fn run_boot(
    node: &DemoNode,
    boots: &Boots,
    agent: &mut Child,
    sandbox: &Sandbox,
    stop: &mut Shutdown,
    grow: Option<&watch::Receiver<bool>>,
) -> Result<bool> {
    let mut tick = tokio::time::interval(GROW_EVERY);
    // A reboot empties the upper layer: the log starts again.
    let mut written = 0u64;
    loop {
        tokio::select! {
            status = agent.wait() => {
                let status = status.with_context(|| format!("waiting for {}'s agent", node.name))?;
                // The reboot command's SIGTERM ends the agent cleanly; a
                // failure of its own would only fail again.
                if status.success() || status.signal().is_some() {
                    return Ok(false);
                }
                bail!("{}'s agent failed ({status}): see {}", node.name, boots.log(node).display());
            }
            () = stop.wait() => return Ok(true),
            _ = tick.tick(), if grow.is_some() => {
                if grow.is_some_and(|g| *g.borrow()) && written < GROW_MOST {
                    written += GROW_STEP;
                    let grown = tokio::task::block_in_place(|| {
                        sandbox.grow_upper("/var/log/app/debug.log", written)
                    });
                    if let Err(e) = grown {
                        tracing::warn!(error = %e, "growing the demo log");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_menu_names_what_it_boots() {
        let text = "# generated by dfleet — do not edit\n# Node cn01 boots compute:2.\nDEFAULT dfleet\nPROMPT 0\nLABEL dfleet\n  KERNEL dfleet/compute/2/vmlinuz\n  INITRD dfleet/compute/2/initrd.img\n  APPEND root=nfs:127.0.100.254:/x/compute/2,vers=3 ip=dhcp dfleet.coordinator=127.0.0.1:0 dfleet.generation=compute:2\n  IPAPPEND 2\n";
        assert_eq!(
            menu_entry(text).unwrap(),
            MenuEntry {
                generation: generation(2),
                kernel: "dfleet/compute/2/vmlinuz".into(),
                initrd: "dfleet/compute/2/initrd.img".into(),
            }
        );
        let e = menu_entry("DEFAULT local\n").unwrap_err();
        assert!(e.to_string().contains("dfleet.generation="), "{e}");
    }

    #[test]
    fn rollout_events_say_their_state() {
        assert_eq!(
            rollout_state("rollout 1 (onto compute:2): completed"),
            Some("completed")
        );
        assert_eq!(
            rollout_state(
                "rollout 3 (onto compute:2): paused (1 nodes failed, more than --max-failures 0)"
            ),
            Some("paused")
        );
        assert_eq!(
            rollout_state("started rollout 1 (onto compute:2): 8 nodes (0 skipped), canary 1"),
            None
        );
    }

    #[test]
    fn the_rollout_takes_bigger_batches_on_bigger_fleets() {
        let batch = |n| rollout_args(n)[6].clone();
        assert_eq!(
            [batch(1), batch(8), batch(31), batch(200)],
            ["3", "3", "3", "25"]
        );
        assert_eq!(rollout_args(8)[..3], ["rollout", "start", "compute:2"]);
    }
}
