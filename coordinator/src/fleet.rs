//! The fleet's state and its one owner.
//!
//! One task owns every node's record, the live agent streams, the pending
//! enrollments and the event log's head. Everything else talks to it through
//! [`Command`]s, so no lock is ever held across an await on one node's stream.
//! The decisions it makes (which state a node is in, whether an enrollment is
//! allowed) are pure functions below, tested with plain values.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dfleet_proto::domain::{
    BootedGeneration, Event, EventKind, GenerationRef, MacAddr, NodeState, Report,
};
use dfleet_proto::pb;
use dfleet_provisioner::inventory::{EnrollmentPolicy, Inventory, NodeEntry};
use tokio::sync::{broadcast, mpsc, oneshot};
use tonic::Status;

use crate::neighbour;
use crate::pki::{self, Ca, PeerIdentity};
use crate::store::{NodeRow, PendingRow, Store, Write};

/// Milliseconds since the Unix epoch, the timestamp of records and events.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Report at once when overlay usage moves by more than this.
pub const REPORT_CHANGE_BYTES: u64 = 16 << 20;

/// Lifetime of certificates issued to administrators.
/// A node's report alone (its state unchanged) is written to the store at
/// most this often; at 10,000 nodes reporting every 10 s that is 170 rows a
/// second instead of 1,000.
pub const REPORT_PERSIST_EVERY: Duration = Duration::from_secs(60);

pub const ADMIN_CERT_LIFETIME: Duration = Duration::from_secs(7 * 86400);

pub type Outbound = mpsc::Sender<Result<pb::CoordinatorMessage, Status>>;

/// A node an exec runs on, with its stream when it is connected.
pub type ExecTarget = (String, Option<(u64, Outbound)>);

/// An enrollment request as the RPC edge saw it.
#[derive(Debug, Clone)]
pub struct EnrollInput {
    pub mac: String,
    pub addr: SocketAddr,
    pub csr_der: Vec<u8>,
    pub boot_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnrollOutcome {
    Issued {
        node: String,
        cert_der: Vec<u8>,
        not_after_unix: i64,
    },
    Pending {
        reason: String,
        retry_after_seconds: u32,
    },
}

/// Why an enrollment was refused; the label of the refusal counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RefusalReason {
    RateLimited,
    UnprivilegedPort,
    UnknownMac,
    WrongAddress,
    NeighbourMismatch,
    AlreadyEnrolled,
    BadRequest,
    PendingFull,
    /// The store cannot be written (a full disk): the certificate could not
    /// be kept.
    StoreUnwritable,
}

impl RefusalReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::RateLimited => "rate_limited",
            RefusalReason::UnprivilegedPort => "unprivileged_port",
            RefusalReason::UnknownMac => "unknown_mac",
            RefusalReason::WrongAddress => "wrong_address",
            RefusalReason::NeighbourMismatch => "neighbour_mismatch",
            RefusalReason::AlreadyEnrolled => "already_enrolled",
            RefusalReason::BadRequest => "bad_request",
            RefusalReason::PendingFull => "pending_full",
            RefusalReason::StoreUnwritable => "store_unwritable",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: RefusalReason,
    pub message: String,
}

impl From<Refusal> for Status {
    fn from(r: Refusal) -> Status {
        match r.reason {
            RefusalReason::RateLimited | RefusalReason::PendingFull => {
                Status::resource_exhausted(r.message)
            }
            RefusalReason::BadRequest => Status::invalid_argument(r.message),
            RefusalReason::StoreUnwritable => Status::unavailable(r.message),
            _ => Status::permission_denied(r.message),
        }
    }
}

/// What the coordinator shows about one node.
#[derive(Debug, Clone)]
pub struct NodeView {
    pub entry: NodeEntry,
    pub state: NodeState,
    pub connected: bool,
    pub last_seen_ms: i64,
    pub cert_not_after: i64,
    pub report: Option<Report>,
    pub enrollment_refused: String,
    /// The boot its latest stream said it runs (its report may be older).
    pub boot_id: String,
    /// What is wrong with its SSH host keys ("shared: …", "expiring: …").
    pub host_key_warnings: Vec<String>,
}

/// Counters for the metrics endpoint.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    pub enroll_accepted: u64,
    pub enroll_refused: std::collections::BTreeMap<&'static str, u64>,
    pub stream_errors: u64,
    pub streams_refused: u64,
    pub reports: u64,
}

#[derive(Debug, Clone)]
pub struct MetricsSnapshot {
    pub nodes: Vec<NodeView>,
    pub connected: usize,
    pub counters: Counters,
    pub now_ms: i64,
    pub store: crate::store::Health,
}

/// Everything the fleet task can be asked to do.
#[derive(Debug)]
pub enum Command {
    Enroll {
        input: EnrollInput,
        reply: oneshot::Sender<Result<EnrollOutcome, Refusal>>,
    },
    Open {
        node: String,
        mac: String,
        boot_id: String,
        peer: PeerIdentity,
        addr: Option<SocketAddr>,
        tx: Outbound,
        kill: oneshot::Sender<Status>,
        reply: oneshot::Sender<Result<(u64, pb::Welcome), Status>>,
    },
    Report {
        node: String,
        conn: u64,
        report: Box<Report>,
    },
    Renew {
        node: String,
        conn: u64,
        csr_der: Vec<u8>,
    },
    OrderResult {
        node: String,
        conn: u64,
        result: pb::OrderResult,
    },
    Closed {
        node: String,
        conn: u64,
        reason: String,
    },
    StreamRefused {
        node: String,
        detail: String,
    },
    AdminRefused {
        actor: String,
        detail: String,
    },
    Status {
        names: Option<Vec<String>>,
        reply: oneshot::Sender<Vec<NodeView>>,
    },
    Show {
        node: String,
        reply: oneshot::Sender<Option<NodeView>>,
    },
    Pending {
        reply: oneshot::Sender<Vec<PendingRow>>,
    },
    Approve {
        node: String,
        actor: String,
        reply: oneshot::Sender<Result<String, String>>,
    },
    Rearm {
        node: String,
        actor: String,
        reply: oneshot::Sender<Result<String, String>>,
    },
    Inventory {
        inventory: Box<Inventory>,
        actor: String,
        reply: oneshot::Sender<String>,
    },
    IssueAdminCert {
        user: String,
        csr_der: Vec<u8>,
        actor: String,
        reply: oneshot::Sender<Result<pki::Issued, String>>,
    },
    Subscribe {
        reply: oneshot::Sender<(u64, broadcast::Receiver<Event>)>,
    },
    Metrics {
        reply: oneshot::Sender<MetricsSnapshot>,
    },
    /// Sets the generation `names` boot next.
    Assign {
        names: Vec<String>,
        target: GenerationRef,
        actor: String,
        reply: oneshot::Sender<Result<String, String>>,
    },
    /// The names of a node set, `@…` groups resolved from the inventory and
    /// the fleet's state (see [`FleetGroups`]).
    Resolve {
        set: String,
        reply: oneshot::Sender<Result<Vec<String>, String>>,
    },
    /// What the coordinator needs to answer a node's host key request.
    HostKeyContext {
        node: String,
        reply: oneshot::Sender<Option<HostKeyContext>>,
    },
    /// Every node of the inventory with what its known_hosts entry needs,
    /// and the cluster's name and `@cert-authority` patterns.
    SshHosts {
        reply: oneshot::Sender<SshHosts>,
    },
    /// For `dfleet ssh rotate`: each of `names` with its host key mode and,
    /// when connected, its stream; and an order id.
    SshTargets {
        names: Vec<String>,
        reply: oneshot::Sender<(u64, Vec<SshTarget>)>,
    },
    /// A node was given SSH host key material, or could not be: the event
    /// log records it.
    HostKeysIssued {
        node: String,
        detail: String,
        actor: String,
        failed: bool,
        /// A managed key sent: its fingerprint, what the node must serve.
        managed_fingerprint: Option<String>,
    },
    /// An order id for an exec, and the stream of each of `names` that has
    /// one: (node, Some((connection id, its outbound channel))).
    ExecTargets {
        names: Vec<String>,
        reply: oneshot::Sender<(u64, Vec<ExecTarget>)>,
    },
    /// What boot-file rendering needs: the inventory and the assignments.
    BootInputs {
        reply: oneshot::Sender<(Arc<Inventory>, HashMap<String, GenerationRef>)>,
    },
    /// The DHCP server's log shows a request from `mac`.
    Discovered {
        mac: MacAddr,
        line: String,
    },
    /// Records that boot files were written.
    BootApplied {
        detail: String,
        actor: String,
    },
    /// For every inventory node: the generation it is assigned and the one
    /// its last report says it booted. Read-only; `image gc` and
    /// `image list` use it.
    Generations {
        reply: oneshot::Sender<Vec<NodeGenerations>>,
    },
    /// Records that `image gc` deleted generations.
    GenerationsDeleted {
        detail: String,
        actor: String,
    },
    /// Records that `image retire` withdrew a generation.
    GenerationRetired {
        detail: String,
        actor: String,
    },
    /// Orders a node's agent to reboot towards `target`, for its boot
    /// `boot_id` (an agent that runs another boot refuses). Err when the
    /// node has no stream to send it on.
    Reboot {
        node: String,
        target: GenerationRef,
        boot_id: String,
        actor: String,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Records an event for another task (the rollout engine).
    Record {
        kind: EventKind,
        node: String,
        detail: String,
        actor: String,
    },
}

/// What one node has to do with image generations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeGenerations {
    pub node: String,
    /// What it boots next.
    pub assigned: Option<GenerationRef>,
    /// What its last report says it booted, whether it is connected, stale
    /// or lost: such a node may still run from that generation's tree.
    /// `None` when it never reported.
    pub booted: Option<BootedGeneration>,
}

