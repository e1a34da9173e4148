//! The boot network tables of `cluster.toml`: `[boot]`, `[nfs]`, `[paths]`, `[groups.NAME]`, and the boot settings every level may give.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use dfleet_proto::domain::NodeName;
use toml::de::DeValue;

use super::doc::{self, Ctx, Need, Table};
use super::sections::{dns_name, is_dns_name};
use super::{
    BootSettings, DEFAULT_DHCP_ROOT, DEFAULT_EXPORT_ROOT, DEFAULT_EXPORTS_ROOT, DEFAULT_TFTP_ROOT,
    NfsSettings, NodeBoot,
};
use crate::boot::{BootNetwork, BootPaths, DhcpFlavour, Loader, Subnet};
use crate::nodeset;

/// The keys of [`NodeBoot`], accepted in `[boot]`, `[groups.NAME]` and `[[nodes]]`.
pub(super) const NODE_BOOT_KEYS: [&str; 4] = ["loader", "kernel_args", "console", "overlay_size"];
/// What a group or a node may set beyond [`NODE_BOOT_KEYS`] (not `[boot]`).
pub(super) const NODE_ONLY_KEYS: [&str; 1] = ["ssh_host_keys"];

const BOOT_KEYS: [&str; 11] = [
    "interface",
    "subnet",
    "router",
    "dns",
    "domain",
    "ntp",
    "next_server",
    "dhcp",
    "coordinator",
    "dhcp_reload",
    "dhcp_log",
];

/// Reads `[boot]`. Its subnet is returned on its own as well, so that node addresses are checked
/// against it even when another key of `[boot]` is bad.
pub(super) fn boot(
    ctx: &mut Ctx<'_>,
    root: &Table<'_, '_>,
) -> (Option<BootSettings>, Option<Subnet>) {
    let Some(t) = ctx.table(root, "boot", Need::Optional) else {
        return (None, None);
    };
    let known: Vec<&str> = BOOT_KEYS.iter().chain(&NODE_BOOT_KEYS).copied().collect();
    t.check_keys(ctx, &known);
    let interface = ctx.read(&t, "interface", Need::Required, interface);
    let subnet = ctx.read(&t, "subnet", Need::Required, subnet);
    let router = ctx.read(&t, "router", Need::Optional, doc::ipv4);
    let dns = ctx.list(&t, "dns", Need::Optional, doc::ipv4);
    let domain = ctx.read(&t, "domain", Need::Optional, dns_name);
    let ntp = ctx.list(&t, "ntp", Need::Optional, doc::ipv4);
    let next_server = ctx.read(&t, "next_server", Need::Required, doc::ipv4);
    let dhcp = ctx
        .read(&t, "dhcp", Need::Optional, dhcp)
        .unwrap_or(DhcpFlavour::Dnsmasq);
    let coordinator = ctx.read(&t, "coordinator", Need::Optional, host_port);
    let dhcp_reload = ctx.list(&t, "dhcp_reload", Need::Optional, doc::non_empty_string);
    let dhcp_log = ctx.read(&t, "dhcp_log", Need::Optional, doc::absolute_path);
    if let (Some([]), Some(value)) = (dhcp_reload.as_deref(), t.get("dhcp_reload")) {
        ctx.report(
            &value.span(),
            t.field("dhcp_reload"),
            "must name at least the program to run",
        );
    }
    let defaults = node_boot(ctx, &t);
    if let Some(subnet) = subnet {
        // Nodes reach both directly: DHCP hands out the router, and the next server is where
        // the firmware fetches its loader before any route exists.
        for (key, ip) in [("router", router), ("next_server", next_server)] {
            if let Some(ip) = ip
                && let Some(wrong) = misplaced(subnet, ip)
            {
                let line = t.value_line(ctx, key).unwrap_or_else(|| t.line(ctx));
                ctx.report_line(line, t.field(key), format!("{key} {ip} {wrong}"));
            }
        }
    }
    let addresses = |list: Option<Vec<(Ipv4Addr, _)>>| {
        list.unwrap_or_default()
            .into_iter()
            .map(|(ip, _)| ip)
            .collect()
    };
    let settings = match (interface, subnet, next_server) {
        (Some(interface), Some(subnet), Some(next_server)) => Some(BootSettings {
            network: BootNetwork {
                interface,
                subnet,
                router,
                dns: addresses(dns),
                domain,
                ntp: addresses(ntp),
                next_server,
                dhcp,
            },
            coordinator,
            dhcp_reload: dhcp_reload
                .map(|l| l.into_iter().map(|(s, _)| s).collect())
                .unwrap_or_else(|| default_reload(dhcp)),
            dhcp_log,
            defaults,
        }),
        _ => None,
    };
    (settings, subnet)
}

