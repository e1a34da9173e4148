//! Inventory parsing and validation through the public API: every rule's problem names its file, line and field.

use std::fmt::Write as _;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use dfleet_proto::domain::{HostKeyMode, MacAddr};
use dfleet_provisioner::boot::{BootNetwork, BootPaths, DhcpFlavour, Loader, Subnet};
use dfleet_provisioner::inventory::{
    BootSettings, CheckCommand, ClusterConfig, EnrollmentConfig, EnrollmentPolicy, HealthConfig,
    Inventory, NfsSettings, NodeBoot, ResolvedBoot,
};
use dfleet_provisioner::window::Window;

/// A valid `[cluster]` table of four lines: text appended to it starts at line 5.
const BASE: &str = "[cluster]
name = \"demo\"
state_dir = \"/var/lib/dfleet\"
listen = [\"0.0.0.0:7443\"]
";

fn parse(text: &str) -> Result<Inventory, Vec<String>> {
    Inventory::parse(text, Path::new("cluster.toml"))
        .map_err(|e| e.problems.iter().map(ToString::to_string).collect())
}

fn problems(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(_) => panic!("expected problems in:\n{text}"),
        Err(problems) => problems,
    }
}

fn mac(text: &str) -> MacAddr {
    text.parse().unwrap()
}

#[test]
fn the_fixture_uses_every_feature_and_loads() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cluster.toml");
    let inv = Inventory::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(inv.path, path);
    assert_eq!(
        inv.cluster,
        ClusterConfig {
            name: "demo".into(),
            state_dir: "/var/lib/dfleet".into(),
            listen: vec![
                "0.0.0.0:7443".parse::<SocketAddr>().unwrap(),
                "[::]:7443".parse().unwrap()
            ],
            metrics_listen: Some("127.0.0.1:9464".parse().unwrap()),
            admin_socket: "/run/dfleet/admin.sock".into(),
            admin_group: "dfleet-admin".into(),
            coordinator_name: "dfleet-coordinator.cluster.example".into(),
            report_interval: Duration::from_secs(15),
        }
    );
    assert_eq!(
        inv.enrollment,
        EnrollmentConfig {
            policy: EnrollmentPolicy::Manual,
            cert_lifetime: Duration::from_secs(12 * 3600),
            rate_per_second: 20,
            burst: 100,
            pending_max: 512,
        }
    );
    assert_eq!(
        inv.health,
        HealthConfig {
            stale_after: Duration::from_secs(45),
            lost_after: Duration::from_secs(180),
            overlay_used_warn_percent: 90,
            overlay_time_to_full_warn: Duration::from_secs(1800),
        }
    );
    assert_eq!(
        inv.checks,
        vec![
            CheckCommand {
                name: "slurmd".into(),
                command: vec!["systemctl".into(), "is-active".into(), "slurmd".into()],
                timeout: Duration::from_secs(5),
            },
            CheckCommand {
                name: "nhc".into(),
                command: vec!["/usr/sbin/nhc".into(), "-t".into(), "60".into()],
                timeout: Duration::from_secs(90),
            },
        ]
    );
    let summary: Vec<String> = inv
        .nodes
        .iter()
        .map(|n| {
            format!(
                "{} {} {} {} {} {}",
                n.name,
                n.mac,
                n.ip,
                n.image,
                n.groups.join("+"),
                n.line
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            "login1 52:54:00:00:00:01 10.0.0.1 login login 76",
            "cn01 52:54:00:00:01:01 10.0.1.1 compute compute+rack1 83",
            "cn02 52:54:00:00:01:02 10.0.1.2 compute compute+rack1 83",
            "cn03 52:54:00:00:01:03 10.0.1.3 compute compute+rack1 83",
            "cn04 52:54:00:00:01:04 10.0.1.4 compute compute+rack1 83",
            "gpu1 52:54:00:00:02:01 10.0.2.10 compute-gpu compute+gpu 96",
            "gpu2 52:54:00:00:02:0a 10.0.2.11 compute-gpu compute+gpu 96",
            "gpu5 52:54:00:00:02:05 10.0.2.12 compute-gpu compute+gpu 96",
            "rack1-sw1 52:54:00:00:03:01 10.0.3.1 switch-agent  105",
            "rack1-sw2 52:54:00:00:03:02 10.0.3.2 switch-agent  105",
            "rack2-sw1 52:54:00:00:03:03 10.0.3.3 switch-agent  105",
            "rack2-sw2 52:54:00:00:03:04 10.0.3.4 switch-agent  105",
        ]
    );
    assert_eq!(inv.node("gpu5").unwrap().ip, Ipv4Addr::new(10, 0, 2, 12));
    assert_eq!(
        inv.node_by_mac(&mac("52-54-00-00-02-0A"))
            .unwrap()
            .name
            .as_str(),
        "gpu2"
    );
    assert!(inv.node("gpu3").is_none());
    assert!(inv.node_by_mac(&mac("52:54:00:00:09:09")).is_none());

    assert_eq!(
        inv.boot,
        Some(BootSettings {
            network: BootNetwork {
                interface: "eth1".into(),
                subnet: Subnet {
                    network: Ipv4Addr::new(10, 0, 0, 0),
                    prefix: 22
                },
                router: Some(Ipv4Addr::new(10, 0, 3, 254)),
                dns: vec![Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)],
                domain: Some("cluster.example".into()),
                ntp: vec![Ipv4Addr::new(10, 0, 0, 1)],
                next_server: Ipv4Addr::new(10, 0, 0, 1),
                dhcp: DhcpFlavour::Kea,
            },
            coordinator: Some("dfleet-coordinator.cluster.example:7443".into()),
            dhcp_reload: vec![
                "keactrl".into(),
                "reload".into(),
                "-s".into(),
                "dhcp4".into()
            ],
            dhcp_log: None,
            defaults: NodeBoot {
                loader: Some(Loader::Pxelinux),
                kernel_args: vec!["quiet".into()],
                console: Some("ttyS0,115200".into()),
                overlay_size: Some("50%".into()),
                ssh_host_keys: None,
            },
        })
    );
    assert_eq!(
        inv.nfs,
        Some(NfsSettings {
            server: Ipv4Addr::new(10, 0, 0, 2),
            export_root: "/export/dfleet".into(),
            managed: false,
            management_host: Ipv4Addr::new(10, 0, 0, 1),
            reload: vec![],
        })
    );
    assert_eq!(
        inv.paths,
        BootPaths {
            tftp_root: "/var/lib/tftpboot".into(),
            dhcp_root: "/etc/dfleet/dhcp.d".into(),
            exports_root: "/etc/dfleet/exports.d".into(),
            images_root: "/mnt/filer/dfleet".into(),
        }
    );
    let windows: Vec<String> = inv
        .windows
        .iter()
        .map(|(k, w)| format!("{k} = {w}"))
        .collect();
    assert_eq!(
        windows,
        [
            "night = Mon-Fri 22:00-06:00 Europe/Berlin",
            "weekend = Sat,Sun 00:00-24:00 UTC"
        ]
    );
    assert_eq!(
        inv.groups.keys().collect::<Vec<_>>(),
        ["compute", "gpu"],
        "{:?}",
        inv.groups
    );
    assert_eq!(
        inv.groups["compute"],
        NodeBoot {
            loader: Some(Loader::Ipxe),
            kernel_args: vec!["mitigations=off".into()],
            console: Some("ttyS1,115200".into()),
            overlay_size: Some("8g".into()),
            ssh_host_keys: Some(HostKeyMode::Managed),
        }
    );
    assert_eq!(inv.ssh.cert_validity, Duration::from_secs(14 * 86_400));
    assert_eq!(
        inv.host_key_mode(inv.node("login1").unwrap()),
        HostKeyMode::Certificates
    );
    assert_eq!(inv.node("cn03").unwrap().boot.loader, Some(Loader::GrubEfi));
    let boot: Vec<String> = ["login1", "cn01", "gpu5", "rack2-sw1"]
        .into_iter()
        .map(|name| {
            let b = inv.effective_boot(inv.node(name).unwrap());
            format!(
                "{name} {:?} {} {} {}",
                b.loader,
                b.kernel_args.join("+"),
                b.console.unwrap_or_default(),
                b.overlay_size
            )
        })
        .collect();
    assert_eq!(
        boot,
        [
            "login1 Pxelinux quiet ttyS0,115200 50%",
            "cn01 GrubEfi quiet+mitigations=off ttyS1,115200 8g",
            "gpu5 Ipxe quiet+mitigations=off+nouveau.modeset=0+hugepages=64 tty0 8g",
            "rack2-sw1 Pxelinux quiet ttyS0,115200 512m",
        ]
    );
}