/// A cheap, cloneable handle to the fleet task.
#[derive(Clone, Debug)]
pub struct FleetHandle {
    tx: mpsc::Sender<Command>,
}

impl FleetHandle {
    pub async fn send(&self, cmd: Command) -> Result<(), Status> {
        self.tx
            .send(cmd)
            .await
            .map_err(|_| Status::unavailable("the coordinator is shutting down"))
    }

    /// Sends a command built around a reply channel and waits for the reply.
    pub async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, Status> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx)).await?;
        rx.await
            .map_err(|_| Status::unavailable("the coordinator is shutting down"))
    }

    /// The names of a node set, groups resolved; a bad set is an
    /// invalid-argument error saying what is wrong.
    pub async fn resolve(&self, set: &str) -> Result<Vec<String>, Status> {
        self.ask(|reply| Command::Resolve {
            set: set.to_string(),
            reply,
        })
        .await?
        .map_err(Status::invalid_argument)
    }
}

/// The inventory's nodes as `dfleet ssh known-hosts` needs them.
#[derive(Debug, Clone)]
pub struct SshHosts {
    pub cluster: String,
    /// `[ssh] cert_authority_hosts`.
    pub patterns: Vec<String>,
    /// (name, principals, mode) in inventory order.
    pub nodes: Vec<(String, Vec<String>, dfleet_proto::domain::HostKeyMode)>,
}

/// A node `dfleet ssh rotate` acts on: its mode and, if connected, its stream.
pub type SshTarget = (String, dfleet_proto::domain::HostKeyMode, Option<Outbound>);

/// How one node gets its SSH host keys, from the inventory.
#[derive(Debug, Clone)]
pub struct HostKeyContext {
    pub mode: dfleet_proto::domain::HostKeyMode,
    /// Its name, FQDN and address: what its certificate is valid for.
    pub principals: Vec<String>,
    pub validity: std::time::Duration,
}

/// The state of one node that the fleet task keeps in memory.
#[derive(Debug, Clone)]
struct NodeRec {
    row: NodeRow,
    overlay_alarm: bool,
    enrollment_refused: String,
    /// What is wrong with its SSH host keys, from its latest report.
    host_key_flags: Vec<crate::ssh::flags::Flag>,
    /// When its row was last queued for the store (0: not since start).
    persisted_ms: i64,
}

struct Conn {
    id: u64,
    tx: Outbound,
    kill: oneshot::Sender<Status>,
    cert_not_after: i64,
}

/// A token bucket for enrollment requests.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last_ms: i64,
}

impl TokenBucket {
    pub fn new(rate: f64, burst: f64, now_ms: i64) -> Self {
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last_ms: now_ms,
        }
    }

    pub fn take(&mut self, now_ms: i64) -> bool {
        let elapsed = (now_ms - self.last_ms).max(0) as f64 / 1000.0;
        self.last_ms = now_ms;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The state a node is in given how long it has been silent. A node that
/// stops reporting goes stale, then lost, whether or not its stream is open.
pub fn silence_state(
    current: NodeState,
    last_seen_ms: i64,
    now_ms: i64,
    stale: Duration,
    lost: Duration,
) -> NodeState {
    if last_seen_ms == 0 {
        return current;
    }
    let silent = now_ms.saturating_sub(last_seen_ms);
    if silent > lost.as_millis() as i64 {
        NodeState::Lost
    } else if silent > stale.as_millis() as i64 {
        match current {
            NodeState::Lost => NodeState::Lost,
            _ => NodeState::Stale,
        }
    } else {
        current
    }
}

/// Whether a node may enroll again. One enrollment per boot: a node that
/// holds a live stream, or an unexpired certificate and is not lost, must be
/// rearmed by an administrator first. A lost node's certificate no longer
/// blocks it, so a node that crashed and rebooted comes back by itself once
/// the coordinator has given it up. Nor does a certificate that was never
/// presented on a stream (`unused`): that enrollment never finished, as when
/// the answer was lost or the agent died before keeping it.
pub fn may_reenroll(
    row: &NodeRow,
    streaming: bool,
    unused: bool,
    now_ms: i64,
) -> Result<(), String> {
    if row.rearmed {
        return Ok(());
    }
    if streaming {
        return Err(format!(
            "{} already holds a live stream; `dfleet node rearm {}` allows a new enrollment",
            row.name, row.name
        ));
    }
    if unused {
        return Ok(());
    }
    if row.cert_serial.is_some()
        && row.cert_not_after * 1000 > now_ms
        && row.state != NodeState::Lost
    {
        return Err(format!(
            "{} holds a certificate valid for {} more seconds from boot {}; `dfleet node rearm {}` allows a new enrollment",
            row.name,
            (row.cert_not_after * 1000 - now_ms) / 1000,
            if row.boot_id.is_empty() {
                "?"
            } else {
                &row.boot_id
            },
            row.name
        ));
    }
    Ok(())
}

/// Configuration the fleet task needs besides the inventory.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// Where the neighbour (ARP) table is read from.
    pub neighbour_table: std::path::PathBuf,
}

impl Default for FleetOptions {
    fn default() -> Self {
        FleetOptions {
            neighbour_table: "/proc/net/arp".into(),
        }
    }
}

pub struct Fleet {
    inv: Arc<Inventory>,
    nodes: HashMap<String, NodeRec>,
    pending: HashMap<String, PendingRow>,
    conns: HashMap<String, Conn>,
    next_conn: u64,
    last_event_id: u64,
    events: broadcast::Sender<Event>,
    store: Store,
    ca: Arc<Ca>,
    bucket: TokenBucket,
    counters: Counters,
    options: FleetOptions,
    assignments: HashMap<String, GenerationRef>,
    /// The id of the last order sent on any stream.
    next_order: u64,
    /// Which nodes report each SSH host key fingerprint.
    key_owners: crate::ssh::flags::KeyOwners,
    /// The fingerprint of each managed node's key as last sent to it.
    managed_fingerprints: HashMap<String, String>,
    /// Set when the store came from `dfleet restore`.
    restore: Option<crate::store::RestoreMark>,
    /// When this coordinator started.
    started_ms: i64,
    /// Nodes whose current certificate this coordinator issued and has not
    /// yet seen on a stream (kept in memory only: after a restart, such a
    /// certificate blocks a new enrollment like any other).
    unused_certs: HashSet<String>,
}

impl Fleet {
    /// Builds the fleet state from the inventory and what the store loaded.
    pub fn new(
        inv: Inventory,
        loaded: crate::store::Loaded,
        store: Store,
        ca: Arc<Ca>,
        options: FleetOptions,
    ) -> Fleet {
        let now = now_ms();
        let mut persisted: HashMap<String, NodeRow> = loaded
            .nodes
            .into_iter()
            .map(|r| (r.name.clone(), r))
            .collect();
        let mut nodes = HashMap::new();
        for entry in &inv.nodes {
            let name = entry.name.to_string();
            let row = persisted.remove(&name).unwrap_or_else(|| NodeRow {
                name: name.clone(),
                state: NodeState::Unknown,
                cert_serial: None,
                cert_not_after: 0,
                boot_id: String::new(),
                last_seen_ms: 0,
                rearmed: false,
                report: None,
                restored: false,
            });
            nodes.insert(
                name,
                NodeRec {
                    row,
                    overlay_alarm: false,
                    enrollment_refused: String::new(),
                    host_key_flags: Vec::new(),
                    persisted_ms: 0,
                },
            );
        }
        for gone in persisted.into_keys() {
            store.write(Write::RemoveNode(gone));
        }
        let assignments = loaded
            .assignments
            .into_iter()
            .filter(|(n, _)| nodes.contains_key(n))
            .collect();
        let (events, _) = broadcast::channel(4096);
        let bucket = TokenBucket::new(
            inv.enrollment.rate_per_second as f64,
            inv.enrollment.burst as f64,
            now,
        );
        Fleet {
            inv: Arc::new(inv),
            nodes,
            pending: loaded
                .pending
                .into_iter()
                .map(|p| (p.mac.clone(), p))
                .collect(),
            conns: HashMap::new(),
            next_conn: 1,
            last_event_id: loaded.last_event_id,
            events,
            store,
            ca,
            bucket,
            counters: Counters::default(),
            options,
            assignments,
            next_order: 0,
            key_owners: Default::default(),
            managed_fingerprints: HashMap::new(),
            restore: loaded.restore,
            started_ms: now,
            unused_certs: HashSet::new(),
        }
    }

