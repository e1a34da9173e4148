//! The `dfleet-agent` binary: reads its config, sets up logging, runs the agent
//! on a single-threaded runtime (it lives in the node's RAM: small and frugal).

use std::net::IpAddr;
use std::path::PathBuf;

use clap::Parser;
use dfleet_agent::collect::Collector;
use dfleet_agent::config::FileConfig;
use dfleet_agent::daemon::Agent;
use dfleet_agent::os::HostRoot;

#[derive(Debug, Parser)]
#[command(name = "dfleet-agent", version, about = "dfleet's node agent")]
struct Args {
    /// The agent's configuration file.
    #[arg(long, short, default_value = "/etc/dfleet/agent.toml")]
    config: PathBuf,
    /// Root of the machine to report on (a sandbox directory in tests).
    #[arg(long)]
    root: Option<PathBuf>,
    /// The coordinator, HOST:PORT.
    #[arg(long)]
    coordinator: Option<String>,
    /// The cluster CA certificate.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Where this boot's key and certificate are kept (RAM).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Source address for connections to the coordinator.
    #[arg(long)]
    bind: Option<IpAddr>,
    /// The name in the coordinator's certificate.
    #[arg(long)]
    server_name: Option<String>,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    // A plain level (DFLEET_LOG=debug…) rather than filter expressions: the
    // agent stays small without a regex engine.
    let level = std::env::var("DFLEET_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::INFO);
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: not into journald or a pipe.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        eprintln!("dfleet-agent: a TLS crypto provider was already installed");
    }
    let explicit = args.config != std::path::Path::new("/etc/dfleet/agent.toml");
    let mut cfg = match FileConfig::load(&args.config, explicit) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dfleet-agent: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    if let Some(v) = args.root {
        cfg.root = v;
    }
    if let Some(v) = args.coordinator {
        cfg.coordinator = Some(v);
    }
    if let Some(v) = args.ca {
        cfg.ca_cert = v;
    }
    if let Some(v) = args.state_dir {
        cfg.state_dir = v;
    }
    if let Some(v) = args.bind {
        cfg.bind = Some(v);
    }
    if let Some(v) = args.server_name {
        cfg.server_name = v;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dfleet-agent: starting the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let collector = Collector::new(HostRoot::new(cfg.root.clone()), cfg.collector_config());
        let agent = Agent::new(cfg, collector)?;
        agent.run(shutdown()).await
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dfleet-agent: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
