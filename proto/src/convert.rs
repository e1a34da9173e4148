//! The one place where generated protobuf types and domain types meet.
//!
//! Domain → protobuf never fails. Protobuf → domain checks what the wire cannot
//! guarantee (enum values from a newer peer, MAC text, missing messages) and
//! says which field was wrong.

use crate::domain::{
    BootedGeneration, Check, CheckStatus, Event, EventKind, Generation, GenerationRef, HostKey,
    HostKeyMode, Identity, KeyOrigin, MemoryFacts, NodeState, OverlayFacts, PathUsage, Report,
};
use crate::pb;

/// A protobuf message that does not make a valid domain value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct ConvertError {
    pub field: &'static str,
    pub reason: String,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConvertError {
    ConvertError {
        field,
        reason: reason.into(),
    }
}

impl From<GenerationRef> for pb::GenerationRef {
    fn from(g: GenerationRef) -> Self {
        pb::GenerationRef {
            image: g.image,
            generation: g.generation.0,
        }
    }
}

impl TryFrom<pb::GenerationRef> for GenerationRef {
    type Error = ConvertError;
    fn try_from(g: pb::GenerationRef) -> Result<Self, Self::Error> {
        if g.image.is_empty() {
            return Err(invalid("generation.image", "empty image name"));
        }
        Ok(GenerationRef {
            image: g.image,
            generation: Generation(g.generation),
        })
    }
}

impl From<KeyOrigin> for pb::KeyOrigin {
    fn from(o: KeyOrigin) -> Self {
        match o {
            KeyOrigin::Image => pb::KeyOrigin::Image,
            KeyOrigin::Boot => pb::KeyOrigin::Boot,
            KeyOrigin::Missing => pb::KeyOrigin::Missing,
            KeyOrigin::Coordinator => pb::KeyOrigin::Coordinator,
            KeyOrigin::Certificate => pb::KeyOrigin::Certificate,
        }
    }
}

fn key_origin(raw: i32) -> Result<KeyOrigin, ConvertError> {
    match pb::KeyOrigin::try_from(raw) {
        Ok(pb::KeyOrigin::Image) => Ok(KeyOrigin::Image),
        Ok(pb::KeyOrigin::Boot) => Ok(KeyOrigin::Boot),
        Ok(pb::KeyOrigin::Missing) => Ok(KeyOrigin::Missing),
        Ok(pb::KeyOrigin::Coordinator) => Ok(KeyOrigin::Coordinator),
        Ok(pb::KeyOrigin::Certificate) => Ok(KeyOrigin::Certificate),
        Ok(pb::KeyOrigin::Unspecified) | Err(_) => {
            Err(invalid("host_key.origin", format!("unknown value {raw}")))
        }
    }
}

impl From<CheckStatus> for pb::CheckStatus {
    fn from(s: CheckStatus) -> Self {
        match s {
            CheckStatus::Pass => pb::CheckStatus::Pass,
            CheckStatus::Fail => pb::CheckStatus::Fail,
            CheckStatus::Skipped => pb::CheckStatus::Skipped,
        }
    }
}

fn check_status(raw: i32) -> Result<CheckStatus, ConvertError> {
    match pb::CheckStatus::try_from(raw) {
        Ok(pb::CheckStatus::Pass) => Ok(CheckStatus::Pass),
        Ok(pb::CheckStatus::Fail) => Ok(CheckStatus::Fail),
        Ok(pb::CheckStatus::Skipped) => Ok(CheckStatus::Skipped),
        Ok(pb::CheckStatus::Unspecified) | Err(_) => {
            Err(invalid("check.status", format!("unknown value {raw}")))
        }
    }
}

