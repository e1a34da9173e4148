//! The daemon's single writer of boot files. Rendering reads the inventory
//! and the assignments from the fleet task; writing goes through one lock, so
//! a `pxe apply`, an image publish and a rollout can never undo each other's
//! menus. Staged DHCP configuration is checked by the real daemon before
//! anything is replaced.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use dfleet_proto::domain::GenerationRef;
use dfleet_provisioner::boot::render::NFS_INSTRUCTIONS;
use dfleet_provisioner::boot::write::{self, Changes, Hooks};
use dfleet_provisioner::boot::{GeneratedFile, Tree, check, loaders, plan, render};
use dfleet_provisioner::image::store::{GenState, ImageStore, StoreError};
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

    /// Takes the writer's lock for steps that must not interleave with any
    /// other write: an assignment and its apply, or `image gc` removing
    /// generations, re-rendering and deleting their trees.
    pub async fn hold(&self) -> Held<'_> {
        Held {
            _guard: self.lock.lock().await,
            writer: self,
        }
    }
}

/// The boot writer's lock, held; [`apply_held`] writes under it.
#[derive(Debug)]
pub struct Held<'a> {
    _guard: tokio::sync::MutexGuard<'a, ()>,
    writer: &'a BootWriter,
}

/// Whether the boot files of an earlier apply may still be on disk: the
/// writer's manifest lists any file.
pub async fn has_written(held: &Held<'_>) -> Result<bool, Status> {
    let manifest = held.writer.manifest.clone();
    tokio::task::spawn_blocking(move || write::Manifest::load(&manifest))
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map(|m| !m.files.is_empty())
        .map_err(write_status)
}

/// The address nodes dial when `[boot] coordinator` is not set: the first
/// listen address, or the next-server with that port when it listens on all.
fn default_coordinator(inv: &Inventory) -> String {
    let Some(first) = inv.cluster.listen.first() else {
        return String::new();
    };
    match (first.ip().is_unspecified(), &inv.boot) {
        (true, Some(b)) => SocketAddr::new(b.network.next_server.into(), first.port()).to_string(),
        _ => first.to_string(),
    }
}

/// Refuses to assign a generation that is not published: nodes would get a
/// menu naming a kernel that is not there.
pub async fn check_bootable(fleet: &FleetHandle, g: &GenerationRef) -> Result<(), Status> {
    let (inv, _) = fleet.ask(|reply| Command::BootInputs { reply }).await?;
    let store = ImageStore::new(&inv.paths.images_root);
    let g = g.clone();
    let record = tokio::task::spawn_blocking(move || store.record(&g))
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
    match record {
        Ok(r) if r.state == GenState::Published => Ok(()),
        Ok(r) => Err(Status::failed_precondition(format!(
            "{} is {}, not published: `dfleet image publish {}` first",
            r.generation_ref(),
            r.state,
            r.image
        ))),
        Err(e @ StoreError::NoGeneration(_)) => Err(Status::not_found(format!(
            "{e} ({}): see `dfleet image list`",
            inv.paths.images_root.display()
        ))),
        Err(e) => Err(Status::internal(e.to_string())),
    }
}

/// The boot files for the fleet as it is now.
pub struct Rendered {
    pub inv: Arc<Inventory>,
    pub files: Vec<GeneratedFile>,
    /// Nodes assigned a generation that is not published, said as warnings.
    pub warnings: Vec<String>,
}

/// Renders the boot files for the fleet as it is now: the inventory, the
/// assignments and the published generations of the image store.
pub async fn files(fleet: &FleetHandle) -> Result<Rendered, Status> {
    let (inv, assignments) = fleet.ask(|reply| Command::BootInputs { reply }).await?;
    let inv2 = inv.clone();
    let (p, loaders) = tokio::task::spawn_blocking(move || {
        let inv = inv2;
        let store = ImageStore::new(&inv.paths.images_root);
        let export_root = inv
            .nfs
            .as_ref()
            .map_or(inv.paths.images_root.clone(), |n| n.export_root.clone());
        let images = plan::published_images(&store, &export_root)
            .map_err(|e| Status::failed_precondition(format!("reading the image store: {e}")))?;
        let p = plan::plan(&inv, &assignments, &images, &default_coordinator(&inv))
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        // The loaders come from this host's packages; the menus name them.
        let loaders = loaders::loader_files(&p, Path::new("/")).map_err(|missing| {
            let lines: Vec<String> = missing.iter().map(ToString::to_string).collect();
            Status::failed_precondition(lines.join("\n"))
        })?;
        Ok::<_, Status>((p, loaders))
    })
    .await
    .map_err(|e| Status::internal(e.to_string()))??;
    let mut files = render::render(&p);
    files.extend(loaders);
    files.sort_by(|a, b| (a.tree, &a.path).cmp(&(b.tree, &b.path)));
    let warnings = p
        .unbootable
        .iter()
        .map(|(node, g)| {
            format!("warning: {node} is assigned {g}, which is not a published generation: it boots the default menu")
        })
        .collect();
    Ok(Rendered {
        inv,
        files,
        warnings,
    })
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
    let Rendered { inv, files, .. } = files(fleet).await?;
    let manifest = writer.manifest.clone();
    tokio::task::spawn_blocking(move || {
        let m = write::Manifest::load(&manifest)?;
        write::diff(&files, &inv.paths, &m)
    })
    .await
    .map_err(|e| Status::internal(e.to_string()))?
    .map_err(write_status)
}

