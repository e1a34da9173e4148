//! One `dfleet exec` on the coordinator: the order goes out on each target
//! node's stream, at most `fanout` at a time; output and results come back
//! through the [`ExecRouter`] and go to the caller as they arrive; the
//! caller, the command and the per-node results are written to the event
//! log (the audit trail) at the start and at the end.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use dfleet_proto::domain::EventKind;
use dfleet_proto::pb;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::Status;

use super::router::{ExecRouter, Update};
use crate::fleet::{Command, ExecTarget, FleetHandle, Outbound};

/// Nodes running the command at once when the caller names no fanout.
pub const DEFAULT_FANOUT: usize = 1024;

/// How long after its own timeout a node may take to answer before the
/// coordinator stops waiting for it.
const ANSWER_GRACE: Duration = Duration::from_secs(10);

/// What the caller asked, resolved.
#[derive(Debug, Clone)]
pub struct Plan {
    pub id: u64,
    pub targets: Vec<ExecTarget>,
    pub order: pb::Exec,
    pub fanout: usize,
    pub actor: String,
    /// The command and set as the audit trail shows them.
    pub shown: String,
}

/// How each node ended, for the audit trail's summary.
#[derive(Debug, Default)]
pub struct Tally {
    ok: Vec<String>,
    /// (exit code, node)
    failed: Vec<(i32, String)>,
    timed_out: Vec<String>,
    unreachable: Vec<String>,
    error: Vec<String>,
}

impl Tally {
    pub fn add(&mut self, d: &pb::ExecNodeDone) {
        let node = d.node.clone();
        match d.outcome.as_str() {
            "ok" => self.ok.push(node),
            "failed" => self.failed.push((d.exit_code, node)),
            "timed-out" => self.timed_out.push(node),
            "unreachable" => self.unreachable.push(node),
            _ => self.error.push(node),
        }
    }

    /// "4 ok; exit 2: cn3 (1); unreachable: cn[6-7] (2)"
    pub fn summary(&self) -> String {
        let fold = |v: &[String]| format!("{} ({})", dfleet_provisioner::nodeset::fold(v), v.len());
        let mut parts = vec![format!("{} ok", self.ok.len())];
        let mut codes: Vec<i32> = self.failed.iter().map(|(c, _)| *c).collect();
        codes.sort_unstable();
        codes.dedup();
        for code in codes {
            let nodes: Vec<String> = self
                .failed
                .iter()
                .filter(|(c, _)| *c == code)
                .map(|(_, n)| n.clone())
                .collect();
            parts.push(format!("exit {code}: {}", fold(&nodes)));
        }
        for (what, v) in [
            ("timed out", &self.timed_out),
            ("unreachable", &self.unreachable),
            ("could not run", &self.error),
        ] {
            if !v.is_empty() {
                parts.push(format!("{what}: {}", fold(v)));
            }
        }
        parts.join("; ")
    }
}

/// A node's result from its agent's answer.
pub fn node_done(node: &str, d: &pb::ExecDone) -> pb::ExecNodeDone {
    let outcome = if !d.error.is_empty() {
        "error"
    } else if d.timed_out {
        "timed-out"
    } else if d.exit_code == 0 {
        "ok"
    } else {
        "failed"
    };
    pb::ExecNodeDone {
        node: node.to_string(),
        outcome: outcome.into(),
        exit_code: d.exit_code,
        signal: d.signal,
        truncated: d.truncated,
        detail: d.error.clone(),
        duration_ms: d.duration_ms,
    }
}

fn unreachable(node: &str, detail: &str) -> pb::ExecNodeDone {
    pb::ExecNodeDone {
        node: node.to_string(),
        outcome: "unreachable".into(),
        detail: detail.to_string(),
        ..Default::default()
    }
}

fn event(kind: pb::exec_event::Kind) -> Result<pb::ExecEvent, Status> {
    Ok(pb::ExecEvent { kind: Some(kind) })
}