/// How the DHCP server of each flavour is told to re-read its configuration:
/// dnsmasq and Kea reload on SIGHUP (their units' reload), dhcpd needs a
/// restart.
fn default_reload(flavour: DhcpFlavour) -> Vec<String> {
    let (verb, unit) = match flavour {
        DhcpFlavour::Dnsmasq => ("reload", "dnsmasq"),
        DhcpFlavour::Kea => ("reload", "kea-dhcp4-server"),
        DhcpFlavour::Isc => ("restart", "isc-dhcp-server"),
    };
    vec!["systemctl".into(), verb.into(), unit.into()]
}

pub(super) fn nfs(ctx: &mut Ctx<'_>, root: &Table<'_, '_>) -> Option<NfsSettings> {
    let t = ctx.table(root, "nfs", Need::Optional)?;
    t.check_keys(
        ctx,
        &[
            "server",
            "export_root",
            "managed",
            "management_host",
            "reload",
        ],
    );
    let server = ctx.read(&t, "server", Need::Required, doc::ipv4);
    let export_root = ctx
        .read(&t, "export_root", Need::Optional, doc::absolute_path)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_EXPORT_ROOT));
    let managed = ctx
        .read(&t, "managed", Need::Optional, doc::boolean)
        .unwrap_or(true);
    let management_host = ctx.read(&t, "management_host", Need::Optional, doc::ipv4);
    let reload = ctx.list(&t, "reload", Need::Optional, doc::non_empty_string);
    if let (Some([]), Some(value)) = (reload.as_deref(), t.get("reload")) {
        ctx.report(
            &value.span(),
            t.field("reload"),
            "must name at least the program to run",
        );
    }
    let server = server?;
    Some(NfsSettings {
        server,
        export_root,
        managed,
        management_host: management_host.unwrap_or(server),
        // The kernel server re-reads /etc/exports.d with exportfs; an
        // appliance is the administrator's to reload.
        reload: reload.map_or_else(
            || {
                if managed {
                    vec!["exportfs".into(), "-ra".into()]
                } else {
                    Vec::new()
                }
            },
            |l| l.into_iter().map(|(s, _)| s).collect(),
        ),
    })
}

/// `[paths]`, each root defaulted when absent. The image store defaults to
/// the NFS export root: with a managed server the trees are exported where
/// they are, so the two must agree; an appliance (`managed = false`) may be
/// mounted on the management host somewhere else.
pub(super) fn paths(
    ctx: &mut Ctx<'_>,
    root: &Table<'_, '_>,
    nfs: Option<&NfsSettings>,
) -> BootPaths {
    let t = ctx.table(root, "paths", Need::Optional);
    if let Some(t) = &t {
        t.check_keys(
            ctx,
            &["tftp_root", "dhcp_root", "exports_root", "images_root"],
        );
    }
    let mut root_dir = |key: &str| {
        t.as_ref()
            .and_then(|t| ctx.read(t, key, Need::Optional, doc::absolute_path))
    };
    let tftp_root = root_dir("tftp_root").unwrap_or_else(|| PathBuf::from(DEFAULT_TFTP_ROOT));
    let dhcp_root = root_dir("dhcp_root").unwrap_or_else(|| PathBuf::from(DEFAULT_DHCP_ROOT));
    let exports_root =
        root_dir("exports_root").unwrap_or_else(|| PathBuf::from(DEFAULT_EXPORTS_ROOT));
    let images_root = root_dir("images_root");
    let export_root = nfs.map_or_else(
        || PathBuf::from(DEFAULT_EXPORT_ROOT),
        |n| n.export_root.clone(),
    );
    if let (Some(images), Some(nfs), Some(t)) = (&images_root, nfs, &t)
        && nfs.managed
        && *images != nfs.export_root
        && let Some(line) = t.value_line(ctx, "images_root")
    {
        ctx.report_line(
            line,
            "paths.images_root",
            format!(
                "{} differs from nfs.export_root {}: a managed NFS server exports the images where they are \
                 (set one of the two, or managed = false for an appliance mounted elsewhere)",
                images.display(),
                nfs.export_root.display()
            ),
        );
    }
    BootPaths {
        tftp_root,
        dhcp_root,
        exports_root,
        images_root: images_root.unwrap_or(export_root),
    }
}

