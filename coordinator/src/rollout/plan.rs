//! The planning step of a rollout: a pure function of the rollout as stored,
//! the fleet as the coordinator sees it, the freeze switch and the time, to
//! the actions to take now. The executor writes each resulting step to the
//! store before it acts on it, so a coordinator killed at any moment plans
//! again from the store and neither repeats nor skips a step.
//!
//! A node walks `Pending → Draining → Switching → Rebooting → Booting →
//! Done`, or ends `Failed`; nodes that a rollout must not or need not reboot
//! are `Skipped` when it is created. The planner never changes a step itself:
//! it returns [`Action`]s naming the step each node moves to and what to do.

use std::collections::HashMap;
use std::time::Duration;

use dfleet_proto::domain::GenerationRef;
use dfleet_provisioner::window::Window;
use jiff::Timestamp;

/// A count of nodes given as a number or a share of the rollout's nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    Count(usize),
    /// 1–100 percent, rounded down but at least one node.
    Percent(u8),
}

impl Amount {
    /// The number of nodes this amount is of `total`.
    pub fn of(self, total: usize) -> usize {
        match self {
            Amount::Count(n) => n,
            Amount::Percent(p) => (total * usize::from(p) / 100).max(1),
        }
    }
}

/// Which nodes go first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// The node whose overlay uses the most RAM first: a reboot frees it.
    FullestOverlayFirst,
    Name,
}

/// How a rollout proceeds; fixed when it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// The generation every node moves to; `None` for a plain reboot, after
    /// which each node must come back on the generation it is assigned.
    pub target: Option<GenerationRef>,
    /// The first this many nodes (in order) go alone and must all be done
    /// before any batch starts.
    pub canary: usize,
    /// How many nodes start per step; the next step starts when every node
    /// of this one is done or failed.
    pub batch: Amount,
    /// The most nodes of the rollout not serving at once: those it has in
    /// flight and those down for any other reason (not ready, lost).
    pub max_unavailable: Amount,
    /// New nodes start only while it is open; nodes in flight finish.
    pub window: Window,
    /// Whether a drain command runs before the reboot, and a check after it.
    pub drain: bool,
    pub drained_check: bool,
    pub drain_timeout: Duration,
    /// From the reboot order until the node must report the target
    /// generation and be ready.
    pub ready_timeout: Duration,
    /// More failed nodes than this pause the rollout.
    pub max_failures: usize,
    pub order: Order,
}

/// Where one node is in the rollout. Times are when the node entered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Pending,
    /// The drain command ran; the drained check is polled.
    Draining {
        since: Timestamp,
    },
    /// Its assignment is being set to the target generation.
    Switching,
    /// The reboot is ordered (through its agent or its power command); the
    /// node still runs the boot it had (`boot_id`).
    Rebooting {
        since: Timestamp,
        power: bool,
    },
    /// It went away or came back with a new boot; waiting for it to report
    /// the target generation and be ready.
    Booting {
        since: Timestamp,
    },
    Done,
    Failed {
        reason: String,
    },
    /// Never rebooted by this rollout, with the reason (already on the
    /// target, the coordinator's or the NFS server's host).
    Skipped {
        reason: String,
    },
    /// Aborted before its reboot: assigned its old generation again.
    Reverted,
}

impl Step {
    /// The node is finished with this rollout.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Step::Done | Step::Failed { .. } | Step::Skipped { .. } | Step::Reverted
        )
    }

    /// The node is being worked on: it does not serve.
    pub fn in_flight(&self) -> bool {
        matches!(
            self,
            Step::Draining { .. } | Step::Switching | Step::Rebooting { .. } | Step::Booting { .. }
        )
    }

    /// Short name for status and the store.
    pub fn name(&self) -> &'static str {
        match self {
            Step::Pending => "pending",
            Step::Draining { .. } => "draining",
            Step::Switching => "switching",
            Step::Rebooting { .. } => "rebooting",
            Step::Booting { .. } => "booting",
            Step::Done => "done",
            Step::Failed { .. } => "failed",
            Step::Skipped { .. } => "skipped",
            Step::Reverted => "reverted",
        }
    }
}

/// One node of a rollout, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutNode {
    pub name: String,
    pub step: Step,
    pub canary: bool,
    /// The step (wave) it started in; 0 while pending. Canaries are wave 1.
    pub wave: u32,
    /// The generation it was assigned before, to go back to on abort.
    pub previous: Option<GenerationRef>,
    /// The boot it ran when its reboot was ordered; a different boot id is
    /// a node that rebooted.
    pub boot_id: String,
    /// Failed before the last resume: a human saw it, so it no longer
    /// counts against --max-failures or pauses as a failed canary.
    pub forgiven: bool,
    /// This coordinator run sent its reboot order. Not stored: after a
    /// restart nobody knows whether the order went out before the crash, so
    /// it is sent again at once (the order names the boot, so a node that
    /// rebooted already refuses it).
    pub ordered: bool,
}