    /// Runs the fleet task until every handle is dropped or `shutdown` fires.
    pub fn spawn(mut self, shutdown: tokio_util_shutdown::Shutdown) -> FleetHandle {
        let (tx, mut rx) = mpsc::channel(4096);
        let tick_every = (self.inv.health.stale_after / 4)
            .clamp(Duration::from_millis(100), Duration::from_secs(1));
        tokio::spawn(async move {
            self.emit(
                EventKind::CoordinatorStarted,
                "",
                format!("{} nodes in the inventory", self.nodes.len()),
                "",
            );
            let mut tick = tokio::time::interval(tick_every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut shutdown = shutdown;
            loop {
                tokio::select! {
                    cmd = rx.recv() => match cmd {
                        Some(cmd) => self.handle(cmd),
                        None => break,
                    },
                    _ = tick.tick() => self.tick(now_ms()),
                    _ = shutdown.wait() => break,
                }
            }
            for (_, conn) in self.conns.drain() {
                let _ = conn
                    .kill
                    .send(Status::unavailable("the coordinator is shutting down"));
            }
            // The reports not written yet (see `report`), so a clean restart
            // starts from the latest.
            let behind: Vec<String> = self
                .nodes
                .iter()
                .filter(|(_, r)| r.row.last_seen_ms > r.persisted_ms)
                .map(|(n, _)| n.clone())
                .collect();
            for name in behind {
                self.persist(&name);
            }
            let _ = self.store.flush().await;
        });
        FleetHandle { tx }
    }

    fn emit(&mut self, kind: EventKind, node: &str, detail: impl Into<String>, actor: &str) {
        self.last_event_id += 1;
        let event = Event {
            id: self.last_event_id,
            at_unix_ms: now_ms(),
            kind,
            node: node.to_string(),
            detail: detail.into(),
            actor: actor.to_string(),
        };
        tracing::info!(id = event.id, kind = %kind, node, detail = %event.detail, actor, "event");
        self.store.write(Write::Event(event.clone()));
        let _ = self.events.send(event);
    }

    fn persist(&mut self, name: &str) {
        if let Some(rec) = self.nodes.get_mut(name) {
            rec.persisted_ms = now_ms();
            self.store.write(Write::Node(Box::new(rec.row.clone())));
        }
    }

    /// Moves a node to `state`, announcing the change once.
    fn set_state(&mut self, name: &str, state: NodeState, detail: String) {
        let Some(rec) = self.nodes.get_mut(name) else {
            return;
        };
        if rec.row.state == state {
            return;
        }
        rec.row.state = state;
        let kind = match state {
            NodeState::Ready => EventKind::Ready,
            NodeState::NotReady => EventKind::NotReady,
            NodeState::Stale => EventKind::Stale,
            NodeState::Lost => EventKind::Lost,
            NodeState::Pending => EventKind::EnrollPending,
            NodeState::Connected => EventKind::Connected,
            // A node only returns to unknown when it leaves the inventory.
            NodeState::Unknown => return,
        };
        self.emit(kind, name, detail, "");
        self.persist(name);
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Enroll { input, reply } => {
                let result = self.enroll(input);
                let _ = reply.send(result);
            }
            Command::Open {
                node,
                mac,
                boot_id,
                peer,
                addr,
                tx,
                kill,
                reply,
            } => {
                let result = self.open(node, mac, boot_id, peer, addr, tx, kill);
                let _ = reply.send(result);
            }
            Command::Report { node, conn, report } => self.report(&node, conn, *report),
            Command::Renew {
                node,
                conn,
                csr_der,
            } => self.renew(&node, conn, &csr_der),
            Command::OrderResult { node, conn, result } => {
                if self.is_current(&node, conn) {
                    tracing::info!(
                        node,
                        order = result.order_id,
                        ok = result.ok,
                        detail = result.detail,
                        "order result"
                    );
                }
            }
            Command::Closed { node, conn, reason } => self.closed(&node, conn, reason),
            Command::StreamRefused { node, detail } => {
                self.counters.streams_refused += 1;
                self.emit(EventKind::StreamRefused, &node, detail, "");
            }
            Command::AdminRefused { actor, detail } => {
                self.emit(EventKind::AdminRefused, "", detail, &actor);
            }
            Command::Status { names, reply } => {
                let views = match names {
                    None => self.inv.nodes.iter().filter_map(|e| self.view(e)).collect(),
                    Some(names) => names
                        .iter()
                        .filter_map(|n| self.inv.node(n))
                        .filter_map(|e| self.view(e))
                        .collect(),
                };
                let _ = reply.send(views);
            }
            Command::Show { node, reply } => {
                let view = self.inv.node(&node).and_then(|e| self.view(e));
                let _ = reply.send(view);
            }
            Command::Pending { reply } => {
                let mut rows: Vec<PendingRow> = self.pending.values().cloned().collect();
                rows.sort_by(|a, b| {
                    a.first_seen_ms
                        .cmp(&b.first_seen_ms)
                        .then(a.mac.cmp(&b.mac))
                });
                let _ = reply.send(rows);
            }
            Command::Approve { node, actor, reply } => {
                let _ = reply.send(self.approve(&node, &actor));
            }
            Command::Rearm { node, actor, reply } => {
                let _ = reply.send(self.rearm(&node, &actor));
            }
            Command::Inventory {
                inventory,
                actor,
                reply,
            } => {
                let _ = reply.send(self.replace_inventory(*inventory, &actor));
            }
            Command::IssueAdminCert {
                user,
                csr_der,
                actor,
                reply,
            } => {
                let result = self
                    .ca
                    .sign_admin(&csr_der, &user, ADMIN_CERT_LIFETIME)
                    .map_err(|e| e.to_string());
                if result.is_ok() {
                    self.emit(
                        EventKind::AdminCertIssued,
                        "",
                        format!("admin certificate for {user}"),
                        &actor,
                    );
                }
                let _ = reply.send(result);
            }
            Command::Subscribe { reply } => {
                let _ = reply.send((self.last_event_id, self.events.subscribe()));
            }
            Command::Assign {
                names,
                target,
                actor,
                reply,
            } => {
                let _ = reply.send(self.assign(&names, target, &actor));
            }
            Command::Resolve { set, reply } => {
                let r = dfleet_provisioner::nodeset::resolve(&set, MAX_SET, &FleetGroups(self))
                    .map_err(|e| e.to_string());
                let _ = reply.send(r);
            }
            Command::HostKeyContext { node, reply } => {
                let ctx = self.inv.node(&node).map(|entry| HostKeyContext {
                    mode: self.inv.host_key_mode(entry),
                    principals: crate::ssh::principals(
                        entry,
                        self.inv
                            .boot
                            .as_ref()
                            .and_then(|b| b.network.domain.as_deref()),
                    ),
                    validity: self.inv.ssh.cert_validity,
                });
                let _ = reply.send(ctx);
            }
            Command::SshHosts { reply } => {
                let domain = self
                    .inv
                    .boot
                    .as_ref()
                    .and_then(|b| b.network.domain.as_deref());
                let hosts = SshHosts {
                    cluster: self.inv.cluster.name.clone(),
                    patterns: self.inv.ssh.cert_authority_hosts.clone(),
                    nodes: self
                        .inv
                        .nodes
                        .iter()
                        .map(|e| {
                            (
                                e.name.as_str().to_string(),
                                crate::ssh::principals(e, domain),
                                self.inv.host_key_mode(e),
                            )
                        })
                        .collect(),
                };
                let _ = reply.send(hosts);
            }
            Command::SshTargets { names, reply } => {
                self.next_order += 1;
                let targets = names
                    .into_iter()
                    .filter_map(|name| {
                        let mode = self.inv.host_key_mode(self.inv.node(&name)?);
                        let stream = self.conns.get(&name).map(|c| c.tx.clone());
                        Some((name, mode, stream))
                    })
                    .collect();
                let _ = reply.send((self.next_order, targets));
            }
            Command::HostKeysIssued {
                node,
                detail,
                actor,
                failed,
                managed_fingerprint,
            } => {
                if let Some(fp) = managed_fingerprint {
                    self.managed_fingerprints.insert(node.clone(), fp);
                }
                let kind = if failed {
                    EventKind::HostKeysFailed
                } else {
                    EventKind::HostKeys
                };
                self.emit(kind, &node, detail, &actor);
            }
            Command::ExecTargets { names, reply } => {
                self.next_order += 1;
                let targets = names
                    .into_iter()
                    .map(|name| {
                        let conn = self.conns.get(&name).map(|c| (c.id, c.tx.clone()));
                        (name, conn)
                    })
                    .collect();
                let _ = reply.send((self.next_order, targets));
            }
            Command::BootInputs { reply } => {
                let _ = reply.send((self.inv.clone(), self.assignments.clone()));
            }
            Command::Discovered { mac, line } => self.discovered(mac, &line),
            Command::BootApplied { detail, actor } => {
                self.emit(EventKind::BootFilesApplied, "", detail, &actor);
            }
            Command::Generations { reply } => {
                let nodes = self
                    .inv
                    .nodes
                    .iter()
                    .map(|e| {
                        let name = e.name.as_str();
                        NodeGenerations {
                            node: name.to_string(),
                            assigned: self.assignments.get(name).cloned(),
                            booted: self
                                .nodes
                                .get(name)
                                .and_then(|r| r.row.report.as_ref())
                                .map(|r| r.booted.clone()),
                        }
                    })
                    .collect();
                let _ = reply.send(nodes);
            }
            Command::GenerationRetired { detail, actor } => {
                self.emit(EventKind::GenerationRetired, "", detail, &actor);
            }
            Command::GenerationsDeleted { detail, actor } => {
                self.emit(EventKind::GenerationsDeleted, "", detail, &actor);
            }
            Command::Reboot {
                node,
                target,
                boot_id,
                actor,
                reply,
            } => {
                let _ = reply.send(self.order_reboot(&node, target, boot_id, &actor));
            }
            Command::Record {
                kind,
                node,
                detail,
                actor,
            } => self.emit(kind, &node, detail, &actor),
            Command::Metrics { reply } => {
                let _ = reply.send(MetricsSnapshot {
                    nodes: self.inv.nodes.iter().filter_map(|e| self.view(e)).collect(),
                    connected: self.conns.len(),
                    counters: self.counters.clone(),
                    now_ms: now_ms(),
                    store: self.store.health(),
                });
            }
        }
    }

