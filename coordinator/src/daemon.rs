//! `dfleet serve`: puts the CA, the store, the fleet task, the gRPC listeners
//! (mutual TLS), the admin socket and the metrics endpoint together, and runs
//! them until shutdown.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use dfleet_proto::pb::{
    admin_server::AdminServer, agent_server::AgentServer, enrollment_server::EnrollmentServer,
};
use dfleet_provisioner::inventory::Inventory;
use tokio::net::{TcpListener, UnixListener};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::Server;

use crate::fleet::{Fleet, FleetOptions, tokio_util_shutdown::Shutdown};
use crate::pki::Ca;
use crate::server::Services;
use crate::store::Store;

/// Largest message an agent or admin may send: a report with its largest
/// paths is a few kilobytes; anything near this is hostile.
const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// Listeners the daemon serves on, bound by the caller (so tests and the demo
/// can bind port 0 and learn the address).
#[derive(Debug)]
pub struct Listeners {
    pub grpc: Vec<TcpListener>,
    pub metrics: Option<TcpListener>,
    pub admin: UnixListener,
    pub admin_path: PathBuf,
}

/// The addresses the daemon actually listens on.
#[derive(Debug, Clone)]
pub struct Bound {
    pub grpc: Vec<SocketAddr>,
    pub metrics: Option<SocketAddr>,
    pub admin: PathBuf,
}

impl Bound {
    /// The line `dfleet serve` prints once it serves; tests and scripts wait for it.
    pub fn ready_line(&self) -> String {
        let grpc: Vec<String> = self.grpc.iter().map(|a| a.to_string()).collect();
        format!(
            "dfleet: serving grpc={} metrics={} admin={}",
            grpc.join(","),
            self.metrics
                .map(|a| a.to_string())
                .unwrap_or_else(|| "-".into()),
            self.admin.display()
        )
    }
}

/// Binds the listeners the inventory names.
pub async fn bind(inv: &Inventory) -> Result<Listeners> {
    let mut grpc = Vec::new();
    for addr in &inv.cluster.listen {
        grpc.push(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the gRPC listener {addr}"))?,
        );
    }
    let metrics = match inv.cluster.metrics_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the metrics listener {addr}"))?,
        ),
        None => None,
    };
    let admin_path = inv.cluster.admin_socket.clone();
    let admin = bind_admin_socket(&admin_path, &inv.cluster.admin_group)?;
    Ok(Listeners {
        grpc,
        metrics,
        admin,
        admin_path,
    })
}

/// Binds the admin socket with mode 0660 and the admin group, so that only
/// root and members of that group can reach it.
pub fn bind_admin_socket(path: &Path, group: &str) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("removing the old socket {}", path.display()));
        }
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("binding the admin socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    match group_id(group) {
        Some(gid) => std::os::unix::fs::chown(path, None, Some(gid))
            .with_context(|| format!("giving {} to group {group}", path.display()))?,
        None => {
            tracing::warn!(group, socket = %path.display(), "the admin group does not exist; only root can use the admin socket")
        }
    }
    Ok(listener)
}

/// Looks a group up in /etc/group.
fn group_id(name: &str) -> Option<u32> {
    let text = std::fs::read_to_string("/etc/group").ok()?;
    text.lines().find_map(|line| {
        let mut f = line.split(':');
        (f.next()? == name).then_some(())?;
        f.next()?;
        f.next()?.parse().ok()
    })
}

