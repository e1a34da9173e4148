//! The swarm: N agents, run by worker processes of this binary, against a
//! real `dfleet serve`.
//!
//! Each agent is the real agent library (`dfleet_agent::daemon::Agent`) with
//! its own sandboxed node root, its own TLS identity (it enrolls like a
//! node), and its own 127.x source address; exec orders really spawn
//! processes. The coordinator is the `dfleet` binary of the build, with its
//! real store, over real sockets and TLS.
//!
//! The agents live in a few worker processes rather than in this one because
//! of open files: each agent holds a socket, and each command it runs a pidfd
//! and two pipes, so 10,000 agents in one process would need some 40,000,
//! above a hard limit that a container without CAP_SYS_RESOURCE cannot
//! raise. Each worker takes a contiguous slice of the nodes, builds their
//! sandboxes (the workers build in parallel), runs their agents, and tells
//! this process what their log says on its stdout, a line per event:
//! `built`, `connected NODE`, `warn MESSAGE`, `gave-up NODE ERROR`. A
//! connection is counted when the agent logs it, never by asking the
//! coordinator. A worker stops its agents and exits when its stdin ends, so
//! the workers die with this process.
//!
//! Phases, each printed as it ends:
//! 1. ramp: every agent enrolls and connects (time until all are connected);
//! 2. steady: N agents reporting every INTERVAL seconds for WINDOW seconds:
//!    the coordinator's CPU (share of one core, from /proc/PID/stat), RSS,
//!    the bytes it writes to disk per second (/proc/PID/io), and the reports
//!    it counted (`dfleet_reports_total`); the workers' CPU and RSS, added up;
//! 0. before anything else: N `/bin/true` spawned by this process, 8 at a
//!    time (what N real commands cost this machine alone);
//! 3. `dfleet status --json` (the whole fleet), `dfleet exec -b -- true` on
//!    every node (each must answer 0), with the default fanout and with all
//!    nodes at once; the coordinator logs each exec's timing breakdown;
//! 4. reconnect storm: the coordinator is killed (SIGKILL) and started again
//!    on the same address; the time until every agent is connected again,
//!    and the coordinator's peak CPU (per second) and RSS meanwhile. No agent
//!    may give up.
//!
//! Arguments: `N [INTERVAL [WINDOW [WORKERS]]]`, default 10000 10 60, and as
//! few workers as the hard open files limit allows (ceil(4N / (limit -
//! 2048)): 3 for 10,000 agents under a limit of 20,000); WORKERS asks for
//! more, e.g. to try the split on a small swarm. Needs root (the agents
//! enroll from privileged ports on 127.x addresses).
//!
//! ```sh
//! cargo build --release --locked --bins
//! cargo bench --locked -p dfleet-tests --bench swarm -- 10000 10 60
//! ```
//!
//! A worker is this binary started as `swarm worker N FIRST COUNT DIR`: it
//! runs nodes FIRST..FIRST+COUNT of the N, with their sandboxes under DIR;
//! the first line on its stdin, `start GRPC CA`, says where the coordinator
//! is.

use std::collections::HashSet;
use std::io::Write as _;
use std::ops::Range;
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use dfleet_agent::collect::Collector;
use dfleet_agent::config::FileConfig;
use dfleet_agent::daemon::Agent;
use dfleet_agent::os::HostRoot;
use dfleet_agent::sandbox::{self, SandboxSpec};
use dfleet_tests::{Coordinator, ProcUsage, Settings, TestNode, cluster_toml, proc_usage};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{Notify, watch};

/// Open files a worker needs besides its agents' four each: its runtime, its
/// pipes to the parent, the files a report reads, a process being spawned.
const SLACK: u64 = 2048;

/// What the workers say, read as they write it: which workers built their
/// sandboxes, which nodes connected since the counter was last reset, the
/// agents' warnings, and what went wrong.
#[derive(Default)]
struct Seen {
    built: usize,
    connected: HashSet<String>,
    warnings: usize,
    /// The first few distinct warnings, to print.
    samples: Vec<String>,
    /// Agents that gave up, workers that ended before they were told to.
    failures: Vec<String>,
    /// Set when the workers are told to stop: their end is expected.
    stopping: bool,
}

