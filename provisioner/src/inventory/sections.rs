//! The settings tables of `cluster.toml`: `[cluster]`, `[enrollment]`, `[health]` and `[[checks]]`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use super::doc::{self, Ctx, Need, Table};
use super::{
    CheckCommand, ClusterConfig, DEFAULT_ADMIN_GROUP, DEFAULT_ADMIN_SOCKET, DEFAULT_CHECK_TIMEOUT,
    DEFAULT_COORDINATOR_NAME, DEFAULT_REPORT_INTERVAL, EnrollmentConfig, EnrollmentPolicy,
    HealthConfig,
};

const DAY: Duration = Duration::from_secs(86_400);
const MS: Duration = Duration::from_millis(1);
/// Counts (rates, queue lengths) above this are typos rather than settings.
const MAX_COUNT: u64 = 1_000_000;

pub(super) fn cluster(ctx: &mut Ctx<'_>, root: &Table<'_, '_>) -> Option<ClusterConfig> {
    let t = ctx.table(root, "cluster", Need::Required)?;
    t.check_keys(
        ctx,
        &[
            "name",
            "state_dir",
            "listen",
            "metrics_listen",
            "admin_socket",
            "admin_group",
            "coordinator_name",
            "report_interval",
        ],
    );
    let name = ctx.read(&t, "name", Need::Required, doc::non_empty_string);
    let state_dir = ctx.read(&t, "state_dir", Need::Required, doc::absolute_path);
    let listen = ctx.list(&t, "listen", Need::Required, doc::socket_addr);
    if let (Some([]), Some(value)) = (listen.as_deref(), t.get("listen")) {
        ctx.report(
            &value.span(),
            t.field("listen"),
            "at least one listen address is required",
        );
    }
    let metrics_listen = ctx.read(&t, "metrics_listen", Need::Optional, doc::socket_addr);
    let admin_socket = ctx
        .read(&t, "admin_socket", Need::Optional, doc::absolute_path)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ADMIN_SOCKET));
    let admin_group = ctx
        .read(&t, "admin_group", Need::Optional, doc::non_empty_string)
        .unwrap_or_else(|| DEFAULT_ADMIN_GROUP.to_string());
    let coordinator_name = ctx
        .read(&t, "coordinator_name", Need::Optional, dns_name)
        .unwrap_or_else(|| DEFAULT_COORDINATOR_NAME.to_string());
    let report_interval = ctx
        .read(
            &t,
            "report_interval",
            Need::Optional,
            doc::duration(MS..=DAY),
        )
        .unwrap_or(DEFAULT_REPORT_INTERVAL);
    Some(ClusterConfig {
        name: name?,
        state_dir: state_dir?,
        listen: listen?.into_iter().map(|(addr, _)| addr).collect(),
        metrics_listen,
        admin_socket,
        admin_group,
        coordinator_name,
        report_interval,
    })
}

pub(super) fn enrollment(ctx: &mut Ctx<'_>, root: &Table<'_, '_>) -> EnrollmentConfig {
    let defaults = EnrollmentConfig::default();
    let Some(t) = ctx.table(root, "enrollment", Need::Optional) else {
        return defaults;
    };
    t.check_keys(
        ctx,
        &[
            "policy",
            "cert_lifetime",
            "rate_per_second",
            "burst",
            "pending_max",
        ],
    );
    let count = |ctx: &mut Ctx<'_>, key: &str| {
        ctx.read(&t, key, Need::Optional, doc::integer(1..=MAX_COUNT))
    };
    EnrollmentConfig {
        policy: ctx
            .read(&t, "policy", Need::Optional, policy)
            .unwrap_or(defaults.policy),
        cert_lifetime: ctx
            .read(
                &t,
                "cert_lifetime",
                Need::Optional,
                doc::duration(Duration::from_secs(1)..=30 * DAY),
            )
            .unwrap_or(defaults.cert_lifetime),
        // MAX_COUNT fits in u32, so these conversions cannot fail.
        rate_per_second: count(ctx, "rate_per_second")
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(defaults.rate_per_second),
        burst: count(ctx, "burst")
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(defaults.burst),
        pending_max: count(ctx, "pending_max")
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(defaults.pending_max),
    }
}

