//! SSH host keys: their type, fingerprint, and whether they come from the shared image.
//!
//! A private host key in the image is the same on every node (and readable by every node over
//! NFS), so the report says where each key lives. This reads through the merged root and hence
//! the lower layer: only the lower probe calls it.

use std::collections::BTreeSet;

use dfleet_proto::domain::{HostKey, KeyOrigin};

use crate::os::HostRoot;
use crate::parse::hostkey;

pub const SSH_DIR: &str = "/etc/ssh";

/// The overlay's layer directories, as node paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layers {
    pub upperdir: String,
    /// The top-most lower directory, if known.
    pub lowerdir: Option<String>,
}

/// Every `/etc/ssh/ssh_host_*_key` (or lone `.pub`), sorted by path.
///
/// Origin rules:
/// - private or public half missing, or the public half unreadable → `Missing`;
/// - overlay root, private key present in the upper directory → `Boot` (written since boot, lives
///   only in RAM) — unless the upper's public key equals the lower's, which means the image's key
///   was merely copied up (by a chmod, say) and is still the shared one → `Image`;
/// - overlay root, private key only in the lower → `Image`;
/// - no overlay: there is no shared lower to prove a key came from, and a key on a node's own disk
///   is node-local, so it is reported as `Boot` (made on this node) rather than raising the shared
///   image warning on a claim nobody can prove. (On a disk root it survives reboots, of course.)
///
/// `Coordinator` is set by the code that installs coordinator-issued keys, not here.
pub fn collect(root: &HostRoot, layers: Option<&Layers>) -> Vec<HostKey> {
    let names = match root.list_dir(SSH_DIR) {
        Ok(names) => names,
        Err(e) => {
            tracing::warn!("host keys: {e}");
            return Vec::new();
        }
    };
    let bases: BTreeSet<&str> = names
        .iter()
        .map(|n| n.strip_suffix(".pub").unwrap_or(n))
        .filter(|n| n.starts_with("ssh_host_") && n.ends_with("_key"))
        .collect();
    let installed = crate::sshkeys::SshKeys::new(root.clone()).installed();
    bases
        .into_iter()
        .map(|base| {
            let mut key = one_key(root, layers, base);
            // What the agent itself put in place says where it came from.
            if let Some(i) = &installed
                && key.path == crate::sshkeys::KEY
                && key.fingerprint == i.fingerprint
            {
                match i.origin.as_str() {
                    "certificate" => {
                        key.origin = KeyOrigin::Certificate;
                        key.cert_valid_before_unix = i.valid_before_unix;
                    }
                    "coordinator" => key.origin = KeyOrigin::Coordinator,
                    _ => key.origin = KeyOrigin::Boot,
                }
            }
            key
        })
        .collect()
}

fn one_key(root: &HostRoot, layers: Option<&Layers>, base: &str) -> HostKey {
    let path = format!("{SSH_DIR}/{base}");
    let pub_path = format!("{path}.pub");
    let parsed = root
        .read_to_string(&pub_path)
        .ok()
        .map(|text| hostkey::parse(&text));
    if let Some(Err(e)) = &parsed {
        tracing::warn!("host key {pub_path}: {e}");
    }
    let parsed = parsed.and_then(Result::ok);
    let private_present = root.exists(&path);

    let origin = match (&parsed, private_present, layers) {
        (None, _, _) | (_, false, _) => KeyOrigin::Missing,
        (Some(_), true, None) => KeyOrigin::Boot,
        (Some(_), true, Some(l)) => {
            let in_upper = format!("{}/etc/ssh/{base}", l.upperdir.trim_end_matches('/'));
            if root.exists(&in_upper) && !copied_up(root, l, base) {
                KeyOrigin::Boot
            } else {
                KeyOrigin::Image
            }
        }
    };
    // "ssh_host_ed25519_key" → "ed25519" when the public half cannot tell the type.
    let fallback_type = base
        .strip_prefix("ssh_host_")
        .and_then(|s| s.strip_suffix("_key"))
        .unwrap_or(base);
    match parsed {
        Some(k) => HostKey {
            path,
            key_type: k.key_type,
            bits: k.bits,
            fingerprint: k.fingerprint,
            origin,
            comment: k.comment,
            cert_valid_before_unix: 0,
        },
        None => HostKey {
            path,
            key_type: fallback_type.to_string(),
            bits: 0,
            fingerprint: String::new(),
            origin,
            comment: String::new(),
            cert_valid_before_unix: 0,
        },
    }
}

/// Whether the upper's public key is the lower's one, i.e. the image key copied up.
fn copied_up(root: &HostRoot, l: &Layers, base: &str) -> bool {
    let Some(lower) = &l.lowerdir else {
        return false;
    };
    let read = |dir: &str| {
        root.read_to_string(format!("{}/etc/ssh/{base}.pub", dir.trim_end_matches('/')))
            .ok()
            .and_then(|t| hostkey::parse(&t).ok())
            .map(|k| k.fingerprint)
    };
    match (read(&l.upperdir), read(lower)) {
        (Some(up), Some(low)) => up == low,
        _ => false,
    }
}