impl Seen {
    /// Fails with what went wrong in the swarm, if anything did.
    fn check(&self) -> Result<()> {
        if self.failures.is_empty() {
            return Ok(());
        }
        bail!(
            "{} failures in the swarm, the first:\n  {}",
            self.failures.len(),
            self.failures[..self.failures.len().min(10)].join("\n  ")
        );
    }
}

#[derive(Clone, Default)]
struct LogWatch {
    seen: Arc<Mutex<Seen>>,
    changed: Arc<Notify>,
}

impl LogWatch {
    fn lock(&self) -> MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A line from a worker.
    fn line(&self, line: &str) {
        let mut seen = self.lock();
        let (kind, rest) = line.split_once(' ').unwrap_or((line, ""));
        match kind {
            "built" => seen.built += 1,
            "connected" => {
                seen.connected.insert(rest.to_string());
            }
            "warn" => {
                seen.warnings += 1;
                if seen.samples.len() < 5 && !seen.samples.iter().any(|s| s == rest) {
                    seen.samples.push(rest.to_string());
                }
            }
            "gave-up" => {
                let (node, error) = rest.split_once(' ').unwrap_or((rest, ""));
                seen.failures.push(format!("agent {node} gave up: {error}"));
            }
            _ => seen.failures.push(format!("a worker said {line:?}")),
        }
        self.changed.notify_waiters();
    }

    /// A worker's stdout ended (it exited).
    fn ended(&self, worker: &str, error: Option<std::io::Error>) {
        let mut seen = self.lock();
        if let Some(e) = error {
            seen.failures.push(format!("reading {worker}: {e}"));
        } else if !seen.stopping {
            seen.failures.push(format!("{worker} ended"));
        }
        self.changed.notify_waiters();
    }

    fn reset(&self) {
        self.lock().connected.clear();
    }

    /// Waits until `count` of what was seen reaches `n`; returns how long
    /// that took. Fails as soon as something went wrong in the swarm, or
    /// after `limit` with how many of the `n` `what` there were.
    async fn until(
        &self,
        n: usize,
        what: &str,
        limit: Duration,
        count: impl Fn(&Seen) -> usize,
    ) -> Result<Duration> {
        let start = Instant::now();
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = {
                let seen = self.lock();
                seen.check()?;
                count(&seen)
            };
            if now >= n {
                return Ok(start.elapsed());
            }
            if tokio::time::timeout(limit.saturating_sub(start.elapsed()), notified)
                .await
                .is_err()
            {
                bail!("{now} of {n} {what} after {limit:?}");
            }
        }
    }

    /// Waits until `n` distinct nodes connected since the last reset.
    async fn until_connected(&self, n: usize, limit: Duration) -> Result<Duration> {
        self.until(n, "agents connected", limit, |s| s.connected.len())
            .await
    }
}

/// A worker process, seen from the parent.
struct Worker {
    /// "the worker of cn00001-cn00200", for messages.
    label: String,
    pid: u32,
    child: Child,
    /// Closing it stops the worker.
    stdin: Option<ChildStdin>,
    /// Feeds the worker's lines to the `LogWatch`.
    reader: tokio::task::JoinHandle<()>,
}

impl Worker {
    /// Starts a worker for `nodes` of `ns` (sandboxes under `dir`), its lines
    /// going to `log`.
    fn spawn(ns: &[TestNode], nodes: Range<usize>, dir: &Path, log: &LogWatch) -> Result<Worker> {
        let (first, last) = (
            nodes.clone().next().and_then(|i| ns.get(i)),
            nodes.clone().next_back().and_then(|i| ns.get(i)),
        );
        let (first, last) = first.zip(last).context("a worker's nodes")?;
        let label = format!("the worker of {}-{}", first.name, last.name);
        let exe = std::env::current_exe().context("the bench's own path")?;
        let mut child = Command::new(exe)
            .arg("worker")
            .arg(ns.len().to_string())
            .arg(nodes.start.to_string())
            .arg(nodes.len().to_string())
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {label}"))?;
        let pid = child.id().context("a worker's pid")?;
        let stdin = child.stdin.take();
        let mut lines = BufReader::new(child.stdout.take().context("a worker's stdout")?).lines();
        let (log, name) = (log.clone(), label.clone());
        let reader = tokio::spawn(async move {
            loop {
                match lines.next_line().await {
                    Ok(Some(line)) => log.line(&line),
                    Ok(None) => return log.ended(&name, None),
                    Err(e) => return log.ended(&name, Some(e)),
                }
            }
        });
        Ok(Worker {
            label,
            pid,
            child,
            stdin,
            reader,
        })
    }

