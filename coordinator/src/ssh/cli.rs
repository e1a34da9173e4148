//! `dfleet ssh`: the fleet's known_hosts, the SSH host CA, rotation.

use std::path::PathBuf;

use anyhow::{Context, Result};
use dfleet_proto::pb;

use crate::cli::{Cli, status_err};
use crate::client;

#[derive(Debug, clap::Subcommand)]
pub enum SshCommand {
    /// Write the fleet's ssh_known_hosts: one @cert-authority line for the
    /// nodes in certificates mode, each managed node's own key.
    KnownHosts {
        /// Write it here (atomically) instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The cluster's SSH host CA.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// New host keys for a node set: managed nodes get a new key set (sent
    /// at once to those connected), nodes in certificates mode make a new
    /// key pair and have it certified.
    Rotate { nodeset: String },
}

#[derive(Debug, clap::Subcommand)]
pub enum CaCommand {
    /// Print its public key, its fingerprint and the line clients trust.
    Show,
}

pub async fn run(cli: &Cli, command: &SshCommand) -> Result<()> {
    let mut c = client::connect(&cli.target()?).await?;
    match command {
        SshCommand::KnownHosts { out } => {
            let text = c
                .ssh_known_hosts(pb::SshKnownHostsRequest {})
                .await
                .map_err(status_err)?
                .into_inner()
                .text;
            match out {
                None => print!("{text}"),
                Some(path) => {
                    dfleet_provisioner::image::store::write_atomic(path, text.as_bytes(), 0o644)
                        .with_context(|| format!("writing {}", path.display()))?;
                    eprintln!("wrote {}", path.display());
                }
            }
        }
        SshCommand::Ca {
            command: CaCommand::Show,
        } => {
            let r = c
                .ssh_ca(pb::SshCaRequest {})
                .await
                .map_err(status_err)?
                .into_inner();
            println!("public key:  {}", r.public_key);
            println!("fingerprint: {}", r.fingerprint);
            println!("known_hosts: `dfleet ssh known-hosts` writes the @cert-authority line");
        }
        SshCommand::Rotate { nodeset } => {
            let r = c
                .ssh_rotate(pb::SshRotateRequest {
                    nodeset: nodeset.clone(),
                })
                .await
                .map_err(status_err)?
                .into_inner();
            println!("{}", r.detail);
        }
    }
    Ok(())
}