    /// A node's state as shown: unknown with an enrollment waiting is pending.
    fn state_of(&self, entry: &NodeEntry) -> Option<NodeState> {
        let rec = self.nodes.get(entry.name.as_str())?;
        let pending = self
            .pending
            .get(&entry.mac.to_string())
            .is_some_and(|p| !p.node.is_empty());
        Some(if rec.row.state == NodeState::Unknown && pending {
            NodeState::Pending
        } else {
            rec.row.state
        })
    }

    fn view(&self, entry: &NodeEntry) -> Option<NodeView> {
        let rec = self.nodes.get(entry.name.as_str())?;
        let state = self.state_of(entry)?;
        Some(NodeView {
            entry: entry.clone(),
            state,
            connected: self.conns.contains_key(entry.name.as_str()),
            last_seen_ms: rec.row.last_seen_ms,
            cert_not_after: rec.row.cert_not_after,
            report: rec.row.report.clone(),
            enrollment_refused: rec.enrollment_refused.clone(),
            boot_id: rec.row.boot_id.clone(),
            host_key_warnings: rec
                .host_key_flags
                .iter()
                .map(|f| format!("{}: {}", f.kind, f.detail))
                .collect(),
        })
    }

    fn refuse(&mut self, node: &str, reason: RefusalReason, message: String) -> Refusal {
        *self
            .counters
            .enroll_refused
            .entry(reason.as_str())
            .or_default() += 1;
        if let Some(rec) = self.nodes.get_mut(node) {
            rec.enrollment_refused = message.clone();
        }
        // Rate-limit refusals are not logged one by one: they come in
        // floods; nor are the store's, whose log could not be written.
        if !matches!(
            reason,
            RefusalReason::RateLimited | RefusalReason::StoreUnwritable
        ) {
            self.emit(EventKind::EnrollRefused, node, message.clone(), "");
        }
        Refusal { reason, message }
    }

    fn remember_pending(
        &mut self,
        mac: &str,
        ip: IpAddr,
        node: &str,
        reason: &str,
        public_key: Vec<u8>,
    ) -> Result<bool, Refusal> {
        let now = now_ms();
        let is_new = !self.pending.contains_key(mac);
        if is_new && self.pending.len() >= self.inv.enrollment.pending_max {
            let msg = format!(
                "the pending list is full ({} entries); approve or clear entries first",
                self.inv.enrollment.pending_max
            );
            return Err(self.refuse(node, RefusalReason::PendingFull, msg));
        }
        let row = self
            .pending
            .entry(mac.to_string())
            .or_insert_with(|| PendingRow {
                mac: mac.to_string(),
                ip: ip.to_string(),
                node: node.to_string(),
                reason: reason.to_string(),
                first_seen_ms: now,
                last_seen_ms: now,
                attempts: 0,
                public_key: public_key.clone(),
                approved: false,
            });
        if row.public_key != public_key {
            // A new key (the machine rebooted) voids an earlier approval.
            row.public_key = public_key;
            row.approved = false;
        }
        row.ip = ip.to_string();
        row.node = node.to_string();
        row.reason = reason.to_string();
        row.last_seen_ms = now;
        row.attempts += 1;
        self.store.write(Write::Pending(row.clone()));
        Ok(is_new)
    }

    fn enroll(&mut self, input: EnrollInput) -> Result<EnrollOutcome, Refusal> {
        let now = now_ms();
        if !self.bucket.take(now) {
            return Err(self.refuse(
                "",
                RefusalReason::RateLimited,
                "enrollment rate limit reached; retry later".into(),
            ));
        }
        if let Some(why) = self.store.refusing() {
            return Err(self.refuse(
                "",
                RefusalReason::StoreUnwritable,
                format!("enrollment deferred: {why}"),
            ));
        }
        let ip = input.addr.ip();
        if input.addr.port() >= 1024 {
            return Err(self.refuse(
                "",
                RefusalReason::UnprivilegedPort,
                format!(
                    "enrollment from {} refused: source port {} is not privileged (below 1024), so it may not come from root on the node",
                    input.addr,
                    input.addr.port()
                ),
            ));
        }
        let mac: MacAddr = match input.mac.parse() {
            Ok(m) => m,
            Err(e) => {
                return Err(self.refuse(
                    "",
                    RefusalReason::BadRequest,
                    format!("enrollment from {ip}: {e}"),
                ));
            }
        };
        let public_key = match pki::csr_public_key(&input.csr_der) {
            Ok(k) => k,
            Err(e) => {
                return Err(self.refuse(
                    "",
                    RefusalReason::BadRequest,
                    format!("enrollment from {ip} ({mac}): {e}"),
                ));
            }
        };
        let Some(entry) = self.inv.node_by_mac(&mac).cloned() else {
            let msg = format!(
                "unknown MAC {mac} from {ip}: not in the inventory (see `dfleet node pending`)"
            );
            self.remember_pending(&mac.to_string(), ip, "", "unknown MAC", public_key)?;
            return Err(self.refuse("", RefusalReason::UnknownMac, msg));
        };
        let name = entry.name.to_string();
        if IpAddr::V4(entry.ip) != ip {
            let msg = format!(
                "MAC {mac} belongs to {name} at {}, but the request came from {ip}",
                entry.ip
            );
            return Err(self.refuse(&name, RefusalReason::WrongAddress, msg));
        }
        if let Some(seen) = neighbour::lookup(&self.options.neighbour_table, ip)
            && seen != mac
        {
            let msg = format!("the neighbour table maps {ip} to {seen}, not to {name}'s MAC {mac}");
            return Err(self.refuse(&name, RefusalReason::NeighbourMismatch, msg));
        }
        let streaming = self.conns.contains_key(&name);
        let row = self.nodes.get(&name).map(|r| r.row.clone());
        if let Some(row) = &row
            && let Err(msg) = may_reenroll(row, streaming, self.unused_certs.contains(&name), now)
        {
            return Err(self.refuse(
                &name,
                RefusalReason::AlreadyEnrolled,
                format!("second enrollment refused: {msg}"),
            ));
        }
        if self.inv.enrollment.policy == EnrollmentPolicy::Manual {
            let approved = self
                .pending
                .get(&mac.to_string())
                .is_some_and(|p| p.approved && p.public_key == public_key && p.node == name);
            if !approved {
                let is_new = self.remember_pending(
                    &mac.to_string(),
                    ip,
                    &name,
                    "waiting for approval",
                    public_key,
                )?;
                if is_new {
                    self.emit(
                        EventKind::EnrollPending,
                        &name,
                        format!("{mac} from {ip}: `dfleet node approve {name}`"),
                        "",
                    );
                }
                return Ok(EnrollOutcome::Pending {
                    reason: format!("waiting for `dfleet node approve {name}`"),
                    retry_after_seconds: 2,
                });
            }
        }
        let issued =
            match self
                .ca
                .sign_node(&input.csr_der, &name, self.inv.enrollment.cert_lifetime)
            {
                Ok(i) => i,
                Err(e) => {
                    return Err(self.refuse(
                        &name,
                        RefusalReason::BadRequest,
                        format!("signing {name}'s certificate: {e}"),
                    ));
                }
            };
        if self.pending.remove(&mac.to_string()).is_some() {
            self.store.write(Write::RemovePending(mac.to_string()));
        }
        // A live stream on the old certificate ends: the new boot replaces it.
        self.end_stream(&name, Status::unauthenticated("the node enrolled again"));
        let rec = self
            .nodes
            .get_mut(&name)
            .expect("inventory node has a record");
        rec.row.cert_serial = Some(issued.serial.clone());
        rec.row.cert_not_after = issued.not_after_unix;
        rec.row.restored = false;
        rec.row.boot_id = input.boot_id.clone();
        rec.row.rearmed = false;
        rec.row.last_seen_ms = now;
        rec.enrollment_refused.clear();
        self.unused_certs.insert(name.clone());
        self.counters.enroll_accepted += 1;
        self.persist(&name);
        self.emit(
            EventKind::Enrolled,
            &name,
            format!("{mac} from {ip}, boot {}", input.boot_id),
            "",
        );
        Ok(EnrollOutcome::Issued {
            node: name,
            cert_der: issued.der,
            not_after_unix: issued.not_after_unix,
        })
    }

