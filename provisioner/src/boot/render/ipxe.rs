//! iPXE scripts: one entry script that chains to the booting MAC's own
//! script, and that script for every iPXE node.

use super::{HEADER, IPXE_SCRIPT, from_tftp_root, kernel_cmdline, lines_to_text, text_file};
use crate::boot::{BootImage, BootNode, BootPlan, GeneratedFile, Loader, Tree};

/// `dfleet.ipxe` and `dfleet/nodes/<aa-bb-…>.ipxe` for every iPXE node.
pub(super) fn render(plan: &BootPlan) -> Vec<GeneratedFile> {
    let mut files = vec![entry_script()];
    files.extend(
        plan.nodes
            .iter()
            .filter(|n| n.loader == Loader::Ipxe)
            .map(|n| node_script(plan, n)),
    );
    files
}

/// The script the DHCP server names once iPXE runs. `${mac:hexhyp}` is the
/// booting interface's MAC as `aa-bb-…`; the relative name resolves against
/// this script's own URI, so it works over TFTP and HTTP alike.
fn entry_script() -> GeneratedFile {
    let text = lines_to_text(&[
        "#!ipxe".to_string(),
        format!("# {HEADER}"),
        "# Every iPXE node chains to the script named by its MAC; without one it".to_string(),
        "# leaves iPXE and the firmware tries its next boot device.".to_string(),
        "chain dfleet/nodes/${mac:hexhyp}.ipxe || exit".to_string(),
    ]);
    text_file(Tree::Tftp, IPXE_SCRIPT, text)
}

/// The node's own script: its assigned generation, or back to the firmware.
fn node_script(plan: &BootPlan, node: &BootNode) -> GeneratedFile {
    let text = match &node.assigned {
        Some(image) => boot_script(plan, node, image),
        None => lines_to_text(&[
            "#!ipxe".to_string(),
            format!("# {HEADER}"),
            format!(
                "# Node {} has no generation assigned: leave iPXE so the firmware",
                node.name
            ),
            "# boots its next device (the local disk).".to_string(),
            "exit".to_string(),
        ]),
    };
    let name = node.mac.to_string().replace(':', "-");
    text_file(Tree::Tftp, format!("dfleet/nodes/{name}.ipxe"), text)
}

/// Boots `image` at once, with `BOOTIF=` written out as the other loaders do.
fn boot_script(plan: &BootPlan, node: &BootNode, image: &BootImage) -> String {
    lines_to_text(&[
        "#!ipxe".to_string(),
        format!("# {HEADER}"),
        format!("# Node {} boots {}.", node.name, image.generation),
        format!(
            "kernel {} {} BOOTIF={}",
            from_tftp_root(&image.kernel),
            kernel_cmdline(plan, node, image),
            node.mac.pxelinux_form()
        ),
        format!("initrd {}", from_tftp_root(&image.initrd)),
        "boot".to_string(),
    ])
}

#[cfg(test)]
mod tests {
    use super::super::fixture::{assigned, node, plan};
    use super::*;

    fn text(f: &GeneratedFile) -> String {
        String::from_utf8(f.bytes.clone()).unwrap()
    }

    #[test]
    fn the_entry_script_chains_by_mac_or_exits() {
        let files = render(&plan(vec![]));
        assert_eq!(files[0].path.to_str(), Some("dfleet.ipxe"));
        let t = text(&files[0]);
        assert!(t.starts_with("#!ipxe\n"), "{t}");
        assert!(
            t.contains("chain dfleet/nodes/${mac:hexhyp}.ipxe || exit\n"),
            "{t}"
        );
    }

    #[test]
    fn an_assigned_node_boots_its_generation() {
        let files = render(&plan(vec![node(
            "i",
            1,
            Loader::Ipxe,
            assigned("compute", 7),
        )]));
        assert_eq!(
            files[1].path.to_str(),
            Some("dfleet/nodes/52-54-00-00-00-01.ipxe")
        );
        let t = text(&files[1]);
        assert!(t.starts_with("#!ipxe\n"), "{t}");
        assert!(
            t.contains("kernel /dfleet/compute/7/vmlinuz root=nfs:"),
            "{t}"
        );
        assert!(t.contains(" BOOTIF=01-52-54-00-00-00-01\n"), "{t}");
        assert!(
            t.contains("initrd /dfleet/compute/7/initrd.img\nboot\n"),
            "{t}"
        );
    }

    #[test]
    fn an_unassigned_node_goes_back_to_the_firmware() {
        let files = render(&plan(vec![node("i", 1, Loader::Ipxe, None)]));
        let t = text(&files[1]);
        assert!(t.ends_with("exit\n"), "{t}");
        assert!(!t.contains("kernel"), "{t}");
    }
}
