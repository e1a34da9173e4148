//! What the coordinator flags about a node's SSH host keys, from its latest
//! report: a managed key that is not the one the coordinator keeps, a host
//! certificate close to its expiry (or past it), and (with the whole fleet's
//! reports) the same key on several nodes. Pure functions; the fleet task
//! keeps the results, emits an event when a flag appears and shows them in
//! status and metrics.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use dfleet_proto::domain::{HostKey, HostKeyMode, KeyOrigin};

/// The key the agent makes at boot carries this comment (see the agent's
/// `sshkeys.rs`): it is not "changed", only not yet replaced.
pub const BOOT_KEY_COMMENT: &str = "dfleet-boot-key";

/// The path of the key dfleet manages on every node.
pub const KEY_PATH: &str = "/etc/ssh/ssh_host_ed25519_key";

/// One flag: its kind (`shared`, `changed`, `expiring`, `expired`) and what
/// to tell the administrator.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Flag {
    pub kind: &'static str,
    pub fingerprint: String,
    pub detail: String,
}

/// The flags of one node's own keys.
pub fn node_flags(
    mode: HostKeyMode,
    keys: &[HostKey],
    managed_fingerprint: Option<&str>,
    validity: Duration,
    now_unix: u64,
) -> Vec<Flag> {
    let mut out = Vec::new();
    for k in keys.iter().filter(|k| k.path == KEY_PATH) {
        match mode {
            HostKeyMode::Managed => {
                if let Some(expected) = managed_fingerprint
                    && k.fingerprint != expected
                    && k.comment != BOOT_KEY_COMMENT
                    && !k.fingerprint.is_empty()
                {
                    out.push(Flag {
                        kind: "changed",
                        fingerprint: k.fingerprint.clone(),
                        detail: format!(
                            "serves host key {} instead of its managed key {expected}",
                            k.fingerprint
                        ),
                    });
                }
            }
            HostKeyMode::Certificates => {
                if k.origin != KeyOrigin::Certificate || k.cert_valid_before_unix == 0 {
                    continue;
                }
                let left = k.cert_valid_before_unix.saturating_sub(now_unix);
                if left == 0 {
                    out.push(Flag {
                        kind: "expired",
                        fingerprint: k.fingerprint.clone(),
                        detail: "its host certificate has expired".into(),
                    });
                } else if Duration::from_secs(left) < validity / 4 {
                    out.push(Flag {
                        kind: "expiring",
                        fingerprint: k.fingerprint.clone(),
                        detail: format!(
                            "its host certificate expires in {} (not renewed)",
                            crate::cli::human_duration(left)
                        ),
                    });
                }
            }
        }
    }
    out
}

/// Which nodes report each fingerprint; kept up to date report by report.
#[derive(Debug, Default, Clone)]
pub struct KeyOwners {
    by_key: BTreeMap<String, BTreeSet<String>>,
    by_node: BTreeMap<String, Vec<String>>,
}

impl KeyOwners {
    /// Records `node`'s keys, replacing what it reported before.
    pub fn update(&mut self, node: &str, keys: &[HostKey]) {
        for fp in self.by_node.remove(node).unwrap_or_default() {
            if let Some(owners) = self.by_key.get_mut(&fp) {
                owners.remove(node);
                if owners.is_empty() {
                    self.by_key.remove(&fp);
                }
            }
        }
        let fps: Vec<String> = keys
            .iter()
            .filter(|k| k.origin != KeyOrigin::Missing && !k.fingerprint.is_empty())
            .map(|k| k.fingerprint.clone())
            .collect();
        for fp in &fps {
            self.by_key
                .entry(fp.clone())
                .or_default()
                .insert(node.to_string());
        }
        self.by_node.insert(node.to_string(), fps);
    }

    /// `node`'s keys that other nodes have too.
    pub fn shared(&self, node: &str) -> Vec<Flag> {
        let mut out = Vec::new();
        for fp in self.by_node.get(node).into_iter().flatten() {
            let others: Vec<String> = self
                .by_key
                .get(fp)
                .into_iter()
                .flatten()
                .filter(|n| n.as_str() != node)
                .cloned()
                .collect();
            if !others.is_empty() {
                out.push(Flag {
                    kind: "shared",
                    fingerprint: fp.clone(),
                    detail: format!(
                        "host key {fp} is also on {} ({})",
                        dfleet_provisioner::nodeset::fold(&others),
                        others.len()
                    ),
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(fp: &str, origin: KeyOrigin, comment: &str, valid_before: u64) -> HostKey {
        HostKey {
            path: KEY_PATH.into(),
            key_type: "ssh-ed25519".into(),
            bits: 256,
            fingerprint: fp.into(),
            origin,
            comment: comment.into(),
            cert_valid_before_unix: valid_before,
        }
    }

    #[test]
    fn a_managed_node_serving_another_key_is_flagged_but_not_its_boot_key() {
        let day = Duration::from_secs(86_400);
        let m = HostKeyMode::Managed;
        let ours = [key("SHA256:a", KeyOrigin::Coordinator, "root@cn01", 0)];
        assert!(node_flags(m, &ours, Some("SHA256:a"), day, 0).is_empty());
        let boot = [key("SHA256:b", KeyOrigin::Boot, BOOT_KEY_COMMENT, 0)];
        assert!(node_flags(m, &boot, Some("SHA256:a"), day, 0).is_empty());
        let other = [key("SHA256:c", KeyOrigin::Boot, "root@somewhere", 0)];
        let f = node_flags(m, &other, Some("SHA256:a"), day, 0);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].kind, "changed");
        assert!(
            f[0].detail
                .contains("SHA256:c instead of its managed key SHA256:a")
        );
        // Nothing known yet to compare with: no flag.
        assert!(node_flags(m, &other, None, day, 0).is_empty());
    }

    #[test]
    fn certificates_are_flagged_in_their_last_quarter_and_once_expired() {
        let c = HostKeyMode::Certificates;
        let validity = Duration::from_secs(40 * 3600);
        let cert = |before| [key("SHA256:a", KeyOrigin::Certificate, "", before)];
        assert!(node_flags(c, &cert(100 + 11 * 3600), None, validity, 100).is_empty());
        let f = node_flags(c, &cert(100 + 9 * 3600), None, validity, 100);
        assert_eq!(
            (f[0].kind, f[0].detail.as_str()),
            (
                "expiring",
                "its host certificate expires in 9h0m (not renewed)"
            )
        );
        assert_eq!(
            node_flags(c, &cert(50), None, validity, 100)[0].kind,
            "expired"
        );
    }

    #[test]
    fn the_same_key_on_several_nodes_is_flagged_on_each_until_it_goes() {
        let mut owners = KeyOwners::default();
        let k = |fp: &str| [key(fp, KeyOrigin::Image, "", 0)];
        owners.update("cn01", &k("SHA256:img"));
        owners.update("cn02", &k("SHA256:img"));
        owners.update("cn03", &k("SHA256:own"));
        let f = owners.shared("cn01");
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].detail, "host key SHA256:img is also on cn02 (1)");
        assert!(owners.shared("cn03").is_empty());
        owners.update("cn02", &k("SHA256:new"));
        assert!(owners.shared("cn01").is_empty());
        // A missing key is no key.
        owners.update("cn04", &[key("SHA256:new", KeyOrigin::Missing, "", 0)]);
        assert!(owners.shared("cn02").is_empty());
    }
}