#[test]
fn absent_optional_tables_and_keys_take_their_defaults() {
    let inv = parse(BASE).unwrap();
    assert_eq!(inv.cluster.metrics_listen, None);
    assert_eq!(
        inv.cluster.admin_socket,
        PathBuf::from("/run/dfleet/admin.sock")
    );
    assert_eq!(inv.cluster.admin_group, "dfleet-admin");
    assert_eq!(inv.cluster.coordinator_name, "dfleet-coordinator");
    assert_eq!(inv.cluster.report_interval, Duration::from_secs(10));
    assert_eq!(inv.enrollment.policy, EnrollmentPolicy::Inventory);
    assert_eq!(inv.enrollment.cert_lifetime, Duration::from_secs(86_400));
    assert_eq!(
        (
            inv.enrollment.rate_per_second,
            inv.enrollment.burst,
            inv.enrollment.pending_max
        ),
        (50, 200, 1024)
    );
    assert_eq!(inv.health.stale_after, Duration::from_secs(30));
    assert_eq!(inv.health.lost_after, Duration::from_secs(120));
    assert_eq!(inv.health.overlay_used_warn_percent, 80);
    assert_eq!(
        inv.health.overlay_time_to_full_warn,
        Duration::from_secs(3600)
    );
    assert!(inv.checks.is_empty());
    assert_eq!(inv.boot, None);
    assert_eq!(inv.nfs, None);
    assert_eq!(
        inv.paths,
        BootPaths {
            tftp_root: "/srv/tftp".into(),
            dhcp_root: "/etc/dfleet/dhcp".into(),
            exports_root: "/etc/exports.d".into(),
            images_root: "/srv/dfleet/images".into(),
        }
    );
    assert!(inv.groups.is_empty());
    assert!(inv.windows.is_empty());
    assert!(inv.nodes.is_empty());
}

#[test]
fn every_unknown_key_is_reported_with_its_line() {
    let text = format!(
        r#"{BASE}nmae = "x"
[enrollment]
polcy = "manual"
[health]
stale = "1s"
[[checks]]
name = "a"
command = ["true"]
cmd = "x"
[[nodes]]
name = "login1"
mac = "52:54:00:00:00:01"
ip = "10.0.0.1"
image = "compute"
group = ["login"]
[foo]
"#
    );
    assert_eq!(
        problems(&text),
        [
            "cluster.toml:5: cluster.nmae: unknown key `nmae`; expected one of: name, state_dir, \
             listen, metrics_listen, admin_socket, admin_group, coordinator_name, report_interval",
            "cluster.toml:7: enrollment.polcy: unknown key `polcy`; expected one of: policy, \
             cert_lifetime, rate_per_second, burst, pending_max",
            "cluster.toml:9: health.stale: unknown key `stale`; expected one of: stale_after, \
             lost_after, overlay_used_warn_percent, overlay_time_to_full_warn",
            "cluster.toml:13: checks[0].cmd: unknown key `cmd`; expected one of: name, command, \
             timeout",
            "cluster.toml:19: nodes[0].group: unknown key `group`; expected one of: name, mac, \
             macs, mac_file, ip, image, groups, loader, kernel_args, console, overlay_size, \
             ssh_host_keys",
            "cluster.toml:20: foo: unknown key `foo`; expected one of: cluster, enrollment, \
             health, checks, boot, nfs, paths, groups, windows, power, ssh, nodes",
        ]
    );
}

#[test]
fn missing_required_keys_are_reported_at_their_table() {
    let text = r#"[cluster]
name = "demo"
[[nodes]]
name = "login1"
mac = "52:54:00:00:00:01"
"#;
    assert_eq!(
        problems(text),
        [
            "cluster.toml:1: cluster.state_dir: missing required key `state_dir`",
            "cluster.toml:1: cluster.listen: missing required key `listen`",
            "cluster.toml:3: nodes[0].ip: missing required key `ip`",
            "cluster.toml:3: nodes[0].image: missing required key `image`",
        ]
    );
}

#[test]
fn a_missing_cluster_table_has_no_line() {
    assert_eq!(
        problems("[health]\nstale_after = \"10s\"\n"),
        ["cluster.toml: cluster: missing required table [cluster]"]
    );
}

#[test]
fn wrong_types_are_reported() {
    let text = format!(
        "{BASE}admin_group = 5\n[enrollment]\nrate_per_second = \"fast\"\n[nodes]\nname = \"x\"\n"
    );
    assert_eq!(
        problems(&text),
        [
            "cluster.toml:5: cluster.admin_group: expected a string, found integer",
            "cluster.toml:7: enrollment.rate_per_second: expected an integer, found string",
            "cluster.toml:8: nodes: expected an array of tables [[nodes]], found table",
        ]
    );
}

#[test]
fn malformed_values_are_all_reported_at_once() {
    let text = r#"[cluster]
name = "demo"
state_dir = "var/lib/dfleet"
listen = ["0.0.0.0", "127.0.0.1:7443", 7443]
metrics_listen = "localhost:9464"
report_interval = "10 seconds"
[enrollment]
policy = "auto"
cert_lifetime = "31d"
rate_per_second = "fast"
burst = 0
[health]
stale_after = "2m"
lost_after = "1m"
overlay_used_warn_percent = 101
[[nodes]]
name = "CN01"
mac = "52:54:00:00:00:0g"
ip = "10.0.0.256"
image = "compute"
"#;
    assert_eq!(
        problems(text),
        [
            "cluster.toml:3: cluster.state_dir: expected an absolute path, found \"var/lib/dfleet\"",
            "cluster.toml:4: cluster.listen[0]: malformed socket address \"0.0.0.0\": expected \
             IP:PORT, e.g. \"0.0.0.0:7443\"",
            "cluster.toml:4: cluster.listen[2]: expected a string, found integer",
            "cluster.toml:5: cluster.metrics_listen: malformed socket address \"localhost:9464\": \
             expected IP:PORT, e.g. \"0.0.0.0:7443\"",
            "cluster.toml:6: cluster.report_interval: malformed duration \"10 seconds\": unknown \
             unit \" seconds\", expected one of ms, s, m, h, d",
            "cluster.toml:8: enrollment.policy: unknown enrollment policy \"auto\": expected \
             \"inventory\" or \"manual\"",
            "cluster.toml:9: enrollment.cert_lifetime: must be between 1s and 30d, found \"31d\"",
            "cluster.toml:10: enrollment.rate_per_second: expected an integer, found string",
            "cluster.toml:11: enrollment.burst: must be between 1 and 1000000, found 0",
            "cluster.toml:14: health.lost_after: lost_after (1m) must be longer than stale_after \
             (2m)",
            "cluster.toml:15: health.overlay_used_warn_percent: must be between 1 and 100, found \
             101",
            "cluster.toml:17: nodes[0].name: invalid node name \"CN01\": only lowercase letters, \
             digits and '-' are allowed",
            "cluster.toml:18: nodes[0].mac: malformed MAC address \"52:54:00:00:00:0g\": expected \
             six hex octets separated by ':' or '-'",
            "cluster.toml:19: nodes[0].ip: malformed IPv4 address \"10.0.0.256\": expected e.g. \
             \"10.0.0.1\"",
        ]
    );
}

