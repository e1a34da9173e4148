//! The coordinator's gRPC services: enrollment (the one RPC a client without a
//! certificate may call), the agents' stream, and the admin service. Each
//! handler checks who is calling, converts protobuf to domain types and hands
//! the work to the fleet task.

use std::pin::Pin;
use std::time::Duration;

use dfleet_proto::domain::{Event, Report};
use dfleet_proto::pb::{
    self, admin_server::Admin, agent_server::Agent, enrollment_server::Enrollment,
};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status, Streaming};

use crate::fleet::{Command, EnrollInput, EnrollOutcome, FleetHandle, NodeView, TokenBucket};
use crate::guard::Reason;
use crate::pki::{self, PeerIdentity, Role};
use crate::store::Store;

/// How long an agent has to send its hello after opening the stream.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The verified identity of a TLS peer, if it presented a certificate.
fn peer<T>(req: &Request<T>) -> Result<Option<PeerIdentity>, Status> {
    let Some(certs) = req.peer_certs() else {
        return Ok(None);
    };
    let Some(leaf) = certs.first() else {
        return Ok(None);
    };
    pki::peer_identity(leaf)
        .map(Some)
        .map_err(|e| Status::unauthenticated(e.to_string()))
}

#[derive(Clone, Debug)]
pub struct Services {
    pub fleet: FleetHandle,
    pub store: Store,
    /// Where `dfleet reload` re-reads the inventory from.
    pub inventory_path: std::path::PathBuf,
    /// The cluster CA certificate, handed out with admin certificates.
    pub ca_der: Vec<u8>,
    /// The single writer of boot files.
    pub boot: std::sync::Arc<crate::boot::BootWriter>,
    /// The rollout engine.
    pub rollouts: crate::rollout::engine::EngineHandle,
    /// Where agents' exec answers go.
    pub exec: crate::exec::ExecRouter,
    /// The SSH host CA and the managed host keys.
    pub ssh: std::sync::Arc<crate::ssh::Ssh>,
    /// The state directory and the cluster's name, for `dfleet backup`.
    pub state_dir: std::path::PathBuf,
    pub cluster: String,
    /// What is refused before it reaches the fleet task, counted.
    pub guard: std::sync::Arc<crate::guard::Guard>,
}

#[tonic::async_trait]
impl Enrollment for Services {
    async fn enroll(
        &self,
        req: Request<pb::EnrollRequest>,
    ) -> Result<Response<pb::EnrollResponse>, Status> {
        let addr = req
            .remote_addr()
            .ok_or_else(|| Status::failed_precondition("enrollment needs a TCP peer address"))?;
        let r = req.into_inner();
        let input = EnrollInput {
            mac: r.mac,
            addr,
            csr_der: r.csr_der,
            boot_id: r.boot_id,
        };
        let outcome = self
            .fleet
            .ask(|reply| Command::Enroll { input, reply })
            .await?
            .map_err(Status::from)?;
        let outcome = match outcome {
            EnrollOutcome::Issued {
                node,
                cert_der,
                not_after_unix,
            } => pb::enroll_response::Outcome::Issued(pb::Issued {
                node,
                cert_der,
                not_after_unix,
            }),
            EnrollOutcome::Pending {
                reason,
                retry_after_seconds,
            } => pb::enroll_response::Outcome::Pending(pb::Pending {
                reason,
                retry_after_seconds,
            }),
        };
        Ok(Response::new(pb::EnrollResponse {
            outcome: Some(outcome),
        }))
    }
}

/// A stream's reports beyond this rate are dropped (agents report every
/// `report_interval`, at least a second, and now and then at once).
const REPORTS_PER_SECOND: f64 = 5.0;
const REPORT_BURST: f64 = 50.0;
/// Host key requests: one per boot, renewal or rotation.
const KEY_REQUESTS_PER_SECOND: f64 = 0.1;
const KEY_REQUEST_BURST: f64 = 5.0;

impl Services {
    /// Waits until the store has every write queued so far: an admin
    /// change is acknowledged only once it would survive a crash.
    async fn stored(&self) -> Result<(), Status> {
        self.store
            .commit()
            .await
            .map_err(|e| Status::unavailable(format!("the change is made but {e}")))
    }

