//! Kernel NFS server exports (`/etc/exports.d/dfleet.exports`), or, when an
//! appliance serves the images, the list of what its administrator must export.

use std::collections::BTreeSet;
use std::path::Path;

use super::{HEADER, lines_to_text, text_file};
use crate::boot::{BootPlan, GeneratedFile, Tree};

/// Options for the boot subnet: read-only, and root stays root because the
/// image's files belong to root and nodes read them as root.
const NODE_OPTIONS: &str = "ro,no_root_squash,sec=sys,no_subtree_check";
/// Options for the management host. The kernel matches a single host before
/// a network, so this line wins for it although it is in the subnet too.
const MANAGEMENT_OPTIONS: &str = "rw,no_root_squash,sec=sys,no_subtree_check";

/// Every published generation (and, in plans built by hand, every assigned
/// one), by its exported path, sorted and each once. A published generation
/// stays exported while no node is assigned it, so a node can go back to it;
/// `dfleet image gc` is what ends that.
pub(super) fn exported_paths(plan: &BootPlan) -> Vec<&Path> {
    plan.images
        .iter()
        .chain(plan.nodes.iter().filter_map(|n| n.assigned.as_ref()))
        .map(|image| image.nfs_path.as_path())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// One `/etc/exports` line.
fn export_line(plan: &BootPlan, path: &Path) -> String {
    format!(
        "{} {}({NODE_OPTIONS}) {}({MANAGEMENT_OPTIONS})",
        path.display(),
        plan.network.subnet,
        plan.nfs.management_host
    )
}

/// `dfleet.exports`, for `/etc/exports.d`.
pub(super) fn render(plan: &BootPlan) -> GeneratedFile {
    let mut lines = vec![
        format!("# {HEADER}"),
        format!(
            "# Published image generations of cluster {}: read-only for the boot",
            plan.cluster
        ),
        format!(
            "# subnet, writable only by the management host {}.",
            plan.nfs.management_host
        ),
    ];
    lines.extend(
        exported_paths(plan)
            .into_iter()
            .map(|p| export_line(plan, p)),
    );
    text_file(Tree::Exports, "dfleet.exports", lines_to_text(&lines))
}

/// The file, in the exports tree, that says what to export from an NFS
/// server dfleet does not manage.
pub const NFS_INSTRUCTIONS: &str = "EXPORTS-TO-CONFIGURE.txt";

/// `EXPORTS-TO-CONFIGURE.txt`: what to export from an NFS server dfleet does
/// not manage, in prose and as `/etc/exports` lines.
pub(super) fn instructions(plan: &BootPlan) -> GeneratedFile {
    let paths = exported_paths(plan);
    let mut lines = vec![
        format!("{HEADER}."),
        String::new(),
        format!(
            "dfleet does not manage the NFS server {} of cluster {}.",
            plan.nfs.server, plan.cluster
        ),
    ];
    if paths.is_empty() {
        lines.push("No generation is published: nothing needs to be exported yet.".into());
    } else {
        lines.extend(instruction_prose(plan));
        lines.extend(paths.iter().map(|p| format!("  {}", p.display())));
        lines.extend([
            String::new(),
            "As /etc/exports lines:".to_string(),
            String::new(),
        ]);
        lines.extend(paths.iter().map(|p| export_line(plan, p)));
    }
    text_file(Tree::Exports, NFS_INSTRUCTIONS, lines_to_text(&lines))
}

fn instruction_prose(plan: &BootPlan) -> Vec<String> {
    vec![
        "Export each directory below over NFSv3 on TCP (port 2049), with sec=sys:".to_string(),
        format!(
            "read-only with no root squashing to the boot subnet {}, and read-write",
            plan.network.subnet
        ),
        format!(
            "with no root squashing to the management host {}. Keep every export",
            plan.nfs.management_host
        ),
        "while a node runs it: a node whose root disappears or changes hangs.".to_string(),
        "Nodes mount with nolock: the server needs no lock manager (NLM) and no UDP.".to_string(),
        String::new(),
    ]
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
    fn each_assigned_generation_is_exported_once_in_order() {
        let p = plan(vec![
            node("a", 1, Loader::Pxelinux, assigned("compute", 8)),
            node("b", 2, Loader::GrubEfi, assigned("compute", 7)),
            node("c", 3, Loader::Ipxe, assigned("compute", 8)),
            node("d", 4, Loader::Pxelinux, None),
        ]);
        assert_eq!(
            exported_paths(&p),
            [
                Path::new("/srv/dfleet/images/compute/7"),
                Path::new("/srv/dfleet/images/compute/8")
            ]
        );
        let t = text(&render(&p));
        let exports: Vec<&str> = t.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            exports,
            [
                "/srv/dfleet/images/compute/7 10.0.0.0/24(ro,no_root_squash,sec=sys,no_subtree_check) 10.0.0.2(rw,no_root_squash,sec=sys,no_subtree_check)",
                "/srv/dfleet/images/compute/8 10.0.0.0/24(ro,no_root_squash,sec=sys,no_subtree_check) 10.0.0.2(rw,no_root_squash,sec=sys,no_subtree_check)",
            ]
        );
    }

    #[test]
    fn an_unmanaged_server_gets_instructions_and_no_exports() {
        let mut p = plan(vec![node("a", 1, Loader::Pxelinux, assigned("compute", 7))]);
        p.nfs.managed = false;
        let exports: Vec<GeneratedFile> = crate::boot::render::render(&p)
            .into_iter()
            .filter(|f| f.tree == Tree::Exports)
            .collect();
        assert_eq!(exports.len(), 1);
        assert_eq!(exports[0].path.to_str(), Some("EXPORTS-TO-CONFIGURE.txt"));
        let t = text(&exports[0]);
        assert!(t.contains("\n  /srv/dfleet/images/compute/7\n"), "{t}");
        assert!(
            t.contains(&format!(
                "\n{}\n",
                export_line(&p, Path::new("/srv/dfleet/images/compute/7"))
            )),
            "{t}"
        );
    }

    #[test]
    fn instructions_with_nothing_assigned_say_so() {
        let mut p = plan(vec![node("a", 1, Loader::Pxelinux, None)]);
        p.nfs.managed = false;
        let t = text(&instructions(&p));
        assert!(t.contains("nothing needs to be exported yet"), "{t}");
    }
}
