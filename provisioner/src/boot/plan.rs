//! From the inventory and the node → generation assignments to a
//! [`BootPlan`]: the one input every boot-file renderer reads.

use std::collections::HashMap;
use std::path::Path;

use dfleet_proto::domain::GenerationRef;

use super::{BootImage, BootNode, BootPlan, CopySource, NfsConfig};
use crate::image::store::{ImageStore, Record, StoreError};
use crate::inventory::Inventory;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("{0}: no [boot] table, so there is no boot network to render")]
    NoBoot(std::path::PathBuf),
    #[error("{0}: no [nfs] table, so nodes have no root to mount")]
    NoNfs(std::path::PathBuf),
}

/// Where a published generation's kernel, initramfs and tree are, by
/// dfleet's naming: generation-specific names in the TFTP root, and
/// `<export_root>/<image>/<generation>` on the NFS server. `None` when the
/// record has no boot files (not published).
pub fn boot_image(store: &ImageStore, export_root: &Path, r: &Record) -> Option<BootImage> {
    let boot = r.boot.as_ref()?;
    let g = r.generation_ref();
    let dir = format!("dfleet/{}/{}", g.image, g.generation);
    let files = store.boot_dir(&g);
    Some(BootImage {
        kernel: format!("{dir}/vmlinuz"),
        initrd: format!("{dir}/initrd.img"),
        nfs_path: export_root.join(&g.image).join(g.generation.to_string()),
        kernel_source: CopySource {
            path: files.join("vmlinuz"),
            sha256: boot.kernel_sha256.clone(),
            size: boot.kernel_size,
        },
        initrd_source: CopySource {
            path: files.join("initrd.img"),
            sha256: boot.initrd_sha256.clone(),
            size: boot.initrd_size,
        },
        generation: g,
    })
}

/// The boot facts of every published generation in `store`.
pub fn published_images(
    store: &ImageStore,
    export_root: &Path,
) -> Result<Vec<BootImage>, StoreError> {
    Ok(store
        .published()?
        .iter()
        .filter_map(|r| boot_image(store, export_root, r))
        .collect())
}

/// The plan for `inv`, with each node's assigned generation (nodes without
/// one boot the safe default). `default_coordinator` is what nodes are told
/// to dial when `[boot] coordinator` is not set.
pub fn plan(
    inv: &Inventory,
    assignments: &HashMap<String, GenerationRef>,
    images: &[BootImage],
    default_coordinator: &str,
) -> Result<BootPlan, PlanError> {
    let boot = inv
        .boot
        .as_ref()
        .ok_or_else(|| PlanError::NoBoot(inv.path.clone()))?;
    let nfs = inv
        .nfs
        .as_ref()
        .ok_or_else(|| PlanError::NoNfs(inv.path.clone()))?;
    let by_ref: HashMap<&GenerationRef, &BootImage> =
        images.iter().map(|i| (&i.generation, i)).collect();
    let mut unbootable = Vec::new();
    let nodes = inv
        .nodes
        .iter()
        .map(|n| {
            let r = inv.effective_boot(n);
            let wanted = assignments.get(n.name.as_str());
            let assigned = wanted.and_then(|g| by_ref.get(g).map(|i| (*i).clone()));
            if let (Some(g), None) = (wanted, &assigned) {
                unbootable.push((n.name.to_string(), g.clone()));
            }
            BootNode {
                name: n.name.to_string(),
                mac: n.mac,
                ip: n.ip,
                loader: r.loader,
                kernel_args: r.kernel_args,
                console: r.console,
                overlay_size: r.overlay_size,
                assigned,
            }
        })
        .collect();
    Ok(BootPlan {
        cluster: inv.cluster.name.clone(),
        paths: inv.paths.clone(),
        network: boot.network.clone(),
        nfs: NfsConfig {
            server: nfs.server,
            export_root: nfs.export_root.clone(),
            managed: nfs.managed,
            management_host: nfs.management_host,
        },
        coordinator: boot
            .coordinator
            .clone()
            .unwrap_or_else(|| default_coordinator.to_string()),
        nodes,
        images: images.to_vec(),
        unbootable,
    })
}
