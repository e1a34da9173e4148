//! The rollout engine: one task that owns the current rollout, plans it
//! (`plan::plan`) on every change of the fleet and once a second, and
//! carries out the actions. Each step a node moves to is committed to the
//! store before the engine acts on it, so after a crash the next plan starts
//! from what was stored: a node whose reboot was ordered is never ordered
//! again for the same boot (the order names the boot, and the agent refuses
//! an order for a boot it no longer runs).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use dfleet_proto::domain::{EventKind, GenerationRef, NodeState};
use dfleet_provisioner::window::{self, Window};
use jiff::Timestamp;
use tokio::sync::{mpsc, oneshot};

use super::plan::{self, Action, NodeView, Rollout, RolloutNode, State, Step};
use super::record::{PolicySpec, command_for, node_from_row, node_row};
use crate::boot::BootWriter;
use crate::fleet::{Command, FleetHandle};
use crate::store::{RolloutNodeRow, RolloutRow, Store, Write};

/// How long a drain, drained-check or undrain command may run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// How often a drained check runs for one node.
const CHECK_EVERY: Duration = Duration::from_secs(10);

/// How long after the coordinator starts a node that was connected before
/// is taken to be reconnecting rather than unreachable.
const RECONNECT_GRACE: Duration = Duration::from_secs(60);

/// The settings key of the freeze switch; its value is who froze.
const FROZEN: &str = "reboots_frozen";

/// A request to the engine.
pub enum Request {
    Start {
        spec: Box<PolicySpec>,
        actor: String,
        reply: oneshot::Sender<Result<String, String>>,
    },
    Status {
        reply: oneshot::Sender<StatusView>,
    },
    Control {
        action: String,
        actor: String,
        reply: oneshot::Sender<Result<String, String>>,
    },
    History {
        reply: oneshot::Sender<Vec<RolloutRow>>,
    },
    Freeze {
        frozen: bool,
        actor: String,
        reply: oneshot::Sender<String>,
    },
}

/// The current (or last) rollout as `rollout status` shows it.
#[derive(Debug, Clone)]
pub struct StatusView {
    pub rollout: Option<(RolloutRow, Vec<RolloutNodeRow>)>,
    pub frozen_by: String,
    pub window_open: bool,
    pub window_opens: Option<Timestamp>,
}

#[derive(Clone, Debug)]
pub struct EngineHandle {
    tx: mpsc::Sender<Request>,
}

impl EngineHandle {
    pub async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<T, tonic::Status> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| tonic::Status::unavailable("the rollout engine has stopped"))?;
        rx.await
            .map_err(|_| tonic::Status::unavailable("the rollout engine has stopped"))
    }
}

/// The rollout being carried out, as loaded or started.
struct Active {
    row: RolloutRow,
    spec: PolicySpec,
    rollout: Rollout,
    /// Nodes the rollout drained (and so undrains).
    drained: HashSet<String>,
    /// When each node's drained check last ran.
    checked: HashMap<String, tokio::time::Instant>,
}

pub struct Engine {
    fleet: FleetHandle,
    store: Store,
    boot: Arc<BootWriter>,
    /// The hosts a rollout never reboots: this coordinator's addresses.
    own_ips: Vec<IpAddr>,
    active: Option<Active>,
    history: Vec<RolloutRow>,
    frozen_by: Option<String>,
    next_id: u64,
    /// When this coordinator run started.
    started: Timestamp,
}

impl Engine {
    /// The engine with what the store kept: every rollout, the nodes of the
    /// unfinished one, and the freeze switch.
    pub fn new(
        fleet: FleetHandle,
        store: Store,
        boot: Arc<BootWriter>,
        own_ips: Vec<IpAddr>,
        rollouts: Vec<RolloutRow>,
        nodes: Vec<RolloutNodeRow>,
        settings: &HashMap<String, String>,
    ) -> Engine {
        let next_id = rollouts.iter().map(|r| r.id).max().unwrap_or(0) + 1;
        let active = rollouts
            .iter()
            .rev()
            .find(|r| !matches!(r.state.as_str(), "completed" | "aborted"))
            .and_then(|row| match load(row, &nodes) {
                Ok(a) => Some(a),
                Err(e) => {
                    tracing::error!(rollout = row.id, error = %e, "cannot resume the rollout");
                    None
                }
            });
        Engine {
            fleet,
            store,
            boot,
            own_ips,
            active,
            history: rollouts,
            frozen_by: settings.get(FROZEN).cloned(),
            next_id,
            started: Timestamp::now(),
        }
    }

