//! The sample boot plan the render tests share (`#[path]`-included by
//! render_snapshots.rs and render_real_daemons.rs): one node per loader, one
//! unassigned node, generations assigned and one published but unassigned,
//! every network option set.

// Built as a test target of its own too, where nothing calls it.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use dfleet_proto::domain::{Generation, GenerationRef, MacAddr};
use dfleet_provisioner::boot::{
    BootImage, BootNetwork, BootNode, BootPaths, BootPlan, CopySource, DhcpFlavour, Loader,
    NfsConfig, Subnet,
};

/// Generation `generation` of `image`, laid out as the image store does.
fn image(image: &str, generation: u64) -> BootImage {
    BootImage {
        generation: GenerationRef {
            image: image.into(),
            generation: Generation(generation),
        },
        kernel: format!("dfleet/{image}/{generation}/vmlinuz"),
        initrd: format!("dfleet/{image}/{generation}/initrd.img"),
        nfs_path: PathBuf::from(format!("/srv/dfleet/images/{image}/{generation}")),
        kernel_source: CopySource {
            path: format!("/srv/dfleet/images/{image}/{generation}.boot/vmlinuz").into(),
            sha256: format!("{:064x}", generation),
            size: 8_000_000 + generation,
        },
        initrd_source: CopySource {
            path: format!("/srv/dfleet/images/{image}/{generation}.boot/initrd.img").into(),
            sha256: format!("{:064x}", generation + 1000),
            size: 30_000_000 + generation,
        },
    }
}

fn node(name: &str, last: u8, loader: Loader, assigned: Option<BootImage>) -> BootNode {
    BootNode {
        name: name.into(),
        mac: MacAddr([0x52, 0x54, 0x00, 0xab, 0xcd, last]),
        ip: Ipv4Addr::new(10, 20, 0, 100 + last),
        loader,
        kernel_args: Vec::new(),
        console: None,
        overlay_size: "50%".into(),
        assigned,
    }
}

/// The sample cluster `lab` on 10.20.0.0/24, installed under `root`.
pub fn sample_plan(root: &Path, dhcp: DhcpFlavour) -> BootPlan {
    let mut grub = node("gpu-01", 2, Loader::GrubEfi, Some(image("gpu", 3)));
    grub.console = Some("ttyS0,115200".into());
    grub.kernel_args = vec!["nomodeset".into()];
    grub.overlay_size = "8g".into();
    BootPlan {
        cluster: "lab".into(),
        paths: BootPaths {
            tftp_root: root.join("srv/tftp"),
            dhcp_root: root.join("etc/dfleet/dhcp"),
            exports_root: root.join("etc/dfleet/exports"),
            images_root: "/srv/dfleet/images".into(),
        },
        network: BootNetwork {
            interface: "eth1".into(),
            subnet: Subnet {
                network: Ipv4Addr::new(10, 20, 0, 0),
                prefix: 24,
            },
            router: Some(Ipv4Addr::new(10, 20, 0, 1)),
            dns: vec![Ipv4Addr::new(10, 20, 0, 2), Ipv4Addr::new(10, 20, 0, 3)],
            domain: Some("lab.example.org".into()),
            ntp: vec![Ipv4Addr::new(10, 20, 0, 2)],
            next_server: Ipv4Addr::new(10, 20, 0, 2),
            dhcp,
        },
        nfs: NfsConfig {
            server: Ipv4Addr::new(10, 20, 0, 2),
            export_root: "/srv/dfleet/images".into(),
            managed: true,
            management_host: Ipv4Addr::new(10, 20, 0, 2),
        },
        coordinator: "mgmt.lab.example.org:7443".into(),
        nodes: vec![
            node("cpu-01", 1, Loader::Pxelinux, Some(image("compute", 7))),
            grub,
            node("cpu-02", 3, Loader::Ipxe, Some(image("compute", 7))),
            node("spare-01", 4, Loader::Pxelinux, None),
            node("cpu-03", 5, Loader::Auto, Some(image("compute", 8))),
        ],
        // compute:6 is published and no node runs it: still exported and
        // bootable, so a node can go back to it.
        images: vec![
            image("compute", 6),
            image("compute", 7),
            image("compute", 8),
            image("gpu", 3),
        ],
        unbootable: Vec::new(),
    }
}
