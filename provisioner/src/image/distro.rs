//! How a new image's root is installed, per distribution, with the
//! distribution's own tools: the bootstrap command run on the management
//! host, then the commands run inside the new tree (in the image sandbox) to
//! add the kernel, dracut and what a diskless node needs.
//!
//! Only Debian 12 is exercised by dfleet's tests (the machines dfleet is
//! built on reach Debian's mirrors only); the SLES 15 and RHEL 8 recipes
//! follow those distributions' documented `--root`/`--installroot` installs.

use std::path::Path;

/// A distribution dfleet can install an image of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distro {
    Debian12,
    Sles15,
    Rhel8,
}

impl std::str::FromStr for Distro {
    type Err = String;
    fn from_str(s: &str) -> Result<Distro, String> {
        match s {
            "debian12" => Ok(Distro::Debian12),
            "sles15" => Ok(Distro::Sles15),
            "rhel8" => Ok(Distro::Rhel8),
            other => Err(format!(
                "unknown distribution {other:?}: expected debian12, sles15 or rhel8"
            )),
        }
    }
}

impl std::fmt::Display for Distro {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Distro::Debian12 => "debian12",
            Distro::Sles15 => "sles15",
            Distro::Rhel8 => "rhel8",
        })
    }
}

/// Debian's mirror when none is given.
pub const DEBIAN_MIRROR: &str = "http://deb.debian.org/debian";

/// What debootstrap installs: enough for systemd, udev, the NFS client and
/// networking. The kernel and dracut come afterwards, inside the tree: with
/// the kernel in debootstrap's list, apt would pick initramfs-tools, which
/// conflicts with dracut.
const DEBIAN_BASE: &[&str] = &[
    "systemd-sysv",
    "udev",
    "kmod",
    "procps",
    "iproute2",
    "nfs-common",
    "util-linux",
    // /etc/protocols: mount.nfs fails with "Failed to find 'tcp' protocol"
    // in the initramfs without it.
    "netbase",
    "ca-certificates",
];

/// What every image gets inside the tree: the kernel, dracut with its
/// network modules, and the DHCP client dracut's network-legacy module uses.
const DEBIAN_BOOT: &[&str] = &[
    "linux-image-amd64",
    "dracut",
    "dracut-network",
    "isc-dhcp-client",
];

/// Where Debian images get dfleet's dracut settings.
pub const DEBIAN_DRACUT_CONF: &str = "etc/dracut.conf.d/90-dfleet.conf";

/// Debian's dracut-network pulls in the `ifcfg` module through its own
/// config file, and dracut's `network` module then picks systemd-networkd,
/// which needs dbus in the initramfs and fails: every kernel install or
/// upgrade inside the image would fail to build its initramfs. The legacy
/// network module (dhclient) works; `ifcfg` writes Red Hat network-scripts
/// files a diskless node never reads.
const DEBIAN_DRACUT_CONF_TEXT: &str = "# Written by dfleet image create: the initramfs of a diskless node.\n\
add_dracutmodules+=\" network-legacy \"\n\
omit_dracutmodules+=\" ifcfg \"\n";

/// The install of a new image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipe {
    /// The program the bootstrap needs on the management host, and the
    /// Debian package that provides it.
    pub tool: &'static str,
    pub tool_package: &'static str,
    /// Run on the management host; installs the base system into the tree.
    pub bootstrap: Vec<String>,
    /// Files written into the tree after the bootstrap, before `in_image`
    /// (path inside the tree, content).
    pub files: Vec<(&'static str, &'static str)>,
    /// Run inside the new tree (image sandbox), in order.
    pub in_image: Vec<Vec<String>>,
}

