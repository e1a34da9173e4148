//! `dfleet rollout …` and `dfleet reboots freeze|thaw`.

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use dfleet_proto::pb;

use crate::cli::{Cli, format_time};
use crate::client;

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Reboot nodes onto IMAGE:GEN, a few at a time: canaries first, then
    /// batches, each node drained first and undrained when it is back on the
    /// target and ready.
    Start(Box<StartArgs>),
    /// The current (or last) rollout: progress and every node's step.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Start no new node until `resume`; nodes in flight finish.
    Pause,
    /// Go on after a pause; the failures seen so far no longer count.
    Resume,
    /// Nodes not yet rebooted go back to their previous generation; nodes
    /// already moved stay.
    Abort,
    /// Every rollout, newest first.
    History,
    /// Follow the current rollout, printing each step, until it completes
    /// (exit 0), pauses or is aborted (exit 1), or the timeout passes.
    Wait {
        /// How long to wait at most, e.g. "30m" (default: as long as it
        /// takes).
        #[arg(long)]
        timeout: Option<String>,
    },
}

/// What `rollout start` takes.
#[derive(Debug, clap::Args)]
pub struct StartArgs {
    /// IMAGE:GEN to roll onto.
    generation: String,
    /// Node set; every node assigned an image of that name when absent.
    #[arg(long)]
    nodes: Option<String>,
    #[command(flatten)]
    flags: RolloutFlags,
}

/// What `node reboot` takes.
#[derive(Debug, clap::Args)]
pub struct RebootArgs {
    /// The nodes to reboot, each back on the generation it is assigned.
    nodeset: String,
    #[command(flatten)]
    flags: RolloutFlags,
}

/// How a rollout (or a plain reboot) proceeds.
#[derive(Debug, clap::Args)]
pub struct RolloutFlags {
    /// Nodes that go first, alone; all must succeed before any batch.
    #[arg(long, default_value_t = 0)]
    canary: u32,
    /// Nodes started per step: N or P% of the rollout's nodes.
    #[arg(long, default_value = "1")]
    batch: String,
    /// The most nodes not serving at once, counting nodes already down
    /// (default: the batch).
    #[arg(long)]
    max_unavailable: Option<String>,
    /// A window named in cluster.toml, or "DAYS HH:MM-HH:MM [ZONE]"; new
    /// nodes start only while it is open.
    #[arg(long)]
    window: Option<String>,
    /// Command that exits 0 when a node is drained already (by someone
    /// else), run before draining it: such a node is neither drained nor
    /// undrained by the rollout.
    #[arg(long)]
    is_drained: Option<String>,
    /// Command that drains a node, {node} replaced by its name; split like
    /// a shell would split it, but never run through one.
    #[arg(long)]
    drain_cmd: Option<String>,
    /// Command that exits 0 once a node is drained (polled).
    #[arg(long)]
    drained_check: Option<String>,
    #[arg(long, default_value = "1h")]
    drain_timeout: String,
    /// Command that returns a node to service; run only on nodes the
    /// rollout drained.
    #[arg(long)]
    undrain_cmd: Option<String>,
    /// From the reboot order until the node runs the target and is ready.
    #[arg(long, default_value = "15m")]
    ready_timeout: String,
    /// More failed nodes than this pause the rollout.
    #[arg(long, default_value_t = 0)]
    max_failures: u32,
    /// fullest-overlay-first or name.
    #[arg(long, default_value = "fullest-overlay-first")]
    order: String,
}

#[derive(Debug, Subcommand)]
pub enum RebootsCommand {
    /// Stop every new reboot at once (rollouts hold; nodes in flight finish).
    Freeze,
    /// Allow reboots again.
    Thaw,
}

fn argv(flag: &str, text: &Option<String>) -> Result<Vec<String>> {
    match text {
        None => Ok(Vec::new()),
        Some(t) => {
            let v = shlex::split(t).with_context(|| format!("{flag} {t:?}: unbalanced quotes"))?;
            if v.is_empty() {
                bail!("{flag} is empty");
            }
            Ok(v)
        }
    }
}

fn seconds(flag: &str, text: &str) -> Result<u32> {
    let d = dfleet_provisioner::duration::parse_duration(text)
        .map_err(|e| anyhow::anyhow!("{flag} {text:?}: {e}"))?;
    u32::try_from(d.as_secs()).with_context(|| format!("{flag} {text:?} is too long"))
}

fn status_err(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", s.message())
}