/// Whether the rollout goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Running,
    /// No new node starts until a human resumes (or aborts); nodes in
    /// flight finish.
    Paused {
        reason: String,
    },
    /// Nodes not yet rebooted go back; the rest finish.
    Aborting,
    Completed,
    Aborted,
}

/// A rollout as the store holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    pub policy: Policy,
    pub state: State,
    /// In rollout order (canaries first).
    pub nodes: Vec<RolloutNode>,
}

/// What the coordinator sees of one node now.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeView {
    /// Its agent's stream is up.
    pub connected: bool,
    /// Its last report passes every readiness check (and is not stale).
    pub ready: bool,
    /// The boot of its last report.
    pub boot_id: String,
    /// The boot its latest stream announced (ahead of its first report).
    pub stream_boot_id: String,
    /// Not connected, but it was before this coordinator started, which was
    /// moments ago: its agent is still to reconnect, not unreachable.
    pub settling: bool,
    /// The generation its last report says it booted.
    pub booted: Option<GenerationRef>,
    /// Upper-layer bytes in use, for `fullest-overlay-first`.
    pub overlay_used: u64,
}

/// What the executor does for one planning step. Each `To…` action names
/// the step the node moves to; the executor stores it before acting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Run the drain command (if any), then → Draining (or straight on to
    /// Switching when there is no drained check).
    StartDrain {
        node: String,
        wave: u32,
    },
    /// Run the drained check; when it passes → Switching.
    CheckDrained {
        node: String,
    },
    /// Assign the target generation through the boot-file writer, then →
    /// Rebooting and order the reboot (`power`: run the power command, the
    /// agent being unreachable).
    Switch {
        node: String,
        power: bool,
    },
    /// Order the reboot again: the order carries the boot id it is for, so
    /// an agent that already rebooted refuses it.
    RepeatReboot {
        node: String,
    },
    /// The node left its old boot → Booting.
    ToBooting {
        node: String,
    },
    /// On the target and ready → run the undrain command if the rollout
    /// drained it, then Done.
    ToDone {
        node: String,
    },
    ToFailed {
        node: String,
        reason: String,
    },
    /// Abort: assign its previous generation again, undrain it if drained →
    /// Reverted.
    Revert {
        node: String,
    },
    Pause {
        reason: String,
    },
    Complete,
    Aborted,
}

/// How long a rebooting node may keep its old boot before its reboot order
/// is sent again (the order or its answer may have been lost, for instance
/// when the coordinator was killed right after storing the step).
pub const REPEAT_REBOOT_AFTER: Duration = Duration::from_secs(120);

fn since(now: Timestamp, t: Timestamp) -> Duration {
    now.duration_since(t).try_into().unwrap_or(Duration::ZERO)
}

