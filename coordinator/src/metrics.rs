//! The Prometheus endpoint: per-node overlay, memory and readiness gauges and
//! the coordinator's own counters, in the Prometheus text exposition format.
//! node_exporter ignores overlay filesystems by default, so this is where an
//! administrator sees how much RAM each node's overlay eats.

use std::fmt::Write as _;

use dfleet_proto::domain::NodeState;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::fleet::{Command, FleetHandle, MetricsSnapshot, tokio_util_shutdown::Shutdown};
use crate::rollout::engine::{EngineHandle, StatusView};

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Escapes a label value as the text format requires.
fn label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", label(v));
            }
            self.out.push('}');
        }
        if value.is_finite() && value.fract() == 0.0 && value.abs() < 1e15 {
            let _ = writeln!(self.out, " {}", value as i64);
        } else {
            let _ = writeln!(self.out, " {value}");
        }
    }
}

/// The steps a rollout's nodes can be in, each always exported (a zero is
/// an answer, a missing series is not).
const STEPS: [&str; 9] = [
    "pending",
    "draining",
    "switching",
    "rebooting",
    "booting",
    "done",
    "failed",
    "skipped",
    "reverted",
];

/// The rollout families: the freeze switch, and the current (or last)
/// rollout's state, nodes by step and window.
/// `dfleet_refused_total{reason}`: what was refused before it reached the
/// fleet task (see `guard.rs`).
pub fn render_refused(counts: &[(crate::guard::Reason, u64)]) -> String {
    let mut out = String::new();
    let mut f = Family { out: &mut out };
    f.header(
        "dfleet_refused_total",
        "counter",
        "TLS handshakes, streams and messages refused before the fleet saw them, by reason.",
    );
    for (reason, n) in counts {
        f.sample(
            "dfleet_refused_total",
            &[("reason", reason.as_str())],
            *n as f64,
        );
    }
    out
}

pub fn render_rollout(v: &StatusView) -> String {
    let mut out = String::new();
    let mut f = Family { out: &mut out };
    f.header(
        "dfleet_reboots_frozen",
        "gauge",
        "1 while `dfleet reboots freeze` holds every new reboot.",
    );
    f.sample(
        "dfleet_reboots_frozen",
        &[],
        if v.frozen_by.is_empty() { 0.0 } else { 1.0 },
    );
    let Some((row, nodes)) = &v.rollout else {
        return out;
    };
    f.header(
        "dfleet_rollout_info",
        "gauge",
        "The current (or last) rollout: its id, target and state.",
    );
    f.sample(
        "dfleet_rollout_info",
        &[
            ("id", &row.id.to_string()),
            (
                "target",
                &row.target
                    .as_ref()
                    .map_or_else(|| "reboot".to_string(), |t| t.to_string()),
            ),
            ("state", &row.state),
        ],
        1.0,
    );
    f.header(
        "dfleet_rollout_nodes",
        "gauge",
        "Nodes of the current (or last) rollout by step.",
    );
    for step in STEPS {
        let n = nodes.iter().filter(|n| n.step == step).count();
        f.sample("dfleet_rollout_nodes", &[("step", step)], n as f64);
    }
    f.header(
        "dfleet_rollout_window_open",
        "gauge",
        "1 while the rollout's maintenance window lets new nodes start.",
    );
    f.sample(
        "dfleet_rollout_window_open",
        &[],
        if v.window_open { 1.0 } else { 0.0 },
    );
    out
}

