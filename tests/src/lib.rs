//! Harness for dfleet's cross-process tests: starts a real coordinator
//! (`dfleet serve`) and real agents (`dfleet-agent`) as processes, each agent
//! on its own 127.x address with a sandbox root, and watches the event log
//! through the real CLI. Waiting is always on a signal (a line on a pipe),
//! bounded by a deadline; nothing sleeps, and every port is chosen by the
//! kernel.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use dfleet_proto::domain::{Event, EventKind};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

pub mod partition;
pub use partition::Partition;

/// Now, in unix milliseconds (as events are stamped).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// How long a test waits for any one expected thing before failing.
pub const WAIT: Duration = Duration::from_secs(60);

/// Directory holding the workspace's built binaries (`dfleet`, `dfleet-agent`).
/// The test command builds them first (`cargo build --workspace --bins`).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("DFLEET_BIN_DIR") {
        return PathBuf::from(dir);
    }
    // target/<profile>/deps/<test-exe> → target/<profile>
    let exe = std::env::current_exe().expect("the test executable's path");
    exe.parent()
        .and_then(Path::parent)
        .expect("a target directory")
        .to_path_buf()
}

pub fn bin(name: &str) -> PathBuf {
    // The agent as built for node images, when present (benchmarks).
    if name == "dfleet-agent"
        && let Some(p) = std::env::var_os("DFLEET_AGENT_BIN")
    {
        return PathBuf::from(p);
    }
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first with `cargo build --workspace --bins`",
        path.display()
    );
    path
}

/// A benchmark's start: the TLS provider installed, and its arguments
/// without the `--bench` cargo adds.
pub fn bench_args() -> Vec<String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect()
}

/// What /proc says of a process.
#[derive(Debug, Clone, Copy)]
pub struct ProcUsage {
    /// User and system CPU time, in seconds.
    pub cpu_s: f64,
    pub rss_kib: u64,
    /// The peak RSS.
    pub hwm_kib: u64,
    /// Bytes it caused to be written to storage.
    pub write_bytes: u64,
}

/// A process's CPU time and memory from /proc/PID/{stat,status,io}.
pub fn proc_usage(pid: u32) -> Result<ProcUsage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which ends with the last ')'.
    let rest = stat.rsplit_once(')').context("/proc/PID/stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime, in USER_HZ (100 on Linux) ticks.
    let cpu_s = (f[11].parse::<u64>()? + f[12].parse::<u64>()?) as f64 / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |key: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{key} in /proc/{pid}/status"))
    };
    let io = std::fs::read_to_string(format!("/proc/{pid}/io"))?;
    let write_bytes = io
        .lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .and_then(|v| v.trim().parse().ok())
        .context("write_bytes in /proc/PID/io")?;
    Ok(ProcUsage {
        cpu_s,
        rss_kib: kib("VmRSS:")?,
        hwm_kib: kib("VmHWM:")?,
        write_bytes,
    })
}

/// A node in a test inventory.
#[derive(Debug, Clone)]
pub struct TestNode {
    pub name: String,
    pub mac: String,
    pub ip: Ipv4Addr,
}

/// `count` nodes named `cn01`… with MACs 52:54:00:00:<k>:<i> and addresses
/// 127.<k>.0.<i>, where `k` keeps concurrently running tests apart.
pub fn nodes(k: u8, count: u8) -> Vec<TestNode> {
    (1..=count)
        .map(|i| TestNode {
            name: format!("cn{i:02}"),
            mac: format!("52:54:00:00:{k:02x}:{i:02x}"),
            ip: Ipv4Addr::new(127, k, 0, i),
        })
        .collect()
}

/// Node `i` of a swarm of `count` (benchmarks): names `cn` and `i` on
/// `width` digits, 250 nodes to each 127.`net`.x.0/24, MACs
/// 52:54:`net`:00:x:y.
pub fn swarm_nodes(count: usize, net: u8, width: usize) -> Vec<TestNode> {
    (1..=count)
        .map(|i| {
            let (hi, lo) = ((i - 1) / 250, (i - 1) % 250 + 1);
            TestNode {
                name: format!("cn{i:0width$}"),
                mac: format!("52:54:{net:02x}:00:{hi:02x}:{lo:02x}"),
                ip: Ipv4Addr::new(127, net, hi as u8, lo as u8),
            }
        })
        .collect()
}

