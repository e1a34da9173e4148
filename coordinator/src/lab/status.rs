//! Where each lab node's current boot is, read from what the real parts
//! write: dnsmasq's log (DHCP leases and TFTP transfers), the node's serial
//! console (kernel, dracut and the lab image's markers) and the coordinator.
//! Pure functions of those texts, so every rule here is unit-tested.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

use super::LabNode;

/// How far a node got, in boot order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Waiting,
    Lease,
    Loader,
    Menu,
    Kernel,
    Initramfs,
    InitramfsNetwork,
    SwitchRoot,
    MultiUser,
    Enrolled,
    Ready,
}

impl Phase {
    /// The phase's name in `lab status --json`.
    pub fn key(self) -> &'static str {
        match self {
            Phase::Waiting => "waiting",
            Phase::Lease => "lease",
            Phase::Loader => "loader",
            Phase::Menu => "menu",
            Phase::Kernel => "kernel",
            Phase::Initramfs => "initramfs",
            Phase::InitramfsNetwork => "initramfs-network",
            Phase::SwitchRoot => "switch-root",
            Phase::MultiUser => "multi-user",
            Phase::Enrolled => "enrolled",
            Phase::Ready => "ready",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Waiting => "no DHCP request yet",
            Phase::Lease => "DHCP lease (firmware)",
            Phase::Loader => "pxelinux.0 fetched",
            Phase::Menu => "menu fetched",
            Phase::Kernel => "kernel fetched",
            Phase::Initramfs => "initramfs fetched",
            Phase::InitramfsNetwork => "DHCP lease (initramfs)",
            Phase::SwitchRoot => "root mounted, systemd starting",
            Phase::MultiUser => "multi-user (serial marker)",
            Phase::Enrolled => "agent enrolled",
            Phase::Ready => "agent ready",
        })
    }
}

/// What the coordinator says about a node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CoordinatorView {
    pub connected: bool,
    /// The node's last report or stream message, as the coordinator saw it.
    pub last_seen: Option<SystemTime>,
    pub ready: bool,
    pub state: String,
}

/// The coordinator's view of every node, from `dfleet status --json`.
pub fn parse_status_json(text: &str) -> Result<Vec<(String, CoordinatorView)>> {
    let v: serde_json::Value =
        serde_json::from_str(text).context("parsing dfleet status --json")?;
    let nodes = v["nodes"].as_array().context("no nodes in the status")?;
    Ok(nodes
        .iter()
        .map(|n| {
            let name = n["name"].as_str().unwrap_or_default().to_string();
            let view = CoordinatorView {
                connected: n["connected"].as_bool().unwrap_or(false),
                last_seen: n["last_seen_unix_ms"]
                    .as_u64()
                    .filter(|ms| *ms > 0)
                    .map(|ms| UNIX_EPOCH + Duration::from_millis(ms)),
                // The node's state, not its last report's checks: a node on
                // a new boot is not ready before it reported from it.
                ready: n["state"] == "ready",
                state: n["state"].as_str().unwrap_or_default().to_string(),
            };
            (name, view)
        })
        .collect())
}

/// The node's current boot as dnsmasq saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpBoot {
    /// Boots seen: DHCP leases given to the node's firmware (iPXE says
    /// `PXEClient` in its vendor class; the initramfs does not).
    pub boots: usize,
    /// The furthest phase of the last boot.
    pub phase: Phase,
    /// When the last boot's firmware got its lease (dnsmasq runs with
    /// TZ=UTC, so its timestamps are UTC).
    pub started: Option<SystemTime>,
}

/// The transaction number dnsmasq's `--log-dhcp` puts after the process
/// tag: `dnsmasq-dhcp[12]: 3721 DHCPACK(br0) …` → `3721`.
fn dhcp_xid(line: &str) -> Option<&str> {
    let rest = &line[line.find("]: ")? + 3..];
    let xid = rest.split_whitespace().next()?;
    xid.bytes().all(|b| b.is_ascii_digit()).then_some(xid)
}

