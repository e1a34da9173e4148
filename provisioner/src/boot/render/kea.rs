//! ISC Kea: `kea-dhcp4.conf`, one subnet with no pool and a reservation per
//! node, so unknown clients get no lease.
//!
//! The JSON comes from typed structs rather than `json!` so its key order is
//! the order written here whatever serde_json features the build enables.

use serde::Serialize;

use super::{BootFile, HEADER, UEFI_X64_ARCHES, boot_file, text_file};
use crate::boot::{BootNode, BootPlan, GeneratedFile, Loader, Tree};

/// What iPXE sends as its user class (option 77), as raw bytes.
const IS_IPXE: &str = "substring(option[77].hex,0,4) == 'iPXE'";

#[derive(Serialize)]
struct Config {
    #[serde(rename = "Dhcp4")]
    dhcp4: Dhcp4,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct Dhcp4 {
    comment: String,
    authoritative: bool,
    interfaces_config: InterfacesConfig,
    lease_database: LeaseDatabase,
    client_classes: Vec<ClientClass>,
    subnet4: Vec<Subnet4>,
}

#[derive(Serialize)]
struct InterfacesConfig {
    interfaces: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct LeaseDatabase {
    #[serde(rename = "type")]
    kind: &'static str,
    lfc_interval: u32,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct ClientClass {
    name: String,
    /// None for a class only reservations assign.
    #[serde(skip_serializing_if = "Option::is_none")]
    test: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    boot_file_name: Option<&'static str>,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct Subnet4 {
    id: u32,
    subnet: String,
    /// Always empty: every address is a reservation.
    pools: Vec<serde_json::Value>,
    option_data: Vec<OptionData>,
    next_server: String,
    reservations: Vec<Reservation>,
}

#[derive(Serialize)]
struct OptionData {
    name: &'static str,
    data: String,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct Reservation {
    hw_address: String,
    ip_address: String,
    hostname: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    boot_file_name: Option<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    client_classes: Vec<String>,
}

/// `kea-dhcp4.conf`.
pub(super) fn render(plan: &BootPlan) -> GeneratedFile {
    let config = Config {
        dhcp4: Dhcp4 {
            comment: format!("{HEADER}; boot network of cluster {}", plan.cluster),
            authoritative: true,
            interfaces_config: InterfacesConfig {
                interfaces: vec![plan.network.interface.clone()],
            },
            lease_database: LeaseDatabase {
                kind: "memfile",
                lfc_interval: 3600,
            },
            client_classes: loader_classes(),
            subnet4: vec![subnet(plan)],
        },
    };
    let mut text = serde_json::to_string_pretty(&config).expect("plain structs always serialize");
    text.push('\n');
    text_file(Tree::Dhcp, "kea-dhcp4.conf", text)
}

/// Loaders whose boot file depends on the request, each with a class its
/// nodes' reservations assign.
const CHOOSING_LOADERS: [(Loader, &str); 2] = [
    (Loader::Auto, "dfleet-loader-auto"),
    (Loader::Ipxe, "dfleet-loader-ipxe"),
];

/// For each loader whose file depends on the request: the class its
/// reservations assign, then one class per answer. Kea evaluates classes
/// that depend on `KNOWN` after the host lookup, when the reservation's
/// classes are set, so `member()` of them works there.
fn loader_classes() -> Vec<ClientClass> {
    let mut classes = Vec::new();
    for (loader, marker) in CHOOSING_LOADERS {
        let (condition, [then, otherwise]) = match boot_file(loader) {
            BootFile::Fixed(_) => continue,
            BootFile::ByArch { bios, uefi } => (uefi_test(), [("uefi", uefi), ("bios", bios)]),
            BootFile::Chained { first, script } => (
                IS_IPXE.to_string(),
                [("script", script), ("first-stage", first)],
            ),
        };
        let member = format!("member('KNOWN') and member('{marker}')");
        classes.extend([
            ClientClass {
                name: marker.to_string(),
                test: None,
                boot_file_name: None,
            },
            ClientClass {
                name: format!("{marker}-{}", then.0),
                test: Some(format!("{member} and ({condition})")),
                boot_file_name: Some(then.1),
            },
            ClientClass {
                name: format!("{marker}-{}", otherwise.0),
                test: Some(format!("{member} and not ({condition})")),
                boot_file_name: Some(otherwise.1),
            },
        ]);
    }
    classes
}

/// A UEFI x64 request: option 93 is 7 or 9 (two bytes, big-endian).
fn uefi_test() -> String {
    UEFI_X64_ARCHES
        .iter()
        .map(|a| format!("option[93].hex == 0x{a:04x}"))
        .collect::<Vec<_>>()
        .join(" or ")
}

fn subnet(plan: &BootPlan) -> Subnet4 {
    Subnet4 {
        id: 1,
        subnet: plan.network.subnet.to_string(),
        pools: Vec::new(),
        option_data: options(plan),
        next_server: plan.network.next_server.to_string(),
        reservations: plan.nodes.iter().map(reservation).collect(),
    }
}

fn options(plan: &BootPlan) -> Vec<OptionData> {
    let net = &plan.network;
    let list = |addresses: &[std::net::Ipv4Addr]| {
        addresses
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut options = Vec::new();
    if let Some(router) = net.router {
        options.push(OptionData {
            name: "routers",
            data: router.to_string(),
        });
    }
    if !net.dns.is_empty() {
        options.push(OptionData {
            name: "domain-name-servers",
            data: list(&net.dns),
        });
    }
    if let Some(domain) = &net.domain {
        options.push(OptionData {
            name: "domain-name",
            data: domain.clone(),
        });
    }
    if !net.ntp.is_empty() {
        options.push(OptionData {
            name: "ntp-servers",
            data: list(&net.ntp),
        });
    }
    options
}

/// The node's address and name, and either its boot file or the class that
/// picks one per request (see [`loader_classes`]).
fn reservation(node: &BootNode) -> Reservation {
    let (boot_file_name, client_classes) = match boot_file(node.loader) {
        BootFile::Fixed(file) => (Some(file), Vec::new()),
        BootFile::ByArch { .. } | BootFile::Chained { .. } => (
            None,
            CHOOSING_LOADERS
                .iter()
                .filter(|(l, _)| *l == node.loader)
                .map(|(_, marker)| marker.to_string())
                .collect(),
        ),
    };
    Reservation {
        hw_address: node.mac.to_string(),
        ip_address: node.ip.to_string(),
        hostname: node.name.clone(),
        boot_file_name,
        client_classes,
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixture::{node, plan};
    use super::*;
    use crate::boot::Loader;
    use serde_json::{Value, json};

    fn conf(nodes: Vec<BootNode>) -> Value {
        serde_json::from_slice(&render(&plan(nodes)).bytes).unwrap()
    }

    #[test]
    fn reservations_carry_the_file_of_their_loader() {
        let c = conf(vec![
            node("p", 1, Loader::Pxelinux, None),
            node("g", 2, Loader::GrubEfi, None),
            node("i", 3, Loader::Ipxe, None),
            node("a", 4, Loader::Auto, None),
        ]);
        assert_eq!(
            c["Dhcp4"]["subnet4"][0]["reservations"],
            json!([
                {"hw-address": "52:54:00:00:00:01", "ip-address": "10.0.0.11", "hostname": "p", "boot-file-name": "pxelinux.0"},
                {"hw-address": "52:54:00:00:00:02", "ip-address": "10.0.0.12", "hostname": "g", "boot-file-name": "grubx64.efi"},
                {"hw-address": "52:54:00:00:00:03", "ip-address": "10.0.0.13", "hostname": "i", "client-classes": ["dfleet-loader-ipxe"]},
                {"hw-address": "52:54:00:00:00:04", "ip-address": "10.0.0.14", "hostname": "a", "client-classes": ["dfleet-loader-auto"]},
            ])
        );
    }

    #[test]
    fn classes_choose_the_file_after_the_host_lookup() {
        let c = conf(vec![]);
        let classes = &c["Dhcp4"]["client-classes"];
        assert_eq!(classes[0], json!({"name": "dfleet-loader-auto"}));
        assert_eq!(
            classes[1],
            json!({
                "name": "dfleet-loader-auto-uefi",
                "test": "member('KNOWN') and member('dfleet-loader-auto') and (option[93].hex == 0x0007 or option[93].hex == 0x0009)",
                "boot-file-name": "grubx64.efi"
            })
        );
        assert_eq!(classes[2]["name"], "dfleet-loader-auto-bios");
        assert_eq!(
            classes[2]["test"],
            "member('KNOWN') and member('dfleet-loader-auto') and not (option[93].hex == 0x0007 or option[93].hex == 0x0009)"
        );
        assert_eq!(classes[4]["name"], "dfleet-loader-ipxe-script");
        assert_eq!(classes[5]["boot-file-name"], "undionly.kpxe");
    }

    #[test]
    fn the_subnet_has_no_pool_and_the_plans_options() {
        let c = conf(vec![]);
        let s = &c["Dhcp4"]["subnet4"][0];
        assert_eq!(s["subnet"], "10.0.0.0/24");
        assert_eq!(s["pools"], json!([]));
        assert_eq!(s["next-server"], "10.0.0.2");
        let names: Vec<&str> = s["option-data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "routers",
                "domain-name-servers",
                "domain-name",
                "ntp-servers"
            ]
        );
    }
}
