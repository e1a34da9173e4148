//! The agent's footprint: steady RSS and CPU per report of a real
//! `dfleet-agent` reporting to a real `dfleet serve` over mutual TLS, with an
//! upper layer of 10,000 files, side by side in the same run with Debian's
//! `prometheus-node-exporter` scraped at the same interval.
//!
//! Build the binaries first (the agent as it goes into an image), then run:
//!   cargo build --release --locked --bins
//!   cargo build --profile agent --locked -p dfleet-agent
//!   DFLEET_AGENT_BIN=$PWD/target/agent/dfleet-agent \
//!     cargo bench -p dfleet-tests --bench footprint -- [SECONDS] [INTERVAL_SECONDS]
//! Debian's prometheus-node-exporter is installed when missing.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use dfleet_agent::sandbox::{self, SandboxSpec};
use dfleet_proto::domain::EventKind;
use dfleet_tests::{Agent, Coordinator, Settings, cluster_toml, nodes};

/// (RSS bytes, CPU seconds) of a process, from /proc.
fn usage(pid: u32) -> Result<(u64, f64)> {
    let u = dfleet_tests::proc_usage(pid)?;
    Ok((u.rss_kib * 1024, u.cpu_s))
}

fn pid_of_child_named(parent_dir: &Path, name: &str) -> Result<u32> {
    // The agent's pid: the process whose command line names this sandbox.
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd);
        if cmd.contains(name) && cmd.contains(&*parent_dir.to_string_lossy()) {
            return Ok(pid);
        }
    }
    bail!("no {name} process for {}", parent_dir.display())
}

async fn metric(addr: &str, name: &str) -> Result<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await?;
    let mut body = String::new();
    s.read_to_string(&mut body).await?;
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .with_context(|| format!("{name} in the metrics"))
}

async fn scrape(addr: &str) -> Result<usize> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await?;
    let mut body = Vec::new();
    s.read_to_end(&mut body).await?;
    Ok(body.len())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = dfleet_tests::bench_args();
    let seconds: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(120);
    let interval: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10);

    if which("prometheus-node-exporter").is_none() {
        let ok = std::process::Command::new("sh")
            .args(["-c", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus-node-exporter"])
            .status()?
            .success();
        if !ok {
            bail!("installing prometheus-node-exporter failed");
        }
    }

    let dir = tempfile::tempdir()?;
    let ns = nodes(200, 1);
    let ri = format!("{interval}s");
    let settings = Settings {
        report_interval: Box::leak(ri.into_boxed_str()),
        ..Settings::default()
    };
    let c = Coordinator::start(dir.path(), &cluster_toml(dir.path(), &ns, &settings)).await?;
    let mut events = c.watch().await?;

    let mut spec = SandboxSpec::new(&ns[0].name, ns[0].mac.parse()?, ns[0].ip);
    // A realistic upper: 10,000 files from 1 KiB to 64 KiB in 100 directories.
    spec.upper_files = (0..10_000u64)
        .map(|i| {
            (
                format!("/var/lib/app/d{:02}/f{i:05}.dat", i % 100),
                1024 + (i * 7919) % (63 * 1024),
            )
        })
        .collect();
    let root = dir.path().join("node");
    sandbox::build(&root, &spec)?;
    let _agent = Agent::start(&c, &ns[0], &root).await?;
    events.wait(EventKind::Ready, &ns[0].name).await?;
    let agent_pid = pid_of_child_named(&root, "dfleet-agent")?;

    // node_exporter on a port picked by the kernel, scraped at the same interval.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let ne_addr = format!("127.0.0.1:{port}");
    let mut ne =
        tokio::process::Command::new(which("prometheus-node-exporter").context("node exporter")?)
            .arg(format!("--web.listen-address={ne_addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
    let ne_pid = ne.id().context("node exporter pid")?;
    // It logs "Listening on" once it serves.
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(
        ne.stderr.take().context("stderr")?,
    ));
    loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .context("node exporter did not start")??
            .context("node exporter exited")?;
        if line.contains("Listening on") {
            break;
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let reports0 = metric(&c.metrics, "dfleet_reports_total").await?;
    let (_, agent_cpu0) = usage(agent_pid)?;
    let (_, ne_cpu0) = usage(ne_pid)?;
    let mut agent_rss_max = 0;
    let mut ne_rss_max = 0;
    let mut agent_rss_last = 0;
    let mut ne_rss_last = 0;
    let mut scrapes = 0u64;
    let mut tick = tokio::time::interval(Duration::from_secs(interval));
    let end = tokio::time::Instant::now() + Duration::from_secs(seconds);
    while tokio::time::Instant::now() < end {
        tick.tick().await;
        scrape(&ne_addr).await?;
        scrapes += 1;
        let (a, _) = usage(agent_pid)?;
        let (n, _) = usage(ne_pid)?;
        agent_rss_max = agent_rss_max.max(a);
        ne_rss_max = ne_rss_max.max(n);
        agent_rss_last = a;
        ne_rss_last = n;
    }
    let reports = metric(&c.metrics, "dfleet_reports_total").await? - reports0;
    let (_, agent_cpu1) = usage(agent_pid)?;
    let (_, ne_cpu1) = usage(ne_pid)?;
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "footprint over {seconds} s, one report / scrape every {interval} s, upper with 10,000 files:"
    );
    println!("| process | steady RSS | peak RSS | reports or scrapes | CPU per report or scrape |");
    println!("|---|---|---|---|---|");
    println!(
        "| dfleet-agent | {:.1} MiB | {:.1} MiB | {reports} | {:.1} ms |",
        mib(agent_rss_last),
        mib(agent_rss_max),
        (agent_cpu1 - agent_cpu0) * 1000.0 / reports.max(1.0)
    );
    println!(
        "| prometheus-node-exporter | {:.1} MiB | {:.1} MiB | {scrapes} | {:.1} ms |",
        mib(ne_rss_last),
        mib(ne_rss_max),
        (ne_cpu1 - ne_cpu0) * 1000.0 / scrapes.max(1) as f64
    );
    let _ = ne.kill().await;
    Ok(())
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_string_lossy()
        .split(':')
        .map(|d| Path::new(d).join(name))
        .chain(
            ["/usr/bin", "/usr/sbin"]
                .iter()
                .map(|d| Path::new(d).join(name)),
        )
        .find(|p| p.exists())
}