/// Seconds since the epoch of a `Nov 26 00:31:26` (or `Nov  6 …`) log
/// timestamp in UTC, in the year that puts it closest before `now`.
fn log_time(line: &str, now: SystemTime) -> Option<SystemTime> {
    let mut f = line.split_whitespace();
    let month = match f.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let day: u32 = f.next()?.parse().ok()?;
    let hms: Vec<u64> = f
        .next()?
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let [h, m, s] = hms.as_slice() else {
        return None;
    };
    let now_secs = now.duration_since(UNIX_EPOCH).ok()?.as_secs();
    let year = civil_year(now_secs / 86_400);
    for y in [year, year - 1] {
        let days = days_from_civil(y, month, day)?;
        let t = days * 86_400 + h * 3600 + m * 60 + s;
        // A timestamp a day ahead of now is last December's.
        if t <= now_secs + 86_400 {
            return Some(UNIX_EPOCH + Duration::from_secs(t));
        }
    }
    None
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// days_from_civil algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> Option<u64> {
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    u64::try_from(era * 146_097 + doe - 719_468).ok()
}

/// The year of a day number since 1970-01-01.
fn civil_year(days: u64) -> i64 {
    let z = i64::try_from(days).unwrap_or(0) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    yoe + era * 400 + i64::from(m <= 2)
}

/// The node's boots in dnsmasq's log: a firmware lease starts a boot, TFTP
/// transfers to the node's address and the initramfs's lease move it on.
pub fn dhcp_boot(log: &str, node: &LabNode, now: SystemTime) -> DhcpBoot {
    let mac = node.mac();
    let sent_to = format!(" to {}", node.ip());
    let firmware: std::collections::HashSet<&str> = log
        .lines()
        .filter(|l| l.contains(" vendor class: PXEClient"))
        .filter_map(dhcp_xid)
        .collect();
    let mut boot = DhcpBoot {
        boots: 0,
        phase: Phase::Waiting,
        started: None,
    };
    for line in log.lines() {
        if line.contains("DHCPACK(") && line.contains(&mac) {
            let from_firmware = dhcp_xid(line).is_some_and(|x| firmware.contains(x));
            if from_firmware || boot.boots == 0 {
                boot.boots += 1;
                boot.phase = Phase::Lease;
                boot.started = log_time(line, now);
            } else if boot.phase >= Phase::Initramfs {
                boot.phase = Phase::InitramfsNetwork;
            }
        } else if line.contains("dnsmasq-tftp")
            && line.contains(" sent ")
            && line.ends_with(&sent_to)
        {
            let file = line
                .split(" sent ")
                .nth(1)
                .and_then(|r| r.strip_suffix(&sent_to))
                .unwrap_or("");
            let got = if file.ends_with("/pxelinux.0") {
                Phase::Loader
            } else if file.contains("/pxelinux.cfg/") {
                Phase::Menu
            } else if file.ends_with("/vmlinuz") {
                Phase::Kernel
            } else if file.ends_with("/initrd.img") {
                Phase::Initramfs
            } else {
                continue;
            };
            boot.phase = boot.phase.max(got);
        }
    }
    boot
}

/// What the serial console says about the kernel that runs now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsoleBoot {
    /// Kernels started (`Linux version` lines).
    pub kernels: usize,
    /// The furthest phase the last kernel's console shows, if any.
    pub phase: Option<Phase>,
    /// The last boot error not followed by progress: dfleet's and dracut's
    /// warnings and fatal errors, a kernel panic.
    pub error: Option<String>,
    /// The lab image's `DFLEET-…` markers of the last kernel, by name.
    pub markers: Vec<(String, String)>,
}

