//! A rollout as the store keeps it: the policy as the JSON of what `rollout
//! start` asked for (fixed for the rollout's life: a named window is stored
//! as its text, so editing cluster.toml does not change a running rollout),
//! and each node's step as a row.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use dfleet_proto::domain::GenerationRef;
use dfleet_provisioner::window::Window;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::plan::{Amount, Order, Policy, RolloutNode, Step};
use crate::store::RolloutNodeRow;

impl FromStr for Amount {
    type Err = String;
    fn from_str(s: &str) -> Result<Amount, String> {
        let t = s.trim();
        if let Some(p) = t.strip_suffix('%') {
            match p.trim().parse::<u8>() {
                Ok(n) if (1..=100).contains(&n) => Ok(Amount::Percent(n)),
                _ => Err(format!("{s:?}: a share is 1% to 100%")),
            }
        } else {
            match t.parse::<usize>() {
                Ok(n) if n > 0 => Ok(Amount::Count(n)),
                _ => Err(format!(
                    "{s:?}: expected a number of nodes (1 or more) or a share such as 10%"
                )),
            }
        }
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Amount::Count(n) => write!(f, "{n}"),
            Amount::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl FromStr for Order {
    type Err = String;
    fn from_str(s: &str) -> Result<Order, String> {
        match s {
            "fullest-overlay-first" => Ok(Order::FullestOverlayFirst),
            "name" => Ok(Order::Name),
            _ => Err(format!("{s:?}: the order is fullest-overlay-first or name")),
        }
    }
}

impl fmt::Display for Order {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Order::FullestOverlayFirst => "fullest-overlay-first",
            Order::Name => "name",
        })
    }
}

/// What `rollout start` asked for, as stored. Commands are argument vectors
/// with `{node}` placeholders, never shell text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySpec {
    /// IMAGE:GEN, or empty for a plain reboot.
    pub target: String,
    /// The node set as given, for history.
    pub nodes: String,
    pub canary: usize,
    pub batch: String,
    pub max_unavailable: String,
    /// The window's text (a named window resolved when the rollout started).
    pub window: String,
    /// Exits 0 when the node is drained already (then the rollout neither
    /// drains nor undrains it).
    #[serde(default)]
    pub is_drained: Vec<String>,
    pub drain_cmd: Vec<String>,
    pub drained_check: Vec<String>,
    pub drain_timeout_s: u64,
    pub undrain_cmd: Vec<String>,
    pub ready_timeout_s: u64,
    pub max_failures: usize,
    pub order: String,
}

impl PolicySpec {
    /// The planner's policy; an error names the field and value.
    pub fn policy(&self) -> Result<Policy, String> {
        if self.drain_cmd.is_empty() {
            for (flag, argv) in [
                ("--is-drained", &self.is_drained),
                ("--drained-check", &self.drained_check),
                ("--undrain-cmd", &self.undrain_cmd),
            ] {
                if !argv.is_empty() {
                    return Err(format!("{flag} needs --drain-cmd"));
                }
            }
        }
        let target: Option<GenerationRef> = if self.target.is_empty() {
            None
        } else {
            Some(
                self.target
                    .parse()
                    .map_err(|_| format!("target {:?} is not IMAGE:GEN", self.target))?,
            )
        };
        Ok(Policy {
            target,
            canary: self.canary,
            batch: self.batch.parse().map_err(|e| format!("batch {e}"))?,
            max_unavailable: self
                .max_unavailable
                .parse()
                .map_err(|e| format!("max-unavailable {e}"))?,
            window: Window::parse(&self.window).map_err(|e| format!("window: {e}"))?,
            drain: !self.drain_cmd.is_empty(),
            drained_check: !self.drained_check.is_empty(),
            drain_timeout: Duration::from_secs(self.drain_timeout_s),
            ready_timeout: Duration::from_secs(self.ready_timeout_s),
            max_failures: self.max_failures,
            order: self.order.parse()?,
        })
    }
}

/// `argv` with every `{node}` replaced by the node's name: an argument
/// vector stays one, whatever the name holds.
pub fn command_for(argv: &[String], node: &str) -> Vec<String> {
    argv.iter().map(|a| a.replace("{node}", node)).collect()
}

fn ms(t: Timestamp) -> i64 {
    t.as_millisecond()
}

