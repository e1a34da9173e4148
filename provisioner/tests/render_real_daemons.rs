//! The rendered DHCP configurations checked by the daemons that will read
//! them (`dhcpd -t`, `dnsmasq --test`, `kea-dhcp4 -t`), and each check shown
//! to reject a broken copy, so a pass means the daemon really read the file.
//!
//! The daemons come from Debian's isc-dhcp-server, dnsmasq and
//! kea-dhcp4-server packages; a missing one fails the test with the package
//! to install, never skips it.

#[path = "render_fixture.rs"]
mod fixture;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use dfleet_provisioner::boot::render::render;
use dfleet_provisioner::boot::write::target;
use dfleet_provisioner::boot::{BootPlan, DhcpFlavour};
use fixture::sample_plan;

const DHCPD: &str = "/usr/sbin/dhcpd";
const DNSMASQ: &str = "/usr/sbin/dnsmasq";
const KEA_DHCP4: &str = "/usr/sbin/kea-dhcp4";

/// The sample plan rendered and written under a temporary root, as installed.
struct Installed {
    dir: tempfile::TempDir,
    plan: BootPlan,
}

impl Installed {
    fn new(dhcp: DhcpFlavour) -> Installed {
        let dir = tempfile::tempdir().unwrap();
        let mut plan = sample_plan(dir.path(), dhcp);
        // kea-dhcp4 -t checks that the interface exists: take one every
        // machine has.
        plan.network.interface = "lo".into();
        for f in render(&plan) {
            let path = target(&plan.paths, &f).unwrap();
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, &f.bytes).unwrap();
        }
        Installed { dir, plan }
    }

    fn dhcp_file(&self, name: &str) -> PathBuf {
        self.plan.paths.dhcp_root.join(name)
    }

    /// A copy of the DHCP file `name` with `from` replaced by `to`, which
    /// must occur in it.
    fn broken_copy(&self, name: &str, from: &str, to: &str) -> PathBuf {
        let text = fs::read_to_string(self.dhcp_file(name)).unwrap();
        assert!(text.contains(from), "{from:?} is not in {name}:\n{text}");
        let broken = self.dir.path().join(format!("broken-{name}"));
        fs::write(&broken, text.replacen(from, to, 1)).unwrap();
        broken
    }
}

/// The daemon at `path`, or a failure naming the Debian package to install.
fn daemon(path: &str, package: &str) -> Command {
    assert!(
        Path::new(path).is_file(),
        "{path} is missing: install the Debian package {package} (apt-get install {package})"
    );
    Command::new(path)
}