impl From<Report> for pb::Report {
    fn from(r: Report) -> Self {
        let o = r.overlay;
        pb::Report {
            collected_at_unix_ms: r.collected_at_unix_ms,
            identity: Some(pb::Identity {
                hostname: r.identity.hostname,
                boot_mac: r
                    .identity
                    .boot_mac
                    .map(|m| m.to_string())
                    .unwrap_or_default(),
                addresses: r.identity.addresses,
                kernel: r.identity.kernel,
                uptime_seconds: r.identity.uptime_seconds,
                agent_version: r.identity.agent_version,
                boot_id: r.identity.boot_id,
            }),
            overlay: Some(pb::OverlayFacts {
                root_is_overlay: o.root_is_overlay,
                root_fstype: o.root_fstype,
                root_source: o.root_source,
                lowerdirs: o.lowerdirs,
                upperdir: o.upperdir,
                workdir: o.workdir,
                upper_fstype: o.upper_fstype,
                upper_source: o.upper_source,
                upper_mount_point: o.upper_mount_point,
                size_bytes: o.size_bytes,
                used_bytes: o.used_bytes,
                avail_bytes: o.avail_bytes,
                inodes_total: o.inodes_total,
                inodes_free: o.inodes_free,
                growth_bytes_per_second: o.growth_bytes_per_second,
                seconds_to_full: o.seconds_to_full,
                largest_paths: o
                    .largest_paths
                    .into_iter()
                    .map(|p| pb::PathUsage {
                        path: p.path,
                        bytes: p.bytes,
                        is_dir: p.is_dir,
                    })
                    .collect(),
                whiteouts: o.whiteouts,
                walked_entries: o.walked_entries,
                walk_truncated: o.walk_truncated,
                error: o.error,
            }),
            memory: Some(pb::MemoryFacts {
                total_bytes: r.memory.total_bytes,
                available_bytes: r.memory.available_bytes,
                shmem_bytes: r.memory.shmem_bytes,
            }),
            host_keys: r
                .host_keys
                .into_iter()
                .map(|k| pb::HostKey {
                    path: k.path,
                    key_type: k.key_type,
                    bits: k.bits,
                    fingerprint: k.fingerprint,
                    origin: pb::KeyOrigin::from(k.origin) as i32,
                    comment: k.comment,
                    cert_valid_before_unix: k.cert_valid_before_unix,
                })
                .collect(),
            checks: r
                .checks
                .into_iter()
                .map(|c| pb::Check {
                    name: c.name,
                    status: pb::CheckStatus::from(c.status) as i32,
                    detail: c.detail,
                })
                .collect(),
            booted: Some(pb::BootedGeneration {
                stamp: r.booted.stamp.map(Into::into),
                lower_source: r.booted.lower_source,
            }),
        }
    }
}

impl TryFrom<pb::Report> for Report {
    type Error = ConvertError;
    fn try_from(r: pb::Report) -> Result<Self, Self::Error> {
        let id = r.identity.unwrap_or_default();
        let boot_mac = if id.boot_mac.is_empty() {
            None
        } else {
            Some(
                id.boot_mac
                    .parse()
                    .map_err(|e| invalid("identity.boot_mac", format!("{e}")))?,
            )
        };
        let o = r.overlay.unwrap_or_default();
        let m = r.memory.unwrap_or_default();
        let booted = r.booted.unwrap_or_default();
        Ok(Report {
            collected_at_unix_ms: r.collected_at_unix_ms,
            identity: Identity {
                hostname: id.hostname,
                boot_mac,
                addresses: id.addresses,
                kernel: id.kernel,
                uptime_seconds: id.uptime_seconds,
                agent_version: id.agent_version,
                boot_id: id.boot_id,
            },
            overlay: OverlayFacts {
                root_is_overlay: o.root_is_overlay,
                root_fstype: o.root_fstype,
                root_source: o.root_source,
                lowerdirs: o.lowerdirs,
                upperdir: o.upperdir,
                workdir: o.workdir,
                upper_fstype: o.upper_fstype,
                upper_source: o.upper_source,
                upper_mount_point: o.upper_mount_point,
                size_bytes: o.size_bytes,
                used_bytes: o.used_bytes,
                avail_bytes: o.avail_bytes,
                inodes_total: o.inodes_total,
                inodes_free: o.inodes_free,
                growth_bytes_per_second: o.growth_bytes_per_second,
                seconds_to_full: o.seconds_to_full,
                largest_paths: o
                    .largest_paths
                    .into_iter()
                    .map(|p| PathUsage {
                        path: p.path,
                        bytes: p.bytes,
                        is_dir: p.is_dir,
                    })
                    .collect(),
                whiteouts: o.whiteouts,
                walked_entries: o.walked_entries,
                walk_truncated: o.walk_truncated,
                error: o.error,
            },
            memory: MemoryFacts {
                total_bytes: m.total_bytes,
                available_bytes: m.available_bytes,
                shmem_bytes: m.shmem_bytes,
            },
            host_keys: r
                .host_keys
                .into_iter()
                .map(|k| {
                    Ok(HostKey {
                        origin: key_origin(k.origin)?,
                        path: k.path,
                        key_type: k.key_type,
                        bits: k.bits,
                        fingerprint: k.fingerprint,
                        comment: k.comment,
                        cert_valid_before_unix: k.cert_valid_before_unix,
                    })
                })
                .collect::<Result<_, ConvertError>>()?,
            checks: r
                .checks
                .into_iter()
                .map(|c| {
                    Ok(Check {
                        status: check_status(c.status)?,
                        name: c.name,
                        detail: c.detail,
                    })
                })
                .collect::<Result<_, ConvertError>>()?,
            booted: BootedGeneration {
                stamp: booted.stamp.map(TryInto::try_into).transpose()?,
                lower_source: booted.lower_source,
            },
        })
    }
}