/// Reads every `[groups.NAME]` table, reporting those no `[[nodes]]` entry lists: settings for a
/// group nobody is in would silently do nothing, and are far more often a misspelt group name.
pub(super) fn groups(ctx: &mut Ctx<'_>, root: &Table<'_, '_>) -> BTreeMap<String, NodeBoot> {
    let mut out = BTreeMap::new();
    let Some(t) = ctx.table(root, "groups", Need::Optional) else {
        return out;
    };
    let in_use = groups_in_use(root);
    for (name, span) in t.keys() {
        if !in_use.contains(name) {
            let listed: Vec<&str> = in_use.iter().copied().collect();
            let known = match listed[..] {
                [] => "no [[nodes]] entry lists any group".to_string(),
                _ => format!("groups in use: {}", listed.join(", ")),
            };
            let message = format!("no node is in group {name:?} (a typo?); {known}");
            ctx.report(&span, t.field(name), message);
        }
        let Some(g) = ctx.table(&t, name, Need::Required) else {
            continue;
        };
        let known: Vec<&str> = NODE_BOOT_KEYS
            .iter()
            .chain(&NODE_ONLY_KEYS)
            .copied()
            .collect();
        g.check_keys(ctx, &known);
        out.insert(name.to_string(), node_boot(ctx, &g));
    }
    out
}

/// Every group name the `[[nodes]]` entries list, read straight from the document so that an
/// entry with an unrelated problem still counts.
fn groups_in_use<'t>(root: &Table<'t, '_>) -> BTreeSet<&'t str> {
    let entries = root
        .get("nodes")
        .and_then(|nodes| nodes.get_ref().as_array());
    entries
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            entry
                .get_ref()
                .as_table()?
                .get("groups")?
                .get_ref()
                .as_array()
        })
        .flatten()
        .filter_map(|group| group.get_ref().as_str())
        .collect()
}

/// Reads the [`NODE_BOOT_KEYS`] of `t`; its caller checks for unknown keys.
pub(super) fn node_boot(ctx: &mut Ctx<'_>, t: &Table<'_, '_>) -> NodeBoot {
    let kernel_args = ctx.list(t, "kernel_args", Need::Optional, kernel_arg);
    NodeBoot {
        loader: ctx.read(t, "loader", Need::Optional, loader),
        kernel_args: kernel_args
            .unwrap_or_default()
            .into_iter()
            .map(|(arg, _)| arg)
            .collect(),
        console: ctx.read(t, "console", Need::Optional, console),
        overlay_size: ctx.read(t, "overlay_size", Need::Optional, overlay_size),
        ssh_host_keys: ctx.read(
            t,
            "ssh_host_keys",
            Need::Optional,
            super::ssh::host_key_mode,
        ),
    }
}

