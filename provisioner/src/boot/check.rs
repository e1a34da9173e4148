//! Checks a rendered DHCP configuration with the real daemon that will read
//! it (`dhcpd -t`, `dnsmasq --test`, `kea-dhcp4 -t`) before anything is
//! replaced. dnsmasq does not read its hosts directory when testing, so its
//! per-node entries are checked as `dhcp-host=` lines: the same syntax and
//! parser.

use std::path::Path;
use std::process::Command;

use super::{DhcpFlavour, GeneratedFile, Tree};

/// The daemon program, its Debian package and the main file it reads.
pub fn daemon(flavour: DhcpFlavour) -> (&'static str, &'static str, &'static str) {
    match flavour {
        DhcpFlavour::Isc => ("/usr/sbin/dhcpd", "isc-dhcp-server", "dhcpd.conf"),
        DhcpFlavour::Dnsmasq => ("/usr/sbin/dnsmasq", "dnsmasq", "dnsmasq.conf"),
        DhcpFlavour::Kea => ("/usr/sbin/kea-dhcp4", "kea-dhcp4-server", "kea-dhcp4.conf"),
    }
}

/// Writes the configuration the daemon would read into `scratch` and runs
/// the daemon's own check on it. `Ok` says what checked it, or why nothing
/// could (the daemon is not installed); `Err` carries the daemon's complaint.
pub fn check_dhcp(
    flavour: DhcpFlavour,
    files: &[GeneratedFile],
    scratch: &Path,
) -> Result<String, String> {
    let (program, package, main) = daemon(flavour);
    let Some(conf) = files
        .iter()
        .find(|f| f.tree == Tree::Dhcp && f.path == Path::new(main))
    else {
        return Err(format!("no {main} was rendered"));
    };
    if !Path::new(program).exists() {
        return Ok(format!(
            "{main}: not checked, {program} is not installed (Debian package {package})"
        ));
    }
    let mut text = String::from_utf8_lossy(&conf.bytes).into_owned();
    if flavour == DhcpFlavour::Dnsmasq {
        for f in files
            .iter()
            .filter(|f| f.tree == Tree::Dhcp && f.path.starts_with("dnsmasq.hosts"))
        {
            for line in String::from_utf8_lossy(&f.bytes).lines() {
                let line = line.trim();
                if !line.is_empty() && !line.starts_with('#') {
                    text.push_str(&format!("dhcp-host={line}\n"));
                }
            }
        }
    }
    std::fs::create_dir_all(scratch).map_err(|e| format!("creating {}: {e}", scratch.display()))?;
    let copy = scratch.join(main);
    std::fs::write(&copy, text).map_err(|e| format!("writing {}: {e}", copy.display()))?;
    let mut cmd = Command::new(program);
    match flavour {
        DhcpFlavour::Isc => cmd.arg("-t").arg("-cf").arg(&copy),
        DhcpFlavour::Dnsmasq => cmd
            .arg("--test")
            .arg(format!("--conf-file={}", copy.display())),
        DhcpFlavour::Kea => cmd.arg("-t").arg(&copy),
    };
    let out = cmd
        .output()
        .map_err(|e| format!("running {program}: {e}"))?;
    if out.status.success() {
        Ok(format!("{main}: accepted by {program}"))
    } else {
        Err(format!(
            "{program} rejected the rendered {main}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
