//! From the inventory and the node → generation assignments to a
//! [`BootPlan`]: the one input every boot-file renderer reads.

use std::collections::HashMap;
use std::path::Path;

use dfleet_proto::domain::GenerationRef;

use super::{BootImage, BootNode, BootPlan, NfsConfig};
use crate::inventory::Inventory;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("{0}: no [boot] table, so there is no boot network to render")]
    NoBoot(std::path::PathBuf),
    #[error("{0}: no [nfs] table, so nodes have no root to mount")]
    NoNfs(std::path::PathBuf),
}

/// Where a generation's kernel, initramfs and tree are, by dfleet's naming:
/// generation-specific names in the TFTP root, and
/// `<export_root>/<image>/<generation>` on the NFS server.
pub fn boot_image(export_root: &Path, g: &GenerationRef) -> BootImage {
    let dir = format!("dfleet/{}/{}", g.image, g.generation);
    BootImage {
        generation: g.clone(),
        kernel: format!("{dir}/vmlinuz"),
        initrd: format!("{dir}/initrd.img"),
        nfs_path: export_root.join(&g.image).join(g.generation.to_string()),
    }
}

/// The plan for `inv`, with each node's assigned generation (nodes without
/// one boot the safe default). `default_coordinator` is what nodes are told
/// to dial when `[boot] coordinator` is not set.
pub fn plan(
    inv: &Inventory,
    assignments: &HashMap<String, GenerationRef>,
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
    let nodes = inv
        .nodes
        .iter()
        .map(|n| {
            let r = inv.effective_boot(n);
            BootNode {
                name: n.name.to_string(),
                mac: n.mac,
                ip: n.ip,
                loader: r.loader,
                kernel_args: r.kernel_args,
                console: r.console,
                overlay_size: r.overlay_size,
                assigned: assignments
                    .get(n.name.as_str())
                    .map(|g| boot_image(&nfs.export_root, g)),
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
    })
}
