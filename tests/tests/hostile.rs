//! Hostile input against a real coordinator over real TLS: a replayed
//! enrollment, a client without a certificate, certificates of a foreign CA
//! and expired ones, a stream that claims another node, an oversized
//! message, floods of reports and host key requests. Each is refused with a
//! reason the client is told and the coordinator logs, counted in the
//! metrics, while the real agents of the fleet go on being served.

use anyhow::{Context, Result, bail, ensure};
use dfleet_agent::link::{self, Credentials, LinkError};
use dfleet_proto::domain::{EventKind, Report};
use dfleet_proto::pb;
use dfleet_tests::{Coordinator, Settings, TestNode, cluster_toml, nodes};
use rcgen::{CertificateParams, Issuer, KeyPair, SanType};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The value of a metric sample (`name{labels}` as written), 0 when absent.
async fn metric(c: &Coordinator, sample: &str) -> Result<f64> {
    let (_, body) = dfleet_tests::http_get(&c.metrics, "/metrics").await?;
    Ok(body
        .lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0))
}

fn refused(reason: &str) -> String {
    format!("dfleet_refused_total{{reason=\"{reason}\"}}")
}

/// How the test reaches the coordinator, as node `n`'s agent would.
fn link_for(c: &Coordinator, n: &TestNode) -> Result<link::Coordinator> {
    Ok(link::Coordinator {
        addr: c.grpc.clone(),
        server_name: "dfleet-coordinator".into(),
        ca_pem: std::fs::read(c.ca())?,
        bind: Some(n.ip.into()),
    })
}

/// A node certificate for `node` signed by `issuer`, valid from `from` to
/// `until` (unix seconds).
fn node_cert(
    issuer: &Issuer<'_, KeyPair>,
    node: &str,
    from: i64,
    until: i64,
) -> Result<Credentials> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(
        format!("dfleet://node/{node}").as_str().try_into()?,
    )];
    params.not_before = time_of(from)?;
    params.not_after = time_of(until)?;
    let cert = params.signed_by(&key, issuer)?;
    Ok(Credentials {
        node: node.into(),
        key_pem: key.serialize_pem(),
        cert_der: cert.der().to_vec(),
        not_after_unix: until,
        issued_at_unix: from,
    })
}

fn time_of(unix: i64) -> Result<time::OffsetDateTime> {
    Ok(time::OffsetDateTime::from_unix_timestamp(unix)?)
}

/// Opens an agent stream with `identity` and sends `hello`; returns the
/// sender for more messages and the coordinator's answers, or the refusal.
async fn open(
    l: &link::Coordinator,
    identity: Option<&Credentials>,
    hello: pb::Hello,
) -> Result<
    std::result::Result<
        (
            mpsc::Sender<pb::AgentMessage>,
            tonic::Streaming<pb::CoordinatorMessage>,
        ),
        tonic::Status,
    >,
> {
    let channel = match l.channel(identity, false).await {
        Ok(ch) => ch,
        // A refused handshake may end the connection before any RPC.
        Err(LinkError::Connect { message, .. }) => {
            return Ok(Err(tonic::Status::unavailable(message)));
        }
        Err(e) => bail!("{e}"),
    };
    let (tx, rx) = mpsc::channel(64);
    tx.send(pb::AgentMessage {
        kind: Some(pb::agent_message::Kind::Hello(hello)),
    })
    .await?;
    let mut client = pb::agent_client::AgentClient::new(channel);
    Ok(client
        .connect(ReceiverStream::new(rx))
        .await
        .map(|r| (tx, r.into_inner())))
}

fn hello(n: &TestNode, node: &str) -> pb::Hello {
    pb::Hello {
        node: node.into(),
        mac: n.mac.clone(),
        boot_id: "hostile-boot".into(),
        agent_version: "test".into(),
        protocol: dfleet_proto::PROTOCOL_REVISION,
    }
}

