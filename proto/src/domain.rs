//! Domain types shared by the coordinator, the agent and the CLI.
//!
//! The core of every crate speaks in these types; generated protobuf types are
//! converted to them at the RPC edge (see [`crate::convert`]).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a domain value could not be made from its text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("malformed MAC address {0:?}: expected six hex octets separated by ':' or '-'")]
    Mac(String),
    #[error("invalid node name {0:?}: {1}")]
    NodeName(String, &'static str),
    #[error("invalid generation reference {0:?}: expected IMAGE:GENERATION")]
    Generation(String),
}

/// A node's name as written in the inventory: a valid hostname label.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeName(String);

impl NodeName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for NodeName {
    type Err = ParseError;

    /// Accepts one DNS label per RFC 1123: 1–63 characters of letters, digits
    /// and '-', not starting or ending with '-'. Names are kept as written but
    /// must be lowercase so that "CN01" and "cn01" cannot both exist.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why| Err(ParseError::NodeName(s.to_string(), why));
        if s.is_empty() {
            return err("empty");
        }
        if s.len() > 63 {
            return err("longer than 63 characters");
        }
        if s.starts_with('-') || s.ends_with('-') {
            return err("starts or ends with '-'");
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return err("only lowercase letters, digits and '-' are allowed");
        }
        Ok(NodeName(s.to_string()))
    }
}

impl TryFrom<String> for NodeName {
    type Error = ParseError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<NodeName> for String {
    fn from(n: NodeName) -> String {
        n.0
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An Ethernet MAC address. Parsed from `aa:bb:…` or `aa-bb-…` in any case,
/// shown lowercase with ':'.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MacAddr(pub [u8; 6]);

impl FromStr for MacAddr {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseError::Mac(s.to_string());
        let sep = if s.contains('-') { '-' } else { ':' };
        let mut out = [0u8; 6];
        let mut parts = s.split(sep);
        for byte in &mut out {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(out))
    }
}

impl TryFrom<String> for MacAddr {
    type Error = ParseError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<MacAddr> for String {
    fn from(m: MacAddr) -> String {
        m.to_string()
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl MacAddr {
    /// The form pxelinux uses for per-node menus and `BOOTIF=`: `01-aa-bb-…`.
    pub fn pxelinux_form(&self) -> String {
        format!("01-{}", self.to_string().replace(':', "-"))
    }
}

/// An image generation number. Generations only ever grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Generation(pub u64);

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One generation of one image, written `IMAGE:GEN`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GenerationRef {
    pub image: String,
    pub generation: Generation,
}

impl fmt::Display for GenerationRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.image, self.generation)
    }
}

impl FromStr for GenerationRef {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseError::Generation(s.to_string());
        let (image, generation) = s.rsplit_once(':').ok_or_else(bad)?;
        if image.is_empty() {
            return Err(bad());
        }
        let generation = generation.parse().map_err(|_| bad())?;
        Ok(GenerationRef {
            image: image.to_string(),
            generation: Generation(generation),
        })
    }
}

/// Where an SSH host key comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyOrigin {
    /// The private key is in the shared image: every node has the same key.
    Image,
    /// Only in the node's RAM upper layer: generated at this boot.
    Boot,
    /// The public or the private half is missing.
    Missing,
    /// Installed by the coordinator: the node's own persistent key (managed).
    Coordinator,
    /// Made at this boot, with a host certificate from the cluster's SSH CA.
    Certificate,
}

impl fmt::Display for KeyOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyOrigin::Image => "image",
            KeyOrigin::Boot => "boot",
            KeyOrigin::Missing => "missing",
            KeyOrigin::Coordinator => "coordinator",
            KeyOrigin::Certificate => "certificate",
        })
    }
}

/// How a node gets its SSH host keys (`[ssh] host_keys`, per group or node
/// `ssh_host_keys`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostKeyMode {
    /// A key pair made at each boot in the node's RAM, with an OpenSSH host
    /// certificate signed by the cluster's SSH host CA.
    #[default]
    Certificates,
    /// One persistent key set per node, kept by the coordinator and sent to
    /// the node over its own stream at each boot.
    Managed,
}