/// Coordinator settings a test may change.
#[derive(Debug, Clone)]
pub struct Settings {
    pub policy: &'static str,
    pub cert_lifetime: &'static str,
    pub stale_after: &'static str,
    pub lost_after: &'static str,
    pub report_interval: &'static str,
    pub overlay_warn_percent: u8,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            policy: "inventory",
            cert_lifetime: "1h",
            stale_after: "30s",
            lost_after: "60s",
            report_interval: "1s",
            overlay_warn_percent: 80,
        }
    }
}

pub fn cluster_toml(dir: &Path, nodes: &[TestNode], s: &Settings) -> String {
    let mut t = format!(
        r#"[cluster]
name = "test"
state_dir = "{state}"
listen = ["127.0.0.1:0"]
metrics_listen = "127.0.0.1:0"
admin_socket = "{sock}"
report_interval = "{ri}"

[enrollment]
policy = "{policy}"
cert_lifetime = "{life}"
rate_per_second = 1000
burst = 1000

[health]
stale_after = "{stale}"
lost_after = "{lost}"
overlay_used_warn_percent = {warn}
"#,
        state = dir.join("state").display(),
        sock = dir.join("admin.sock").display(),
        ri = s.report_interval,
        policy = s.policy,
        life = s.cert_lifetime,
        stale = s.stale_after,
        lost = s.lost_after,
        warn = s.overlay_warn_percent,
    );
    for n in nodes {
        t.push_str(&format!(
            "\n[[nodes]]\nname = \"{}\"\nmac = \"{}\"\nip = \"{}\"\nimage = \"compute\"\ngroups = [\"compute\"]\n",
            n.name, n.mac, n.ip
        ));
    }
    t
}

/// The test inventory with a boot network on the nodes' loopback subnet, so
/// agents can run on it; its files land in `dir`. (Nothing is sent to these
/// addresses by the boot network: they are data in the rendered files.)
pub fn loopback_boot_toml(dir: &Path, k: u8, nodes: &[TestNode]) -> String {
    let mut t = cluster_toml(dir, nodes, &Settings::default());
    t.push_str(&format!(
        r#"
[boot]
interface = "lo"
subnet = "127.{k}.0.0/24"
router = "127.{k}.0.254"
dns = ["127.{k}.0.254"]
domain = "test.example"
next_server = "127.{k}.0.254"
dhcp = "dnsmasq"
dhcp_reload = ["true"]

[nfs]
server = "127.{k}.0.254"
export_root = "{images}"
reload = ["true"]

[paths]
tftp_root = "{tftp}"
dhcp_root = "{dhcp}"
exports_root = "{exports}"
images_root = "{images}"
"#,
        tftp = dir.join("tftp").display(),
        dhcp = dir.join("dhcp").display(),
        exports = dir.join("exports").display(),
        images = dir.join("images").display(),
    ));
    t
}

/// A plain HTTP/1.1 GET on loopback: (content type, body).
pub async fn http_get(addr: &str, path: &str) -> Result<(String, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut buf = String::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_string(&mut buf)).await??;
    let (head, body) = buf.split_once("\r\n\r\n").context("no header end")?;
    let ctype = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_string)
        })
        .context("no content type")?;
    Ok((ctype, body.to_string()))
}

/// A running `dfleet serve`.
pub struct Coordinator {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub grpc: String,
    pub metrics: String,
    pub socket: PathBuf,
    child: Child,
    /// Its log lines, when started with `start_capturing`.
    log: Option<tokio::sync::mpsc::UnboundedReceiver<String>>,
}

impl Coordinator {
    /// Starts the coordinator with the given cluster.toml text, waiting for
    /// its ready line.
    pub async fn start(dir: &Path, toml: &str) -> Result<Coordinator> {
        let config = dir.join("cluster.toml");
        std::fs::write(&config, toml)?;
        Self::start_with(dir, &config).await
    }

