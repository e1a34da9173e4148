//! The daemon's single writer of boot files. Rendering reads the inventory
//! and the assignments from the fleet task; writing goes through one lock, so
//! a `pxe apply`, an image publish and a rollout can never undo each other's
//! menus. Staged DHCP configuration is checked by the real daemon before
//! anything is replaced.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use dfleet_provisioner::boot::write::{self, Changes, Hooks};
use dfleet_provisioner::boot::{GeneratedFile, check, plan, render};
use dfleet_provisioner::inventory::Inventory;
use tokio::sync::Mutex;
use tonic::Status;

use crate::fleet::{Command, FleetHandle};

/// Owns the right to write boot files.
#[derive(Debug)]
pub struct BootWriter {
    lock: Mutex<()>,
    manifest: PathBuf,
}

impl BootWriter {
    pub fn new(state_dir: &Path) -> Arc<BootWriter> {
        Arc::new(BootWriter {
            lock: Mutex::new(()),
            manifest: state_dir.join("boot-manifest"),
        })
    }
}

/// The address nodes dial when `[boot] coordinator` is not set: the first
/// listen address, or the next-server with that port when it listens on all.
fn default_coordinator(inv: &Inventory) -> String {
    let Some(first) = inv.cluster.listen.first() else {
        return String::new();
    };
    match (first.ip().is_unspecified(), &inv.boot) {
        (true, Some(b)) => SocketAddr::new(b.next_server.into(), first.port()).to_string(),
        _ => first.to_string(),
    }
}

/// Renders the boot files for the fleet as it is now.
pub async fn files(fleet: &FleetHandle) -> Result<(Arc<Inventory>, Vec<GeneratedFile>), Status> {
    let (inv, assignments) = fleet.ask(|reply| Command::BootInputs { reply }).await?;
    let p = plan::plan(&inv, &assignments, &default_coordinator(&inv))
        .map_err(|e| Status::failed_precondition(e.to_string()))?;
    Ok((inv, render::render(&p)))
}

fn write_status(e: write::WriteError) -> Status {
    match e {
        write::WriteError::NotOurs(_) | write::WriteError::Invalid(_) => {
            Status::failed_precondition(e.to_string())
        }
        _ => Status::internal(e.to_string()),
    }
}

/// What an apply would change.
pub async fn diff(fleet: &FleetHandle, writer: &BootWriter) -> Result<Changes, Status> {
    let (inv, files) = files(fleet).await?;
    let manifest = writer.manifest.clone();
    tokio::task::spawn_blocking(move || {
        let m = write::Manifest::load(&manifest)?;
        write::diff(&files, &inv.paths, &m)
    })
    .await
    .map_err(|e| Status::internal(e.to_string()))?
    .map_err(write_status)
}

/// Validates and writes the boot files; returns what changed and what
/// checked the DHCP configuration.
pub async fn apply(
    fleet: &FleetHandle,
    writer: &BootWriter,
    actor: &str,
) -> Result<(Changes, Vec<String>), Status> {
    let _held = writer.lock.lock().await;
    let (inv, files) = files(fleet).await?;
    let manifest = writer.manifest.clone();
    let scratch = writer.manifest.with_extension("check");
    let (changes, checks) = tokio::task::spawn_blocking(move || {
        let mut checks = Vec::new();
        let flavour = inv.boot.as_ref().map(|b| b.dhcp);
        // The whole DHCP configuration as it will be is checked by the real
        // daemon before anything is replaced.
        let mut validate = |_staged: &[write::Staged]| -> Result<(), String> {
            if let Some(flavour) = flavour {
                checks.push(check::check_dhcp(flavour, &files, &scratch)?);
            }
            Ok(())
        };
        let mut before_step = |_| Ok(());
        let changes = write::apply(
            &files,
            &inv.paths,
            &manifest,
            Hooks {
                validate: &mut validate,
                before_step: &mut before_step,
            },
        )?;
        Ok::<_, write::WriteError>((changes, checks))
    })
    .await
    .map_err(|e| Status::internal(e.to_string()))?
    .map_err(write_status)?;
    if !changes.is_empty() {
        let _ = fleet
            .send(Command::BootApplied {
                detail: format!(
                    "{} created, {} changed, {} removed",
                    changes.created.len(),
                    changes.changed.len(),
                    changes.removed.len()
                ),
                actor: actor.to_string(),
            })
            .await;
    }
    Ok((changes, checks))
}
