//! The boot network: what every node needs to PXE-boot its assigned image
//! generation (DHCP, TFTP loaders and menus, NFS exports), rendered from one
//! plan by pure functions and written by one atomic writer.
//!
//! [`BootPlan`] is everything rendering needs: the inventory's boot settings,
//! each node's assignment and the facts of the published generations. The
//! renderers turn it into [`GeneratedFile`]s; nothing here touches the disk.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use dfleet_proto::domain::{GenerationRef, MacAddr};

pub mod check;
pub mod loaders;
pub mod plan;
pub mod render;
pub mod write;

/// Which DHCP server serves the boot network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DhcpFlavour {
    /// ISC dhcpd (end of life, still widely deployed).
    Isc,
    #[default]
    Dnsmasq,
    /// ISC Kea, dhcpd's successor.
    Kea,
}

/// How a node's firmware loads its kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Loader {
    /// Chosen by the client architecture the firmware sends (DHCP option 93,
    /// RFC 4578): UEFI x64 (7 and 9) gets GRUB, everything else pxelinux.
    /// The node gets both menus.
    #[default]
    Auto,
    /// BIOS PXE with pxelinux.
    Pxelinux,
    /// UEFI with GRUB (grubx64.efi).
    GrubEfi,
    /// iPXE (chain-loaded, or the NIC's own ROM).
    Ipxe,
}

/// An IPv4 subnet: network address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    pub fn netmask(&self) -> Ipv4Addr {
        let bits = if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        };
        Ipv4Addr::from(bits)
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !u32::from(self.netmask()))
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & u32::from(self.netmask()) == u32::from(self.network)
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The boot network's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootNetwork {
    /// The management host's interface on the boot network (for dnsmasq/Kea).
    pub interface: String,
    pub subnet: Subnet,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub ntp: Vec<Ipv4Addr>,
    /// The TFTP/HTTP server nodes load loaders, menus and kernels from.
    pub next_server: Ipv4Addr,
    pub dhcp: DhcpFlavour,
}

/// Where the image generations are served from over NFS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NfsConfig {
    pub server: Ipv4Addr,
    /// Directory holding `<image>/<generation>` trees, e.g. `/srv/dfleet/images`.
    pub export_root: PathBuf,
    /// true: dfleet writes the exports; false: an appliance exports, and
    /// dfleet prints what the administrator must export.
    pub managed: bool,
    /// The management host, the only client allowed to write.
    pub management_host: Ipv4Addr,
}

/// A file the writer copies instead of rendering (a kernel, an initramfs):
/// where it is on this host, and what it holds, so an unchanged copy is
/// recognised without reading it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopySource {
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
}

/// A published generation's boot facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootImage {
    pub generation: GenerationRef,
    /// Kernel and initramfs file names under the TFTP root, specific to the
    /// generation (e.g. `dfleet/compute/7/vmlinuz`).
    pub kernel: String,
    pub initrd: String,
    /// The exported tree, e.g. `/srv/dfleet/images/compute/7`.
    pub nfs_path: PathBuf,
    /// Where publish left the kernel and initramfs in the image store.
    pub kernel_source: CopySource,
    pub initrd_source: CopySource,
}

/// One node as the boot network sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootNode {
    pub name: String,
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    pub loader: Loader,
    /// Extra kernel arguments from the node's group and entry, in that order.
    pub kernel_args: Vec<String>,
    /// Serial console, e.g. `ttyS0,115200`.
    pub console: Option<String>,
    /// Cap of the RAM upper layer, e.g. `50%` or `4g`.
    pub overlay_size: String,
    /// The generation the node boots next; `None` boots the safe default
    /// (local disk or nothing) instead.
    pub assigned: Option<BootImage>,
}

/// Where each tree is installed on the management host. Rendered files name
/// each other by these absolute paths (dnsmasq's hosts directory, the TFTP
/// root), so a tree rendered elsewhere for a dry run still reads as installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootPaths {
    /// e.g. `/srv/tftp`
    pub tftp_root: PathBuf,
    /// dfleet's DHCP configuration directory, e.g. `/etc/dfleet/dhcp`
    /// (`dhcpd.conf`, `dnsmasq.conf` with `dnsmasq.hosts/`, `kea-dhcp4.conf`).
    pub dhcp_root: PathBuf,
    /// e.g. `/etc/dfleet/exports` (`dfleet.exports` for the kernel server,
    /// `ganesha.conf` for nfs-ganesha).
    pub exports_root: PathBuf,
    /// The image store on this host: `<image>/<generation>` trees and their
    /// records (see [`crate::image::store`]); by default the NFS export root.
    pub images_root: PathBuf,
}

/// Everything rendering needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootPlan {
    pub cluster: String,
    pub paths: BootPaths,
    pub network: BootNetwork,
    pub nfs: NfsConfig,
    /// `HOST:PORT` the agents reach the coordinator at (`dfleet.coordinator=`).
    pub coordinator: String,
    pub nodes: Vec<BootNode>,
    /// Every published generation: each is exported and has its kernel and
    /// initramfs in the TFTP root, assigned or not, so a node can go back.
    pub images: Vec<BootImage>,
    /// Nodes assigned a generation that is not published (any more); they
    /// boot the safe default until assigned again.
    pub unbootable: Vec<(String, GenerationRef)>,
}

/// Which tree a generated file belongs to; each has its own root on the
/// management host (see `[paths]` in cluster.toml).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tree {
    Tftp,
    Dhcp,
    Exports,
}

/// One rendered file: its tree, its path inside that tree, its bytes and
/// mode, or the file it is a copy of (then `bytes` is empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedFile {
    pub tree: Tree,
    pub path: PathBuf,
    pub bytes: Vec<u8>,
    pub mode: u32,
    pub copy_of: Option<CopySource>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_arithmetic() {
        let s = Subnet {
            network: Ipv4Addr::new(10, 0, 0, 0),
            prefix: 24,
        };
        assert_eq!(s.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(s.broadcast(), Ipv4Addr::new(10, 0, 0, 255));
        assert!(s.contains(Ipv4Addr::new(10, 0, 0, 7)));
        assert!(!s.contains(Ipv4Addr::new(10, 0, 1, 7)));
        let all = Subnet {
            network: Ipv4Addr::new(0, 0, 0, 0),
            prefix: 0,
        };
        assert!(all.contains(Ipv4Addr::new(8, 8, 8, 8)));
    }
}
