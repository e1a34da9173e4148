//! The SSH side of the comparison: `pdsh -R ssh` and `clush` against the same
//! number of targets, all served by one OpenSSH `sshd` on 127.0.0.1:22 inside
//! a network namespace of their own. An ssh client configuration maps every
//! node name to that address, with a throwaway client key and the server's
//! throwaway host key pinned under one alias (strict host key checking stays
//! on).
//!
//! sshd runs in a private mount namespace where `/root` is an empty
//! directory, so each remote command starts from a clean login (no dotfiles
//! of the machine's own root account), as on a freshly booted node.
//! `MaxStartups` is raised above the fan-out: with one sshd standing in for
//! every node, its default (drop connections beyond 10 unauthenticated ones)
//! would refuse what N separate nodes' sshd would accept.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, Result, bail, ensure};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The two SSH fan-out tools, run as the issue states: fan-out 64.
#[derive(Debug, Clone, Copy)]
pub enum Tool {
    Pdsh,
    Clush,
}

impl Tool {
    pub const ALL: [Tool; 2] = [Tool::Pdsh, Tool::Clush];

    /// How the table names the tool's command line.
    pub fn label(self) -> &'static str {
        match self {
            Tool::Pdsh => "pdsh -R ssh -f 64",
            Tool::Clush => "clush -f 64 -b",
        }
    }
}

/// Debian packages the comparison needs, by the file each one provides.
const PACKAGES: [(&str, &str); 4] = [
    ("/usr/bin/pdsh", "pdsh"),
    ("/usr/bin/clush", "clustershell"),
    ("/usr/sbin/sshd", "openssh-server"),
    ("/usr/bin/ssh", "openssh-client"),
];

/// Installs the missing packages (pdsh, clustershell, OpenSSH) with apt-get.
pub async fn ensure_tools() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(file, _)| !Path::new(file).exists())
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("installing {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-qq"])).await?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
    .await
}

async fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// One sshd serving every target, in its own network namespace.
pub struct SshTargets {
    // Dropped in this order: sshd killed, then the namespace and files removed.
    sshd: Child,
    netns: Netns,
    dir: tempfile::TempDir,
}

/// A network namespace this benchmark made, removed when dropped.
struct Netns(String);

impl Netns {
    async fn add(name: String) -> Result<Netns> {
        run(Command::new("ip").args(["netns", "add", &name])).await?;
        let ns = Netns(name);
        run(Command::new("ip").args(["-n", &ns.0, "link", "set", "lo", "up"])).await?;
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

impl SshTargets {
    pub async fn start() -> Result<SshTargets> {
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        for key in ["host_key", "client_key"] {
            run(Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", ""])
                .arg("-f")
                .arg(d.join(key)))
            .await?;
        }
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys"))?;
        std::fs::create_dir(d.join("home"))?;
        let host_pub = std::fs::read_to_string(d.join("host_key.pub"))?;
        let host_pub: Vec<&str> = host_pub.split_whitespace().take(2).collect();
        std::fs::write(
            d.join("known_hosts"),
            format!("bench-sshd {}\n", host_pub.join(" ")),
        )?;
        std::fs::write(
            d.join("sshd_config"),
            format!(
                "ListenAddress 127.0.0.1:22\n\
                 HostKey {hk}\n\
                 AuthorizedKeysFile {ak}\n\
                 PermitRootLogin prohibit-password\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 UsePAM no\n\
                 StrictModes no\n\
                 MaxStartups 1024\n\
                 PidFile none\n\
                 LogLevel INFO\n",
                hk = d.join("host_key").display(),
                ak = d.join("authorized_keys").display(),
            ),
        )?;
        std::fs::write(
            d.join("ssh_config"),
            format!(
                "Host *\n\
                 \x20 HostName 127.0.0.1\n\
                 \x20 User root\n\
                 \x20 IdentityFile {ck}\n\
                 \x20 IdentitiesOnly yes\n\
                 \x20 HostKeyAlias bench-sshd\n\
                 \x20 UserKnownHostsFile {kh}\n\
                 \x20 GlobalKnownHostsFile /dev/null\n\
                 \x20 StrictHostKeyChecking yes\n\
                 \x20 BatchMode yes\n",
                ck = d.join("client_key").display(),
                kh = d.join("known_hosts").display(),
            ),
        )?;
        // sshd's privilege separation directory, which its package's service
        // unit would otherwise create.
        std::fs::create_dir_all("/run/sshd")?;

        let netns = Netns::add(format!("dfleet-sshbench-{}", std::process::id())).await?;
        let mut sshd = Command::new("ip")
            .args(["netns", "exec", &netns.0])
            .args(["unshare", "--mount", "--propagation", "private", "--"])
            .args([
                "sh",
                "-c",
                r#"mount --bind "$1" /root && exec /usr/sbin/sshd -f "$2" -D -e"#,
                "sh",
            ])
            .arg(d.join("home"))
            .arg(d.join("sshd_config"))
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting sshd")?;
        // Ready once it says it listens; its later log lines are drained.
        let mut log = BufReader::new(sshd.stderr.take().context("sshd stderr")?).lines();
        let mut seen = Vec::new();
        loop {
            let Some(line) = log.next_line().await? else {
                bail!("sshd exited before listening:\n{}", seen.join("\n"));
            };
            if line.starts_with("Server listening on 127.0.0.1 port 22") {
                break;
            }
            seen.push(line);
        }
        tokio::spawn(async move { while let Ok(Some(_)) = log.next_line().await {} });
        Ok(SshTargets { sshd, netns, dir })
    }

    fn ssh_config(&self) -> PathBuf {
        self.dir.path().join("ssh_config")
    }

    /// Seconds each run of `tool` on `set` (n nodes) took, checking that
    /// every node ran the command.
    pub async fn time(
        &self,
        tool: Tool,
        set: &str,
        n: usize,
        cmd: &[&str],
        runs: usize,
    ) -> Result<Vec<f64>> {
        let config = self.ssh_config();
        let mut out = Vec::new();
        for _ in 0..runs {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &self.netns.0]);
            match tool {
                Tool::Pdsh => {
                    // -S: exit with the highest remote status (255 when ssh failed).
                    c.env("PDSH_SSH_ARGS", format!("-F {} %h", config.display()))
                        .args(["pdsh", "-S", "-R", "ssh", "-f", "64", "-w", set]);
                }
                Tool::Clush => {
                    c.args(["clush", "-f", "64", "-b", "-o"])
                        .arg(format!("-F {}", config.display()))
                        .args(["-w", set, "--"]);
                }
            }
            c.args(cmd).stdin(Stdio::null());
            let t = tokio::time::Instant::now();
            let o = c.output().await.with_context(|| format!("running {c:?}"))?;
            let took = t.elapsed().as_secs_f64();
            let stdout = String::from_utf8_lossy(&o.stdout);
            let answered = match tool {
                Tool::Pdsh => stdout.lines().filter(|l| l.starts_with("cn")).count(),
                // One folded header naming all n nodes.
                Tool::Clush if stdout.contains(&format!(" ({n})\n")) => n,
                Tool::Clush => 0,
            };
            let printed = cmd != ["true"];
            if !o.status.success() || (printed && answered != n) {
                bail!(
                    "{} {cmd:?} on {n} nodes: {}, {answered} answered\n{}",
                    tool.label(),
                    o.status,
                    String::from_utf8_lossy(&o.stderr)
                );
            }
            out.push(took);
        }
        Ok(out)
    }

    /// Stops sshd (and waits for it), then removes the namespace.
    pub async fn stop(mut self) -> Result<()> {
        self.sshd.kill().await?;
        Ok(())
    }
}