fn at(ms: i64) -> Timestamp {
    Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// A node's row from its planner state (and what only the store keeps).
pub fn node_row(rollout: u64, seq: u32, n: &RolloutNode, drained: bool) -> RolloutNodeRow {
    let (step_at_ms, power, reason) = match &n.step {
        Step::Draining { since } | Step::Booting { since } => (ms(*since), false, String::new()),
        Step::Rebooting { since, power } => (ms(*since), *power, String::new()),
        Step::Failed { reason } | Step::Skipped { reason } => (0, false, reason.clone()),
        Step::Pending | Step::Switching | Step::Done | Step::Reverted => (0, false, String::new()),
    };
    RolloutNodeRow {
        rollout,
        seq,
        node: n.name.clone(),
        step: n.step.name().to_string(),
        step_at_ms,
        power,
        reason,
        canary: n.canary,
        wave: n.wave,
        previous: n.previous.clone(),
        boot_id: n.boot_id.clone(),
        drained,
        forgiven: n.forgiven,
    }
}

/// The planner's node from its row; an unknown step names it.
pub fn node_from_row(r: &RolloutNodeRow) -> Result<RolloutNode, String> {
    let since = at(r.step_at_ms);
    let step = match r.step.as_str() {
        "pending" => Step::Pending,
        "draining" => Step::Draining { since },
        "switching" => Step::Switching,
        "rebooting" => Step::Rebooting {
            since,
            power: r.power,
        },
        "booting" => Step::Booting { since },
        "done" => Step::Done,
        "failed" => Step::Failed {
            reason: r.reason.clone(),
        },
        "skipped" => Step::Skipped {
            reason: r.reason.clone(),
        },
        "reverted" => Step::Reverted,
        other => {
            return Err(format!(
                "rollout {} node {}: unknown step {other:?}",
                r.rollout, r.node
            ));
        }
    };
    Ok(RolloutNode {
        name: r.node.clone(),
        step,
        canary: r.canary,
        wave: r.wave,
        previous: r.previous.clone(),
        boot_id: r.boot_id.clone(),
        forgiven: r.forgiven,
        ordered: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfleet_proto::domain::Generation;

    fn spec() -> PolicySpec {
        PolicySpec {
            target: "compute:8".into(),
            nodes: "cn[01-20]".into(),
            canary: 2,
            batch: "25%".into(),
            max_unavailable: "3".into(),
            window: "Sat,Sun 02:00-06:00 Europe/Berlin".into(),
            drain_cmd: vec![
                "scontrol".into(),
                "update".into(),
                "nodename={node}".into(),
                "state=drain".into(),
            ],
            drained_check: vec![],
            is_drained: vec![],
            drain_timeout_s: 3600,
            undrain_cmd: vec![],
            ready_timeout_s: 900,
            max_failures: 1,
            order: "fullest-overlay-first".into(),
        }
    }

    #[test]
    fn amounts_read_and_print_back() {
        assert_eq!("3".parse::<Amount>(), Ok(Amount::Count(3)));
        assert_eq!("10%".parse::<Amount>(), Ok(Amount::Percent(10)));
        assert_eq!(Amount::Percent(10).to_string(), "10%");
        for bad in ["0", "0%", "101%", "-1", "x", ""] {
            assert!(bad.parse::<Amount>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_stored_policy_reads_back_through_json() {
        let json = serde_json::to_string(&spec()).unwrap();
        let back: PolicySpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, spec());
        let p = back.policy().unwrap();
        assert_eq!(
            p.target.map(|t| t.to_string()).as_deref(),
            Some("compute:8")
        );
        assert_eq!(p.batch, Amount::Percent(25));
        assert_eq!(p.max_unavailable, Amount::Count(3));
        assert!(p.drain && !p.drained_check);
        assert_eq!(p.order, Order::FullestOverlayFirst);
        assert_eq!(p.window.to_string(), "Sat,Sun 02:00-06:00 Europe/Berlin");
        let mut bad = spec();
        bad.window = "Sta 02:00-03:00 UTC".into();
        assert!(bad.policy().unwrap_err().starts_with("window:"));
        let mut bad = spec();
        bad.order = "random".into();
        assert!(bad.policy().unwrap_err().contains("random"));
        // Checks and undrains without a drain command would never run.
        let mut bad = spec();
        bad.drain_cmd.clear();
        bad.is_drained = vec!["true".into()];
        assert_eq!(bad.policy().unwrap_err(), "--is-drained needs --drain-cmd");
        // A policy stored before --is-drained existed still reads.
        let old = json.replace(",\"is_drained\":[]", "");
        assert_ne!(old, json);
        assert_eq!(serde_json::from_str::<PolicySpec>(&old).unwrap(), spec());
    }

    #[test]
    fn commands_substitute_the_node_in_each_argument() {
        let argv = command_for(&spec().drain_cmd, "cn07; rm -rf /");
        assert_eq!(argv[2], "nodename=cn07; rm -rf /");
        assert_eq!(argv.len(), 4);
    }

    #[test]
    fn every_step_survives_its_row() {
        let t = Timestamp::from_millisecond(1_790_000_000_123).unwrap();
        let steps = [
            Step::Pending,
            Step::Draining { since: t },
            Step::Switching,
            Step::Rebooting {
                since: t,
                power: true,
            },
            Step::Booting { since: t },
            Step::Done,
            Step::Failed {
                reason: "came back on compute:7".into(),
            },
            Step::Skipped {
                reason: "the coordinator's host".into(),
            },
            Step::Reverted,
        ];
        for (i, step) in steps.into_iter().enumerate() {
            let n = RolloutNode {
                name: "cn1".into(),
                step,
                canary: i % 2 == 0,
                wave: i as u32,
                previous: Some(GenerationRef {
                    image: "compute".into(),
                    generation: Generation(7),
                }),
                boot_id: "b".into(),
                forgiven: i % 3 == 0,
                ordered: false,
            };
            let row = node_row(4, 2, &n, true);
            assert_eq!(node_from_row(&row), Ok(n));
        }
        let done = RolloutNode {
            name: "cn1".into(),
            step: Step::Done,
            canary: false,
            wave: 1,
            previous: None,
            boot_id: String::new(),
            forgiven: false,
            ordered: false,
        };
        let mut row = node_row(4, 2, &done, false);
        row.step = "exploded".into();
        assert!(node_from_row(&row).unwrap_err().contains("exploded"));
    }
}