    /// After `dfleet restore`, a node may present a certificate the CA issued
    /// after the backup's snapshot, which the restored store cannot know. It
    /// is adopted, once per node, when the node's row came from the backup
    /// and has had no certificate since, and the certificate was signed
    /// between the snapshot and the restore. (TLS has checked that the
    /// cluster CA signed it, and the stream that it names this node.)
    fn adopt_after_restore(&mut self, node: &str, peer: &PeerIdentity) -> bool {
        let Some(mark) = self.restore else {
            return false;
        };
        let Some(rec) = self.nodes.get_mut(node) else {
            return false;
        };
        // Whole seconds: a certificate signed in the snapshot's own second
        // counts as after it.
        let signed_ms = (peer.not_before_unix + pki::BACKDATE_SECS) * 1000;
        if !rec.row.restored || signed_ms + 1000 <= mark.snapshot_ms || signed_ms > mark.restored_ms
        {
            return false;
        }
        rec.row.cert_serial = Some(peer.serial.clone());
        rec.row.cert_not_after = peer.not_after_unix;
        rec.row.restored = false;
        self.persist(node);
        self.emit(
            EventKind::CertAdopted,
            node,
            format!(
                "certificate {} was signed after the backup this coordinator was restored from \
                 (snapshot at unix ms {}); adopted as the node's current one",
                peer.serial, mark.snapshot_ms
            ),
            "",
        );
        true
    }

    #[allow(clippy::too_many_arguments)]
    fn open(
        &mut self,
        node: String,
        mac: String,
        boot_id: String,
        peer: PeerIdentity,
        addr: Option<SocketAddr>,
        tx: Outbound,
        kill: oneshot::Sender<Status>,
    ) -> Result<(u64, pb::Welcome), Status> {
        let refuse = |this: &mut Self, msg: String| {
            this.counters.streams_refused += 1;
            this.emit(EventKind::StreamRefused, &node, msg.clone(), "");
            Err(Status::permission_denied(msg))
        };
        let Some(entry) = self.inv.node(&node).cloned() else {
            return refuse(self, format!("{node} is not in the inventory"));
        };
        if mac.parse::<MacAddr>().ok() != Some(entry.mac) {
            return refuse(
                self,
                format!(
                    "{node} is {} in the inventory, but its stream says {mac}",
                    entry.mac
                ),
            );
        }
        let rec = self.nodes.get(&node).expect("inventory node has a record");
        if rec.row.cert_serial.as_deref() != Some(peer.serial.as_str())
            && !self.adopt_after_restore(&node, &peer)
        {
            return refuse(
                self,
                format!(
                    "{node} presented a certificate that is no longer its current one (serial {})",
                    peer.serial
                ),
            );
        }
        let id = self.next_conn;
        self.next_conn += 1;
        let conn = Conn {
            id,
            tx,
            kill,
            cert_not_after: peer.not_after_unix,
        };
        self.unused_certs.remove(&node);
        if let Some(old) = self.conns.insert(node.clone(), conn) {
            let _ = old.kill.send(Status::aborted(
                "replaced by a newer stream from the same node",
            ));
        }
        let rec = self
            .nodes
            .get_mut(&node)
            .expect("inventory node has a record");
        rec.row.last_seen_ms = now_ms();
        rec.row.boot_id = boot_id.clone();
        let detail = match addr {
            Some(a) => format!("stream from {a}, boot {boot_id}"),
            None => format!("stream, boot {boot_id}"),
        };
        self.emit(EventKind::Connected, &node, detail, "");
        // A returning node is connected until its first report says more;
        // so is a node on a new boot, whose last report (ready or not) was
        // about the boot before (a coordinator restarted meanwhile kept it).
        let rec = self
            .nodes
            .get_mut(&node)
            .expect("inventory node has a record");
        let report_boot = rec.row.report.as_ref().map(|r| r.identity.boot_id.as_str());
        rec.row.state = state_on_stream(rec.row.state, report_boot, &boot_id);
        self.persist(&node);
        let host_key_mode = self
            .inv
            .node(&node)
            .map(|e| self.inv.host_key_mode(e))
            .unwrap_or_default();
        Ok((
            id,
            pb::Welcome {
                assigned: self.assignments.get(&node).cloned().map(Into::into),
                node,
                report_interval_seconds: self.inv.cluster.report_interval.as_secs().max(1) as u32,
                report_change_bytes: REPORT_CHANGE_BYTES,
                checks: self
                    .inv
                    .checks
                    .iter()
                    .map(|c| pb::CheckSpec {
                        name: c.name.clone(),
                        argv: c.command.clone(),
                        timeout_seconds: c.timeout.as_secs().max(1) as u32,
                    })
                    .collect(),
                host_key_mode: pb::HostKeyMode::from(host_key_mode) as i32,
            },
        ))
    }

    /// Ends a node's live stream, if any, telling the agent why.
    fn end_stream(&mut self, name: &str, status: Status) {
        if let Some(conn) = self.conns.remove(name) {
            let reason = status.message().to_string();
            let _ = conn.kill.send(status);
            self.emit(EventKind::Disconnected, name, reason, "");
        }
    }

    fn is_current(&self, node: &str, conn: u64) -> bool {
        self.conns.get(node).is_some_and(|c| c.id == conn)
    }

    fn report(&mut self, name: &str, conn: u64, report: Report) {
        if !self.is_current(name, conn) {
            return;
        }
        self.counters.reports += 1;
        let ready = report.is_ready();
        let failing = report.failing_checks().join(", ");
        let health = self.inv.health.clone();
        let flags = self.host_key_flags(name, &report.host_keys);
        let Some(rec) = self.nodes.get_mut(name) else {
            return;
        };
        // A flag is an event when it appears (its kind and key are new).
        let seen = |f: &crate::ssh::flags::Flag| {
            rec.host_key_flags
                .iter()
                .any(|o| o.kind == f.kind && o.fingerprint == f.fingerprint)
        };
        let new_flags: Vec<String> = flags
            .iter()
            .filter(|f| !seen(f))
            .map(|f| f.detail.clone())
            .collect();
        rec.host_key_flags = flags;
        rec.row.last_seen_ms = now_ms();
        // Overlay thresholds raise one event when crossed and one when cleared.
        let o = &report.overlay;
        let used_pct = o.used_percent();
        let over_pct = used_pct.is_some_and(|p| p >= f64::from(health.overlay_used_warn_percent));
        let over_ttf = o
            .seconds_to_full
            .is_some_and(|s| Duration::from_secs(s) < health.overlay_time_to_full_warn);
        let alarm = o.root_is_overlay && (over_pct || over_ttf);
        let alarm_changed = alarm != rec.overlay_alarm;
        rec.overlay_alarm = alarm;
        let ttf = o.seconds_to_full;
        rec.row.report = Some(report);
        if alarm_changed {
            let detail = if alarm {
                format!(
                    "overlay {:.0}% used{} (warn at {}% or under {}s to full)",
                    used_pct.unwrap_or(0.0),
                    ttf.map(|s| format!(", full in {s}s")).unwrap_or_default(),
                    health.overlay_used_warn_percent,
                    health.overlay_time_to_full_warn.as_secs()
                )
            } else {
                format!(
                    "overlay back under its thresholds ({:.0}% used)",
                    used_pct.unwrap_or(0.0)
                )
            };
            self.emit(EventKind::OverlayThreshold, name, detail, "");
        }
        for detail in new_flags {
            self.emit(EventKind::HostKeyWarning, name, detail, "");
        }
        if ready {
            self.set_state(name, NodeState::Ready, "every check passes".into());
        } else {
            self.set_state(name, NodeState::NotReady, format!("failing: {failing}"));
        }
        // A report alone is written at most every REPORT_PERSIST_EVERY: the
        // store is for resuming, and a node reports again within its
        // interval of a restart. A state change was written by `set_state`.
        let due = self
            .nodes
            .get(name)
            .is_some_and(|r| now_ms() - r.persisted_ms >= REPORT_PERSIST_EVERY.as_millis() as i64);
        if due {
            self.persist(name);
        }
    }