/// Reports the nodes of one `[[nodes]]` entry whose addresses DHCP could not hand out on the
/// boot subnet. `names` and `ips` are the entry's nodes in order; the problems go on `line`.
pub(super) fn check_addresses(
    ctx: &mut Ctx<'_>,
    field: &str,
    line: usize,
    subnet: Subnet,
    names: &[NodeName],
    ips: &[Ipv4Addr],
) {
    let mut outside = Vec::new();
    let mut reserved = Vec::new();
    for (name, &ip) in names.iter().zip(ips) {
        if !subnet.contains(ip) {
            outside.push((name, ip));
        } else if let Some(wrong) = misplaced(subnet, ip) {
            reserved.push(format!("{name}'s address {ip} {wrong}"));
        }
    }
    // A range that runs off the end of the subnet would otherwise fill the screen with one
    // problem per node.
    match &outside[..] {
        [] => {}
        [(name, ip)] => {
            let message = format!("{name}'s address {ip} is outside the boot subnet {subnet}");
            ctx.report_line(line, field, message);
        }
        [(first, ip), ..] => {
            let names: Vec<String> = outside.iter().map(|(n, _)| n.to_string()).collect();
            let message = format!(
                "the addresses of {} nodes are outside the boot subnet {subnet}: {} (the first, \
                 {first}, has {ip})",
                names.len(),
                nodeset::fold(&names)
            );
            ctx.report_line(line, field, message);
        }
    }
    for message in reserved {
        ctx.report_line(line, field, message);
    }
}

/// Why `ip` cannot be a host's address on `subnet`, if it cannot.
fn misplaced(subnet: Subnet, ip: Ipv4Addr) -> Option<String> {
    if !subnet.contains(ip) {
        Some(format!("is outside the boot subnet {subnet}"))
    } else if ip == subnet.network {
        Some(format!(
            "is the network address of the boot subnet {subnet}"
        ))
    } else if ip == subnet.broadcast() {
        Some(format!(
            "is the broadcast address of the boot subnet {subnet}"
        ))
    } else {
        None
    }
}

/// A subnet in CIDR notation whose address is the network itself, e.g. `10.0.0.0/24`.
fn subnet(value: &DeValue<'_>) -> Result<Subnet, String> {
    let s = doc::string(value)?;
    let malformed =
        || format!("malformed subnet {s:?}: expected NETWORK/PREFIX, e.g. \"10.0.0.0/24\"");
    let (address, prefix) = s.split_once('/').ok_or_else(malformed)?;
    let network: Ipv4Addr = address.parse().map_err(|_| malformed())?;
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed());
    }
    let prefix = match prefix.parse::<u8>() {
        Ok(p) if p <= 32 => p,
        _ => {
            return Err(format!(
                "prefix length {prefix} in {s:?} is out of range: must be at most 32"
            ));
        }
    };
    let given = Subnet { network, prefix };
    let subnet = Subnet {
        network: Ipv4Addr::from(u32::from(network) & u32::from(given.netmask())),
        prefix,
    };
    if subnet != given {
        return Err(format!(
            "{s:?} is not a network address: {network} has host bits set in a /{prefix}; the \
             network is {subnet}"
        ));
    }
    Ok(subnet)
}

/// A Linux interface name: what the kernel's `dev_valid_name` accepts.
fn interface(value: &DeValue<'_>) -> Result<String, String> {
    let s = doc::string(value)?;
    let ok = !s.is_empty()
        && s.len() <= 15
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if !ok {
        return Err(format!(
            "invalid interface name {s:?}: expected 1 to 15 characters without '/', ':' or \
             whitespace, e.g. \"eth1\""
        ));
    }
    Ok(s)
}

fn dhcp(value: &DeValue<'_>) -> Result<DhcpFlavour, String> {
    match doc::string(value)?.as_str() {
        "isc" => Ok(DhcpFlavour::Isc),
        "dnsmasq" => Ok(DhcpFlavour::Dnsmasq),
        "kea" => Ok(DhcpFlavour::Kea),
        other => Err(format!(
            "unknown DHCP server {other:?}: expected \"isc\", \"dnsmasq\" or \"kea\""
        )),
    }
}

fn loader(value: &DeValue<'_>) -> Result<Loader, String> {
    match doc::string(value)?.as_str() {
        "auto" => Ok(Loader::Auto),
        "pxelinux" => Ok(Loader::Pxelinux),
        "grub-efi" => Ok(Loader::GrubEfi),
        "ipxe" => Ok(Loader::Ipxe),
        other => Err(format!(
            "unknown loader {other:?}: expected \"auto\", \"pxelinux\", \"grub-efi\" or \"ipxe\""
        )),
    }
}