#[test]
fn an_empty_listen_list_is_refused() {
    let text = "[cluster]\nname = \"demo\"\nstate_dir = \"/srv\"\nlisten = []\n";
    assert_eq!(
        problems(text),
        ["cluster.toml:4: cluster.listen: at least one listen address is required"]
    );
}

#[test]
fn lost_after_must_exceed_the_default_stale_after() {
    let text = format!("{BASE}[health]\nlost_after = \"30s\"\n");
    assert_eq!(
        problems(&text),
        [
            "cluster.toml:6: health.lost_after: lost_after (30s) must be longer than stale_after (30s)"
        ]
    );
}

#[test]
fn check_commands_are_validated() {
    let text = format!(
        r#"{BASE}[[checks]]
name = "slurmd"
command = []
[[checks]]
name = "slurmd"
command = ["true"]
timeout = "0s"
[[checks]]
command = ["true", 1]
"#
    );
    assert_eq!(
        problems(&text),
        [
            "cluster.toml:7: checks[0].command: must name at least the program to run",
            "cluster.toml:9: checks[1].name: duplicate check name \"slurmd\" (first used at line 6)",
            "cluster.toml:11: checks[1].timeout: must be at least 1ms, found \"0s\"",
            "cluster.toml:12: checks[2].name: missing required key `name`",
            "cluster.toml:13: checks[2].command[1]: expected a string, found integer",
        ]
    );
}

#[test]
fn duplicate_names_macs_and_ips_name_the_first_use() {
    let text = format!(
        r#"{BASE}[[nodes]]
name = "cn0001"
mac = "52:54:00:00:00:01"
ip = "10.0.0.1"
image = "compute"
[[nodes]]
name = "cn[0001-0002]"
macs = ["52:54:00:00:00:0A", "52-54-00-00-00-01"]
ip = "10.0.0.1"
image = "compute"
[[nodes]]
name = "login1"
mac = "52:54:00:00:00:0a"
ip = "10.0.0.9"
image = "compute"
"#
    );
    assert_eq!(
        problems(&text),
        [
            "cluster.toml:11: nodes[1].name: duplicate node name cn0001 (first used at line 6)",
            "cluster.toml:12: nodes[1].macs[1]: duplicate MAC 52:54:00:00:00:01 for cn0002 \
             (first used by cn0001 at line 7)",
            "cluster.toml:13: nodes[1].ip: duplicate IP 10.0.0.1 for cn0001 (first used by \
             cn0001 at line 8)",
            "cluster.toml:17: nodes[2].mac: duplicate MAC 52:54:00:00:00:0a (first used by \
             cn0001 at line 12)",
        ]
    );
}

#[test]
fn a_range_over_the_entry_limit_is_refused() {
    let text = format!(
        "{BASE}[[nodes]]\nname = \"cn[1-100001]\"\nip = \"10.0.0.1\"\nmacs = []\nimage = \"c\"\n"
    );
    assert_eq!(
        problems(&text),
        [
            "cluster.toml:6: nodes[0].name: the range \"cn[1-100001]\" has 100001 nodes, more \
             than the limit of 100000 per [[nodes]] entry"
        ]
    );
}

#[test]
fn ranges_over_the_total_limit_are_refused() {
    let text = format!(
        r#"{BASE}[[nodes]]
name = "cn[1-60000]"
ip = "10.1.0.1"
mac_file = "cn.txt"
image = "c"
[[nodes]]
name = "dn[1-60000]"
ip = "10.2.0.1"
mac_file = "dn.txt"
image = "c"
"#
    );
    let mut read = |path: &Path| -> io::Result<String> {
        Err(io::Error::other(format!("no {}", path.display())))
    };
    let err = Inventory::parse_with(&text, Path::new("cluster.toml"), &mut read).unwrap_err();
    let problems: Vec<String> = err.problems.iter().map(ToString::to_string).collect();
    assert_eq!(
        problems,
        [
            "cluster.toml:8: nodes[0].mac_file: cannot read MAC file cn.txt: no cn.txt",
            "cluster.toml:11: nodes[1].name: this entry brings the inventory to 120000 nodes, \
             more than the limit of 100000 in total",
            "cluster.toml:13: nodes[1].mac_file: cannot read MAC file dn.txt: no dn.txt",
        ]
    );
}

#[test]
fn a_macs_list_must_match_the_node_count() {
    let text = format!(
        r#"{BASE}[[nodes]]
name = "cn[1-3]"
ip = "10.0.1.1"
macs = ["52:54:00:00:01:01", "52:54:00:00:01:02"]
image = "compute"
"#
    );
    assert_eq!(
        problems(&text),
        [
            "cluster.toml:8: nodes[0].macs: the range \"cn[1-3]\" has 3 nodes but 2 MAC \
             addresses are listed"
        ]
    );
}

#[test]
fn mac_sources_must_fit_the_name() {
    let text = format!(
        r#"{BASE}[[nodes]]
name = "a1"
mac = "52:54:00:00:00:01"
macs = ["52:54:00:00:00:02"]
ip = "10.0.0.1"
image = "c"
[[nodes]]
name = "a2"
ip = "10.0.0.2"
image = "c"
[[nodes]]
name = "cn[1-2]"
mac = "52:54:00:00:00:03"
ip = "10.0.0.3"
image = "c"
[[nodes]]
name = "a3"
macs = ["52:54:00:00:00:04"]
ip = "10.0.0.9"
image = "c"
[[nodes]]
name = "a4"
mac_file = "m.txt"
ip = "10.0.0.10"
image = "c"
[[nodes]]
name = "cn[3-4]"
ip = "10.0.0.20"
image = "c"
"#
    );
    assert_eq!(
        problems(&text),
        [
            "cluster.toml:8: nodes[0].macs: give only one of `mac`, `macs` and `mac_file` \
             (found `mac` and `macs`)",
            "cluster.toml:11: nodes[1].mac: missing `mac`: a single node needs its MAC address",
            "cluster.toml:17: nodes[2].mac: `mac` is for a single node; the range \"cn[1-2]\" \
             needs `macs` (one per node, in order) or `mac_file`",
            "cluster.toml:22: nodes[3].macs: `macs` is for a range; the single node \"a3\" needs \
             `mac`",
            "cluster.toml:27: nodes[4].mac_file: `mac_file` is for a range; the single node \
             \"a4\" needs `mac`",
            "cluster.toml:30: nodes[5].mac: missing `macs` or `mac_file`: a range needs one MAC \
             address per node",
        ]
    );
}

#[test]
fn bad_bracket_syntax_is_reported_on_the_name() {
    let mut text = BASE.to_string();
    for name in ["cn[3-1]", "cn[", "cn[a-b]"] {
        write!(
            text,
            "[[nodes]]\nname = \"{name}\"\nip = \"10.0.1.1\"\nmacs = [\"52:54:00:00:01:01\"]\nimage = \"c\"\n"
        )
        .unwrap();
    }
    assert_eq!(
        problems(&text),
        [
            "cluster.toml:6: nodes[0].name: malformed node set \"cn[3-1]\": reversed range \
             \"3-1\" (first bound is larger)",
            "cluster.toml:11: nodes[1].name: malformed node set \"cn[\": '[' is never closed",
            "cluster.toml:16: nodes[2].name: malformed node set \"cn[a-b]\": range bound \"a\" \
             is not a number",
        ]
    );
}