    /// The node's SSH host key flags from its report's keys (and the
    /// fleet's: a key another node has too).
    fn host_key_flags(
        &mut self,
        name: &str,
        keys: &[dfleet_proto::domain::HostKey],
    ) -> Vec<crate::ssh::flags::Flag> {
        self.key_owners.update(name, keys);
        let mode = self
            .inv
            .node(name)
            .map(|e| self.inv.host_key_mode(e))
            .unwrap_or_default();
        let mut flags = crate::ssh::flags::node_flags(
            mode,
            keys,
            self.managed_fingerprints.get(name).map(String::as_str),
            self.inv.ssh.cert_validity,
            (now_ms() / 1000).max(0) as u64,
        );
        flags.extend(self.key_owners.shared(name));
        flags.sort();
        flags
    }

    fn renew(&mut self, name: &str, conn: u64, csr_der: &[u8]) {
        if !self.is_current(name, conn) {
            return;
        }
        if let Some(why) = self.store.refusing() {
            // The agent asks again later, long before its certificate ends.
            tracing::warn!(node = name, "renewal deferred: {why}");
            return;
        }
        let lifetime = self.inv.enrollment.cert_lifetime;
        let issued = match self.ca.sign_node(csr_der, name, lifetime) {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(node = name, error = %e, "renewal refused");
                return;
            }
        };
        let Some(c) = self.conns.get_mut(name) else {
            return;
        };
        c.cert_not_after = issued.not_after_unix;
        let msg = pb::CoordinatorMessage {
            kind: Some(pb::coordinator_message::Kind::Renewed(pb::Renewed {
                cert_der: issued.der.clone(),
                not_after_unix: issued.not_after_unix,
            })),
        };
        if c.tx.try_send(Ok(msg)).is_err() {
            tracing::warn!(
                node = name,
                "stream is full or closed; renewal not delivered"
            );
            return;
        }
        let rec = self
            .nodes
            .get_mut(name)
            .expect("inventory node has a record");
        rec.row.cert_serial = Some(issued.serial.clone());
        rec.row.cert_not_after = issued.not_after_unix;
        rec.row.restored = false;
        rec.row.last_seen_ms = now_ms();
        self.persist(name);
        self.emit(
            EventKind::CertRenewed,
            name,
            format!("valid until unix {}", issued.not_after_unix),
            "",
        );
    }

    fn closed(&mut self, name: &str, conn: u64, reason: String) {
        if !self.is_current(name, conn) {
            return;
        }
        self.conns.remove(name);
        if reason.starts_with("stream error") {
            self.counters.stream_errors += 1;
        }
        self.emit(EventKind::Disconnected, name, reason, "");
    }

    fn tick(&mut self, now: i64) {
        let health = self.inv.health.clone();
        // Streams whose certificate expired without renewal are closed.
        let expired: Vec<String> = self
            .conns
            .iter()
            .filter(|(_, c)| c.cert_not_after * 1000 <= now)
            .map(|(n, _)| n.clone())
            .collect();
        for name in expired {
            self.end_stream(
                &name,
                Status::unauthenticated("the node's certificate expired without renewal"),
            );
        }
        let changes: Vec<(String, NodeState, i64)> = self
            .nodes
            .iter()
            .filter_map(|(name, rec)| {
                // Going stale counts from the coordinator's start at the
                // earliest (a row may be up to REPORT_PERSIST_EVERY old);
                // lost is the node's own silence, which lets a node that
                // rebooted during a long outage enroll again at once.
                let seen = match rec.row.last_seen_ms {
                    0 => 0,
                    ms if now - ms > health.lost_after.as_millis() as i64 => ms,
                    ms => ms.max(self.started_ms),
                };
                let next = silence_state(
                    rec.row.state,
                    seen,
                    now,
                    health.stale_after,
                    health.lost_after,
                );
                (next != rec.row.state).then(|| (name.clone(), next, rec.row.last_seen_ms))
            })
            .collect();
        for (name, state, last_seen) in changes {
            let silent = (now - last_seen) / 1000;
            self.set_state(&name, state, format!("no report for {silent}s"));
        }
    }

    fn approve(&mut self, node: &str, actor: &str) -> Result<String, String> {
        let entry = self
            .inv
            .node(node)
            .ok_or_else(|| format!("{node} is not in the inventory"))?;
        let mac = entry.mac.to_string();
        let row = self
            .pending
            .get_mut(&mac)
            .filter(|p| p.node == node)
            .ok_or_else(|| {
                format!("no pending enrollment for {node} (see `dfleet node pending`)")
            })?;
        row.approved = true;
        let row = row.clone();
        self.store.write(Write::Pending(row));
        self.emit(
            EventKind::Approved,
            node,
            format!("enrollment of {mac} approved"),
            actor,
        );
        Ok(format!("approved {node}; it enrolls at its next retry"))
    }

    /// A DHCP request from a MAC the inventory does not know is listed as a
    /// discovered machine (once; later requests update its last-seen time).
    fn discovered(&mut self, mac: MacAddr, line: &str) {
        if self.inv.node_by_mac(&mac).is_some() {
            return;
        }
        let unspecified = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
        let key = mac.to_string();
        let known_key = self
            .pending
            .get(&key)
            .map(|p| p.public_key.clone())
            .unwrap_or_default();
        if let Ok(true) = self.remember_pending(
            &key,
            unspecified,
            "",
            "DHCP request, not in the inventory",
            known_key,
        ) {
            self.emit(
                EventKind::Discovered,
                "",
                format!("{mac} asked for a lease: {line}"),
                "",
            );
        }
    }

    /// Sets the generation nodes boot next; connected agents hear of it at
    /// once, for their generation check.
    fn assign(
        &mut self,
        names: &[String],
        target: GenerationRef,
        actor: &str,
    ) -> Result<String, String> {
        let unknown: Vec<&str> = names
            .iter()
            .filter(|n| !self.nodes.contains_key(n.as_str()))
            .map(String::as_str)
            .collect();
        if !unknown.is_empty() {
            return Err(format!("not in the inventory: {}", unknown.join(", ")));
        }
        for name in names {
            self.assignments.insert(name.clone(), target.clone());
            self.store
                .write(Write::Assign(name.clone(), Some(target.clone())));
            if let Some(conn) = self.conns.get(name) {
                let order = pb::CoordinatorMessage {
                    kind: Some(pb::coordinator_message::Kind::Order(pb::Order {
                        id: 0,
                        kind: Some(pb::order::Kind::Assign(pb::Assign {
                            assigned: Some(target.clone().into()),
                        })),
                    })),
                };
                let _ = conn.tx.try_send(Ok(order));
            }
            self.emit(
                EventKind::Assigned,
                name,
                format!("boots {target} next"),
                actor,
            );
        }
        Ok(format!("{} nodes assigned to {target}", names.len()))
    }

    fn order_reboot(
        &mut self,
        node: &str,
        target: GenerationRef,
        boot_id: String,
        actor: &str,
    ) -> Result<(), String> {
        let conn = self
            .conns
            .get(node)
            .ok_or_else(|| format!("{node} has no stream to the coordinator"))?;
        self.next_order += 1;
        let order = pb::CoordinatorMessage {
            kind: Some(pb::coordinator_message::Kind::Order(pb::Order {
                id: self.next_order,
                kind: Some(pb::order::Kind::Reboot(pb::Reboot {
                    node: node.to_string(),
                    target: Some(target.clone().into()),
                    boot_id: boot_id.clone(),
                })),
            })),
        };
        conn.tx
            .try_send(Ok(order))
            .map_err(|e| format!("sending {node} its reboot order: {e}"))?;
        self.emit(
            EventKind::RebootOrdered,
            node,
            format!("reboot of boot {boot_id} towards {target}, through its agent"),
            actor,
        );
        Ok(())
    }

    fn rearm(&mut self, node: &str, actor: &str) -> Result<String, String> {
        let rec = self
            .nodes
            .get_mut(node)
            .ok_or_else(|| format!("{node} is not in the inventory"))?;
        rec.row.rearmed = true;
        self.persist(node);
        self.emit(
            EventKind::Rearmed,
            node,
            "one new enrollment allowed",
            actor,
        );
        Ok(format!("{node} may enroll once more"))
    }

    fn replace_inventory(&mut self, inv: Inventory, actor: &str) -> String {
        let mut added = 0;
        for entry in &inv.nodes {
            let name = entry.name.to_string();
            if !self.nodes.contains_key(&name) {
                added += 1;
                self.nodes.insert(
                    name.clone(),
                    NodeRec {
                        row: NodeRow {
                            name,
                            state: NodeState::Unknown,
                            cert_serial: None,
                            cert_not_after: 0,
                            boot_id: String::new(),
                            last_seen_ms: 0,
                            rearmed: false,
                            report: None,
                            restored: false,
                        },
                        overlay_alarm: false,
                        enrollment_refused: String::new(),
                        host_key_flags: Vec::new(),
                        persisted_ms: 0,
                    },
                );
            }
        }
        let removed: Vec<String> = self
            .nodes
            .keys()
            .filter(|n| inv.node(n).is_none())
            .cloned()
            .collect();
        for name in &removed {
            self.nodes.remove(name);
            self.end_stream(
                name,
                Status::permission_denied("the node was removed from the inventory"),
            );
            self.store.write(Write::RemoveNode(name.clone()));
            if self.assignments.remove(name).is_some() {
                self.store.write(Write::Assign(name.clone(), None));
            }
        }
        // A node whose MAC or address changed must enroll again.
        let changed: Vec<String> = inv
            .nodes
            .iter()
            .filter(|e| {
                self.inv
                    .node(e.name.as_str())
                    .is_some_and(|old| old.mac != e.mac || old.ip != e.ip)
            })
            .map(|e| e.name.to_string())
            .collect();
        for name in &changed {
            self.end_stream(
                name,
                Status::permission_denied("the node's MAC or address changed in the inventory"),
            );
            if let Some(rec) = self.nodes.get_mut(name) {
                rec.row.cert_serial = None;
                rec.row.cert_not_after = 0;
                rec.row.restored = false;
            }
            self.persist(name);
        }
        let summary = format!(
            "{} nodes: {added} added, {} removed, {} with a new MAC or address",
            inv.nodes.len(),
            removed.len(),
            changed.len()
        );
        self.inv = Arc::new(inv);
        self.emit(EventKind::InventoryReloaded, "", summary.clone(), actor);
        summary
    }
}