pub(super) fn health(ctx: &mut Ctx<'_>, root: &Table<'_, '_>) -> HealthConfig {
    let defaults = HealthConfig::default();
    let Some(t) = ctx.table(root, "health", Need::Optional) else {
        return defaults;
    };
    t.check_keys(
        ctx,
        &[
            "stale_after",
            "lost_after",
            "overlay_used_warn_percent",
            "overlay_time_to_full_warn",
        ],
    );
    let positive = || doc::duration(MS..=Duration::MAX);
    let stale = ctx.read(&t, "stale_after", Need::Optional, positive());
    let lost = ctx.read(&t, "lost_after", Need::Optional, positive());
    // A bad value was reported already; comparing its stand-in default would only add noise.
    let both_valid = (stale.is_some() || t.get("stale_after").is_none())
        && (lost.is_some() || t.get("lost_after").is_none());
    let stale_after = stale.unwrap_or(defaults.stale_after);
    let lost_after = lost.unwrap_or(defaults.lost_after);
    if both_valid && lost_after <= stale_after {
        // Point at whichever of the two the operator wrote, preferring `lost_after`.
        let key = if t.get("lost_after").is_some() {
            "lost_after"
        } else {
            "stale_after"
        };
        let line = t.value_line(ctx, key).unwrap_or_else(|| t.line(ctx));
        ctx.report_line(
            line,
            t.field(key),
            format!(
                "lost_after ({}) must be longer than stale_after ({})",
                crate::duration::format_duration(lost_after),
                crate::duration::format_duration(stale_after)
            ),
        );
    }
    HealthConfig {
        stale_after,
        lost_after,
        overlay_used_warn_percent: ctx
            .read(
                &t,
                "overlay_used_warn_percent",
                Need::Optional,
                doc::integer(1..=100),
            )
            .and_then(|n| u8::try_from(n).ok())
            .unwrap_or(defaults.overlay_used_warn_percent),
        overlay_time_to_full_warn: ctx
            .read(&t, "overlay_time_to_full_warn", Need::Optional, positive())
            .unwrap_or(defaults.overlay_time_to_full_warn),
    }
}

pub(super) fn checks(ctx: &mut Ctx<'_>, root: &Table<'_, '_>) -> Vec<CheckCommand> {
    let mut out = Vec::new();
    let mut first_line_of: HashMap<String, usize> = HashMap::new();
    for t in ctx.tables(root, "checks").into_iter().flatten() {
        t.check_keys(ctx, &["name", "command", "timeout"]);
        let name = ctx.read(&t, "name", Need::Required, doc::non_empty_string);
        let command = ctx.argv(&t, "command", Need::Required);
        let timeout = ctx
            .read(
                &t,
                "timeout",
                Need::Optional,
                doc::duration(MS..=Duration::MAX),
            )
            .unwrap_or(DEFAULT_CHECK_TIMEOUT);
        if let Some(name) = &name {
            let line = t.value_line(ctx, "name").unwrap_or_else(|| t.line(ctx));
            if let Some(first) = first_line_of.get(name) {
                let message = format!("duplicate check name {name:?} (first used at line {first})");
                ctx.report_line(line, t.field("name"), message);
            } else {
                first_line_of.insert(name.clone(), line);
            }
        }
        if let (Some(name), Some(command)) = (name, command) {
            out.push(CheckCommand {
                name,
                command: command.into_iter().map(|(word, _)| word).collect(),
                timeout,
            });
        }
    }
    out
}

fn policy(value: &toml::de::DeValue<'_>) -> Result<EnrollmentPolicy, String> {
    match doc::string(value)?.as_str() {
        "inventory" => Ok(EnrollmentPolicy::Inventory),
        "manual" => Ok(EnrollmentPolicy::Manual),
        other => Err(format!(
            "unknown enrollment policy {other:?}: expected \"inventory\" or \"manual\""
        )),
    }
}

/// A DNS name as used for the TLS server name or the boot network's domain.
pub(super) fn dns_name(value: &toml::de::DeValue<'_>) -> Result<String, String> {
    let s = doc::string(value)?;
    if !is_dns_name(&s) {
        return Err(format!(
            "invalid DNS name {s:?}: expected dot-separated labels of letters, digits and '-'"
        ));
    }
    Ok(s)
}

/// Whether `s` is dot-separated labels of letters, digits and '-'.
pub(super) fn is_dns_name(s: &str) -> bool {
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    s.len() <= 253 && s.split('.').all(label_ok)
}