#[test]
fn invalid_names_in_a_range_are_counted() {
    let text = format!(
        "{BASE}[[nodes]]\nname = \"Cn[1-3]\"\nip = \"10.0.1.1\"\nmacs = []\nimage = \"c\"\n"
    );
    assert_eq!(
        problems(&text),
        [
            "cluster.toml:6: nodes[0].name: invalid node name \"Cn1\": only lowercase letters, \
             digits and '-' are allowed (and 2 more invalid names in \"Cn[1-3]\")"
        ]
    );
}

#[test]
fn a_range_must_not_run_past_the_last_ipv4_address() {
    let text = format!(
        r#"{BASE}[[nodes]]
name = "cn[1-3]"
ip = "255.255.255.254"
macs = ["52:54:00:00:01:01", "52:54:00:00:01:02", "52:54:00:00:01:03"]
image = "compute"
"#
    );
    assert_eq!(
        problems(&text),
        [
            "cluster.toml:7: nodes[0].ip: 3 nodes numbered up from 255.255.255.254 would run \
             past 255.255.255.255"
        ]
    );
}

#[test]
fn a_toml_syntax_error_names_file_and_line() {
    let problems = problems("[cluster]\nname = \"demo\nstate_dir = \"/srv\"\n");
    assert!(!problems.is_empty());
    assert!(
        problems[0].starts_with("cluster.toml:2: invalid TOML: "),
        "{problems:?}"
    );
}

#[test]
fn a_duplicate_toml_key_is_a_syntax_error_with_its_line() {
    let text = format!("{BASE}name = \"again\"\n");
    let problems = problems(&text);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with("cluster.toml:5: invalid TOML: duplicate key"),
        "{problems:?}"
    );
}

#[test]
fn an_unreadable_inventory_is_one_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.toml");
    let err = Inventory::load(&path).unwrap_err();
    assert_eq!(err.problems.len(), 1);
    assert_eq!(err.problems[0].file, path);
    assert_eq!(err.problems[0].line, 0);
    assert!(
        err.to_string()
            .starts_with(&format!("{}: cannot read the inventory: ", path.display())),
        "{err}"
    );
}

/// Writes `cluster.toml` and MAC files into a fresh directory.
fn write_dir(inventory: &str, files: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.toml");
    std::fs::write(&path, inventory).unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    (dir, path)
}

fn load_problems(path: &Path) -> Vec<String> {
    match Inventory::load(path) {
        Ok(_) => panic!("expected problems"),
        Err(e) => e.problems.iter().map(ToString::to_string).collect(),
    }
}

const MAC_FILE_ENTRY: &str = r#"[[nodes]]
name = "cn[1-4]"
ip = "10.0.1.1"
mac_file = "macs.txt"
image = "compute"
"#;

#[test]
fn a_mac_file_assigns_macs_in_range_order() {
    let macs = "# name mac\ncn3 52:54:00:00:01:03\n\ncn1 52-54-00-00-01-01  # first\ncn4 52:54:00:00:01:04\ncn2 52:54:00:00:01:02\n";
    let (_dir, path) = write_dir(&format!("{BASE}{MAC_FILE_ENTRY}"), &[("macs.txt", macs)]);
    let inv = Inventory::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let got: Vec<String> = inv
        .nodes
        .iter()
        .map(|n| format!("{} {} {}", n.name, n.mac, n.ip))
        .collect();
    assert_eq!(
        got,
        [
            "cn1 52:54:00:00:01:01 10.0.1.1",
            "cn2 52:54:00:00:01:02 10.0.1.2",
            "cn3 52:54:00:00:01:03 10.0.1.3",
            "cn4 52:54:00:00:01:04 10.0.1.4",
        ]
    );
}

#[test]
fn a_missing_mac_file_is_reported_at_its_key() {
    let (dir, path) = write_dir(&format!("{BASE}{MAC_FILE_ENTRY}"), &[]);
    let problems = load_problems(&path);
    let expected_start = format!(
        "{}:8: nodes[0].mac_file: cannot read MAC file {}: ",
        path.display(),
        dir.path().join("macs.txt").display()
    );
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].starts_with(&expected_start), "{problems:?}");
}

#[test]
fn mac_file_problems_name_the_mac_file_and_its_line() {
    let macs = "# comment
cn1 52:54:00:00:01:01

cn2 52:54:00:00:01:02 extra
cn3 zz:54:00:00:01:03
cn9 52:54:00:00:01:09
cn1 52:54:00:00:01:11
";
    let (dir, path) = write_dir(&format!("{BASE}{MAC_FILE_ENTRY}"), &[("macs.txt", macs)]);
    let mac_file = dir.path().join("macs.txt");
    let m = mac_file.display();
    let err = Inventory::load(&path).unwrap_err();
    let files: Vec<&Path> = err.problems.iter().map(|p| p.file.as_path()).collect();
    assert_eq!(
        files,
        [&*mac_file, &*mac_file, &*mac_file, &*mac_file, &*path]
    );
    let problems: Vec<String> = err.problems.iter().map(ToString::to_string).collect();
    assert_eq!(
        problems,
        [
            format!(
                "{m}:4: nodes[0].mac_file: malformed line \"cn2 52:54:00:00:01:02 extra\": \
                 expected `NAME MAC`"
            ),
            format!(
                "{m}:5: nodes[0].mac_file: malformed MAC address \"zz:54:00:00:01:03\": expected \
                 six hex octets separated by ':' or '-'"
            ),
            format!("{m}:6: nodes[0].mac_file: node cn9 is not in this entry's range \"cn[1-4]\""),
            format!("{m}:7: nodes[0].mac_file: node cn1 is listed twice (first at line 2)"),
            format!(
                "{}:8: nodes[0].mac_file: {m} does not list 2 node(s) of the range \"cn[1-4]\": \
                 cn[2,4]",
                path.display()
            ),
        ]
    );
}

#[test]
fn a_mac_reused_from_a_mac_file_names_the_file_line() {
    let macs = "cn1 52:54:00:00:01:01\ncn2 52:54:00:00:01:02\ncn3 52:54:00:00:01:03\ncn4 52:54:00:00:01:04\n";
    let text = format!(
        "{BASE}{MAC_FILE_ENTRY}[[nodes]]\nname = \"login1\"\nmac = \"52:54:00:00:01:02\"\nip = \"10.0.0.1\"\nimage = \"c\"\n"
    );
    let (dir, path) = write_dir(&text, &[("macs.txt", macs)]);
    assert_eq!(
        load_problems(&path),
        [format!(
            "{}:12: nodes[1].mac: duplicate MAC 52:54:00:00:01:02 (first used by cn2 at {}:2)",
            path.display(),
            dir.path().join("macs.txt").display()
        )]
    );
}

