//! The `dfleet` command line: `serve` runs the daemon, `demo` a local demo
//! fleet, and the rest are admin commands that talk to a running daemon.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use dfleet_proto::convert::node_state;
use dfleet_proto::domain::{Event, KeyOrigin, NodeState, Report};
use dfleet_proto::pb;
use dfleet_provisioner::inventory::Inventory;

use crate::client::{self, Target};

#[derive(Debug, Parser)]
#[command(
    name = "dfleet",
    version,
    about = "Run a diskless Linux cluster from one coordinator"
)]
pub struct Cli {
    /// The daemon's admin socket.
    #[arg(
        long,
        global = true,
        env = "DFLEET_SOCKET",
        default_value = "/run/dfleet/admin.sock"
    )]
    pub socket: PathBuf,
    /// Reach a remote daemon over mutual TLS instead (`host:port`); needs
    /// --cert, --key and --ca from `dfleet admin cert issue`.
    #[arg(long, global = true, env = "DFLEET_REMOTE")]
    pub remote: Option<String>,
    #[arg(long, global = true, requires = "remote")]
    pub cert: Option<PathBuf>,
    #[arg(long, global = true, requires = "remote")]
    pub key: Option<PathBuf>,
    #[arg(long, global = true, requires = "remote")]
    pub ca: Option<PathBuf>,
    /// The name in the coordinator's server certificate.
    #[arg(long, global = true, default_value = "dfleet-coordinator")]
    pub server_name: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the coordinator daemon.
    Serve {
        #[arg(long, short, default_value = "/etc/dfleet/cluster.toml")]
        config: PathBuf,
    },
    /// Run a local demo fleet: a coordinator and agents on sandboxed nodes.
    Demo(crate::demo::DemoArgs),
    /// Write a backup of the running coordinator to FILE (mode 0600): its
    /// store, the cluster CA and the SSH host CA with the managed host keys.
    Backup { file: PathBuf },
    /// Restore a backup into the state directory of a stopped coordinator;
    /// the directory must not hold a store or CA yet.
    Restore {
        file: PathBuf,
        #[arg(long, short, default_value = "/etc/dfleet/cluster.toml")]
        config: PathBuf,
    },
    /// Check a cluster.toml and print what it describes, without a daemon.
    Check {
        #[arg(long, short, default_value = "/etc/dfleet/cluster.toml")]
        config: PathBuf,
    },
    /// The fleet at a glance: state, generation, overlay RAM, host keys, failing checks.
    Status {
        /// Node set, e.g. `cn[0001-0016],login1`; all nodes when absent.
        nodeset: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Expand, fold or count a node set (`cn[01-04]`, `@group`,
    /// `@state:ready`, `@gen:IMAGE:GEN`, joined with , ! & ^).
    Nodeset(crate::nodesets::NodeSetArgs),
    /// Commands about single nodes.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// The event log.
    Events {
        /// Keep printing new events as they happen.
        #[arg(long, short)]
        follow: bool,
        #[arg(long)]
        json: bool,
        /// Start this many events back.
        #[arg(long, default_value_t = 50)]
        last: u32,
    },
    /// Run a command on every node of a set over the agents' streams.
    Exec(crate::exec::cli::ExecArgs),
    /// SSH host keys: the fleet's known_hosts, the SSH host CA, rotation.
    Ssh {
        #[command(subcommand)]
        command: crate::ssh::cli::SshCommand,
    },
    /// What administrators did: every event with a person behind it (exec,
    /// assign, approve, rollouts, reload…), with who and when.
    Audit {
        /// Only events since this long ago ("1h", "7d") or since a UTC time
        /// as the lines print it ("2026-11-26 06:00:00", "2026-11-26").
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// A live view of the fleet, fullest overlay first.
    Top {
        /// Refresh interval in seconds.
        #[arg(long, default_value_t = 2)]
        interval: u64,
        /// Print one screen and exit.
        #[arg(long)]
        once: bool,
    },
    /// Re-read cluster.toml without a restart (like SIGHUP).
    Reload,
    /// Image generations: edit, run commands inside, verify, list (on the
    /// management host, as root, next to the image store).
    Image {
        #[arg(long, short, default_value = "/etc/dfleet/cluster.toml")]
        config: PathBuf,
        #[command(subcommand)]
        command: crate::images::ImageCommand,
    },
    /// A real diskless cluster on this machine: a network namespace with the
    /// coordinator, DHCP/TFTP, an NFS server and QEMU nodes booting over it.
    Lab {
        #[command(subcommand)]
        command: crate::lab::LabCommand,
    },
    /// Boot files: DHCP configuration, boot menus, NFS exports.
    Pxe {
        #[command(subcommand)]
        command: PxeCommand,
    },
    /// Rolling reboots onto a new image generation.
    Rollout {
        #[command(subcommand)]
        command: crate::rollout::cli::RolloutCommand,
    },
    /// The switch that stops every new reboot at once.
    Reboots {
        #[command(subcommand)]
        command: crate::rollout::cli::RebootsCommand,
    },
    /// Administrator credentials.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Every fact about one node, including the largest paths in its overlay.
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Enrollments waiting for approval and machines the inventory does not know.
    Pending {
        #[arg(long)]
        json: bool,
    },
    /// Approve a node's pending enrollment (policy `manual`).
    Approve { name: String },
    /// Allow one new enrollment of a node that already enrolled at this boot.
    Rearm { name: String },
    /// Set the generation nodes boot next (IMAGE:GEN); their menus follow.
    Assign { nodeset: String, generation: String },
    /// Reboot nodes through the rollout machinery (drain, batches, windows,
    /// health gates), each back on the generation it is assigned.
    Reboot(Box<crate::rollout::cli::RebootArgs>),
}

#[derive(Debug, Subcommand)]
pub enum PxeCommand {
    /// Write the boot files as the daemon would into DIR (a dry run).
    Render {
        #[arg(long)]
        out: PathBuf,
    },
    /// What `pxe apply` would change.
    Diff,
    /// Check the staged DHCP configuration with the real daemon, then write
    /// the boot files atomically.
    Apply,
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Admin certificates for remote use.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Issue a certificate for USER (over the local socket only). Writes
    /// USER.crt, USER.key (0600) and ca.crt into --out.
    Issue {
        user: String,
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
}

impl Cli {
    pub(crate) fn target(&self) -> Result<Target> {
        match &self.remote {
            None => Ok(Target::Socket(self.socket.clone())),
            Some(addr) => {
                let (Some(cert), Some(key), Some(ca)) = (&self.cert, &self.key, &self.ca) else {
                    bail!("--remote needs --cert, --key and --ca");
                };
                Ok(Target::Remote {
                    addr: addr.clone(),
                    cert: cert.clone(),
                    key: key.clone(),
                    ca: ca.clone(),
                    server_name: self.server_name.clone(),
                })
            }
        }
    }
}

pub async fn run(cli: Cli) -> Result<()> {
    match &cli.command {
        Command::Serve { config } => serve(config).await,
        Command::Demo(args) => crate::demo::run(args.clone()).await,
        Command::Backup { file } => backup(&cli, file).await,
        Command::Restore { file, config } => restore(file, config),
        Command::Check { config } => {
            let inv = Inventory::load(config).map_err(|e| anyhow::anyhow!("{e}"))?;
            println!(
                "{}: cluster {:?}, {} nodes, state in {}, listening on {:?}",
                config.display(),
                inv.cluster.name,
                inv.nodes.len(),
                inv.cluster.state_dir.display(),
                inv.cluster.listen
            );
            Ok(())
        }
        Command::Status { nodeset, json } => {
            let mut c = client::connect(&cli.target()?).await?;
            let resp = c
                .status(pb::StatusRequest {
                    nodeset: nodeset.clone().unwrap_or_default(),
                })
                .await
                .map_err(status_err)?
                .into_inner();
            if *json {
                write_status_json(&resp)?;
            } else {
                print!("{}", status_table(&resp, false)?);
                if !resp.store_problem.is_empty() {
                    eprintln!("dfleet status: warning: {}", resp.store_problem);
                }
            }
            Ok(())
        }
        Command::Node { command } => node(&cli, command).await,
        Command::Events { follow, json, last } => events(&cli, *follow, *json, *last).await,
        Command::Top { interval, once } => top(&cli, *interval, *once).await,
        Command::Pxe { command } => pxe(&cli, command).await,
        Command::Nodeset(args) => crate::nodesets::run(&cli, args).await,
        Command::Exec(args) => crate::exec::cli::run(&cli, args).await,
        Command::Ssh { command } => crate::ssh::cli::run(&cli, command).await,
        Command::Audit { since, json } => crate::audit::run(&cli, since.as_deref(), *json).await,
        Command::Rollout { command } => crate::rollout::cli::rollout(&cli, command).await,
        Command::Reboots { command } => crate::rollout::cli::reboots(&cli, command).await,
        // main runs these before the runtime starts (they need their exit
        // code and no threads).
        Command::Image { .. } => bail!("image commands run outside the runtime"),
        Command::Lab { .. } => bail!("lab commands run outside the runtime"),
        Command::Reload => {
            let mut c = client::connect(&cli.target()?).await?;
            let r = c
                .reload(pb::ReloadRequest {})
                .await
                .map_err(status_err)?
                .into_inner();
            println!("{}", r.detail);
            Ok(())
        }
        Command::Admin {
            command:
                AdminCommand::Cert {
                    command: CertCommand::Issue { user, out },
                },
        } => issue_admin_cert(&cli, user, out).await,
    }
}

/// `dfleet backup FILE`: the archive goes to a temporary file beside FILE,
/// which replaces FILE only once the whole archive is written and synced.
async fn backup(cli: &Cli, file: &std::path::Path) -> Result<()> {
    use std::io::Write;
    let dir = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    // Made with mode 0600: the archive holds the CAs' private keys.
    let mut tmp = tempfile::Builder::new()
        .prefix(".dfleet-backup-")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    let mut c = client::connect(&cli.target()?).await?;
    let mut stream = c
        .backup(pb::BackupRequest {})
        .await
        .map_err(status_err)?
        .into_inner();
    let mut summary = String::new();
    while let Some(chunk) = stream.message().await.map_err(status_err)? {
        tmp.write_all(&chunk.data)
            .with_context(|| format!("writing {}", tmp.path().display()))?;
        if !chunk.summary.is_empty() {
            summary = chunk.summary;
        }
    }
    if summary.is_empty() {
        bail!("the backup stream ended before the archive was complete; nothing written");
    }
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("syncing {}", tmp.path().display()))?;
    tmp.persist(file)
        .with_context(|| format!("moving the backup into place at {}", file.display()))?;
    println!("{}: {summary}", file.display());
    Ok(())
}

/// `dfleet restore FILE`: into the configuration's state directory, with the
/// coordinator stopped.
fn restore(file: &std::path::Path, config: &std::path::Path) -> Result<()> {
    let inv = Inventory::load(config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let socket = &inv.cluster.admin_socket;
    if std::os::unix::net::UnixStream::connect(socket).is_ok() {
        bail!(
            "a coordinator answers on {}: stop it before restoring (systemctl stop dfleet)",
            socket.display()
        );
    }
    let state = &inv.cluster.state_dir;
    let r = crate::backup::restore(file, state, &inv.cluster.name, crate::fleet::now_ms())?;
    println!(
        "restored {} into {}: cluster {:?}, {} nodes, store snapshot at {} (unix ms {}), {} files",
        file.display(),
        state.display(),
        r.manifest.cluster,
        r.nodes,
        format_time(r.manifest.snapshot_unix_ms),
        r.manifest.snapshot_unix_ms,
        r.manifest.files.len()
    );
    println!(
        "start the coordinator: nodes reconnect with their certificates; one signed after the \
         snapshot is adopted once (event cert-adopted). Image generations are not in the backup."
    );
    Ok(())
}

pub fn status_err(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", s.message())
}

async fn serve(config: &std::path::Path) -> Result<()> {
    let inv = Inventory::load(config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let listeners = crate::daemon::bind(&inv).await?;
    let (trigger, shutdown) = crate::fleet::tokio_util_shutdown::channel();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        trigger.fire();
    });
    crate::daemon::run(inv, listeners, shutdown, |bound| {
        println!("{}", bound.ready_line())
    })
    .await
}

async fn node(cli: &Cli, command: &NodeCommand) -> Result<()> {
    let mut c = client::connect(&cli.target()?).await?;
    match command {
        NodeCommand::Reboot(args) => {
            return crate::rollout::cli::node_reboot(cli, args).await;
        }
        NodeCommand::Show { name, json } => {
            let n = c
                .show_node(pb::ShowNodeRequest { node: name.clone() })
                .await
                .map_err(status_err)?
                .into_inner();
            if *json {
                println!("{}", serde_json::to_string_pretty(&node_json(&n)?)?);
            } else {
                print!("{}", node_detail(&n)?);
            }
        }
        NodeCommand::Pending { json } => {
            let r = c
                .pending(pb::PendingRequest {})
                .await
                .map_err(status_err)?
                .into_inner();
            if *json {
                let rows: Vec<serde_json::Value> = r
                    .entries
                    .iter()
                    .map(|e| {
                        serde_json::json!({
                            "mac": e.mac, "ip": e.ip, "node": e.node, "reason": e.reason,
                            "first_seen_unix_ms": e.first_seen_unix_ms, "last_seen_unix_ms": e.last_seen_unix_ms,
                            "attempts": e.attempts,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else if r.entries.is_empty() {
                println!("nothing pending");
            } else {
                println!(
                    "{:<18} {:<16} {:<14} {:>8}  REASON",
                    "MAC", "ADDRESS", "NODE", "ATTEMPTS"
                );
                for e in &r.entries {
                    let node = if e.node.is_empty() {
                        "(unknown)"
                    } else {
                        &e.node
                    };
                    println!(
                        "{:<18} {:<16} {:<14} {:>8}  {}",
                        e.mac, e.ip, node, e.attempts, e.reason
                    );
                }
            }
        }
        NodeCommand::Approve { name } => {
            let r = c
                .approve(pb::NodeRequest { node: name.clone() })
                .await
                .map_err(status_err)?;
            println!("{}", r.into_inner().detail);
        }
        NodeCommand::Assign {
            nodeset,
            generation,
        } => {
            let target: dfleet_proto::domain::GenerationRef = generation.parse()?;
            let r = c
                .assign(pb::AssignRequest {
                    nodeset: nodeset.clone(),
                    target: Some(target.into()),
                })
                .await
                .map_err(status_err)?;
            println!("{}", r.into_inner().detail);
        }
        NodeCommand::Rearm { name } => {
            let r = c
                .rearm(pb::NodeRequest { node: name.clone() })
                .await
                .map_err(status_err)?;
            println!("{}", r.into_inner().detail);
        }
    }
    Ok(())
}

async fn pxe(cli: &Cli, command: &PxeCommand) -> Result<()> {
    let mut c = client::connect(&cli.target()?).await?;
    match command {
        PxeCommand::Render { out } => {
            let files = c
                .pxe_render(pb::PxeRequest {})
                .await
                .map_err(status_err)?
                .into_inner();
            for f in &files.files {
                let rel = std::path::Path::new(&f.path);
                if rel.is_absolute()
                    || rel
                        .components()
                        .any(|c| !matches!(c, std::path::Component::Normal(_)))
                {
                    bail!("refusing the rendered path {:?}", f.path);
                }
                let path = out.join(&f.tree).join(rel);
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                }
                if f.copy_of.is_empty() {
                    std::fs::write(&path, &f.content)
                        .with_context(|| format!("writing {}", path.display()))?;
                } else {
                    std::fs::copy(&f.copy_of, &path)
                        .with_context(|| format!("copying {} to {}", f.copy_of, path.display()))?;
                }
                println!("{}  (installs as {})", path.display(), f.target);
            }
            println!(
                "{} files rendered into {}",
                files.files.len(),
                out.display()
            );
        }
        PxeCommand::Diff => {
            let d = c
                .pxe_diff(pb::PxeRequest {})
                .await
                .map_err(status_err)?
                .into_inner();
            print!("{}", changes_text(&d));
        }
        PxeCommand::Apply => {
            let d = c
                .pxe_apply(pb::PxeRequest {})
                .await
                .map_err(status_err)?
                .into_inner();
            for v in &d.validation {
                println!("{v}");
            }
            print!("{}", changes_text(&d));
            if !d.nfs_instructions.is_empty() {
                print!("\n{}", d.nfs_instructions);
            }
        }
    }
    Ok(())
}

fn changes_text(d: &pb::PxeChanges) -> String {
    let mut out = String::new();
    for p in &d.created {
        out.push_str(&format!("+ {p}\n"));
    }
    for p in &d.changed {
        out.push_str(&format!("~ {p}\n"));
    }
    for p in &d.removed {
        out.push_str(&format!("- {p}\n"));
    }
    out.push_str(&format!(
        "{} created, {} changed, {} removed, {} unchanged\n",
        d.created.len(),
        d.changed.len(),
        d.removed.len(),
        d.unchanged
    ));
    out
}

async fn events(cli: &Cli, follow: bool, json: bool, last: u32) -> Result<()> {
    let mut c = client::connect(&cli.target()?).await?;
    let mut stream = c
        .events(pb::EventsRequest {
            after_id: 0,
            follow,
            last,
        })
        .await
        .map_err(status_err)?
        .into_inner();
    while let Some(e) = stream.message().await.map_err(status_err)? {
        let e = Event::try_from(e).context("reading an event")?;
        if json {
            println!("{}", serde_json::to_string(&e)?);
        } else {
            println!("{}", event_line(&e));
        }
    }
    Ok(())
}

pub fn event_line(e: &Event) -> String {
    let at = format_time(e.at_unix_ms);
    let mut line = format!("{:>6} {at} {:<18}", e.id, e.kind.as_str());
    if !e.node.is_empty() {
        line.push_str(&format!(" {}", e.node));
    }
    if !e.detail.is_empty() {
        line.push_str(&format!(": {}", e.detail));
    }
    if !e.actor.is_empty() {
        line.push_str(&format!(" [{}]", e.actor));
    }
    line
}

/// UTC `YYYY-MM-DD HH:MM:SS` from milliseconds since the epoch.
pub fn format_time(ms: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(ms / 1000) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => "-".into(),
    }
}

/// Bytes in binary units, as admins read `free -h`.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = b as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{b}B")
    } else {
        format!("{v:.1}{}", UNITS[unit])
    }
}

/// A duration as `3d4h`, `5h12m`, `42m`, `17s`.
pub fn human_duration(secs: u64) -> String {
    match secs {
        s if s >= 86400 => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
        s if s >= 3600 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        s if s >= 60 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

fn report_of(n: &pb::NodeStatus) -> Result<Option<Report>> {
    n.report
        .clone()
        .map(Report::try_from)
        .transpose()
        .with_context(|| format!("reading {}'s report", n.name))
}

/// The host-key summary shown in `dfleet status`: where the node's keys come from.
/// A trailing `!` when the coordinator flags something (see `node show`).
fn key_summary(r: &Report, warnings: &[String]) -> String {
    let mut origins: Vec<&str> = r
        .host_keys
        .iter()
        .map(|k| match k.origin {
            KeyOrigin::Image => "shared!",
            KeyOrigin::Boot => "per-boot",
            KeyOrigin::Missing => "missing",
            KeyOrigin::Coordinator => "managed",
            KeyOrigin::Certificate => "certificate",
        })
        .collect();
    origins.sort_unstable();
    origins.dedup();
    let mut s = if origins.is_empty() {
        "none".to_string()
    } else {
        origins.join(",")
    };
    if !warnings.is_empty() && !s.ends_with('!') {
        s.push('!');
    }
    s
}

struct Row {
    name: String,
    state: NodeState,
    generation: String,
    used: u64,
    size: u64,
    overlay: String,
    ttf: String,
    keys: String,
    failing: String,
}

fn rows(resp: &pb::StatusResponse) -> Result<Vec<Row>> {
    resp.nodes
        .iter()
        .map(|n| {
            let state = node_state(n.state).context("reading a node state")?;
            let report = report_of(n)?;
            let (generation, used, size, overlay, ttf, keys, failing) = match &report {
                None => (
                    "-".into(),
                    0,
                    0,
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    String::new(),
                ),
                Some(r) => {
                    let o = &r.overlay;
                    let overlay = if o.root_is_overlay {
                        format!(
                            "{} / {} {:>3.0}%",
                            human_bytes(o.used_bytes),
                            human_bytes(o.size_bytes),
                            o.used_percent().unwrap_or(0.0)
                        )
                    } else {
                        format!("not an overlay ({})", o.root_fstype)
                    };
                    (
                        r.booted
                            .stamp
                            .as_ref()
                            .map(|g| g.to_string())
                            .unwrap_or_else(|| "-".into()),
                        o.used_bytes,
                        o.size_bytes,
                        overlay,
                        o.seconds_to_full
                            .map(human_duration)
                            .unwrap_or_else(|| "-".into()),
                        key_summary(r, &n.host_key_warnings),
                        r.failing_checks().join(","),
                    )
                }
            };
            Ok(Row {
                name: n.name.clone(),
                state,
                generation,
                used,
                size,
                overlay,
                ttf,
                keys,
                failing: if failing.is_empty()
                    && !n.enrollment_refused.is_empty()
                    && state == NodeState::Unknown
                {
                    format!("enrollment refused: {}", n.enrollment_refused)
                } else {
                    failing
                },
            })
        })
        .collect()
}

/// The `dfleet status` table; `by_usage` sorts fullest overlay first (`top`).
pub fn status_table(resp: &pb::StatusResponse, by_usage: bool) -> Result<String> {
    let mut rows = rows(resp)?;
    if by_usage {
        rows.sort_by(|a, b| {
            let pa = if a.size > 0 {
                a.used as f64 / a.size as f64
            } else {
                -1.0
            };
            let pb = if b.size > 0 {
                b.used as f64 / b.size as f64
            } else {
                -1.0
            };
            pb.total_cmp(&pa).then_with(|| a.name.cmp(&b.name))
        });
    }
    let mut out = format!(
        "{:<14} {:<10} {:<14} {:<28} {:>7} {:<16} {}\n",
        "NODE",
        "STATE",
        "GENERATION",
        "OVERLAY USED / SIZE",
        "FULL IN",
        "HOST KEYS",
        "FAILING CHECKS"
    );
    for r in &rows {
        out.push_str(&format!(
            "{:<14} {:<10} {:<14} {:<28} {:>7} {:<16} {}\n",
            r.name,
            r.state.to_string(),
            r.generation,
            r.overlay,
            r.ttf,
            r.keys,
            r.failing
        ));
    }
    let count = |s: NodeState| rows.iter().filter(|r| r.state == s).count();
    out.push_str(&format!(
        "{} nodes: {} ready, {} not ready, {} stale, {} lost, {} never enrolled, {} pending\n",
        rows.len(),
        count(NodeState::Ready),
        count(NodeState::NotReady),
        count(NodeState::Stale),
        count(NodeState::Lost),
        count(NodeState::Unknown),
        count(NodeState::Pending)
    ));
    Ok(out)
}

/// A node as `status --json` and `node show --json` print it.
#[derive(serde::Serialize)]
struct NodeJson<'a> {
    name: &'a str,
    state: NodeState,
    mac: &'a str,
    ip: &'a str,
    image: &'a str,
    groups: &'a [String],
    connected: bool,
    last_seen_unix_ms: i64,
    cert_not_after_unix: i64,
    report: Option<Report>,
    // With a report only.
    #[serde(skip_serializing_if = "Option::is_none")]
    ready: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    failing_checks: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    overlay_used_percent: Option<Option<f64>>,
    #[serde(skip_serializing_if = "str::is_empty")]
    enrollment_refused: &'a str,
    host_key_warnings: &'a [String],
}

fn node_json(n: &pb::NodeStatus) -> Result<NodeJson<'_>> {
    let report = report_of(n)?;
    Ok(NodeJson {
        name: &n.name,
        state: node_state(n.state)?,
        mac: &n.mac,
        ip: &n.ip,
        image: &n.image,
        groups: &n.groups,
        connected: n.connected,
        last_seen_unix_ms: n.last_seen_unix_ms,
        cert_not_after_unix: n.cert_not_after_unix,
        ready: report.as_ref().map(Report::is_ready),
        failing_checks: report
            .as_ref()
            .map(|r| r.failing_checks().into_iter().map(str::to_string).collect()),
        overlay_used_percent: report.as_ref().map(|r| r.overlay.used_percent()),
        report,
        enrollment_refused: &n.enrollment_refused,
        host_key_warnings: &n.host_key_warnings,
    })
}

/// `status --json`, written as it is serialized: 10,000 nodes with their
/// reports are tens of megabytes, never held as a JSON tree.
fn write_status_json(resp: &pb::StatusResponse) -> Result<()> {
    #[derive(serde::Serialize)]
    struct StatusJson<'a> {
        now_unix_ms: i64,
        /// Why the store cannot be written, when it cannot.
        store_problem: Option<&'a str>,
        nodes: Vec<NodeJson<'a>>,
    }
    let nodes = resp.nodes.iter().map(node_json).collect::<Result<_>>()?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    serde_json::to_writer_pretty(
        &mut out,
        &StatusJson {
            now_unix_ms: resp.now_unix_ms,
            store_problem: (!resp.store_problem.is_empty()).then_some(&resp.store_problem),
            nodes,
        },
    )?;
    std::io::Write::write_all(&mut out, b"\n")?;
    std::io::Write::flush(&mut out)?;
    Ok(())
}

fn node_detail(n: &pb::NodeStatus) -> Result<String> {
    let state = node_state(n.state)?;
    let mut out = format!(
        "{}  {}  mac {}  ip {}  image {}  groups {}\n",
        n.name,
        state,
        n.mac,
        n.ip,
        n.image,
        if n.groups.is_empty() {
            "-".into()
        } else {
            n.groups.join(",")
        }
    );
    out.push_str(&format!(
        "stream: {}   last seen: {}   certificate until: {}\n",
        if n.connected {
            "connected"
        } else {
            "not connected"
        },
        if n.last_seen_unix_ms > 0 {
            format_time(n.last_seen_unix_ms)
        } else {
            "never".into()
        },
        if n.cert_not_after_unix > 0 {
            format_time(n.cert_not_after_unix * 1000)
        } else {
            "-".into()
        },
    ));
    if !n.enrollment_refused.is_empty() {
        out.push_str(&format!(
            "last enrollment refusal: {}\n",
            n.enrollment_refused
        ));
    }
    let Some(r) = report_of(n)? else {
        out.push_str("no report yet\n");
        return Ok(out);
    };
    let id = &r.identity;
    out.push_str(&format!(
        "host {}  kernel {}  up {}  agent {}  boot mac {}  addresses {}\n",
        id.hostname,
        id.kernel,
        human_duration(id.uptime_seconds),
        id.agent_version,
        id.boot_mac
            .map(|m| m.to_string())
            .unwrap_or_else(|| "-".into()),
        id.addresses.join(",")
    ));
    out.push_str(&format!(
        "booted: {}  (lower from {})\n",
        r.booted
            .stamp
            .as_ref()
            .map(|g| g.to_string())
            .unwrap_or_else(|| "no stamp".into()),
        if r.booted.lower_source.is_empty() {
            "-"
        } else {
            &r.booted.lower_source
        }
    ));
    let o = &r.overlay;
    if o.root_is_overlay {
        out.push_str(&format!(
            "overlay: {} used of {} ({:.1}%), {} free; inodes {} of {} free; upper on {} {} at {}\n",
            human_bytes(o.used_bytes),
            human_bytes(o.size_bytes),
            o.used_percent().unwrap_or(0.0),
            human_bytes(o.avail_bytes),
            o.inodes_free,
            o.inodes_total,
            o.upper_fstype,
            o.upper_source,
            o.upper_mount_point
        ));
        out.push_str(&format!(
            "  growth {}/s, full in {}; {} whiteouts (files deleted from the image)\n",
            human_bytes(o.growth_bytes_per_second.max(0.0) as u64),
            o.seconds_to_full
                .map(human_duration)
                .unwrap_or_else(|| "never at this rate".into()),
            o.whiteouts
        ));
        out.push_str(&format!(
            "  lower {}  upper {}\n",
            o.lowerdirs.join(":"),
            o.upperdir
        ));
        if !o.largest_paths.is_empty() {
            out.push_str(&format!(
                "  largest paths in the upper layer ({} entries walked{}):\n",
                o.walked_entries,
                if o.walk_truncated {
                    ", walk stopped at its budget"
                } else {
                    ""
                }
            ));
            for p in &o.largest_paths {
                out.push_str(&format!(
                    "    {:>10}  {}{}\n",
                    human_bytes(p.bytes),
                    p.path,
                    if p.is_dir { "/" } else { "" }
                ));
            }
        }
    } else {
        out.push_str(&format!(
            "root is not an overlay: {} from {}\n",
            o.root_fstype, o.root_source
        ));
    }
    if !o.error.is_empty() {
        out.push_str(&format!("  (could not read everything: {})\n", o.error));
    }
    let m = &r.memory;
    out.push_str(&format!(
        "memory: {} total, {} available, {} shmem\n",
        human_bytes(m.total_bytes),
        human_bytes(m.available_bytes),
        human_bytes(m.shmem_bytes)
    ));
    out.push_str("host keys:\n");
    for k in &r.host_keys {
        let until = match k.cert_valid_before_unix {
            0 => String::new(),
            t => format!(", certificate until {}", format_time(t as i64 * 1000)),
        };
        out.push_str(&format!(
            "  {:<40} {} {} {} ({}{until})\n",
            k.path, k.bits, k.fingerprint, k.key_type, k.origin
        ));
    }
    for w in &n.host_key_warnings {
        out.push_str(&format!("  WARNING {w}\n"));
    }
    out.push_str("checks:\n");
    for c in &r.checks {
        let status = match c.status {
            dfleet_proto::domain::CheckStatus::Pass => "pass",
            dfleet_proto::domain::CheckStatus::Fail => "FAIL",
            dfleet_proto::domain::CheckStatus::Skipped => "skip",
        };
        out.push_str(&format!("  {status}  {:<18} {}\n", c.name, c.detail));
    }
    Ok(out)
}

async fn top(cli: &Cli, interval: u64, once: bool) -> Result<()> {
    let mut c = client::connect(&cli.target()?).await?;
    let mut tick = tokio::time::interval(Duration::from_secs(interval.max(1)));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        let resp = c
            .status(pb::StatusRequest {
                nodeset: String::new(),
            })
            .await
            .map_err(status_err)?
            .into_inner();
        let table = status_table(&resp, true)?;
        if once {
            print!("{table}");
            return Ok(());
        }
        // Clear the screen and home the cursor, then draw.
        print!(
            "\x1b[2J\x1b[Hdfleet top — {} (every {interval}s, Ctrl-C to quit)\n\n{table}",
            format_time(resp.now_unix_ms)
        );
        use std::io::Write;
        std::io::stdout().flush().ok();
    }
}

async fn issue_admin_cert(cli: &Cli, user: &str, out: &std::path::Path) -> Result<()> {
    let key = rcgen::KeyPair::generate().context("generating a key")?;
    let params =
        rcgen::CertificateParams::new(Vec::<String>::new()).context("building the request")?;
    let csr = params
        .serialize_request(&key)
        .context("building the request")?;
    let mut c = client::connect(&cli.target()?).await?;
    let r = c
        .issue_admin_cert(pb::IssueAdminCertRequest {
            user: user.to_string(),
            csr_der: csr.der().to_vec(),
        })
        .await
        .map_err(status_err)?
        .into_inner();
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let key_path = out.join(format!("{user}.key"));
    crate::pki::write_private(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    crate::pki::write_private(
        &out.join(format!("{user}.crt")),
        crate::pki::der_to_pem("CERTIFICATE", &r.cert_der).as_bytes(),
        0o644,
    )?;
    crate::pki::write_private(
        &out.join("ca.crt"),
        crate::pki::der_to_pem("CERTIFICATE", &r.ca_der).as_bytes(),
        0o644,
    )?;
    println!(
        "wrote {user}.crt, {user}.key and ca.crt to {} (valid until {} UTC)",
        out.display(),
        format_time(r.not_after_unix * 1000)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(512), "512B");
        assert_eq!(human_bytes(1536), "1.5KiB");
        assert_eq!(human_bytes(3 << 30), "3.0GiB");
        assert_eq!(human_duration(59), "59s");
        assert_eq!(human_duration(3600 + 120), "1h2m");
        assert_eq!(human_duration(2 * 86400 + 3 * 3600), "2d3h");
        assert_eq!(format_time(0), "1970-01-01 00:00:00");
    }
}
