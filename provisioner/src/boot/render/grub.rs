//! GRUB menus for UEFI nodes: one entry menu that loads the booting
//! interface's own menu, and that menu for every GRUB node.

use super::{HEADER, from_tftp_root, kernel_cmdline, lines_to_text, text_file, uses_grub};
use crate::boot::{BootImage, BootNode, BootPlan, GeneratedFile, Tree};

/// `grub/grub.cfg` and `grub/nodes/<mac>.cfg` for every node that may boot
/// through GRUB (loader `grub-efi` or `auto`).
pub(super) fn render(plan: &BootPlan) -> Vec<GeneratedFile> {
    let mut files = vec![entry_menu()];
    files.extend(
        plan.nodes
            .iter()
            .filter(|n| uses_grub(n.loader))
            .map(|n| node_menu(plan, n)),
    );
    files
}

/// The menu grubx64.efi loads from its prefix. GRUB sets `net_default_mac`
/// to the MAC of the interface it booted from, lowercase with colons, the
/// same form as the node menus' names.
fn entry_menu() -> GeneratedFile {
    let text = lines_to_text(&[
        format!("# {HEADER}"),
        "# Every UEFI node loads the menu named by the MAC it booted from.".to_string(),
        "configfile ($root)/grub/nodes/${net_default_mac}.cfg".to_string(),
        "# Reached only when that menu is missing: leave GRUB so the firmware".to_string(),
        "# tries its next boot entry (the local disk).".to_string(),
        "echo \"dfleet: no boot menu for ${net_default_mac}\"".to_string(),
        "exit".to_string(),
    ]);
    text_file(Tree::Tftp, "grub/grub.cfg", text)
}

/// The node's own menu: its assigned generation, or back to the firmware.
fn node_menu(plan: &BootPlan, node: &BootNode) -> GeneratedFile {
    let text = match &node.assigned {
        Some(image) => boot_menu(plan, node, image),
        None => lines_to_text(&[
            format!("# {HEADER}"),
            format!(
                "# Node {} has no generation assigned: leave GRUB so the firmware",
                node.name
            ),
            "# boots its next entry (the local disk).".to_string(),
            "exit".to_string(),
        ]),
    };
    text_file(Tree::Tftp, format!("grub/nodes/{}.cfg", node.mac), text)
}

/// Boots `image` at once. GRUB has no `IPAPPEND`, so `BOOTIF=` is written
/// out: this menu belongs to one MAC anyway.
fn boot_menu(plan: &BootPlan, node: &BootNode, image: &BootImage) -> String {
    lines_to_text(&[
        format!("# {HEADER}"),
        format!("# Node {} boots {}.", node.name, image.generation),
        format!(
            "linux {} {} BOOTIF={}",
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
    use crate::boot::Loader;

    fn text(f: &GeneratedFile) -> String {
        String::from_utf8(f.bytes.clone()).unwrap()
    }

    #[test]
    fn the_entry_menu_loads_the_menu_of_the_booting_mac() {
        let files = render(&plan(vec![]));
        assert_eq!(files[0].path.to_str(), Some("grub/grub.cfg"));
        assert!(text(&files[0]).contains("configfile ($root)/grub/nodes/${net_default_mac}.cfg\n"));
    }

    #[test]
    fn an_assigned_node_boots_its_generation() {
        let files = render(&plan(vec![node(
            "g",
            1,
            Loader::GrubEfi,
            assigned("compute", 7),
        )]));
        assert_eq!(
            files[1].path.to_str(),
            Some("grub/nodes/52:54:00:00:00:01.cfg")
        );
        let t = text(&files[1]);
        assert!(
            t.contains("linux /dfleet/compute/7/vmlinuz root=nfs:"),
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
        let files = render(&plan(vec![node("g", 1, Loader::GrubEfi, None)]));
        let t = text(&files[1]);
        assert!(t.ends_with("exit\n"), "{t}");
        assert!(!t.contains("linux"), "{t}");
    }
}
