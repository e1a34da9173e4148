//! The gRPC listeners' TLS. The coordinator accepts connections and runs the
//! handshakes itself (tokio-rustls) rather than leaving them to tonic, so
//! that a refused handshake is told: the peer's address and why (a
//! certificate of another CA, an expired one), counted in
//! `dfleet_refused_total`. Handlers still read the peer's certificate
//! through tonic (`Request::peer_certs`), which knows tokio-rustls streams.
//!
//! A client certificate is optional at the TLS layer: enrollment is the one
//! RPC a node calls without one, and every other handler checks it. A
//! certificate that is presented must chain to the cluster CA and be valid.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::fleet::tokio_util_shutdown::Shutdown;
use crate::guard::{Guard, Reason};

/// A handshake that takes longer than this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in flight at once; more connections wait in the kernel's
/// backlog. Bounds the memory a reconnect storm or a flood of half-open
/// connections can take.
const HANDSHAKES_IN_FLIGHT: usize = 512;

/// The server's TLS settings: its certificate, client certificates of the
/// cluster CA (optional), HTTP/2.
pub fn server_config(cert_pem: &str, key_pem: &str, ca_der: &[u8]) -> Result<Arc<ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca_der.to_vec()))
        .context("the cluster CA certificate")?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .context("the client certificate verifier")?;
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("the server certificate")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).context("the server key")?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .context("the server certificate and key")?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Why a handshake failed, for the counters.
fn reason(e: &std::io::Error) -> Reason {
    let tls = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    match tls {
        Some(rustls::Error::InvalidCertificate(c)) => match c {
            CertificateError::UnknownIssuer => Reason::TlsUnknownCa,
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => Reason::TlsExpired,
            _ => Reason::TlsBadCertificate,
        },
        _ => Reason::TlsHandshake,
    }
}

/// The listener's connections once their handshake succeeded, as the
/// stream tonic serves. Stops when `shutdown` fires or the server is gone.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    guard: Arc<Guard>,
    mut shutdown: Shutdown,
) -> ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = mpsc::channel(HANDSHAKES_IN_FLIGHT);
    let acceptor = TlsAcceptor::from(config);
    let slots = Arc::new(Semaphore::new(HANDSHAKES_IN_FLIGHT));
    tokio::spawn(async move {
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of descriptors and the like: wait a little
                        // rather than spin.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = shutdown.wait() => return,
                _ = tx.closed() => return,
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let guard = guard.clone();
            tokio::spawn(async move {
                let _slot = slot;
                if let Some(tls) = handshake(&acceptor, tcp, peer, &guard).await {
                    let _ = tx.send(Ok(tls)).await;
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

async fn handshake(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    guard: &Guard,
) -> Option<TlsStream<TcpStream>> {
    let _ = tcp.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
    let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
    let now = crate::fleet::now_ms();
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            guard.refuse(reason(&e), &format!("TLS handshake from {peer}: {e}"), now);
            None
        }
        Err(_) => {
            guard.refuse(
                Reason::TlsHandshake,
                &format!(
                    "TLS handshake from {peer}: not finished within {}s",
                    HANDSHAKE_TIMEOUT.as_secs()
                ),
                now,
            );
            None
        }
    }
}
