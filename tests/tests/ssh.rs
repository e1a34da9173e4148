//! SSH host keys with real OpenSSH: agents in sandboxes that have sshd get
//! a host certificate (certificates mode) or their managed key from a real
//! coordinator; `ssh-keygen -L` reads the certificate; a real sshd, in a
//! network namespace of the test's own, serving the delivered key is reached
//! by `ssh -o StrictHostKeyChecking=yes` with nothing but the known_hosts
//! file `dfleet ssh known-hosts` wrote; a wrong node's key is refused;
//! `dfleet ssh rotate` gives both a new key; the coordinator flags keys
//! shared by nodes of one image and a managed key replaced by hand; a
//! managed key comes back the same after the node's RAM layer is gone; after
//! a coordinator restart a certified node keeps the certificate its sshd
//! serves (no new one, no sshd restart) and a managed node gets the same key.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, Result, bail, ensure};
use dfleet_agent::sandbox::{self, SandboxSpec};
use dfleet_proto::domain::EventKind;
use dfleet_tests::{Agent, Coordinator, Settings, TestNode, cluster_toml, nodes};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A sandbox whose node runs sshd (the host's, linked in).
fn sandbox_with_sshd(dir: &Path, n: &TestNode) -> Result<PathBuf> {
    let root = dir.join(&n.name);
    sandbox::build(&root, &SandboxSpec::new(&n.name, n.mac.parse()?, n.ip))?;
    std::fs::create_dir_all(root.join("usr/sbin"))?;
    std::os::unix::fs::symlink("/usr/sbin/sshd", root.join("usr/sbin/sshd"))?;
    Ok(root)
}

async fn run(cmd: &mut Command) -> Result<std::process::Output> {
    let o = cmd
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("{cmd:?}"))?;
    Ok(o)
}

/// A network namespace of the test, removed when dropped.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

/// A real sshd in `ns` on `addr:22` serving `key` (and `cert`), letting in
/// `client.pub` as root. Ready once it says it listens.
async fn sshd(
    ns: &Netns,
    dir: &Path,
    addr: &str,
    key: &Path,
    cert: Option<&Path>,
) -> Result<Child> {
    let config = dir.join(format!("sshd-{addr}.conf"));
    let mut text = format!(
        "ListenAddress {addr}:22\nHostKey {}\nAuthorizedKeysFile {}\nPermitRootLogin prohibit-password\n\
         PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n\
         PidFile none\nLogLevel INFO\n",
        key.display(),
        dir.join("client.pub").display()
    );
    if let Some(cert) = cert {
        text.push_str(&format!("HostCertificate {}\n", cert.display()));
    }
    std::fs::write(&config, text)?;
    std::fs::create_dir_all("/run/sshd")?;
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.0, "/usr/sbin/sshd", "-D", "-e", "-f"])
        .arg(&config)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut log = BufReader::new(child.stderr.take().context("stderr")?).lines();
    let mut seen = Vec::new();
    loop {
        let Some(line) = log.next_line().await? else {
            bail!("sshd on {addr} ended:\n{}", seen.join("\n"));
        };
        if line.starts_with(&format!("Server listening on {addr} port 22")) {
            break;
        }
        seen.push(line);
    }
    tokio::spawn(async move { while let Ok(Some(_)) = log.next_line().await {} });
    Ok(child)
}