/// The planning step.
pub fn plan(
    r: &Rollout,
    fleet: &HashMap<String, NodeView>,
    frozen: bool,
    now: Timestamp,
) -> Vec<Action> {
    let mut actions = Vec::new();
    if matches!(r.state, State::Completed | State::Aborted) {
        return actions;
    }
    let p = &r.policy;
    let unknown = NodeView::default();
    let view = |n: &str| fleet.get(n).unwrap_or(&unknown);

    // Nodes in flight move on whatever the state.
    let mut failed_now = Vec::new();
    for n in &r.nodes {
        let v = view(&n.name);
        let node = n.name.clone();
        match &n.step {
            Step::Draining { since: t } => {
                if r.state == State::Aborting {
                    actions.push(Action::Revert { node });
                } else if since(now, *t) > p.drain_timeout {
                    let reason = format!(
                        "not drained after {}s (--drain-timeout)",
                        p.drain_timeout.as_secs()
                    );
                    failed_now.push(node.clone());
                    actions.push(Action::ToFailed { node, reason });
                } else {
                    actions.push(Action::CheckDrained { node });
                }
            }
            Step::Switching => {
                if r.state == State::Aborting {
                    actions.push(Action::Revert { node });
                } else if !v.settling {
                    actions.push(Action::Switch {
                        node,
                        power: !v.connected,
                    });
                }
            }
            Step::Rebooting { since: t, power } => {
                let waited = since(now, *t);
                let new_boot = |b: &str| !b.is_empty() && b != n.boot_id;
                if new_boot(&v.boot_id) || new_boot(&v.stream_boot_id) {
                    // Back already (perhaps while the coordinator was down).
                    actions.push(Action::ToBooting { node: node.clone() });
                    if let Some(a) = arrived(p, n, v) {
                        if matches!(a, Action::ToFailed { .. }) {
                            failed_now.push(node.clone());
                        }
                        actions.push(a);
                    }
                } else if !v.connected && (n.ordered || *power) {
                    actions.push(Action::ToBooting { node });
                } else if !v.connected {
                    // Restarted since: the node may never have had the
                    // order; it gets it again once its agent is back.
                    if waited > p.ready_timeout {
                        let reason = format!(
                            "unreachable {}s after its reboot was ordered, still on its old boot",
                            waited.as_secs()
                        );
                        failed_now.push(node.clone());
                        actions.push(Action::ToFailed { node, reason });
                    }
                } else if waited > p.ready_timeout {
                    let reason = format!(
                        "still on its old boot {}s after the reboot order",
                        waited.as_secs()
                    );
                    failed_now.push(node.clone());
                    actions.push(Action::ToFailed { node, reason });
                } else if !*power && (!n.ordered || waited > REPEAT_REBOOT_AFTER) {
                    actions.push(Action::RepeatReboot { node });
                }
            }
            Step::Booting { since: t } => {
                // The ready timeout runs from the reboot order; Booting's
                // start is close enough and survives restarts.
                if let Some(a) = arrived(p, n, v) {
                    if matches!(a, Action::ToFailed { .. }) {
                        failed_now.push(node.clone());
                    }
                    actions.push(a);
                } else if v.connected
                    && v.stream_boot_id == n.boot_id
                    && !n.boot_id.is_empty()
                    && since(now, *t) > REPEAT_REBOOT_AFTER
                {
                    // Back on the boot it was ordered to leave: the order
                    // was lost with its stream. Order it again.
                    actions.push(Action::RepeatReboot { node });
                } else if since(now, *t) > p.ready_timeout {
                    let reason = match &v.booted {
                        Some(g) if v.connected => format!(
                            "on {g} but not ready {}s after its reboot (--ready-timeout)",
                            since(now, *t).as_secs()
                        ),
                        _ => format!(
                            "not back {}s after its reboot (--ready-timeout)",
                            since(now, *t).as_secs()
                        ),
                    };
                    failed_now.push(node.clone());
                    actions.push(Action::ToFailed { node, reason });
                }
            }
            Step::Pending if r.state == State::Aborting => {
                actions.push(Action::Revert { node });
            }
            _ => {}
        }
    }

    let counts = |n: &RolloutNode| {
        (matches!(n.step, Step::Failed { .. }) && !n.forgiven) || failed_now.contains(&n.name)
    };
    let failures = r.nodes.iter().filter(|n| counts(n)).count();
    let canary_failed = r.nodes.iter().find(|n| n.canary && counts(n));

    match &r.state {
        State::Aborting => {
            // Done once nothing is left that could still go back or move.
            let left = r.nodes.iter().any(|n| {
                matches!(
                    n.step,
                    Step::Pending | Step::Draining { .. } | Step::Switching
                )
            });
            let moving = r
                .nodes
                .iter()
                .any(|n| matches!(n.step, Step::Rebooting { .. } | Step::Booting { .. }));
            if !left && !moving {
                actions.push(Action::Aborted);
            }
            return actions;
        }
        State::Running => {
            if let Some(c) = canary_failed {
                actions.push(Action::Pause {
                    reason: format!("canary {} failed", c.name),
                });
                return actions;
            }
            if failures > p.max_failures {
                actions.push(Action::Pause {
                    reason: format!(
                        "{failures} nodes failed, more than --max-failures {}",
                        p.max_failures
                    ),
                });
                return actions;
            }
        }
        State::Paused { .. } | State::Completed | State::Aborted => return actions,
    }

    // Finished when every node is.
    let settled = |n: &RolloutNode| n.step.is_terminal() || failed_now.contains(&n.name);
    if r.nodes.iter().all(|n| {
        settled(n)
            || actions
                .iter()
                .any(|a| matches!(a, Action::ToDone { node } if *node == n.name))
    }) {
        actions.push(Action::Complete);
        return actions;
    }

    // New nodes: not while frozen or outside the window, and one wave at a
    // time (the canaries first, as a wave of their own).
    if frozen || !p.window.is_open(now) {
        return actions;
    }
    let wave = r.nodes.iter().map(|n| n.wave).max().unwrap_or(0);
    let wave_open = r
        .nodes
        .iter()
        .any(|n| n.wave == wave && wave > 0 && !settled(n));
    if wave_open {
        return actions;
    }
    let pending: Vec<&RolloutNode> = r.nodes.iter().filter(|n| n.step == Step::Pending).collect();
    let canaries_pending: Vec<&&RolloutNode> = pending.iter().filter(|n| n.canary).collect();
    let (candidates, size): (Vec<&RolloutNode>, usize) = if !canaries_pending.is_empty() {
        (
            canaries_pending.iter().map(|n| **n).collect(),
            canaries_pending.len(),
        )
    } else {
        (pending.clone(), p.batch.of(r.nodes.len()).max(1))
    };

    // Nodes not serving: in flight, or down without the rollout's doing.
    let unavailable = r
        .nodes
        .iter()
        .filter(|n| {
            let v = view(&n.name);
            (n.step.in_flight() && !failed_now.contains(&n.name)) || !(v.connected && v.ready)
        })
        .count();
    let cap = p.max_unavailable.of(r.nodes.len());
    let mut room = cap.saturating_sub(unavailable);
    let mut started = 0;
    for n in candidates {
        if started == size {
            break;
        }
        let v = view(&n.name);
        // A node down already counts as unavailable; rebooting it costs no
        // more room.
        let down = !(v.connected && v.ready);
        if !down {
            if room == 0 {
                continue;
            }
            room -= 1;
        }
        actions.push(Action::StartDrain {
            node: n.name.clone(),
            wave: wave + 1,
        });
        started += 1;
    }
    actions
}