    /// Writes a line to the worker's stdin.
    async fn send(&mut self, line: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().context("stdin already closed")?;
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .with_context(|| format!("writing to {}", self.label))
    }

    /// Waits for the worker to exit, once its stdin is closed, and for its
    /// last lines.
    async fn stopped(mut self) -> Result<()> {
        let status = tokio::time::timeout(Duration::from_secs(120), self.child.wait())
            .await
            .with_context(|| format!("{} did not stop", self.label))??;
        self.reader.await?;
        if !status.success() {
            bail!("{}: {status}", self.label);
        }
        Ok(())
    }
}

/// The workers' CPU time and memory, added up.
fn swarm_usage(swarm: &[Worker]) -> Result<ProcUsage> {
    let mut sum = ProcUsage {
        cpu_s: 0.0,
        rss_kib: 0,
        hwm_kib: 0,
        write_bytes: 0,
    };
    for w in swarm {
        let u = proc_usage(w.pid).with_context(|| format!("the usage of {}", w.label))?;
        sum.cpu_s += u.cpu_s;
        sum.rss_kib += u.rss_kib;
        sum.hwm_kib += u.hwm_kib;
        sum.write_bytes += u.write_bytes;
    }
    Ok(sum)
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
/// Seconds to spawn and reap `n` `/bin/true`, `at_once` at a time.
async fn spawn_floor(n: usize, at_once: usize) -> Result<f64> {
    let t = Instant::now();
    let mut running: tokio::task::JoinSet<std::io::Result<std::process::ExitStatus>> =
        tokio::task::JoinSet::new();
    for _ in 0..n {
        if running.len() >= at_once
            && let Some(done) = running.join_next().await
        {
            ensure!(done??.success(), "/bin/true failed");
        }
        let mut child = tokio::process::Command::new("/bin/true")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()?;
        running.spawn(async move { child.wait().await });
    }
    while let Some(done) = running.join_next().await {
        ensure!(done??.success(), "/bin/true failed");
    }
    Ok(t.elapsed().as_secs_f64())
}

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

/// A line to the parent. A line at a time under stdout's lock, so the
/// agents' events never interleave; a parent gone (a broken pipe) is seen on
/// stdin instead.
fn say(line: &str) {
    let _ = writeln!(std::io::stdout().lock(), "{}", line.replace('\n', " "));
}

/// What the parent hears of an agent's log line: `connected NODE`,
/// `warn MESSAGE`, or nothing.
fn event(line: &str) -> Option<String> {
    if line.contains("connected to the coordinator") {
        let node = line
            .split("node=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())?;
        Some(format!("connected {node}"))
    } else if line.contains(" WARN ") || line.contains(" ERROR ") {
        // The message without its time stamp.
        let text = line.split_once(' ').map_or(line, |(_, t)| t).trim();
        Some(format!("warn {text}"))
    } else {
        None
    }
}

/// A worker's fmt layer writer: each event arrives as one write.
struct EventWriter;

impl std::io::Write for EventWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for line in String::from_utf8_lossy(buf).lines() {
            if let Some(e) = event(line) {
                say(&e);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A worker (`worker N FIRST COUNT DIR`): builds the sandboxes of its nodes,
/// says `built`, waits for `start GRPC CA` on stdin, runs the agents until
/// stdin ends, then stops them.
async fn worker(args: &[String]) -> Result<()> {
    let [n, first, count, dir] = args else {
        bail!("worker arguments: N FIRST COUNT DIR, not {args:?}");
    };
    let n: usize = n.parse().context("N")?;
    let first: usize = first.parse().context("FIRST")?;
    let count: usize = count.parse().context("COUNT")?;
    let dir = PathBuf::from(dir);
    let all = dfleet_tests::swarm_nodes(n, 80, 5);
    let ns = all
        .get(first..first + count)
        .with_context(|| format!("nodes {first}..{} of {n}", first + count))?;
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(|| EventWriter)
        .init();
    // The parent's orders. A pipe read through the reactor, not a blocking
    // read on a thread, which the runtime could not cancel.
    let stdin = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .context("stdin")?;
    let mut orders = BufReader::new(
        tokio::net::unix::pipe::Receiver::from_owned_fd(stdin)
            .context("stdin: a pipe from the parent")?,
    )
    .lines();

    for t in ns {
        let root = dir.join(&t.name);
        // No systemd: its check spawns the node's `systemctl` at every report, one
        // process per node every interval, which on a real node runs on that node's
        // own CPU; here it would be N / INTERVAL spawns a second on the bench's cores.
        let spec = SandboxSpec {
            systemd: false,
            ..SandboxSpec::new(&t.name, t.mac.parse()?, t.ip)
        };
        sandbox::build(&root, &spec).with_context(|| format!("building {}'s sandbox", t.name))?;
    }
    say("built");

    let start = orders
        .next_line()
        .await
        .context("reading stdin")?
        .context("stdin ended before `start`")?;
    let (grpc, ca) = start
        .strip_prefix("start ")
        .and_then(|rest| rest.split_once(' '))
        .with_context(|| format!("expected `start GRPC CA` on stdin, not {start:?}"))?;
    let (stop_agents, stopped) = watch::channel(false);
    let mut agents = tokio::task::JoinSet::new();
    for t in ns {
        let root = dir.join(&t.name);
        let cfg = FileConfig {
            root: root.clone(),
            coordinator: Some(grpc.to_string()),
            ca_cert: PathBuf::from(ca),
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

    // Until stdin ends, an agent whose run returns gave up.
    loop {
        tokio::select! {
            order = orders.next_line() => match order {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            },
            Some(done) = agents.join_next() => {
                let (name, result) = done?;
                let why = match result {
                    Ok(()) => "it stopped on its own".to_string(),
                    Err(e) => e.to_string(),
                };
                say(&format!("gave-up {name} {why}"));
            }
        }
    }
    let _ = stop_agents.send(true);
    while let Some(done) = agents.join_next().await {
        let (name, result) = done?;
        if let Err(e) = result {
            say(&format!("gave-up {name} {e}"));
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = dfleet_tests::bench_args();
    if args.first().is_some_and(|a| a == "worker") {
        return worker(&args[1..]).await;
    }
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
    // pipes; the coordinator a socket per agent. The soft limit may go up to
    // the hard one unprivileged (the workers and the coordinator inherit
    // it); the hard one only with CAP_SYS_RESOURCE, which a container may
    // lack. So the agents are spread over as many workers as that limit
    // takes.
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let files = limit.maximum.unwrap_or(4 * n as u64 + SLACK);
    if limit.current.is_some_and(|c| c < files) {
        rustix::process::setrlimit(
            rustix::process::Resource::Nofile,
            rustix::process::Rlimit {
                current: Some(files),
                maximum: limit.maximum,
            },
        )
        .with_context(|| format!("raising the open files limit to {files}"))?;
    }
    if files < n as u64 + SLACK {
        bail!(
            "the coordinator holds a socket per agent: {n} agents need more than {files} open files"
        );
    }
    let needed = (4 * n as u64).div_ceil(files - SLACK) as usize;
    let workers: usize = args
        .get(3)
        .map_or(Ok(needed), |a| a.parse())
        .context("WORKERS")?;
    if workers < needed || workers > n {
        bail!(
            "{workers} workers: expected {needed} to {n} ({n} agents need 4 open files each, a worker may have {files})"
        );
    }

    // What N real commands cost this machine with nothing else running: the
    // floor under `exec` here, where the swarm's N nodes share its cores.
    let floor = spawn_floor(n, 8).await?;
    println!(
        "| {n} × `/bin/true` spawned by one process, 8 at a time, nothing else running | {floor:.2} s |"
    );

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
    let log = LogWatch::default();
    let t = Instant::now();
    let mut swarm = Vec::with_capacity(workers);
    for k in 0..workers {
        swarm.push(Worker::spawn(
            &ns,
            n * k / workers..n * (k + 1) / workers,
            d,
            &log,
        )?);
    }
    log.until(
        workers,
        "workers built their sandboxes",
        Duration::from_secs(1800),
        |s| s.built,
    )
    .await?;
    println!(
        "{n} sandboxes built in {:.1} s (worker processes: {workers})",
        t.elapsed().as_secs_f64()
    );

    // Each exec's timing breakdown (the session's debug line) is printed.
    let c = Coordinator::start_logging(d, &toml, "warn,dfleet_coordinator::exec=debug").await?;
    let port = c.grpc.rsplit(':').next().context("port")?.to_string();
    let t = Instant::now();
    let start = format!("start {} {}", c.grpc, c.ca().display());
    for w in &mut swarm {
        w.send(&start).await?;
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
    let s0 = swarm_usage(&swarm)?;
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(window)).await;
    let u1 = proc_usage(c.pid())?;
    let s1 = swarm_usage(&swarm)?;
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
        "| the swarm ({n} agents; worker processes: {workers}) | {:.0} % of one core, RSS {:.0} MiB |",
        100.0 * (s1.cpu_s - s0.cpu_s) / secs,
        mib(s1.rss_kib)
    );
    std::io::stdout().flush()?;

    let set = format!("cn[00001-{n:05}]");
    // Every node listed.
    let all_listed = |out: &str| {
        let v: serde_json::Value = serde_json::from_str(out.trim_end())?;
        let nodes = v["nodes"].as_array().map_or(0, Vec::len);
        if nodes != n {
            bail!("status --json listed {nodes} nodes");
        }
        Ok(())
    };
    let (median, min) = time_cli(&c, &["status", "--json"], 5, all_listed).await?;
    println!(
        "| `dfleet status --json` ({n} nodes, 5 runs) | median {median:.2} s, min {min:.2} s |"
    );
    // Again with the workers stopped (SIGSTOP; their connections stay
    // open): the coordinator and the CLI alone on the cores, as on a
    // management host whose nodes are other machines.
    let signal_workers = |signal| -> Result<()> {
        for w in &swarm {
            let pid = rustix::process::Pid::from_raw(w.pid as i32).context("a worker's pid")?;
            rustix::process::kill_process(pid, signal)
                .with_context(|| format!("signalling {}", w.label))?;
        }
        Ok(())
    };
    signal_workers(rustix::process::Signal::STOP)?;
    let paused = time_cli(&c, &["status", "--json"], 5, all_listed).await;
    signal_workers(rustix::process::Signal::CONT)?;
    let (median, min) = paused?;
    println!(
        "| `dfleet status --json`, the swarm stopped meanwhile (5 runs) | median {median:.2} s, min {min:.2} s |"
    );
    let (c0, w0, t0) = (proc_usage(c.pid())?, swarm_usage(&swarm)?, Instant::now());
    let (median, min) = time_cli(&c, &["exec", &set, "-b", "--", "true"], 3, |out| {
        if !out.contains(&format!(": {n} ok")) {
            bail!("dfleet exec true: {out}");
        }
        Ok(())
    })
    .await?;
    let (c1, w1, secs) = (
        proc_usage(c.pid())?,
        swarm_usage(&swarm)?,
        t0.elapsed().as_secs_f64(),
    );
    println!(
        "| `dfleet exec -b -- true` on {n} nodes (3 runs) | median {median:.2} s, min {min:.2} s |"
    );
    println!(
        "| during the exec runs | coordinator {:.0} % of one core, the swarm {:.0} % |",
        100.0 * (c1.cpu_s - c0.cpu_s) / secs,
        100.0 * (w1.cpu_s - w0.cpu_s) / secs
    );
    // Every node at once rather than 1,024 at a time.
    let fanout = n.to_string();
    let (median, min) = time_cli(
        &c,
        &["exec", &set, "-b", "--fanout", &fanout, "--", "true"],
        3,
        |out| {
            if !out.contains(&format!(": {n} ok")) {
                bail!("dfleet exec true: {out}");
            }
            Ok(())
        },
    )
    .await?;
    println!(
        "| `dfleet exec -b --fanout {n} -- true` on {n} nodes (3 runs) | median {median:.2} s, min {min:.2} s |"
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
        let seen = log.lock();
        (seen.warnings, seen.samples.clone())
    };
    println!();
    println!("agents' warnings over the run: {warnings}");
    for s in &samples {
        println!("  {s}");
    }
    // The end of its stdin stops a worker's agents.
    log.lock().stopping = true;
    for w in &mut swarm {
        w.stdin = None;
    }
    for w in swarm {
        w.stopped().await?;
    }
    log.lock().check()?;
    drop(c);
    Ok(())
}
