//! How the CLI reaches the daemon: the local admin socket (the caller's uid is
//! read by the daemon and audited), or mutual TLS with an admin certificate
//! for remote administrators.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use dfleet_proto::pb::admin_client::AdminClient;
use hyper_util::rt::TokioIo;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Where the admin CLI connects.
#[derive(Debug, Clone)]
pub enum Target {
    Socket(PathBuf),
    Remote {
        /// `host:port` of a gRPC listener.
        addr: String,
        cert: PathBuf,
        key: PathBuf,
        ca: PathBuf,
        server_name: String,
    },
}

pub async fn connect(target: &Target) -> Result<AdminClient<Channel>> {
    let channel = match target {
        Target::Socket(path) => connect_socket(path).await?,
        Target::Remote {
            addr,
            cert,
            key,
            ca,
            server_name,
        } => {
            let read =
                |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
            let tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(read(ca)?))
                .identity(Identity::from_pem(read(cert)?, read(key)?))
                .domain_name(server_name.clone());
            Endpoint::from_shared(format!("https://{addr}"))
                .context("the remote address")?
                .tls_config(tls)
                .context("configuring TLS")?
                .connect()
                .await
                .with_context(|| format!("connecting to the coordinator at {addr}"))?
        }
    };
    Ok(AdminClient::new(channel).max_decoding_message_size(256 << 20))
}

async fn connect_socket(path: &Path) -> Result<Channel> {
    let path = path.to_path_buf();
    let shown = path.display().to_string();
    // The URI is required by the API but unused: the connector dials the socket.
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
        }))
        .await
        .with_context(|| format!("connecting to the coordinator's admin socket {shown} (is `dfleet serve` running, and are you in its admin group?)"))
}
