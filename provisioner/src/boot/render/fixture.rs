//! Small plans for the renderers' unit tests.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use dfleet_proto::domain::{Generation, GenerationRef, MacAddr};

use crate::boot::{
    BootImage, BootNetwork, BootNode, BootPaths, BootPlan, CopySource, DhcpFlavour, Loader,
    NfsConfig, Subnet,
};

/// A plan on 10.0.0.0/24 with the management host at .2 and `nodes`.
pub(super) fn plan(nodes: Vec<BootNode>) -> BootPlan {
    BootPlan {
        cluster: "lab".into(),
        paths: BootPaths {
            tftp_root: "/srv/tftp".into(),
            dhcp_root: "/etc/dfleet/dhcp".into(),
            exports_root: "/etc/dfleet/exports".into(),
            images_root: "/srv/dfleet/images".into(),
        },
        network: BootNetwork {
            interface: "eth1".into(),
            subnet: Subnet {
                network: Ipv4Addr::new(10, 0, 0, 0),
                prefix: 24,
            },
            router: Some(Ipv4Addr::new(10, 0, 0, 1)),
            dns: vec![Ipv4Addr::new(10, 0, 0, 2)],
            domain: Some("lab.example".into()),
            ntp: vec![Ipv4Addr::new(10, 0, 0, 2)],
            next_server: Ipv4Addr::new(10, 0, 0, 2),
            dhcp: DhcpFlavour::Dnsmasq,
        },
        nfs: NfsConfig {
            server: Ipv4Addr::new(10, 0, 0, 2),
            export_root: "/srv/dfleet/images".into(),
            managed: true,
            management_host: Ipv4Addr::new(10, 0, 0, 2),
        },
        coordinator: "10.0.0.2:7443".into(),
        images: published(&nodes),
        nodes,
        unbootable: Vec::new(),
    }
}

/// The generations `nodes` are assigned, each once: what the store would
/// have published.
fn published(nodes: &[BootNode]) -> Vec<BootImage> {
    let mut images: Vec<BootImage> = nodes.iter().filter_map(|n| n.assigned.clone()).collect();
    images.sort_by_key(|i| i.generation.to_string());
    images.dedup_by(|a, b| a.generation == b.generation);
    images
}

/// Node `name` at 10.0.0.(10 + `n`) with MAC 52:54:00:00:00:`n`.
pub(super) fn node(name: &str, n: u8, loader: Loader, assigned: Option<BootImage>) -> BootNode {
    BootNode {
        name: name.into(),
        mac: MacAddr([0x52, 0x54, 0, 0, 0, n]),
        ip: Ipv4Addr::new(10, 0, 0, 10 + n),
        loader,
        kernel_args: Vec::new(),
        console: None,
        overlay_size: "50%".into(),
        assigned,
    }
}

/// Generation `generation` of `image`, laid out as the image store does.
pub(super) fn assigned(image: &str, generation: u64) -> Option<BootImage> {
    Some(BootImage {
        generation: GenerationRef {
            image: image.into(),
            generation: Generation(generation),
        },
        kernel: format!("dfleet/{image}/{generation}/vmlinuz"),
        initrd: format!("dfleet/{image}/{generation}/initrd.img"),
        nfs_path: PathBuf::from(format!("/srv/dfleet/images/{image}/{generation}")),
        kernel_source: CopySource {
            path: format!("/srv/dfleet/images/{image}/{generation}.boot/vmlinuz").into(),
            sha256: "ab".repeat(32),
            size: 8_000_000,
        },
        initrd_source: CopySource {
            path: format!("/srv/dfleet/images/{image}/{generation}.boot/initrd.img").into(),
            sha256: "cd".repeat(32),
            size: 30_000_000,
        },
    })
}