impl From<NodeState> for pb::NodeState {
    fn from(s: NodeState) -> Self {
        match s {
            NodeState::Unknown => pb::NodeState::Unknown,
            NodeState::Pending => pb::NodeState::Pending,
            NodeState::Connected => pb::NodeState::Connected,
            NodeState::Ready => pb::NodeState::Ready,
            NodeState::NotReady => pb::NodeState::NotReady,
            NodeState::Stale => pb::NodeState::Stale,
            NodeState::Lost => pb::NodeState::Lost,
        }
    }
}

/// Reads a node state off the wire.
pub fn node_state(raw: i32) -> Result<NodeState, ConvertError> {
    match pb::NodeState::try_from(raw) {
        Ok(pb::NodeState::Unknown) => Ok(NodeState::Unknown),
        Ok(pb::NodeState::Pending) => Ok(NodeState::Pending),
        Ok(pb::NodeState::Connected) => Ok(NodeState::Connected),
        Ok(pb::NodeState::Ready) => Ok(NodeState::Ready),
        Ok(pb::NodeState::NotReady) => Ok(NodeState::NotReady),
        Ok(pb::NodeState::Stale) => Ok(NodeState::Stale),
        Ok(pb::NodeState::Lost) => Ok(NodeState::Lost),
        Ok(pb::NodeState::Unspecified) | Err(_) => {
            Err(invalid("node.state", format!("unknown value {raw}")))
        }
    }
}

impl From<EventKind> for pb::EventKind {
    fn from(k: EventKind) -> Self {
        match k {
            EventKind::CoordinatorStarted => pb::EventKind::CoordinatorStarted,
            EventKind::Enrolled => pb::EventKind::Enrolled,
            EventKind::EnrollPending => pb::EventKind::EnrollPending,
            EventKind::EnrollRefused => pb::EventKind::EnrollRefused,
            EventKind::Approved => pb::EventKind::Approved,
            EventKind::Rearmed => pb::EventKind::Rearmed,
            EventKind::Connected => pb::EventKind::Connected,
            EventKind::Disconnected => pb::EventKind::Disconnected,
            EventKind::Ready => pb::EventKind::Ready,
            EventKind::NotReady => pb::EventKind::NotReady,
            EventKind::Stale => pb::EventKind::Stale,
            EventKind::Lost => pb::EventKind::Lost,
            EventKind::CertRenewed => pb::EventKind::CertRenewed,
            EventKind::StreamRefused => pb::EventKind::StreamRefused,
            EventKind::OverlayThreshold => pb::EventKind::OverlayThreshold,
            EventKind::InventoryReloaded => pb::EventKind::InventoryReloaded,
            EventKind::AdminCertIssued => pb::EventKind::AdminCertIssued,
            EventKind::AdminRefused => pb::EventKind::AdminRefused,
            EventKind::Assigned => pb::EventKind::Assigned,
            EventKind::BootFilesApplied => pb::EventKind::BootFilesApplied,
            EventKind::Discovered => pb::EventKind::Discovered,
            EventKind::GenerationsDeleted => pb::EventKind::GenerationsDeleted,
            EventKind::GenerationRetired => pb::EventKind::GenerationRetired,
            EventKind::Rollout => pb::EventKind::Rollout,
            EventKind::RolloutStep => pb::EventKind::RolloutStep,
            EventKind::RebootsFrozen => pb::EventKind::RebootsFrozen,
            EventKind::RebootsThawed => pb::EventKind::RebootsThawed,
            EventKind::RebootOrdered => pb::EventKind::RebootOrdered,
            EventKind::Exec => pb::EventKind::Exec,
            EventKind::HostKeys => pb::EventKind::HostKeys,
            EventKind::HostKeysFailed => pb::EventKind::HostKeysFailed,
            EventKind::HostKeyWarning => pb::EventKind::HostKeyWarning,
            EventKind::Backup => pb::EventKind::Backup,
            EventKind::CertAdopted => pb::EventKind::CertAdopted,
        }
    }
}