/// Renders a snapshot in the text exposition format.
pub fn render(s: &MetricsSnapshot) -> String {
    let mut out = String::new();
    let mut f = Family { out: &mut out };
    type Getter = fn(&dfleet_proto::domain::Report) -> Option<f64>;
    let per_node: [(&str, &str, Getter); 10] = [
        (
            "dfleet_node_overlay_size_bytes",
            "Size of the filesystem holding the node's overlay upper layer (RAM).",
            |r| {
                r.overlay
                    .root_is_overlay
                    .then_some(r.overlay.size_bytes as f64)
            },
        ),
        (
            "dfleet_node_overlay_used_bytes",
            "Bytes used in the node's overlay upper layer filesystem.",
            |r| {
                r.overlay
                    .root_is_overlay
                    .then_some(r.overlay.used_bytes as f64)
            },
        ),
        (
            "dfleet_node_overlay_avail_bytes",
            "Bytes still available to the node's overlay upper layer.",
            |r| {
                r.overlay
                    .root_is_overlay
                    .then_some(r.overlay.avail_bytes as f64)
            },
        ),
        (
            "dfleet_node_overlay_inodes_total",
            "Inodes of the overlay upper layer filesystem.",
            |r| {
                r.overlay
                    .root_is_overlay
                    .then_some(r.overlay.inodes_total as f64)
            },
        ),
        (
            "dfleet_node_overlay_inodes_free",
            "Free inodes of the overlay upper layer filesystem.",
            |r| {
                r.overlay
                    .root_is_overlay
                    .then_some(r.overlay.inodes_free as f64)
            },
        ),
        (
            "dfleet_node_overlay_growth_bytes_per_second",
            "Recent growth of the overlay upper layer.",
            |r| {
                r.overlay
                    .root_is_overlay
                    .then_some(r.overlay.growth_bytes_per_second)
            },
        ),
        (
            "dfleet_node_overlay_seconds_to_full",
            "Estimated seconds until the overlay upper layer is full, at the recent growth rate.",
            |r| r.overlay.seconds_to_full.map(|s| s as f64),
        ),
        (
            "dfleet_node_overlay_whiteouts",
            "Files of the image deleted on the node (overlay whiteouts).",
            |r| {
                r.overlay
                    .root_is_overlay
                    .then_some(r.overlay.whiteouts as f64)
            },
        ),
        (
            "dfleet_node_memory_total_bytes",
            "MemTotal of the node.",
            |r| Some(r.memory.total_bytes as f64),
        ),
        (
            "dfleet_node_memory_available_bytes",
            "MemAvailable of the node.",
            |r| Some(r.memory.available_bytes as f64),
        ),
    ];
    for (name, help, get) in per_node {
        f.header(name, "gauge", help);
        for n in &s.nodes {
            if let Some(v) = n.report.as_ref().and_then(get) {
                f.sample(name, &[("node", n.entry.name.as_str())], v);
            }
        }
    }
    f.header(
        "dfleet_node_ready",
        "gauge",
        "1 when every readiness check of the node passes.",
    );
    for n in &s.nodes {
        let ready = n.state == NodeState::Ready;
        f.sample(
            "dfleet_node_ready",
            &[("node", n.entry.name.as_str())],
            f64::from(u8::from(ready)),
        );
    }
    f.header(
        "dfleet_node_host_key_warnings",
        "gauge",
        "SSH host key problems the coordinator flags on the node (see dfleet node show).",
    );
    for n in &s.nodes {
        f.sample(
            "dfleet_node_host_key_warnings",
            &[("node", n.entry.name.as_str())],
            n.host_key_warnings.len() as f64,
        );
    }
    f.header(
        "dfleet_host_key_warning_nodes",
        "gauge",
        "Nodes with an SSH host key flag of this kind: the same key as another node (shared), a managed key replaced on the node (changed), a host certificate close to or past its expiry (expiring, expired).",
    );
    for kind in ["shared", "changed", "expiring", "expired"] {
        let prefix = format!("{kind}: ");
        let nodes = s
            .nodes
            .iter()
            .filter(|n| n.host_key_warnings.iter().any(|w| w.starts_with(&prefix)))
            .count();
        f.sample(
            "dfleet_host_key_warning_nodes",
            &[("kind", kind)],
            nodes as f64,
        );
    }
    f.header(
        "dfleet_node_connected",
        "gauge",
        "1 while the node's agent holds its stream.",
    );
    for n in &s.nodes {
        f.sample(
            "dfleet_node_connected",
            &[("node", n.entry.name.as_str())],
            f64::from(u8::from(n.connected)),
        );
    }
    f.header(
        "dfleet_node_state",
        "gauge",
        "The node's state: 1 for the current one.",
    );
    for n in &s.nodes {
        for st in NodeState::ALL {
            let v = f64::from(u8::from(n.state == st));
            f.sample(
                "dfleet_node_state",
                &[("node", n.entry.name.as_str()), ("state", &st.to_string())],
                v,
            );
        }
    }
    f.header(
        "dfleet_node_last_seen_timestamp_seconds",
        "gauge",
        "When the coordinator last heard from the node.",
    );
    for n in s.nodes.iter().filter(|n| n.last_seen_ms > 0) {
        f.sample(
            "dfleet_node_last_seen_timestamp_seconds",
            &[("node", n.entry.name.as_str())],
            n.last_seen_ms as f64 / 1000.0,
        );
    }
    f.header(
        "dfleet_node_booted_generation_info",
        "gauge",
        "The image generation the node booted, from its stamp.",
    );
    for n in &s.nodes {
        if let Some(stamp) = n.report.as_ref().and_then(|r| r.booted.stamp.as_ref()) {
            let generation = stamp.generation.to_string();
            f.sample(
                "dfleet_node_booted_generation_info",
                &[
                    ("node", n.entry.name.as_str()),
                    ("image", &stamp.image),
                    ("generation", &generation),
                ],
                1.0,
            );
        }
    }
    f.header(
        "dfleet_connected_agents",
        "gauge",
        "Agents holding a stream now.",
    );
    f.sample("dfleet_connected_agents", &[], s.connected as f64);
    f.header(
        "dfleet_enrollments_accepted_total",
        "counter",
        "Enrollments that issued a certificate.",
    );
    f.sample(
        "dfleet_enrollments_accepted_total",
        &[],
        s.counters.enroll_accepted as f64,
    );
    f.header(
        "dfleet_enrollments_refused_total",
        "counter",
        "Enrollments refused, by reason.",
    );
    for (reason, n) in &s.counters.enroll_refused {
        f.sample(
            "dfleet_enrollments_refused_total",
            &[("reason", reason)],
            *n as f64,
        );
    }
    f.header(
        "dfleet_stream_errors_total",
        "counter",
        "Agent streams that ended with a transport error.",
    );
    f.sample(
        "dfleet_stream_errors_total",
        &[],
        s.counters.stream_errors as f64,
    );
    f.header(
        "dfleet_streams_refused_total",
        "counter",
        "Agent streams refused (wrong or stale certificate, wrong claim).",
    );
    f.sample(
        "dfleet_streams_refused_total",
        &[],
        s.counters.streams_refused as f64,
    );
    f.header("dfleet_reports_total", "counter", "Agent reports received.");
    f.sample("dfleet_reports_total", &[], s.counters.reports as f64);
    f.header(
        "dfleet_store_held_writes",
        "gauge",
        "Writes the store could not write yet (a full disk), held in memory and retried.",
    );
    f.sample("dfleet_store_held_writes", &[], s.store.held as f64);
    f.header(
        "dfleet_store_write_failures_total",
        "counter",
        "Batches of writes the store could not write.",
    );
    f.sample(
        "dfleet_store_write_failures_total",
        &[],
        s.store.failures as f64,
    );
    out
}

