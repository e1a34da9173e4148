//! `dfleet exec`: a command on every node of a set, over the agents'
//! streams. `cli.rs` is the command line and its output (lines as they come,
//! or gathered by identical result); `session.rs` the coordinator's side of
//! one exec; `router.rs` how agents' answers reach it.

pub mod cli;
mod router;
pub mod session;

use dfleet_proto::pb;
use dfleet_provisioner::nodeset;
use tonic::Status;

pub use self::router::ExecRouter;
use self::session::{DEFAULT_FANOUT, Plan};
use crate::fleet::{Command, FleetHandle};

/// The longest command the audit trail quotes whole.
const SHOWN_MAX: usize = 200;

/// Resolves what the caller asked into a plan: the set (with groups and
/// exclusions) checked against the inventory, the pick, each node's stream.
pub async fn plan(fleet: &FleetHandle, r: pb::ExecRequest, actor: String) -> Result<Plan, Status> {
    if r.argv.is_empty() || r.argv[0].is_empty() {
        return Err(Status::invalid_argument("no command to run"));
    }
    if r.nodeset.trim().is_empty() {
        return Err(Status::invalid_argument("no node set"));
    }
    let mut names = fleet.resolve(&r.nodeset).await?;
    if !r.exclude.trim().is_empty() {
        let out: std::collections::HashSet<String> =
            fleet.resolve(&r.exclude).await?.into_iter().collect();
        names.retain(|n| !out.contains(n));
    }
    let (inv, _) = fleet.ask(|reply| Command::BootInputs { reply }).await?;
    let unknown: Vec<String> = names
        .iter()
        .filter(|n| inv.node(n).is_none())
        .cloned()
        .collect();
    if !unknown.is_empty() {
        return Err(Status::invalid_argument(format!(
            "not in the inventory: {}",
            nodeset::fold(&unknown)
        )));
    }
    if names.is_empty() {
        return Err(Status::invalid_argument(format!(
            "the node set {:?} has no node",
            r.nodeset
        )));
    }
    let pick = r.pick as usize;
    if pick > 0 && pick < names.len() {
        fastrand::shuffle(&mut names);
        names.truncate(pick);
        names.sort_by_cached_key(|n| nodeset::natural_key(n));
    }
    let set = nodeset::fold(&names);
    let (id, targets) = fleet
        .ask(|reply| Command::ExecTargets { names, reply })
        .await?;
    let mut command = if r.shell {
        format!("sh -c {:?}", r.argv.join(" "))
    } else {
        shlex::try_join(r.argv.iter().map(String::as_str))
            .unwrap_or_else(|_| format!("{:?}", r.argv))
    };
    if command.chars().count() > SHOWN_MAX {
        command = command.chars().take(SHOWN_MAX).collect::<String>() + "…";
    }
    let timeout = match r.timeout_ms {
        0 => String::new(),
        ms => format!(" (timeout {}s)", f64::from(ms) / 1000.0),
    };
    Ok(Plan {
        id,
        targets,
        order: pb::Exec {
            argv: r.argv,
            shell: r.shell,
            timeout_ms: r.timeout_ms,
            max_output_bytes: r.max_output_bytes,
        },
        fanout: match r.fanout {
            0 => DEFAULT_FANOUT,
            n => n as usize,
        },
        actor,
        shown: format!("`{command}` on {set}{timeout}"),
    })
}