impl TryFrom<pb::EventKind> for EventKind {
    type Error = ConvertError;
    fn try_from(k: pb::EventKind) -> Result<Self, Self::Error> {
        Ok(match k {
            pb::EventKind::Unspecified => return Err(invalid("event.kind", "unspecified")),
            pb::EventKind::CoordinatorStarted => EventKind::CoordinatorStarted,
            pb::EventKind::Enrolled => EventKind::Enrolled,
            pb::EventKind::EnrollPending => EventKind::EnrollPending,
            pb::EventKind::EnrollRefused => EventKind::EnrollRefused,
            pb::EventKind::Approved => EventKind::Approved,
            pb::EventKind::Rearmed => EventKind::Rearmed,
            pb::EventKind::Connected => EventKind::Connected,
            pb::EventKind::Disconnected => EventKind::Disconnected,
            pb::EventKind::Ready => EventKind::Ready,
            pb::EventKind::NotReady => EventKind::NotReady,
            pb::EventKind::Stale => EventKind::Stale,
            pb::EventKind::Lost => EventKind::Lost,
            pb::EventKind::CertRenewed => EventKind::CertRenewed,
            pb::EventKind::StreamRefused => EventKind::StreamRefused,
            pb::EventKind::OverlayThreshold => EventKind::OverlayThreshold,
            pb::EventKind::InventoryReloaded => EventKind::InventoryReloaded,
            pb::EventKind::AdminCertIssued => EventKind::AdminCertIssued,
            pb::EventKind::AdminRefused => EventKind::AdminRefused,
            pb::EventKind::Assigned => EventKind::Assigned,
            pb::EventKind::BootFilesApplied => EventKind::BootFilesApplied,
            pb::EventKind::Discovered => EventKind::Discovered,
            pb::EventKind::GenerationsDeleted => EventKind::GenerationsDeleted,
            pb::EventKind::GenerationRetired => EventKind::GenerationRetired,
            pb::EventKind::Rollout => EventKind::Rollout,
            pb::EventKind::RolloutStep => EventKind::RolloutStep,
            pb::EventKind::RebootsFrozen => EventKind::RebootsFrozen,
            pb::EventKind::RebootsThawed => EventKind::RebootsThawed,
            pb::EventKind::RebootOrdered => EventKind::RebootOrdered,
            pb::EventKind::Exec => EventKind::Exec,
            pb::EventKind::HostKeys => EventKind::HostKeys,
            pb::EventKind::HostKeysFailed => EventKind::HostKeysFailed,
            pb::EventKind::HostKeyWarning => EventKind::HostKeyWarning,
            pb::EventKind::Backup => EventKind::Backup,
            pb::EventKind::CertAdopted => EventKind::CertAdopted,
        })
    }
}