/// What a node that left its old boot has come to: done when it reports
/// the target and is ready, failed when it came back on another generation.
/// Judged only on a report of a new boot: a node that reconnected has its
/// last boot's report until its first new one arrives.
fn arrived(p: &Policy, n: &RolloutNode, v: &NodeView) -> Option<Action> {
    let node = n.name.as_str();
    if !v.connected || v.boot_id.is_empty() || v.boot_id == n.boot_id {
        return None;
    }
    let want = p.target.as_ref().or(n.previous.as_ref());
    match (&v.booted, want) {
        (Some(g), Some(w)) if g != w => Some(Action::ToFailed {
            node: node.into(),
            reason: format!("came back on {g}, not {w}"),
        }),
        (Some(_), _) => v.ready.then(|| Action::ToDone { node: node.into() }),
        (None, _) => None,
    }
}

/// The rollout order of `names`: by name, or fullest overlay first (ties by
/// name), with the first `canary` marked.
pub fn order(names: &[String], fleet: &HashMap<String, NodeView>, order: Order) -> Vec<String> {
    let mut v: Vec<String> = names.to_vec();
    match order {
        Order::Name => v.sort(),
        Order::FullestOverlayFirst => v.sort_by(|a, b| {
            let used = |n: &String| fleet.get(n).map_or(0, |x| x.overlay_used);
            used(b).cmp(&used(a)).then_with(|| a.cmp(b))
        }),
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfleet_proto::domain::Generation;

    fn generation(n: u64) -> GenerationRef {
        GenerationRef {
            image: "compute".into(),
            generation: Generation(n),
        }
    }

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_790_000_000 + s).unwrap()
    }

    fn policy() -> Policy {
        Policy {
            target: Some(generation(8)),
            canary: 0,
            batch: Amount::Count(2),
            max_unavailable: Amount::Count(2),
            window: Window::always(),
            drain: false,
            drained_check: false,
            drain_timeout: Duration::from_secs(600),
            ready_timeout: Duration::from_secs(900),
            max_failures: 0,
            order: Order::Name,
        }
    }

    fn node(name: &str, step: Step) -> RolloutNode {
        RolloutNode {
            name: name.into(),
            step,
            canary: false,
            wave: 0,
            previous: Some(generation(7)),
            boot_id: "old".into(),
            forgiven: false,
            ordered: true,
        }
    }

    fn up(number: u64, boot: &str) -> NodeView {
        NodeView {
            connected: true,
            ready: true,
            boot_id: boot.into(),
            stream_boot_id: boot.into(),
            settling: false,
            booted: Some(generation(number)),
            overlay_used: 0,
        }
    }

    fn rollout(p: Policy, nodes: Vec<RolloutNode>) -> Rollout {
        Rollout {
            policy: p,
            state: State::Running,
            nodes,
        }
    }

    fn fleet(names: &[&str]) -> HashMap<String, NodeView> {
        names
            .iter()
            .map(|n| (n.to_string(), up(7, "old")))
            .collect()
    }

    fn started(a: &[Action]) -> Vec<&str> {
        a.iter()
            .filter_map(|a| match a {
                Action::StartDrain { node, .. } => Some(node.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn amounts_are_counts_or_shares_of_at_least_one() {
        assert_eq!(Amount::Count(3).of(10), 3);
        assert_eq!(Amount::Percent(25).of(10), 2);
        assert_eq!(Amount::Percent(10).of(5), 1);
        assert_eq!(Amount::Percent(100).of(7), 7);
    }

    #[test]
    fn a_batch_starts_up_to_its_size_and_the_next_waits_for_it() {
        let names = ["n1", "n2", "n3", "n4", "n5"];
        let r = rollout(
            policy(),
            names.iter().map(|n| node(n, Step::Pending)).collect(),
        );
        let a = plan(&r, &fleet(&names), false, t(0));
        assert_eq!(started(&a), ["n1", "n2"]);
        assert!(a.contains(&Action::StartDrain {
            node: "n1".into(),
            wave: 1
        }));

        // n1 done, n2 still booting: the wave is open, nothing new starts.
        let mut r = r.clone();
        r.nodes[0].step = Step::Done;
        r.nodes[0].wave = 1;
        r.nodes[1].step = Step::Booting { since: t(10) };
        r.nodes[1].wave = 1;
        let mut f = fleet(&names);
        f.insert("n2".into(), NodeView::default());
        assert_eq!(started(&plan(&r, &f, false, t(20))), Vec::<&str>::new());

        // n2 back on the target and ready: done; the next wave starts.
        f.insert("n2".into(), up(8, "new"));
        let a = plan(&r, &f, false, t(30));
        assert!(a.contains(&Action::ToDone { node: "n2".into() }), "{a:?}");
        r.nodes[1].step = Step::Done;
        let a = plan(&r, &f, false, t(31));
        assert_eq!(started(&a), ["n3", "n4"]);
        assert!(a.contains(&Action::StartDrain {
            node: "n3".into(),
            wave: 2
        }));
    }

    #[test]
    fn max_unavailable_counts_nodes_already_down() {
        let names = ["n1", "n2", "n3", "n4"];
        let mut p = policy();
        p.batch = Amount::Count(4);
        p.max_unavailable = Amount::Count(2);
        let r = rollout(p, names.iter().map(|n| node(n, Step::Pending)).collect());
        let mut f = fleet(&names);
        // n4 is down on its own: one unit of room left, and n4 itself may
        // be rebooted without using room.
        f.insert(
            "n4".into(),
            NodeView {
                connected: false,
                ..up(7, "old")
            },
        );
        assert_eq!(started(&plan(&r, &f, false, t(0))), ["n1", "n4"]);
        // Two down already: only down nodes start.
        f.insert(
            "n3".into(),
            NodeView {
                ready: false,
                ..up(7, "old")
            },
        );
        assert_eq!(started(&plan(&r, &f, false, t(0))), ["n3", "n4"]);
    }

    #[test]
    fn max_unavailable_counts_nodes_in_flight_from_this_rollout() {
        let names = ["n1", "n2", "n3"];
        let mut p = policy();
        p.batch = Amount::Count(1);
        p.max_unavailable = Amount::Count(1);
        let mut r = rollout(p, names.iter().map(|n| node(n, Step::Pending)).collect());
        // n1 failed and stays down: with max-failures 1 the rollout goes
        // on, but n1 holds the one unit of room.
        r.policy.max_failures = 1;
        r.nodes[0].step = Step::Failed { reason: "x".into() };
        r.nodes[0].wave = 1;
        let mut f = fleet(&names);
        f.insert("n1".into(), NodeView::default());
        assert_eq!(started(&plan(&r, &f, false, t(0))), Vec::<&str>::new());
        // n1 comes back by itself: room again.
        f.insert("n1".into(), up(7, "x"));
        assert_eq!(started(&plan(&r, &f, false, t(0))), ["n2"]);
    }

    #[test]
    fn a_node_failing_now_and_still_down_keeps_its_room() {
        let names = ["n1", "n2", "n3"];
        let mut p = policy();
        p.max_unavailable = Amount::Count(1);
        p.max_failures = 5;
        let mut r = rollout(p, names.iter().map(|n| node(n, Step::Pending)).collect());
        r.nodes[2].step = Step::Booting { since: t(0) };
        r.nodes[2].wave = 1;
        let mut f = fleet(&names);
        f.insert("n3".into(), NodeView::default());
        // n3 fails now (never back) but is still down: nothing may start.
        let a = plan(&r, &f, false, t(901));
        assert!(
            matches!(&a[0], Action::ToFailed { node, .. } if node == "n3"),
            "{a:?}"
        );
        assert!(started(&a).is_empty(), "{a:?}");
    }

    #[test]
    fn canaries_go_first_alone_and_a_failed_one_pauses() {
        let names = ["n1", "n2", "n3", "n4"];
        let mut p = policy();
        p.canary = 1;
        p.batch = Amount::Count(3);
        p.max_unavailable = Amount::Count(4);
        let mut r = rollout(p, names.iter().map(|n| node(n, Step::Pending)).collect());
        r.nodes[0].canary = true;
        let f = fleet(&names);
        assert_eq!(started(&plan(&r, &f, false, t(0))), ["n1"]);
        r.nodes[0].step = Step::Booting { since: t(0) };
        r.nodes[0].wave = 1;
        assert_eq!(started(&plan(&r, &f, false, t(1))), Vec::<&str>::new());
        // The canary comes back on the wrong generation: failed, paused.
        let mut g = f.clone();
        g.insert("n1".into(), up(7, "new"));
        let a = plan(&r, &g, false, t(2));
        assert!(
            a.contains(&Action::ToFailed {
                node: "n1".into(),
                reason: "came back on compute:7, not compute:8".into()
            }),
            "{a:?}"
        );
        assert!(
            a.contains(&Action::Pause {
                reason: "canary n1 failed".into()
            }),
            "{a:?}"
        );
        assert!(started(&a).is_empty());
        // A good canary opens the batches.
        r.nodes[0].step = Step::Done;
        assert_eq!(started(&plan(&r, &f, false, t(3))), ["n2", "n3", "n4"]);
    }

    #[test]
    fn more_failures_than_allowed_pause_the_rollout() {
        let names = ["n1", "n2", "n3"];
        let mut p = policy();
        p.max_failures = 1;
        p.ready_timeout = Duration::from_secs(600);
        let mut r = rollout(p, names.iter().map(|n| node(n, Step::Pending)).collect());
        r.nodes[0].step = Step::Failed { reason: "x".into() };
        r.nodes[0].wave = 1;
        r.nodes[1].step = Step::Booting { since: t(0) };
        r.nodes[1].wave = 1;
        let mut f = fleet(&names);
        f.insert("n2".into(), NodeView::default());
        // Within the timeout: one failure is allowed, the wave is open.
        let a = plan(&r, &f, false, t(300));
        assert!(a.is_empty(), "{a:?}");
        // n2 never comes back: failed, and two failures pause.
        let a = plan(&r, &f, false, t(601));
        assert!(
            matches!(&a[0], Action::ToFailed { node, reason } if node == "n2" && reason.contains("not back 601s")),
            "{a:?}"
        );
        assert!(
            a.contains(&Action::Pause {
                reason: "2 nodes failed, more than --max-failures 1".into()
            }),
            "{a:?}"
        );
    }

    #[test]
    fn failures_seen_before_a_resume_are_forgiven() {
        let names = ["n1", "n2", "n3"];
        let mut r = rollout(
            policy(),
            names.iter().map(|n| node(n, Step::Pending)).collect(),
        );
        r.nodes[0].canary = true;
        r.nodes[0].wave = 1;
        r.nodes[0].step = Step::Failed { reason: "x".into() };
        let f = fleet(&names);
        assert!(matches!(plan(&r, &f, false, t(0))[0], Action::Pause { .. }));
        r.nodes[0].forgiven = true;
        assert_eq!(started(&plan(&r, &f, false, t(0))), ["n2", "n3"]);
    }

    #[test]
    fn a_paused_rollout_finishes_nodes_in_flight_but_starts_none() {
        let names = ["n1", "n2"];
        let mut r = rollout(
            policy(),
            names.iter().map(|n| node(n, Step::Pending)).collect(),
        );
        r.state = State::Paused {
            reason: "by admin".into(),
        };
        r.nodes[0].step = Step::Booting { since: t(0) };
        r.nodes[0].wave = 1;
        let mut f = fleet(&names);
        f.insert("n1".into(), up(8, "new"));
        let a = plan(&r, &f, false, t(5));
        assert_eq!(a, [Action::ToDone { node: "n1".into() }]);
    }

    #[test]
    fn a_closed_window_or_the_freeze_holds_new_reboots_only() {
        let names = ["n1", "n2", "n3"];
        let mut p = policy();
        // 2026-09-14 is a Monday; the window is weekend nights in UTC.
        p.window = "Sat,Sun 02:00-06:00 UTC".parse().unwrap();
        let monday: Timestamp = "2026-09-14T12:00:00Z".parse().unwrap();
        let saturday: Timestamp = "2026-09-19T03:00:00Z".parse().unwrap();
        let mut r = rollout(p, names.iter().map(|n| node(n, Step::Pending)).collect());
        r.nodes[0].step = Step::Booting { since: monday };
        r.nodes[0].wave = 1;
        r.nodes[0].canary = false;
        let mut f = fleet(&names);
        f.insert("n1".into(), up(8, "new"));
        // Outside the window the node in flight still finishes.
        let a = plan(&r, &f, false, monday);
        assert_eq!(a, [Action::ToDone { node: "n1".into() }]);
        r.nodes[0].step = Step::Done;
        assert!(plan(&r, &f, false, monday).is_empty());
        assert_eq!(started(&plan(&r, &f, false, saturday)), ["n2", "n3"]);
        // Frozen: nothing new even in the window.
        assert!(plan(&r, &f, true, saturday).is_empty());
    }

    #[test]
    fn a_window_wrapping_midnight_in_its_own_zone() {
        let mut p = policy();
        p.window = "Fri 22:00-02:00 Europe/Berlin".parse().unwrap();
        let r = rollout(p, vec![node("n1", Step::Pending)]);
        let f = fleet(&["n1"]);
        // Saturday 01:30 in Berlin (UTC+2 in September) is Friday's window.
        let sat_early: Timestamp = "2026-09-18T23:30:00Z".parse().unwrap();
        let sat_late: Timestamp = "2026-09-19T00:30:00Z".parse().unwrap();
        assert_eq!(started(&plan(&r, &f, false, sat_early)), ["n1"]);
        assert!(started(&plan(&r, &f, false, sat_late)).is_empty());
    }

    #[test]
    fn drains_time_out_and_checks_run_until_then() {
        let mut p = policy();
        p.drain = true;
        p.drained_check = true;
        p.drain_timeout = Duration::from_secs(60);
        p.max_failures = 5;
        let mut r = rollout(p, vec![node("n1", Step::Draining { since: t(0) })]);
        r.nodes[0].wave = 1;
        let f = fleet(&["n1"]);
        assert_eq!(
            plan(&r, &f, false, t(59)),
            [Action::CheckDrained { node: "n1".into() }]
        );
        let a = plan(&r, &f, false, t(61));
        assert_eq!(
            a[0],
            Action::ToFailed {
                node: "n1".into(),
                reason: "not drained after 60s (--drain-timeout)".into()
            }
        );
        assert_eq!(a[1], Action::Complete);
    }

    #[test]
    fn a_node_still_reconnecting_after_a_restart_is_not_unreachable() {
        let mut r = rollout(policy(), vec![node("n1", Step::Switching)]);
        r.nodes[0].wave = 1;
        let mut f = fleet(&["n1"]);
        f.insert(
            "n1".into(),
            NodeView {
                settling: true,
                ..NodeView::default()
            },
        );
        assert!(plan(&r, &f, false, t(0)).is_empty());
    }

    #[test]
    fn a_new_stream_shows_the_reboot_before_its_first_report() {
        let mut r = rebooting_n1();
        r.nodes[0].ordered = false;
        let mut f = fleet(&["n1"]);
        f.insert(
            "n1".into(),
            NodeView {
                stream_boot_id: "new".into(),
                ..up(7, "old")
            },
        );
        // Rebooted: never ordered again, not judged on the old report.
        assert_eq!(
            plan(&r, &f, false, t(3)),
            [Action::ToBooting { node: "n1".into() }]
        );
    }

    #[test]
    fn an_unreachable_node_is_switched_to_its_power_command() {
        let mut r = rollout(policy(), vec![node("n1", Step::Switching)]);
        r.nodes[0].wave = 1;
        let mut f = fleet(&["n1"]);
        assert_eq!(
            plan(&r, &f, false, t(0)),
            [Action::Switch {
                node: "n1".into(),
                power: false
            }]
        );
        f.insert("n1".into(), NodeView::default());
        assert_eq!(
            plan(&r, &f, false, t(0)),
            [Action::Switch {
                node: "n1".into(),
                power: true
            }]
        );
    }

    /// n1 with its reboot ordered at t(0) by its agent.
    fn rebooting_n1() -> Rollout {
        let mut r = rollout(
            policy(),
            vec![node(
                "n1",
                Step::Rebooting {
                    since: t(0),
                    power: false,
                },
            )],
        );
        r.nodes[0].wave = 1;
        r
    }

    #[test]
    fn an_order_not_known_to_be_sent_is_sent_again_once_the_node_is_back() {
        let mut r = rebooting_n1();
        r.nodes[0].ordered = false;
        let mut f = fleet(&["n1"]);
        // Its agent has not reconnected to the restarted coordinator yet:
        // not gone to reboot, just not back.
        f.insert("n1".into(), NodeView::default());
        assert!(plan(&r, &f, false, t(1)).is_empty());
        f.insert("n1".into(), up(7, "old"));
        assert_eq!(
            plan(&r, &f, false, t(2)),
            [Action::RepeatReboot { node: "n1".into() }]
        );
    }

    #[test]
    fn a_node_back_on_the_boot_it_was_ordered_to_leave_is_ordered_again() {
        let mut r = rollout(policy(), vec![node("n1", Step::Booting { since: t(0) })]);
        r.nodes[0].wave = 1;
        let mut f = fleet(&["n1"]);
        let mut same = up(7, "old");
        same.stream_boot_id = "old".into();
        f.insert("n1".into(), same);
        // Not at once: its stream may still be closing.
        assert!(plan(&r, &f, false, t(1)).is_empty());
        assert_eq!(
            plan(&r, &f, false, t(REPEAT_REBOOT_AFTER.as_secs() as i64 + 1)),
            [Action::RepeatReboot { node: "n1".into() }]
        );
    }

    #[test]
    fn a_node_back_while_the_coordinator_was_down_is_recognised() {
        let r = rebooting_n1();
        let mut f = fleet(&["n1"]);
        f.insert("n1".into(), up(8, "new"));
        let a = plan(&r, &f, false, t(400));
        assert_eq!(
            a,
            [
                Action::ToBooting { node: "n1".into() },
                Action::ToDone { node: "n1".into() },
                Action::Complete
            ]
        );
    }

    #[test]
    fn a_plain_reboot_expects_each_node_back_on_its_assignment() {
        let mut p = policy();
        p.target = None;
        let mut r = rollout(
            p,
            vec![
                node("n1", Step::Booting { since: t(0) }),
                node("n2", Step::Booting { since: t(0) }),
            ],
        );
        r.nodes[0].wave = 1;
        r.nodes[1].wave = 1;
        let mut f = fleet(&["n1", "n2"]);
        // Assigned compute:7 (their `previous`): n1 is back on it, n2 is not.
        f.insert("n1".into(), up(7, "new"));
        f.insert("n2".into(), up(8, "new"));
        let a = plan(&r, &f, false, t(5));
        assert_eq!(a[0], Action::ToDone { node: "n1".into() });
        assert_eq!(
            a[1],
            Action::ToFailed {
                node: "n2".into(),
                reason: "came back on compute:8, not compute:7".into()
            }
        );
    }

    #[test]
    fn a_node_is_judged_on_the_first_report_of_its_new_boot() {
        let mut r = rollout(policy(), vec![node("n1", Step::Booting { since: t(0) })]);
        r.nodes[0].wave = 1;
        let mut f = fleet(&["n1"]);
        // Connected again, but the coordinator still holds the old boot's
        // report (compute:7): not a failure yet.
        f.insert("n1".into(), up(7, "old"));
        assert!(plan(&r, &f, false, t(5)).is_empty());
        f.insert("n1".into(), up(8, "new"));
        assert_eq!(
            plan(&r, &f, false, t(6)),
            [Action::ToDone { node: "n1".into() }, Action::Complete]
        );
    }

    #[test]
    fn a_reboot_order_is_repeated_only_while_the_old_boot_runs() {
        let r = rebooting_n1();
        let mut f = fleet(&["n1"]);
        assert!(plan(&r, &f, false, t(60)).is_empty());
        assert_eq!(
            plan(&r, &f, false, t(121)),
            [Action::RepeatReboot { node: "n1".into() }]
        );
        // Gone: booting, never ordered again.
        f.insert("n1".into(), NodeView::default());
        assert_eq!(
            plan(&r, &f, false, t(121)),
            [Action::ToBooting { node: "n1".into() }]
        );
        // Still on the old boot after the ready timeout: failed.
        f.insert("n1".into(), up(7, "old"));
        let a = plan(&r, &f, false, t(901));
        assert!(
            matches!(&a[0], Action::ToFailed { reason, .. } if reason.contains("still on its old boot")),
            "{a:?}"
        );
    }

    #[test]
    fn abort_reverts_nodes_not_yet_rebooted_and_lets_the_others_finish() {
        let names = ["n1", "n2", "n3", "n4"];
        let mut r = rollout(
            policy(),
            vec![
                node("n1", Step::Done),
                node("n2", Step::Booting { since: t(0) }),
                node("n3", Step::Draining { since: t(0) }),
                node("n4", Step::Pending),
            ],
        );
        r.state = State::Aborting;
        let mut f = fleet(&names);
        f.insert("n2".into(), NodeView::default());
        let a = plan(&r, &f, false, t(10));
        assert_eq!(
            a,
            [
                Action::Revert { node: "n3".into() },
                Action::Revert { node: "n4".into() }
            ]
        );
        r.nodes[2].step = Step::Reverted;
        r.nodes[3].step = Step::Reverted;
        assert!(plan(&r, &f, false, t(11)).is_empty());
        f.insert("n2".into(), up(8, "new"));
        r.nodes[1].step = Step::Done;
        assert_eq!(plan(&r, &f, false, t(12)), [Action::Aborted]);
    }

    #[test]
    fn fullest_overlay_first_breaks_ties_by_name() {
        let mut f = fleet(&["a", "b", "c"]);
        f.get_mut("b").unwrap().overlay_used = 900;
        f.get_mut("c").unwrap().overlay_used = 900;
        f.get_mut("a").unwrap().overlay_used = 10;
        let names: Vec<String> = ["a", "c", "b"].iter().map(|s| s.to_string()).collect();
        assert_eq!(
            order(&names, &f, Order::FullestOverlayFirst),
            ["b", "c", "a"]
        );
        assert_eq!(order(&names, &f, Order::Name), ["a", "b", "c"]);
    }
}