fn report(r: Report) -> pb::AgentMessage {
    pb::AgentMessage {
        kind: Some(pb::agent_message::Kind::Report(pb::Report::from(r))),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_clients_are_refused_counted_and_the_fleet_is_still_served() -> Result<()> {
    init();
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let ns = nodes(43, 3);
    let toml = cluster_toml(d, &ns, &Settings::default());
    let mut c = Coordinator::start_capturing(d, &toml).await?;
    let mut events = c.watch().await?;
    // cn01 and cn02 are the fleet that must go on being served; the test
    // plays cn03.
    let agents = dfleet_tests::start_ready(&c, d, &ns[..2], &mut events).await?;
    let cn03 = &ns[2];
    let l = link_for(&c, cn03)?;

    // An enrollment whose answer was lost (its certificate never reached a
    // stream) may be asked again: the enrollment did not finish.
    let (key, csr) = link::new_key_and_csr()?;
    let lost = l
        .enroll(&key, &csr, &cn03.mac, "hostile-boot")
        .await?
        .map_err(|(why, _)| anyhow::anyhow!("pending: {why}"))?;
    let creds = l
        .enroll(&key, &csr, &cn03.mac, "hostile-boot")
        .await?
        .map_err(|(why, _)| anyhow::anyhow!("pending: {why}"))?;
    ensure!(
        lost.cert_der != creds.cert_der,
        "the same certificate twice"
    );
    // Once the certificate was used on a stream, the very same request
    // again is a replay.
    let (tx, _answers) = open(&l, Some(&creds), hello(cn03, "cn03")).await??;
    events.wait(EventKind::Connected, "cn03").await?;
    drop(tx);
    events.wait(EventKind::Disconnected, "cn03").await?;
    match l.enroll(&key, &csr, &cn03.mac, "hostile-boot").await {
        Err(LinkError::Refused(m)) => ensure!(m.contains("second enrollment refused"), "{m}"),
        other => bail!("a replayed enrollment was not refused: {other:?}"),
    }
    ensure!(
        metric(
            &c,
            "dfleet_enrollments_refused_total{reason=\"already_enrolled\"}"
        )
        .await?
            == 1.0
    );

    // An agent stream without a certificate.
    let err = open(&l, None, hello(cn03, "cn03"))
        .await?
        .err()
        .context("accepted")?;
    ensure!(
        err.code() == tonic::Code::Unauthenticated && err.message().contains("node certificate"),
        "{err:?}"
    );
    c.wait_log("reason=\"no_certificate\"").await?;
    ensure!(metric(&c, &refused("no_certificate")).await? == 1.0);

    // A certificate of another CA, naming cn03.
    let foreign_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::default();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let foreign_ca = ca_params.self_signed(&foreign_key)?;
    let foreign = Issuer::from_ca_cert_der(foreign_ca.der(), foreign_key)?;
    let now = link::unix_now();
    let forged = node_cert(&foreign, "cn03", now - 60, now + 3600)?;
    let err = open(&l, Some(&forged), hello(cn03, "cn03"))
        .await?
        .err()
        .context("accepted")?;
    ensure!(err.code() != tonic::Code::Ok, "{err:?}");
    c.wait_log("reason=\"tls_unknown_ca\"").await?;
    // (The client may try the handshake more than once.)
    ensure!(metric(&c, &refused("tls_unknown_ca")).await? >= 1.0);

    // An expired certificate, signed by the cluster CA itself.
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(d.join("state/ca.key"))?)?;
    let ca = Issuer::from_ca_cert_pem(&std::fs::read_to_string(c.ca())?, ca_key)?;
    let expired = node_cert(&ca, "cn03", now - 7200, now - 3600)?;
    let err = open(&l, Some(&expired), hello(cn03, "cn03"))
        .await?
        .err()
        .context("accepted")?;
    ensure!(err.code() != tonic::Code::Ok, "{err:?}");
    c.wait_log("reason=\"tls_expired\"").await?;
    ensure!(metric(&c, &refused("tls_expired")).await? >= 1.0);

    // cn03's own certificate, claiming to be cn02.
    let err = open(&l, Some(&creds), hello(cn03, "cn02"))
        .await?
        .err()
        .context("accepted")?;
    ensure!(
        err.code() == tonic::Code::PermissionDenied
            && err
                .message()
                .contains("certificate names cn03 but the stream claims cn02"),
        "{err:?}"
    );
    events.wait(EventKind::StreamRefused, "cn02").await?;
    ensure!(metric(&c, "dfleet_streams_refused_total").await? == 1.0);

    // A message over the limit ends the stream that sent it.
    let (tx, mut answers) = open(&l, Some(&creds), hello(cn03, "cn03")).await??;
    let mut huge = Report::default();
    huge.identity.hostname = "x".repeat(5 << 20);
    tx.send(report(huge)).await?;
    let err = loop {
        match answers.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => bail!("the stream ended without a reason"),
            Err(e) => break e,
        }
    };
    ensure!(err.message().contains("too large"), "{err:?}");
    c.wait_log("reason=\"message_too_large\"").await?;
    ensure!(metric(&c, &refused("message_too_large")).await? == 1.0);

    // Floods: reports and host key requests far beyond any agent's rate.
    let (tx, mut answers) = open(&l, Some(&creds), hello(cn03, "cn03")).await??;
    let reports0 = metric(&c, "dfleet_reports_total").await?;
    const REPORTS: usize = 2000;
    for _ in 0..REPORTS {
        tx.send(report(Report::default())).await?;
    }
    for _ in 0..50 {
        tx.send(pb::AgentMessage {
            kind: Some(pb::agent_message::Kind::HostKeyRequest(
                pb::HostKeyRequest::default(),
            )),
        })
        .await?;
    }
    // The first host key requests (the burst) are answered; the stream task
    // reads in order, so their answers mean every report before them was
    // read, accepted or dropped.
    let mut host_key_answers = 0;
    while host_key_answers < 5 {
        match answers.message().await? {
            Some(pb::CoordinatorMessage {
                kind: Some(pb::coordinator_message::Kind::HostKeys(_)),
            }) => host_key_answers += 1,
            Some(_) => {}
            None => bail!("the flooding stream was closed"),
        }
    }
    c.wait_log("reason=\"report_flood\"").await?;
    c.wait_log("reason=\"host_key_flood\"").await?;
    // Metrics are answered by the fleet task after the reports queued to it.
    let dropped = metric(&c, &refused("report_flood")).await?;
    let accepted = metric(&c, "dfleet_reports_total").await? - reports0;
    ensure!(
        dropped + accepted == REPORTS as f64 && dropped > 1000.0,
        "{dropped} dropped, {accepted} accepted of {REPORTS}"
    );
    ensure!(metric(&c, &refused("host_key_flood")).await? >= 1.0);
    // The rest of the fleet is served all along: a command on cn01 and cn02
    // answers from both.
    let out = c
        .cli_raw(&["exec", "cn[01-02]", "-b", "--", "true"])
        .await?;
    let said = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success() && said.contains(": 2 ok"), "{said}");
    drop(tx);

    for a in agents {
        a.kill().await?;
    }
    Ok(())
}