/// `ssh root@host true` from inside `ns`, trusting only `known_hosts`.
async fn ssh(
    ns: &Netns,
    dir: &Path,
    host: &str,
    known_hosts: &Path,
) -> Result<std::process::Output> {
    run(Command::new("ip")
        .args(["netns", "exec", &ns.0, "ssh", "-F", "/dev/null"])
        .args(["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .args([
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "IdentitiesOnly=yes",
        ])
        .arg("-i")
        .arg(dir.join("client"))
        .args([&format!("root@{host}"), "true"]))
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn certificates_and_managed_keys_work_with_real_openssh() -> Result<()> {
    init();
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let ns = nodes(41, 4);
    // cn01: certificates (the default); cn02: managed; cn03 and cn04 run no
    // sshd and were built from an image with host keys in it.
    let toml = cluster_toml(d, &ns, &Settings::default()).replace(
        "name = \"cn02\"\n",
        "name = \"cn02\"\nssh_host_keys = \"managed\"\n",
    );
    let c = Coordinator::start(d, &toml).await?;
    let mut events = c.watch().await?;
    let mut roots: Vec<PathBuf> = ns[..2]
        .iter()
        .map(|n| sandbox_with_sshd(d, n))
        .collect::<Result<_>>()?;
    for n in &ns[2..] {
        let mut spec = SandboxSpec::new(&n.name, n.mac.parse()?, n.ip);
        spec.shared_image_keys = true;
        let root = d.join(&n.name);
        sandbox::build(&root, &spec)?;
        roots.push(root);
    }
    // One image: cn04's lower holds cn03's image keys (merged view too).
    for dir in [
        sandbox::LOWER.to_string() + "/etc/ssh",
        "etc/ssh".to_string(),
    ] {
        for entry in std::fs::read_dir(roots[2].join(&dir))? {
            let entry = entry?;
            std::fs::copy(entry.path(), roots[3].join(&dir).join(entry.file_name()))?;
        }
    }
    let mut agents = Vec::new();
    for (n, root) in ns.iter().zip(&roots) {
        agents.push(Agent::start_logged(&c, n, root).await?);
    }
    // Each agent with sshd says when the coordinator's material is in place.
    for a in &mut agents[..2] {
        a.wait_log("SSH host key in place").await?;
    }
    // The image's keys are the same on cn03 and cn04: flagged on both.
    for node in ["cn03", "cn04"] {
        let other = if node == "cn03" { "cn04" } else { "cn03" };
        let flag = events.wait(EventKind::HostKeyWarning, node).await?;
        assert!(
            flag.detail.starts_with("host key SHA256:")
                && flag.detail.ends_with(&format!(" is also on {other} (1)")),
            "{flag:?}"
        );
    }
    // Ready means every check passed, the host key check of a node with
    // sshd included.
    events.wait(EventKind::Ready, "cn01").await?;
    let status = c.status_json().await?;
    let cn01 = status["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["name"] == "cn01")
        .context("cn01 in status")?;
    let check = cn01["report"]["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == "ssh-host-keys")
        .context("no ssh-host-keys check")?;
    assert_eq!(check["status"], "pass", "{check}");
    let warnings = |node: &str| -> Vec<String> {
        status["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["name"] == node)
            .and_then(|n| n["host_key_warnings"].as_array())
            .map(|w| {
                w.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(
        warnings("cn03").iter().all(|w| w.starts_with("shared: ")) && !warnings("cn03").is_empty()
    );
    assert_eq!(warnings("cn01"), Vec::<String>::new());
    let issued = events.wait(EventKind::HostKeys, "cn01").await?;
    assert!(
        issued
            .detail
            .starts_with("host certificate for cn01,127.41.0.1 valid until "),
        "{issued:?}"
    );
    let managed = events.wait(EventKind::HostKeys, "cn02").await?;
    assert!(
        managed.detail.starts_with("managed host key SHA256:"),
        "{managed:?}"
    );

    // The certificate as OpenSSH reads it: a host certificate for this
    // node's key, its names, signed by the cluster's CA.
    let ca = c.cli(&["ssh", "ca", "show"]).await?;
    let ca_fp = ca
        .lines()
        .find_map(|l| l.strip_prefix("fingerprint: "))
        .context("no fingerprint")?
        .to_string();
    let cert = roots[0].join("etc/ssh/ssh_host_ed25519_key-cert.pub");
    let shown = run(Command::new("ssh-keygen").arg("-L").arg("-f").arg(&cert)).await?;
    let shown = String::from_utf8(shown.stdout)?;
    for want in [
        "Type: ssh-ed25519-cert-v01@openssh.com host certificate".to_string(),
        format!("Signing CA: ED25519 {ca_fp}"),
        "                cn01\n                127.41.0.1\n".to_string(),
    ] {
        assert!(shown.contains(&want), "no {want:?} in:\n{shown}");
    }
    // The agent's own drop-in names the key and the certificate for sshd.
    let drop_in =
        std::fs::read_to_string(roots[0].join("etc/ssh/sshd_config.d/50-dfleet-host-keys.conf"))?;
    assert!(
        drop_in.contains("HostCertificate /etc/ssh/ssh_host_ed25519_key-cert.pub"),
        "{drop_in}"
    );

    let known_hosts = d.join("known_hosts");
    c.cli(&[
        "ssh",
        "known-hosts",
        "--out",
        known_hosts.to_str().context("path")?,
    ])
    .await?;
    let kh = std::fs::read_to_string(&known_hosts)?;
    let cn02_pub = std::fs::read_to_string(roots[1].join("etc/ssh/ssh_host_ed25519_key.pub"))?;
    let cn02_key: Vec<&str> = cn02_pub.split_whitespace().take(2).collect();
    assert!(
        kh.contains(
            "\n@cert-authority cn01,127.41.0.1,cn03,127.41.0.3,cn04,127.41.0.4 ssh-ed25519 "
        ) && kh.contains(&format!("\ncn02,127.41.0.2 {}\n", cn02_key.join(" "))),
        "{kh}"
    );

    // Real sshd serving what each node got, reached with only that file.
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(d.join("client")))
    .await?;
    let ns_name = Netns(format!("dfleet-t41-{}", std::process::id()));
    ensure!(
        run(Command::new("ip").args(["netns", "add", &ns_name.0]))
            .await?
            .status
            .success()
    );
    run(Command::new("ip").args(["-n", &ns_name.0, "link", "set", "lo", "up"])).await?;
    let key = |i: usize| roots[i].join("etc/ssh/ssh_host_ed25519_key");
    let s1 = sshd(&ns_name, d, "127.41.0.1", &key(0), Some(&cert)).await?;
    let s2 = sshd(&ns_name, d, "127.41.0.2", &key(1), None).await?;
    for host in ["127.41.0.1", "127.41.0.2"] {
        let o = ssh(&ns_name, d, host, &known_hosts).await?;
        assert!(
            o.status.success(),
            "ssh {host}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    drop((s1, s2));
    // cn01's key and certificate on cn02's address: refused.
    let _wrong = sshd(&ns_name, d, "127.41.0.2", &key(0), Some(&cert)).await?;
    let o = ssh(&ns_name, d, "127.41.0.2", &known_hosts).await?;
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("Host key verification failed"),
        "{err}"
    );

    let fingerprint = |root: &Path| -> Result<String> {
        let pub_line = std::fs::read_to_string(root.join("etc/ssh/ssh_host_ed25519_key.pub"))?;
        Ok(pub_line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string())
    };
    let before = fingerprint(&roots[1])?;
    // `ssh rotate`: cn01 makes a new key pair and has it certified, cn02
    // gets a new managed key.
    let cn01_before = fingerprint(&roots[0])?;
    let rotated = c.cli(&["ssh", "rotate", "cn[01-02]"]).await?;
    assert!(
        rotated.contains("new managed keys: cn02 (1)")
            && rotated.contains("new key pairs ordered: cn01 (1)"),
        "{rotated}"
    );
    for a in &mut agents[..2] {
        a.wait_log("SSH host key in place").await?;
    }
    assert_ne!(fingerprint(&roots[0])?, cn01_before);
    let cn02_rotated = fingerprint(&roots[1])?;
    assert_ne!(cn02_rotated, before);
    let shown = run(Command::new("ssh-keygen").arg("-L").arg("-f").arg(&cert)).await?;
    let shown = String::from_utf8(shown.stdout)?;
    let new_fp = run(Command::new("ssh-keygen")
        .arg("-lf")
        .arg(roots[0].join("etc/ssh/ssh_host_ed25519_key.pub")))
    .await?;
    let new_fp = String::from_utf8(new_fp.stdout)?;
    let new_fp = new_fp.split_whitespace().nth(1).context("fingerprint")?;
    assert!(
        shown.contains(&format!("Public key: ED25519-CERT {new_fp}")),
        "{shown}"
    );
    let before = cn02_rotated;

    // Someone makes a new key on cn02 by hand: its managed key changed.
    let hand = roots[1].join("etc/ssh/by-hand");
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "root@by-hand", "-f"])
        .arg(&hand))
    .await?;
    std::fs::rename(&hand, key(1))?;
    std::fs::rename(
        hand.with_extension("pub"),
        roots[1].join("etc/ssh/ssh_host_ed25519_key.pub"),
    )?;
    let changed = events.wait(EventKind::HostKeyWarning, "cn02").await?;
    assert!(
        changed
            .detail
            .contains("instead of its managed key SHA256:"),
        "{changed:?}"
    );

    // A managed key stays across a reboot: the agent restarts on a node
    // whose RAM layer is gone, and gets the same key again.
    let cn02 = agents.remove(1);
    cn02.kill().await?;
    std::fs::remove_dir_all(roots[1].join("etc/ssh"))?;
    std::fs::remove_file(roots[1].join("run/dfleet-agent/host-keys"))?;
    let mut again = Agent::start_logged(&c, &ns[1], &roots[1]).await?;
    events.wait(EventKind::HostKeys, "cn02").await?;
    again.wait_log("SSH host key in place").await?;
    assert_eq!(fingerprint(&roots[1])?, before);

    // The coordinator restarts: cn01 keeps the certificate its sshd serves
    // (no new one, no sshd restart); cn02 asks for its managed key again,
    // which is the same.
    let cert = std::fs::read_to_string(roots[0].join("etc/ssh/ssh_host_ed25519_key-cert.pub"))?;
    let port = c.grpc.rsplit(':').next().context("port")?.to_string();
    drop(events);
    let mut c = c;
    c.kill().await?;
    let toml = toml.replace("127.0.0.1:0\"]", &format!("127.0.0.1:{port}\"]"));
    let c2 = Coordinator::start(d, &toml).await?;
    let line = agents[0].wait_log("connected to the coordinator").await?;
    assert!(line.contains("\"certificate kept\""), "{line}");
    let line = again.wait_log("connected to the coordinator").await?;
    assert!(line.contains("\"asked for\""), "{line}");
    again.wait_log("SSH host key in place").await?;
    assert_eq!(fingerprint(&roots[1])?, before);
    assert_eq!(
        std::fs::read_to_string(roots[0].join("etc/ssh/ssh_host_ed25519_key-cert.pub"))?,
        cert
    );
    drop(c2);
    Ok(())
}
