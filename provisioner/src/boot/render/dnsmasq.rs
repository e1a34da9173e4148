//! dnsmasq as DHCP and TFTP server only: `dnsmasq.conf`, and one file per node
//! in a hosts directory dnsmasq reads new and changed files from by itself.

use super::{BootFile, HEADER, UEFI_X64_ARCHES, boot_file, lines_to_text, text_file};
use crate::boot::{BootNode, BootPlan, GeneratedFile, Loader, Tree};

/// The hosts directory under the DHCP root. dnsmasq ignores files whose names
/// start with a dot there, so the writer's staged `.name.dfleet-new` files are
/// never read half-written.
const HOSTS_DIR: &str = "dnsmasq.hosts";

/// The tag dnsmasq sets on a request from iPXE (user class `iPXE`).
const IPXE_CLIENT_TAG: &str = "ipxe";

/// The tag dnsmasq sets on a request from UEFI x64 firmware (option 93).
const UEFI_CLIENT_TAG: &str = "efi-x86_64";

const LOADERS: [Loader; 4] = [
    Loader::Auto,
    Loader::Pxelinux,
    Loader::GrubEfi,
    Loader::Ipxe,
];

/// `dnsmasq.conf` and `dnsmasq.hosts/<name>` for every node.
pub(super) fn render(plan: &BootPlan) -> Vec<GeneratedFile> {
    let mut files = vec![config(plan)];
    files.extend(plan.nodes.iter().map(host_file));
    files
}

/// The tag a node's host entry sets, which picks its boot file.
fn loader_tag(loader: Loader) -> &'static str {
    match loader {
        Loader::Auto => "loader-auto",
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

/// Boot files by the node's loader tag: an `auto` node's file follows the
/// architecture tag of the request, an iPXE node's second request (tag
/// `ipxe`) gets the script instead of iPXE again.
fn boot_lines(plan: &BootPlan) -> Vec<String> {
    let server = plan.network.next_server;
    let mut lines: Vec<String> = UEFI_X64_ARCHES
        .iter()
        .map(|a| format!("dhcp-match=set:{UEFI_CLIENT_TAG},option:client-arch,{a}"))
        .collect();
    lines.push(format!("dhcp-userclass=set:{IPXE_CLIENT_TAG},iPXE"));
    for loader in LOADERS {
        let tag = loader_tag(loader);
        let (when, then, otherwise) = match boot_file(loader) {
            BootFile::Fixed(file) => {
                lines.push(format!("dhcp-boot=tag:{tag},{file},,{server}"));
                continue;
            }
            BootFile::ByArch { bios, uefi } => (UEFI_CLIENT_TAG, uefi, bios),
            BootFile::Chained { first, script } => (IPXE_CLIENT_TAG, script, first),
        };
        lines.extend([
            format!("dhcp-boot=tag:{tag},tag:{when},{then},,{server}"),
            format!("dhcp-boot=tag:{tag},tag:!{when},{otherwise},,{server}"),
        ]);
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
            node("a", 4, Loader::Auto, None),
        ]));
        assert_eq!(files[1].path.to_str(), Some("dnsmasq.hosts/p"));
        assert!(text(&files[1]).ends_with("\n52:54:00:00:00:01,set:loader-pxelinux,10.0.0.11,p\n"));
        assert!(text(&files[2]).ends_with("\n52:54:00:00:00:03,set:loader-ipxe,10.0.0.13,i\n"));
        assert!(text(&files[3]).ends_with("\n52:54:00:00:00:04,set:loader-auto,10.0.0.14,a\n"));
    }

    #[test]
    fn each_loader_tag_boots_its_file() {
        let conf = text(&render(&plan(vec![]))[0]);
        for line in [
            "dhcp-match=set:efi-x86_64,option:client-arch,7",
            "dhcp-match=set:efi-x86_64,option:client-arch,9",
            "dhcp-boot=tag:loader-auto,tag:efi-x86_64,grubx64.efi,,10.0.0.2",
            "dhcp-boot=tag:loader-auto,tag:!efi-x86_64,pxelinux.0,,10.0.0.2",
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