impl HostKeyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            HostKeyMode::Certificates => "certificates",
            HostKeyMode::Managed => "managed",
        }
    }
}

impl fmt::Display for HostKeyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for HostKeyMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "certificates" => Ok(HostKeyMode::Certificates),
            "managed" => Ok(HostKeyMode::Managed),
            other => Err(format!(
                "unknown host key mode {other:?}: expected \"certificates\" or \"managed\""
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostKey {
    pub path: String,
    pub key_type: String,
    pub bits: u32,
    /// `SHA256:…` exactly as `ssh-keygen -lf` prints it.
    pub fingerprint: String,
    pub origin: KeyOrigin,
    pub comment: String,
    /// `Certificate`: when the certificate expires, Unix seconds (else 0).
    #[serde(default)]
    pub cert_valid_before_unix: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckStatus {
    Pass,
    Fail,
    /// The check does not apply here.
    Skipped,
}

/// One named readiness check and its outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub status: CheckStatus,
    pub detail: String,
}

impl Check {
    pub fn pass(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Check {
            name: name.into(),
            status: CheckStatus::Pass,
            detail: detail.into(),
        }
    }
    pub fn fail(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Check {
            name: name.into(),
            status: CheckStatus::Fail,
            detail: detail.into(),
        }
    }
    pub fn skipped(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Check {
            name: name.into(),
            status: CheckStatus::Skipped,
            detail: detail.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathUsage {
    pub path: String,
    pub bytes: u64,
    pub is_dir: bool,
}

/// What the agent knows about its root filesystem and the RAM its overlay uses.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OverlayFacts {
    pub root_is_overlay: bool,
    pub root_fstype: String,
    pub root_source: String,
    pub lowerdirs: Vec<String>,
    pub upperdir: String,
    pub workdir: String,
    pub upper_fstype: String,
    pub upper_source: String,
    pub upper_mount_point: String,
    pub size_bytes: u64,
    pub used_bytes: u64,
    pub avail_bytes: u64,
    pub inodes_total: u64,
    pub inodes_free: u64,
    pub growth_bytes_per_second: f64,
    pub seconds_to_full: Option<u64>,
    pub largest_paths: Vec<PathUsage>,
    pub whiteouts: u64,
    pub walked_entries: u64,
    pub walk_truncated: bool,
    pub error: String,
}

impl OverlayFacts {
    /// Used share of the upper filesystem in percent, if its size is known.
    pub fn used_percent(&self) -> Option<f64> {
        (self.size_bytes > 0).then(|| self.used_bytes as f64 * 100.0 / self.size_bytes as f64)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryFacts {
    pub total_bytes: u64,
    pub available_bytes: u64,
    pub shmem_bytes: u64,
}

/// The generation a node booted, from the stamp in its mounted lower layer
/// and the lower layer's mount source.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootedGeneration {
    pub stamp: Option<GenerationRef>,
    pub lower_source: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub hostname: String,
    pub boot_mac: Option<MacAddr>,
    pub addresses: Vec<String>,
    pub kernel: String,
    pub uptime_seconds: u64,
    pub agent_version: String,
    pub boot_id: String,
}

/// Everything one agent report carries.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub collected_at_unix_ms: i64,
    pub identity: Identity,
    pub overlay: OverlayFacts,
    pub memory: MemoryFacts,
    pub host_keys: Vec<HostKey>,
    pub checks: Vec<Check>,
    pub booted: BootedGeneration,
}

impl Report {
    /// Ready means every check passed or does not apply.
    pub fn is_ready(&self) -> bool {
        self.checks.iter().all(|c| c.status != CheckStatus::Fail)
    }

    /// The names of the failing checks, in report order.
    pub fn failing_checks(&self) -> Vec<&str> {
        self.checks
            .iter()
            .filter(|c| c.status == CheckStatus::Fail)
            .map(|c| c.name.as_str())
            .collect()
    }
}

/// A node's state as the coordinator sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeState {
    /// In the inventory, never enrolled.
    Unknown,
    /// Enrollment waits for an administrator's approval.
    Pending,
    /// Enrolled and streaming, no report yet.
    Connected,
    Ready,
    NotReady,
    Stale,
    Lost,
}

impl NodeState {
    pub const ALL: [NodeState; 7] = [
        NodeState::Unknown,
        NodeState::Pending,
        NodeState::Connected,
        NodeState::Ready,
        NodeState::NotReady,
        NodeState::Stale,
        NodeState::Lost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Unknown => "unknown",
            NodeState::Pending => "pending",
            NodeState::Connected => "connected",
            NodeState::Ready => "ready",
            NodeState::NotReady => "not-ready",
            NodeState::Stale => "stale",
            NodeState::Lost => "lost",
        }
    }
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NodeState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NodeState::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown node state {s:?}"))
    }
}

/// What happened, for the event log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    CoordinatorStarted,
    Enrolled,
    EnrollPending,
    EnrollRefused,
    Approved,
    Rearmed,
    Connected,
    Disconnected,
    Ready,
    NotReady,
    Stale,
    Lost,
    CertRenewed,
    StreamRefused,
    OverlayThreshold,
    InventoryReloaded,
    AdminCertIssued,
    AdminRefused,
    /// A node's next-boot generation changed.
    Assigned,
    /// Boot files (DHCP, menus, exports) were written.
    BootFilesApplied,
    /// A machine the inventory does not know asked the DHCP server for a lease.
    Discovered,
    /// `dfleet image gc` deleted image generations.
    GenerationsDeleted,
    /// `dfleet image retire` withdrew a generation.
    GenerationRetired,
    /// A rollout started, paused, resumed, was aborted or ended.
    Rollout,
    /// A node moved to another step of a rollout.
    RolloutStep,
    /// `dfleet reboots freeze`: no new reboot starts.
    RebootsFrozen,
    RebootsThawed,
    /// A node was ordered to reboot (through its agent or its power command).
    RebootOrdered,
    /// `dfleet exec`: a command started on a node set, and its results.
    Exec,
    /// SSH host key material given to a node (a certificate, its managed
    /// key) or rotated.
    HostKeys,
    /// A node's host key request could not be answered.
    HostKeysFailed,
    /// A host key problem the coordinator noticed: the same key on several
    /// nodes, a managed key that changed, a certificate close to expiry, a
    /// node that fell back to a per-boot key.
    HostKeyWarning,
    /// `dfleet backup` took a backup.
    Backup,
    /// A restored coordinator adopted a node's certificate issued after the
    /// backup's snapshot.
    CertAdopted,
}

