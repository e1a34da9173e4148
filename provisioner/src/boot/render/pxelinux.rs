//! pxelinux menus: a safe default, and one menu per BIOS node named by its MAC.

use super::{HEADER, kernel_cmdline, lines_to_text, text_file, uses_pxelinux};
use crate::boot::{BootImage, BootNode, BootPlan, GeneratedFile, Tree};

/// `pxelinux.cfg/default` and `pxelinux.cfg/01-<mac>` for every node that may
/// boot through pxelinux (loader `pxelinux` or `auto`).
pub(super) fn render(plan: &BootPlan) -> Vec<GeneratedFile> {
    let mut files = vec![default_menu()];
    files.extend(
        plan.nodes
            .iter()
            .filter(|n| uses_pxelinux(n.loader))
            .map(|n| node_menu(plan, n)),
    );
    files
}

/// The menu pxelinux falls back to when it finds none for the node's MAC.
fn default_menu() -> GeneratedFile {
    let text = local_boot_menu(&[
        "Unknown or unassigned nodes land here: boot the local disk, never an image.".to_string(),
    ]);
    text_file(Tree::Tftp, "pxelinux.cfg/default", text)
}

/// The node's own menu: its assigned generation, or the local disk.
fn node_menu(plan: &BootPlan, node: &BootNode) -> GeneratedFile {
    let text = match &node.assigned {
        Some(image) => boot_menu(plan, node, image),
        None => local_boot_menu(&[format!(
            "Node {} has no generation assigned: boot the local disk.",
            node.name
        )]),
    };
    text_file(
        Tree::Tftp,
        format!("pxelinux.cfg/{}", node.mac.pxelinux_form()),
        text,
    )
}

/// Boots `image` at once. `IPAPPEND 2` makes pxelinux add `BOOTIF=` so dracut
/// brings up the interface the node booted from.
fn boot_menu(plan: &BootPlan, node: &BootNode, image: &BootImage) -> String {
    lines_to_text(&[
        format!("# {HEADER}"),
        format!("# Node {} boots {}.", node.name, image.generation),
        "DEFAULT dfleet".to_string(),
        "PROMPT 0".to_string(),
        "LABEL dfleet".to_string(),
        format!("  KERNEL {}", image.kernel),
        format!("  INITRD {}", image.initrd),
        format!("  APPEND {}", kernel_cmdline(plan, node, image)),
        "  IPAPPEND 2".to_string(),
    ])
}

/// Boots the first local disk, with `comments` saying why.
fn local_boot_menu(comments: &[String]) -> String {
    let mut lines = vec![format!("# {HEADER}")];
    lines.extend(comments.iter().map(|c| format!("# {c}")));
    lines.extend([
        "DEFAULT local".to_string(),
        "PROMPT 0".to_string(),
        "LABEL local".to_string(),
        "  LOCALBOOT 0".to_string(),
    ]);
    lines_to_text(&lines)
}

#[cfg(test)]
mod tests {
    use super::super::fixture::{assigned, node, plan};
    use super::*;
    use crate::boot::Loader;

    fn menu(files: &[GeneratedFile], path: &str) -> String {
        let f = files
            .iter()
            .find(|f| f.path.to_str() == Some(path))
            .unwrap_or_else(|| panic!("no {path}"));
        String::from_utf8(f.bytes.clone()).unwrap()
    }

    #[test]
    fn the_default_boots_the_local_disk() {
        let files = render(&plan(vec![]));
        let text = menu(&files, "pxelinux.cfg/default");
        assert!(text.contains("LOCALBOOT 0"), "{text}");
        assert!(
            text.contains("Unknown or unassigned nodes land here"),
            "{text}"
        );
    }

    #[test]
    fn an_assigned_node_boots_its_generation_with_bootif() {
        let files = render(&plan(vec![node(
            "n1",
            1,
            Loader::Pxelinux,
            assigned("compute", 7),
        )]));
        let text = menu(&files, "pxelinux.cfg/01-52-54-00-00-00-01");
        assert!(text.contains("DEFAULT dfleet\n"), "{text}");
        assert!(text.contains("KERNEL dfleet/compute/7/vmlinuz\n"), "{text}");
        assert!(
            text.contains("INITRD dfleet/compute/7/initrd.img\n"),
            "{text}"
        );
        assert!(
            text.contains("APPEND root=nfs:10.0.0.2:/srv/dfleet/images/compute/7,"),
            "{text}"
        );
        assert!(text.contains("IPAPPEND 2\n"), "{text}");
        assert!(!text.contains("LOCALBOOT"), "{text}");
    }

    #[test]
    fn an_unassigned_node_gets_the_safe_menu() {
        let files = render(&plan(vec![node("n1", 1, Loader::Pxelinux, None)]));
        let text = menu(&files, "pxelinux.cfg/01-52-54-00-00-00-01");
        assert!(text.contains("LOCALBOOT 0"), "{text}");
        assert!(
            text.contains("Node n1 has no generation assigned"),
            "{text}"
        );
        assert!(!text.contains("KERNEL"), "{text}");
    }

    #[test]
    fn nodes_of_other_loaders_get_no_pxelinux_menu() {
        let files = render(&plan(vec![
            node("g", 1, Loader::GrubEfi, assigned("compute", 7)),
            node("i", 2, Loader::Ipxe, assigned("compute", 7)),
        ]));
        assert_eq!(files.len(), 1, "only the default");
    }
}
