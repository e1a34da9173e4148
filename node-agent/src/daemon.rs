//! The agent's life: enroll once per boot, hold one stream to the coordinator,
//! report on a jittered interval (and at once when the overlay moves), answer
//! orders, renew the certificate at two thirds of its life, and come back
//! with capped, jittered backoff whenever the coordinator goes away.

use std::future::Future;
use std::time::Duration;

use dfleet_proto::domain::{GenerationRef, Report};
use dfleet_proto::pb;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep, sleep_until};
use tokio_stream::wrappers::ReceiverStream;

use crate::collect::Collector;
use crate::config::{FileConfig, backoff, jittered};
use crate::link::{Coordinator, Credentials, LinkError, error_chain, new_key_and_csr, unix_now};
use crate::os::HostRoot;

/// The longest wait between two attempts to reach the coordinator.
const BACKOFF_CAP: Duration = Duration::from_secs(60);
/// How often the cheap overlay usage probe runs between full reports.
const CHANGE_POLL: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(
        "no coordinator address: set `coordinator` in the agent's config or boot with dfleet.coordinator=HOST:PORT"
    )]
    NoCoordinator,
    #[error("reading the cluster CA certificate {path}: {source}")]
    Ca {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Link(#[from] LinkError),
}

/// Why a session with the coordinator ended.
enum End {
    Shutdown,
    /// The certificate is no good any more: enroll again.
    Reenroll(String),
    /// The connection failed; retry with backoff.
    Lost(String),
}

/// Logs the coordinator's unreachability once, not once per retry.
#[derive(Default)]
struct Reachability {
    failures: u32,
    last: String,
}

impl Reachability {
    fn failed(&mut self, what: &str, why: &str) {
        self.failures += 1;
        if self.failures == 1 || why != self.last {
            tracing::warn!(
                "{what}: {why} (retrying with backoff; logged again only when the reason changes)"
            );
            self.last = why.to_string();
        }
    }

    fn ok(&mut self) {
        if self.failures > 0 {
            tracing::info!(
                attempts = self.failures,
                "the coordinator is reachable again"
            );
        }
        self.failures = 0;
        self.last.clear();
    }

    fn delay(&self) -> Duration {
        backoff(
            self.failures.saturating_sub(1),
            BACKOFF_CAP,
            fastrand::f64(),
        )
    }
}

/// The running agent.
pub struct Agent {
    cfg: FileConfig,
    host: HostRoot,
    collector: Collector,
    coordinator: Coordinator,
    assigned: Option<GenerationRef>,
    report_interval: Duration,
    change_bytes: u64,
    /// Fleet-wide commands running now, to cancel by order id.
    running: crate::exec::Running,
    /// SSH host keys, when the node runs sshd.
    ssh: Option<SshState>,
}

/// How long a booting node's sshd waits for host key material from the
/// coordinator before it starts with this boot's own key.
pub const HOST_KEY_WAIT: Duration = Duration::from_secs(30);

/// How long a connected agent with sshd holds its first report for the
/// coordinator's host key answer.
const FIRST_REPORT_WAIT: Duration = Duration::from_secs(5);

/// The agent's side of the node's SSH host keys.
struct SshState {
    keys: crate::sshkeys::SshKeys,
    /// This boot's key (the one to certify).
    public: String,
    /// Told once the coordinator's material is in place.
    settled: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Agent {
    pub fn new(cfg: FileConfig, collector: Collector) -> Result<Agent, AgentError> {
        let host = HostRoot::new(cfg.root.clone());
        let addr = match &cfg.coordinator {
            Some(a) => a.clone(),
            None => crate::parse::cmdline::parse(
                &host.read_to_string("/proc/cmdline").unwrap_or_default(),
            )
            .ok()
            .and_then(|c| c.coordinator)
            .ok_or(AgentError::NoCoordinator)?,
        };
        let ca_pem = std::fs::read(&cfg.ca_cert).map_err(|source| AgentError::Ca {
            path: cfg.ca_cert.clone(),
            source,
        })?;
        let coordinator = Coordinator {
            addr,
            server_name: cfg.server_name.clone(),
            ca_pem,
            bind: cfg.bind,
        };
        Ok(Agent {
            cfg,
            host,
            collector,
            coordinator,
            assigned: None,
            report_interval: Duration::from_secs(10),
            change_bytes: 16 << 20,
            running: crate::exec::Running::default(),
            ssh: None,
        })
    }

    /// Runs until `shutdown` resolves. Never fails because the coordinator is
    /// unreachable: it keeps trying.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
        tokio::pin!(shutdown);
        // First, so that sshd's wait for the agent is bounded from the start.
        self.start_ssh();
        let first = self.collector.collect(None).await;
        let mac = first
            .identity
            .boot_mac
            .map(|m| m.to_string())
            .unwrap_or_default();
        let boot_id = first.identity.boot_id.clone();
        tracing::info!(coordinator = %self.coordinator.addr, mac, boot_id, "dfleet-agent starting");
        let mut reach = Reachability::default();
        loop {
            let creds = match Credentials::load(&self.cfg.state_dir, &boot_id) {
                Some(c) => c,
                None => tokio::select! {
                    c = self.enroll(&mac, &boot_id, &mut reach) => c?,
                    _ = &mut shutdown => return Ok(()),
                },
            };
            match self
                .session(creds, &mac, &boot_id, &mut reach, &mut shutdown)
                .await
            {
                End::Shutdown => return Ok(()),
                End::Reenroll(why) => {
                    tracing::warn!(
                        reason = why,
                        "the coordinator no longer accepts this certificate; enrolling again"
                    );
                    let _ = std::fs::remove_file(self.cfg.state_dir.join("node.meta"));
                    reach.failed("enrollment", &why);
                }
                End::Lost(why) => reach.failed("coordinator unreachable", &why),
            }
            tokio::select! {
                _ = sleep(reach.delay()) => {}
                _ = &mut shutdown => return Ok(()),
            }
        }
    }

    /// Puts this boot's host key in place for sshd and tells systemd the
    /// agent is ready (which lets sshd start) once the coordinator's
    /// material is installed, or after [`HOST_KEY_WAIT`] without it.
    fn start_ssh(&mut self) {
        let keys = crate::sshkeys::SshKeys::new(self.host.clone());
        if !keys.has_sshd() {
            notify_ready();
            return;
        }
        let public = match keys.boot_key(false) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "making this boot's SSH host key");
                notify_ready();
                return;
            }
        };
        if keys.installed().is_some_and(|i| i.origin != "boot") {
            // The agent restarted within this boot: sshd has (or starts
            // with) the coordinator's material already.
            notify_ready();
            self.ssh = Some(SshState {
                keys,
                public,
                settled: None,
            });
            return;
        }
        let (settled, wait) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            tokio::select! {
                _ = wait => {}
                () = sleep(HOST_KEY_WAIT) => tracing::warn!(
                    "no host keys from the coordinator within {}s: sshd starts with this boot's own key",
                    HOST_KEY_WAIT.as_secs()
                ),
            }
            notify_ready();
        });
        self.ssh = Some(SshState {
            keys,
            public,
            settled: Some(settled),
        });
    }

    /// The request for this node's host key material, if it runs sshd.
    fn host_key_request(&self, mode: i32) -> Option<pb::AgentMessage> {
        let ssh = self.ssh.as_ref()?;
        let public_keys = match pb::HostKeyMode::try_from(mode) {
            Ok(pb::HostKeyMode::Managed) => Vec::new(),
            _ => vec![ssh.public.clone()],
        };
        Some(pb::AgentMessage {
            kind: Some(pb::agent_message::Kind::HostKeyRequest(
                pb::HostKeyRequest { public_keys },
            )),
        })
    }

    /// Installs the coordinator's host key material and has sshd serve it;
    /// returns when to ask again (a certificate's renewal at two thirds of
    /// its life, or soon after a failure).
    async fn install_host_keys(&mut self, answer: &pb::HostKeys) -> Option<Instant> {
        let ssh = self.ssh.as_mut()?;
        let installed = ssh.keys.install(answer, &ssh.public);
        // sshd may start now, with these files. Told before any restart of
        // it below, which would otherwise wait for this agent's start (the
        // unit orders the agent before sshd).
        if let Some(settled) = ssh.settled.take() {
            let _ = settled.send(());
        }
        notify_ready();
        let served = match installed {
            Ok(i) => ssh.keys.serve(&i).await.map(|()| i),
            Err(e) => Err(e),
        };
        match served {
            Ok(installed) => {
                tracing::info!(
                    origin = installed.origin,
                    fingerprint = installed.fingerprint,
                    "SSH host key in place"
                );
                crate::sshkeys::renew_in(installed.valid_before_unix, unix_now() as u64)
                    .map(|d| Instant::now() + d)
            }
            Err(e) => {
                tracing::warn!(error = %e, "host keys from the coordinator");
                // Asked again in a while; the report says what is missing.
                Some(Instant::now() + Duration::from_secs(60))
            }
        }
    }

    /// Makes a new key pair for this boot (its certificate is asked for next).
    fn rotate_host_key(&mut self) -> Result<String, String> {
        let Some(ssh) = self.ssh.as_mut() else {
            return Err("this node runs no sshd".into());
        };
        let public = ssh.keys.boot_key(true).map_err(|e| e.to_string())?;
        ssh.public = public;
        Ok("a new host key pair; its certificate is asked for".into())
    }

    /// Enrolls until it gets a certificate, retrying with backoff.
    async fn enroll(
        &self,
        mac: &str,
        boot_id: &str,
        reach: &mut Reachability,
    ) -> Result<Credentials, AgentError> {
        let (key, csr) = new_key_and_csr()?;
        let mut waiting_logged = false;
        loop {
            match self.coordinator.enroll(&key, &csr, mac, boot_id).await {
                Ok(Ok(creds)) => {
                    reach.ok();
                    creds.save(&self.cfg.state_dir, boot_id)?;
                    tracing::info!(node = creds.node, "enrolled");
                    return Ok(creds);
                }
                Ok(Err((reason, retry))) => {
                    reach.ok();
                    if !waiting_logged {
                        tracing::info!(%reason, "enrollment pending");
                        waiting_logged = true;
                    }
                    sleep(retry).await;
                    continue;
                }
                Err(e) => reach.failed("enrollment", &e.to_string()),
            }
            sleep(reach.delay()).await;
        }
    }

    async fn report(&mut self) -> Report {
        self.collector.collect(self.assigned.as_ref()).await
    }

    async fn session(
        &mut self,
        mut creds: Credentials,
        mac: &str,
        boot_id: &str,
        reach: &mut Reachability,
        shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> End {
        let channel = match self.coordinator.channel(Some(&creds), false).await {
            Ok(c) => c,
            Err(e) => return End::Lost(e.to_string()),
        };
        let (tx, rx) = mpsc::channel::<pb::AgentMessage>(16);
        let send = |kind| pb::AgentMessage { kind: Some(kind) };
        let hello = pb::Hello {
            node: creds.node.clone(),
            mac: mac.to_string(),
            boot_id: boot_id.to_string(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            protocol: dfleet_proto::PROTOCOL_REVISION,
        };
        let _ = tx.send(send(pb::agent_message::Kind::Hello(hello))).await;
        let mut client = pb::agent_client::AgentClient::new(channel);
        let mut inbound = match client.connect(ReceiverStream::new(rx)).await {
            Ok(r) => r.into_inner(),
            Err(s) => return ended(&s),
        };
        let host_key_mode = match inbound.message().await {
            Ok(Some(pb::CoordinatorMessage {
                kind: Some(pb::coordinator_message::Kind::Welcome(w)),
            })) => {
                let mode = w.host_key_mode;
                self.assigned = w.assigned.and_then(|g| g.try_into().ok());
                self.report_interval =
                    Duration::from_secs(u64::from(w.report_interval_seconds.max(1)));
                self.change_bytes = w.report_change_bytes.max(1);
                self.collector.set_coordinator_checks(
                    w.checks
                        .into_iter()
                        .map(|c| crate::readiness::CheckCommand {
                            name: c.name,
                            argv: c.argv,
                            timeout: Duration::from_secs(u64::from(c.timeout_seconds.max(1))),
                        })
                        .collect(),
                );
                mode
            }
            Ok(_) => return End::Lost("the coordinator did not welcome the stream".into()),
            Err(s) => return ended(&s),
        };
        // When to ask for host key material again (a certificate's renewal).
        let mut host_keys_at: Option<Instant> = None;
        // A certificate of this boot that sshd serves is kept over a new
        // stream (sshd is not restarted for nothing); anything else is asked
        // for now.
        let certified = self.ssh.as_ref().and_then(|s| {
            (host_key_mode == pb::HostKeyMode::Certificates as i32)
                .then(|| s.keys.current_certificate(&s.public))
                .flatten()
                .filter(|&valid_before| valid_before > unix_now() as u64 + 60)
        });
        let mut asked = false;
        if let Some(valid_before) = certified {
            host_keys_at = crate::sshkeys::renew_in(valid_before, unix_now() as u64)
                .map(|d| Instant::now() + d);
        } else if let Some(request) = self.host_key_request(host_key_mode) {
            asked = tx.send(request).await.is_ok();
        }
        reach.ok();
        let host_keys = match (certified, asked) {
            (Some(_), _) => "certificate kept",
            (None, true) => "asked for",
            (None, false) => "none",
        };
        tracing::info!(node = creds.node, host_keys, "connected to the coordinator");

        let mut last_used = None;
        // With sshd, the first report waits (briefly) for the host key
        // answer, so that it does not show the boot key as a failing check.
        let mut next_report = match asked {
            true => Instant::now() + FIRST_REPORT_WAIT,
            false => Instant::now(),
        };
        let mut next_poll = Instant::now() + CHANGE_POLL;
        let mut renew_at = instant_at(creds.renew_at_unix());
        let mut pending_key: Option<rcgen::KeyPair> = None;
        loop {
            tokio::select! {
                _ = shutdown.as_mut() => return End::Shutdown,
                _ = sleep_until(next_report) => {
                    let report = self.report().await;
                    last_used = Some(report.overlay.used_bytes);
                    if tx.send(send(pb::agent_message::Kind::Report(report.into()))).await.is_err() {
                        return End::Lost("the stream closed".into());
                    }
                    next_report = Instant::now() + jittered(self.report_interval, fastrand::f64());
                }
                _ = sleep_until(next_poll) => {
                    next_poll = Instant::now() + CHANGE_POLL;
                    if let (Some(before), Some(now)) = (last_used, self.collector.upper_used_bytes())
                        && now.abs_diff(before) > self.change_bytes {
                            next_report = Instant::now();
                        }
                }
                _ = sleep_until(host_keys_at.unwrap_or_else(far_future)), if host_keys_at.is_some() => {
                    host_keys_at = None;
                    if let Some(request) = self.host_key_request(host_key_mode) {
                        let _ = tx.send(request).await;
                    }
                }
                _ = sleep_until(renew_at) => {
                    match new_key_and_csr() {
                        Ok((key, csr)) => {
                            pending_key = Some(key);
                            let _ = tx.send(send(pb::agent_message::Kind::Renew(pb::RenewRequest { csr_der: csr }))).await;
                        }
                        Err(e) => tracing::warn!(error = %e, "making a renewal request"),
                    }
                    // If no answer comes, ask again in a while.
                    renew_at = Instant::now() + Duration::from_secs(((creds.not_after_unix - unix_now()) / 6).clamp(1, 300) as u64);
                }
                msg = inbound.message() => {
                    let msg = match msg {
                        Ok(Some(m)) => m,
                        Ok(None) => return End::Lost("the coordinator closed the stream".into()),
                        Err(s) => return ended(&s),
                    };
                    match msg.kind {
                        Some(pb::coordinator_message::Kind::Renewed(r)) => {
                            let Some(key) = pending_key.take() else { continue };
                            creds = Credentials {
                                node: creds.node.clone(),
                                key_pem: key.serialize_pem(),
                                cert_der: r.cert_der,
                                not_after_unix: r.not_after_unix,
                                issued_at_unix: unix_now(),
                            };
                            if let Err(e) = creds.save(&self.cfg.state_dir, boot_id) {
                                tracing::warn!(error = %e, "keeping the renewed certificate");
                            }
                            renew_at = instant_at(creds.renew_at_unix());
                            tracing::debug!(not_after = creds.not_after_unix, "certificate renewed");
                        }
                        Some(pb::coordinator_message::Kind::Order(pb::Order {
                            id,
                            kind: Some(pb::order::Kind::Exec(e)),
                        })) => {
                            // Runs beside the stream; its output and result
                            // come back on it.
                            tokio::spawn(crate::exec::run(
                                self.host.clone(),
                                id,
                                e,
                                tx.clone(),
                                self.running.clone(),
                            ));
                        }
                        Some(pb::coordinator_message::Kind::Order(pb::Order {
                            id,
                            kind: Some(pb::order::Kind::ExecCancel(_)),
                        })) => {
                            let running = self.running.cancel(id);
                            tracing::info!(order = id, running, "exec cancelled by the coordinator");
                        }
                        Some(pb::coordinator_message::Kind::Order(pb::Order {
                            id,
                            kind: Some(pb::order::Kind::RotateHostKeys(_)),
                        })) => {
                            let result = self.rotate_host_key();
                            if result.is_ok()
                                && let Some(request) = self.host_key_request(host_key_mode)
                            {
                                let _ = tx.send(request).await;
                            }
                            let (ok, detail) = match result {
                                Ok(d) => (true, d),
                                Err(d) => (false, d),
                            };
                            let result = pb::OrderResult { order_id: id, ok, detail };
                            let _ = tx.send(send(pb::agent_message::Kind::OrderResult(result))).await;
                        }
                        Some(pb::coordinator_message::Kind::Order(order)) => {
                            let result = self
                                .obey(&creds.node, boot_id, order, &mut next_report)
                                .await;
                            if let Some(result) = result {
                                let _ = tx.send(send(pb::agent_message::Kind::OrderResult(result))).await;
                            }
                        }
                        Some(pb::coordinator_message::Kind::HostKeys(answer)) => {
                            host_keys_at = self.install_host_keys(&answer).await;
                            // The report shows the new key at once.
                            next_report = Instant::now();
                        }
                        Some(pb::coordinator_message::Kind::Welcome(_)) | None => {}
                    }
                }
            }
        }
    }

    /// Carries out one order from the coordinator's stream.
    async fn obey(
        &mut self,
        node: &str,
        boot_id: &str,
        order: pb::Order,
        next_report: &mut Instant,
    ) -> Option<pb::OrderResult> {
        let result = |ok: bool, detail: String| pb::OrderResult {
            order_id: order.id,
            ok,
            detail,
        };
        match order.kind? {
            pb::order::Kind::Refresh(_) => {
                *next_report = Instant::now();
                Some(result(true, "report sent".into()))
            }
            // Run beside the stream (see the stream loop), never here.
            pb::order::Kind::Exec(_)
            | pb::order::Kind::ExecCancel(_)
            | pb::order::Kind::RotateHostKeys(_) => None,
            pb::order::Kind::Assign(a) => {
                self.assigned = a.assigned.and_then(|g| g.try_into().ok());
                *next_report = Instant::now();
                Some(result(true, "assignment noted".into()))
            }
            pb::order::Kind::Reboot(r) => {
                // The agent reboots only on an order that names this node and
                // the generation it is expected to come back on.
                let target: Option<GenerationRef> = r.target.and_then(|g| g.try_into().ok());
                if r.node != node {
                    return Some(result(
                        false,
                        format!("refused: the order names {}, this is {node}", r.node),
                    ));
                }
                let Some(target) = target else {
                    return Some(result(
                        false,
                        "refused: the order names no target generation".into(),
                    ));
                };
                // An order for an earlier boot (sent again after this node
                // rebooted) must not reboot it twice.
                if !r.boot_id.is_empty() && r.boot_id != boot_id {
                    return Some(result(
                        false,
                        format!(
                            "refused: the order is for boot {}, this is boot {boot_id}",
                            r.boot_id
                        ),
                    ));
                }
                tracing::warn!(%target, "rebooting on the coordinator's order");
                let argv = self.cfg.reboot_command.clone();
                let outcome = self.host.run_command(&argv, Duration::from_secs(30)).await;
                Some(result(
                    outcome.success(),
                    format!("reboot towards {target}: {}", outcome.summary()),
                ))
            }
        }
    }
}

/// A tokio instant for a wall-clock time in Unix seconds.
fn instant_at(unix: i64) -> Instant {
    let delta = unix - unix_now();
    Instant::now() + Duration::from_secs(delta.max(0) as u64)
}

fn ended(s: &tonic::Status) -> End {
    let why = if s.message().is_empty() {
        format!("{:?}", s.code())
    } else {
        s.message().to_string()
    };
    match s.code() {
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => End::Reenroll(why),
        _ => End::Lost(match std::error::Error::source(s) {
            Some(src) => format!("{why}: {}", error_chain(src)),
            None => why,
        }),
    }
}

/// An instant no timer reaches.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

/// Tells systemd the agent is ready (`Type=notify`), if it runs under it.
fn notify_ready() {
    use std::os::unix::ffi::OsStrExt as _;
    use std::os::unix::net::UnixDatagram;
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = UnixDatagram::unbound().and_then(|sock| {
        let bytes = path.as_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt as _;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(b"READY=1", &addr)
        } else {
            sock.send_to(b"READY=1", std::path::Path::new(&path))
        }
    });
    if let Err(e) = sent {
        tracing::warn!(error = %e, "telling systemd the agent is ready");
    }
}