pub async fn rollout(cli: &Cli, command: &RolloutCommand) -> Result<()> {
    let mut c = client::connect(&cli.target()?).await?;
    match command {
        RolloutCommand::Start(args) => {
            let target: dfleet_proto::domain::GenerationRef = args
                .generation
                .parse()
                .map_err(|_| anyhow::anyhow!("{:?} is not IMAGE:GEN", args.generation))?;
            let req = request(
                Some(target),
                args.nodes.clone().unwrap_or_default(),
                &args.flags,
            )?;
            let r = c.rollout_start(req).await.map_err(status_err)?;
            println!("{}", r.into_inner().detail);
        }
        RolloutCommand::Status { json } => {
            let r = c
                .rollout_status(pb::RolloutStatusRequest {})
                .await
                .map_err(status_err)?
                .into_inner();
            if *json {
                println!("{}", serde_json::to_string_pretty(&status_json(&r))?);
            } else {
                print!("{}", status_text(&r));
            }
        }
        RolloutCommand::Pause | RolloutCommand::Resume | RolloutCommand::Abort => {
            let action = match command {
                RolloutCommand::Pause => "pause",
                RolloutCommand::Resume => "resume",
                _ => "abort",
            };
            let r = c
                .rollout_control(pb::RolloutControlRequest {
                    action: action.into(),
                })
                .await
                .map_err(status_err)?;
            println!("{}", r.into_inner().detail);
        }
        RolloutCommand::Wait { timeout } => {
            let wait = wait(&mut c);
            match timeout {
                None => wait.await?,
                Some(t) => {
                    let limit = dfleet_provisioner::duration::parse_duration(t)
                        .map_err(|e| anyhow::anyhow!("--timeout {t:?}: {e}"))?;
                    tokio::time::timeout(limit, wait).await.map_err(|_| {
                        anyhow::anyhow!("the rollout is still under way after {t}")
                    })??;
                }
            }
        }
        RolloutCommand::History => {
            let r = c
                .rollout_history(pb::RolloutHistoryRequest {})
                .await
                .map_err(status_err)?
                .into_inner();
            if r.rollouts.is_empty() {
                println!("no rollout yet");
            }
            for i in r.rollouts {
                println!(
                    "{:>4}  {:<20} {:<10} started {} by {}{}",
                    i.id,
                    target_text(&i),
                    i.state,
                    format_time(i.created_unix_ms),
                    i.actor,
                    if i.reason.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", i.reason)
                    }
                );
            }
        }
    }
    Ok(())
}

/// Follows the rollout's events until it ends: Ok once completed, an error
/// naming the state and reason once paused or aborted.
async fn wait(
    c: &mut dfleet_proto::pb::admin_client::AdminClient<tonic::transport::Channel>,
) -> Result<()> {
    // Subscribed before the first look, so no change falls between the two.
    let mut events = c
        .events(pb::EventsRequest {
            after_id: 0,
            follow: true,
            last: 1,
        })
        .await
        .map_err(status_err)?
        .into_inner();
    loop {
        let r = c
            .rollout_status(pb::RolloutStatusRequest {})
            .await
            .map_err(status_err)?
            .into_inner();
        let Some(i) = &r.rollout else {
            bail!("no rollout has run");
        };
        match i.state.as_str() {
            "completed" => {
                print!("{}", status_text(&r));
                return Ok(());
            }
            "paused" | "aborted" => {
                print!("{}", status_text(&r));
                bail!(
                    "rollout {} ({}) is {}: {}",
                    i.id,
                    target_text(i),
                    i.state,
                    i.reason
                );
            }
            _ => {}
        }
        // The next event that may change it.
        loop {
            let Some(e) = events.message().await.map_err(status_err)? else {
                bail!("the coordinator ended the event stream");
            };
            let e = dfleet_proto::domain::Event::try_from(e)?;
            match e.kind {
                dfleet_proto::domain::EventKind::RolloutStep => {
                    println!("{}", crate::cli::event_line(&e));
                }
                dfleet_proto::domain::EventKind::Rollout => {
                    println!("{}", crate::cli::event_line(&e));
                    break;
                }
                _ => {}
            }
        }
    }
}

/// The request for a rollout onto `target`, or a plain reboot (`None`).
fn request(
    target: Option<dfleet_proto::domain::GenerationRef>,
    nodeset: String,
    f: &RolloutFlags,
) -> Result<pb::RolloutStartRequest> {
    Ok(pb::RolloutStartRequest {
        target: target.map(Into::into),
        nodeset,
        canary: f.canary,
        batch: f.batch.clone(),
        max_unavailable: f.max_unavailable.clone().unwrap_or_default(),
        window: f.window.clone().unwrap_or_default(),
        is_drained: argv("--is-drained", &f.is_drained)?,
        drain_cmd: argv("--drain-cmd", &f.drain_cmd)?,
        drained_check: argv("--drained-check", &f.drained_check)?,
        drain_timeout_seconds: seconds("--drain-timeout", &f.drain_timeout)?,
        undrain_cmd: argv("--undrain-cmd", &f.undrain_cmd)?,
        ready_timeout_seconds: seconds("--ready-timeout", &f.ready_timeout)?,
        max_failures: f.max_failures,
        order: f.order.clone(),
    })
}

