//! The swarm: N agents in this one process against a real `dfleet serve`.
//!
//! Each agent is the real agent library (`dfleet_agent::daemon::Agent`) with
//! its own sandboxed node root, its own TLS identity (it enrolls like a
//! node), and its own 127.x source address; exec orders really spawn
//! processes. The coordinator is the `dfleet` binary of the build, with its
//! real store, over real sockets and TLS.
//!
//! Phases, each printed as it ends:
//! 1. ramp: every agent enrolls and connects (time until all are connected);
//! 2. steady: N agents reporting every INTERVAL seconds for WINDOW seconds:
//!    the coordinator's CPU (share of one core, from /proc/PID/stat), RSS,
//!    the bytes it writes to disk per second (/proc/PID/io), and the reports
//!    it counted (`dfleet_reports_total`);
//! 3. `dfleet status --json` (the whole fleet), `dfleet exec -b -- true` on
//!    every node (each must answer 0);
//! 4. reconnect storm: the coordinator is killed (SIGKILL) and started again
//!    on the same address; the time until every agent is connected again,
//!    and the coordinator's peak CPU (per second) and RSS meanwhile. No agent
//!    may give up.
//!
//! Arguments: `N [INTERVAL [WINDOW]]`, default 10000 10 60. Needs root (the
//! agents enroll from privileged ports on 127.x addresses).
//!
//! ```sh
//! cargo build --release --locked --bins
//! cargo bench --locked -p dfleet-tests --bench swarm -- 10000 10 60
//! ```

use std::collections::HashSet;
use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use anyhow::{Context, Result, bail};
use dfleet_agent::collect::Collector;
use dfleet_agent::config::FileConfig;
use dfleet_agent::daemon::Agent;
use dfleet_agent::os::HostRoot;
use dfleet_agent::sandbox::{self, SandboxSpec};
use dfleet_tests::{Coordinator, Settings, TestNode, cluster_toml, proc_usage};
use tokio::sync::{Notify, watch};

/// What the agents' log says, read as it is written: which nodes connected
/// since the counter was last reset, and the warnings.
#[derive(Default)]
struct Seen {
    connected: HashSet<String>,
    warnings: usize,
    /// The first few distinct warnings, to print.
    samples: Vec<String>,
}

#[derive(Clone, Default)]
struct LogWatch {
    seen: Arc<Mutex<Seen>>,
    changed: Arc<Notify>,
}

impl LogWatch {
    fn line(&self, line: &str) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if line.contains("connected to the coordinator") {
            if let Some(node) = line
                .split("node=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
            {
                seen.connected.insert(node.to_string());
                self.changed.notify_waiters();
            }
        } else if line.contains(" WARN ") || line.contains(" ERROR ") {
            seen.warnings += 1;
            // The message without its time stamp.
            let text = line.split_once(' ').map_or(line, |(_, t)| t).trim();
            if seen.samples.len() < 5 && !seen.samples.iter().any(|s| s == text) {
                seen.samples.push(text.to_string());
            }
        }
    }

    fn reset(&self) {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .connected
            .clear();
    }

    fn connected(&self) -> usize {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .connected
            .len()
    }

    /// Waits until `n` distinct nodes connected since the last reset.
    async fn until_connected(&self, n: usize, limit: Duration) -> Result<Duration> {
        let start = Instant::now();
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = self.connected();
            if now >= n {
                return Ok(start.elapsed());
            }
            if tokio::time::timeout(limit.saturating_sub(start.elapsed()), notified)
                .await
                .is_err()
            {
                bail!("{now} of {n} agents connected after {limit:?}");
            }
        }
    }
}

/// The fmt layer's writer: each event arrives as one write.
struct LineWriter(LogWatch);

impl std::io::Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for line in String::from_utf8_lossy(buf).lines() {
            self.0.line(line);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Samples a process's CPU once a second; the highest share of one core
/// seen, until told to stop.
fn peak_cpu(pid: u32, stop: watch::Receiver<bool>) -> tokio::task::JoinHandle<f64> {
    tokio::spawn(async move {
        let mut stop = stop;
        let mut peak: f64 = 0.0;
        let mut last = (
            Instant::now(),
            proc_usage(pid).map(|u| u.cpu_s).unwrap_or(0.0),
        );
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return peak,
            }
            let Ok(u) = proc_usage(pid) else { return peak };
            let now = Instant::now();
            peak = peak.max((u.cpu_s - last.1) / (now - last.0).as_secs_f64());
            last = (now, u.cpu_s);
        }
    })
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The value of a metric without labels in the coordinator's metrics page.
async fn metric(c: &Coordinator, name: &str) -> Result<f64> {
    let (_, body) = dfleet_tests::http_get(&c.metrics, "/metrics").await?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("{name} in the metrics"))
}