    pub fn spawn(mut self) -> EngineHandle {
        let (tx, mut rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut events = match self.fleet.ask(|reply| Command::Subscribe { reply }).await {
                Ok((_, rx)) => rx,
                Err(_) => return,
            };
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    req = rx.recv() => match req {
                        Some(req) => self.handle(req).await,
                        None => return,
                    },
                    ev = events.recv() => match ev {
                        Ok(e) if moves_nodes(e.kind) => self.step().await,
                        Ok(_) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => self.step().await,
                        Err(_) => return,
                    },
                    _ = tick.tick() => self.step().await,
                }
            }
        });
        EngineHandle { tx }
    }

    async fn handle(&mut self, req: Request) {
        match req {
            Request::Start { spec, actor, reply } => {
                let r = self.start(*spec, &actor).await;
                // The first step runs before the answer, so what `rollout
                // status` shows next already follows the policy.
                if r.is_ok() {
                    self.step().await;
                }
                let _ = reply.send(r);
            }
            Request::Status { reply } => {
                let now = Timestamp::now();
                let (window_open, window_opens) = match &self.active {
                    Some(a) => (
                        a.rollout.policy.window.is_open(now),
                        a.rollout.policy.window.next_open(now),
                    ),
                    None => (true, None),
                };
                let _ = reply.send(StatusView {
                    rollout: self.active.as_ref().map(|a| (a.row.clone(), rows(a))),
                    frozen_by: self.frozen_by.clone().unwrap_or_default(),
                    window_open,
                    window_opens,
                });
            }
            Request::Control {
                action,
                actor,
                reply,
            } => {
                let r = self.control(&action, &actor).await;
                if r.is_ok() {
                    self.step().await;
                }
                let _ = reply.send(r);
            }
            Request::History { reply } => {
                let mut h = self.history.clone();
                h.reverse();
                let _ = reply.send(h);
            }
            Request::Freeze {
                frozen,
                actor,
                reply,
            } => {
                let text = if frozen {
                    self.frozen_by = Some(actor.clone());
                    self.store
                        .write(Write::Setting(FROZEN.into(), Some(actor.clone())));
                    self.record(EventKind::RebootsFrozen, "", "no new reboot starts", &actor)
                        .await;
                    "reboots frozen: no new reboot starts until `dfleet reboots thaw`".to_string()
                } else {
                    self.frozen_by = None;
                    self.store.write(Write::Setting(FROZEN.into(), None));
                    self.record(EventKind::RebootsThawed, "", "reboots may start", &actor)
                        .await;
                    "reboots thawed".to_string()
                };
                if let Err(e) = self.store.commit().await {
                    let _ = reply.send(format!("{text}, but storing it failed: {e}"));
                } else {
                    let _ = reply.send(text);
                }
            }
        }
    }

    /// Records an event through the fleet task, in the order they happen.
    async fn record(&self, kind: EventKind, node: &str, detail: impl Into<String>, actor: &str) {
        let cmd = Command::Record {
            kind,
            node: node.to_string(),
            detail: detail.into(),
            actor: actor.to_string(),
        };
        let _ = self.fleet.send(cmd).await;
    }

    /// Validates and stores a new rollout.
    async fn start(&mut self, spec: PolicySpec, actor: &str) -> Result<String, String> {
        if let Some(a) = &self.active
            && matches!(
                a.rollout.state,
                State::Running | State::Paused { .. } | State::Aborting
            )
        {
            return Err(format!(
                "rollout {} ({}) is {}: abort it or let it finish first",
                a.row.id,
                what(&a.row.target),
                a.row.state
            ));
        }
        let (inv, assignments) = self
            .fleet
            .ask(|reply| Command::BootInputs { reply })
            .await
            .map_err(|s| s.message().to_string())?;
        let mut spec = spec;
        let target: Option<GenerationRef> = if spec.target.is_empty() {
            None
        } else {
            Some(
                spec.target
                    .parse()
                    .map_err(|_| format!("{:?} is not IMAGE:GEN", spec.target))?,
            )
        };
        if let Some(t) = &target {
            crate::boot::check_bootable(&self.fleet, t)
                .await
                .map_err(|s| s.message().to_string())?;
        } else if spec.nodes.trim().is_empty() {
            return Err("a reboot needs a node set".into());
        }
        // The window is stored as its text, so editing cluster.toml does not
        // change a running rollout.
        let w: Window = if spec.window.trim().is_empty() {
            Window::always()
        } else {
            window::resolve(&spec.window, &inv.windows).map_err(|e| format!("--window: {e}"))?
        };
        spec.window = w.to_string();
        let policy = spec.policy()?;
        let names: Vec<String> = if spec.nodes.trim().is_empty() {
            inv.nodes
                .iter()
                .filter(|n| {
                    let image = target.as_ref().map_or("", |t| t.image.as_str());
                    assignments
                        .get(n.name.as_str())
                        .map_or(n.image == image, |g| g.image == image)
                })
                .map(|n| n.name.to_string())
                .collect()
        } else {
            let names = self
                .fleet
                .resolve(&spec.nodes)
                .await
                .map_err(|s| s.message().to_string())?;
            let unknown: Vec<&str> = names
                .iter()
                .filter(|n| inv.node(n).is_none())
                .map(String::as_str)
                .collect();
            if !unknown.is_empty() {
                return Err(format!("not in the inventory: {}", unknown.join(", ")));
            }
            names
        };
        if names.is_empty() {
            return Err(format!("no node for {}", what(&target)));
        }
        let views = self.views(&names).await?;
        // Hosts a rollout never reboots.
        let mut protected: Vec<(IpAddr, &str)> = self
            .own_ips
            .iter()
            .map(|ip| (*ip, "the coordinator's host"))
            .collect();
        if let Some(nfs) = &inv.nfs {
            protected.push((IpAddr::V4(nfs.server), "the NFS server's host"));
            protected.push((IpAddr::V4(nfs.management_host), "the management host"));
        }
        let ordered = plan::order(&names, &views, policy.order);
        let mut nodes = Vec::new();
        let mut canaries = 0;
        for name in ordered {
            let entry = inv.node(&name).expect("checked above");
            let v = views.get(&name).cloned().unwrap_or_default();
            let skip = protected
                .iter()
                .find(|(ip, _)| IpAddr::V4(entry.ip) == *ip)
                .map(|(_, why)| format!("{why} is never rebooted by a rollout"))
                .or_else(|| {
                    target.as_ref().and_then(|t| {
                        (v.booted.as_ref() == Some(t)
                            && assignments.get(&name) == Some(t)
                            && v.ready)
                            .then(|| format!("runs {t} already"))
                    })
                });
            let canary = skip.is_none() && canaries < policy.canary;
            canaries += usize::from(canary);
            nodes.push(RolloutNode {
                name: name.clone(),
                step: match skip {
                    Some(reason) => Step::Skipped { reason },
                    None => Step::Pending,
                },
                canary,
                wave: 0,
                previous: assignments.get(&name).cloned(),
                boot_id: v.boot_id.clone(),
                forgiven: false,
                ordered: false,
            });
        }
        let id = self.next_id;
        self.next_id += 1;
        let now_ms = Timestamp::now().as_millisecond();
        let row = RolloutRow {
            id,
            target: target.clone(),
            policy: serde_json::to_string(&spec).map_err(|e| e.to_string())?,
            state: "running".into(),
            reason: String::new(),
            actor: actor.to_string(),
            created_ms: now_ms,
            updated_ms: now_ms,
        };
        self.store.write(Write::Rollout(row.clone()));
        for (seq, n) in nodes.iter().enumerate() {
            self.store
                .write(Write::RolloutNode(node_row(id, seq as u32, n, false)));
        }
        if let Err(e) = self.store.commit().await {
            // Not taken. Should the writes be held for a full disk and
            // stored later, the rollout is stored as aborted after them.
            self.store.write(Write::Rollout(RolloutRow {
                state: "aborted".into(),
                reason: format!("it could not be stored when it started: {e}"),
                ..row
            }));
            return Err(format!("storing the rollout: {e}"));
        }
        let skipped = nodes
            .iter()
            .filter(|n| matches!(n.step, Step::Skipped { .. }))
            .count();
        let detail = format!(
            "rollout {id} ({}): {} nodes ({skipped} skipped), canary {}, batch {}, max-unavailable {}, window {}",
            what(&target),
            nodes.len(),
            policy.canary,
            policy.batch,
            policy.max_unavailable,
            policy.window
        );
        self.record(EventKind::Rollout, "", format!("started {detail}"), actor)
            .await;
        self.history.push(row.clone());
        self.active = Some(Active {
            row,
            spec,
            rollout: Rollout {
                policy,
                state: State::Running,
                nodes,
            },
            drained: HashSet::new(),
            checked: HashMap::new(),
        });
        Ok(detail)
    }

    async fn control(&mut self, action: &str, actor: &str) -> Result<String, String> {
        let Some(a) = &mut self.active else {
            return Err("no rollout to control".into());
        };
        let id = a.row.id;
        let state = match (action, &a.rollout.state) {
            ("pause", State::Running) => State::Paused {
                reason: format!("paused by {actor}"),
            },
            ("resume", State::Paused { .. }) => {
                // The failures a human has seen no longer count.
                for (seq, n) in a.rollout.nodes.iter_mut().enumerate() {
                    if matches!(n.step, Step::Failed { .. }) && !n.forgiven {
                        n.forgiven = true;
                        let drained = a.drained.contains(&n.name);
                        self.store
                            .write(Write::RolloutNode(node_row(id, seq as u32, n, drained)));
                    }
                }
                State::Running
            }
            ("abort", State::Running | State::Paused { .. }) => State::Aborting,
            ("pause" | "resume" | "abort", s) => {
                return Err(format!(
                    "rollout {id} is {}: cannot {action} it",
                    state_name(s)
                ));
            }
            _ => return Err(format!("{action:?}: expected pause, resume or abort")),
        };
        self.set_state(state, actor).await?;
        Ok(format!("rollout {id}: {action}d"))
    }

    async fn set_state(&mut self, state: State, actor: &str) -> Result<(), String> {
        let Some(a) = &mut self.active else {
            return Ok(());
        };
        let before = (a.rollout.state.clone(), a.row.clone());
        a.rollout.state = state;
        a.row.state = state_name(&a.rollout.state).into();
        a.row.reason = match &a.rollout.state {
            State::Paused { reason } => reason.clone(),
            _ => String::new(),
        };
        a.row.updated_ms = Timestamp::now().as_millisecond();
        self.store.write(Write::Rollout(a.row.clone()));
        if let Err(e) = self.store.commit().await {
            // Not stored, so not taken; held writes (a full disk) end on
            // the state kept.
            if let Some(a) = &mut self.active {
                (a.rollout.state, a.row) = before;
                self.store.write(Write::Rollout(a.row.clone()));
            }
            return Err(format!("storing the rollout's state: {e}"));
        }
        let Some(a) = &self.active else {
            return Ok(());
        };
        if let Some(h) = self.history.iter_mut().find(|h| h.id == a.row.id) {
            *h = a.row.clone();
        }
        let detail = format!(
            "rollout {} ({}): {}{}",
            a.row.id,
            what(&a.row.target),
            a.row.state,
            if a.row.reason.is_empty() {
                String::new()
            } else {
                format!(" ({})", a.row.reason)
            }
        );
        self.record(EventKind::Rollout, "", detail, actor).await;
        Ok(())
    }

    /// The planner's view of `names`.
    async fn views(&self, names: &[String]) -> Result<HashMap<String, NodeView>, String> {
        let views = self
            .fleet
            .ask(|reply| Command::Status {
                names: Some(names.to_vec()),
                reply,
            })
            .await
            .map_err(|s| s.message().to_string())?;
        let started_ms = self.started.as_millisecond();
        let settling_window =
            Timestamp::now().as_millisecond() - started_ms < RECONNECT_GRACE.as_millis() as i64;
        Ok(views
            .into_iter()
            .map(|v| {
                let report = v.report.as_ref();
                (
                    v.entry.name.to_string(),
                    NodeView {
                        connected: v.connected,
                        ready: v.connected && v.state == NodeState::Ready,
                        stream_boot_id: if v.connected {
                            v.boot_id.clone()
                        } else {
                            String::new()
                        },
                        settling: !v.connected
                            && settling_window
                            && v.last_seen_ms > 0
                            && v.last_seen_ms < started_ms,
                        boot_id: report
                            .map(|r| r.identity.boot_id.clone())
                            .unwrap_or_default(),
                        booted: report.and_then(|r| r.booted.stamp.clone()),
                        overlay_used: report.map_or(0, |r| r.overlay.used_bytes),
                    },
                )
            })
            .collect())
    }

    /// One planning step, and its actions.
    async fn step(&mut self) {
        // No step could be stored before it is acted on (a full disk): the
        // rollout waits, as if paused, until the store can be written. (The
        // store logs why; this would log it again every second.)
        if self.store.refusing().is_some() {
            return;
        }
        let frozen = self.frozen_by.is_some();
        let Some(a) = &self.active else {
            return;
        };
        if matches!(a.rollout.state, State::Completed | State::Aborted) {
            return;
        }
        let names: Vec<String> = a.rollout.nodes.iter().map(|n| n.name.clone()).collect();
        let views = match self.views(&names).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "rollout: reading the fleet failed");
                return;
            }
        };
        let actions = plan::plan(&a.rollout, &views, frozen, Timestamp::now());
        for action in actions {
            if let Err(e) = self.act(action, &views).await {
                // Not stored: nothing was done; the next step plans again.
                tracing::error!(error = %e, "rollout: an action could not be stored");
                return;
            }
        }
    }

    /// Moves `node` to `step`, committed to the store before the caller
    /// acts on it.
    async fn move_to(&mut self, node: &str, step: Step, wave: Option<u32>) -> Result<(), String> {
        let a = self.active.as_mut().expect("a rollout is active");
        let id = a.row.id;
        let (seq, n) = a
            .rollout
            .nodes
            .iter_mut()
            .enumerate()
            .find(|(_, n)| n.name == node)
            .ok_or_else(|| format!("{node} is not in rollout {id}"))?;
        let before = (n.step.clone(), n.wave);
        n.step = step;
        if let Some(w) = wave {
            n.wave = w;
        }
        let row = node_row(id, seq as u32, n, a.drained.contains(node));
        let detail = match &n.step {
            Step::Failed { reason } | Step::Skipped { reason } => {
                format!("rollout {id}: {} ({reason})", n.step.name())
            }
            s => format!("rollout {id}: {}", s.name()),
        };
        self.store.write(Write::RolloutNode(row));
        if let Err(e) = self.store.commit().await {
            // Not stored, so not taken: memory stays what the store holds,
            // and held writes (a full disk) end on the step kept.
            if let Some(a) = self.active.as_mut()
                && let Some(n) = a.rollout.nodes.iter_mut().find(|n| n.name == node)
            {
                (n.step, n.wave) = before;
                let row = node_row(id, seq as u32, n, a.drained.contains(node));
                self.store.write(Write::RolloutNode(row));
            }
            return Err(format!("storing {node}'s step: {e}"));
        }
        self.record(EventKind::RolloutStep, node, detail, "").await;
        Ok(())
    }

    async fn act(
        &mut self,
        action: Action,
        views: &HashMap<String, NodeView>,
    ) -> Result<(), String> {
        let now = Timestamp::now();
        let a = self.active.as_ref().expect("a rollout is active");
        let spec = a.spec.clone();
        let target = a.rollout.policy.target.clone();
        let actor = format!("rollout:{}", a.row.id);
        match action {
            Action::StartDrain { node, wave } => {
                if spec.drain_cmd.is_empty() {
                    return self.move_to(&node, Step::Switching, Some(wave)).await;
                }
                // A node drained by someone else stays so after the rollout.
                let before = if spec.is_drained.is_empty() {
                    Ok(false)
                } else {
                    exits_zero(&command_for(&spec.is_drained, &node)).await
                };
                let before = match before {
                    Ok(b) => b,
                    Err(e) => {
                        return self
                            .move_to(
                                &node,
                                Step::Failed {
                                    reason: format!("is-drained command: {e}"),
                                },
                                Some(wave),
                            )
                            .await;
                    }
                };
                if before {
                    self.record(
                        EventKind::RolloutStep,
                        &node,
                        "drained before the rollout: not drained again, nor undrained after",
                        &actor,
                    )
                    .await;
                } else {
                    self.active
                        .as_mut()
                        .expect("active")
                        .drained
                        .insert(node.clone());
                }
                self.move_to(&node, Step::Draining { since: now }, Some(wave))
                    .await?;
                if before {
                    if spec.drained_check.is_empty() {
                        return self.move_to(&node, Step::Switching, None).await;
                    }
                    return Ok(());
                }
                if let Err(e) = run(&command_for(&spec.drain_cmd, &node)).await {
                    return self
                        .move_to(
                            &node,
                            Step::Failed {
                                reason: format!("drain command: {e}"),
                            },
                            None,
                        )
                        .await;
                }
                if spec.drained_check.is_empty() {
                    return self.move_to(&node, Step::Switching, None).await;
                }
                Ok(())
            }
            Action::CheckDrained { node } => {
                let a = self.active.as_mut().expect("active");
                let due = a
                    .checked
                    .get(&node)
                    .is_none_or(|t| t.elapsed() >= CHECK_EVERY);
                if !due {
                    return Ok(());
                }
                a.checked.insert(node.clone(), tokio::time::Instant::now());
                match run(&command_for(&spec.drained_check, &node)).await {
                    Ok(()) => self.move_to(&node, Step::Switching, None).await,
                    Err(e) => {
                        tracing::info!(node, check = %e, "rollout: not drained yet");
                        Ok(())
                    }
                }
            }
            Action::Switch { node, power } => {
                // The assignment and its boot files, through the single
                // writer (a plain reboot keeps the node's assignment).
                let assigned = async {
                    let Some(target) = target.clone() else {
                        return Ok(());
                    };
                    let held = self.boot.hold().await;
                    self.fleet
                        .ask(|reply| Command::Assign {
                            names: vec![node.clone()],
                            target,
                            actor: actor.clone(),
                            reply,
                        })
                        .await
                        .map_err(|s| s.message().to_string())??;
                    match crate::boot::apply_held(&self.fleet, &held, &actor).await {
                        Ok(_) => Ok(()),
                        // No boot network in the inventory: nothing to write.
                        Err(s) if s.code() == tonic::Code::FailedPrecondition => Ok(()),
                        Err(s) => Err(format!("writing the boot files: {}", s.message())),
                    }
                }
                .await;
                if let Err(e) = assigned {
                    return self
                        .move_to(
                            &node,
                            Step::Failed {
                                reason: format!("assigning {}: {e}", what(&target)),
                            },
                            None,
                        )
                        .await;
                }
                // The boot being ended: the node is back once it reports
                // another one.
                let boot_id = views
                    .get(&node)
                    .map(|v| v.boot_id.clone())
                    .unwrap_or_default();
                {
                    let a = self.active.as_mut().expect("active");
                    if let Some(n) = a.rollout.nodes.iter_mut().find(|n| n.name == node) {
                        n.boot_id = boot_id.clone();
                    }
                }
                if power {
                    return self.power_cycle(&node, now, &actor).await;
                }
                self.move_to(&node, Step::Rebooting { since: now, power }, None)
                    .await?;
                self.rearm(&node, &actor).await?;
                let to = self.back_on(&node, views);
                self.order_reboot(&node, to, &boot_id, &actor).await;
                Ok(())
            }
            Action::RepeatReboot { node } => {
                let boot_id = self
                    .active
                    .as_ref()
                    .and_then(|a| a.rollout.nodes.iter().find(|n| n.name == node))
                    .map(|n| n.boot_id.clone())
                    .unwrap_or_default();
                self.rearm(&node, &actor).await?;
                let to = self.back_on(&node, views);
                self.order_reboot(&node, to, &boot_id, &actor).await;
                // Counted from now, so the order is not repeated every step.
                self.move_to(
                    &node,
                    Step::Rebooting {
                        since: now,
                        power: false,
                    },
                    None,
                )
                .await
            }
            Action::ToBooting { node } => {
                self.move_to(&node, Step::Booting { since: now }, None)
                    .await
            }
            Action::ToDone { node } => {
                let drained = self
                    .active
                    .as_ref()
                    .is_some_and(|a| a.drained.contains(&node));
                if drained
                    && !spec.undrain_cmd.is_empty()
                    && let Err(e) = run(&command_for(&spec.undrain_cmd, &node)).await
                {
                    self.record(
                        EventKind::RolloutStep,
                        &node,
                        format!("undrain command: {e}; undrain it by hand"),
                        &actor,
                    )
                    .await;
                }
                self.move_to(&node, Step::Done, None).await
            }
            Action::ToFailed { node, reason } => {
                self.move_to(&node, Step::Failed { reason }, None).await
            }
            Action::Revert { node } => {
                let a = self.active.as_ref().expect("active");
                let n = a.rollout.nodes.iter().find(|n| n.name == node);
                let switched = n.is_some_and(|n| n.step == Step::Switching);
                let previous = n.and_then(|n| n.previous.clone());
                let drained = a.drained.contains(&node);
                if switched && let Some(previous) = previous {
                    let held = self.boot.hold().await;
                    let _ = self
                        .fleet
                        .ask(|reply| Command::Assign {
                            names: vec![node.clone()],
                            target: previous,
                            actor: actor.clone(),
                            reply,
                        })
                        .await;
                    let _ = crate::boot::apply_held(&self.fleet, &held, &actor).await;
                }
                if drained && !spec.undrain_cmd.is_empty() {
                    let _ = run(&command_for(&spec.undrain_cmd, &node)).await;
                }
                self.move_to(&node, Step::Reverted, None).await
            }
            Action::Pause { reason } => self.set_state(State::Paused { reason }, "").await,
            Action::Complete => self.set_state(State::Completed, "").await,
            Action::Aborted => self.set_state(State::Aborted, "").await,
        }
    }

    /// The node comes back with a new boot and a new key: the reboot the
    /// rollout orders allows it one new enrollment, stored before the order
    /// goes out (so a coordinator killed meanwhile still lets it back in).
    async fn rearm(&self, node: &str, actor: &str) -> Result<(), String> {
        self.fleet
            .ask(|reply| Command::Rearm {
                node: node.to_string(),
                actor: actor.to_string(),
                reply,
            })
            .await
            .map_err(|s| s.message().to_string())??;
        self.store
            .commit()
            .await
            .map_err(|e| format!("storing {node}'s rearm: {e}"))
    }

    /// The generation `node` must come back on: the rollout's target, else
    /// its assignment, else what it runs.
    fn back_on(&self, node: &str, views: &HashMap<String, NodeView>) -> Option<GenerationRef> {
        let a = self.active.as_ref()?;
        a.rollout
            .policy
            .target
            .clone()
            .or_else(|| {
                a.rollout
                    .nodes
                    .iter()
                    .find(|n| n.name == node)
                    .and_then(|n| n.previous.clone())
            })
            .or_else(|| views.get(node).and_then(|v| v.booted.clone()))
    }

    /// Reboots an unreachable node with the inventory's power command: the
    /// step is stored first, so a restart never runs it twice for one step.
    async fn power_cycle(&mut self, node: &str, now: Timestamp, actor: &str) -> Result<(), String> {
        let order = match self.fleet.ask(|reply| Command::BootInputs { reply }).await {
            Ok((inv, _)) => match (&inv.power, inv.node(node)) {
                (Some(config), Some(entry)) => crate::power::order_for(config, entry),
                (None, _) => Err("unreachable, and no [power] command is configured".into()),
                (_, None) => Err("no longer in the inventory".into()),
            },
            Err(s) => Err(s.message().to_string()),
        };
        let order = match order {
            Ok(o) => o,
            Err(reason) => {
                return self.move_to(node, Step::Failed { reason }, None).await;
            }
        };
        self.move_to(
            node,
            Step::Rebooting {
                since: now,
                power: true,
            },
            None,
        )
        .await?;
        self.rearm(node, actor).await?;
        match crate::power::run(&order).await {
            Ok(()) => {
                self.record(
                    EventKind::RolloutStep,
                    node,
                    format!("unreachable: power-cycled with `{}`", order.shown()),
                    actor,
                )
                .await;
                Ok(())
            }
            Err(e) => {
                self.move_to(
                    node,
                    Step::Failed {
                        reason: format!("unreachable, and the power command failed: {e}"),
                    },
                    None,
                )
                .await
            }
        }
    }

    async fn order_reboot(
        &mut self,
        node: &str,
        target: Option<GenerationRef>,
        boot_id: &str,
        actor: &str,
    ) {
        let Some(target) = target else {
            tracing::warn!(node, "rollout: no generation to reboot towards");
            return;
        };
        let sent = self
            .fleet
            .ask(|reply| Command::Reboot {
                node: node.to_string(),
                target,
                boot_id: boot_id.to_string(),
                actor: actor.to_string(),
                reply,
            })
            .await;
        // Only an order handed to the node's stream counts as given: one
        // that was not is given again once the node is back.
        let ordered = match sent {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::warn!(node, error = %e, "rollout: reboot order not sent");
                false
            }
            Err(s) => {
                tracing::warn!(node, error = %s, "rollout: reboot order not sent");
                false
            }
        };
        if let Some(n) = self
            .active
            .as_mut()
            .and_then(|a| a.rollout.nodes.iter_mut().find(|n| n.name == node))
        {
            n.ordered = ordered;
        }
    }
}