impl EventKind {
    pub const ALL: [EventKind; 34] = [
        EventKind::CoordinatorStarted,
        EventKind::Enrolled,
        EventKind::EnrollPending,
        EventKind::EnrollRefused,
        EventKind::Approved,
        EventKind::Rearmed,
        EventKind::Connected,
        EventKind::Disconnected,
        EventKind::Ready,
        EventKind::NotReady,
        EventKind::Stale,
        EventKind::Lost,
        EventKind::CertRenewed,
        EventKind::StreamRefused,
        EventKind::OverlayThreshold,
        EventKind::InventoryReloaded,
        EventKind::AdminCertIssued,
        EventKind::AdminRefused,
        EventKind::Assigned,
        EventKind::BootFilesApplied,
        EventKind::Discovered,
        EventKind::GenerationsDeleted,
        EventKind::GenerationRetired,
        EventKind::Rollout,
        EventKind::RolloutStep,
        EventKind::RebootsFrozen,
        EventKind::RebootsThawed,
        EventKind::RebootOrdered,
        EventKind::Exec,
        EventKind::HostKeys,
        EventKind::HostKeysFailed,
        EventKind::HostKeyWarning,
        EventKind::Backup,
        EventKind::CertAdopted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::CoordinatorStarted => "coordinator-started",
            EventKind::Enrolled => "enrolled",
            EventKind::EnrollPending => "enroll-pending",
            EventKind::EnrollRefused => "enroll-refused",
            EventKind::Approved => "approved",
            EventKind::Rearmed => "rearmed",
            EventKind::Connected => "connected",
            EventKind::Disconnected => "disconnected",
            EventKind::Ready => "ready",
            EventKind::NotReady => "not-ready",
            EventKind::Stale => "stale",
            EventKind::Lost => "lost",
            EventKind::CertRenewed => "cert-renewed",
            EventKind::StreamRefused => "stream-refused",
            EventKind::OverlayThreshold => "overlay-threshold",
            EventKind::InventoryReloaded => "inventory-reloaded",
            EventKind::AdminCertIssued => "admin-cert-issued",
            EventKind::AdminRefused => "admin-refused",
            EventKind::Assigned => "assigned",
            EventKind::BootFilesApplied => "boot-files-applied",
            EventKind::Discovered => "discovered",
            EventKind::GenerationsDeleted => "generations-deleted",
            EventKind::GenerationRetired => "generation-retired",
            EventKind::Rollout => "rollout",
            EventKind::RolloutStep => "rollout-step",
            EventKind::RebootsFrozen => "reboots-frozen",
            EventKind::RebootsThawed => "reboots-thawed",
            EventKind::RebootOrdered => "reboot-ordered",
            EventKind::Exec => "exec",
            EventKind::HostKeys => "host-keys",
            EventKind::HostKeysFailed => "host-keys-failed",
            EventKind::HostKeyWarning => "host-key-warning",
            EventKind::Backup => "backup",
            EventKind::CertAdopted => "cert-adopted",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown event kind {s:?}"))
    }
}