/// Serves `GET /metrics` until shutdown.
pub async fn serve(
    listener: TcpListener,
    fleet: FleetHandle,
    rollouts: EngineHandle,
    guard: std::sync::Arc<crate::guard::Guard>,
    mut shutdown: Shutdown,
) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: accept failed");
                    continue;
                }
            },
            _ = shutdown.wait() => return,
        };
        let fleet = fleet.clone();
        let rollouts = rollouts.clone();
        let guard = guard.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let fleet = fleet.clone();
                let rollouts = rollouts.clone();
                let guard = guard.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(respond(req, &fleet, &rollouts, &guard).await)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn respond(
    req: Request<hyper::body::Incoming>,
    fleet: &FleetHandle,
    rollouts: &EngineHandle,
    guard: &crate::guard::Guard,
) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, ctype: &str, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", ctype)
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default()
    };
    if req.method() != hyper::Method::GET || req.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "only GET /metrics is served here\n".into(),
        );
    }
    let rollout = rollouts
        .ask(|reply| crate::rollout::engine::Request::Status { reply })
        .await;
    match fleet.ask(|reply| Command::Metrics { reply }).await {
        Ok(snapshot) => {
            let mut body = render(&snapshot);
            if let Ok(r) = rollout {
                body.push_str(&render_rollout(&r));
            }
            body.push_str(&render_refused(&guard.counts()));
            reply(StatusCode::OK, CONTENT_TYPE, body)
        }
        Err(e) => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            format!("{}\n", e.message()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rollout_families_count_nodes_by_step() {
        use crate::store::{RolloutNodeRow, RolloutRow};
        let node = |name: &str, step: &str| RolloutNodeRow {
            rollout: 3,
            seq: 0,
            node: name.into(),
            step: step.into(),
            step_at_ms: 0,
            power: false,
            reason: String::new(),
            canary: false,
            wave: 1,
            previous: None,
            boot_id: String::new(),
            drained: false,
            forgiven: false,
        };
        let v = StatusView {
            rollout: Some((
                RolloutRow {
                    id: 3,
                    target: Some("compute:8".parse().unwrap()),
                    policy: "{}".into(),
                    state: "paused".into(),
                    reason: "canary cn01 failed".into(),
                    actor: "uid:0".into(),
                    created_ms: 0,
                    updated_ms: 0,
                },
                vec![
                    node("cn01", "failed"),
                    node("cn02", "pending"),
                    node("cn03", "pending"),
                ],
            )),
            frozen_by: "uid:0".into(),
            window_open: false,
            window_opens: None,
        };
        let text = render_rollout(&v);
        for line in [
            "dfleet_reboots_frozen 1",
            "dfleet_rollout_info{id=\"3\",target=\"compute:8\",state=\"paused\"} 1",
            "dfleet_rollout_nodes{step=\"pending\"} 2",
            "dfleet_rollout_nodes{step=\"failed\"} 1",
            "dfleet_rollout_nodes{step=\"done\"} 0",
            "dfleet_rollout_window_open 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} in\n{text}");
        }
        let none = render_rollout(&StatusView {
            rollout: None,
            frozen_by: String::new(),
            window_open: true,
            window_opens: None,
        });
        assert_eq!(
            none.lines()
                .filter(|l| !l.starts_with('#'))
                .collect::<Vec<_>>(),
            ["dfleet_reboots_frozen 0"]
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(label("x\ny"), "x\\ny");
    }

    #[test]
    fn every_family_has_help_and_type_and_valid_names() {
        let s = MetricsSnapshot {
            nodes: vec![],
            connected: 3,
            counters: Default::default(),
            now_ms: 0,
            store: Default::default(),
        };
        let text = render(&s);
        assert!(text.contains("dfleet_connected_agents 3\n"), "{text}");
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name: String = line
                .chars()
                .take_while(|c| *c != '{' && *c != ' ')
                .collect();
            assert!(
                name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{name}"
            );
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "no TYPE for {name}"
            );
        }
    }
}