/// Runs the plan, sending events to `out` until every node answered, timed
/// out or was found unreachable, or the caller went away.
pub async fn run(
    plan: Plan,
    fleet: FleetHandle,
    router: ExecRouter,
    out: mpsc::Sender<Result<pb::ExecEvent, Status>>,
) {
    let started = Instant::now();
    let id = plan.id;
    let nodes: Vec<String> = plan.targets.iter().map(|(n, _)| n.clone()).collect();
    let record = |detail: String| {
        let fleet = fleet.clone();
        let actor = plan.actor.clone();
        async move {
            let _ = fleet
                .send(Command::Record {
                    kind: EventKind::Exec,
                    node: String::new(),
                    detail,
                    actor,
                })
                .await;
        }
    };
    record(format!("started {}", plan.shown)).await;
    let mut caller = out
        .send(event(pb::exec_event::Kind::Targets(pb::ExecTargets {
            nodes: nodes.clone(),
        })))
        .await
        .is_ok();

    let (tx, mut rx) = mpsc::channel::<Update>(1024);
    let mut queue: VecDeque<ExecTarget> = plan.targets.into();
    // Node → when the coordinator stops waiting for it (None: no limit), and
    // its stream, to cancel the command if the caller goes away.
    let mut running: HashMap<String, (Option<Instant>, Outbound)> = HashMap::new();
    let mut tally = Tally::default();
    let mut timing = Timing::default();
    let limit = (plan.order.timeout_ms > 0)
        .then(|| Duration::from_millis(u64::from(plan.order.timeout_ms)) + ANSWER_GRACE);
    let message = pb::CoordinatorMessage {
        kind: Some(pb::coordinator_message::Kind::Order(pb::Order {
            id,
            kind: Some(pb::order::Kind::Exec(plan.order.clone())),
        })),
    };
    loop {
        let mut finished: Vec<pb::ExecNodeDone> = Vec::new();
        // Start nodes while there is room; a caller gone starts none.
        while caller && running.len() < plan.fanout {
            let Some((node, conn)) = queue.pop_front() else {
                break;
            };
            let Some((conn, stream)) = conn else {
                finished.push(unreachable(&node, "not connected"));
                continue;
            };
            router.register(&node, id, conn, tx.clone());
            if stream.send(Ok(message.clone())).await.is_err() {
                router.forget(&node, id);
                finished.push(unreachable(&node, "its stream closed"));
                continue;
            }
            timing.sent(&node);
            running.insert(node, (limit.map(|l| Instant::now() + l), stream));
        }
        if running.is_empty() && finished.is_empty() {
            break;
        }
        if finished.is_empty() {
            let next_deadline = running.values().filter_map(|(at, _)| *at).min();
            let expired = async {
                match next_deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                u = rx.recv() => match u {
                    Some(Update::Output { node, stderr, data }) => {
                        if caller {
                            caller = out
                                .send(event(pb::exec_event::Kind::Output(pb::ExecNodeOutput {
                                    node,
                                    stderr,
                                    data,
                                })))
                                .await
                                .is_ok();
                        }
                    }
                    Some(Update::Done { node, done }) => {
                        if running.remove(&node).is_some() {
                            timing.answered(&node, done.duration_ms);
                            finished.push(node_done(&node, &done));
                        }
                    }
                    Some(Update::Lost { node, reason }) => {
                        if running.remove(&node).is_some() {
                            finished.push(unreachable(
                                &node,
                                &format!("its stream ended during the command: {reason}"),
                            ));
                        }
                    }
                    // `tx` is held here, so the channel never closes.
                    None => break,
                },
                // The caller went away (Ctrl-C) while nothing came back.
                () = out.closed(), if caller => caller = false,
                _ = expired => {
                    let now = Instant::now();
                    let late: Vec<String> = running
                        .iter()
                        .filter(|(_, (at, _))| at.is_some_and(|at| at <= now))
                        .map(|(n, _)| n.clone())
                        .collect();
                    for node in late {
                        running.remove(&node);
                        router.forget(&node, id);
                        finished.push(pb::ExecNodeDone {
                            node,
                            outcome: "timed-out".into(),
                            detail: "no answer from its agent after the timeout".into(),
                            ..Default::default()
                        });
                    }
                }
            }
        }
        for done in finished {
            tally.add(&done);
            if caller {
                caller = out
                    .send(event(pb::exec_event::Kind::Done(done)))
                    .await
                    .is_ok();
            }
        }
        if !caller {
            break;
        }
    }
    // Interrupted: the commands still running are cancelled (each agent
    // kills the command's process group); the rest never start.
    let cancel = pb::CoordinatorMessage {
        kind: Some(pb::coordinator_message::Kind::Order(pb::Order {
            id,
            kind: Some(pb::order::Kind::ExecCancel(pb::ExecCancel {})),
        })),
    };
    let left = queue.len() + running.len();
    let mut cancelled = Vec::new();
    for (node, (_, stream)) in running {
        router.forget(&node, id);
        if stream.send(Ok(cancel.clone())).await.is_ok() {
            cancelled.push(node);
        }
    }
    let mut summary = format!(
        "finished {}: {} nodes in {:.1}s: {}",
        plan.shown,
        nodes.len(),
        started.elapsed().as_secs_f64(),
        tally.summary()
    );
    if left > 0 {
        summary.push_str(&format!(
            "; interrupted by the caller, {left} nodes without a result"
        ));
        if !cancelled.is_empty() {
            summary.push_str(&format!(
                ", cancelled on {} ({})",
                dfleet_provisioner::nodeset::fold(&cancelled),
                cancelled.len()
            ));
        }
    }
    timing.log(id, started);
    record(summary).await;
    if caller {
        let _ = out
            .send(event(pb::exec_event::Kind::Summary(pb::ExecSummary {
                nodes: nodes.len() as u32,
                duration_ms: started.elapsed().as_millis() as u64,
            })))
            .await;
    }
}

