//! The coordinator's neighbour (ARP) table: where the coordinator shares the
//! boot network with its nodes, an enrollment is accepted only if the table
//! maps the request's source address to the MAC the inventory names.

use std::net::IpAddr;
use std::path::Path;

use dfleet_proto::domain::MacAddr;

/// Parses `/proc/net/arp`: complete entries only (flags with ATF_COM, 0x2).
pub fn parse(text: &str) -> Vec<(IpAddr, MacAddr)> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let [ip, _hw_type, flags, mac, ..] = f.as_slice() else {
                return None;
            };
            let flags = u32::from_str_radix(flags.trim_start_matches("0x"), 16).ok()?;
            if flags & 0x2 == 0 {
                return None;
            }
            Some((ip.parse().ok()?, mac.parse().ok()?))
        })
        .collect()
}

/// The MAC the neighbour table at `path` holds for `ip`, if any. An address
/// with no entry is not on a network the coordinator shares (loopback, routed
/// networks), and the check does not apply to it.
pub fn lookup(path: &Path, ip: IpAddr) -> Option<MacAddr> {
    let text = std::fs::read_to_string(path).ok()?;
    parse(&text)
        .into_iter()
        .find(|(entry, _)| *entry == ip)
        .map(|(_, mac)| mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from a Debian 12 host on a boot network, with one incomplete entry.
    const ARP: &str = "\
IP address       HW type     Flags       HW address            Mask     Device
10.0.0.11        0x1         0x2         52:54:00:12:34:56     *        br-boot
10.0.0.12        0x1         0x0         00:00:00:00:00:00     *        br-boot
10.0.0.13        0x1         0x6         52:54:00:AB:CD:EF     *        br-boot
";

    #[test]
    fn complete_entries_are_read() {
        let table = parse(ARP);
        assert_eq!(table.len(), 2);
        assert_eq!(table[0].0, "10.0.0.11".parse::<IpAddr>().unwrap());
        assert_eq!(table[0].1, "52:54:00:12:34:56".parse::<MacAddr>().unwrap());
        assert_eq!(table[1].1, "52:54:00:ab:cd:ef".parse::<MacAddr>().unwrap());
    }

    #[test]
    fn lookup_reads_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("arp");
        std::fs::write(&path, ARP).unwrap();
        assert_eq!(
            lookup(&path, "10.0.0.13".parse().unwrap()),
            Some("52:54:00:ab:cd:ef".parse().unwrap())
        );
        assert_eq!(lookup(&path, "10.0.0.12".parse().unwrap()), None);
        assert_eq!(lookup(&path, "127.0.0.5".parse().unwrap()), None);
    }
}
