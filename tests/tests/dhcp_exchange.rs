//! A real DHCP and TFTP exchange with the configuration dfleet generated:
//! dnsmasq serves it in a network namespace made by the test, a client in a
//! second namespace with a node's MAC gets that node's reserved address and
//! boot file, then fetches its menu and kernel by TFTP byte for byte; a MAC
//! not in the inventory gets no lease. Needs root (namespaces), dnsmasq,
//! busybox (udhcpc) and curl (TFTP), which the test command installs.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, Result, bail};
use dfleet_tests::{Coordinator, Settings, TestNode, WAIT, cluster_toml};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// Two namespaces joined by a veth pair, removed on drop.
struct Net {
    server: String,
    client: String,
    server_if: String,
    client_if: String,
}

async fn run(args: &[&str]) -> Result<std::process::Output> {
    let out = Command::new(args[0]).args(&args[1..]).output().await?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

impl Net {
    async fn new() -> Result<Net> {
        let id = std::process::id() % 100_000;
        let net = Net {
            server: format!("dfl-s{id}"),
            client: format!("dfl-c{id}"),
            server_if: format!("dfs{id}"),
            client_if: format!("dfc{id}"),
        };
        run(&["ip", "netns", "add", &net.server]).await?;
        run(&["ip", "netns", "add", &net.client]).await?;
        run(&[
            "ip",
            "link",
            "add",
            &net.server_if,
            "type",
            "veth",
            "peer",
            "name",
            &net.client_if,
        ])
        .await?;
        run(&["ip", "link", "set", &net.server_if, "netns", &net.server]).await?;
        run(&["ip", "link", "set", &net.client_if, "netns", &net.client]).await?;
        run(&[
            "ip",
            "-n",
            &net.server,
            "addr",
            "add",
            "10.99.0.1/24",
            "dev",
            &net.server_if,
        ])
        .await?;
        run(&["ip", "-n", &net.server, "link", "set", &net.server_if, "up"]).await?;
        run(&["ip", "-n", &net.server, "link", "set", "lo", "up"]).await?;
        Ok(net)
    }

    /// Gives the client interface `mac` and brings it up without an address.
    async fn client_mac(&self, mac: &str) -> Result<()> {
        run(&[
            "ip",
            "-n",
            &self.client,
            "link",
            "set",
            &self.client_if,
            "down",
        ])
        .await?;
        run(&[
            "ip",
            "-n",
            &self.client,
            "addr",
            "flush",
            "dev",
            &self.client_if,
        ])
        .await?;
        run(&[
            "ip",
            "-n",
            &self.client,
            "link",
            "set",
            &self.client_if,
            "address",
            mac,
        ])
        .await?;
        run(&[
            "ip",
            "-n",
            &self.client,
            "link",
            "set",
            &self.client_if,
            "up",
        ])
        .await?;
        Ok(())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting the namespaces removes the veth pair with them.
        for ns in [&self.server, &self.client] {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", ns])
                .status();
        }
    }
}

/// The DHCP answer udhcpc got, as its script saw it. `arch` is the client
/// architecture (option 93) the request carries, as UEFI firmware sends it.
async fn lease(net: &Net, dir: &Path, tries: &str, arch: Option<u16>) -> Result<Option<String>> {
    let out = dir.join("lease.env");
    let _ = std::fs::remove_file(&out);
    let script = dir.join("udhcpc.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ \"$1\" = bound ] && env > {}\nexit 0\n",
            out.display()
        ),
    )?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    let status = Command::new("ip")
        .args([
            "netns",
            "exec",
            &net.client,
            "busybox",
            "udhcpc",
            "-i",
            &net.client_if,
        ])
        .args(["-n", "-q", "-f", "-t", tries, "-T", "1", "-s"])
        .arg(&script)
        .args(arch.map(|a| format!("-x0x5d:{a:04x}")))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await?;
    if !status.success() {
        return Ok(None);
    }
    Ok(Some(std::fs::read_to_string(out)?))
}

fn var<'a>(env: &'a str, key: &str) -> Option<&'a str> {
    env.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

