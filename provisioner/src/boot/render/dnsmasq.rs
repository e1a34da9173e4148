//! dnsmasq as DHCP and TFTP server only: `dnsmasq.conf`, and one file per node
//! in a hosts directory dnsmasq reads new and changed files from by itself.

use super::{HEADER, chained_file, first_stage_file, lines_to_text, text_file};
use crate::boot::{BootNode, BootPlan, GeneratedFile, Loader, Tree};

/// The hosts directory under the DHCP root. dnsmasq ignores files whose names
/// start with a dot there, so the writer's staged `.name.dfleet-new` files are
/// never read half-written.
const HOSTS_DIR: &str = "dnsmasq.hosts";

/// The tag dnsmasq sets on a request from iPXE (user class `iPXE`).
const IPXE_CLIENT_TAG: &str = "ipxe";

const LOADERS: [Loader; 3] = [Loader::Pxelinux, Loader::GrubEfi, Loader::Ipxe];

/// `dnsmasq.conf` and `dnsmasq.hosts/<name>` for every node.
pub(super) fn render(plan: &BootPlan) -> Vec<GeneratedFile> {
    let mut files = vec![config(plan)];
    files.extend(plan.nodes.iter().map(host_file));
    files
}

/// The tag a node's host entry sets, which picks its boot file.
fn loader_tag(loader: Loader) -> &'static str {
    match loader {
        Loader::Pxelinux => "loader-pxelinux",
        Loader::GrubEfi => "loader-grub-efi",
        Loader::Ipxe => "loader-ipxe",
    }
}

fn config(plan: &BootPlan) -> GeneratedFile {
    let mut lines = vec![
        format!("# {HEADER}"),
        format!(
            "# Boot network of cluster {}: DHCP and TFTP only.",
            plan.cluster
        ),
    ];
    lines.extend(service_lines(plan));
    lines.extend(option_lines(plan));
    lines.extend(boot_lines(plan));
    text_file(Tree::Dhcp, "dnsmasq.conf", lines_to_text(&lines))
}

/// What dnsmasq serves and to whom: no DNS, static leases for known MACs only.
fn service_lines(plan: &BootPlan) -> Vec<String> {
    let net = &plan.network;
    vec![
        "port=0".to_string(),
        format!("interface={}", net.interface),
        "bind-interfaces".to_string(),
        "dhcp-authoritative".to_string(),
        format!(
            "dhcp-range={},static,{}",
            net.subnet.network,
            net.subnet.netmask()
        ),
        "# Unknown MACs get no lease.".to_string(),
        "dhcp-ignore=tag:!known".to_string(),
        "# Read again when a file is added or changed; a removed node's entry".to_string(),
        "# stays until dnsmasq gets SIGHUP.".to_string(),
        format!(
            "dhcp-hostsdir={}",
            plan.paths.dhcp_root.join(HOSTS_DIR).display()
        ),
        "enable-tftp".to_string(),
        format!("tftp-root={}", plan.paths.tftp_root.display()),
    ]
}

/// Network options. dnsmasq offers its own address as router and DNS server
/// unless told otherwise, so an empty option is written when the plan has none.
fn option_lines(plan: &BootPlan) -> Vec<String> {
    let net = &plan.network;
    let list = |addresses: &[std::net::Ipv4Addr]| {
        addresses
            .iter()
            .map(|a| format!(",{a}"))
            .collect::<String>()
    };
    let mut lines = vec![
        format!(
            "dhcp-option=option:router{}",
            net.router.map(|r| format!(",{r}")).unwrap_or_default()
        ),
        format!("dhcp-option=option:dns-server{}", list(&net.dns)),
    ];
    if let Some(domain) = &net.domain {
        lines.push(format!("dhcp-option=option:domain-name,{domain}"));
    }
    if !net.ntp.is_empty() {
        lines.push(format!("dhcp-option=option:ntp-server{}", list(&net.ntp)));
    }
    lines
}

