//! Who this node is: names, addresses, kernel and boot.

use dfleet_proto::domain::{Identity, MacAddr};

use crate::os::HostRoot;
use crate::parse::{cmdline, fib_trie, uptime};

/// Reads the identity. A part that cannot be read stays empty and is logged; the report goes on.
pub fn collect(root: &HostRoot) -> Identity {
    let read = |path: &str| match root.read_to_string(path) {
        Ok(s) => s.trim().to_string(),
        Err(e) => {
            tracing::warn!("identity: {e}");
            String::new()
        }
    };
    let uptime_seconds = root
        .read_to_string("/proc/uptime")
        .map_err(|e| e.to_string())
        .and_then(|t| uptime::parse(&t).map_err(|e| e.to_string()))
        .unwrap_or_else(|e| {
            tracing::warn!("identity: {e}");
            0
        });
    let addresses = root
        .read_to_string("/proc/net/fib_trie")
        .map_err(|e| e.to_string())
        .and_then(|t| fib_trie::parse(&t).map_err(|e| e.to_string()))
        .map(|addrs| addrs.iter().map(ToString::to_string).collect())
        .unwrap_or_else(|e| {
            tracing::warn!("identity: {e}");
            Vec::new()
        });
    Identity {
        hostname: read("/proc/sys/kernel/hostname"),
        boot_mac: boot_mac(root),
        addresses,
        kernel: read("/proc/sys/kernel/osrelease"),
        uptime_seconds,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        boot_id: read("/proc/sys/kernel/random/boot_id"),
    }
}

/// The NIC the node booted from: `BOOTIF=` on the kernel command line (pxelinux and dfleet's iPXE
/// menus write it), else the first interface by name that has a real hardware address.
pub fn boot_mac(root: &HostRoot) -> Option<MacAddr> {
    match root
        .read_to_string("/proc/cmdline")
        .map(|t| cmdline::parse(&t))
    {
        Ok(Ok(c)) if c.boot_mac.is_some() => return c.boot_mac,
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!("identity: {e}; using the first interface instead"),
        Err(e) => tracing::warn!("identity: {e}"),
    }
    let names = root.list_dir("/sys/class/net").ok()?;
    names
        .iter()
        .filter(|n| n.as_str() != "lo")
        .filter_map(|n| {
            root.read_to_string(format!("/sys/class/net/{n}/address"))
                .ok()?
                .trim()
                .parse::<MacAddr>()
                .ok()
        })
        .find(|mac| mac.0 != [0; 6])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn put(root: &std::path::Path, path: &str, text: &str) {
        let p = root.join(path.trim_start_matches('/'));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    #[test]
    fn without_bootif_the_first_real_interface_is_used() {
        let t = tempfile::tempdir().unwrap();
        put(t.path(), "/proc/cmdline", "console=ttyS0 quiet\n");
        put(t.path(), "/sys/class/net/lo/address", "00:00:00:00:00:00\n");
        put(
            t.path(),
            "/sys/class/net/tun0/address",
            "00:00:00:00:00:00\n",
        );
        put(
            t.path(),
            "/sys/class/net/eth1/address",
            "52:54:00:00:00:02\n",
        );
        put(
            t.path(),
            "/sys/class/net/eth0/address",
            "52:54:00:00:00:01\n",
        );
        let root = HostRoot::new(t.path());
        assert_eq!(boot_mac(&root), Some("52:54:00:00:00:01".parse().unwrap()));

        put(
            t.path(),
            "/proc/cmdline",
            "BOOTIF=01-52-54-00-00-00-02 quiet\n",
        );
        assert_eq!(boot_mac(&root), Some("52:54:00:00:00:02".parse().unwrap()));
    }

    #[test]
    fn an_empty_root_gives_an_empty_identity() {
        let t = tempfile::tempdir().unwrap();
        let id = collect(&HostRoot::new(t.path()));
        assert_eq!(id.hostname, "");
        assert_eq!(id.boot_mac, None);
        assert_eq!(id.agent_version, env!("CARGO_PKG_VERSION"));
    }
}