#[test]
fn several_problems_in_different_places_are_reported_together() {
    let text = format!(
        r#"{BASE}bogus = 1
[[nodes]]
name = "cn[1-2]"
ip = "10.0.0.1"
macs = ["52:54:00:00:00:01", "52:54:00:00:00:01"]
image = "compute"
[[nodes]]
name = "cn2"
mac = "52:54:00:00:00:09"
ip = "not-an-ip"
"#
    );
    let problems = problems(&text);
    let locations: Vec<&str> = problems
        .iter()
        .map(|p| p.split(": ").next().unwrap())
        .collect();
    assert_eq!(
        locations,
        [
            "cluster.toml:5",
            "cluster.toml:9",
            "cluster.toml:11",
            "cluster.toml:12",
            "cluster.toml:14",
        ],
        "{problems:#?}"
    );
    assert!(problems[0].contains("cluster.bogus: unknown key"));
    assert!(problems[1].contains("nodes[0].macs[1]: duplicate MAC 52:54:00:00:00:01 for cn2"));
    assert!(problems[2].contains("nodes[1].image: missing required key `image`"));
    assert!(problems[3].contains("nodes[1].name: duplicate node name cn2 (first used at line 7)"));
    assert!(problems[4].contains("nodes[1].ip: malformed IPv4 address \"not-an-ip\""));
}

#[test]
fn a_ten_thousand_node_range_parses_and_is_indexed() {
    let mut macs = String::new();
    for k in 1..=10_000u32 {
        writeln!(macs, "cn{k:05} 52:54:00:01:{:02x}:{:02x}", k >> 8, k & 0xff).unwrap();
    }
    let text = format!(
        "{BASE}[[nodes]]\nname = \"cn[00001-10000]\"\nip = \"10.1.0.1\"\nmac_file = \"macs.txt\"\nimage = \"compute\"\ngroups = [\"compute\"]\n"
    );
    let (_dir, path) = write_dir(&text, &[("macs.txt", &macs)]);
    let inv = Inventory::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(inv.nodes.len(), 10_000);
    assert_eq!(inv.nodes[0].name.as_str(), "cn00001");
    assert_eq!(inv.nodes[9_999].name.as_str(), "cn10000");
    let last = inv.node("cn10000").unwrap();
    assert_eq!(last.ip, Ipv4Addr::new(10, 1, 39, 16));
    assert_eq!(last.mac, mac("52:54:00:01:27:10"));
    let by_mac = inv.node_by_mac(&mac("52:54:00:01:13:88")).unwrap();
    assert_eq!(by_mac.name.as_str(), "cn05000");
    assert_eq!(by_mac.ip, Ipv4Addr::new(10, 1, 19, 136));
}

#[test]
fn lookups_survive_a_caller_editing_the_node_list() {
    let text = format!(
        r#"{BASE}[[nodes]]
name = "cn[1-3]"
ip = "10.0.1.1"
macs = ["52:54:00:00:01:01", "52:54:00:00:01:02", "52:54:00:00:01:03"]
image = "compute"
"#
    );
    let mut inv = parse(&text).unwrap();
    inv.nodes.remove(0);
    assert_eq!(inv.node("cn2").unwrap().ip, Ipv4Addr::new(10, 0, 1, 2));
    assert_eq!(
        inv.node_by_mac(&mac("52:54:00:00:01:03"))
            .unwrap()
            .name
            .as_str(),
        "cn3"
    );
}

/// A valid `[boot]` table of four lines, for text appended to `BASE`: it spans lines 5 to 8.
const BOOT: &str = "[boot]
interface = \"eth1\"
subnet = \"10.0.0.0/24\"
next_server = \"10.0.0.1\"
";

/// One `[[nodes]]` entry at `ip` in groups `groups` (a TOML array), five lines long.
fn node_entry(name: &str, ip: &str, groups: &str) -> String {
    format!(
        "[[nodes]]\nname = \"{name}\"\nmac = \"52:54:00:00:00:01\"\nip = \"{ip}\"\nimage = \"c\"\ngroups = {groups}\n"
    )
}

#[test]
fn boot_and_nfs_tables_take_their_defaults() {
    let text = format!("{BASE}{BOOT}[nfs]\nserver = \"10.0.0.2\"\n");
    let inv = parse(&text).unwrap();
    assert_eq!(
        inv.boot,
        Some(BootSettings {
            network: BootNetwork {
                interface: "eth1".into(),
                subnet: Subnet {
                    network: Ipv4Addr::new(10, 0, 0, 0),
                    prefix: 24
                },
                router: None,
                dns: vec![],
                domain: None,
                ntp: vec![],
                next_server: Ipv4Addr::new(10, 0, 0, 1),
                dhcp: DhcpFlavour::Dnsmasq,
            },
            coordinator: None,
            dhcp_reload: vec!["systemctl".into(), "reload".into(), "dnsmasq".into()],
            dhcp_log: None,
            defaults: NodeBoot::default(),
        })
    );
    assert_eq!(
        inv.nfs,
        Some(NfsSettings {
            server: Ipv4Addr::new(10, 0, 0, 2),
            export_root: "/srv/dfleet/images".into(),
            managed: true,
            management_host: Ipv4Addr::new(10, 0, 0, 2),
            reload: vec!["exportfs".into(), "-ra".into()],
        })
    );
}

#[test]
fn nfs_without_boot_and_boot_without_nfs_are_both_valid() {
    let nfs_only = parse(&format!("{BASE}[nfs]\nserver = \"10.0.0.2\"\n")).unwrap();
    assert_eq!(
        (nfs_only.boot.is_none(), nfs_only.nfs.is_some()),
        (true, true)
    );
    let boot_only = parse(&format!("{BASE}{BOOT}")).unwrap();
    assert_eq!(
        (boot_only.boot.is_some(), boot_only.nfs.is_none()),
        (true, true)
    );
}