/// Boot files by the node's loader tag; an iPXE node's second request (tag
/// `ipxe`) gets the script instead of iPXE again. The UEFI x64 tag is set for
/// the logs and for rules an administrator adds; the loader decides.
fn boot_lines(plan: &BootPlan) -> Vec<String> {
    let server = plan.network.next_server;
    let mut lines = vec![
        "dhcp-match=set:efi-x86_64,option:client-arch,7".to_string(),
        "dhcp-match=set:efi-x86_64,option:client-arch,9".to_string(),
        format!("dhcp-userclass=set:{IPXE_CLIENT_TAG},iPXE"),
    ];
    for loader in LOADERS {
        let tag = loader_tag(loader);
        let first = first_stage_file(loader);
        match chained_file(loader) {
            None => lines.push(format!("dhcp-boot=tag:{tag},{first},,{server}")),
            Some(chained) => lines.extend([
                format!("dhcp-boot=tag:{tag},tag:{IPXE_CLIENT_TAG},{chained},,{server}"),
                format!("dhcp-boot=tag:{tag},tag:!{IPXE_CLIENT_TAG},{first},,{server}"),
            ]),
        }
    }
    lines
}

/// `<mac>,set:<loader-tag>,<ip>,<name>`: the node's lease, name and loader.
fn host_file(node: &BootNode) -> GeneratedFile {
    let text = lines_to_text(&[
        format!("# {HEADER}"),
        format!(
            "{},set:{},{},{}",
            node.mac,
            loader_tag(node.loader),
            node.ip,
            node.name
        ),
    ]);
    text_file(Tree::Dhcp, format!("{HOSTS_DIR}/{}", node.name), text)
}

#[cfg(test)]
mod tests {
    use super::super::fixture::{node, plan};
    use super::*;

    fn text(f: &GeneratedFile) -> String {
        String::from_utf8(f.bytes.clone()).unwrap()
    }

    #[test]
    fn each_node_gets_a_hosts_file_tagged_with_its_loader() {
        let files = render(&plan(vec![
            node("p", 1, Loader::Pxelinux, None),
            node("i", 3, Loader::Ipxe, None),
        ]));
        assert_eq!(files[1].path.to_str(), Some("dnsmasq.hosts/p"));
        assert!(text(&files[1]).ends_with("\n52:54:00:00:00:01,set:loader-pxelinux,10.0.0.11,p\n"));
        assert!(text(&files[2]).ends_with("\n52:54:00:00:00:03,set:loader-ipxe,10.0.0.13,i\n"));
    }

    #[test]
    fn each_loader_tag_boots_its_file() {
        let conf = text(&render(&plan(vec![]))[0]);
        for line in [
            "dhcp-boot=tag:loader-pxelinux,pxelinux.0,,10.0.0.2",
            "dhcp-boot=tag:loader-grub-efi,grubx64.efi,,10.0.0.2",
            "dhcp-boot=tag:loader-ipxe,tag:ipxe,dfleet.ipxe,,10.0.0.2",
            "dhcp-boot=tag:loader-ipxe,tag:!ipxe,undionly.kpxe,,10.0.0.2",
            "dhcp-hostsdir=/etc/dfleet/dhcp/dnsmasq.hosts",
            "dhcp-ignore=tag:!known",
            "port=0",
        ] {
            assert!(
                conf.contains(&format!("\n{line}\n")),
                "no {line:?} in\n{conf}"
            );
        }
    }

    #[test]
    fn no_router_or_dns_in_the_plan_means_none_offered() {
        let mut p = plan(vec![]);
        p.network.router = None;
        p.network.dns.clear();
        let conf = text(&render(&p)[0]);
        assert!(conf.contains("\ndhcp-option=option:router\n"), "{conf}");
        assert!(conf.contains("\ndhcp-option=option:dns-server\n"), "{conf}");
    }
}
