//! ISC dhcpd: `dhcpd.conf` with the boot subnet and one fixed-address host
//! per node; unknown clients get no lease.

use std::net::Ipv4Addr;

use super::{BootFile, HEADER, UEFI_X64_ARCHES, boot_file, lines_to_text, text_file};
use crate::boot::{BootNode, BootPlan, GeneratedFile, Tree};

/// `dhcpd.conf`.
pub(super) fn render(plan: &BootPlan) -> GeneratedFile {
    let mut lines = vec![
        format!("# {HEADER}"),
        format!("# Boot network of cluster {}.", plan.cluster),
        String::new(),
    ];
    lines.extend(global_statements());
    lines.push(String::new());
    lines.extend(subnet_block(plan));
    for node in &plan.nodes {
        lines.push(String::new());
        lines.extend(host_block(node));
    }
    text_file(Tree::Dhcp, "dhcpd.conf", lines_to_text(&lines))
}

/// Server-wide statements: this server owns the subnet, and only hosts it
/// knows get an answer.
fn global_statements() -> Vec<String> {
    [
        "authoritative;",
        "allow booting;",
        "allow bootp;",
        "deny unknown-clients;",
        "# RFC 4578 client system architecture (7 and 9: UEFI x64); hosts whose",
        "# loader is \"auto\" get their filename by it.",
        "option arch code 93 = unsigned integer 16;",
    ]
    .map(String::from)
    .to_vec()
}

/// The boot subnet with the options every node gets.
fn subnet_block(plan: &BootPlan) -> Vec<String> {
    let net = &plan.network;
    let mut lines = vec![format!(
        "subnet {} netmask {} {{",
        net.subnet.network,
        net.subnet.netmask()
    )];
    if let Some(router) = net.router {
        lines.push(format!("  option routers {router};"));
    }
    if !net.dns.is_empty() {
        lines.push(format!(
            "  option domain-name-servers {};",
            address_list(&net.dns)
        ));
    }
    if let Some(domain) = &net.domain {
        lines.push(format!("  option domain-name \"{domain}\";"));
    }
    if !net.ntp.is_empty() {
        lines.push(format!("  option ntp-servers {};", address_list(&net.ntp)));
    }
    lines.push(format!("  next-server {};", net.next_server));
    lines.push("}".to_string());
    lines
}

/// One node's reservation and boot file. An `auto` node's file follows the
/// architecture its firmware sends; an iPXE node is named twice: its
/// firmware gets iPXE, and iPXE, asking again with user class `iPXE`, gets
/// the script.
fn host_block(node: &BootNode) -> Vec<String> {
    let mut lines = vec![
        format!("host {} {{", node.name),
        format!("  hardware ethernet {};", node.mac),
        format!("  fixed-address {};", node.ip),
        format!("  option host-name \"{}\";", node.name),
    ];
    let (condition, then, otherwise) = match boot_file(node.loader) {
        BootFile::Fixed(file) => {
            lines.push(format!("  filename \"{file}\";"));
            lines.push("}".to_string());
            return lines;
        }
        BootFile::ByArch { bios, uefi } => (uefi_condition(), uefi, bios),
        BootFile::Chained { first, script } => (
            "exists user-class and option user-class = \"iPXE\"".to_string(),
            script,
            first,
        ),
    };
    lines.extend([
        format!("  if {condition} {{"),
        format!("    filename \"{then}\";"),
        "  } else {".to_string(),
        format!("    filename \"{otherwise}\";"),
        "  }".to_string(),
        "}".to_string(),
    ]);
    lines
}

/// `option arch = 00:07 or option arch = 00:09`: a UEFI x64 request.
fn uefi_condition() -> String {
    UEFI_X64_ARCHES
        .iter()
        .map(|a| {
            let [hi, lo] = a.to_be_bytes();
            format!("option arch = {hi:02x}:{lo:02x}")
        })
        .collect::<Vec<_>>()
        .join(" or ")
}

fn address_list(addresses: &[Ipv4Addr]) -> String {
    addresses
        .iter()
        .map(Ipv4Addr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::super::fixture::{assigned, node, plan};
    use super::*;
    use crate::boot::Loader;

    fn conf(nodes: Vec<BootNode>) -> String {
        String::from_utf8(render(&plan(nodes)).bytes).unwrap()
    }

    #[test]
    fn each_host_gets_the_file_of_its_loader() {
        let text = conf(vec![
            node("p", 1, Loader::Pxelinux, None),
            node("g", 2, Loader::GrubEfi, None),
            node("i", 3, Loader::Ipxe, assigned("compute", 7)),
        ]);
        assert!(text.contains("host p {\n  hardware ethernet 52:54:00:00:00:01;\n  fixed-address 10.0.0.11;\n  option host-name \"p\";\n  filename \"pxelinux.0\";\n}"), "{text}");
        assert!(text.contains("fixed-address 10.0.0.12;\n  option host-name \"g\";\n  filename \"grubx64.efi\";\n}"), "{text}");
        assert!(text.contains("  if exists user-class and option user-class = \"iPXE\" {\n    filename \"dfleet.ipxe\";\n  } else {\n    filename \"undionly.kpxe\";\n  }\n}"), "{text}");
    }

    #[test]
    fn an_auto_host_gets_grub_for_uefi_x64_and_pxelinux_otherwise() {
        let text = conf(vec![node("a", 1, Loader::Auto, None)]);
        assert!(
            text.contains("option arch code 93 = unsigned integer 16;"),
            "{text}"
        );
        assert!(text.contains("option host-name \"a\";\n  if option arch = 00:07 or option arch = 00:09 {\n    filename \"grubx64.efi\";\n  } else {\n    filename \"pxelinux.0\";\n  }\n}"), "{text}");
    }

    #[test]
    fn options_left_out_of_the_plan_are_left_out() {
        let mut p = plan(vec![]);
        p.network.router = None;
        p.network.dns.clear();
        p.network.domain = None;
        p.network.ntp.clear();
        let text = String::from_utf8(render(&p).bytes).unwrap();
        assert!(
            text.contains("subnet 10.0.0.0 netmask 255.255.255.0 {\n  next-server 10.0.0.2;\n}"),
            "{text}"
        );
        assert!(text.contains("deny unknown-clients;"), "{text}");
    }
}
