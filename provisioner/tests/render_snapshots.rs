//! Snapshots of every rendered file for the sample plan (render_fixture.rs):
//! a change to any boot file shows up as a reviewed snapshot diff.

#[path = "render_fixture.rs"]
mod fixture;

use std::path::Path;

use dfleet_provisioner::boot::render::render;
use dfleet_provisioner::boot::{DhcpFlavour, GeneratedFile, Tree};
use fixture::sample_plan;

fn rendered(dhcp: DhcpFlavour) -> Vec<GeneratedFile> {
    render(&sample_plan(Path::new("/"), dhcp))
}

/// A snapshot name from the file's tree and path, safe as a file name on any
/// system (GRUB menus are named by MACs with colons).
fn snapshot_name(f: &GeneratedFile) -> String {
    format!("{:?}/{}", f.tree, f.path.display())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn text(f: &GeneratedFile) -> &str {
    std::str::from_utf8(&f.bytes).unwrap()
}

fn assert_snapshots(files: &[GeneratedFile], tree: Tree) {
    let mut seen = 0;
    // Kernels and initramfs are copies, listed (with their source) in the
    // file lists rather than snapshotted.
    for f in files
        .iter()
        .filter(|f| f.tree == tree && f.copy_of.is_none())
    {
        insta::assert_snapshot!(snapshot_name(f), text(f));
        seen += 1;
    }
    assert!(seen > 0, "no {tree:?} file rendered");
}

/// Tree, mode and path of every file, one a line.
fn listing(files: &[GeneratedFile]) -> String {
    files
        .iter()
        .map(|f| match &f.copy_of {
            None => format!("{:?} {:o} {}\n", f.tree, f.mode, f.path.display()),
            Some(src) => format!(
                "{:?} {:o} {} copy of {} ({} bytes, sha256 {}…)\n",
                f.tree,
                f.mode,
                f.path.display(),
                src.path.display(),
                src.size,
                &src.sha256[..8]
            ),
        })
        .collect()
}

#[test]
fn file_lists() {
    insta::assert_snapshot!("list_isc", listing(&rendered(DhcpFlavour::Isc)));
    insta::assert_snapshot!("list_dnsmasq", listing(&rendered(DhcpFlavour::Dnsmasq)));
    insta::assert_snapshot!("list_kea", listing(&rendered(DhcpFlavour::Kea)));
}

#[test]
fn boot_menus() {
    assert_snapshots(&rendered(DhcpFlavour::Dnsmasq), Tree::Tftp);
}

#[test]
fn isc_dhcpd() {
    assert_snapshots(&rendered(DhcpFlavour::Isc), Tree::Dhcp);
}

#[test]
fn dnsmasq() {
    assert_snapshots(&rendered(DhcpFlavour::Dnsmasq), Tree::Dhcp);
}

#[test]
fn kea() {
    assert_snapshots(&rendered(DhcpFlavour::Kea), Tree::Dhcp);
}

#[test]
fn managed_exports() {
    assert_snapshots(&rendered(DhcpFlavour::Dnsmasq), Tree::Exports);
}

#[test]
fn unmanaged_exports() {
    let mut plan = sample_plan(Path::new("/"), DhcpFlavour::Dnsmasq);
    plan.nfs.managed = false;
    let files = render(&plan);
    let exports: Vec<&GeneratedFile> = files.iter().filter(|f| f.tree == Tree::Exports).collect();
    assert_eq!(exports.len(), 1, "{}", listing(&files));
    insta::assert_snapshot!("unmanaged_exports", text(exports[0]));
}