/// A shutdown signal that many tasks can wait on.
pub mod tokio_util_shutdown {
    use tokio::sync::watch;

    /// Fires once; every clone sees it.
    #[derive(Clone, Debug)]
    pub struct Shutdown(watch::Receiver<bool>);

    #[derive(Debug)]
    pub struct Trigger(watch::Sender<bool>);

    pub fn channel() -> (Trigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (Trigger(tx), Shutdown(rx))
    }

    impl Trigger {
        pub fn fire(&self) {
            let _ = self.0.send(true);
        }
    }

    impl Shutdown {
        /// Resolves when the trigger fired or was dropped.
        pub async fn wait(&mut self) {
            let _ = self.0.wait_for(|fired| *fired).await;
        }
    }
}

/// The most names a node set may resolve to.
pub const MAX_SET: usize = 1_000_000;

/// The `@…` groups of node sets: `@GROUP` (the inventory's `groups`),
/// `@state:STATE` (ready, not-ready, stale, lost, pending, connected,
/// unknown) and `@gen:IMAGE:GEN` (nodes whose last report runs it).
pub struct FleetGroups<'a>(&'a Fleet);

impl FleetGroups<'_> {
    fn nodes(&self, keep: impl Fn(&NodeEntry) -> bool) -> Vec<String> {
        self.0
            .inv
            .nodes
            .iter()
            .filter(|e| keep(e))
            .map(|e| e.name.to_string())
            .collect()
    }
}

impl dfleet_provisioner::nodeset::Groups for FleetGroups<'_> {
    fn group(&self, source: Option<&str>, name: &str) -> Result<Vec<String>, String> {
        let fleet = self.0;
        match source {
            None => {
                let names = self.nodes(|e| e.groups.iter().any(|g| g == name));
                if names.is_empty() {
                    let mut known: Vec<&str> = fleet
                        .inv
                        .nodes
                        .iter()
                        .flat_map(|e| e.groups.iter().map(String::as_str))
                        .collect();
                    known.sort_unstable();
                    known.dedup();
                    return Err(format!(
                        "no node of the inventory is in group {name:?} (groups: {}; other \
                         sources: @state:STATE, @gen:IMAGE:GEN)",
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ));
                }
                Ok(names)
            }
            Some("state") => {
                let Some(state) = NodeState::ALL.into_iter().find(|s| s.as_str() == name) else {
                    let all: Vec<&str> = NodeState::ALL.iter().map(|s| s.as_str()).collect();
                    return Err(format!(
                        "unknown state {name:?}: expected {}",
                        all.join(", ")
                    ));
                };
                Ok(self.nodes(|e| fleet.state_of(e) == Some(state)))
            }
            Some("gen") => {
                let g: GenerationRef = name
                    .parse()
                    .map_err(|_| format!("{name:?} is not IMAGE:GEN"))?;
                Ok(self.nodes(|e| {
                    fleet.nodes.get(e.name.as_str()).is_some_and(|r| {
                        r.row
                            .report
                            .as_ref()
                            .is_some_and(|rep| rep.booted.stamp.as_ref() == Some(&g))
                    })
                }))
            }
            Some(other) => Err(format!(
                "unknown group source {other:?}: expected @GROUP, @state:STATE or @gen:IMAGE:GEN"
            )),
        }
    }
}

