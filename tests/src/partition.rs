//! A network partition the test controls: a TCP relay between agents and
//! the coordinator. While it is cut, no byte crosses in either direction
//! and new connections hang after the TCP handshake, yet no connection is
//! closed: neither side receives a FIN or a reset, so each finds out only
//! from its own keepalive, as behind a failed switch. Healed, every byte
//! held flows again.
//!
//! The coordinator sees each agent's own address: the relay dials out from
//! the address the agent connected from, and from a privileged port when
//! the agent used one (enrollment checks both).

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct Partition {
    /// Where agents dial instead of the coordinator.
    pub addr: String,
    cut: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Partition {
    /// A relay to `upstream`, listening on a port of 127.0.0.1 the kernel
    /// picks; it starts healed.
    pub async fn start(upstream: &str) -> Result<Partition> {
        let upstream: SocketAddr = upstream
            .parse()
            .with_context(|| format!("coordinator address {upstream}"))?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let (cut, watching) = watch::channel(false);
        let task = tokio::spawn(async move {
            while let Ok((agent, from)) = listener.accept().await {
                tokio::spawn(relay(agent, from, upstream, watching.clone()));
            }
        });
        Ok(Partition { addr, cut, task })
    }

    /// Stops every byte, both ways, without closing anything.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Lets bytes flow again.
    pub fn heal(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits while the partition is cut.
async fn open(cut: &mut watch::Receiver<bool>) -> bool {
    cut.wait_for(|c| !c).await.is_ok()
}

async fn relay(
    agent: TcpStream,
    from: SocketAddr,
    upstream: SocketAddr,
    mut cut: watch::Receiver<bool>,
) {
    // A connection made while cut hangs as an unanswered one would.
    if !open(&mut cut).await {
        return;
    }
    let Ok(coordinator) = dial(from, upstream).await else {
        return;
    };
    let (ar, aw) = agent.into_split();
    let (cr, cw) = coordinator.into_split();
    tokio::join!(pipe(ar, cw, cut.clone()), pipe(cr, aw, cut),);
}

/// Connects to `upstream` from `from`'s address, from a privileged port
/// when `from`'s was one.
async fn dial(from: SocketAddr, upstream: SocketAddr) -> std::io::Result<TcpStream> {
    let ports: Vec<u16> = if from.port() < 1024 {
        (600..1024).rev().collect()
    } else {
        vec![0]
    };
    let mut last = None;
    for port in ports {
        let socket = match from.ip() {
            IpAddr::V4(_) => TcpSocket::new_v4()?,
            IpAddr::V6(_) => TcpSocket::new_v6()?,
        };
        match socket.bind(SocketAddr::new(from.ip(), port)) {
            Ok(()) => return socket.connect(upstream).await,
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no port to bind")))
}

/// Copies `from` to `to` while the partition is healed; an end of stream
/// is passed on (once healed) as a FIN.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut cut: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 << 10];
    loop {
        if !open(&mut cut).await {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Bytes read just before a cut are held until it heals.
        if !open(&mut cut).await || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
    if open(&mut cut).await {
        let _ = to.shutdown().await;
    }
}