impl ConsoleBoot {
    pub fn marker(&self, name: &str) -> Option<&str> {
        self.markers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Lines that say the boot is stuck (until a later line shows progress).
const ERRORS: &[&str] = &[
    "dracut Warning: dfleet:",
    "dracut: FATAL:",
    "Could not boot",
    "Kernel panic",
];

/// Lines that show progress past any earlier error.
const PROGRESS: &[&str] = &[
    "dracut: dfleet: root is an overlay",
    "dracut: Switching root",
    "DFLEET-READY",
];

/// The console line without the kernel's `[   12.345678] ` stamp.
fn unstamped(line: &str) -> &str {
    let l = line.trim();
    if l.starts_with('[')
        && let Some(i) = l.find("] ")
    {
        return l[i + 2..].trim();
    }
    l
}

pub fn console_boot(console: &str) -> ConsoleBoot {
    let kernels = console.matches("Linux version ").count();
    let current = console
        .rfind("Linux version ")
        .map_or("", |i| &console[i..]);
    let mut boot = ConsoleBoot {
        kernels,
        ..ConsoleBoot::default()
    };
    for line in current.lines() {
        let text = unstamped(line);
        if ERRORS.iter().any(|e| text.contains(e)) {
            boot.error = Some(text.to_string());
        }
        if PROGRESS.iter().any(|p| text.contains(p)) {
            boot.error = None;
        }
        if text.contains("dracut: Switching root") {
            boot.phase = boot.phase.max(Some(Phase::SwitchRoot));
        }
        if let Some(i) = text.find("DFLEET-") {
            let marker = &text[i + "DFLEET-".len()..];
            let (name, value) = marker.split_once(' ').unwrap_or((marker, ""));
            if name == "READY" {
                boot.phase = Some(Phase::MultiUser);
            }
            boot.markers
                .push((name.to_string(), value.trim().to_string()));
        }
    }
    boot
}

/// One node's boot, all sources together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeBoot {
    pub phase: Phase,
    pub error: Option<String>,
    pub started: Option<SystemTime>,
    /// The current kernel's console, when the console is of the current boot.
    pub console: Option<ConsoleBoot>,
}

/// The furthest phase of the node's current boot, which began at the later
/// of its power-on and its firmware's last lease. The console counts only
/// when it shows as many kernels as dnsmasq saw boots (else the kernel of
/// the current boot has not started); the coordinator only once the current
/// boot reached multi-user (so a ready node has printed every marker; before
/// switch root the coordinator's view is of the last boot), while the
/// node's stream is up and when it heard from the node after this boot's
/// firmware lease (a stream of the last boot may look up until the
/// coordinator notices it is dead).
pub fn node_boot(
    dnsmasq_log: &str,
    console: &str,
    node: &LabNode,
    coord: Option<&CoordinatorView>,
    powered_on: Option<SystemTime>,
    now: SystemTime,
) -> NodeBoot {
    let dhcp = dhcp_boot(dnsmasq_log, node, now);
    // Powered on after the last boot dnsmasq saw began: a new boot that has
    // not asked for its lease yet. (Log times have whole seconds.)
    if let Some(on) = powered_on {
        let seen = dhcp
            .started
            .map(|s| s + Duration::from_secs(1) >= on)
            .unwrap_or(false);
        if !seen {
            return NodeBoot {
                phase: Phase::Waiting,
                error: None,
                started: Some(on),
                console: None,
            };
        }
    }
    let con = console_boot(console);
    let current = con.kernels > 0 && con.kernels >= dhcp.boots;
    let mut phase = dhcp.phase;
    let mut error = None;
    if current {
        if let Some(p) = con.phase {
            phase = phase.max(p);
        }
        error = con.error.clone();
        if phase >= Phase::MultiUser {
            let fresh = |c: &&CoordinatorView| match (c.last_seen, dhcp.started) {
                (Some(seen), Some(started)) => seen >= started,
                (None, _) => false,
                (Some(_), None) => true,
            };
            if let Some(c) = coord.filter(|c| c.connected).filter(fresh) {
                phase = if c.ready {
                    Phase::Ready
                } else {
                    phase.max(Phase::Enrolled)
                };
            }
        }
    }
    NodeBoot {
        phase,
        error,
        started: dhcp.started,
        console: current.then_some(con),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(y: i64, mo: u32, d: u32, h: u64, mi: u64, s: u64) -> SystemTime {
        let days = days_from_civil(y, mo, d).unwrap();
        UNIX_EPOCH + Duration::from_secs(days * 86_400 + h * 3600 + mi * 60 + s)
    }

    const DNSMASQ: &str = "\
Nov 25 23:40:01 dnsmasq-dhcp[12]: 3721 vendor class: PXEClient:Arch:00000:UNDI:002001
Nov 25 23:40:01 dnsmasq-dhcp[12]: 3721 DHCPACK(br0) 10.77.0.11 52:54:00:77:00:01 lab01
Nov 25 23:40:02 dnsmasq-tftp[12]: sent /var/lib/dfleet-lab/tftp/pxelinux.0 to 10.77.0.11
Nov 25 23:40:03 dnsmasq-tftp[12]: sent /var/lib/dfleet-lab/tftp/ldlinux.c32 to 10.77.0.11
Nov 25 23:40:03 dnsmasq-tftp[12]: sent /var/lib/dfleet-lab/tftp/pxelinux.cfg/01-52-54-00-77-00-01 to 10.77.0.11
Nov 25 23:40:05 dnsmasq-tftp[12]: sent /var/lib/dfleet-lab/tftp/dfleet/lab/1/vmlinuz to 10.77.0.11
Nov 25 23:40:09 dnsmasq-dhcp[12]: 3722 vendor class: PXEClient:Arch:00000:UNDI:002001
Nov 25 23:40:09 dnsmasq-dhcp[12]: 3722 DHCPACK(br0) 10.77.0.12 52:54:00:77:00:02 lab02
Nov 25 23:40:15 dnsmasq-tftp[12]: sent /var/lib/dfleet-lab/tftp/dfleet/lab/1/initrd.img to 10.77.0.11
";

    fn now() -> SystemTime {
        at(2026, 11, 26, 0, 0, 0)
    }

    #[test]
    fn phases_follow_dnsmasqs_log_per_node() {
        let one = LabNode { index: 1 };
        let two = LabNode { index: 2 };
        let b = dhcp_boot(DNSMASQ, &one, now());
        assert_eq!((b.boots, b.phase), (1, Phase::Initramfs));
        assert_eq!(b.started, Some(at(2026, 11, 25, 23, 40, 1)));
        assert_eq!(dhcp_boot(DNSMASQ, &two, now()).phase, Phase::Lease);
        assert_eq!(dhcp_boot("", &two, now()).phase, Phase::Waiting);
        let again = format!(
            "{DNSMASQ}Nov 25 23:40:40 dnsmasq-dhcp[12]: 9 DHCPACK(br0) 10.77.0.11 52:54:00:77:00:01 lab01\n"
        );
        let b = dhcp_boot(&again, &one, now());
        assert_eq!((b.boots, b.phase), (1, Phase::InitramfsNetwork));
    }

    #[test]
    fn a_firmware_lease_starts_a_new_boot() {
        let one = LabNode { index: 1 };
        let rebooted = format!(
            "{DNSMASQ}Nov 25 23:50:00 dnsmasq-dhcp[12]: 77 vendor class: PXEClient:Arch:00000:UNDI:002001\n\
             Nov 25 23:50:00 dnsmasq-dhcp[12]: 77 DHCPACK(br0) 10.77.0.11 52:54:00:77:00:01 lab01\n\
             Nov 25 23:50:01 dnsmasq-tftp[12]: sent /l/tftp/pxelinux.0 to 10.77.0.11\n"
        );
        let b = dhcp_boot(&rebooted, &one, now());
        assert_eq!(b.boots, 2);
        assert_eq!(b.phase, Phase::Loader);
        assert_eq!(b.started, Some(at(2026, 11, 25, 23, 50, 0)));
    }

    #[test]
    fn log_times_take_the_year_that_is_not_in_the_future() {
        let jan = at(2027, 1, 1, 0, 10, 0);
        assert_eq!(
            log_time("Dec 31 23:59:58 dnsmasq", jan),
            Some(at(2026, 12, 31, 23, 59, 58))
        );
        assert_eq!(
            log_time("Jan  1 00:09:00 dnsmasq", jan),
            Some(at(2027, 1, 1, 0, 9, 0))
        );
        assert_eq!(log_time("garbage", jan), None);
        assert_eq!(civil_year(days_from_civil(2024, 2, 29).unwrap()), 2024);
        assert_eq!(days_from_civil(1970, 1, 1), Some(0));
    }

    const CONSOLE: &str = "\
[    0.000000] Linux version 6.1.0-27-amd64 (debian-kernel@lists.debian.org)
[   20.100000] dracut: dfleet: dfleet.mount=self: dfleet mounts the NFS root itself
[   25.000000] dracut Warning: dfleet: mounting the NFS root 10.77.0.1:/l/images/lab/1 on /run/dfleet/lower failed: mount.nfs: Connection refused (attempt 1; trying again until rd.retry gives up)
";

    #[test]
    fn a_boot_error_stands_until_progress_follows() {
        let c = console_boot(CONSOLE);
        assert_eq!(c.kernels, 1);
        assert_eq!(c.phase, None);
        assert!(
            c.error
                .as_deref()
                .unwrap()
                .starts_with("dracut Warning: dfleet: mounting the NFS root"),
            "{c:?}"
        );
        let recovered = format!(
            "{CONSOLE}[   60.0] dracut: dfleet: root is an overlay of /run/dfleet/lower (generation lab:1, NFS root mounted by dfleet) with its upper layer in a tmpfs of size 50%\n\
             [   61.0] dracut: Switching root\n\
             DFLEET-READY uptime=80.1\n\
             DFLEET-MOUNTED-BY dfleet\n"
        );
        let c = console_boot(&recovered);
        assert_eq!(c.error, None);
        assert_eq!(c.phase, Some(Phase::MultiUser));
        assert_eq!(c.marker("MOUNTED-BY"), Some("dfleet"));
    }

    #[test]
    fn only_the_last_kernels_console_counts() {
        let two = format!(
            "{CONSOLE}[    0.000000] Linux version 6.1.0-27-amd64 (again)\n[    3.0] dracut: starting\n"
        );
        let c = console_boot(&two);
        assert_eq!((c.kernels, c.error, c.phase), (2, None, None));
    }

    #[test]
    fn the_console_and_coordinator_count_only_for_the_current_boot() {
        let one = LabNode { index: 1 };
        let ready = CoordinatorView {
            connected: true,
            last_seen: Some(at(2026, 11, 25, 23, 45, 0)),
            ready: true,
            state: "ready".into(),
        };
        let booted = format!("{CONSOLE}[ 61.0] dracut: Switching root\nDFLEET-READY uptime=80\n");
        let b = node_boot(DNSMASQ, &booted, &one, Some(&ready), None, now());
        assert_eq!(b.phase, Phase::Ready);
        // Rebooted: the firmware's new lease is boot 2, the console still
        // shows kernel 1, so neither it nor the stale coordinator view count.
        let rebooted = format!(
            "{DNSMASQ}Nov 25 23:50:00 dnsmasq-dhcp[12]: 77 vendor class: PXEClient:Arch:00000:UNDI:002001\n\
             Nov 25 23:50:00 dnsmasq-dhcp[12]: 77 DHCPACK(br0) 10.77.0.11 52:54:00:77:00:01 lab01\n"
        );
        let b = node_boot(&rebooted, &booted, &one, Some(&ready), None, now());
        assert_eq!((b.phase, b.console), (Phase::Lease, None));
        // A node whose stream is down is not enrolled, whatever its past.
        let gone = CoordinatorView {
            connected: false,
            last_seen: Some(at(2026, 11, 25, 23, 45, 0)),
            ready: true,
            state: "lost".into(),
        };
        let b = node_boot(DNSMASQ, &booted, &one, Some(&gone), None, now());
        assert_eq!(b.phase, Phase::MultiUser);
        // A stream that looks up but was last heard of before this boot.
        let stale = CoordinatorView {
            last_seen: Some(at(2026, 11, 25, 23, 39, 0)),
            ..ready.clone()
        };
        let b = node_boot(DNSMASQ, &booted, &one, Some(&stale), None, now());
        assert_eq!(b.phase, Phase::MultiUser);
        // Powered on again, before its firmware asked for a lease.
        let on = at(2026, 11, 25, 23, 46, 0);
        let b = node_boot(DNSMASQ, &booted, &one, Some(&ready), Some(on), now());
        assert_eq!((b.phase, b.started), (Phase::Waiting, Some(on)));
        // Powered on just before the lease it then got.
        let on = at(2026, 11, 25, 23, 40, 1) + Duration::from_millis(300);
        let b = node_boot(DNSMASQ, &booted, &one, Some(&ready), Some(on), now());
        assert_eq!(b.phase, Phase::Ready);
    }

    #[test]
    fn a_stuck_initramfs_reports_its_error() {
        let one = LabNode { index: 1 };
        let log = format!(
            "{DNSMASQ}Nov 25 23:40:20 dnsmasq-dhcp[12]: 9 DHCPACK(br0) 10.77.0.11 52:54:00:77:00:01 lab01\n"
        );
        let b = node_boot(&log, CONSOLE, &one, None, None, now());
        assert_eq!(b.phase, Phase::InitramfsNetwork);
        assert!(b.error.unwrap().contains("Connection refused"));
    }
}