/// The recipe for `distro` into `target`, with the administrator's extra
/// `packages`.
pub fn recipe(distro: Distro, target: &Path, packages: &[String], mirror: Option<&str>) -> Recipe {
    let target = target.display().to_string();
    match distro {
        Distro::Debian12 => {
            let mut install: Vec<String> = [
                "apt-get",
                "install",
                "--yes",
                "--no-install-recommends",
                "-o",
                "Dpkg::Options::=--force-confold",
            ]
            .map(String::from)
            .to_vec();
            install.extend(DEBIAN_BOOT.iter().map(|p| p.to_string()));
            install.extend(packages.iter().cloned());
            Recipe {
                tool: "debootstrap",
                tool_package: "debootstrap",
                bootstrap: vec![
                    "debootstrap".into(),
                    "--variant=minbase".into(),
                    format!("--include={}", DEBIAN_BASE.join(",")),
                    "bookworm".into(),
                    target,
                    mirror.unwrap_or(DEBIAN_MIRROR).to_string(),
                ],
                files: vec![(DEBIAN_DRACUT_CONF, DEBIAN_DRACUT_CONF_TEXT)],
                in_image: vec![
                    vec!["apt-get".into(), "update".into()],
                    install,
                    vec!["apt-get".into(), "clean".into()],
                ],
            }
        }
        Distro::Sles15 => {
            let mut install: Vec<String> = [
                "zypper",
                "--root",
                &target,
                "--non-interactive",
                "--gpg-auto-import-keys",
                "install",
                "--no-recommends",
                "patterns-base-minimal_base",
                "systemd",
                "kernel-default",
                "dracut",
                "nfs-client",
                "iproute2",
                "dhcp-client",
            ]
            .map(String::from)
            .to_vec();
            install.extend(packages.iter().cloned());
            let repo = mirror
                .unwrap_or("https://download.opensuse.org/distribution/leap/15.6/repo/oss/")
                .to_string();
            Recipe {
                tool: "zypper",
                tool_package: "zypper",
                bootstrap: vec![
                    "sh".into(),
                    "-c".into(),
                    // Adds the repository, then runs the install that follows.
                    "zypper --root \"$1\" --non-interactive addrepo \"$2\" base && shift 2 && exec \"$@\""
                        .into(),
                    "dfleet-bootstrap".into(),
                ]
                .into_iter()
                .chain([target.clone(), repo])
                .chain(install)
                .collect(),
                files: Vec::new(),
                in_image: Vec::new(),
            }
        }
        Distro::Rhel8 => {
            let mut bootstrap: Vec<String> = [
                "dnf",
                &format!("--installroot={target}"),
                "--releasever=8",
                "--setopt=install_weak_deps=False",
                "--assumeyes",
                "install",
                "@core",
                "kernel",
                "dracut",
                "dracut-network",
                "nfs-utils",
                "dhcp-client",
            ]
            .map(String::from)
            .to_vec();
            bootstrap.extend(packages.iter().cloned());
            Recipe {
                tool: "dnf",
                tool_package: "dnf",
                bootstrap,
                files: Vec::new(),
                in_image: Vec::new(),
            }
        }
    }
}

/// Whether `program` is on `path` (a `PATH`-style list).
pub fn on_path(program: &str, path: &str) -> bool {
    path.split(':')
        .filter(|d| !d.is_empty())
        .any(|d| Path::new(d).join(program).is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_bootstraps_minbase_then_adds_kernel_and_dracut_inside() {
        let r = recipe(
            Distro::Debian12,
            Path::new("/srv/i/c/.1.partial"),
            &["htop".to_string()],
            None,
        );
        assert_eq!(r.tool_package, "debootstrap");
        assert_eq!(r.bootstrap[..2], ["debootstrap", "--variant=minbase"]);
        assert!(r.bootstrap[2].contains("netbase") && !r.bootstrap[2].contains("linux-image"));
        assert_eq!(
            r.bootstrap[3..],
            [
                "bookworm",
                "/srv/i/c/.1.partial",
                "http://deb.debian.org/debian"
            ]
        );
        assert_eq!(r.files[0].0, "etc/dracut.conf.d/90-dfleet.conf");
        assert!(r.files[0].1.contains("network-legacy"));
        let install = &r.in_image[1];
        assert!(install.contains(&"linux-image-amd64".to_string()));
        assert!(install.contains(&"dracut-network".to_string()));
        assert_eq!(install.last().map(String::as_str), Some("htop"));
    }

    #[test]
    fn other_distributions_use_their_own_tools() {
        let s = recipe(Distro::Sles15, Path::new("/t"), &[], None);
        assert_eq!((s.tool, s.tool_package), ("zypper", "zypper"));
        assert!(s.bootstrap.contains(&"kernel-default".to_string()));
        let r = recipe(Distro::Rhel8, Path::new("/t"), &[], Some("ignored"));
        assert_eq!(r.bootstrap[1], "--installroot=/t");
        assert!(r.bootstrap.contains(&"dracut-network".to_string()));
    }

    #[test]
    fn names_parse_and_unknown_ones_list_the_choices() {
        assert_eq!("debian12".parse::<Distro>(), Ok(Distro::Debian12));
        let e = "ubuntu".parse::<Distro>().unwrap_err();
        assert!(e.contains("debian12, sles15 or rhel8"), "{e}");
    }

    #[test]
    fn tools_are_found_on_the_path() {
        assert!(on_path("sh", "/nonexistent:/bin:/usr/bin"));
        assert!(!on_path("no-such-tool-dfleet", "/bin:/usr/bin"));
    }
}