#[test]
fn unknown_keys_in_the_boot_tables_are_reported() {
    let text = format!(
        r#"{BASE}{BOOT}loder = "ipxe"
[nfs]
server = "10.0.0.2"
exports = "/srv"
[paths]
tftp = "/srv/tftp"
[groups.compute]
kernel_arg = ["quiet"]
{}bootloader = "ipxe"
"#,
        node_entry("cn1", "10.0.0.10", r#"["compute"]"#)
    );
    assert_eq!(
        problems(&text),
        [
            "cluster.toml:9: boot.loder: unknown key `loder`; expected one of: interface, \
             subnet, router, dns, domain, ntp, next_server, dhcp, coordinator, dhcp_reload, dhcp_log, loader, \
             kernel_args, console, overlay_size",
            "cluster.toml:12: nfs.exports: unknown key `exports`; expected one of: server, \
             export_root, managed, management_host, reload",
            "cluster.toml:14: paths.tftp: unknown key `tftp`; expected one of: tftp_root, \
             dhcp_root, exports_root, images_root",
            "cluster.toml:16: groups.compute.kernel_arg: unknown key `kernel_arg`; expected one \
             of: loader, kernel_args, console, overlay_size, ssh_host_keys",
            "cluster.toml:23: nodes[0].bootloader: unknown key `bootloader`; expected one of: \
             name, mac, macs, mac_file, ip, image, groups, loader, kernel_args, console, \
             overlay_size, ssh_host_keys",
        ]
    );
}

#[test]
fn boot_and_nfs_required_keys_are_reported_at_their_table() {
    let text = format!("{BASE}[boot]\ndhcp = \"isc\"\n[nfs]\nmanaged = false\n");
    assert_eq!(
        problems(&text),
        [
            "cluster.toml:5: boot.interface: missing required key `interface`",
            "cluster.toml:5: boot.subnet: missing required key `subnet`",
            "cluster.toml:5: boot.next_server: missing required key `next_server`",
            "cluster.toml:7: nfs.server: missing required key `server`",
        ]
    );
}

#[test]
fn boot_tables_of_the_wrong_type_are_reported() {
    let text = format!("paths = \"/srv\"\n{BASE}[groups]\ncompute = \"ipxe\"\n");
    assert_eq!(
        problems(&text),
        [
            "cluster.toml:1: paths: expected a table [paths], found string",
            "cluster.toml:7: groups.compute: no node is in group \"compute\" (a typo?); no \
             [[nodes]] entry lists any group",
            "cluster.toml:7: groups.compute: expected a table [groups.compute], found string",
        ]
    );
}

#[test]
fn a_malformed_subnet_is_reported() {
    for (subnet, message) in [
        ("10.0.0.0", "malformed subnet \"10.0.0.0\""),
        ("10.0.0/24", "malformed subnet \"10.0.0/24\""),
        ("10.0.0.0/", "malformed subnet \"10.0.0.0/\""),
        ("10.0.0.0/+8", "malformed subnet \"10.0.0.0/+8\""),
    ] {
        let text = format!(
            "{BASE}[boot]\ninterface = \"eth1\"\nsubnet = \"{subnet}\"\nnext_server = \"10.0.0.1\"\n"
        );
        assert_eq!(
            problems(&text),
            [format!(
                "cluster.toml:7: boot.subnet: {message}: expected NETWORK/PREFIX, e.g. \
                 \"10.0.0.0/24\""
            )]
        );
    }
}

#[test]
fn a_subnet_prefix_over_32_is_refused() {
    let text = format!(
        "{BASE}[boot]\ninterface = \"eth1\"\nsubnet = \"10.0.0.0/33\"\nnext_server = \"10.0.0.1\"\n"
    );
    assert_eq!(
        problems(&text),
        [
            "cluster.toml:7: boot.subnet: prefix length 33 in \"10.0.0.0/33\" is out of range: \
             must be at most 32"
        ]
    );
}

#[test]
fn a_subnet_with_host_bits_names_its_network() {
    let text = format!(
        "{BASE}[boot]\ninterface = \"eth1\"\nsubnet = \"10.0.0.5/24\"\nnext_server = \"10.0.0.1\"\n"
    );
    assert_eq!(
        problems(&text),
        [
            "cluster.toml:7: boot.subnet: \"10.0.0.5/24\" is not a network address: 10.0.0.5 has \
             host bits set in a /24; the network is 10.0.0.0/24"
        ]
    );
}

#[test]
fn node_addresses_must_be_hosts_of_the_boot_subnet() {
    let text = format!(
        r#"{BASE}{BOOT}{}{}[[nodes]]
name = "cn[1-5]"
ip = "10.0.0.253"
macs = ["52:54:00:00:01:01", "52:54:00:00:01:02", "52:54:00:00:01:03", "52:54:00:00:01:04", "52:54:00:00:01:05"]
image = "c"
"#,
        node_entry("login1", "10.0.2.1", "[]").replace(":01\"", ":0a\""),
        node_entry("login2", "10.0.0.0", "[]").replace(":01\"", ":0b\""),
    );
    assert_eq!(
        problems(&text),
        [
            "cluster.toml:12: nodes[0].ip: login1's address 10.0.2.1 is outside the boot subnet \
             10.0.0.0/24",
            "cluster.toml:18: nodes[1].ip: login2's address 10.0.0.0 is the network address of \
             the boot subnet 10.0.0.0/24",
            "cluster.toml:23: nodes[2].ip: the addresses of 2 nodes are outside the boot subnet \
             10.0.0.0/24: cn[4-5] (the first, cn4, has 10.0.1.0)",
            "cluster.toml:23: nodes[2].ip: cn3's address 10.0.0.255 is the broadcast address of \
             the boot subnet 10.0.0.0/24",
        ]
    );
}

#[test]
fn node_addresses_are_checked_against_a_subnet_even_when_boot_has_other_problems() {
    let text = format!(
        "{BASE}[boot]\nsubnet = \"10.0.0.0/24\"\n{}",
        node_entry("login1", "10.0.1.1", "[]")
    );
    assert_eq!(
        problems(&text),
        [
            "cluster.toml:5: boot.interface: missing required key `interface`",
            "cluster.toml:5: boot.next_server: missing required key `next_server`",
            "cluster.toml:10: nodes[0].ip: login1's address 10.0.1.1 is outside the boot subnet \
             10.0.0.0/24",
        ]
    );
}

#[test]
fn router_and_next_server_must_be_hosts_of_the_boot_subnet() {
    let text = format!(
        "{BASE}[boot]\ninterface = \"eth1\"\nsubnet = \"10.0.0.0/24\"\nrouter = \"10.0.0.255\"\nnext_server = \"192.168.0.1\"\n"
    );
    assert_eq!(
        problems(&text),
        [
            "cluster.toml:8: boot.router: router 10.0.0.255 is the broadcast address of the boot \
             subnet 10.0.0.0/24",
            "cluster.toml:9: boot.next_server: next_server 192.168.0.1 is outside the boot \
             subnet 10.0.0.0/24",
        ]
    );
}

#[test]
fn unknown_dhcp_servers_and_loaders_list_the_accepted_ones() {
    let text = format!(
        r#"{BASE}{BOOT}dhcp = "dhcpd"
loader = "syslinux"
[groups.compute]
loader = "grub"
{}loader = "efi"
"#,
        node_entry("cn1", "10.0.0.10", r#"["compute"]"#)
    );
    let loaders = "expected \"auto\", \"pxelinux\", \"grub-efi\" or \"ipxe\"";
    assert_eq!(
        problems(&text),
        [
            "cluster.toml:9: boot.dhcp: unknown DHCP server \"dhcpd\": expected \"isc\", \
             \"dnsmasq\" or \"kea\""
                .to_string(),
            format!("cluster.toml:10: boot.loader: unknown loader \"syslinux\": {loaders}"),
            format!("cluster.toml:12: groups.compute.loader: unknown loader \"grub\": {loaders}"),
            format!("cluster.toml:19: nodes[0].loader: unknown loader \"efi\": {loaders}"),
        ]
    );
}

#[test]
fn a_bad_overlay_size_is_reported_at_every_level() {
    let text = format!(
        r#"{BASE}{BOOT}overlay_size = "150%"
[groups.compute]
overlay_size = "4gb"
{}overlay_size = 50
"#,
        node_entry("cn1", "10.0.0.10", r#"["compute"]"#)
    );
    let expected = "expected a share of RAM from \"1%\" to \"100%\" or a size such as \"4g\", \
                    \"512m\" or \"2048k\"";
    assert_eq!(
        problems(&text),
        [
            format!("cluster.toml:9: boot.overlay_size: invalid overlay size \"150%\": {expected}"),
            format!(
                "cluster.toml:11: groups.compute.overlay_size: invalid overlay size \"4gb\": \
                 {expected}"
            ),
            "cluster.toml:18: nodes[0].overlay_size: expected a string, found integer".to_string(),
        ]
    );
}

#[test]
fn a_group_table_no_node_uses_is_reported_as_a_likely_typo() {
    let text = format!(
        "{BASE}[groups.comptue]\nloader = \"ipxe\"\n[groups.gpu]\nloader = \"ipxe\"\n{}",
        node_entry("cn1", "10.0.0.10", r#"["compute", "gpu"]"#)
    );
    assert_eq!(
        problems(&text),
        [
            "cluster.toml:5: groups.comptue: no node is in group \"comptue\" (a typo?); groups in \
             use: compute, gpu"
        ]
    );
}

#[test]
fn a_group_listed_by_an_entry_with_other_problems_still_counts_as_used() {
    let text = format!(
        "{BASE}[groups.gpu]\nloader = \"ipxe\"\n[[nodes]]\nname = \"gpu1\"\nip = \"10.0.0.10\"\nimage = \"c\"\ngroups = [\"gpu\"]\n"
    );
    assert_eq!(
        problems(&text),
        ["cluster.toml:7: nodes[0].mac: missing `mac`: a single node needs its MAC address"]
    );
}

#[test]
fn malformed_boot_values_are_all_reported_at_once() {
    let text = format!(
        r#"{BASE}[boot]
interface = "eth1/2"
subnet = "10.0.0.0/24"
dns = ["10.0.0.1", "dns1"]
domain = "cluster..example"
ntp = "10.0.0.1"
next_server = "10.0.0.1"
coordinator = "10.0.0.1"
kernel_args = ["quiet", "a b", ""]
console = "console=ttyS0"
[nfs]
server = "10.0.0.2"
export_root = "srv/images"
managed = "yes"
management_host = "mgmt"
[paths]
dhcp_root = "etc/dhcp"
"#
    );
    assert_eq!(
        problems(&text),
        [
            "cluster.toml:6: boot.interface: invalid interface name \"eth1/2\": expected 1 to 15 \
             characters without '/', ':' or whitespace, e.g. \"eth1\"",
            "cluster.toml:8: boot.dns[1]: malformed IPv4 address \"dns1\": expected e.g. \
             \"10.0.0.1\"",
            "cluster.toml:9: boot.domain: invalid DNS name \"cluster..example\": expected \
             dot-separated labels of letters, digits and '-'",
            "cluster.toml:10: boot.ntp: expected an array, found string",
            "cluster.toml:12: boot.coordinator: malformed coordinator address \"10.0.0.1\": \
             expected HOST:PORT, e.g. \"10.0.0.1:7443\"",
            "cluster.toml:13: boot.kernel_args[1]: kernel argument \"a b\" contains whitespace: \
             give each argument as its own string",
            "cluster.toml:13: boot.kernel_args[2]: must not be empty",
            "cluster.toml:14: boot.console: invalid console \"console=ttyS0\": expected a device \
             and its options, e.g. \"ttyS0,115200\"",
            "cluster.toml:17: nfs.export_root: expected an absolute path, found \"srv/images\"",
            "cluster.toml:18: nfs.managed: expected true or false, found string",
            "cluster.toml:19: nfs.management_host: malformed IPv4 address \"mgmt\": expected \
             e.g. \"10.0.0.1\"",
            "cluster.toml:21: paths.dhcp_root: expected an absolute path, found \"etc/dhcp\"",
        ]
    );
}

#[test]
fn effective_boot_prefers_the_node_then_its_groups_in_order_then_boot_then_built_ins() {
    let text = format!(
        r#"{BASE}{BOOT}loader = "grub-efi"
kernel_args = ["quiet"]
console = "ttyS0,115200"
overlay_size = "25%"
[groups.a]
loader = "ipxe"
kernel_args = ["a=1"]
[groups.b]
loader = "pxelinux"
kernel_args = ["b=1", "b=2"]
console = "ttyS1,115200"
[[nodes]]
name = "n1"
mac = "52:54:00:00:00:01"
ip = "10.0.0.11"
image = "c"
groups = ["b", "a", "unconfigured"]
kernel_args = ["n=1"]
overlay_size = "2g"
[[nodes]]
name = "n2"
mac = "52:54:00:00:00:02"
ip = "10.0.0.12"
image = "c"
groups = ["a"]
loader = "grub-efi"
console = "tty0"
[[nodes]]
name = "n3"
mac = "52:54:00:00:00:03"
ip = "10.0.0.13"
image = "c"
"#
    );
    let inv = parse(&text).unwrap();
    let resolved = |name: &str| inv.effective_boot(inv.node(name).unwrap());
    let strings = |args: &[&str]| args.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        resolved("n1"),
        ResolvedBoot {
            loader: Loader::Pxelinux,
            kernel_args: strings(&["quiet", "b=1", "b=2", "a=1", "n=1"]),
            console: Some("ttyS1,115200".into()),
            overlay_size: "2g".into(),
        }
    );
    assert_eq!(
        resolved("n2"),
        ResolvedBoot {
            loader: Loader::GrubEfi,
            kernel_args: strings(&["quiet", "a=1"]),
            console: Some("tty0".into()),
            overlay_size: "25%".into(),
        }
    );
    assert_eq!(
        resolved("n3"),
        ResolvedBoot {
            loader: Loader::GrubEfi,
            kernel_args: strings(&["quiet"]),
            console: Some("ttyS0,115200".into()),
            overlay_size: "25%".into(),
        }
    );
    assert_eq!(inv.node("n1").unwrap().boot.kernel_args, ["n=1"]);

    // Without [boot], the built-ins remain.
    let bare = parse(&format!(
        "{BASE}{}",
        node_entry("n4", "10.0.0.14", r#"["x"]"#)
    ))
    .unwrap();
    assert_eq!(
        bare.effective_boot(&bare.nodes[0]),
        ResolvedBoot {
            loader: Loader::Auto,
            kernel_args: vec![],
            console: None,
            overlay_size: "50%".into(),
        }
    );
}

#[test]
fn a_managed_nfs_server_exports_the_image_store_where_it_is() {
    let nfs = "[nfs]\nserver = \"10.0.0.2\"\nexport_root = \"/export/images\"\n";
    // BASE is 4 lines, BOOT lines 5 to 8, [nfs] 9 to 11, [paths] 12 and 13.
    let text = format!("{BASE}{BOOT}{nfs}[paths]\nimages_root = \"/data/images\"\n");
    assert_eq!(
        problems(&text),
        [
            "cluster.toml:13: paths.images_root: /data/images differs from nfs.export_root \
          /export/images: a managed NFS server exports the images where they are (set one of \
          the two, or managed = false for an appliance mounted elsewhere)"
        ]
    );
    // By default the store is the export root.
    let inv = parse(&format!("{BASE}{BOOT}{nfs}")).unwrap();
    assert_eq!(inv.paths.images_root, Path::new("/export/images"));
    // An appliance may be mounted anywhere.
    let inv = parse(&format!(
        "{BASE}{BOOT}{nfs}managed = false\n[paths]\nimages_root = \"/data/images\"\n"
    ))
    .unwrap();
    assert_eq!(inv.paths.images_root, Path::new("/data/images"));
}

#[test]
fn named_windows_are_read_in_their_zone_or_the_local_one() {
    let text = format!(
        "{BASE}[windows]\nnight = \"Mon-Fri 22:00-06:00 Europe/Berlin\"\nweekend = \"sat,sun \
         00:00-24:00\"\nany-time = \"always\"\n"
    );
    let inv = parse(&text).unwrap_or_else(|p| panic!("{p:#?}"));
    let windows: Vec<(&str, String)> = inv
        .windows
        .iter()
        .map(|(name, w)| (name.as_str(), w.to_string()))
        .collect();
    assert_eq!(
        windows,
        [
            ("any-time", "always".to_string()),
            ("night", "Mon-Fri 22:00-06:00 Europe/Berlin".to_string()),
            ("weekend", "Sat,Sun 00:00-24:00".to_string()),
        ]
    );
    assert_eq!(
        inv.windows["weekend"],
        Window::parse("Sat,Sun 00:00-24:00").unwrap()
    );
}

#[test]
fn bad_windows_are_reported_with_their_line_and_name() {
    let text = format!(
        r#"{BASE}[windows]
night = "Sta,Sun 02:00-06:00"
berlin = "daily 01:00-03:00 Europe/Berln"
short = "Mon 02:00-02:00"
late = "Mon 22:75-23:00"
number = 5
"bad name" = "always"
always = "Sat 00:00-24:00"
ok = "daily 01:00-02:00 UTC"
"#
    );
    assert_eq!(
        problems(&text),
        [
            "cluster.toml:6: windows.night: unknown day \"Sta\" in \"Sta,Sun 02:00-06:00\": \
             expected Mon, Tue, Wed, Thu, Fri, Sat or Sun, a range such as Mon-Fri or Fri-Mon, \
             or daily",
            "cluster.toml:7: windows.berlin: unknown time zone \"Europe/Berln\"",
            "cluster.toml:8: windows.short: \"Mon 02:00-02:00\" starts and ends at 02:00: a \
             whole day is 00:00-24:00",
            "cluster.toml:9: windows.late: 22:75 is not a time: expected HH:MM from 00:00 to \
             24:00",
            "cluster.toml:10: windows.number: expected a string, found integer",
            "cluster.toml:11: windows.bad name: invalid window name \"bad name\": expected \
             letters, digits, '.', '_' and '-', not starting with '.'",
            "cluster.toml:12: windows.always: a window cannot be named \"always\": that word \
             means no window (always open)",
        ]
    );
}

#[test]
fn a_windows_table_of_the_wrong_type_is_reported() {
    let text = format!("windows = \"Sat 00:00-24:00\"\n{BASE}");
    assert_eq!(
        problems(&text),
        ["cluster.toml:1: windows: expected a table [windows], found string"]
    );
}

#[test]
fn the_power_command_is_filled_per_node_with_its_bmc() {
    let text = format!(
        r#"{BASE}[power]
command = ["ipmitool", "-I", "lanplus", "-H", "{{bmc}}", "-U", "{{user}}", "-E", "chassis", "power", "cycle"]
bmc = "{{node}}-ipmi.{{mac}}"
credentials = "/etc/dfleet/bmc.toml"

[[nodes]]
name = "cn[01-02]"
macs = ["52:54:00:00:00:01", "52:54:00:00:00:02"]
ip = "10.0.0.11"
image = "compute"
"#
    );
    let inv = parse(&text).unwrap_or_else(|p| panic!("{p:#?}"));
    let power = inv.power.as_ref().expect("a [power] table");
    assert_eq!(power.password_env, "IPMI_PASSWORD");
    assert_eq!(power.timeout, Duration::from_secs(60));
    assert_eq!(
        power.credentials.as_deref(),
        Some(Path::new("/etc/dfleet/bmc.toml"))
    );
    let cn02 = inv.node("cn02").unwrap();
    let bmc = power.bmc_for(cn02);
    assert_eq!(bmc, "cn02-ipmi.52:54:00:00:00:02");
    assert_eq!(
        power.argv_for(cn02, &bmc, "admin").join(" "),
        "ipmitool -I lanplus -H cn02-ipmi.52:54:00:00:00:02 -U admin -E chassis power cycle"
    );
    let plain = parse(&format!(
        "{BASE}[power]\ncommand = [\"/usr/local/sbin/cycle\", \"{{node}}\"]\n"
    ))
    .unwrap_or_else(|p| panic!("{p:#?}"));
    assert_eq!(plain.power.unwrap().bmc, "{node}-bmc");
    assert!(parse(BASE).unwrap().power.is_none());
}

#[test]
fn a_bad_power_table_is_reported_and_the_password_never_goes_on_its_command_line() {
    let text = format!(
        r#"{BASE}[power]
command = ["ipmitool", "-H", "{{bmc}}", "-P", "{{password}}",
           "{{host}}"]
bmc = "{{bmc}}"
credentials = "bmc.toml"
password_env = "ipmi-password"
timeout = "0s"
user = "root"
"#
    );
    assert_eq!(
        problems(&text),
        [
            "cluster.toml:6: power.command[4]: the BMC password is never put on a command line \
             (any user can read a process's arguments): it is passed in the environment \
             variable named by password_env (ipmitool -E reads IPMI_PASSWORD)",
            "cluster.toml:7: power.command[5]: unknown placeholder {host} in \"{host}\": \
             expected {node}, {ip}, {mac}, {bmc}, {user}",
            "cluster.toml:8: power.bmc: unknown placeholder {bmc} in \"{bmc}\": expected \
             {node}, {ip}, {mac}",
            "cluster.toml:9: power.credentials: expected an absolute path, found \"bmc.toml\"",
            "cluster.toml:10: power.password_env: invalid environment variable name \
             \"ipmi-password\": expected capital letters, digits and '_'",
            "cluster.toml:11: power.timeout: must be between 1s and 1h, found \"0s\"",
            "cluster.toml:12: power.user: unknown key `user`; expected one of: command, bmc, \
             credentials, password_env, timeout",
        ]
    );
    assert_eq!(
        problems(&format!("{BASE}[power]\ncommand = []\n")),
        ["cluster.toml:6: power.command: must name at least the program to run"]
    );
}

#[test]
fn host_key_modes_come_from_the_node_then_its_groups_then_the_ssh_table() {
    let text = format!(
        r#"{BASE}[ssh]
host_keys = "managed"
cert_validity = "7d"
cert_authority_hosts = ["cn*", "*.cluster.example"]

[groups.gpu]
ssh_host_keys = "certificates"

[[nodes]]
name = "cn[01-03]"
macs = ["52:54:00:00:00:01", "52:54:00:00:00:02", "52:54:00:00:00:03"]
ip = "10.0.0.11"
image = "compute"

[[nodes]]
name = "gpu01"
mac = "52:54:00:00:01:01"
ip = "10.0.1.1"
image = "compute"
groups = ["gpu"]

[[nodes]]
name = "gpu02"
mac = "52:54:00:00:01:02"
ip = "10.0.1.2"
image = "compute"
groups = ["gpu"]
ssh_host_keys = "managed"
"#
    );
    let inv = parse(&text).unwrap_or_else(|p| panic!("{p:#?}"));
    assert_eq!(inv.ssh.cert_validity, Duration::from_secs(7 * 86_400));
    assert_eq!(inv.ssh.cert_authority_hosts, ["cn*", "*.cluster.example"]);
    let mode = |n: &str| inv.host_key_mode(inv.node(n).unwrap());
    assert_eq!(mode("cn02"), HostKeyMode::Managed);
    assert_eq!(mode("gpu01"), HostKeyMode::Certificates);
    assert_eq!(mode("gpu02"), HostKeyMode::Managed);
    // Without [ssh]: certificates, valid 30 days.
    let plain = parse(BASE).unwrap();
    assert_eq!(plain.ssh.host_keys, HostKeyMode::Certificates);
    assert_eq!(plain.ssh.cert_validity, Duration::from_secs(30 * 86_400));
}

#[test]
fn a_bad_ssh_table_is_reported_with_its_lines() {
    let text = format!(
        r#"{BASE}[ssh]
host_keys = "shared"
cert_validity = "10m"
cert_authority_hosts = ["cn*,gpu*"]
known_hosts = "/etc/ssh/ssh_known_hosts"

[boot]
interface = "eth1"
subnet = "10.0.0.0/24"
next_server = "10.0.0.1"
dhcp = "dnsmasq"
ssh_host_keys = "managed"
"#
    );
    let found = problems(&text);
    assert_eq!(
        found[..4],
        [
            "cluster.toml:6: ssh.host_keys: unknown host key mode \"shared\": expected \
             \"certificates\" or \"managed\"",
            "cluster.toml:7: ssh.cert_validity: must be between 1h and 1825d, found \"10m\"",
            "cluster.toml:8: ssh.cert_authority_hosts[0]: \"cn*,gpu*\" is not a known_hosts \
             host pattern: no spaces, ',' or '#' (give one pattern per item)",
            "cluster.toml:9: ssh.known_hosts: unknown key `known_hosts`; expected one of: \
             host_keys, cert_validity, cert_authority_hosts",
        ]
    );
    assert!(
        found[4..]
            .iter()
            .any(|p| p.starts_with("cluster.toml:16: boot.ssh_host_keys: unknown key")),
        "{found:#?}"
    );
}