    pub async fn start_with(dir: &Path, config: &Path) -> Result<Coordinator> {
        Self::spawn(dir, config, "info", false).await
    }

    /// Like `start`, with the daemon's log readable through `wait_log` (and
    /// still copied to the test's stderr).
    pub async fn start_capturing(dir: &Path, toml: &str) -> Result<Coordinator> {
        let config = dir.join("cluster.toml");
        std::fs::write(&config, toml)?;
        Self::spawn(dir, &config, "info", true).await
    }

    /// Waits until the daemon's log (when started with `start_capturing`)
    /// has a line containing `text`, reading past the lines before it.
    pub async fn wait_log(&mut self, text: &str) -> Result<String> {
        let lines = self
            .log
            .as_mut()
            .context("the coordinator was not started with start_capturing")?;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let line = tokio::time::timeout_at(deadline, lines.recv())
                .await
                .with_context(|| format!("waiting for {text:?} in the coordinator's log"))?
                .with_context(|| format!("the coordinator exited while waiting for {text:?}"))?;
            if line.contains(text) {
                return Ok(line);
            }
        }
    }

    /// Like `start`, logging at `level` (`warn` keeps a swarm's coordinator
    /// from writing a line per event).
    pub async fn start_logging(dir: &Path, toml: &str, level: &str) -> Result<Coordinator> {
        let config = dir.join("cluster.toml");
        std::fs::write(&config, toml)?;
        Self::spawn(dir, &config, level, false).await
    }

    async fn spawn(dir: &Path, config: &Path, level: &str, capture: bool) -> Result<Coordinator> {
        let mut child = Command::new(bin("dfleet"))
            .args(["serve", "--config"])
            .arg(config)
            .env("DFLEET_LOG", level)
            .stdout(Stdio::piped())
            .stderr(if capture {
                Stdio::piped()
            } else {
                Stdio::inherit()
            })
            .kill_on_drop(true)
            .spawn()
            .context("starting dfleet serve")?;
        // Drained as it comes, so the daemon never blocks on a full pipe.
        let log = child.stderr.take().map(|stderr| {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let mut lines = BufReader::new(stderr).lines();
            tokio::spawn(async move {
                while let Ok(Some(line)) = lines.next_line().await {
                    eprintln!("[coordinator] {line}");
                    let _ = tx.send(line);
                }
            });
            rx
        });
        let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .context("dfleet serve did not become ready")??
            .context("dfleet serve exited before it was ready")?;
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .map(str::to_string)
                .with_context(|| format!("no {k} in {line:?}"))
        };
        let grpc = field("grpc=")?;
        let metrics = field("metrics=")?;
        let socket = PathBuf::from(field("admin=")?);
        // Keep draining stdout so the daemon never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Coordinator {
            dir: dir.to_path_buf(),
            config: config.to_path_buf(),
            grpc,
            metrics,
            socket,
            child,
            log,
        })
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("state").join("ca.pem")
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// Stops the daemon with SIGKILL (a crash) and waits for it.
    pub async fn kill(&mut self) -> Result<()> {
        self.child.kill().await?;
        Ok(())
    }

    /// Runs the CLI against this coordinator; returns stdout, failing on a
    /// non-zero exit.
    pub async fn cli(&self, args: &[&str]) -> Result<String> {
        let out = self.cli_raw(args).await?;
        if !out.status.success() {
            bail!(
                "dfleet {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    /// Runs the CLI expecting it to fail; returns stderr.
    pub async fn cli_err(&self, args: &[&str]) -> Result<String> {
        let out = self.cli_raw(args).await?;
        if out.status.success() {
            bail!(
                "dfleet {} succeeded: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        Ok(String::from_utf8(out.stderr)?)
    }

    /// Starts the CLI with its output piped, for a test that reads it as it
    /// comes.
    pub fn cli_spawn(&self, args: &[&str]) -> Result<Child> {
        Ok(Command::new(bin("dfleet"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?)
    }

    pub async fn cli_raw(&self, args: &[&str]) -> Result<std::process::Output> {
        Ok(Command::new(bin("dfleet"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .await?)
    }

    pub async fn status_json(&self) -> Result<serde_json::Value> {
        Ok(serde_json::from_str(
            &self.cli(&["status", "--json"]).await?,
        )?)
    }

    /// Follows the event log from its start.
    pub async fn watch(&self) -> Result<EventWatch> {
        EventWatch::start(&self.socket).await
    }
}

/// Where agents reach a coordinator: its gRPC address and CA certificate.
#[derive(Debug, Clone)]
pub struct Target {
    pub grpc: String,
    pub ca: PathBuf,
}

/// One boot of a simulated node: which generation it booted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Boot {
    pub node: String,
    pub generation: String,
}

/// Builds node `n`'s sandbox (the defaults of `SandboxSpec`) at
/// `dir/NAME`, and returns its root.
pub fn node_sandbox(dir: &Path, n: &TestNode) -> Result<PathBuf> {
    use dfleet_agent::sandbox::{self, SandboxSpec};
    let root = dir.join(&n.name);
    sandbox::build(&root, &SandboxSpec::new(&n.name, n.mac.parse()?, n.ip))
        .with_context(|| format!("building {}'s sandbox", n.name))?;
    Ok(root)
}

/// Builds each node's sandbox under `dir`, starts its agent, and waits
/// (on `events`) until every one is ready.
pub async fn start_ready(
    c: &Coordinator,
    dir: &Path,
    ns: &[TestNode],
    events: &mut EventWatch,
) -> Result<Vec<Agent>> {
    let mut agents = Vec::new();
    for n in ns {
        agents.push(Agent::start(c, n, &node_sandbox(dir, n)?).await?);
    }
    for n in ns {
        events.wait(EventKind::Ready, &n.name).await?;
    }
    Ok(agents)
}

/// Puts the shell script `body` in the sandbox at `root` as the program
/// `name` (in /usr/local/sbin, which the agent's exec searches first), so
/// each node can answer differently.
pub fn sandbox_program(root: &Path, name: &str, body: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let path = root.join("usr/local/sbin").join(name);
    std::fs::create_dir_all(path.parent().context("a parent")?)?;
    std::fs::write(&path, format!("#!/bin/sh\n{body}"))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// A simulated diskless node for rollouts. Its agent's reboot command ends
/// the agent (the script signals its parent), as a reboot ends a real one;
/// the node then boots the generation its rendered
/// `pxelinux.cfg/01-<mac>` names, as PXE would: a fresh sandbox boot (new
/// boot id, empty upper layer, per-boot host keys) and a new agent, which
/// enrolls again. Every boot is appended to `boots`.
///
/// Its health check `dfleet-test-health` (for an inventory's `[[checks]]`)
/// fails on a generation listed in the file `broken-generations` beside the
/// node's root: a broken image.
pub struct SimNode {
    pub node: TestNode,
    pub root: PathBuf,
    /// Set to stop the node from coming back after its next reboot (a node
    /// that stays off until [`SimNode::power_on`]).
    pub stay_down: std::sync::Arc<std::sync::atomic::AtomicBool>,
    power: std::sync::Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl SimNode {
    /// Builds the sandbox booted on `generation` and starts its agent; the
    /// node then reboots whenever its agent is told to.
    pub async fn boot(
        target: &Target,
        node: &TestNode,
        root: &Path,
        tftp: &Path,
        generation: &str,
        boots: std::sync::Arc<std::sync::Mutex<Vec<Boot>>>,
    ) -> Result<SimNode> {
        let stay_down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let power = std::sync::Arc::new(tokio::sync::Notify::new());
        let mut agent = sim_boot(target, node, root, generation, &boots).await?;
        let (t, n, r, m) = (
            target.clone(),
            node.clone(),
            root.to_path_buf(),
            tftp.join("pxelinux.cfg")
                .join(format!("01-{}", node.mac.replace(':', "-"))),
        );
        let (down, on) = (stay_down.clone(), power.clone());
        let task = tokio::spawn(async move {
            loop {
                agent.exited().await?;
                if down.swap(false, std::sync::atomic::Ordering::SeqCst) {
                    // Off until its power button is pressed.
                    on.notified().await;
                }
                let menu = std::fs::read_to_string(&m).with_context(|| {
                    format!("{} rebooted without a menu {}", n.name, m.display())
                })?;
                let generation = menu
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("dfleet.generation="))
                    .with_context(|| format!("no dfleet.generation= in {}", m.display()))?
                    .to_string();
                agent = sim_boot(&t, &n, &r, &generation, &boots).await?;
            }
        });
        Ok(SimNode {
            node: node.clone(),
            root: root.to_path_buf(),
            stay_down,
            power,
            task,
        })
    }

    /// Powers on a node that stayed down: it boots what its menu names.
    pub fn power_on(&self) {
        self.power.notify_one();
    }

    /// Stops the node's reboot loop (its agent is killed with the task).
    pub fn stop(self) {
        self.task.abort();
    }
}

async fn sim_boot(
    target: &Target,
    node: &TestNode,
    root: &Path,
    generation: &str,
    boots: &std::sync::Mutex<Vec<Boot>>,
) -> Result<Agent> {
    use dfleet_agent::sandbox::{self, SandboxSpec};
    let mut spec = SandboxSpec::new(&node.name, node.mac.parse()?, node.ip);
    spec.image = generation.parse()?;
    spec.upper_files = vec![("/var/log/syslog".into(), 1 << 20)];
    // A reboot forgets the last boot's upper layer and credentials.
    let _ = std::fs::remove_dir_all(root.join("run/dfleet-agent"));
    sandbox::build(root, &spec).with_context(|| format!("booting {}", node.name))?;
    sandbox_program(
        root,
        "dfleet-test-reboot",
        "# A simulated reboot: the agent (this script's parent) ends.\nkill -TERM \"$PPID\"\n",
    )?;
    let broken = root
        .parent()
        .context("a parent")?
        .join("broken-generations");
    sandbox_program(
        root,
        "dfleet-test-health",
        &format!(
            "# Fails on a generation listed as broken.\n! grep -qxF '{generation}' '{}'\n",
            broken.display()
        ),
    )?;
    boots.lock().expect("boots").push(Boot {
        node: node.name.clone(),
        generation: generation.to_string(),
    });
    Agent::spawn_at(
        target,
        node,
        root,
        None,
        false,
        "reboot_command = [\"dfleet-test-reboot\"]\n",
    )
    .await
}

/// A running `dfleet-agent`.
pub struct Agent {
    pub name: String,
    pub root: PathBuf,
    child: Child,
    log: Option<Lines<BufReader<tokio::process::ChildStderr>>>,
}

impl Agent {
    /// Starts an agent for `node`, reading the sandbox at `root`.
    pub async fn start(c: &Coordinator, node: &TestNode, root: &Path) -> Result<Agent> {
        Self::start_as(c, node, root, None).await
    }

    /// Like `start`, dialling `target` (a relay) instead of the coordinator.
    pub async fn start_via(target: &Target, node: &TestNode, root: &Path) -> Result<Agent> {
        Self::spawn_at(target, node, root, None, false, "").await
    }

    /// Like `start`, with the agent's log readable through `wait_log`.
    pub async fn start_logged(c: &Coordinator, node: &TestNode, root: &Path) -> Result<Agent> {
        Self::spawn(c, node, root, None, true).await
    }

    /// Like `start`, running as `uid` (to test what a non-root user can do).
    pub async fn start_as(
        c: &Coordinator,
        node: &TestNode,
        root: &Path,
        uid: Option<u32>,
    ) -> Result<Agent> {
        Self::spawn(c, node, root, uid, false).await
    }

    async fn spawn(
        c: &Coordinator,
        node: &TestNode,
        root: &Path,
        uid: Option<u32>,
        logged: bool,
    ) -> Result<Agent> {
        Self::spawn_at(
            &Target {
                grpc: c.grpc.clone(),
                ca: c.ca(),
            },
            node,
            root,
            uid,
            logged,
            "",
        )
        .await
    }

    async fn spawn_at(
        c: &Target,
        node: &TestNode,
        root: &Path,
        uid: Option<u32>,
        logged: bool,
        extra_config: &str,
    ) -> Result<Agent> {
        let state = root.join("run/dfleet-agent");
        let config = root.join("etc/dfleet/agent.toml");
        std::fs::create_dir_all(config.parent().context("a parent")?)?;
        std::fs::write(
            &config,
            format!(
                "# A sandboxed node: the agent's settings come from its command line.\n{extra_config}"
            ),
        )?;
        // Another user may not reach the build directory (a clone in a
        // private folder): it runs a copy placed in the sandbox.
        let program = match uid {
            None => bin("dfleet-agent"),
            Some(_) => {
                let copy = root.join("dfleet-agent");
                std::fs::copy(bin("dfleet-agent"), &copy)?;
                copy
            }
        };
        let mut cmd = Command::new(program);
        cmd.arg("--config")
            .arg(&config)
            .arg("--root")
            .arg(root)
            .arg("--coordinator")
            .arg(&c.grpc)
            .arg("--state-dir")
            .arg(&state)
            .arg("--bind")
            .arg(node.ip.to_string())
            .env("DFLEET_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(if logged {
                Stdio::piped()
            } else {
                Stdio::inherit()
            })
            .kill_on_drop(true);
        if uid.is_none() {
            cmd.arg("--ca").arg(&c.ca);
        }
        if let Some(uid) = uid {
            // The coordinator's state directory is private: give the user a
            // copy of the (public) CA certificate, as the image would.
            let ca = root.join("etc/dfleet/ca.pem");
            std::fs::copy(&c.ca, &ca)?;
            cmd.arg("--ca").arg(&ca).uid(uid).gid(uid);
        }
        let mut child = cmd.spawn().context("starting dfleet-agent")?;
        let log = child.stderr.take().map(|e| BufReader::new(e).lines());
        Ok(Agent {
            name: node.name.clone(),
            root: root.to_path_buf(),
            child,
            log,
        })
    }

    /// Waits until the agent's log (stderr, when started with
    /// `start_logged`) has a line containing `text`.
    pub async fn wait_log(&mut self, text: &str) -> Result<String> {
        let lines = self
            .log
            .as_mut()
            .context("the agent was not started with start_logged")?;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let line = tokio::time::timeout_at(deadline, lines.next_line())
                .await
                .with_context(|| format!("waiting for {text:?} in {}'s log", self.name))??
                .with_context(|| format!("{} exited while waiting for {text:?}", self.name))?;
            eprintln!("[{}] {line}", self.name);
            if line.contains(text) {
                return Ok(line);
            }
        }
    }

    /// Waits until the process exits.
    pub async fn exited(&mut self) -> Result<std::process::ExitStatus> {
        Ok(self.child.wait().await?)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL: the node vanished.
    pub async fn kill(mut self) -> Result<()> {
        self.child.kill().await?;
        Ok(())
    }
}

/// The event log, followed through `dfleet events --follow --json`.
pub struct EventWatch {
    lines: Lines<BufReader<ChildStdout>>,
    _child: Child,
    pub seen: Vec<Event>,
}

impl EventWatch {
    pub async fn start(socket: &Path) -> Result<EventWatch> {
        let mut child = Command::new(bin("dfleet"))
            .arg("--socket")
            .arg(socket)
            .args(["events", "--follow", "--json", "--last", "100000"])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        Ok(EventWatch {
            lines,
            _child: child,
            seen: Vec::new(),
        })
    }

    /// Waits for a `kind` event of `node` that happened at or after
    /// `since_ms` (unix ms; the watch replays the log first).
    pub async fn wait_since(
        &mut self,
        kind: EventKind,
        node: &str,
        since_ms: i64,
    ) -> Result<Event> {
        self.wait_for(&format!("{node} {} since {since_ms}", kind.as_str()), |e| {
            e.kind == kind && e.node == node && e.at_unix_ms >= since_ms
        })
        .await
    }

    /// Waits for an event matching `pred` and consumes it: events are taken
    /// in any order, but each one satisfies one wait only.
    pub async fn wait_for(&mut self, what: &str, pred: impl Fn(&Event) -> bool) -> Result<Event> {
        if let Some(pos) = self.seen.iter().position(&pred) {
            return Ok(self.seen.remove(pos));
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.next_line())
                .await
                .with_context(|| format!("waiting for {what}; events so far:\n{}", self.dump()))??
                .with_context(|| format!("the event stream ended while waiting for {what}"))?;
            let e: Event =
                serde_json::from_str(&line).with_context(|| format!("parsing event {line:?}"))?;
            if pred(&e) {
                return Ok(e);
            }
            self.seen.push(e);
        }
    }

    /// Waits for an event of `kind` about `node`.
    pub async fn wait(
        &mut self,
        kind: dfleet_proto::domain::EventKind,
        node: &str,
    ) -> Result<Event> {
        self.wait_for(&format!("{kind} of {node}"), |e| {
            e.kind == kind && e.node == node
        })
        .await
    }

    /// Forgets the events not consumed yet, so later waits need new ones.
    pub fn clear(&mut self) {
        self.seen.clear();
    }

    pub fn dump(&self) -> String {
        self.seen
            .iter()
            .map(|e| format!("  {} {} {}: {}", e.id, e.kind, e.node, e.detail))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Publishes `generation` (`IMAGE:GEN`) in the image store at `images_root`
/// as `dfleet image publish` leaves it, through the store's own code: a tree
/// holding its generation stamp, the kernel and initramfs copied with their
/// hashes, and a published record. Returns the kernel's bytes, which are
/// different for every generation.
pub fn publish_generation(images_root: &Path, generation: &str) -> Result<Vec<u8>> {
    use dfleet_provisioner::image::store::{GenState, ImageStore, Record};
    let g: dfleet_proto::domain::GenerationRef = generation.parse()?;
    let store = ImageStore::new(images_root);
    let tree = store.tree(&g);
    std::fs::create_dir_all(tree.join("etc/dfleet"))?;
    std::fs::write(
        tree.join("etc/dfleet/generation"),
        format!("image = \"{}\"\ngeneration = {}\n", g.image, g.generation),
    )?;
    let scratch = tempfile::tempdir()?;
    let kernel: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(7).wrapping_add(g.generation.0 as u32) % 251) as u8)
        .collect();
    let (k, i) = (
        scratch.path().join("vmlinuz"),
        scratch.path().join("initrd.img"),
    );
    std::fs::write(&k, &kernel)?;
    std::fs::write(&i, format!("initramfs of {g}"))?;
    let boot = store.install_boot_files(&g, "6.1.0-test", &k, &i)?;
    let mut record = Record::new(&g, GenState::Published, "test", 0);
    record.published_ms = Some(0);
    record.boot = Some(boot);
    store.write_record(&record)?;
    Ok(kernel)
}

/// A minimal root tree at `root`: this host's busybox with the libraries
/// `ldd` lists, applet links for a shell and the usual tools, and the
/// directories a sandbox mounts over. Enough to run commands inside it.
pub fn busybox_root(root: &Path) -> Result<()> {
    let busybox = Path::new("/usr/bin/busybox");
    let mut files = vec![busybox.to_path_buf()];
    let ldd = std::process::Command::new("ldd").arg(busybox).output()?;
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
        if let Some(path) = line.split_whitespace().find(|w| w.starts_with('/')) {
            files.push(PathBuf::from(path));
        }
    }
    for f in &files {
        let to = root.join(f.strip_prefix("/")?);
        std::fs::create_dir_all(to.parent().context("parent")?)?;
        std::fs::copy(f, &to).with_context(|| format!("copying {}", f.display()))?;
    }
    for dir in [
        "bin", "proc", "sys", "dev", "run", "tmp", "etc", "usr/sbin", "root",
    ] {
        std::fs::create_dir_all(root.join(dir))?;
    }
    for applet in [
        "sh", "cat", "echo", "ls", "sleep", "mount", "ps", "id", "touch",
    ] {
        std::os::unix::fs::symlink("/usr/bin/busybox", root.join("bin").join(applet))?;
    }
    Ok(())
}
