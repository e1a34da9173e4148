//! `dfleet exec` on a swarm of real agents, side by side with `pdsh -R ssh`
//! and `clush` over SSH to the same number of targets.
//!
//! The dfleet side: a real `dfleet serve` and N `dfleet-agent` processes,
//! each on its own loopback address (127.70.x.y) with a sandboxed node root,
//! each enrolled over mutual TLS. Every agent really spawns the command.
//! Times the whole `dfleet exec` command line (process start, connection,
//! fan-out, every node's answer, the summary).
//!
//! The SSH side (see `ssh.rs`): one real sshd in a network namespace serves
//! every target; pdsh and clush run with fan-out 64. The swarm is stopped
//! before the SSH tools run, so neither side shares the CPU with the other.
//!
//! Arguments: node counts, dfleet runs per command, SSH runs per command and
//! tool (0 skips the SSH side). Needs root (namespaces, sshd).
//!
//! ```sh
//! cargo build --release --locked --bins
//! cargo build --profile agent --locked -p dfleet-agent
//! DFLEET_AGENT_BIN=$PWD/target/agent/dfleet-agent \
//!   cargo bench --locked -p dfleet-tests --bench exec_swarm -- 256,1000 5 1
//! ```

mod ssh;

use anyhow::{Context, Result, bail};
use dfleet_agent::sandbox::{self, SandboxSpec};
use dfleet_proto::domain::EventKind;
use dfleet_tests::{Agent, Coordinator, Settings, TestNode, cluster_toml};

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
    let ssh_runs: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1);
    if ssh_runs > 0 {
        ssh::ensure_tools().await?;
    }

    let commands = [&["true"][..], &["uname", "-r"][..]];
    // (nodes, command, dfleet median, faster SSH tool's median)
    let mut compared = Vec::new();
    println!("| nodes | command | tool | runs | median | min | max |");
    println!("|---|---|---|---|---|---|---|");
    for n in counts {
        if n == 0 || n > 250 * 250 {
            bail!("{n} nodes: expected 1 to 62500");
        }
        let set = format!("cn[0001-{n:04}]");
        let mut dfleet = Vec::new();
        {
            let dir = tempfile::tempdir()?;
            let ns: Vec<TestNode> = dfleet_tests::swarm_nodes(n, 70, 4);
            // Reports once a minute: the runs measure exec, not report traffic.
            let settings = Settings {
                report_interval: "60s",
                stale_after: "600s",
                lost_after: "1200s",
                ..Settings::default()
            };
            let c =
                Coordinator::start(dir.path(), &cluster_toml(dir.path(), &ns, &settings)).await?;
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
            for cmd in commands {
                let times = time_exec(&c, &set, n, cmd, runs).await?;
                row(n, cmd, "dfleet exec -b", &times);
                dfleet.push(median(&times));
            }
            for a in agents {
                a.kill().await?;
            }
        }
        if ssh_runs == 0 {
            continue;
        }
        let targets = ssh::SshTargets::start().await?;
        for (cmd, dfleet) in commands.iter().zip(dfleet) {
            let mut fastest = f64::INFINITY;
            for tool in ssh::Tool::ALL {
                let times = targets.time(tool, &set, n, cmd, ssh_runs).await?;
                row(n, cmd, tool.label(), &times);
                fastest = fastest.min(median(&times));
            }
            compared.push((n, cmd.join(" "), dfleet, fastest));
        }
        targets.stop().await?;
    }
    if !compared.is_empty() {
        println!();
        println!("| nodes | command | dfleet | faster SSH tool | dfleet is faster by |");
        println!("|---|---|---|---|---|");
        for (n, cmd, dfleet, ssh) in compared {
            println!(
                "| {n} | `{cmd}` | {dfleet:.2} s | {ssh:.1} s | {:.0}x |",
                ssh / dfleet
            );
        }
    }
    Ok(())
}

/// One table row: the median, min and max of `times`.
fn row(n: usize, cmd: &[&str], tool: &str, times: &[f64]) {
    let min = times.iter().copied().fold(f64::INFINITY, f64::min);
    let max = times.iter().copied().fold(0.0, f64::max);
    println!(
        "| {n} | `{}` | {tool} | {} | {:.2} s | {min:.2} s | {max:.2} s |",
        cmd.join(" "),
        times.len(),
        median(times)
    );
}