#[tokio::test(flavor = "multi_thread")]
async fn dnsmasq_serves_the_reserved_address_boot_file_menu_and_kernel() -> Result<()> {
    for tool in ["/usr/sbin/dnsmasq", "/usr/bin/busybox", "/usr/bin/curl"] {
        assert!(
            Path::new(tool).exists(),
            "{tool} is missing: the test command installs it (dnsmasq, busybox, curl)"
        );
    }
    let dir = tempfile::tempdir()?;
    let net = Net::new().await?;
    let node = TestNode {
        name: "cn01".into(),
        mac: "52:54:00:b1:00:01".into(),
        ip: "10.99.0.11".parse()?,
    };
    let uefi = TestNode {
        name: "cn02".into(),
        mac: "52:54:00:b1:00:02".into(),
        ip: "10.99.0.12".parse()?,
    };
    let tftp = dir.path().join("tftp");
    let mut toml = cluster_toml(
        dir.path(),
        &[node.clone(), uefi.clone()],
        &Settings::default(),
    );
    toml.push_str(&format!(
        "\n[boot]\ninterface = \"{iface}\"\nsubnet = \"10.99.0.0/24\"\nnext_server = \"10.99.0.1\"\ndhcp = \"dnsmasq\"\ndhcp_reload = [\"true\"]\ndhcp_log = \"{log}\"\n\n[nfs]\nserver = \"10.99.0.1\"\nexport_root = \"{images}\"\nreload = [\"true\"]\n\n[paths]\ntftp_root = \"{tftp}\"\ndhcp_root = \"{dhcp}\"\nexports_root = \"{exports}\"\n",
        iface = net.server_if,
        tftp = tftp.display(),
        dhcp = dir.path().join("dhcp").display(),
        exports = dir.path().join("exports").display(),
        log = dir.path().join("dhcp.log").display(),
        images = dir.path().join("images").display(),
    ));
    // dnsmasq's log, as the coordinator reads it (copied from its stderr).
    let log_path = dir.path().join("dhcp.log");
    std::fs::write(&log_path, "")?;
    let append = |line: &str| -> Result<()> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&log_path)?;
        writeln!(f, "{line}")?;
        Ok(())
    };
    let c = Coordinator::start(dir.path(), &toml).await?;
    // Generation 3 is published; assigning it copies its kernel into the
    // TFTP root.
    let kernel = dfleet_tests::publish_generation(&dir.path().join("images"), "compute:3")?;
    c.cli(&["node", "assign", "cn01", "compute:3"]).await?;

    let conf = dir.path().join("dhcp/dnsmasq.conf");
    let mut dnsmasq = Command::new("ip")
        .args([
            "netns",
            "exec",
            &net.server,
            "dnsmasq",
            "--keep-in-foreground",
            "--user=root",
            "--log-facility=-",
            "--log-dhcp",
        ])
        .arg(format!("--conf-file={}", conf.display()))
        .arg(format!(
            "--pid-file={}",
            dir.path().join("dnsmasq.pid").display()
        ))
        .arg(format!(
            "--dhcp-leasefile={}",
            dir.path().join("leases").display()
        ))
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut log = BufReader::new(dnsmasq.stderr.take().context("stderr")?).lines();
    let mut seen = Vec::new();
    loop {
        let line = tokio::time::timeout(WAIT, log.next_line())
            .await
            .context("dnsmasq did not start")??
            .with_context(|| format!("dnsmasq exited: {}", seen.join("\n")))?;
        let ready = line.contains("TFTP root is");
        append(&line)?;
        seen.push(line);
        if ready {
            break;
        }
    }
    let log_file = log_path.clone();
    let log_task = tokio::spawn(async move {
        let mut rest = Vec::new();
        while let Ok(Some(l)) = log.next_line().await {
            use std::io::Write;
            if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(&log_file) {
                let _ = writeln!(f, "{l}");
            }
            rest.push(l);
        }
        rest
    });
    let mut events = c.watch().await?;

    // Both nodes have the default loader, "auto": firmware that says it is
    // UEFI x64 (option 93 = 7) gets GRUB.
    net.client_mac(&uefi.mac).await?;
    let env = lease(&net, dir.path(), "5", Some(7))
        .await?
        .context("no lease for the UEFI node's MAC")?;
    assert_eq!(var(&env, "ip"), Some("10.99.0.12"), "{env}");
    assert_eq!(
        var(&env, "boot_file"),
        Some("grubx64.efi"),
        "{env}\n{}",
        std::fs::read_to_string(&log_path)?
    );

    // BIOS firmware (option 93 = 0, or none) gets its reserved address and pxelinux.
    net.client_mac(&node.mac).await?;
    let env = lease(&net, dir.path(), "5", Some(0))
        .await?
        .context("no lease for the inventory MAC")?;
    assert_eq!(var(&env, "ip"), Some("10.99.0.11"), "{env}");
    assert_eq!(var(&env, "boot_file"), Some("pxelinux.0"), "{env}");
    assert_eq!(var(&env, "siaddr"), Some("10.99.0.1"), "{env}");

    // With that address, its menu and kernel come back by TFTP byte for byte.
    run(&[
        "ip",
        "-n",
        &net.client,
        "addr",
        "add",
        "10.99.0.11/24",
        "dev",
        &net.client_if,
    ])
    .await?;
    let fetch = |remote: String, local: PathBuf| {
        let ns = net.client.clone();
        async move {
            run(&[
                "ip",
                "netns",
                "exec",
                &ns,
                "curl",
                "-sS",
                "--max-time",
                "30",
                &format!("tftp://10.99.0.1/{remote}"),
                "-o",
                local.to_str().unwrap_or_default(),
            ])
            .await
        }
    };
    let menu_name = format!("pxelinux.cfg/01-{}", node.mac.replace(':', "-"));
    fetch(menu_name.clone(), dir.path().join("menu.got")).await?;
    assert_eq!(
        std::fs::read(dir.path().join("menu.got"))?,
        std::fs::read(tftp.join(&menu_name))?
    );
    fetch(
        "dfleet/compute/3/vmlinuz".into(),
        dir.path().join("kernel.got"),
    )
    .await?;
    assert_eq!(std::fs::read(dir.path().join("kernel.got"))?, kernel);

    // A MAC the inventory does not know gets nothing.
    net.client_mac("52:54:00:b1:00:99").await?;
    let stranger = lease(&net, dir.path(), "3", None).await?;
    assert!(
        stranger.is_none(),
        "an unknown MAC got a lease: {stranger:?}"
    );

    // The coordinator read the request in dnsmasq's log: a discovered machine.
    let e = events
        .wait_for("discovered", |e| {
            e.kind == dfleet_proto::domain::EventKind::Discovered
        })
        .await?;
    assert!(e.detail.contains("52:54:00:b1:00:99"), "{}", e.detail);
    let pending = c.cli(&["node", "pending"]).await?;
    assert!(
        pending.contains("52:54:00:b1:00:99") && pending.contains("DHCP request"),
        "{pending}"
    );

    let _ = dnsmasq.kill().await;
    let log = log_task.await?;
    assert!(
        log.iter()
            .any(|l| l.contains("52:54:00:b1:00:99") && l.contains("ignored")),
        "dnsmasq did not log the unknown MAC as ignored:\n{}",
        log.join("\n")
    );
    Ok(())
}