/// `HOST:PORT` with an IPv4 address, a bracketed IPv6 address or a DNS name, and a port above 0.
fn host_port(value: &DeValue<'_>) -> Result<String, String> {
    let s = doc::string(value)?;
    if s.parse::<SocketAddr>().is_ok_and(|addr| addr.port() != 0) {
        return Ok(s);
    }
    let port_ok = |port: &str| port.parse::<u16>().is_ok_and(|p| p != 0);
    // A name whose last label is all digits is a malformed IPv4 address, not a host name.
    let name_ok = |host: &str| {
        is_dns_name(host)
            && !host
                .rsplit('.')
                .next()
                .is_some_and(|label| label.bytes().all(|b| b.is_ascii_digit()))
    };
    match s.rsplit_once(':') {
        Some((host, port)) if name_ok(host) && port_ok(port) => Ok(s),
        _ => Err(format!(
            "malformed coordinator address {s:?}: expected HOST:PORT, e.g. \"10.0.0.1:7443\""
        )),
    }
}

/// One kernel argument. Each is its own string so that boot files never have to split or quote.
fn kernel_arg(value: &DeValue<'_>) -> Result<String, String> {
    let s = doc::non_empty_string(value)?;
    if s.contains(char::is_whitespace) {
        return Err(format!(
            "kernel argument {s:?} contains whitespace: give each argument as its own string"
        ));
    }
    Ok(s)
}

/// The value of `console=`, e.g. `ttyS0,115200`.
fn console(value: &DeValue<'_>) -> Result<String, String> {
    let s = doc::string(value)?;
    if s.is_empty() || s.contains(|c: char| c.is_whitespace() || c == '=') {
        return Err(format!(
            "invalid console {s:?}: expected a device and its options, e.g. \"ttyS0,115200\""
        ));
    }
    Ok(s)
}

/// A tmpfs `size=`: a share of RAM (`50%`) or a size with a unit (`4g`, `512m`, `2048k`).
fn overlay_size(value: &DeValue<'_>) -> Result<String, String> {
    let s = doc::string(value)?;
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = s.split_at(digits);
    let ok = match (number.parse::<u64>(), unit) {
        (Ok(n), "%") => (1..=100).contains(&n),
        // tmpfs reads size=0 as "no limit", which is never what a cap means.
        (Ok(n), "k" | "m" | "g" | "t" | "K" | "M" | "G" | "T") => n > 0,
        _ => false,
    };
    if !ok {
        return Err(format!(
            "invalid overlay size {s:?}: expected a share of RAM from \"1%\" to \"100%\" or a \
             size such as \"4g\", \"512m\" or \"2048k\""
        ));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `convert` applied to the TOML string `s`.
    fn read<T>(convert: impl Fn(&DeValue<'_>) -> T, s: &str) -> T {
        let text = format!("v = {s:?}");
        let doc = toml::de::DeTable::parse(&text).unwrap();
        convert(doc.get_ref().get("v").unwrap().get_ref())
    }

    #[test]
    fn overlay_sizes_follow_tmpfs_syntax() {
        for ok in ["50%", "1%", "100%", "4g", "512m", "2048k", "1T", "8G"] {
            assert_eq!(read(overlay_size, ok), Ok(ok.to_string()));
        }
        for bad in [
            "0%", "101%", "50", "0g", "4gb", "g", "", "-1g", "4 g", "1.5g",
        ] {
            assert!(read(overlay_size, bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn coordinator_addresses_need_a_host_and_a_port() {
        for ok in [
            "10.0.0.1:7443",
            "[fd00::1]:7443",
            "coord.cluster.example:7443",
        ] {
            assert!(read(host_port, ok).is_ok(), "{ok:?}");
        }
        for bad in [
            "10.0.0.1",
            "10.0.0.1:0",
            "10.0.0.256:7443",
            ":7443",
            "a b:1",
            "x:99999",
        ] {
            assert!(read(host_port, bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn the_whole_address_space_and_single_hosts_are_subnets() {
        assert_eq!(
            read(subnet, "0.0.0.0/0"),
            Ok(Subnet {
                network: Ipv4Addr::UNSPECIFIED,
                prefix: 0
            })
        );
        assert_eq!(
            read(subnet, "10.0.0.7/32"),
            Ok(Subnet {
                network: Ipv4Addr::new(10, 0, 0, 7),
                prefix: 32
            })
        );
    }
}