/// Runs the coordinator on bound listeners until `shutdown` fires. `on_ready`
/// is called once everything serves.
pub async fn run(
    inv: Inventory,
    listeners: Listeners,
    shutdown: Shutdown,
    on_ready: impl FnOnce(&Bound),
) -> Result<()> {
    let state_dir = inv.cluster.state_dir.clone();
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("creating the state directory {}", state_dir.display()))?;
    std::fs::set_permissions(&state_dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("setting the mode of {}", state_dir.display()))?;
    let ca = Arc::new(Ca::load_or_create(&state_dir, &inv.cluster.name)?);
    let ssh = Arc::new(crate::ssh::Ssh {
        ca: crate::ssh::SshCa::load_or_create(&state_dir, &inv.cluster.name)?,
        managed: crate::ssh::ManagedKeys::new(&state_dir),
    });
    let (store, mut loaded) = Store::open(&state_dir)?;
    let rollouts = std::mem::take(&mut loaded.rollouts);
    let rollout_nodes = std::mem::take(&mut loaded.rollout_nodes);
    let settings = std::mem::take(&mut loaded.settings);

    let mut ips: Vec<std::net::IpAddr> = listeners
        .grpc
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .map(|a| a.ip())
        .filter(|ip| !ip.is_unspecified())
        .collect();
    ips.dedup();
    // The server certificate is made fresh at every start; only the CA persists.
    let (cert_pem, key_pem) = ca.server_identity(
        &inv.cluster.coordinator_name,
        &ips,
        Duration::from_secs(365 * 86400),
    )?;
    // Enrollment is the one RPC callable without a certificate; every other
    // handler checks the peer certificate itself.
    let tls = crate::tls::server_config(&cert_pem, &key_pem, ca.cert_der())?;
    let guard = Arc::new(crate::guard::Guard::default());

    // The BMC credentials are read again at each use; a bad file is told now
    // rather than in the middle of a rollout.
    if let Some(path) = inv.power.as_ref().and_then(|p| p.credentials.as_ref())
        && let Err(e) = crate::power::read_secret(path)
    {
        tracing::warn!("{e}: a rollout cannot power-cycle an unreachable node until it is fixed");
    }
    let inventory_path = inv.path.clone();
    let cluster = inv.cluster.name.clone();
    let dhcp_log = inv.boot.as_ref().and_then(|b| b.dhcp_log.clone());
    let fleet = Fleet::new(
        inv,
        loaded,
        store.clone(),
        ca.clone(),
        FleetOptions::default(),
    )
    .spawn(shutdown.clone());
    let boot = crate::boot::BootWriter::new(&state_dir);
    let engine = crate::rollout::engine::Engine::new(
        fleet.clone(),
        store.clone(),
        boot.clone(),
        ips.clone(),
        rollouts,
        rollout_nodes,
        &settings,
    )
    .spawn();
    let services = Services {
        fleet: fleet.clone(),
        store,
        inventory_path: inventory_path.clone(),
        ca_der: ca.cert_der().to_vec(),
        boot,
        rollouts: engine,
        exec: crate::exec::ExecRouter::default(),
        ssh,
        state_dir: state_dir.clone(),
        cluster,
        guard: guard.clone(),
    };

    let bound = Bound {
        grpc: listeners
            .grpc
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect(),
        metrics: listeners.metrics.as_ref().and_then(|l| l.local_addr().ok()),
        admin: listeners.admin_path.clone(),
    };

    let mut tasks = tokio::task::JoinSet::new();
    for listener in listeners.grpc {
        let mut server = Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)));
        let router = server
            .add_service(
                EnrollmentServer::new(services.clone()).max_decoding_message_size(64 << 10),
            )
            .add_service(
                AgentServer::new(services.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES),
            )
            .add_service(
                AdminServer::new(services.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES),
            );
        let mut stop = shutdown.clone();
        let incoming = crate::tls::incoming(listener, tls.clone(), guard.clone(), shutdown.clone());
        tasks.spawn(async move {
            router
                .serve_with_incoming_shutdown(incoming, async move { stop.wait().await })
                .await
                .context("gRPC listener")
        });
    }
    {
        let router = Server::builder().add_service(AdminServer::new(services.clone()));
        let mut stop = shutdown.clone();
        let admin = listeners.admin;
        tasks.spawn(async move {
            router
                .serve_with_incoming_shutdown(UnixListenerStream::new(admin), async move {
                    stop.wait().await
                })
                .await
                .context("admin socket")
        });
    }
    if let Some(log) = dhcp_log {
        let fleet = fleet.clone();
        let stop = shutdown.clone();
        tasks.spawn(async move {
            crate::dhcp_log::watch(log, fleet, stop).await;
            Ok(())
        });
    }
    if let Some(metrics) = listeners.metrics {
        let fleet = fleet.clone();
        let rollouts = services.rollouts.clone();
        let stop = shutdown.clone();
        let guard = guard.clone();
        tasks.spawn(async move {
            crate::metrics::serve(metrics, fleet, rollouts, guard, stop).await;
            Ok(())
        });
    }
    {
        // SIGHUP re-reads the inventory, like `dfleet reload`.
        let fleet = fleet.clone();
        let mut stop = shutdown.clone();
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("installing the SIGHUP handler")?;
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = hup.recv() => {
                        match crate::server::reload(&fleet, &inventory_path, "signal:SIGHUP".into()).await {
                            Ok(summary) => tracing::info!(%summary, "inventory reloaded"),
                            Err(e) => tracing::error!(error = %e.message(), "inventory not reloaded"),
                        }
                    }
                    _ = stop.wait() => return Ok(()),
                }
            }
        });
    }
    on_ready(&bound);
    notify_systemd("READY=1");
    let mut result = Ok(());
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                if result.is_ok() {
                    result = Err(e);
                }
            }
            Err(e) => {
                if result.is_ok() {
                    result = Err(anyhow::anyhow!("a server task panicked: {e}"));
                }
            }
        }
    }
    let _ = std::fs::remove_file(&bound.admin);
    result
}

/// Tells systemd (Type=notify) about our state, when started by it.
fn notify_systemd(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(_) => return,
    };
    let path = PathBuf::from(path);
    // Abstract sockets ('@…') are not reachable through a path; those are
    // left alone rather than mis-addressed.
    if path.to_string_lossy().starts_with('@') {
        return;
    }
    let _ = sock.send_to(state.as_bytes(), &path);
}
