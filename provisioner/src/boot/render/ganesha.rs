//! nfs-ganesha: `dfleet-ganesha.conf` serving every published generation over NFSv3
//! on fixed TCP ports, so nodes and firewalls need no portmapper lookups.

use std::collections::BTreeSet;
use std::path::Path;

use super::exports::exported_paths;
use super::{HEADER, lines_to_text, text_file};
use crate::boot::{BootPlan, GeneratedFile, Tree};

/// `dfleet-ganesha.conf` (include it from `/etc/ganesha/ganesha.conf`).
pub(super) fn render(plan: &BootPlan) -> GeneratedFile {
    let mut lines = vec![
        format!("# {HEADER}"),
        format!("# Published image generations of cluster {}.", plan.cluster),
        String::new(),
    ];
    lines.extend(core_params());
    let paths = exported_paths(plan);
    for (path, id) in paths.iter().zip(export_ids(&paths)) {
        lines.push(String::new());
        lines.extend(export_block(plan, path, id));
    }
    text_file(Tree::Exports, "dfleet-ganesha.conf", lines_to_text(&lines))
}

fn core_params() -> Vec<String> {
    [
        "NFS_CORE_PARAM {",
        "    Protocols = 3;",
        "    NFS_Port = 2049;",
        "    MNT_Port = 20048;",
        "    Enable_NLM = false;",
        "    Enable_RQUOTA = false;",
        "    Enable_UDP = false;",
        "    Mount_Path_Pseudo = true;",
        "}",
    ]
    .map(String::from)
    .to_vec()
}

/// One generation, read-only for the boot subnet and writable by the
/// management host, as in `dfleet.exports`. Ganesha takes the first CLIENT
/// block that matches, so the management host's comes first.
fn export_block(plan: &BootPlan, path: &Path, id: u16) -> Vec<String> {
    let path = path.display();
    vec![
        "EXPORT {".to_string(),
        format!("    Export_Id = {id};"),
        format!("    Path = \"{path}\";"),
        format!("    Pseudo = \"{path}\";"),
        "    Protocols = 3;".to_string(),
        "    Transports = TCP;".to_string(),
        "    Access_Type = RO;".to_string(),
        "    Squash = No_Root_Squash;".to_string(),
        "    SecType = sys;".to_string(),
        "    FSAL { Name = VFS; }".to_string(),
        format!(
            "    CLIENT {{ Clients = {}; Protocols = 3; Access_Type = RW; }}",
            plan.nfs.management_host
        ),
        format!(
            "    CLIENT {{ Clients = {}; Protocols = 3; Access_Type = RO; }}",
            plan.network.subnet
        ),
        "}".to_string(),
    ]
}

/// An `Export_Id` for each path (1..=65535). Ganesha puts the id in every NFS
/// file handle, so a generation must keep its id while nodes run it, even as
/// other generations come and go: the id comes from a hash of the path, not
/// its position, and a rare collision moves to the next free id in path order.
fn export_ids(paths: &[&Path]) -> Vec<u16> {
    let mut used = BTreeSet::new();
    paths
        .iter()
        .map(|path| {
            let mut id = preferred_id(path);
            while !used.insert(id) {
                id = id.checked_add(1).unwrap_or(1);
            }
            id
        })
        .collect()
}

/// FNV-1a of the path, folded into 1..=65535 (0 is ganesha's pseudo root).
fn preferred_id(path: &Path) -> u16 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in path.as_os_str().as_encoded_bytes() {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    u16::try_from(hash % 65535).expect("below 65535") + 1
}

#[cfg(test)]
mod tests {
    use super::super::fixture::{assigned, node, plan};
    use super::*;
    use crate::boot::Loader;

    #[test]
    fn an_id_does_not_move_when_another_generation_goes() {
        let (a, b, c) = (
            Path::new("/srv/dfleet/images/compute/6"),
            Path::new("/srv/dfleet/images/compute/7"),
            Path::new("/srv/dfleet/images/gpu/2"),
        );
        let before = export_ids(&[a, b, c]);
        let after = export_ids(&[b, c]);
        assert_eq!(&before[1..], &after[..]);
        assert!(before.iter().all(|id| *id >= 1));
    }

    #[test]
    fn colliding_ids_stay_distinct() {
        let a = Path::new("/srv/dfleet/images/compute/6");
        // The same preferred id twice: the second moves on.
        let ids = export_ids(&[a, a, a]);
        assert_eq!(ids[1], ids[0].checked_add(1).unwrap_or(1));
        assert_eq!(ids[2], ids[1].checked_add(1).unwrap_or(1));
    }

    #[test]
    fn one_export_per_assigned_generation() {
        let p = plan(vec![
            node("a", 1, Loader::Pxelinux, assigned("compute", 7)),
            node("b", 2, Loader::GrubEfi, assigned("compute", 7)),
            node("c", 3, Loader::Ipxe, assigned("gpu", 2)),
        ]);
        let text = String::from_utf8(render(&p).bytes).unwrap();
        assert_eq!(text.matches("EXPORT {").count(), 2, "{text}");
        assert!(text.contains("    Path = \"/srv/dfleet/images/gpu/2\";\n    Pseudo = \"/srv/dfleet/images/gpu/2\";\n"), "{text}");
        assert!(
            text.contains("CLIENT { Clients = 10.0.0.0/24; Protocols = 3; Access_Type = RO; }"),
            "{text}"
        );
    }
}
