//! The `dfleet` binary: parses the command line, sets up logging, runs it.

use clap::Parser;

fn main() -> std::process::ExitCode {
    // The image sandbox re-executes this binary for its two hidden stages;
    // they unshare namespaces, so they run before clap or any thread starts.
    if let Some(code) = dfleet_provisioner::image::chroot::dispatch(std::env::args_os()) {
        return code;
    }
    let cli = dfleet_coordinator::cli::Cli::parse();
    // Image commands work on the local image store and pass on the exit
    // status of what they run; they need no runtime.
    if let dfleet_coordinator::cli::Command::Image { config, command } = &cli.command {
        return match dfleet_coordinator::images::run(&cli, config, command) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("dfleet: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    // The lab starts and stops processes and runs `dfleet` itself for the
    // rest; it builds its own runtime.
    if let dfleet_coordinator::cli::Command::Lab { command } = &cli.command {
        return match dfleet_coordinator::lab::run(command) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("dfleet: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    // The daemon logs what it does; interactive commands only what goes wrong.
    let default = match cli.command {
        dfleet_coordinator::cli::Command::Serve { .. } => "warn,dfleet_coordinator=info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DFLEET_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: not into journald, files or pipes.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        eprintln!("dfleet: a TLS crypto provider was already installed");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dfleet: starting the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dfleet_coordinator::cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dfleet: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
