//! Reads the DHCP server's log for requests from machines the inventory does
//! not know, so `dfleet node pending` lists them as discovered machines an
//! administrator can add. Works with the DISCOVER lines of dnsmasq, ISC dhcpd
//! and Kea.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;

use dfleet_proto::domain::MacAddr;

use crate::fleet::{Command, FleetHandle, tokio_util_shutdown::Shutdown};

/// The MAC of a DHCPDISCOVER logged by dnsmasq, dhcpd or Kea, if `line` is one.
pub fn discover_mac(line: &str) -> Option<MacAddr> {
    if !line.contains("DHCPDISCOVER") {
        return None;
    }
    line.split(|c: char| c.is_whitespace() || "[](),;".contains(c))
        .find_map(|token| token.parse().ok())
}

/// Follows `path` from its current end, handing every discovered MAC to the
/// fleet task. A rotated (shorter) log is read again from its start.
pub async fn watch(path: PathBuf, fleet: FleetHandle, mut shutdown: Shutdown) {
    let mut pos = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let mut partial = String::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut warned = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait() => return,
        }
        let read = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || read_from(&path, pos)).await
        };
        let (new_pos, text) = match read {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                if !warned {
                    tracing::warn!(log = %path.display(), error = %e, "cannot read the DHCP log; unknown machines will not be listed");
                    warned = true;
                }
                continue;
            }
            Err(_) => continue,
        };
        warned = false;
        if new_pos < pos {
            partial.clear();
        }
        pos = new_pos;
        partial.push_str(&text);
        while let Some(end) = partial.find('\n') {
            let line: String = partial.drain(..=end).collect();
            if let Some(mac) = discover_mac(&line) {
                let _ = fleet
                    .send(Command::Discovered {
                        mac,
                        line: line.trim_end().to_string(),
                    })
                    .await;
            }
        }
    }
}

/// Reads what was appended after `pos`; a file now shorter than `pos` was
/// rotated and is read from the start.
fn read_from(path: &std::path::Path, pos: u64) -> std::io::Result<(u64, String)> {
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let start = if len < pos { 0 } else { pos };
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    f.take(1 << 20).read_to_end(&mut buf)?;
    Ok((
        start + buf.len() as u64,
        String::from_utf8_lossy(&buf).into_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discover_lines_of_each_server_give_the_mac() {
        let mac: MacAddr = "52:54:00:b1:00:99".parse().unwrap();
        // dnsmasq 2.89, as logged with --log-dhcp.
        let dnsmasq =
            "Nov 25 21:12:00 dnsmasq-dhcp[4242]: DHCPDISCOVER(dfs4242) 52:54:00:b1:00:99 ignored";
        // ISC dhcpd 4.4 with deny unknown-clients.
        let isc = "Nov 25 21:12:00 mgmt dhcpd[811]: DHCPDISCOVER from 52:54:00:b1:00:99 via eth1: network 10.0.0.0/24: no free leases";
        // Kea 2.2.
        let kea = "2026-11-25 21:12:00.123 INFO  [kea-dhcp4.packets/811.1] DHCP4_PACKET_RECEIVED [hwtype=1 52:54:00:b1:00:99], cid=[no info], tid=0x1a2b: DHCPDISCOVER (type 1) received from 0.0.0.0 to 255.255.255.255 on interface eth1";
        for line in [dnsmasq, isc, kea] {
            assert_eq!(discover_mac(line), Some(mac), "{line}");
        }
        assert_eq!(
            discover_mac("dnsmasq-dhcp: DHCPREQUEST(eth1) 10.0.0.5 52:54:00:b1:00:99"),
            None
        );
        assert_eq!(discover_mac("dnsmasq: started, version 2.89"), None);
    }

    #[test]
    fn reading_follows_appends_and_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        std::fs::write(&p, "one\n").unwrap();
        let (pos, text) = read_from(&p, 0).unwrap();
        assert_eq!((pos, text.as_str()), (4, "one\n"));
        std::fs::write(&p, "one\ntwo\n").unwrap();
        assert_eq!(read_from(&p, pos).unwrap(), (8, "two\n".to_string()));
        std::fs::write(&p, "x\n").unwrap();
        assert_eq!(read_from(&p, 8).unwrap(), (2, "x\n".to_string()));
    }
}
