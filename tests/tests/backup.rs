//! `dfleet backup` and `dfleet restore` with a real coordinator and real
//! agents: a backup taken while the daemon serves a fleet, the daemon lost
//! (SIGKILL), the archive restored onto a fresh state directory, and the
//! fleet back on the restored coordinator without anyone re-enrolling it: the
//! same cluster CA, the same SSH host CA and managed keys, and a node whose
//! certificate was issued after the backup adopted. Bad archives and a state
//! directory in use are refused and change nothing.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result, ensure};
use dfleet_proto::domain::EventKind;
use dfleet_tests::{Agent, Coordinator, Settings, bin, cluster_toml, nodes};
use tokio::process::Command;

fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// `dfleet restore FILE --config CONFIG`: (success, stdout and stderr).
async fn restore(archive: &Path, config: &Path) -> Result<(bool, String)> {
    let out = Command::new(bin("dfleet"))
        .arg("restore")
        .arg(archive)
        .arg("--config")
        .arg(config)
        .output()
        .await?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

/// The names of a state directory's coordinator files that exist.
fn state_files(state: &Path) -> Vec<&'static str> {
    [
        "dfleet.db",
        "ca.key",
        "ca.pem",
        "ssh/host_ca",
        "ssh/host_ca.pub",
    ]
    .into_iter()
    .filter(|f| state.join(f).exists())
    .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_taken_while_serving_restores_the_fleet_without_reenrollment() -> Result<()> {
    init();
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let ns = nodes(42, 3);
    let toml = cluster_toml(d, &ns, &Settings::default()).replace(
        "name = \"cn02\"\n",
        "name = \"cn02\"\nssh_host_keys = \"managed\"\n",
    );
    let c = Coordinator::start(d, &toml).await?;
    let mut events = c.watch().await?;
    let mut agents = dfleet_tests::start_ready(&c, d, &ns, &mut events).await?;
    // Makes cn02's managed key, which the backup must carry.
    let known_hosts = c.cli(&["ssh", "known-hosts"]).await?;
    ensure!(known_hosts.contains("cn02"), "{known_hosts}");
    let ssh_ca = c.cli(&["ssh", "ca", "show"]).await?;

    // The backup, while the daemon serves the fleet.
    let archive = d.join("fleet.backup");
    let said = c
        .cli(&["backup", archive.to_str().context("utf-8")?])
        .await?;
    ensure!(said.contains("3 nodes"), "{said}");
    let mode = std::fs::metadata(&archive)?.permissions().mode() & 0o777;
    ensure!(
        mode == 0o600,
        "the archive holds private keys: mode {mode:o}"
    );
    let listing = Command::new("tar").arg("tf").arg(&archive).output().await?;
    ensure!(listing.status.success(), "tar tf: {listing:?}");
    let members: Vec<String> = String::from_utf8(listing.stdout)?
        .lines()
        .map(str::to_string)
        .collect();
    ensure!(members[0] == "MANIFEST.json", "{members:?}");
    for want in [
        "dfleet.db",
        "ca.pem",
        "ca.key",
        "ssh/host_ca",
        "ssh/host_ca.pub",
    ] {
        ensure!(members.iter().any(|m| m == want), "{want} in {members:?}");
    }
    ensure!(
        members.iter().any(|m| m.starts_with("ssh/hosts/cn02/")),
        "cn02's managed key in {members:?}"
    );
    let taken = events.wait(EventKind::Backup, "").await?;
    ensure!(
        taken.actor.starts_with("uid:") && taken.detail.contains("3 nodes"),
        "{taken:?}"
    );

    // After the backup, cn03 reboots and enrolls again: its certificate is
    // one the backup does not know.
    events.clear();
    c.cli(&["node", "rearm", "cn03"]).await?;
    let cn03 = agents.pop().context("cn03")?;
    cn03.kill().await?;
    std::fs::remove_dir_all(d.join("cn03/run/dfleet-agent"))?;
    agents.push(Agent::start(&c, &ns[2], &d.join("cn03")).await?);
    events.wait(EventKind::Enrolled, "cn03").await?;
    events.wait(EventKind::Connected, "cn03").await?;

    // The management host is lost.
    let port = c.grpc.rsplit(':').next().context("port")?.to_string();
    drop(events);
    let mut c = c;
    c.kill().await?;

    // A fresh state directory for the restored coordinator, same port.
    let fresh = d.join("restored");
    std::fs::create_dir_all(&fresh)?;
    let toml2 = cluster_toml(&fresh, &ns, &Settings::default())
        .replace(
            "name = \"cn02\"\n",
            "name = \"cn02\"\nssh_host_keys = \"managed\"\n",
        )
        .replace("127.0.0.1:0\"]", &format!("127.0.0.1:{port}\"]"));
    let config2 = fresh.join("cluster.toml");
    std::fs::write(&config2, &toml2)?;
    let state2 = fresh.join("state");

    // Refused, changing nothing: a state directory already in use…
    let config1 = d.join("cluster.toml");
    let (ok, said) = restore(&archive, &config1).await?;
    ensure!(!ok && said.contains("already holds"), "{said}");
    // …an archive for another cluster…
    let other = fresh.join("other.toml");
    std::fs::write(&other, toml2.replace("name = \"test\"", "name = \"other\""))?;
    let (ok, said) = restore(&archive, &other).await?;
    ensure!(
        !ok && said.contains("cluster \"test\"") && said.contains("\"other\""),
        "{said}"
    );
    ensure!(
        state_files(&state2).is_empty(),
        "{:?}",
        state_files(&state2)
    );
    // …and a damaged one: one byte of the store changed.
    let mut bytes = std::fs::read(&archive)?;
    let db_at = find_member_data(&bytes, "dfleet.db").context("dfleet.db in the archive")?;
    bytes[db_at + 100] ^= 0xff;
    let damaged = d.join("damaged.backup");
    std::fs::write(&damaged, &bytes)?;
    let (ok, said) = restore(&damaged, &config2).await?;
    ensure!(!ok && said.contains("\"dfleet.db\" is damaged"), "{said}");
    ensure!(
        state_files(&state2).is_empty(),
        "{:?}",
        state_files(&state2)
    );
    // A truncated one.
    let truncated = d.join("truncated.backup");
    std::fs::write(&truncated, &std::fs::read(&archive)?[..db_at + 512])?;
    let (ok, said) = restore(&truncated, &config2).await?;
    ensure!(!ok, "{said}");
    ensure!(
        state_files(&state2).is_empty(),
        "{:?}",
        state_files(&state2)
    );

    // The real restore.
    let (ok, said) = restore(&archive, &config2).await?;
    ensure!(ok && said.contains("3 nodes"), "{said}");
    let mode = std::fs::metadata(state2.join("ca.key"))?
        .permissions()
        .mode()
        & 0o777;
    ensure!(mode == 0o600, "ca.key restored with mode {mode:o}");
    ensure!(
        std::fs::read(state2.join("ca.pem"))? == std::fs::read(d.join("state/ca.pem"))?,
        "the cluster CA changed"
    );

    let started = dfleet_tests::now_ms();
    let c2 = Coordinator::start_with(&fresh, &config2).await?;
    let mut events = c2.watch().await?;
    // Every agent reconnects on its own, cn03 with the certificate issued
    // after the backup, which the restored coordinator adopts.
    // (The watch replays the restored event log first: only events of the
    // restored coordinator count.)
    for n in &ns {
        events
            .wait_since(EventKind::Connected, &n.name, started)
            .await?;
    }
    let adopted = events.wait(EventKind::CertAdopted, "cn03").await?;
    ensure!(adopted.detail.contains("after the backup"), "{adopted:?}");
    let enrolled: Vec<_> = events
        .seen
        .iter()
        .filter(|e| e.at_unix_ms >= started)
        .filter(|e| e.kind == EventKind::Enrolled || e.kind == EventKind::EnrollRefused)
        .collect();
    ensure!(enrolled.is_empty(), "nobody enrolls again: {enrolled:?}");
    ensure!(
        c2.cli(&["ssh", "known-hosts"]).await? == known_hosts,
        "known_hosts changed"
    );
    ensure!(
        c2.cli(&["ssh", "ca", "show"]).await? == ssh_ca,
        "the SSH host CA changed"
    );
    let status = c2.status_json().await?;
    for n in status["nodes"].as_array().context("nodes")? {
        ensure!(n["connected"] == true && n["state"] == "ready", "{n}");
    }
    for a in agents {
        a.kill().await?;
    }
    Ok(())
}

/// Where the data of the tar member `name` starts.
fn find_member_data(tar: &[u8], name: &str) -> Option<usize> {
    let mut at = 0;
    while at + 512 <= tar.len() {
        let header = &tar[at..at + 512];
        let end = header[..100].iter().position(|b| *b == 0).unwrap_or(100);
        let member = std::str::from_utf8(&header[..end]).ok()?;
        if member.is_empty() {
            return None;
        }
        let size_field = std::str::from_utf8(&header[124..136]).ok()?;
        let size = u64::from_str_radix(size_field.trim_matches(|c: char| c == '\0' || c == ' '), 8)
            .ok()? as usize;
        if member == name {
            return Some(at + 512);
        }
        at += 512 + size.div_ceil(512) * 512;
    }
    None
}
