//! Property-based fuzzing of what the coordinator decodes from agents: any
//! bytes as an `AgentMessage` (and an `EnrollRequest`), random damage to
//! well-formed messages, and the conversion of a decoded report into the
//! domain type the fleet keeps. Nothing may panic, and a length prefix that
//! claims more than the bytes hold is an error, never an allocation of that
//! size. Thousands of cases each.

use dfleet_proto::domain::{Check, HostKey, KeyOrigin, PathUsage, Report};
use dfleet_proto::pb;
use proptest::prelude::*;
use prost::Message;

/// What the coordinator does with a decoded agent message before the fleet
/// task sees it.
fn handle(msg: pb::AgentMessage) {
    if let Some(pb::agent_message::Kind::Report(r)) = msg.kind
        && let Ok(report) = Report::try_from(r)
    {
        // A converted report converts back and again to the same thing.
        let again = Report::try_from(pb::Report::from(report.clone()));
        assert_eq!(again.ok(), Some(report));
    }
}

/// A report with some of everything, encoded.
fn sample() -> Vec<u8> {
    let mut r = Report::default();
    r.identity.hostname = "cn01".into();
    r.identity.boot_id = "b".into();
    r.overlay.largest_paths = vec![PathUsage {
        path: "/var/log/big".into(),
        bytes: 1 << 30,
        is_dir: false,
    }];
    r.checks = vec![Check::fail("slurmd", "inactive")];
    r.host_keys = vec![HostKey {
        path: "/etc/ssh/ssh_host_ed25519_key".into(),
        key_type: "ssh-ed25519".into(),
        bits: 256,
        fingerprint: "SHA256:x".into(),
        comment: "root@cn01".into(),
        origin: KeyOrigin::Certificate,
        cert_valid_before_unix: 1,
    }];
    pb::AgentMessage {
        kind: Some(pb::agent_message::Kind::Report(pb::Report::from(r))),
    }
    .encode_to_vec()
}

proptest! {
    #![proptest_config(ProptestConfig {
        // Nothing is written into the source tree.
        failure_persistence: None,
        ..ProptestConfig::with_cases(4096)
    })]

    #[test]
    fn any_bytes_decode_to_a_message_or_an_error(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        if let Ok(msg) = pb::AgentMessage::decode(bytes.as_slice()) {
            handle(msg);
        }
        let _ = pb::EnrollRequest::decode(bytes.as_slice());
    }

    #[test]
    fn a_damaged_report_decodes_or_fails_cleanly(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = sample();
        for (at, value) in &flips {
            let i = at.index(bytes.len());
            bytes[i] = *value;
        }
        bytes.truncate(cut.index(bytes.len() + 1).max(1));
        if let Ok(msg) = pb::AgentMessage::decode(bytes.as_slice()) {
            handle(msg);
        }
    }
}

#[test]
fn a_length_beyond_the_bytes_is_an_error() {
    // Field 2 (report), length-delimited, claiming 2^35 bytes.
    let bytes = [0x12, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01, 0x00];
    assert!(pb::AgentMessage::decode(&bytes[..]).is_err());
    // A repeated field inside claiming far more than the buffer.
    let bytes = [0x12, 0x04, 0x0a, 0xff, 0xff, 0x7f];
    assert!(pb::AgentMessage::decode(&bytes[..]).is_err());
}

#[test]
fn the_sample_decodes() {
    let msg = pb::AgentMessage::decode(sample().as_slice()).unwrap();
    handle(msg);
}