impl From<Event> for pb::Event {
    fn from(e: Event) -> Self {
        pb::Event {
            id: e.id,
            at_unix_ms: e.at_unix_ms,
            kind: pb::EventKind::from(e.kind) as i32,
            node: e.node,
            detail: e.detail,
            actor: e.actor,
        }
    }
}

impl TryFrom<pb::Event> for Event {
    type Error = ConvertError;
    fn try_from(e: pb::Event) -> Result<Self, Self::Error> {
        let kind = pb::EventKind::try_from(e.kind)
            .map_err(|_| invalid("event.kind", format!("unknown value {}", e.kind)))?
            .try_into()?;
        Ok(Event {
            id: e.id,
            at_unix_ms: e.at_unix_ms,
            kind,
            node: e.node,
            detail: e.detail,
            actor: e.actor,
        })
    }
}

impl From<HostKeyMode> for pb::HostKeyMode {
    fn from(m: HostKeyMode) -> Self {
        match m {
            HostKeyMode::Certificates => pb::HostKeyMode::Certificates,
            HostKeyMode::Managed => pb::HostKeyMode::Managed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::MacAddr;

    fn sample_report() -> Report {
        Report {
            collected_at_unix_ms: 1_700_000_000_000,
            identity: Identity {
                hostname: "cn01".into(),
                boot_mac: Some("52:54:00:00:00:01".parse::<MacAddr>().unwrap()),
                addresses: vec!["10.0.0.1".into()],
                kernel: "6.1.0-28-amd64".into(),
                uptime_seconds: 42,
                agent_version: "0.1.0".into(),
                boot_id: "b".into(),
            },
            overlay: OverlayFacts {
                root_is_overlay: true,
                used_bytes: 10,
                size_bytes: 100,
                seconds_to_full: Some(9),
                largest_paths: vec![PathUsage {
                    path: "/var/log".into(),
                    bytes: 7,
                    is_dir: true,
                }],
                ..Default::default()
            },
            memory: MemoryFacts {
                total_bytes: 1,
                available_bytes: 2,
                shmem_bytes: 3,
            },
            host_keys: vec![HostKey {
                path: "/etc/ssh/ssh_host_ed25519_key".into(),
                key_type: "ED25519".into(),
                bits: 256,
                fingerprint: "SHA256:x".into(),
                origin: KeyOrigin::Certificate,
                comment: "root@cn01".into(),
                cert_valid_before_unix: 1_800_000_000,
            }],
            checks: vec![Check::fail(
                "generation",
                "booted compute:1, assigned compute:2",
            )],
            booted: BootedGeneration {
                stamp: Some("compute:1".parse().unwrap()),
                lower_source: "10.0.0.254:/srv/dfleet/images/compute/1".into(),
            },
        }
    }

    #[test]
    fn report_round_trips() {
        let r = sample_report();
        let back = Report::try_from(pb::Report::from(r.clone())).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn unknown_enum_values_are_refused_with_the_field() {
        let mut wire = pb::Report::from(sample_report());
        wire.host_keys[0].origin = 99;
        let err = Report::try_from(wire).unwrap_err();
        assert_eq!(err.field, "host_key.origin");
    }

    #[test]
    fn malformed_mac_names_the_field() {
        let mut wire = pb::Report::from(sample_report());
        wire.identity.as_mut().unwrap().boot_mac = "nope".into();
        assert_eq!(
            Report::try_from(wire).unwrap_err().field,
            "identity.boot_mac"
        );
    }

    #[test]
    fn every_event_kind_round_trips() {
        for kind in EventKind::ALL {
            let e = Event {
                id: 1,
                at_unix_ms: 2,
                kind,
                node: "cn01".into(),
                detail: String::new(),
                actor: String::new(),
            };
            assert_eq!(Event::try_from(pb::Event::from(e.clone())).unwrap(), e);
        }
    }

    #[test]
    fn every_node_state_round_trips() {
        use NodeState::*;
        for s in [Unknown, Pending, Connected, Ready, NotReady, Stale, Lost] {
            assert_eq!(node_state(pb::NodeState::from(s) as i32).unwrap(), s);
        }
    }
}