/// What a rollout moves nodes to, for messages.
pub fn what(target: &Option<GenerationRef>) -> String {
    match target {
        Some(t) => format!("onto {t}"),
        None => "a reboot, each node back on its assigned generation".into(),
    }
}

/// Events after which the plan may change at once.
fn moves_nodes(kind: EventKind) -> bool {
    matches!(
        kind,
        EventKind::Connected
            | EventKind::Disconnected
            | EventKind::Ready
            | EventKind::NotReady
            | EventKind::Stale
            | EventKind::Lost
    )
}

pub fn state_name(s: &State) -> &'static str {
    match s {
        State::Running => "running",
        State::Paused { .. } => "paused",
        State::Aborting => "aborting",
        State::Completed => "completed",
        State::Aborted => "aborted",
    }
}

fn load(row: &RolloutRow, nodes: &[RolloutNodeRow]) -> Result<Active, String> {
    let spec: PolicySpec = serde_json::from_str(&row.policy)
        .map_err(|e| format!("rollout {}: its policy does not parse: {e}", row.id))?;
    let policy = spec.policy()?;
    let mut drained = HashSet::new();
    let mut list = Vec::new();
    for r in nodes.iter().filter(|n| n.rollout == row.id) {
        if r.drained {
            drained.insert(r.node.clone());
        }
        list.push(node_from_row(r)?);
    }
    let state = match row.state.as_str() {
        "running" => State::Running,
        "paused" => State::Paused {
            reason: row.reason.clone(),
        },
        "aborting" => State::Aborting,
        other => return Err(format!("rollout {}: state {other:?}", row.id)),
    };
    Ok(Active {
        row: row.clone(),
        spec,
        rollout: Rollout {
            policy,
            state,
            nodes: list,
        },
        drained,
        checked: HashMap::new(),
    })
}

fn rows(a: &Active) -> Vec<RolloutNodeRow> {
    a.rollout
        .nodes
        .iter()
        .enumerate()
        .map(|(seq, n)| node_row(a.row.id, seq as u32, n, a.drained.contains(&n.name)))
        .collect()
}

/// Whether `argv` exits 0 (true) or with another status (false).
async fn exits_zero(argv: &[String]) -> Result<bool, String> {
    let o = crate::argv::output(argv, None, COMMAND_TIMEOUT).await?;
    Ok(o.status.success())
}

/// Runs an argument vector (never through a shell); an error unless it
/// exits 0.
async fn run(argv: &[String]) -> Result<(), String> {
    crate::argv::succeed(argv, None, COMMAND_TIMEOUT).await
}
