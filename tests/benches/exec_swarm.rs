//! `dfleet exec` on a swarm of real agents: a real `dfleet serve` and N
//! `dfleet-agent` processes, each on its own loopback address (127.70.x.y)
//! with a sandboxed node root, each enrolled over mutual TLS. Every agent
//! really spawns the command. Times the whole `dfleet exec` command line
//! (process start, connection, fan-out, every node's answer, the summary),
//! several runs per command.
//!
//! ```sh
//! cargo build --release --locked --bins
//! cargo build --profile agent --locked -p dfleet-agent
//! DFLEET_AGENT_BIN=$PWD/target/agent/dfleet-agent \
//!   cargo bench --locked -p dfleet-tests --bench exec_swarm -- 256,1000 5
//! ```

use std::net::Ipv4Addr;

use anyhow::{Context, Result, bail};
use dfleet_agent::sandbox::{self, SandboxSpec};
use dfleet_proto::domain::EventKind;
use dfleet_tests::{Agent, Coordinator, Settings, TestNode, cluster_toml};

/// Node `i` (1-based) of a swarm.
fn node(i: usize) -> TestNode {
    let (hi, lo) = ((i - 1) / 250, (i - 1) % 250 + 1);
    TestNode {
        name: format!("cn{i:04}"),
        mac: format!("52:54:01:00:{hi:02x}:{lo:02x}"),
        ip: Ipv4Addr::new(127, 70, hi as u8, lo as u8),
    }
}

/// Seconds each run of `dfleet exec SET -b -- CMD` took, checking that every
/// node answered 0.
async fn time_exec(
    c: &Coordinator,
    set: &str,
    n: usize,
    cmd: &[&str],
    runs: usize,
) -> Result<Vec<f64>> {
    let mut out = Vec::new();
    for _ in 0..runs {
        let mut args = vec!["exec", set, "-b", "--"];
        args.extend_from_slice(cmd);
        let t = tokio::time::Instant::now();
        let o = c.cli_raw(&args).await?;
        let took = t.elapsed().as_secs_f64();
        let err = String::from_utf8_lossy(&o.stderr);
        if !o.status.success() || !err.contains(&format!(": {n} ok")) {
            bail!("dfleet exec {cmd:?} on {n} nodes: {}\n{err}", o.status);
        }
        out.push(took);
    }
    Ok(out)
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = dfleet_tests::bench_args();
    let counts: Vec<usize> = args
        .first()
        .map(String::as_str)
        .unwrap_or("256,1000")
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("counts: e.g. 256,1000")?;
    let runs: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(5);

    println!("| nodes | command | runs | median | min | max |");
    println!("|---|---|---|---|---|---|");
    for n in counts {
        if n == 0 || n > 250 * 250 {
            bail!("{n} nodes: expected 1 to 62500");
        }
        let dir = tempfile::tempdir()?;
        let ns: Vec<TestNode> = (1..=n).map(node).collect();
        // Reports once a minute: the runs measure exec, not report traffic.
        let settings = Settings {
            report_interval: "60s",
            stale_after: "600s",
            lost_after: "1200s",
            ..Settings::default()
        };
        let c = Coordinator::start(dir.path(), &cluster_toml(dir.path(), &ns, &settings)).await?;
        let mut events = c.watch().await?;
        let mut agents = Vec::with_capacity(n);
        for t in &ns {
            let root = dir.path().join(&t.name);
            sandbox::build(&root, &SandboxSpec::new(&t.name, t.mac.parse()?, t.ip))
                .with_context(|| format!("building {}'s sandbox", t.name))?;
            agents.push(Agent::start(&c, t, &root).await?);
        }
        for t in &ns {
            events.wait(EventKind::Ready, &t.name).await?;
        }
        let set = format!("cn[0001-{n:04}]");
        for cmd in [&["true"][..], &["uname", "-r"][..]] {
            let times = time_exec(&c, &set, n, cmd, runs).await?;
            let min = times.iter().copied().fold(f64::INFINITY, f64::min);
            let max = times.iter().copied().fold(0.0, f64::max);
            println!(
                "| {n} | `{}` | {runs} | {:.2} s | {min:.2} s | {max:.2} s |",
                cmd.join(" "),
                median(&times)
            );
        }
        for a in agents {
            a.kill().await?;
        }
    }
    Ok(())
}