    /// Refuses a change while the store cannot be written (a full disk):
    /// it could not be kept.
    fn writable(&self) -> Result<(), Status> {
        match self.store.refusing() {
            Some(why) => Err(Status::unavailable(format!("refused: {why}"))),
            None => Ok(()),
        }
    }
}

type ConnectStream = Pin<Box<dyn Stream<Item = Result<pb::CoordinatorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Agent for Services {
    type ConnectStream = ConnectStream;

    async fn connect(
        &self,
        req: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let addr = req.remote_addr();
        let Some(identity) = peer(&req)? else {
            let detail = format!(
                "an agent stream from {} without a node certificate",
                addr.map(|a| a.to_string()).unwrap_or_default()
            );
            self.guard
                .refuse(Reason::NoCertificate, &detail, crate::fleet::now_ms());
            return Err(Status::unauthenticated(
                "the agent stream needs a node certificate",
            ));
        };
        let node = match &identity.role {
            Role::Node(n) => n.clone(),
            Role::Admin(u) => {
                return Err(Status::permission_denied(format!(
                    "admin certificate {u} cannot open an agent stream"
                )));
            }
        };
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello within 10 s"))??;
        let hello = match first.and_then(|m| m.kind) {
            Some(pb::agent_message::Kind::Hello(h)) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message of a stream must be a hello",
                ));
            }
        };
        if hello.node != node {
            let detail = format!(
                "certificate names {node} but the stream claims {} (from {})",
                hello.node,
                addr.map(|a| a.to_string()).unwrap_or_default()
            );
            let _ = self
                .fleet
                .send(Command::StreamRefused {
                    node: hello.node.clone(),
                    detail: detail.clone(),
                })
                .await;
            return Err(Status::permission_denied(detail));
        }
        let (tx, rx) = mpsc::channel(64);
        let (kill_tx, mut kill_rx) = oneshot::channel::<Status>();
        let (conn, welcome) = self
            .fleet
            .ask(|reply| Command::Open {
                node: node.clone(),
                mac: hello.mac,
                boot_id: hello.boot_id,
                peer: identity,
                addr,
                tx: tx.clone(),
                kill: kill_tx,
                reply,
            })
            .await??;
        tx.send(Ok(pb::CoordinatorMessage {
            kind: Some(pb::coordinator_message::Kind::Welcome(welcome)),
        }))
        .await
        .map_err(|_| Status::cancelled("stream closed"))?;
        let fleet = self.fleet.clone();
        let router = self.exec.clone();
        let ssh = self.ssh.clone();
        let guard = self.guard.clone();
        let now = crate::fleet::now_ms();
        let mut reports = TokenBucket::new(REPORTS_PER_SECOND, REPORT_BURST, now);
        let mut key_requests = TokenBucket::new(KEY_REQUESTS_PER_SECOND, KEY_REQUEST_BURST, now);
        tokio::spawn(async move {
            let reason = loop {
                tokio::select! {
                    status = &mut kill_rx => {
                        if let Ok(status) = status {
                            let reason = status.message().to_string();
                            let _ = tx.send(Err(status)).await;
                            break reason;
                        }
                        break "the coordinator closed the stream".to_string();
                    }
                    msg = inbound.message() => match msg {
                        Ok(Some(pb::AgentMessage {
                            kind: Some(kind @ (pb::agent_message::Kind::ExecOutput(_) | pb::agent_message::Kind::ExecDone(_))),
                        })) => router.deliver(&node, conn, kind).await,
                        // Floods are dropped and counted; the stream and the
                        // node's other messages go on.
                        Ok(Some(pb::AgentMessage {
                            kind: Some(pb::agent_message::Kind::Report(_)),
                        })) if !reports.take(crate::fleet::now_ms()) => guard.refuse(
                            Reason::ReportFlood,
                            &format!("{node}: reports beyond {REPORTS_PER_SECOND}/s (burst {REPORT_BURST}) dropped"),
                            crate::fleet::now_ms(),
                        ),
                        Ok(Some(pb::AgentMessage {
                            kind: Some(pb::agent_message::Kind::HostKeyRequest(_)),
                        })) if !key_requests.take(crate::fleet::now_ms()) => guard.refuse(
                            Reason::HostKeyFlood,
                            &format!("{node}: host key requests beyond one every {}s (burst {KEY_REQUEST_BURST}) dropped", 1.0 / KEY_REQUESTS_PER_SECOND),
                            crate::fleet::now_ms(),
                        ),
                        // Answered beside the stream: signing or making a
                        // key never holds up the node's other messages.
                        Ok(Some(pb::AgentMessage {
                            kind: Some(pb::agent_message::Kind::HostKeyRequest(r)),
                        })) => {
                            tokio::spawn(crate::ssh::serve(
                                ssh.clone(),
                                fleet.clone(),
                                node.clone(),
                                r,
                                tx.clone(),
                            ));
                        }
                        Ok(Some(msg)) => {
                            if let Err(reason) = dispatch(&fleet, &node, conn, msg).await {
                                let _ = tx.send(Err(Status::invalid_argument(reason.clone()))).await;
                                break reason;
                            }
                        }
                        Ok(None) => break "the agent closed the stream".to_string(),
                        Err(e) if e.code() == tonic::Code::OutOfRange => {
                            let reason = format!("message too large: {}", e.message());
                            guard.refuse(Reason::MessageTooLarge, &format!("{node}: {reason}"), crate::fleet::now_ms());
                            let _ = tx.send(Err(Status::out_of_range(reason.clone()))).await;
                            break reason;
                        }
                        // An agent that dies without close_notify shows up here:
                        // an ordinary disconnect.
                        Err(e) => break format!("stream error: {}", e.message()),
                    }
                }
            };
            router.lost(&node, conn, &reason).await;
            let _ = fleet.send(Command::Closed { node, conn, reason }).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Hands one agent message to the fleet task; an error ends the stream.
async fn dispatch(
    fleet: &FleetHandle,
    node: &str,
    conn: u64,
    msg: pb::AgentMessage,
) -> Result<(), String> {
    let node = node.to_string();
    let cmd = match msg.kind {
        Some(pb::agent_message::Kind::Report(r)) => {
            let report = Report::try_from(r).map_err(|e| format!("bad report: {e}"))?;
            Command::Report {
                node,
                conn,
                report: Box::new(report),
            }
        }
        Some(pb::agent_message::Kind::Renew(r)) => Command::Renew {
            node,
            conn,
            csr_der: r.csr_der,
        },
        Some(pb::agent_message::Kind::OrderResult(result)) => {
            Command::OrderResult { node, conn, result }
        }
        Some(pb::agent_message::Kind::Hello(_)) => {
            return Err("a second hello on one stream".into());
        }
        // Handled by the stream loop.
        Some(
            pb::agent_message::Kind::ExecOutput(_)
            | pb::agent_message::Kind::ExecDone(_)
            | pb::agent_message::Kind::HostKeyRequest(_),
        ) => {
            return Ok(());
        }
        None => return Err("an empty message".into()),
    };
    fleet.send(cmd).await.map_err(|s| s.message().to_string())
}

/// Who is calling an admin RPC: a uid on the local socket or an admin
/// certificate. Node certificates are refused, and the refusal is logged.
async fn admin_caller<T>(svc: &Services, req: &Request<T>) -> Result<String, Status> {
    if let Some(info) = req.extensions().get::<UdsConnectInfo>() {
        let uid = info
            .peer_cred
            .map(|c| c.uid().to_string())
            .unwrap_or_else(|| "?".into());
        return Ok(format!("uid:{uid}"));
    }
    match peer(req)? {
        Some(PeerIdentity {
            role: Role::Admin(user),
            ..
        }) => Ok(format!("admin:{user}")),
        Some(PeerIdentity {
            role: Role::Node(node),
            ..
        }) => {
            let detail = format!("node certificate {node} called an admin RPC");
            let _ = svc
                .fleet
                .send(Command::AdminRefused {
                    actor: format!("node:{node}"),
                    detail: detail.clone(),
                })
                .await;
            Err(Status::permission_denied(format!(
                "{detail}: node certificates may not administer the fleet"
            )))
        }
        None => Err(Status::unauthenticated(
            "admin RPCs need the local socket or an admin certificate",
        )),
    }
}

/// Converts a node's view to its wire form; `full` keeps the largest paths.
fn node_status(v: NodeView, full: bool) -> pb::NodeStatus {
    let report = v.report.map(|mut r: Report| {
        if !full {
            r.overlay.largest_paths.clear();
        }
        pb::Report::from(r)
    });
    pb::NodeStatus {
        name: v.entry.name.to_string(),
        state: pb::NodeState::from(v.state) as i32,
        mac: v.entry.mac.to_string(),
        ip: v.entry.ip.to_string(),
        image: v.entry.image.clone(),
        groups: v.entry.groups.clone(),
        connected: v.connected,
        last_seen_unix_ms: v.last_seen_ms,
        cert_not_after_unix: v.cert_not_after,
        assigned: None,
        report,
        enrollment_refused: v.enrollment_refused,
        host_key_warnings: v.host_key_warnings,
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

#[tonic::async_trait]
impl Admin for Services {
    type EventsStream = EventStream;
    type ExecStream = Pin<Box<dyn Stream<Item = Result<pb::ExecEvent, Status>> + Send>>;
    type BackupStream = Pin<Box<dyn Stream<Item = Result<pb::BackupChunk, Status>> + Send>>;

    async fn backup(
        &self,
        req: Request<pb::BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        let actor = admin_caller(self, &req).await?;
        let rx = crate::backup::serve(
            &self.store,
            self.fleet.clone(),
            self.state_dir.clone(),
            self.cluster.clone(),
            actor,
        )
        .await?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn exec(
        &self,
        req: Request<pb::ExecRequest>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        let actor = admin_caller(self, &req).await?;
        let r = req.into_inner();
        let plan = crate::exec::plan(&self.fleet, r, actor).await?;
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(crate::exec::session::run(
            plan,
            self.fleet.clone(),
            self.exec.clone(),
            tx,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        admin_caller(self, &req).await?;
        let set = req.into_inner().nodeset;
        let names = if set.trim().is_empty() {
            None
        } else {
            Some(self.fleet.resolve(&set).await?)
        };
        let views = self
            .fleet
            .ask(|reply| Command::Status { names, reply })
            .await?;
        Ok(Response::new(pb::StatusResponse {
            nodes: views.into_iter().map(|v| node_status(v, false)).collect(),
            now_unix_ms: crate::fleet::now_ms(),
            store_problem: self.store.refusing().unwrap_or_default(),
        }))
    }

    async fn show_node(
        &self,
        req: Request<pb::ShowNodeRequest>,
    ) -> Result<Response<pb::NodeStatus>, Status> {
        admin_caller(self, &req).await?;
        let node = req.into_inner().node;
        let view = self
            .fleet
            .ask(|reply| Command::Show {
                node: node.clone(),
                reply,
            })
            .await?
            .ok_or_else(|| Status::not_found(format!("{node} is not in the inventory")))?;
        Ok(Response::new(node_status(view, true)))
    }

    async fn events(
        &self,
        req: Request<pb::EventsRequest>,
    ) -> Result<Response<Self::EventsStream>, Status> {
        admin_caller(self, &req).await?;
        let r = req.into_inner();
        let (head, mut live) = self.fleet.ask(|reply| Command::Subscribe { reply }).await?;
        let mut after = r.after_id;
        if after == 0 && r.last > 0 {
            after = head.saturating_sub(u64::from(r.last));
        }
        let store = self.store.clone();
        let fleet = self.fleet.clone();
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            // History first, from the store, up to the head at subscription;
            // then live events, re-reading the store if this reader lagged.
            let mut sent = after;
            let mut upto = head;
            loop {
                'history: while sent < upto {
                    match store.events(sent, 1000).await {
                        Ok(batch) if !batch.is_empty() => {
                            for e in batch {
                                if e.id > upto {
                                    break 'history;
                                }
                                sent = e.id;
                                if tx.send(Ok(pb::Event::from(e))).await.is_err() {
                                    return;
                                }
                            }
                        }
                        Ok(_) => break,
                        Err(e) => {
                            let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                            return;
                        }
                    }
                }
                // Everything up to the head is history, even an event whose
                // write failed: live events start after it.
                sent = sent.max(upto);
                if !r.follow {
                    return;
                }
                match next_live(&mut live, &tx).await {
                    Live::Event(e) => {
                        if e.id > sent {
                            sent = e.id;
                            if tx.send(Ok(pb::Event::from(e))).await.is_err() {
                                return;
                            }
                        }
                    }
                    Live::Lagged => match fleet.ask(|reply| Command::Subscribe { reply }).await {
                        Ok((h, rx)) => {
                            upto = h;
                            live = rx;
                        }
                        Err(_) => return,
                    },
                    Live::Done => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn pending(
        &self,
        req: Request<pb::PendingRequest>,
    ) -> Result<Response<pb::PendingResponse>, Status> {
        admin_caller(self, &req).await?;
        let rows = self.fleet.ask(|reply| Command::Pending { reply }).await?;
        Ok(Response::new(pb::PendingResponse {
            entries: rows
                .into_iter()
                .map(|p| pb::PendingEntry {
                    mac: p.mac,
                    ip: p.ip,
                    node: p.node,
                    reason: if p.approved {
                        format!("{} (approved)", p.reason)
                    } else {
                        p.reason
                    },
                    first_seen_unix_ms: p.first_seen_ms,
                    last_seen_unix_ms: p.last_seen_ms,
                    attempts: p.attempts,
                })
                .collect(),
        }))
    }

    async fn approve(
        &self,
        req: Request<pb::NodeRequest>,
    ) -> Result<Response<pb::ActionResponse>, Status> {
        let actor = admin_caller(self, &req).await?;
        self.writable()?;
        let node = req.into_inner().node;
        let detail = self
            .fleet
            .ask(|reply| Command::Approve { node, actor, reply })
            .await?
            .map_err(Status::failed_precondition)?;
        self.stored().await?;
        Ok(Response::new(pb::ActionResponse { detail }))
    }

    async fn rearm(
        &self,
        req: Request<pb::NodeRequest>,
    ) -> Result<Response<pb::ActionResponse>, Status> {
        let actor = admin_caller(self, &req).await?;
        self.writable()?;
        let node = req.into_inner().node;
        let detail = self
            .fleet
            .ask(|reply| Command::Rearm { node, actor, reply })
            .await?
            .map_err(Status::failed_precondition)?;
        self.stored().await?;
        Ok(Response::new(pb::ActionResponse { detail }))
    }

    async fn reload(
        &self,
        req: Request<pb::ReloadRequest>,
    ) -> Result<Response<pb::ActionResponse>, Status> {
        let actor = admin_caller(self, &req).await?;
        self.writable()?;
        let detail = reload(&self.fleet, &self.inventory_path, actor).await?;
        self.stored().await?;
        Ok(Response::new(pb::ActionResponse { detail }))
    }

    async fn assign(
        &self,
        req: Request<pb::AssignRequest>,
    ) -> Result<Response<pb::ActionResponse>, Status> {
        let actor = admin_caller(self, &req).await?;
        self.writable()?;
        let r = req.into_inner();
        let target = r
            .target
            .ok_or_else(|| Status::invalid_argument("no target generation"))?
            .try_into()
            .map_err(|e: dfleet_proto::convert::ConvertError| {
                Status::invalid_argument(e.to_string())
            })?;
        let names = self.fleet.resolve(&r.nodeset).await?;
        // The check, the assignment and its apply hold the boot writer's
        // lock together, so `image gc` cannot delete the generation between
        // them.
        let held = self.boot.hold().await;
        crate::boot::check_bootable(&self.fleet, &target).await?;
        let mut detail = self
            .fleet
            .ask(|reply| Command::Assign {
                names,
                target,
                actor: actor.clone(),
                reply,
            })
            .await?
            .map_err(Status::invalid_argument)?;
        self.stored().await?;
        // The menus follow the assignment through the single writer; without
        // a boot network in the inventory there is nothing to write.
        match crate::boot::apply_held(&self.fleet, &held, &actor).await {
            Ok(applied) => {
                detail.push_str(&format!("; boot files: {}", changes_line(&applied.changes)));
                if let Some(text) = applied.nfs_instructions {
                    detail.push_str(&format!("\n\n{text}"));
                }
            }
            Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                detail.push_str(&format!("; boot files not written: {}", s.message()))
            }
            Err(s) => return Err(s),
        }
        Ok(Response::new(pb::ActionResponse { detail }))
    }

    async fn pxe_render(
        &self,
        req: Request<pb::PxeRequest>,
    ) -> Result<Response<pb::PxeFiles>, Status> {
        admin_caller(self, &req).await?;
        let crate::boot::Rendered { inv, files, .. } = crate::boot::files(&self.fleet).await?;
        let files = files
            .into_iter()
            .map(|f| {
                let target = dfleet_provisioner::boot::write::target(&inv.paths, &f)
                    .map(|t| t.display().to_string())
                    .unwrap_or_default();
                pb::PxeFile {
                    tree: tree_name(f.tree).into(),
                    path: f.path.display().to_string(),
                    content: f.bytes,
                    mode: f.mode,
                    target,
                    copy_of: f
                        .copy_of
                        .map(|c| c.path.display().to_string())
                        .unwrap_or_default(),
                }
            })
            .collect();
        Ok(Response::new(pb::PxeFiles { files }))
    }

    async fn pxe_diff(
        &self,
        req: Request<pb::PxeRequest>,
    ) -> Result<Response<pb::PxeChanges>, Status> {
        admin_caller(self, &req).await?;
        let changes = crate::boot::diff(&self.fleet, &self.boot).await?;
        Ok(Response::new(changes_pb(changes, Vec::new())))
    }

    async fn pxe_apply(
        &self,
        req: Request<pb::PxeRequest>,
    ) -> Result<Response<pb::PxeChanges>, Status> {
        let actor = admin_caller(self, &req).await?;
        self.writable()?;
        let applied = crate::boot::apply(&self.fleet, &self.boot, &actor).await?;
        let mut reply = changes_pb(applied.changes, applied.checks);
        reply.nfs_instructions = applied.nfs_instructions.unwrap_or_default();
        Ok(Response::new(reply))
    }

    async fn image_gc(
        &self,
        req: Request<pb::ImageGcRequest>,
    ) -> Result<Response<pb::ImageGcReply>, Status> {
        let actor = admin_caller(self, &req).await?;
        self.writable()?;
        let r = req.into_inner();
        let done = crate::image_gc::gc(&self.fleet, &self.boot, r.keep, r.dry_run, &actor).await?;
        Ok(Response::new(pb::ImageGcReply {
            deleted: done.deleted.iter().map(ToString::to_string).collect(),
            kept_reasons: done.kept,
            boot_files: done.boot_files,
        }))
    }

    async fn image_retire(
        &self,
        req: Request<pb::ImageRetireRequest>,
    ) -> Result<Response<pb::ActionResponse>, Status> {
        let actor = admin_caller(self, &req).await?;
        self.writable()?;
        let g: dfleet_proto::domain::GenerationRef = req
            .into_inner()
            .generation
            .ok_or_else(|| Status::invalid_argument("no generation"))?
            .try_into()
            .map_err(|e: dfleet_proto::convert::ConvertError| {
                Status::invalid_argument(e.to_string())
            })?;
        let detail = crate::image_gc::retire(&self.fleet, &self.boot, &g, &actor).await?;
        Ok(Response::new(pb::ActionResponse { detail }))
    }

    async fn rollout_start(
        &self,
        req: Request<pb::RolloutStartRequest>,
    ) -> Result<Response<pb::ActionResponse>, Status> {
        let actor = admin_caller(self, &req).await?;
        self.writable()?;
        let r = req.into_inner();
        // No target: a plain reboot, each node back on its assignment.
        let target: Option<dfleet_proto::domain::GenerationRef> =
            r.target.map(TryInto::try_into).transpose().map_err(
                |e: dfleet_proto::convert::ConvertError| Status::invalid_argument(e.to_string()),
            )?;
        let or = |v: String, default: &str| if v.is_empty() { default.to_string() } else { v };
        let batch = or(r.batch, "1");
        let spec = crate::rollout::record::PolicySpec {
            target: target.map(|t| t.to_string()).unwrap_or_default(),
            nodes: r.nodeset,
            canary: r.canary as usize,
            max_unavailable: or(r.max_unavailable, &batch),
            batch,
            window: r.window,
            is_drained: r.is_drained,
            drain_cmd: r.drain_cmd,
            drained_check: r.drained_check,
            drain_timeout_s: u64::from(r.drain_timeout_seconds.max(1)),
            undrain_cmd: r.undrain_cmd,
            ready_timeout_s: u64::from(r.ready_timeout_seconds.max(1)),
            max_failures: r.max_failures as usize,
            order: or(r.order, "fullest-overlay-first"),
        };
        let detail = self
            .rollouts
            .ask(|reply| crate::rollout::engine::Request::Start {
                spec: Box::new(spec),
                actor,
                reply,
            })
            .await?
            .map_err(Status::failed_precondition)?;
        Ok(Response::new(pb::ActionResponse { detail }))
    }

    async fn rollout_status(
        &self,
        req: Request<pb::RolloutStatusRequest>,
    ) -> Result<Response<pb::RolloutStatusReply>, Status> {
        admin_caller(self, &req).await?;
        let v = self
            .rollouts
            .ask(|reply| crate::rollout::engine::Request::Status { reply })
            .await?;
        Ok(Response::new(pb::RolloutStatusReply {
            rollout: v.rollout.map(|(row, nodes)| {
                let mut info = rollout_info(row);
                info.window_open = v.window_open;
                info.window_opens_unix_ms = v.window_opens.map_or(0, |t| t.as_millisecond());
                info.nodes = nodes
                    .into_iter()
                    .map(|n| pb::RolloutNode {
                        name: n.node,
                        step: n.step,
                        since_unix_ms: n.step_at_ms,
                        reason: n.reason,
                        canary: n.canary,
                        wave: n.wave,
                    })
                    .collect();
                info
            }),
            frozen_by: v.frozen_by,
        }))
    }

    async fn rollout_control(
        &self,
        req: Request<pb::RolloutControlRequest>,
    ) -> Result<Response<pb::ActionResponse>, Status> {
        let actor = admin_caller(self, &req).await?;
        self.writable()?;
        let action = req.into_inner().action;
        let detail = self
            .rollouts
            .ask(|reply| crate::rollout::engine::Request::Control {
                action,
                actor,
                reply,
            })
            .await?
            .map_err(Status::failed_precondition)?;
        Ok(Response::new(pb::ActionResponse { detail }))
    }

    async fn rollout_history(
        &self,
        req: Request<pb::RolloutHistoryRequest>,
    ) -> Result<Response<pb::RolloutHistoryReply>, Status> {
        admin_caller(self, &req).await?;
        let rows = self
            .rollouts
            .ask(|reply| crate::rollout::engine::Request::History { reply })
            .await?;
        Ok(Response::new(pb::RolloutHistoryReply {
            rollouts: rows.into_iter().map(rollout_info).collect(),
        }))
    }

    async fn reboots_freeze(
        &self,
        req: Request<pb::RebootsFreezeRequest>,
    ) -> Result<Response<pb::ActionResponse>, Status> {
        let actor = admin_caller(self, &req).await?;
        self.writable()?;
        let frozen = req.into_inner().frozen;
        let detail = self
            .rollouts
            .ask(|reply| crate::rollout::engine::Request::Freeze {
                frozen,
                actor,
                reply,
            })
            .await?;
        Ok(Response::new(pb::ActionResponse { detail }))
    }

    async fn resolve_node_set(
        &self,
        req: Request<pb::NodeSetRequest>,
    ) -> Result<Response<pb::NodeSetReply>, Status> {
        admin_caller(self, &req).await?;
        let names = self.fleet.resolve(&req.into_inner().set).await?;
        Ok(Response::new(pb::NodeSetReply { names }))
    }

    async fn ssh_known_hosts(
        &self,
        req: Request<pb::SshKnownHostsRequest>,
    ) -> Result<Response<pb::SshKnownHostsReply>, Status> {
        admin_caller(self, &req).await?;
        let hosts = self.fleet.ask(|reply| Command::SshHosts { reply }).await?;
        let ssh = self.ssh.clone();
        let text = tokio::task::spawn_blocking(move || crate::ssh::known_hosts_text(&ssh, &hosts))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::SshKnownHostsReply { text }))
    }

    async fn ssh_ca(
        &self,
        req: Request<pb::SshCaRequest>,
    ) -> Result<Response<pb::SshCaReply>, Status> {
        admin_caller(self, &req).await?;
        Ok(Response::new(pb::SshCaReply {
            public_key: self.ssh.ca.public_key().to_string(),
            fingerprint: self.ssh.ca.fingerprint(),
        }))
    }

    async fn ssh_rotate(
        &self,
        req: Request<pb::SshRotateRequest>,
    ) -> Result<Response<pb::ActionResponse>, Status> {
        let actor = admin_caller(self, &req).await?;
        self.writable()?;
        let names = self.fleet.resolve(&req.into_inner().nodeset).await?;
        let detail = crate::ssh::rotate(&self.ssh, &self.fleet, names, &actor).await?;
        Ok(Response::new(pb::ActionResponse { detail }))
    }

    async fn image_usage(
        &self,
        req: Request<pb::ImageUsageRequest>,
    ) -> Result<Response<pb::ImageUsageReply>, Status> {
        admin_caller(self, &req).await?;
        let usage = crate::image_gc::usage_of(&self.fleet).await?;
        Ok(Response::new(pb::ImageUsageReply {
            usage: usage
                .into_iter()
                .map(|u| pb::GenerationUsage {
                    generation: Some(u.generation.into()),
                    running: u.running,
                    assigned: u.assigned,
                })
                .collect(),
        }))
    }

    async fn issue_admin_cert(
        &self,
        req: Request<pb::IssueAdminCertRequest>,
    ) -> Result<Response<pb::IssueAdminCertResponse>, Status> {
        let actor = admin_caller(self, &req).await?;
        self.writable()?;
        if req.extensions().get::<UdsConnectInfo>().is_none() {
            return Err(Status::permission_denied(
                "admin certificates are issued over the local socket only",
            ));
        }
        let r = req.into_inner();
        if r.user.is_empty()
            || !r
                .user
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(Status::invalid_argument(format!(
                "invalid user name {:?}",
                r.user
            )));
        }
        let issued = self
            .fleet
            .ask(|reply| Command::IssueAdminCert {
                user: r.user,
                csr_der: r.csr_der,
                actor,
                reply,
            })
            .await?
            .map_err(Status::invalid_argument)?;
        let ca_der = self.ca_der.clone();
        Ok(Response::new(pb::IssueAdminCertResponse {
            cert_der: issued.der,
            ca_der,
            not_after_unix: issued.not_after_unix,
        }))
    }
}

enum Live {
    Event(Event),
    Lagged,
    Done,
}

async fn next_live(
    live: &mut broadcast::Receiver<Event>,
    tx: &mpsc::Sender<Result<pb::Event, Status>>,
) -> Live {
    tokio::select! {
        e = live.recv() => match e {
            Ok(e) => Live::Event(e),
            Err(broadcast::error::RecvError::Lagged(_)) => Live::Lagged,
            Err(broadcast::error::RecvError::Closed) => Live::Done,
        },
        // The reader went away.
        _ = tx.closed() => Live::Done,
    }
}

/// Re-reads the inventory and hands it to the fleet task; an invalid file is
/// reported with every problem and changes nothing.
pub async fn reload(
    fleet: &FleetHandle,
    path: &std::path::Path,
    actor: String,
) -> Result<String, Status> {
    let p = path.to_path_buf();
    let inv =
        tokio::task::spawn_blocking(move || dfleet_provisioner::inventory::Inventory::load(&p))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| {
                Status::invalid_argument(format!("the inventory was not reloaded:\n{e}"))
            })?;
    fleet
        .ask(|reply| Command::Inventory {
            inventory: Box::new(inv),
            actor,
            reply,
        })
        .await
}

fn tree_name(t: dfleet_provisioner::boot::Tree) -> &'static str {
    match t {
        dfleet_provisioner::boot::Tree::Tftp => "tftp",
        dfleet_provisioner::boot::Tree::Dhcp => "dhcp",
        dfleet_provisioner::boot::Tree::Exports => "exports",
    }
}

fn changes_line(c: &dfleet_provisioner::boot::write::Changes) -> String {
    format!(
        "{} created, {} changed, {} removed, {} unchanged",
        c.created.len(),
        c.changed.len(),
        c.removed.len(),
        c.unchanged
    )
}

fn changes_pb(
    c: dfleet_provisioner::boot::write::Changes,
    validation: Vec<String>,
) -> pb::PxeChanges {
    let show =
        |v: Vec<std::path::PathBuf>| v.into_iter().map(|p| p.display().to_string()).collect();
    pb::PxeChanges {
        created: show(c.created),
        changed: show(c.changed),
        removed: show(c.removed),
        unchanged: c.unchanged as u32,
        validation,
        nfs_instructions: String::new(),
    }
}

fn rollout_info(row: crate::store::RolloutRow) -> pb::RolloutInfo {
    pb::RolloutInfo {
        id: row.id,
        target: row.target.map(Into::into),
        state: row.state,
        reason: row.reason,
        actor: row.actor,
        created_unix_ms: row.created_ms,
        updated_unix_ms: row.updated_ms,
        policy_json: row.policy,
        nodes: Vec::new(),
        window_open: false,
        window_opens_unix_ms: 0,
    }
}