/// Runs `args` against the coordinator `runs` times: (median, min) seconds.
async fn time_cli(
    c: &Coordinator,
    args: &[&str],
    runs: usize,
    check: impl Fn(&str) -> Result<()>,
) -> Result<(f64, f64)> {
    let mut times = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let o = c.cli_raw(args).await?;
        times.push(t.elapsed().as_secs_f64());
        if !o.status.success() && args[0] != "exec" {
            bail!(
                "dfleet {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        check(&format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ))?;
    }
    times.sort_by(f64::total_cmp);
    Ok((times[times.len() / 2], times[0]))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = dfleet_tests::bench_args();
    let n: usize = args
        .first()
        .map_or(Ok(10_000), |a| a.parse())
        .context("N")?;
    let interval: u64 = args
        .get(1)
        .map_or(Ok(10), |a| a.parse())
        .context("INTERVAL")?;
    let window: u64 = args
        .get(2)
        .map_or(Ok(60), |a| a.parse())
        .context("WINDOW")?;
    if n == 0 || n > 250 * 250 {
        bail!("{n} nodes: expected 1 to 62500");
    }
    if !rustix::process::geteuid().is_root() {
        bail!("the swarm runs as root: agents enroll from privileged ports");
    }
    // Each agent holds a socket, and each command it runs a pidfd and two
    // pipes; the coordinator (which inherits the limit) a socket per agent.
    let files = (4 * n + 4096) as u64;
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    if limit.current.is_some_and(|c| c < files) {
        rustix::process::setrlimit(
            rustix::process::Resource::Nofile,
            rustix::process::Rlimit {
                current: Some(files),
                maximum: Some(files.max(limit.maximum.unwrap_or(0))),
            },
        )
        .with_context(|| format!("raising the open files limit to {files}"))?;
    }
    let log = LogWatch::default();
    let writer = log.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || LineWriter(writer.clone()))
        .init();

    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let ns: Vec<TestNode> = dfleet_tests::swarm_nodes(n, 80, 5);
    let settings = Settings {
        report_interval: Box::leak(format!("{interval}s").into_boxed_str()),
        stale_after: "120s",
        lost_after: "600s",
        ..Settings::default()
    };
    let toml = cluster_toml(d, &ns, &settings);
    let t = Instant::now();
    for t in &ns {
        let root = d.join(&t.name);
        sandbox::build(&root, &SandboxSpec::new(&t.name, t.mac.parse()?, t.ip))
            .with_context(|| format!("building {}'s sandbox", t.name))?;
    }
    println!("{n} sandboxes built in {:.1} s", t.elapsed().as_secs_f64());

    let c = Coordinator::start_logging(d, &toml, "warn").await?;
    let port = c.grpc.rsplit(':').next().context("port")?.to_string();
    let (stop_agents, stopped) = watch::channel(false);
    let t = Instant::now();
    let mut agents = tokio::task::JoinSet::new();
    for t in &ns {
        let root = d.join(&t.name);
        let cfg = FileConfig {
            root: root.clone(),
            coordinator: Some(c.grpc.clone()),
            ca_cert: c.ca(),
            state_dir: root.join("run/dfleet-agent"),
            bind: Some(t.ip.into()),
            ..FileConfig::default()
        };
        let collector = Collector::new(HostRoot::new(root), cfg.collector_config());
        let agent = Agent::new(cfg, collector)?;
        let mut stopped = stopped.clone();
        let name = t.name.clone();
        agents.spawn(async move {
            let result = agent
                .run(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await;
            (name, result)
        });
    }
    let ramp = log.until_connected(n, Duration::from_secs(1800)).await?;
    println!(
        "ramp: {n} agents enrolled and connected in {:.1} s (started {:.1} s ago)",
        ramp.as_secs_f64(),
        t.elapsed().as_secs_f64()
    );

    // Steady state: let the first reports of everyone land, then measure.
    tokio::time::sleep(Duration::from_secs(interval * 2)).await;
    let reports0 = metric(&c, "dfleet_reports_total").await?;
    let u0 = proc_usage(c.pid())?;
    let s0 = proc_usage(std::process::id())?;
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(window)).await;
    let u1 = proc_usage(c.pid())?;
    let s1 = proc_usage(std::process::id())?;
    let secs = t0.elapsed().as_secs_f64();
    let reports1 = metric(&c, "dfleet_reports_total").await?;
    let connected = metric(&c, "dfleet_connected_agents").await?;
    println!();
    println!("| {n} agents, a report every {interval} s | value |");
    println!("|---|---|");
    println!("| window | {secs:.0} s |");
    println!("| connected agents (coordinator's count) | {connected:.0} |");
    println!(
        "| reports received | {:.0} ({:.0}/s) |",
        reports1 - reports0,
        (reports1 - reports0) / secs
    );
    println!(
        "| coordinator CPU | {:.1} % of one core |",
        100.0 * (u1.cpu_s - u0.cpu_s) / secs
    );
    println!(
        "| coordinator RSS | {:.0} MiB (peak {:.0} MiB) |",
        mib(u1.rss_kib),
        mib(u1.hwm_kib)
    );
    println!(
        "| coordinator disk writes | {:.0} KiB/s |",
        (u1.write_bytes - u0.write_bytes) as f64 / 1024.0 / secs
    );
    println!(
        "| the swarm process ({n} agents) | {:.0} % of one core, RSS {:.0} MiB |",
        100.0 * (s1.cpu_s - s0.cpu_s) / secs,
        mib(s1.rss_kib)
    );
    std::io::stdout().flush()?;

    let set = format!("cn[00001-{n:05}]");
    let (median, min) = time_cli(&c, &["status", "--json"], 5, |out| {
        let v: serde_json::Value = serde_json::from_str(out.trim_end())?;
        let nodes = v["nodes"].as_array().map_or(0, Vec::len);
        if nodes != n {
            bail!("status --json listed {nodes} nodes");
        }
        Ok(())
    })
    .await?;
    println!(
        "| `dfleet status --json` ({n} nodes, 5 runs) | median {median:.2} s, min {min:.2} s |"
    );
    let (median, min) = time_cli(&c, &["exec", &set, "-b", "--", "true"], 3, |out| {
        if !out.contains(&format!(": {n} ok")) {
            bail!("dfleet exec true: {out}");
        }
        Ok(())
    })
    .await?;
    println!(
        "| `dfleet exec -b -- true` on {n} nodes (3 runs) | median {median:.2} s, min {min:.2} s |"
    );

    // The reconnect storm.
    log.reset();
    let mut c = c;
    c.kill().await?;
    let t = Instant::now();
    let toml = toml.replace("127.0.0.1:0\"]", &format!("127.0.0.1:{port}\"]"));
    let c = Coordinator::start_logging(d, &toml, "warn").await?;
    let (stop_sampling, sampling) = watch::channel(false);
    let peak = peak_cpu(c.pid(), sampling);
    let back = log.until_connected(n, Duration::from_secs(600)).await;
    let _ = stop_sampling.send(true);
    let peak = peak.await?;
    let after = proc_usage(c.pid())?;
    let back = back?;
    if let Some(Ok((name, result))) = agents.try_join_next() {
        bail!("agent {name} gave up: {result:?}");
    }
    println!(
        "| reconnect storm: all {n} agents back after a SIGKILL and restart | {:.1} s ({:.1} s after the new coordinator was up) |",
        t.elapsed().as_secs_f64(),
        back.as_secs_f64()
    );
    println!(
        "| coordinator during the storm | peak {:.0} % of one core, RSS peak {:.0} MiB |",
        100.0 * peak,
        mib(after.hwm_kib)
    );

    let (warnings, samples) = {
        let seen = log.seen.lock().unwrap_or_else(|e| e.into_inner());
        (seen.warnings, seen.samples.clone())
    };
    println!();
    println!("agents' warnings over the run: {warnings}");
    for s in &samples {
        println!("  {s}");
    }
    let _ = stop_agents.send(true);
    while let Some(done) = agents.join_next().await {
        let (name, result) = done?;
        if let Err(e) = result {
            bail!("agent {name}: {e}");
        }
    }
    drop(c);
    Ok(())
}