/// One entry of the event log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub id: u64,
    pub at_unix_ms: i64,
    pub kind: EventKind,
    /// The node it concerns, empty for coordinator-wide events.
    pub node: String,
    pub detail: String,
    /// Who caused it: `uid:1000`, `admin:alice`, `node:cn01`, or empty.
    pub actor: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_accepts_both_separators_and_any_case() {
        let a: MacAddr = "52:54:00:AB:cd:01".parse().unwrap();
        let b: MacAddr = "52-54-00-ab-CD-01".parse().unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "52:54:00:ab:cd:01");
        assert_eq!(a.pxelinux_form(), "01-52-54-00-ab-cd-01");
    }

    #[test]
    fn mac_rejects_malformed() {
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:01:02",
            "52:54:00:ab:cd:0g",
            "525:4:00:ab:cd:01",
            "52:54-00:ab:cd:01",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn node_names_follow_hostname_rules() {
        assert!("cn0001".parse::<NodeName>().is_ok());
        assert!("rack1-cn01".parse::<NodeName>().is_ok());
        for bad in ["", "-cn", "cn-", "CN01", "cn_01", "cn.01", &"a".repeat(64)] {
            assert!(bad.parse::<NodeName>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn generation_ref_round_trips() {
        let g: GenerationRef = "compute:7".parse().unwrap();
        assert_eq!(g.image, "compute");
        assert_eq!(g.generation, Generation(7));
        assert_eq!(g.to_string(), "compute:7");
        assert!("compute".parse::<GenerationRef>().is_err());
        assert!(":7".parse::<GenerationRef>().is_err());
        assert!("compute:x".parse::<GenerationRef>().is_err());
    }

    #[test]
    fn node_states_round_trip_through_text() {
        for s in NodeState::ALL {
            assert_eq!(s.as_str().parse::<NodeState>().unwrap(), s);
        }
    }

    #[test]
    fn event_kinds_round_trip_through_text() {
        for k in EventKind::ALL {
            assert_eq!(k.as_str().parse::<EventKind>().unwrap(), k);
        }
    }
}
