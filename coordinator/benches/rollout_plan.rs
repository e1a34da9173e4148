//! One planning step of a rollout over a large fleet (`rollout::plan::plan`,
//! which the engine runs at every tick and after every node event), and the
//! ordering of the nodes when a rollout is created.
//!
//! Situations, each timed over many runs: the first step (every node
//! pending), the middle (half the nodes done, a batch booting, the rest
//! pending) and the last batch in flight.
//!
//! ```sh
//! cargo bench --locked -p dfleet-coordinator --bench rollout_plan -- 10000 200
//! ```

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use dfleet_coordinator::rollout::plan::{
    Amount, NodeView, Order, Policy, Rollout, RolloutNode, State, Step, order, plan,
};
use dfleet_proto::domain::{Generation, GenerationRef};
use dfleet_provisioner::window::Window;
use jiff::Timestamp;

fn target() -> GenerationRef {
    GenerationRef {
        image: "compute".into(),
        generation: Generation(8),
    }
}

fn policy() -> Policy {
    Policy {
        target: Some(target()),
        canary: 10,
        batch: Amount::Percent(10),
        max_unavailable: Amount::Percent(10),
        window: Window::always(),
        drain: false,
        drained_check: false,
        drain_timeout: Duration::from_secs(600),
        ready_timeout: Duration::from_secs(900),
        max_failures: 10,
        order: Order::FullestOverlayFirst,
    }
}

/// `n` nodes: the first `done` done, the next `booting` booting, the rest
/// pending; the fleet sees the done ones on the target and ready, and the
/// booting ones too when they are `back`.
fn situation(
    names: &[String],
    done: usize,
    booting: usize,
    back: bool,
    now: Timestamp,
) -> (Rollout, HashMap<String, NodeView>) {
    let old = GenerationRef {
        image: "compute".into(),
        generation: Generation(7),
    };
    let mut fleet = HashMap::with_capacity(names.len());
    let mut nodes = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let rebooted = i < done || (back && i < done + booting);
        let boot = if rebooted {
            format!("new-boot-{i}")
        } else {
            format!("boot-{i}")
        };
        let (step, booted, ready) = if i < done {
            (Step::Done, target(), true)
        } else if i < done + booting {
            let booted = if back { target() } else { old.clone() };
            (Step::Booting { since: now }, booted, back)
        } else {
            (Step::Pending, old.clone(), true)
        };
        nodes.push(RolloutNode {
            name: name.clone(),
            step,
            canary: i < 10,
            wave: if i < done + booting {
                1 + (i / 1000) as u32
            } else {
                0
            },
            previous: Some(old.clone()),
            boot_id: format!("boot-{i}"),
            forgiven: false,
            ordered: true,
        });
        fleet.insert(
            name.clone(),
            NodeView {
                connected: ready,
                ready,
                boot_id: boot.clone(),
                stream_boot_id: boot,
                settling: false,
                booted: Some(booted),
                overlay_used: (i as u64 * 7919) % (1 << 30),
            },
        );
    }
    (
        Rollout {
            policy: policy(),
            state: State::Running,
            nodes,
        },
        fleet,
    )
}

/// (median, max) milliseconds of `runs` calls of `f`.
fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> (f64, f64) {
    let mut ms: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(f());
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    (ms[ms.len() / 2], ms[ms.len() - 1])
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let n: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let runs: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(200);
    let names: Vec<String> = (1..=n).map(|i| format!("cn{i:05}")).collect();
    let now = Timestamp::now();
    println!("| {n} nodes, {runs} runs | actions | median | max |");
    println!("|---|---:|---:|---:|");
    for (label, done, booting, back) in [
        ("first step (all pending)", 0, 0, false),
        ("middle (half done, a batch booting)", n / 2, n / 10, false),
        (
            "middle (half done, a batch back on the target)",
            n / 2,
            n / 10,
            true,
        ),
        ("last batch booting", n - n / 10, n / 10, false),
    ] {
        let (rollout, fleet) = situation(&names, done, booting, back, now);
        let actions = plan(&rollout, &fleet, false, now).len();
        let (median, max) = time(runs, || plan(&rollout, &fleet, false, now));
        println!("| plan: {label} | {actions} | {median:.2} ms | {max:.2} ms |");
    }
    let (_, fleet) = situation(&names, 0, 0, false, now);
    let (median, max) = time(runs, || order(&names, &fleet, Order::FullestOverlayFirst));
    println!("| order at creation (fullest overlay first) | - | {median:.2} ms | {max:.2} ms |");
}
