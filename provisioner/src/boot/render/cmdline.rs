//! The kernel command line every loader passes: NFSv3 root for dracut, the
//! overlay's RAM cap and what the agent needs to find the coordinator.

use crate::boot::{BootImage, BootNode, BootPlan};

/// The command line `node` boots `image` with. The NFS options pin version 3
/// over TCP with no lock manager (the root is read-only), so the mount needs
/// neither NLM nor UDP from the server; `rd.retry` gives a slow network time
/// before dracut gives up. The node's console and its own arguments come last
/// so they can override anything before them.
pub fn kernel_cmdline(plan: &BootPlan, node: &BootNode, image: &BootImage) -> String {
    let mut args = vec![
        format!(
            "root=nfs:{}:{},vers=3,sec=sys,nolock,tcp",
            plan.nfs.server,
            image.nfs_path.display()
        ),
        "ip=dhcp".to_string(),
        "rd.neednet=1".to_string(),
        "rd.retry=30".to_string(),
        format!("dfleet.overlay.size={}", node.overlay_size),
        format!("dfleet.coordinator={}", plan.coordinator),
        format!("dfleet.generation={}", image.generation),
    ];
    if let Some(console) = &node.console {
        args.push(format!("console={console}"));
    }
    args.extend(node.kernel_args.iter().cloned());
    args.join(" ")
}

#[cfg(test)]
mod tests {
    use super::super::fixture::{assigned, node, plan};
    use super::*;
    use crate::boot::Loader;

    #[test]
    fn names_the_nfs_root_overlay_coordinator_and_generation() {
        let n = node("n1", 1, Loader::Pxelinux, assigned("compute", 7));
        let p = plan(vec![n.clone()]);
        assert_eq!(
            kernel_cmdline(&p, &n, n.assigned.as_ref().unwrap()),
            "root=nfs:10.0.0.2:/srv/dfleet/images/compute/7,vers=3,sec=sys,nolock,tcp \
             ip=dhcp rd.neednet=1 rd.retry=30 dfleet.overlay.size=50% \
             dfleet.coordinator=10.0.0.2:7443 dfleet.generation=compute:7"
        );
    }

    #[test]
    fn console_then_the_nodes_own_arguments_come_last() {
        let mut n = node("n1", 1, Loader::GrubEfi, assigned("gpu", 3));
        n.console = Some("ttyS0,115200".into());
        n.kernel_args = vec!["nomodeset".into(), "quiet".into()];
        n.overlay_size = "4g".into();
        let p = plan(vec![n.clone()]);
        let line = kernel_cmdline(&p, &n, n.assigned.as_ref().unwrap());
        assert!(line.contains(" dfleet.overlay.size=4g "), "{line}");
        assert!(
            line.ends_with(" dfleet.generation=gpu:3 console=ttyS0,115200 nomodeset quiet"),
            "{line}"
        );
    }
}
