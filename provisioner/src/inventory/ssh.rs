//! The `[ssh]` table of `cluster.toml`: how nodes get their SSH host keys.
//!
//! ```toml
//! [ssh]
//! host_keys = "certificates"   # or "managed"; a group or node may say otherwise (ssh_host_keys)
//! cert_validity = "30d"        # the agent renews at two thirds
//! #cert_authority_hosts = ["cn*", "*.cluster.example"]   # default: every node's names and address
//! ```

use std::time::Duration;

use dfleet_proto::domain::HostKeyMode;
use toml::de::DeValue;

use super::SshConfig;
use super::doc::{self, Ctx, Need, Table};

pub const DEFAULT_CERT_VALIDITY: Duration = Duration::from_secs(30 * 86_400);

pub(super) fn ssh(ctx: &mut Ctx<'_>, root: &Table<'_, '_>) -> SshConfig {
    let defaults = SshConfig::default();
    let Some(t) = ctx.table(root, "ssh", Need::Optional) else {
        return defaults;
    };
    t.check_keys(ctx, &["host_keys", "cert_validity", "cert_authority_hosts"]);
    let host_keys = ctx
        .read(&t, "host_keys", Need::Optional, host_key_mode)
        .unwrap_or(defaults.host_keys);
    let cert_validity = ctx
        .read(
            &t,
            "cert_validity",
            Need::Optional,
            doc::duration(Duration::from_secs(3600)..=Duration::from_secs(5 * 365 * 86_400)),
        )
        .unwrap_or(defaults.cert_validity);
    let cert_authority_hosts = ctx
        .list(&t, "cert_authority_hosts", Need::Optional, host_pattern)
        .map(|l| l.into_iter().map(|(p, _)| p).collect())
        .unwrap_or_default();
    SshConfig {
        host_keys,
        cert_validity,
        cert_authority_hosts,
    }
}

/// `"certificates"` or `"managed"`.
pub(super) fn host_key_mode(value: &DeValue<'_>) -> Result<HostKeyMode, String> {
    let s = doc::string(value)?;
    s.parse()
}

/// A `known_hosts` host pattern: no spaces, no commas (they separate patterns), no `#`.
fn host_pattern(value: &DeValue<'_>) -> Result<String, String> {
    let s = doc::non_empty_string(value)?;
    if s.chars()
        .any(|c| c.is_whitespace() || c == ',' || c == '#' || c.is_control())
    {
        return Err(format!(
            "{s:?} is not a known_hosts host pattern: no spaces, ',' or '#' (give one pattern per item)"
        ));
    }
    Ok(s)
}