/// What one apply did.
#[derive(Debug)]
pub struct Applied {
    pub changes: Changes,
    /// What checked the DHCP configuration, and the reload's outcome.
    pub checks: Vec<String>,
    /// With an NFS server dfleet does not manage, when what must be exported
    /// changed: the instructions the administrator has to carry out.
    pub nfs_instructions: Option<String>,
}

/// Validates and writes the boot files; returns what changed and what
/// checked the DHCP configuration.
pub async fn apply(
    fleet: &FleetHandle,
    writer: &BootWriter,
    actor: &str,
) -> Result<Applied, Status> {
    let held = writer.hold().await;
    apply_held(fleet, &held, actor).await
}

/// [`apply`] for a caller that holds the writer's lock already.
pub async fn apply_held(
    fleet: &FleetHandle,
    held: &Held<'_>,
    actor: &str,
) -> Result<Applied, Status> {
    let writer = held.writer;
    let Rendered {
        inv,
        files,
        warnings,
    } = files(fleet).await?;
    let instructions = files
        .iter()
        .find(|f| f.tree == Tree::Exports && f.path.as_os_str() == NFS_INSTRUCTIONS)
        .and_then(|f| {
            let target = write::target(&inv.paths, f).ok()?;
            Some((target, String::from_utf8_lossy(&f.bytes).into_owned()))
        });
    let manifest = writer.manifest.clone();
    let scratch = writer.manifest.with_extension("check");
    let inv_paths = inv.paths.clone();
    let reload = inv.boot.as_ref().map(|b| b.dhcp_reload.clone());
    let nfs_reload = inv.nfs.as_ref().map(|n| n.reload.clone());
    let (changes, checks) = tokio::task::spawn_blocking(move || {
        let mut checks = Vec::new();
        let flavour = inv.boot.as_ref().map(|b| b.network.dhcp);
        // The whole DHCP configuration as it will be is checked by the real
        // daemon before anything is replaced.
        let mut validate = |_staged: &[write::Staged]| -> Result<(), String> {
            if let Some(flavour) = flavour {
                checks.push(format!(
                    "checked: {}",
                    check::check_dhcp(flavour, &files, &scratch)?
                ));
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
    let mut checks = checks;
    checks.extend(warnings);
    let dhcp_changed = changes
        .created
        .iter()
        .chain(&changes.changed)
        .chain(&changes.removed)
        .any(|p| p.starts_with(&inv_paths.dhcp_root));
    if dhcp_changed && let Some(argv) = reload {
        checks.push(reload_server("the DHCP server", &argv).await);
    }
    // Exports: the NFS server re-reads them (the managed kernel server by
    // default with `exportfs -ra`); a generation gc deletes is unexported
    // here, before its tree goes.
    let exports_changed = changes
        .created
        .iter()
        .chain(&changes.changed)
        .chain(&changes.removed)
        .any(|p| p.starts_with(&inv_paths.exports_root));
    if exports_changed && let Some(argv) = nfs_reload.filter(|a| !a.is_empty()) {
        checks.push(reload_server("the NFS server", &argv).await);
    }
    let nfs_instructions = instructions.and_then(|(target, text)| {
        let new = changes.created.contains(&target) || changes.changed.contains(&target);
        new.then_some(text)
    });
    if !changes.is_empty() {
        let mut detail = format!(
            "{} created, {} changed, {} removed",
            changes.created.len(),
            changes.changed.len(),
            changes.removed.len()
        );
        if nfs_instructions.is_some() {
            detail.push_str(&format!(
                "; the NFS server dfleet does not manage needs new exports: see {}",
                inv_paths.exports_root.join(NFS_INSTRUCTIONS).display()
            ));
        }
        let _ = fleet
            .send(Command::BootApplied {
                detail,
                actor: actor.to_string(),
            })
            .await;
    }
    Ok(Applied {
        changes,
        checks,
        nfs_instructions,
    })
}

/// Tells `server` (the DHCP or NFS server) to re-read its configuration.
/// The files are in place already, so a failure here is reported, not
/// undone.
async fn reload_server(server: &str, argv: &[String]) -> String {
    let Some((program, args)) = argv.split_first() else {
        return "reload: no command configured".into();
    };
    let shown = argv.join(" ");
    let run = tokio::process::Command::new(program)
        .args(args)
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(std::time::Duration::from_secs(30), run).await {
        Ok(Ok(out)) if out.status.success() => format!("reload: {shown}: ok"),
        Ok(Ok(out)) => format!(
            "reload: {shown} failed ({}): {} — the new files are in place; reload {server} by hand",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Ok(Err(e)) => {
            format!("reload: {shown} could not run: {e} — reload {server} by hand")
        }
        Err(_) => format!("reload: {shown} timed out after 30 s"),
    }
}