/// `dfleet node reboot`: the rollout machinery without a new generation.
pub async fn node_reboot(cli: &Cli, args: &RebootArgs) -> Result<()> {
    let mut c = client::connect(&cli.target()?).await?;
    let req = request(None, args.nodeset.clone(), &args.flags)?;
    let r = c.rollout_start(req).await.map_err(status_err)?;
    println!("{}", r.into_inner().detail);
    Ok(())
}

pub async fn reboots(cli: &Cli, command: &RebootsCommand) -> Result<()> {
    let mut c = client::connect(&cli.target()?).await?;
    let r = c
        .reboots_freeze(pb::RebootsFreezeRequest {
            frozen: matches!(command, RebootsCommand::Freeze),
        })
        .await
        .map_err(status_err)?;
    println!("{}", r.into_inner().detail);
    Ok(())
}

fn target_text(i: &pb::RolloutInfo) -> String {
    i.target
        .as_ref()
        .map(|t| format!("{}:{}", t.image, t.generation))
        .unwrap_or_else(|| "reboot".into())
}

/// `rollout status`: a progress bar, then every node's step.
pub fn status_text(r: &pb::RolloutStatusReply) -> String {
    let mut out = String::new();
    if !r.frozen_by.is_empty() {
        out.push_str(&format!(
            "REBOOTS FROZEN by {} (`dfleet reboots thaw`)\n",
            r.frozen_by
        ));
    }
    let Some(i) = &r.rollout else {
        out.push_str("no rollout yet\n");
        return out;
    };
    let total = i.nodes.len();
    let finished = i
        .nodes
        .iter()
        .filter(|n| matches!(n.step.as_str(), "done" | "skipped" | "failed" | "reverted"))
        .count();
    let width = 30;
    let filled = (finished * width).checked_div(total).unwrap_or(width);
    out.push_str(&format!(
        "rollout {} ({}): {}{}\n[{}{}] {finished}/{total} nodes finished\n",
        i.id,
        target_text(i),
        i.state,
        if i.reason.is_empty() {
            String::new()
        } else {
            format!(" ({})", i.reason)
        },
        "#".repeat(filled),
        ".".repeat(width - filled),
    ));
    if !i.window_open && i.state == "running" {
        out.push_str(&format!(
            "window closed: no new node starts until {}\n",
            if i.window_opens_unix_ms > 0 {
                format_time(i.window_opens_unix_ms)
            } else {
                "it opens".into()
            }
        ));
    }
    let mut counts: Vec<(String, usize)> = Vec::new();
    for n in &i.nodes {
        match counts.iter_mut().find(|(s, _)| *s == n.step) {
            Some((_, c)) => *c += 1,
            None => counts.push((n.step.clone(), 1)),
        }
    }
    out.push_str(
        &counts
            .iter()
            .map(|(s, c)| format!("{c} {s}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    out.push('\n');
    for n in &i.nodes {
        out.push_str(&format!(
            "  {:<16} {:<10}{}{}{}\n",
            n.name,
            n.step,
            if n.canary { " canary" } else { "" },
            if n.since_unix_ms > 0 {
                format!(" since {}", format_time(n.since_unix_ms))
            } else {
                String::new()
            },
            if n.reason.is_empty() {
                String::new()
            } else {
                format!(" — {}", n.reason)
            }
        ));
    }
    out
}

pub fn status_json(r: &pb::RolloutStatusReply) -> serde_json::Value {
    let rollout = r.rollout.as_ref().map(|i| {
        serde_json::json!({
            "id": i.id,
            "target": target_text(i),
            "state": i.state,
            "reason": i.reason,
            "actor": i.actor,
            "created_unix_ms": i.created_unix_ms,
            "updated_unix_ms": i.updated_unix_ms,
            "policy": serde_json::from_str::<serde_json::Value>(&i.policy_json).unwrap_or_default(),
            "window_open": i.window_open,
            "window_opens_unix_ms": i.window_opens_unix_ms,
            "nodes": i.nodes.iter().map(|n| serde_json::json!({
                "name": n.name,
                "step": n.step,
                "since_unix_ms": n.since_unix_ms,
                "reason": n.reason,
                "canary": n.canary,
                "wave": n.wave,
            })).collect::<Vec<_>>(),
        })
    });
    serde_json::json!({ "rollout": rollout, "frozen_by": r.frozen_by })
}