/// Where an exec's time went, logged at debug level when it ends (the
/// swarm bench reads it): when orders went out and answers came back, each
/// node's round trip, and how long its command ran by its agent's count.
#[derive(Debug)]
struct Timing {
    started: Instant,
    sent_at: HashMap<String, Instant>,
    last_sent_ms: u64,
    first_answer_ms: Option<u64>,
    last_answer_ms: u64,
    round_trips_ms: Vec<u64>,
    commands_ms: Vec<u64>,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            started: Instant::now(),
            sent_at: HashMap::new(),
            last_sent_ms: 0,
            first_answer_ms: None,
            last_answer_ms: 0,
            round_trips_ms: Vec::new(),
            commands_ms: Vec::new(),
        }
    }
}

impl Timing {
    fn sent(&mut self, node: &str) {
        if tracing::enabled!(tracing::Level::DEBUG) {
            let now = Instant::now();
            self.last_sent_ms = (now - self.started).as_millis() as u64;
            self.sent_at.insert(node.to_string(), now);
        }
    }

    fn answered(&mut self, node: &str, command_ms: u64) {
        let Some(sent) = self.sent_at.remove(node) else {
            return;
        };
        let now = Instant::now();
        let at = (now - self.started).as_millis() as u64;
        self.first_answer_ms.get_or_insert(at);
        self.last_answer_ms = at;
        self.round_trips_ms.push((now - sent).as_millis() as u64);
        self.commands_ms.push(command_ms);
    }

    fn log(mut self, id: u64, started: Instant) {
        if !tracing::enabled!(tracing::Level::DEBUG) {
            return;
        }
        let pct = |v: &mut Vec<u64>, p: usize| -> u64 {
            v.sort_unstable();
            v.get((v.len() * p / 100).min(v.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0)
        };
        tracing::debug!(
            exec = id,
            total_ms = started.elapsed().as_millis() as u64,
            last_order_sent_ms = self.last_sent_ms,
            first_answer_ms = self.first_answer_ms.unwrap_or(0),
            last_answer_ms = self.last_answer_ms,
            round_trip_p50_ms = pct(&mut self.round_trips_ms, 50),
            round_trip_p99_ms = pct(&mut self.round_trips_ms, 99),
            command_p50_ms = pct(&mut self.commands_ms, 50),
            command_p99_ms = pct(&mut self.commands_ms, 99),
            "exec timing"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_and_the_summary_fold_nodes_by_result() {
        let done = |node: &str, d: pb::ExecDone| node_done(node, &d);
        let mut t = Tally::default();
        t.add(&done("cn1", pb::ExecDone::default()));
        t.add(&done("cn2", pb::ExecDone::default()));
        t.add(&done(
            "cn3",
            pb::ExecDone {
                exit_code: 2,
                ..Default::default()
            },
        ));
        t.add(&done(
            "cn4",
            pb::ExecDone {
                exit_code: 137,
                signal: 9,
                timed_out: true,
                ..Default::default()
            },
        ));
        t.add(&done(
            "cn5",
            pb::ExecDone {
                error: "/bin/x: not found".into(),
                ..Default::default()
            },
        ));
        t.add(&unreachable("cn6", "not connected"));
        t.add(&unreachable("cn7", "not connected"));
        assert_eq!(
            t.summary(),
            "2 ok; exit 2: cn3 (1); timed out: cn4 (1); unreachable: cn[6-7] (2); could not \
             run: cn5 (1)"
        );
    }
}