/// A node's state when a stream from boot `boot_id` opens: a node back
/// from silence or never seen is connected until it reports; so is one
/// whose last report came from another boot (its ready or not-ready was
/// about that boot). Otherwise its state stays.
fn state_on_stream(state: NodeState, report_boot: Option<&str>, boot_id: &str) -> NodeState {
    let old_boot = report_boot.is_some_and(|b| b != boot_id);
    if old_boot
        || matches!(
            state,
            NodeState::Unknown | NodeState::Pending | NodeState::Stale | NodeState::Lost
        )
    {
        NodeState::Connected
    } else {
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(30);

    #[test]
    fn a_stream_from_a_new_boot_is_not_ready_before_it_reports() {
        use NodeState::*;
        assert_eq!(state_on_stream(Ready, Some("b1"), "b1"), Ready);
        assert_eq!(state_on_stream(NotReady, Some("b1"), "b1"), NotReady);
        assert_eq!(state_on_stream(Ready, Some("b1"), "b2"), Connected);
        assert_eq!(state_on_stream(NotReady, Some("b1"), "b2"), Connected);
        assert_eq!(state_on_stream(Stale, Some("b1"), "b1"), Connected);
        assert_eq!(state_on_stream(Unknown, None, "b1"), Connected);
    }
    const L: Duration = Duration::from_secs(120);

    #[test]
    fn silence_moves_nodes_to_stale_then_lost() {
        let t0 = 1_000_000;
        assert_eq!(
            silence_state(NodeState::Ready, t0, t0 + 29_000, S, L),
            NodeState::Ready
        );
        assert_eq!(
            silence_state(NodeState::Ready, t0, t0 + 31_000, S, L),
            NodeState::Stale
        );
        assert_eq!(
            silence_state(NodeState::Stale, t0, t0 + 121_000, S, L),
            NodeState::Lost
        );
        assert_eq!(
            silence_state(NodeState::NotReady, t0, t0 + 500_000, S, L),
            NodeState::Lost
        );
        // A never-seen node stays where it is.
        assert_eq!(
            silence_state(NodeState::Unknown, 0, t0, S, L),
            NodeState::Unknown
        );
    }

    fn row(state: NodeState, serial: Option<&str>, not_after_s: i64, rearmed: bool) -> NodeRow {
        NodeRow {
            name: "cn1".into(),
            state,
            cert_serial: serial.map(Into::into),
            cert_not_after: not_after_s,
            boot_id: "b".into(),
            last_seen_ms: 0,
            rearmed,
            report: None,
            restored: false,
        }
    }

    #[test]
    fn one_enrollment_per_boot() {
        let now = 1_000_000_000;
        // Never enrolled.
        assert!(may_reenroll(&row(NodeState::Unknown, None, 0, false), false, false, now).is_ok());
        // A live stream blocks.
        assert!(
            may_reenroll(
                &row(NodeState::Ready, Some("a"), 0, false),
                true,
                false,
                now
            )
            .is_err()
        );
        // An unexpired certificate blocks.
        let err = may_reenroll(
            &row(NodeState::Stale, Some("a"), now / 1000 + 60, false),
            false,
            false,
            now,
        )
        .unwrap_err();
        assert!(err.contains("rearm cn1"), "{err}");
        // Unless it was never presented on a stream: the enrollment did not
        // finish.
        assert!(
            may_reenroll(
                &row(NodeState::Unknown, Some("a"), now / 1000 + 60, false),
                false,
                true,
                now
            )
            .is_ok()
        );
        // A live stream blocks even then.
        assert!(
            may_reenroll(
                &row(NodeState::Ready, Some("a"), now / 1000 + 60, false),
                true,
                true,
                now
            )
            .is_err()
        );
        // An expired one does not.
        assert!(
            may_reenroll(
                &row(NodeState::Stale, Some("a"), now / 1000 - 1, false),
                false,
                false,
                now
            )
            .is_ok()
        );
        // A lost node may come back.
        assert!(
            may_reenroll(
                &row(NodeState::Lost, Some("a"), now / 1000 + 60, false),
                false,
                false,
                now
            )
            .is_ok()
        );
        // Rearm allows it even with a live stream.
        assert!(
            may_reenroll(
                &row(NodeState::Ready, Some("a"), now / 1000 + 60, true),
                true,
                false,
                now
            )
            .is_ok()
        );
    }

    #[test]
    fn token_bucket_limits_bursts_and_refills() {
        let mut b = TokenBucket::new(2.0, 3.0, 0);
        assert!(b.take(0) && b.take(0) && b.take(0));
        assert!(!b.take(0));
        assert!(b.take(500));
        assert!(!b.take(500));
    }

    struct Harness {
        fleet: Fleet,
        arp: std::path::PathBuf,
        _dir: tempfile::TempDir,
    }

    fn harness(extra: &str) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            r#"[cluster]
name = "t"
state_dir = "{state}"
listen = ["127.0.0.1:0"]
[enrollment]
{extra}
[[nodes]]
name = "cn1"
mac = "52:54:00:00:00:01"
ip = "10.0.0.1"
image = "compute"
"#,
            state = dir.path().display()
        );
        let inv = Inventory::parse(&text, &dir.path().join("cluster.toml")).unwrap();
        let (store, loaded) = Store::open(dir.path()).unwrap();
        let ca = Arc::new(Ca::load_or_create(dir.path(), "t").unwrap());
        let arp = dir.path().join("arp");
        std::fs::write(&arp, "IP address HW type Flags HW address Mask Device\n").unwrap();
        let options = FleetOptions {
            neighbour_table: arp.clone(),
        };
        Harness {
            fleet: Fleet::new(inv, loaded, store, ca, options),
            arp,
            _dir: dir,
        }
    }

    fn request(mac: &str, addr: &str) -> EnrollInput {
        let key = rcgen::KeyPair::generate().unwrap();
        let csr = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .serialize_request(&key)
            .unwrap();
        EnrollInput {
            mac: mac.into(),
            addr: addr.parse().unwrap(),
            csr_der: csr.der().to_vec(),
            boot_id: "boot-1".into(),
        }
    }

    fn refusal(h: &mut Harness, mac: &str, addr: &str) -> RefusalReason {
        h.fleet.enroll(request(mac, addr)).unwrap_err().reason
    }

    #[test]
    fn enrollment_checks_port_mac_address_and_neighbour() {
        let mut h = harness("");
        let mac = "52:54:00:00:00:01";
        assert_eq!(
            refusal(&mut h, mac, "10.0.0.1:40000"),
            RefusalReason::UnprivilegedPort
        );
        assert_eq!(
            refusal(&mut h, "52:54:00:00:00:99", "10.0.0.1:700"),
            RefusalReason::UnknownMac
        );
        assert_eq!(
            refusal(&mut h, mac, "10.0.0.2:700"),
            RefusalReason::WrongAddress
        );
        std::fs::write(
            &h.arp,
            "IP address HW type Flags HW address Mask Device\n10.0.0.1 0x1 0x2 52:54:00:00:00:77 * eth0\n",
        )
        .unwrap();
        assert_eq!(
            refusal(&mut h, mac, "10.0.0.1:700"),
            RefusalReason::NeighbourMismatch
        );
        std::fs::write(
            &h.arp,
            "IP address HW type Flags HW address Mask Device\n10.0.0.1 0x1 0x2 52:54:00:00:00:01 * eth0\n",
        )
        .unwrap();
        let issued = h.fleet.enroll(request(mac, "10.0.0.1:700")).unwrap();
        assert!(matches!(issued, EnrollOutcome::Issued { ref node, .. } if node == "cn1"));
        // The unknown MAC is listed for the administrator.
        assert_eq!(
            h.fleet
                .pending
                .get("52:54:00:00:00:99")
                .map(|p| p.node.as_str()),
            Some("")
        );
        assert_eq!(h.fleet.counters.enroll_refused.get("unknown_mac"), Some(&1));
    }

    #[test]
    fn going_stale_counts_from_the_coordinators_start_and_lost_from_the_node() {
        let mut h = harness("");
        let start = h.fleet.started_ms;
        let stale = h.fleet.inv.health.stale_after.as_millis() as i64;
        let lost = h.fleet.inv.health.lost_after.as_millis() as i64;
        let set = |h: &mut Harness, last_seen_ms: i64| {
            let rec = h.fleet.nodes.get_mut("cn1").unwrap();
            rec.row.state = NodeState::Ready;
            rec.row.last_seen_ms = last_seen_ms;
        };
        // Seen (as stored) longer ago than stale_after, not lost_after: it
        // has stale_after from the start to report.
        set(&mut h, start - stale - 5000);
        h.fleet.tick(start + 1000);
        assert_eq!(h.fleet.nodes["cn1"].row.state, NodeState::Ready);
        h.fleet.tick(start + stale + 1000);
        assert_eq!(h.fleet.nodes["cn1"].row.state, NodeState::Stale);
        // Silent longer than lost_after: lost at once.
        set(&mut h, start - lost - 5000);
        h.fleet.tick(start + 1000);
        assert_eq!(h.fleet.nodes["cn1"].row.state, NodeState::Lost);
    }

    #[test]
    fn a_restored_node_adopts_a_certificate_signed_after_the_snapshot_once() {
        let mut h = harness("");
        let snapshot_s = 1_800_000_000;
        h.fleet.restore = Some(crate::store::RestoreMark {
            snapshot_ms: snapshot_s * 1000,
            restored_ms: (snapshot_s + 3600) * 1000,
        });
        let peer = |serial: &str, signed_s: i64| PeerIdentity {
            role: pki::Role::Node("cn1".into()),
            serial: serial.into(),
            not_before_unix: signed_s - pki::BACKDATE_SECS,
            not_after_unix: signed_s + 86400,
        };
        h.fleet.nodes.get_mut("cn1").unwrap().row.cert_serial = Some("old".into());
        // A row that did not come from the backup adopts nothing.
        assert!(
            !h.fleet
                .adopt_after_restore("cn1", &peer("a1", snapshot_s + 10))
        );
        h.fleet.nodes.get_mut("cn1").unwrap().row.restored = true;
        // Signed before the snapshot: superseded before the backup.
        assert!(
            !h.fleet
                .adopt_after_restore("cn1", &peer("a0", snapshot_s - 5))
        );
        // Signed after the restore: not one the lost window can hold.
        assert!(
            !h.fleet
                .adopt_after_restore("cn1", &peer("a2", snapshot_s + 7200))
        );
        // Signed in between: adopted, once.
        assert!(
            h.fleet
                .adopt_after_restore("cn1", &peer("a1", snapshot_s + 10))
        );
        let row = &h.fleet.nodes["cn1"].row;
        assert_eq!(row.cert_serial.as_deref(), Some("a1"));
        assert_eq!(row.cert_not_after, snapshot_s + 10 + 86400);
        assert!(!row.restored);
        assert!(
            !h.fleet
                .adopt_after_restore("cn1", &peer("a3", snapshot_s + 20))
        );
    }

    #[test]
    fn enrollment_is_rate_limited_and_the_pending_list_capped() {
        let mut h = harness("rate_per_second = 1\nburst = 3\npending_max = 1");
        assert_eq!(
            refusal(&mut h, "52:54:00:00:00:90", "10.0.0.9:700"),
            RefusalReason::UnknownMac
        );
        assert_eq!(
            refusal(&mut h, "52:54:00:00:00:91", "10.0.0.9:700"),
            RefusalReason::PendingFull
        );
        assert_eq!(
            refusal(&mut h, "52:54:00:00:00:92", "10.0.0.9:700"),
            RefusalReason::PendingFull
        );
        assert_eq!(
            refusal(&mut h, "52:54:00:00:00:01", "10.0.0.1:700"),
            RefusalReason::RateLimited
        );
    }

    #[test]
    fn manual_policy_binds_the_approval_to_the_requesting_key() {
        let mut h = harness("policy = \"manual\"");
        let first = request("52:54:00:00:00:01", "10.0.0.1:700");
        assert!(matches!(
            h.fleet.enroll(first.clone()),
            Ok(EnrollOutcome::Pending { .. })
        ));
        h.fleet.approve("cn1", "uid:0").unwrap();
        // Another key (another requester) does not inherit the approval.
        let other = request("52:54:00:00:00:01", "10.0.0.1:700");
        assert!(matches!(
            h.fleet.enroll(other),
            Ok(EnrollOutcome::Pending { .. })
        ));
        h.fleet.approve("cn1", "uid:0").unwrap();
        let again = h.fleet.enroll(request("52:54:00:00:00:01", "10.0.0.1:700"));
        assert!(matches!(again, Ok(EnrollOutcome::Pending { .. })));
        // The approved key itself is issued once re-approved for it.
        assert!(matches!(
            h.fleet.enroll(first.clone()),
            Ok(EnrollOutcome::Pending { .. })
        ));
        h.fleet.approve("cn1", "uid:0").unwrap();
        assert!(matches!(
            h.fleet.enroll(first),
            Ok(EnrollOutcome::Issued { .. })
        ));
    }
}
