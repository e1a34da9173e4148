//! The boot loader files of the TFTP root, copied from the management host's
//! own packages (pxelinux and syslinux-common, ipxe, grub-efi-amd64-signed)
//! for the loaders the plan's nodes use. A missing file is an error that
//! names the package to install.

use std::path::{Path, PathBuf};

use super::render::{GRUB_EFI, IPXE_FIRST_STAGE, PXELINUX};
use super::{BootPlan, GeneratedFile, Loader, Tree};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{loader} nodes need {path} for the TFTP root: install the Debian package {package}")]
pub struct MissingLoader {
    pub loader: &'static str,
    pub path: PathBuf,
    pub package: &'static str,
}

/// One file a loader needs: its name in the TFTP root, where the system has
/// it, and the package that ships it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source {
    pub name: &'static str,
    pub system_path: &'static str,
    pub package: &'static str,
}

const PXELINUX_SOURCES: [Source; 2] = [
    Source {
        name: PXELINUX,
        system_path: "/usr/lib/PXELINUX/pxelinux.0",
        package: "pxelinux",
    },
    Source {
        name: "ldlinux.c32",
        system_path: "/usr/lib/syslinux/modules/bios/ldlinux.c32",
        package: "syslinux-common",
    },
];

const GRUB_SOURCE: Source = Source {
    name: GRUB_EFI,
    system_path: "/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed",
    package: "grub-efi-amd64-signed",
};

const IPXE_SOURCE: Source = Source {
    name: IPXE_FIRST_STAGE,
    system_path: "/usr/lib/ipxe/undionly.kpxe",
    package: "ipxe",
};

/// The files `loader` needs in the TFTP root (`auto` needs both BIOS and
/// UEFI loaders, since the firmware decides).
pub fn sources(loader: Loader) -> Vec<Source> {
    match loader {
        Loader::Auto => {
            let mut all = PXELINUX_SOURCES.to_vec();
            all.push(GRUB_SOURCE);
            all
        }
        Loader::Pxelinux => PXELINUX_SOURCES.to_vec(),
        Loader::Ipxe => vec![IPXE_SOURCE],
        Loader::GrubEfi => vec![GRUB_SOURCE],
    }
}

fn loader_name(l: Loader) -> &'static str {
    match l {
        Loader::Auto => "auto",
        Loader::Pxelinux => "pxelinux",
        Loader::GrubEfi => "grub-efi",
        Loader::Ipxe => "ipxe",
    }
}

/// Reads the loader files for every loader in use, from under `system_root`
/// (`/` on the management host). Every missing file is reported.
pub fn loader_files(
    plan: &BootPlan,
    system_root: &Path,
) -> Result<Vec<GeneratedFile>, Vec<MissingLoader>> {
    let mut used: Vec<Loader> = plan.nodes.iter().map(|n| n.loader).collect();
    used.sort_by_key(|l| loader_name(*l));
    used.dedup();
    // Each file once, named after the first loader (by name) that needs it.
    let mut needed: Vec<(Loader, Source)> = Vec::new();
    for loader in used {
        for s in sources(loader) {
            if !needed.iter().any(|(_, n)| n.name == s.name) {
                needed.push((loader, s));
            }
        }
    }
    let mut files = Vec::new();
    let mut missing = Vec::new();
    for (loader, s) in needed {
        let path = system_root.join(s.system_path.trim_start_matches('/'));
        match std::fs::read(&path) {
            Ok(bytes) => files.push(GeneratedFile {
                tree: Tree::Tftp,
                path: PathBuf::from(s.name),
                bytes,
                mode: 0o644,
                copy_of: None,
            }),
            Err(_) => missing.push(MissingLoader {
                loader: loader_name(loader),
                path: PathBuf::from(s.system_path),
                package: s.package,
            }),
        }
    }
    if missing.is_empty() {
        Ok(files)
    } else {
        Err(missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::{BootNetwork, BootNode, BootPaths, DhcpFlavour, NfsConfig, Subnet};
    use std::net::Ipv4Addr;

    fn plan(loaders: &[Loader]) -> BootPlan {
        let ip = Ipv4Addr::new(10, 0, 0, 1);
        BootPlan {
            cluster: "t".into(),
            paths: BootPaths {
                tftp_root: "/t".into(),
                dhcp_root: "/d".into(),
                exports_root: "/e".into(),
                images_root: "/i".into(),
            },
            network: BootNetwork {
                interface: "eth0".into(),
                subnet: Subnet {
                    network: Ipv4Addr::new(10, 0, 0, 0),
                    prefix: 24,
                },
                router: None,
                dns: vec![],
                domain: None,
                ntp: vec![],
                next_server: ip,
                dhcp: DhcpFlavour::Dnsmasq,
            },
            nfs: NfsConfig {
                server: ip,
                export_root: "/srv/dfleet/images".into(),
                managed: true,
                management_host: ip,
            },
            coordinator: "10.0.0.1:7443".into(),
            nodes: loaders
                .iter()
                .enumerate()
                .map(|(i, l)| BootNode {
                    name: format!("cn{i}"),
                    mac: format!("52:54:00:00:00:{i:02x}").parse().unwrap(),
                    ip: Ipv4Addr::new(10, 0, 0, 10 + i as u8),
                    loader: *l,
                    kernel_args: vec![],
                    console: None,
                    overlay_size: "50%".into(),
                    assigned: None,
                })
                .collect(),
            images: Vec::new(),
            unbootable: Vec::new(),
        }
    }

    #[test]
    fn files_come_from_the_system_for_the_loaders_in_use() {
        let root = tempfile::tempdir().unwrap();
        for s in sources(Loader::Pxelinux) {
            let p = root.path().join(s.system_path.trim_start_matches('/'));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, s.name).unwrap();
        }
        let files =
            loader_files(&plan(&[Loader::Pxelinux, Loader::Pxelinux]), root.path()).unwrap();
        let names: Vec<_> = files.iter().map(|f| f.path.display().to_string()).collect();
        assert_eq!(names, vec!["pxelinux.0", "ldlinux.c32"]);
        assert_eq!(files[0].bytes, b"pxelinux.0");
        assert_eq!(files[0].mode, 0o644);
    }

    #[test]
    fn auto_and_pxelinux_nodes_share_the_bios_files_and_auto_adds_grub() {
        let root = tempfile::tempdir().unwrap();
        for s in sources(Loader::Auto) {
            let p = root.path().join(s.system_path.trim_start_matches('/'));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, s.name).unwrap();
        }
        let files = loader_files(&plan(&[Loader::Pxelinux, Loader::Auto]), root.path()).unwrap();
        let names: Vec<_> = files.iter().map(|f| f.path.display().to_string()).collect();
        assert_eq!(names, vec!["pxelinux.0", "ldlinux.c32", "grubx64.efi"]);
    }

    #[test]
    fn a_missing_loader_names_its_package() {
        let root = tempfile::tempdir().unwrap();
        let missing =
            loader_files(&plan(&[Loader::GrubEfi, Loader::Ipxe]), root.path()).unwrap_err();
        let text: Vec<String> = missing.iter().map(ToString::to_string).collect();
        assert_eq!(missing.len(), 2, "{text:?}");
        assert!(
            text.iter().any(|t| t.contains("grub-efi-amd64-signed")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.contains("install the Debian package ipxe")),
            "{text:?}"
        );
    }
}