/// Runs the check; true when the daemon accepted the configuration. Its
/// output is printed either way, so a failing assertion shows it.
fn accepts(mut check: Command) -> bool {
    let out = check
        .output()
        .unwrap_or_else(|e| panic!("running {check:?}: {e}"));
    println!(
        "{check:?} exited with {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.status.success()
}

fn dhcpd_test(conf: &Path) -> Command {
    let mut c = daemon(DHCPD, "isc-dhcp-server");
    // -t parses the configuration and exits: no lease file, no PID file.
    c.arg("-t").arg("-cf").arg(conf);
    c
}

fn dnsmasq_test(conf: &Path) -> Command {
    let mut c = daemon(DNSMASQ, "dnsmasq");
    c.arg("--test")
        .arg(format!("--conf-file={}", conf.display()));
    c
}

fn kea_test(conf: &Path) -> Command {
    let mut c = daemon(KEA_DHCP4, "kea-dhcp4-server");
    c.arg("-t").arg(conf);
    c
}

#[test]
fn dhcpd_accepts_the_rendered_config() {
    let i = Installed::new(DhcpFlavour::Isc);
    assert!(
        accepts(dhcpd_test(&i.dhcp_file("dhcpd.conf"))),
        "dhcpd -t rejected dhcpd.conf"
    );
}

#[test]
fn dhcpd_rejects_a_broken_copy() {
    let i = Installed::new(DhcpFlavour::Isc);
    let missing_semicolon = i.broken_copy(
        "dhcpd.conf",
        "fixed-address 10.20.0.101;",
        "fixed-address 10.20.0.101",
    );
    assert!(
        !accepts(dhcpd_test(&missing_semicolon)),
        "dhcpd -t accepted a statement without ';'"
    );
    let bad_mac = i.broken_copy(
        "dhcpd.conf",
        "ethernet 52:54:00:ab:cd:02;",
        "ethernet 52:54:00:ab:cd:zz;",
    );
    assert!(
        !accepts(dhcpd_test(&bad_mac)),
        "dhcpd -t accepted a malformed MAC"
    );
}

#[test]
fn dnsmasq_accepts_the_rendered_config() {
    let i = Installed::new(DhcpFlavour::Dnsmasq);
    assert!(
        accepts(dnsmasq_test(&i.dhcp_file("dnsmasq.conf"))),
        "dnsmasq --test rejected dnsmasq.conf"
    );
}

/// `dnsmasq --test` does not read the hosts directory, so each hosts file's
/// entries are checked as `dhcp-host=` lines (the same syntax and parser)
/// appended to a copy of the configuration.
fn with_hosts_as_options(i: &Installed) -> PathBuf {
    let mut text = fs::read_to_string(i.dhcp_file("dnsmasq.conf")).unwrap();
    let hosts_dir = i.dhcp_file("dnsmasq.hosts");
    let mut entries = 0;
    for node in &i.plan.nodes {
        let hosts = fs::read_to_string(hosts_dir.join(&node.name)).unwrap();
        for line in hosts.lines().filter(|l| !l.starts_with('#')) {
            text.push_str(&format!("dhcp-host={line}\n"));
            entries += 1;
        }
    }
    assert_eq!(entries, i.plan.nodes.len(), "one entry per node");
    let path = i.dir.path().join("dnsmasq-with-hosts.conf");
    fs::write(&path, text).unwrap();
    path
}

#[test]
fn dnsmasq_accepts_every_hosts_entry() {
    let i = Installed::new(DhcpFlavour::Dnsmasq);
    assert!(
        accepts(dnsmasq_test(&with_hosts_as_options(&i))),
        "dnsmasq --test rejected a dnsmasq.hosts entry"
    );
}

#[test]
fn dnsmasq_rejects_a_broken_copy() {
    let i = Installed::new(DhcpFlavour::Dnsmasq);
    let misspelt = i.broken_copy("dnsmasq.conf", "dhcp-range=", "dhcp-rnage=");
    assert!(
        !accepts(dnsmasq_test(&misspelt)),
        "dnsmasq --test accepted an unknown option"
    );
    let hosts = with_hosts_as_options(&i);
    let text = fs::read_to_string(&hosts).unwrap();
    let from = "dhcp-host=52:54:00:ab:cd:02,";
    assert!(text.contains(from), "{text}");
    fs::write(
        &hosts,
        text.replacen(from, "dhcp-host=52:54:00:ab:cd:zz,", 1),
    )
    .unwrap();
    assert!(
        !accepts(dnsmasq_test(&hosts)),
        "dnsmasq --test accepted a malformed MAC"
    );
}

#[test]
fn kea_accepts_the_rendered_config() {
    let i = Installed::new(DhcpFlavour::Kea);
    assert!(
        accepts(kea_test(&i.dhcp_file("kea-dhcp4.conf"))),
        "kea-dhcp4 -t rejected kea-dhcp4.conf"
    );
}

#[test]
fn kea_rejects_a_broken_copy() {
    let i = Installed::new(DhcpFlavour::Kea);
    let conf = "kea-dhcp4.conf";
    let outside = i.broken_copy(
        conf,
        "\"ip-address\": \"10.20.0.101\"",
        "\"ip-address\": \"10.21.0.101\"",
    );
    assert!(
        !accepts(kea_test(&outside)),
        "kea-dhcp4 -t accepted a reservation outside the subnet"
    );
    let duplicate = i.broken_copy(
        conf,
        "\"hw-address\": \"52:54:00:ab:cd:02\"",
        "\"hw-address\": \"52:54:00:ab:cd:01\"",
    );
    assert!(
        !accepts(kea_test(&duplicate)),
        "kea-dhcp4 -t accepted two reservations for one MAC"
    );
    let unknown_key = i.broken_copy(conf, "\"pools\"", "\"pool\"");
    assert!(
        !accepts(kea_test(&unknown_key)),
        "kea-dhcp4 -t accepted an unknown keyword"
    );
}

#[test]
fn every_rendered_dhcp_file_is_one_these_tests_check() {
    // A new DHCP file must get its own check above before this passes.
    for (dhcp, checked) in [
        (DhcpFlavour::Isc, vec!["dhcpd.conf"]),
        (DhcpFlavour::Kea, vec!["kea-dhcp4.conf"]),
        (DhcpFlavour::Dnsmasq, vec!["dnsmasq.conf", "dnsmasq.hosts"]),
    ] {
        let i = Installed::new(dhcp);
        let mut names: Vec<String> = fs::read_dir(&i.plan.paths.dhcp_root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, checked, "{dhcp:?}");
    }
}

/// The check `pxe apply` runs: every flavour's rendered configuration passes,
/// and a broken per-node entry (dnsmasq's hosts directory) is caught.
#[test]
fn the_apply_check_accepts_each_flavour_and_catches_a_broken_host_entry() {
    use dfleet_provisioner::boot::check::check_dhcp;
    for flavour in [DhcpFlavour::Isc, DhcpFlavour::Dnsmasq, DhcpFlavour::Kea] {
        let dir = tempfile::tempdir().unwrap();
        let mut plan = sample_plan(dir.path(), flavour);
        plan.network.interface = "lo".into();
        let files = render(&plan);
        let ok = check_dhcp(flavour, &files, &dir.path().join("scratch"));
        assert!(
            ok.as_ref().is_ok_and(|m| m.contains("accepted by")),
            "{flavour:?}: {ok:?}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let mut plan = sample_plan(dir.path(), DhcpFlavour::Dnsmasq);
    plan.network.interface = "lo".into();
    let mut files = render(&plan);
    let host = files
        .iter_mut()
        .find(|f| f.path.starts_with("dnsmasq.hosts"))
        .expect("a hosts entry");
    host.bytes = b"52:54:00:zz:00:01,10.0.0.77,broken\n".to_vec();
    let err = check_dhcp(DhcpFlavour::Dnsmasq, &files, &dir.path().join("scratch")).unwrap_err();
    assert!(err.contains("rejected"), "{err}");
}
