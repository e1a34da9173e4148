//! `dfleet lab`: a real diskless cluster on one machine. A network namespace
//! holds a bridge, the coordinator, dnsmasq (DHCP + TFTP from the files dfleet
//! renders), rpcbind and nfs-ganesha (in a private /run held by a holder
//! process), and N QEMU nodes that PXE-boot the lab image over NFS. Every
//! process it starts is recorded by PID and start time in `DIR/pids`
//! ([`procs`]), so `lab down` stops exactly those; the image is cached
//! between runs ([`cache`]); where each node's boot is comes from the logs
//! of the real parts ([`status`]).

mod cache;
mod procs;
pub mod status;

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::{Subcommand, ValueEnum};

use procs::{Started, read_pids, running, spawn, wait_for};
use status::{CoordinatorView, NodeBoot, Phase, node_boot, parse_status_json};

/// Where a lab lives unless `--dir` says otherwise.
const DEFAULT_DIR: &str = "/var/lib/dfleet-lab";

/// The network namespace of the lab in [`DEFAULT_DIR`]; a lab elsewhere gets
/// this name with a hash of its directory, so two labs never share one.
const NETNS: &str = "dfleet-lab";

/// The boot network's bridge inside the namespace.
const BRIDGE: &str = "br0";

/// The management host's address on the boot network.
const HOST_IP: &str = "10.77.0.1";

/// The image and generation the nodes boot.
const IMAGE: &str = "lab";

/// What the lab changes in the Debian base image: a quiet serial port.
const BASE_SETUP: &str = include_str!("base-setup.sh");

/// What the lab adds before publishing: boot markers on the console (cheap
/// to change: only the published level of the cache is rebuilt).
const LAB_TOOLS: &str = include_str!("lab-tools.sh");

/// Kernel arguments of every lab node: a node that cannot boot (its NFS
/// server gone for longer than rd.retry) reboots and tries again instead of
/// waiting in an emergency shell nobody sees.
const KERNEL_ARGS: &[&str] = &["rd.shell=0", "panic=10"];

/// What a boot may take from the firmware's DHCP request to agent ready
/// under TCG: two nodes on a 2-core host that was also running CI took 283 s
/// (40–60 s to multi-user on an idle host, per node); real KVM is faster.
const DEADLINE_TCG: Duration = Duration::from_secs(420);
const DEADLINE_KVM: Duration = Duration::from_secs(120);

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Build (or reuse from the cache) the lab image and start the lab: a
    /// namespace with bridge, coordinator, dnsmasq, NFS server and N QEMU
    /// nodes booting over the network. Waits until every node is ready or
    /// one stalls. Odd-numbered nodes get their NFS root mounted by the
    /// distribution's dracut nfs module, even-numbered ones by dfleet's own
    /// path (`dfleet.mount=self`), so both paths boot. Odd-numbered nodes
    /// get SSH host certificates, even-numbered ones managed host keys.
    Up {
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=50))]
        nodes: u8,
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
    },
    /// Each node's boot phase, from dnsmasq's log, the serial console and
    /// the coordinator; a node that stalled says after which phase and why.
    Status {
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
        /// Machine-readable, one object per node.
        #[arg(long)]
        json: bool,
    },
    /// A node's serial console log (every boot since `up`).
    Console {
        node: String,
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
    },
    /// Power a node's virtual machine off, on, or both (a cold reboot).
    Power {
        action: PowerAction,
        node: String,
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
    },
    /// Stop or start the lab's NFS server (nfs-ganesha), to see what nodes
    /// do without it.
    Nfs {
        action: NfsAction,
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
    },
    /// Stop or start the lab's coordinator, to see what nodes do without it
    /// (sshd still comes up on a booting node, with a key of that boot).
    Coordinator {
        action: NfsAction,
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
    },
    /// Write a file of SIZE bytes (suffixes k, M, G and KiB, MiB, GiB) of
    /// random data into a running node's overlay, with `dfleet exec`; watch
    /// its upper layer grow in `dfleet top`.
    Fill {
        node: String,
        size: String,
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
    },
    /// Wait until the given nodes (all when none is named) are ready, or
    /// stalled; exits 1 with the status table when TIMEOUT seconds pass
    /// (default: the boot deadline).
    Wait {
        nodes: Vec<String>,
        #[arg(long, value_enum)]
        until: Until,
        #[arg(long)]
        timeout: Option<u64>,
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
    },
    /// Stop every process the lab started (by PID) and delete its namespace.
    Down {
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PowerAction {
    Off,
    On,
    Cycle,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NfsAction {
    Stop,
    Start,
}

pub fn run(cmd: &LabCommand) -> Result<std::process::ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    match cmd {
        LabCommand::Up { nodes, dir } => rt.block_on(up(*nodes, dir)),
        LabCommand::Status { dir, json } => {
            let lab = Lab::open(dir)?;
            let rows = lab.observe(now())?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&status_json(&rows))?);
            } else {
                print!("{}", status_table(&rows));
            }
            Ok(exit(rows.iter().all(|r| r.boot.phase == Phase::Ready)))
        }
        LabCommand::Console { node, dir } => {
            let lab = Lab::open(dir)?;
            let n = lab.node(node)?;
            let path = lab.console(&n);
            let bytes =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            print!("{}", String::from_utf8_lossy(&bytes));
            Ok(std::process::ExitCode::SUCCESS)
        }
        LabCommand::Power { action, node, dir } => {
            let lab = Lab::open(dir)?;
            let n = lab.node(node)?;
            rt.block_on(async {
                if matches!(action, PowerAction::Off | PowerAction::Cycle) {
                    lab.power_off(&n).await?;
                }
                if matches!(action, PowerAction::On | PowerAction::Cycle) {
                    lab.power_on(&n)?;
                }
                Ok(std::process::ExitCode::SUCCESS)
            })
        }
        LabCommand::Nfs { action, dir } => {
            let lab = Lab::open(dir)?;
            rt.block_on(async {
                match action {
                    NfsAction::Stop => lab.stop_ganesha().await?,
                    NfsAction::Start => lab.start_ganesha().await?,
                }
                Ok(std::process::ExitCode::SUCCESS)
            })
        }
        LabCommand::Coordinator { action, dir } => {
            let lab = Lab::open(dir)?;
            rt.block_on(async {
                match action {
                    NfsAction::Stop => lab.stop_coordinator().await?,
                    NfsAction::Start => lab.start_coordinator(&self_exe()?).await?,
                }
                Ok(std::process::ExitCode::SUCCESS)
            })
        }
        LabCommand::Fill { node, size, dir } => {
            let lab = Lab::open(dir)?;
            let n = lab.node(node)?;
            let bytes = parse_size(size)?;
            rt.block_on(lab.fill(&n, bytes))?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        LabCommand::Wait {
            nodes,
            until,
            timeout,
            dir,
        } => {
            let lab = Lab::open(dir)?;
            let names: Vec<String> = if nodes.is_empty() {
                lab_nodes(lab.nodes()?).iter().map(LabNode::name).collect()
            } else {
                nodes
                    .iter()
                    .map(|n| lab.node(n).map(|n| n.name()))
                    .collect::<Result<_>>()?
            };
            let limit = timeout.map_or(lab.deadline(), Duration::from_secs);
            let outcome = rt.block_on(lab.follow(&names, *until, Some(limit), |_| false))?;
            match outcome {
                Followed::Reached => Ok(std::process::ExitCode::SUCCESS),
                Followed::Stopped(rows) | Followed::TimedOut(rows) => {
                    print!("{}", status_table(&rows));
                    bail!(
                        "{} not {} after {}s",
                        names.join(", "),
                        match until {
                            Until::Ready => "ready",
                            Until::MultiUser => "at multi-user",
                            Until::Stalled => "stalled",
                        },
                        limit.as_secs()
                    )
                }
            }
        }
        LabCommand::Down { dir } => rt.block_on(down(dir)),
    }
}

fn exit(ok: bool) -> std::process::ExitCode {
    if ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

fn now() -> SystemTime {
    SystemTime::now()
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn secs(since: SystemTime) -> u64 {
    since.elapsed().unwrap_or_default().as_secs()
}

/// `32M`, `1GiB`, `4096`: bytes, with decimal (k, M, G) or binary (KiB,
/// MiB, GiB) multiples.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .with_context(|| format!("size {s:?}: expected a number of bytes like 32M or 64MiB"))?;
    let mult: u64 = match unit {
        "" | "B" => 1,
        "k" | "K" | "kB" => 1_000,
        "M" | "MB" => 1_000_000,
        "G" | "GB" => 1_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => bail!("size {s:?}: unknown unit {unit:?} (k, M, G, KiB, MiB, GiB)"),
    };
    n.checked_mul(mult)
        .with_context(|| format!("size {s:?} is too large"))
}

// ---------------------------------------------------------------- the nodes

/// One lab node: `labNN`, MAC `52:54:00:77:00:NN`, address 10.77.0.(10+N).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabNode {
    pub index: u8,
}

impl LabNode {
    pub fn name(&self) -> String {
        format!("lab{:02}", self.index)
    }
    pub fn mac(&self) -> String {
        format!("52:54:00:77:00:{:02x}", self.index)
    }
    pub fn ip(&self) -> String {
        format!("10.77.0.{}", 10 + u32::from(self.index))
    }
    /// Whether dfleet's dracut module mounts this node's NFS root itself.
    pub fn self_mount(&self) -> bool {
        self.index.is_multiple_of(2)
    }
    fn tap(&self) -> String {
        format!("tap-{}", self.name())
    }
    fn role(&self) -> String {
        format!("qemu-{}", self.name())
    }
}

fn lab_nodes(n: u8) -> Vec<LabNode> {
    (1..=n).map(|index| LabNode { index }).collect()
}

/// The lab's inventory. dnsmasq and ganesha are reloaded by their PID files
/// in DIR/run (a missing file means the daemon is not started yet, which is
/// fine: it reads the files when it starts).
pub fn cluster_toml(dir: &Path, nodes: u8) -> String {
    let d = dir.display();
    let reload = |pidfile: &str| {
        format!(
            "[\"sh\", \"-c\", \"test ! -s {d}/run/{pidfile} || kill -HUP $(cat {d}/run/{pidfile})\"]"
        )
    };
    let quoted = |v: &[&str]| {
        v.iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut entries = String::new();
    for n in lab_nodes(nodes) {
        entries.push_str(&format!(
            "\n[[nodes]]\nname = \"{}\"\nip = \"{}\"\nmac = \"{}\"\nimage = \"{IMAGE}\"\ngroups = [\"lab\"]\n",
            n.name(),
            n.ip(),
            n.mac()
        ));
        if n.self_mount() {
            entries.push_str("# dfleet's dracut module mounts the NFS root itself.\n");
            entries.push_str("kernel_args = [\"dfleet.mount=self\"]\n");
            // Both SSH host key modes: odd nodes get host certificates (the
            // default), even ones their managed key.
            entries.push_str("ssh_host_keys = \"managed\"\n");
        }
    }
    format!(
        r#"# Written by `dfleet lab up`; rewritten at every `up`.
[cluster]
name = "lab"
state_dir = "{d}/state"
listen = ["{HOST_IP}:7443"]
admin_socket = "{d}/admin.sock"
report_interval = "5s"

[enrollment]
policy = "inventory"
{entries}
[boot]
interface = "{BRIDGE}"
subnet = "10.77.0.0/24"
next_server = "{HOST_IP}"
dhcp = "dnsmasq"
dhcp_log = "{d}/logs/dnsmasq.log"
dhcp_reload = {dnsmasq_reload}
coordinator = "{HOST_IP}:7443"
loader = "pxelinux"
console = "ttyS0"
kernel_args = [{kernel_args}]

[nfs]
server = "{HOST_IP}"
export_root = "{d}/images"
reload = {ganesha_reload}

[paths]
tftp_root = "{d}/tftp"
dhcp_root = "{d}/dhcp"
exports_root = "{d}/exports"
"#,
        dnsmasq_reload = reload("dnsmasq.pid"),
        ganesha_reload = reload("ganesha.pid"),
        kernel_args = quoted(KERNEL_ARGS),
    )
}

/// ganesha's main configuration: where its v4 recovery state goes (inside
/// DIR, never the host's /var/lib/nfs) and the exports dfleet renders, which
/// carry the NFS core settings (v3 only, TCP, fixed ports).
fn ganesha_conf(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "# Written by `dfleet lab up`.\n\
         NFSV4 {{\n    RecoveryBackend = fs;\n    RecoveryRoot = {d}/ganesha/recovery;\n    Graceless = true;\n}}\n\
         LOG {{\n    Default_Log_Level = EVENT;\n}}\n\
         %include \"{d}/exports/dfleet-ganesha.conf\"\n"
    )
}

// ------------------------------------------------------------ host tools

/// A host program the lab needs and the Debian package that has it.
struct Tool {
    what: &'static str,
    candidates: &'static [&'static str],
    package: &'static str,
}

const TOOLS: &[Tool] = &[
    Tool {
        what: "qemu-system-x86_64",
        candidates: &["/usr/bin/qemu-system-x86_64"],
        package: "qemu-system-x86",
    },
    Tool {
        what: "the NIC boot ROMs",
        candidates: &["/usr/lib/ipxe/qemu/efi-virtio.rom"],
        package: "ipxe-qemu",
    },
    Tool {
        what: "ganesha.nfsd",
        candidates: &["/usr/bin/ganesha.nfsd"],
        package: "nfs-ganesha",
    },
    Tool {
        what: "ganesha's VFS backend",
        candidates: &[
            "/usr/lib/x86_64-linux-gnu/ganesha/libfsalvfs.so",
            "/usr/lib/ganesha/libfsalvfs.so",
        ],
        package: "nfs-ganesha-vfs",
    },
    Tool {
        what: "rpcbind",
        candidates: &["/usr/sbin/rpcbind", "/sbin/rpcbind"],
        package: "rpcbind",
    },
    Tool {
        what: "dnsmasq",
        candidates: &["/usr/sbin/dnsmasq"],
        package: "dnsmasq",
    },
    Tool {
        what: "debootstrap",
        candidates: &["/usr/sbin/debootstrap"],
        package: "debootstrap",
    },
    Tool {
        what: "pxelinux.0",
        candidates: &["/usr/lib/PXELINUX/pxelinux.0"],
        package: "pxelinux",
    },
    Tool {
        what: "ldlinux.c32",
        candidates: &["/usr/lib/syslinux/modules/bios/ldlinux.c32"],
        package: "syslinux-common",
    },
    Tool {
        what: "ip",
        candidates: &["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip"],
        package: "iproute2",
    },
    Tool {
        what: "unshare and nsenter",
        candidates: &["/usr/bin/nsenter"],
        package: "util-linux",
    },
];

fn check_tools() -> Result<()> {
    let missing: Vec<&Tool> = TOOLS
        .iter()
        .filter(|t| !t.candidates.iter().any(|c| Path::new(c).exists()))
        .collect();
    if !missing.is_empty() {
        let what: Vec<String> = missing
            .iter()
            .map(|t| format!("{} (Debian package {})", t.what, t.package))
            .collect();
        let pkgs: Vec<&str> = missing.iter().map(|t| t.package).collect();
        bail!(
            "the lab needs host tools that are missing: {}; install them with `apt-get install {}`",
            what.join(", "),
            pkgs.join(" ")
        );
    }
    Ok(())
}

/// Real hardware virtualisation: a `/dev/kvm` alone may be paravirtual
/// (stock kernels hang on it), so the CPU must have vmx or svm.
fn real_kvm() -> bool {
    Path::new("/dev/kvm").exists()
        && std::fs::read_to_string("/proc/cpuinfo")
            .map(|c| has_virt_flag(&c))
            .unwrap_or(false)
}

fn has_virt_flag(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

// ------------------------------------------------------------ helpers

/// Runs a short command to completion; its output goes into the error.
fn sh(argv: &[&str]) -> Result<String> {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", argv.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn self_exe() -> Result<PathBuf> {
    std::env::current_exe().context("finding the dfleet binary")
}

/// The namespace of the lab in `dir` (canonical).
fn netns_for(dir: &Path) -> String {
    if dir == Path::new(DEFAULT_DIR) {
        return NETNS.into();
    }
    let mut h = DefaultHasher::new();
    dir.hash(&mut h);
    format!("{NETNS}-{:08x}", h.finish() as u32)
}

// ------------------------------------------------------------ the lab

/// A lab directory and its namespace.
struct Lab {
    dir: PathBuf,
    netns: String,
}

impl Lab {
    /// The lab in `dir`, which `up` made.
    fn open(dir: &Path) -> Result<Lab> {
        let dir = std::fs::canonicalize(dir)
            .with_context(|| format!("no lab in {} (run `dfleet lab up`)", dir.display()))?;
        let netns = read_lossy(&dir.join("netns")).trim().to_string();
        let netns = if netns.is_empty() {
            netns_for(&dir)
        } else {
            netns
        };
        Ok(Lab { dir, netns })
    }

    fn nodes(&self) -> Result<u8> {
        read_lossy(&self.dir.join("nodes"))
            .trim()
            .parse()
            .with_context(|| format!("no lab in {} (run `dfleet lab up`)", self.dir.display()))
    }

    fn node(&self, name: &str) -> Result<LabNode> {
        let nodes = lab_nodes(self.nodes()?);
        nodes
            .iter()
            .find(|n| n.name() == name)
            .cloned()
            .with_context(|| {
                format!(
                    "the lab in {} has no node {name} (it has lab01 to lab{:02})",
                    self.dir.display(),
                    nodes.len()
                )
            })
    }

    fn console(&self, n: &LabNode) -> PathBuf {
        self.dir.join("console").join(format!("{}.log", n.name()))
    }

    fn in_ns(&self, argv: &[&str]) -> Result<String> {
        let mut full = vec!["ip", "netns", "exec", self.netns.as_str()];
        full.extend_from_slice(argv);
        sh(&full)
    }

    /// Starts `argv` inside the namespace (`ip netns exec` execs it).
    fn spawn_in_ns(&self, role: &str, argv: &[String], log: &Path) -> Result<Started> {
        let mut full: Vec<String> = vec!["ip".into(), "netns".into(), "exec".into()];
        full.push(self.netns.clone());
        full.extend_from_slice(argv);
        spawn(&self.dir, role, &full, log)
    }

    /// Starts `argv` in the NFS holder's namespaces: the lab's network and
    /// the private /run (`nsenter` execs it).
    fn spawn_in_holder(&self, role: &str, argv: &[String], log: &Path) -> Result<Started> {
        let holder = running(&self.dir, "nfs-holder")?
            .context("the NFS holder process is not running: the lab is not up")?;
        let mut full: Vec<String> = vec![
            "nsenter".into(),
            "-t".into(),
            holder.pid.to_string(),
            "-m".into(),
            "-n".into(),
            "--".into(),
        ];
        full.extend_from_slice(argv);
        spawn(&self.dir, role, &full, log)
    }

    /// `dfleet --socket DIR/admin.sock ARGS…` against the lab's coordinator.
    fn admin(&self, args: &[&str]) -> Result<String> {
        let exe = self_exe()?;
        let sock = self.dir.join("admin.sock");
        let mut argv = vec![exe.to_str().context("binary path")?, "--socket"];
        argv.push(sock.to_str().context("socket path")?);
        argv.extend_from_slice(args);
        sh(&argv)
    }

    /// `dfleet --socket DIR/admin.sock image --config DIR/cluster.toml
    /// ARGS…`, its output appended to DIR/logs/image.log.
    fn image(&self, args: &[&str]) -> Result<()> {
        let log_path = self.dir.join("logs/image.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        // The setup script is long; its first line says enough.
        let shown: Vec<&str> = args
            .iter()
            .map(|a| a.lines().next().unwrap_or(""))
            .collect();
        println!("lab: dfleet image {}", shown.join(" "));
        let status = Command::new(self_exe()?)
            .arg("--socket")
            .arg(self.dir.join("admin.sock"))
            .arg("image")
            .arg("--config")
            .arg(self.dir.join("cluster.toml"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .status()?;
        if !status.success() {
            let text = read_lossy(&log_path);
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            bail!(
                "dfleet image {} failed ({status}); end of {}:\n{}",
                shown.join(" "),
                log_path.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        Ok(())
    }

    // -------------------------------------------------------- the image

    /// Makes `lab:1` published in DIR/images: from the published cache, or
    /// from the base cache plus agent and publish, or from scratch. The
    /// coordinator must be running (publish asks it to re-render).
    fn prepare_image(&self, keys: &cache::Keys, agent: &Path) -> Result<()> {
        let images = self.dir.join("images");
        let record = images.join(IMAGE).join("1.toml");
        let state = self.dir.join("state");
        let t = now();
        if cache::has(&keys.published) {
            // Copied before the coordinator started (it needs the CA).
            return Ok(());
        }
        if cache::has(&keys.base) {
            cache::restore(&keys.base, &images, false)?;
            println!(
                "lab: {IMAGE}:1 base copied from the cache {} ({}s)",
                cache::entry(&keys.base).display(),
                secs(t)
            );
        } else {
            if record.exists() {
                // Last run's, made with other inputs.
                tree_remove(&images.join(IMAGE))?;
            }
            self.image(&["create", IMAGE, "--distro", "debian12"])?;
            self.image(&["exec", IMAGE, "--", "sh", "-c", BASE_SETUP])?;
            cache::save(&keys.base, &images, &state, false)?;
            println!(
                "lab: {IMAGE}:1 base built and cached in {} ({}s)",
                cache::entry(&keys.base).display(),
                secs(t)
            );
        }
        let t = now();
        self.image(&["exec", IMAGE, "--", "sh", "-c", LAB_TOOLS])?;
        self.image(&["enable", IMAGE, "dfleet-lab-marker.service"])?;
        let ca = state.join("ca.pem");
        self.image(&[
            "install-agent",
            IMAGE,
            "--agent",
            agent.to_str().context("agent path")?,
            "--ca",
            ca.to_str().context("CA path")?,
            "--coordinator",
            &format!("{HOST_IP}:7443"),
        ])?;
        self.image(&["publish", IMAGE])?;
        cache::save(&keys.published, &images, &state, true)?;
        println!(
            "lab: {IMAGE}:1 published with the lab's tools and the agent, cached in {} ({}s)",
            cache::entry(&keys.published).display(),
            secs(t)
        );
        Ok(())
    }

    // -------------------------------------------------------- coordinator

    /// Starts the coordinator in the lab's namespace and waits for its
    /// ready line (in a log of its own per start).
    async fn start_coordinator(&self, exe: &Path) -> Result<()> {
        if let Some(p) = running(&self.dir, "coordinator")? {
            bail!("the coordinator is running already (PID {})", p.pid);
        }
        let t = now();
        let config = self.dir.join("cluster.toml");
        let log = self.dir.join("logs/coordinator.log");
        // A restart appends: the ready line looked for is the one after here.
        let from = std::fs::metadata(&log)
            .map(|m| m.len() as usize)
            .unwrap_or(0);
        let coordinator = self.spawn_in_ns(
            "coordinator",
            &[
                exe.display().to_string(),
                "serve".into(),
                "--config".into(),
                config.display().to_string(),
            ],
            &log,
        )?;
        wait_for(
            "the coordinator's ready line",
            Duration::from_secs(30),
            || {
                let text = read_lossy(&log);
                let new = text.get(from..).unwrap_or_default();
                if !coordinator.alive() {
                    bail!("the coordinator exited:\n{new}");
                }
                Ok(new.contains("dfleet: serving"))
            },
        )
        .await?;
        println!("lab: coordinator serving on {HOST_IP}:7443 ({}s)", secs(t));
        Ok(())
    }

    async fn stop_coordinator(&self) -> Result<()> {
        let c = running(&self.dir, "coordinator")?.context("the coordinator is not running")?;
        procs::stop(&c).await?;
        println!("lab: stopped the coordinator (PID {})", c.pid);
        Ok(())
    }

    // -------------------------------------------------------- NFS

    /// Starts ganesha in the holder's namespaces and waits until it listens.
    async fn start_ganesha(&self) -> Result<()> {
        if let Some(p) = running(&self.dir, "ganesha")? {
            bail!("ganesha is running already (PID {})", p.pid);
        }
        let t = now();
        let d = self.dir.display();
        let g = self.spawn_in_holder(
            "ganesha",
            &[
                "ganesha.nfsd".into(),
                "-F".into(),
                "-f".into(),
                format!("{d}/ganesha.conf"),
                "-L".into(),
                format!("{d}/logs/ganesha.log"),
                "-p".into(),
                "/run/ganesha/ganesha.pid".into(),
                "-N".into(),
                "NIV_EVENT".into(),
            ],
            &self.dir.join("logs/ganesha.out"),
        )?;
        std::fs::write(self.dir.join("run/ganesha.pid"), format!("{}\n", g.pid))?;
        wait_for(
            "ganesha listening on 2049 and 20048",
            Duration::from_secs(60),
            || {
                if !g.alive() {
                    bail!(
                        "ganesha exited; end of {}:\n{}",
                        self.dir.join("logs/ganesha.log").display(),
                        tail(&read_lossy(&self.dir.join("logs/ganesha.log")), 10)
                    );
                }
                let ss = self.in_ns(&["ss", "-Hltn"])?;
                Ok(ss.contains(":2049 ") && ss.contains(":20048 "))
            },
        )
        .await?;
        println!("lab: ganesha serving NFSv3 (PID {}, {}s)", g.pid, secs(t));
        Ok(())
    }

    async fn stop_ganesha(&self) -> Result<()> {
        let g = running(&self.dir, "ganesha")?.context("ganesha is not running")?;
        // The reload command must not signal a stranger with the old PID.
        let _ = std::fs::remove_file(self.dir.join("run/ganesha.pid"));
        procs::stop(&g).await?;
        println!("lab: stopped ganesha (PID {})", g.pid);
        Ok(())
    }

    // -------------------------------------------------------- nodes

    fn qemu_argv(&self, n: &LabNode, kvm: bool) -> Vec<String> {
        let mut argv: Vec<String> = vec![
            "qemu-system-x86_64".into(),
            "-name".into(),
            n.name(),
            "-machine".into(),
            format!("q35,accel={}", if kvm { "kvm" } else { "tcg" }),
            "-m".into(),
            "512".into(),
            "-netdev".into(),
            format!("tap,id=n0,ifname={},script=no,downscript=no", n.tap()),
            "-device".into(),
            format!("virtio-net-pci,netdev=n0,mac={}", n.mac()),
            "-boot".into(),
            "n".into(),
            // ttyS0: the console, appended to across power cycles.
            "-chardev".into(),
            format!(
                "file,id=console,path={},append=on",
                self.console(n).display()
            ),
            "-serial".into(),
            "chardev:console".into(),
            "-display".into(),
            "none".into(),
            "-monitor".into(),
            "none".into(),
        ];
        if kvm {
            argv.extend(["-cpu".into(), "host".into()]);
        }
        argv
    }

    fn power_on(&self, n: &LabNode) -> Result<()> {
        if let Some(p) = running(&self.dir, &n.role())? {
            bail!("{} is running already (PID {})", n.name(), p.pid);
        }
        let kvm = real_kvm();
        let p = self.spawn_in_ns(
            &n.role(),
            &self.qemu_argv(n, kvm),
            &self.dir.join("logs").join(format!("{}.log", n.role())),
        )?;
        std::fs::write(
            self.dir.join("run").join(format!("{}.boot", n.name())),
            format!("{}\n", unix_secs(now())),
        )?;
        println!(
            "lab: {} powered on under {} (PID {})",
            n.name(),
            if kvm { "KVM" } else { "TCG" },
            p.pid
        );
        Ok(())
    }

    async fn power_off(&self, n: &LabNode) -> Result<()> {
        let p = running(&self.dir, &n.role())?
            .with_context(|| format!("{} is not running", n.name()))?;
        procs::stop(&p).await?;
        println!("lab: {} powered off", n.name());
        Ok(())
    }

    /// The upper layer's used bytes in the node's last report, as the
    /// coordinator has it.
    fn reported_upper_used(&self, n: &LabNode) -> Result<Option<u64>> {
        let v: serde_json::Value = serde_json::from_str(&self.admin(&["status", "--json"])?)
            .context("parsing dfleet status --json")?;
        Ok(v["nodes"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["name"] == n.name().as_str()))
            .and_then(|x| x["report"]["overlay"]["used_bytes"].as_u64()))
    }

    /// Writes `bytes` of random data into the node's overlay with `dfleet
    /// exec`, then waits for the node's agent to report the growth.
    async fn fill(&self, n: &LabNode, bytes: u64) -> Result<()> {
        let before = self
            .reported_upper_used(n)?
            .with_context(|| format!("the coordinator has no report from {}", n.name()))?;
        println!("lab: {}", self.write_fill(n, bytes)?);
        let t = now();
        let mut after = before;
        wait_for(
            &format!("{}'s agent to report the growth", n.name()),
            Duration::from_secs(120),
            || {
                after = self.reported_upper_used(n)?.unwrap_or(0);
                Ok(after >= before + bytes)
            },
        )
        .await?;
        println!(
            "lab: {}'s agent reports its upper layer at {after} bytes used, {before} before ({}s)",
            n.name(),
            secs(t)
        );
        Ok(())
    }

    /// The writing half of `fill`, through the node's agent: what it says.
    fn write_fill(&self, n: &LabNode, bytes: u64) -> Result<String> {
        let script = format!(
            "f=/var/tmp/dfleet-lab-fill; head -c {bytes} /dev/urandom > $f.new && mv $f.new $f \
             && sync && echo filled $f $(stat -c %s $f)"
        );
        let name = n.name();
        // Writing a GiB under TCG takes a while.
        let out = self
            .admin(&["exec", &name, "-t", "300s", "--shell", "--", &script])
            .with_context(|| format!("writing {bytes} bytes on {name}"))?;
        Ok(out.trim().to_string())
    }

    // -------------------------------------------------------- status

    fn deadline(&self) -> Duration {
        if real_kvm() {
            DEADLINE_KVM
        } else {
            DEADLINE_TCG
        }
    }

    fn observe(&self, now: SystemTime) -> Result<Vec<Row>> {
        let nodes = self.nodes()?;
        let dns = read_lossy(&self.dir.join("logs/dnsmasq.log"));
        let coord: Vec<(String, CoordinatorView)> = match self.admin(&["status", "--json"]) {
            Ok(text) => parse_status_json(&text)?,
            Err(_) => Vec::new(),
        };
        let deadline = self.deadline();
        lab_nodes(nodes)
            .iter()
            .map(|n| {
                let console = read_lossy(&self.console(n));
                let view = coord
                    .iter()
                    .find(|(name, _)| *name == n.name())
                    .map(|(_, v)| v);
                let powered: Option<u64> =
                    read_lossy(&self.dir.join("run").join(format!("{}.boot", n.name())))
                        .trim()
                        .parse()
                        .ok();
                let powered = powered.map(|s| UNIX_EPOCH + Duration::from_secs(s));
                let boot = node_boot(&dns, &console, n, view, powered, now);
                let started = boot.started.max(powered);
                let elapsed = started
                    .and_then(|s| now.duration_since(s).ok())
                    .unwrap_or_default();
                let running = running(&self.dir, &n.role())?.is_some();
                let stalled = running
                    && boot.phase != Phase::Ready
                    && (boot.error.is_some() || elapsed > deadline);
                Ok(Row {
                    name: n.name(),
                    running,
                    self_mount: n.self_mount(),
                    elapsed,
                    deadline,
                    stalled,
                    state: view.map(|v| v.state.clone()).unwrap_or_else(|| "-".into()),
                    boot,
                })
            })
            .collect()
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn tree_remove(p: &Path) -> Result<()> {
    use dfleet_provisioner::image::tree;
    if p.exists() {
        tree::set_immutable(p, false)?;
        tree::remove_tree(p)?;
    }
    Ok(())
}

// ------------------------------------------------------------ up

async fn up(nodes: u8, dir: &Path) -> Result<std::process::ExitCode> {
    if !rustix::process::geteuid().is_root() {
        bail!("dfleet lab runs as root (namespaces, taps, NFS server)");
    }
    check_tools()?;
    let started = now();
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = std::fs::canonicalize(dir)?;
    let lab = Lab {
        netns: netns_for(&dir),
        dir,
    };
    let dir = lab.dir.as_path();
    if read_pids(dir)?.iter().any(Started::alive) {
        bail!(
            "a lab is already running from {} (see `dfleet lab status`); stop it with `dfleet lab down`",
            dir.display()
        );
    }
    if Path::new("/run/netns").join(&lab.netns).exists() {
        bail!(
            "the network namespace {} exists already: `dfleet lab down --dir {}` did not finish, or another program made it",
            lab.netns,
            dir.display()
        );
    }
    let _ = std::fs::remove_file(procs::pids_path(dir));
    // A fresh run: logs, consoles and the coordinator's store go (a node may
    // enroll once per boot, so last run's certificates would refuse it);
    // the CA and the image stay.
    for d in ["logs", "console", "run"] {
        let p = dir.join(d);
        if p.exists() {
            std::fs::remove_dir_all(&p)?;
        }
        std::fs::create_dir_all(&p)?;
    }
    let state = dir.join("state");
    if state.exists() {
        for e in std::fs::read_dir(&state)? {
            let e = e?;
            let name = e.file_name();
            if name != "ca.pem" && name != "ca.key" {
                if e.file_type()?.is_dir() {
                    std::fs::remove_dir_all(e.path())?;
                } else {
                    std::fs::remove_file(e.path())?;
                }
            }
        }
    }
    for d in [
        "state",
        "images",
        "tftp",
        "dhcp",
        "exports",
        "ganesha/recovery",
    ] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    std::fs::write(dir.join("cluster.toml"), cluster_toml(dir, nodes))?;
    std::fs::write(dir.join("ganesha.conf"), ganesha_conf(dir))?;
    std::fs::write(dir.join("nodes"), format!("{nodes}\n"))?;
    std::fs::write(dir.join("netns"), format!("{}\n", lab.netns))?;

    let exe = self_exe()?;
    let agent = exe
        .parent()
        .context("binary directory")?
        .join("dfleet-agent");
    if !agent.exists() {
        bail!(
            "{} is missing: build it next to dfleet (cargo build --bins)",
            agent.display()
        );
    }
    let keys = cache::keys(&agent)?;
    let level = if cache::has(&keys.published) {
        "hit"
    } else if cache::has(&keys.base) {
        "base hit: installing the agent and publishing"
    } else {
        "miss: building the image"
    };
    println!(
        "lab: image cache {} ({level})",
        cache::entry(&keys.published).display()
    );
    if cache::has(&keys.published) {
        let t = now();
        // The cached image's agent trusts the CA it was built with.
        for f in ["ca.pem", "ca.key"] {
            std::fs::copy(cache::entry(&keys.published).join(f), state.join(f))?;
        }
        cache::restore(&keys.published, &dir.join("images"), true)?;
        println!("lab: {IMAGE}:1 copied from the cache ({}s)", secs(t));
    }

    match start(&lab, nodes, started, &keys, &exe, &agent).await {
        Ok(code) => Ok(code),
        Err(e) => {
            eprintln!("lab: {e:#}");
            eprintln!("lab: stopping what had started");
            down(dir).await?;
            Err(e.context("the lab did not come up; everything it had started is stopped"))
        }
    }
}

/// Everything `up` does from the namespace on: each process it starts is
/// recorded before the next starts, so a failure anywhere is undone.
async fn start(
    lab: &Lab,
    nodes: u8,
    started: SystemTime,
    keys: &cache::Keys,
    exe: &Path,
    agent: &Path,
) -> Result<std::process::ExitCode> {
    let dir = lab.dir.as_path();
    // The namespace and its bridge.
    let t = now();
    sh(&["ip", "netns", "add", &lab.netns])?;
    lab.in_ns(&["ip", "link", "set", "lo", "up"])?;
    lab.in_ns(&[
        "ip",
        "link",
        "add",
        BRIDGE,
        "type",
        "bridge",
        "forward_delay",
        "0",
    ])?;
    lab.in_ns(&["ip", "addr", "add", "10.77.0.1/24", "dev", BRIDGE])?;
    // An IPv6 address for dnsmasq's router advertisements: without one,
    // iPXE waits ~13 s for an RA on every boot.
    let ra = lab
        .in_ns(&[
            "ip",
            "-6",
            "addr",
            "add",
            "fd77::1/64",
            "dev",
            BRIDGE,
            "nodad",
        ])
        .is_ok();
    lab.in_ns(&["ip", "link", "set", BRIDGE, "up"])?;
    println!(
        "lab: namespace {} with {BRIDGE} 10.77.0.1/24 ({}s)",
        lab.netns,
        secs(t)
    );

    // The coordinator. dnsmasq's log must exist before it starts: the
    // coordinator follows it for unknown MACs and gives up on a missing file.
    std::fs::File::create(dir.join("logs/dnsmasq.log"))?;
    lab.start_coordinator(exe).await?;

    lab.prepare_image(keys, agent)?;
    let t = now();
    lab.admin(&[
        "node",
        "assign",
        &format!("lab[01-{nodes:02}]"),
        &format!("{IMAGE}:1"),
    ])?;
    for n in lab_nodes(nodes) {
        let menu = dir
            .join("tftp/pxelinux.cfg")
            .join(format!("01-{}", n.mac().replace(':', "-")));
        if !menu.exists() {
            bail!("{} was not written by `node assign`", menu.display());
        }
    }
    println!(
        "lab: nodes assigned {IMAGE}:1, menus written ({}s)",
        secs(t)
    );

    // NFS: a holder process keeps a private /run (rpcbind and ganesha put
    // their sockets and PID files there, never in the host's); rpcbind and
    // ganesha run in its namespaces, each with its own record, so `lab nfs`
    // can stop and start ganesha alone.
    let t = now();
    let holder = lab.spawn_in_ns(
        "nfs-holder",
        &[
            "unshare".into(),
            "-m".into(),
            "--propagation".into(),
            "private".into(),
            "sh".into(),
            "-c".into(),
            "set -e\n\
             mount -t tmpfs -o mode=0755 dfleet-lab-run /run\n\
             mkdir -p /run/rpcbind /run/ganesha\n\
             chown _rpc:root /run/rpcbind 2>/dev/null || true\n\
             exec sleep infinity\n"
                .into(),
        ],
        &dir.join("logs/nfs-holder.log"),
    )?;
    let mountinfo = format!("/proc/{}/mountinfo", holder.pid);
    wait_for("the NFS holder's /run", Duration::from_secs(30), || {
        if !holder.alive() {
            bail!(
                "the NFS holder exited: {}",
                read_lossy(&dir.join("logs/nfs-holder.log"))
            );
        }
        Ok(read_lossy(Path::new(&mountinfo))
            .lines()
            .any(|l| l.contains(" /run ") && l.contains("dfleet-lab-run")))
    })
    .await?;
    let rpcbind = lab.spawn_in_holder(
        "rpcbind",
        &["rpcbind".into(), "-f".into()],
        &dir.join("logs/rpcbind.log"),
    )?;
    std::fs::write(dir.join("run/rpcbind.pid"), format!("{}\n", rpcbind.pid))?;
    let sock = PathBuf::from(format!("/proc/{}/root/run/rpcbind.sock", holder.pid));
    wait_for("rpcbind's socket", Duration::from_secs(30), || {
        if !rpcbind.alive() {
            bail!(
                "rpcbind exited: {}",
                read_lossy(&dir.join("logs/rpcbind.log"))
            );
        }
        Ok(sock.exists())
    })
    .await?;
    lab.start_ganesha().await?;
    println!("lab: rpcbind and ganesha serving NFSv3 ({}s)", secs(t));

    // DHCP and TFTP; UTC timestamps in its log, which `lab status` reads.
    let t = now();
    let mut dnsmasq: Vec<String> = vec![
        "env".into(),
        "TZ=UTC".into(),
        "dnsmasq".into(),
        "--keep-in-foreground".into(),
        format!("--conf-file={}", dir.join("dhcp/dnsmasq.conf").display()),
        format!("--log-facility={}", dir.join("logs/dnsmasq.log").display()),
        "--log-dhcp".into(),
        format!("--pid-file={}", dir.join("run/dnsmasq.pid").display()),
        format!(
            "--dhcp-leasefile={}",
            dir.join("run/dnsmasq.leases").display()
        ),
        "--user=root".into(),
    ];
    if ra {
        dnsmasq.push("--enable-ra".into());
        dnsmasq.push("--dhcp-range=fd77::,ra-only".into());
    }
    let dns = lab.spawn_in_ns("dnsmasq", &dnsmasq, &dir.join("logs/dnsmasq.out"))?;
    let dlog = dir.join("logs/dnsmasq.log");
    let dout = dir.join("logs/dnsmasq.out");
    wait_for("dnsmasq's TFTP ready line", Duration::from_secs(30), || {
        if !dns.alive() {
            bail!("dnsmasq exited: {}", read_lossy(&dout));
        }
        Ok(read_lossy(&dlog).contains("TFTP root is"))
    })
    .await?;
    println!(
        "lab: dnsmasq serving DHCP and TFTP on {BRIDGE} ({}s)",
        secs(t)
    );

    // The nodes. Their boot deadline counts from their power-on, not from
    // the start of `up` (a cold image build takes minutes).
    for n in lab_nodes(nodes) {
        let tap = n.tap();
        lab.in_ns(&["ip", "tuntap", "add", "dev", &tap, "mode", "tap"])?;
        lab.in_ns(&["ip", "link", "set", &tap, "master", BRIDGE])?;
        lab.in_ns(&["ip", "link", "set", &tap, "up"])?;
        lab.power_on(&n)?;
    }
    println!(
        "lab: {nodes} node(s) booting ({}s since up); `dfleet lab status --dir {d}`, `dfleet lab console lab01 --dir {d}`",
        secs(started),
        d = dir.display()
    );

    // Follow the boot until every node is ready or one stalls.
    let names: Vec<String> = lab_nodes(nodes).iter().map(LabNode::name).collect();
    let outcome = lab
        .follow(&names, Until::Ready, None, |rows| {
            rows.iter().any(|r| r.stalled)
        })
        .await?;
    match outcome {
        Followed::Reached => {
            println!("lab: all {nodes} node(s) ready {}s after up", secs(started));
            Ok(std::process::ExitCode::SUCCESS)
        }
        Followed::Stopped(rows) | Followed::TimedOut(rows) => {
            print!("{}", status_table(&rows));
            println!("lab: a node stalled; the lab keeps running (`dfleet lab down` stops it)");
            Ok(std::process::ExitCode::FAILURE)
        }
    }
}

/// What `lab wait` waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Until {
    /// The agent enrolled and ready, in the current boot.
    Ready,
    /// Multi-user reached in the current boot (the serial marker), whatever
    /// the coordinator knows: sshd and the agent have started.
    MultiUser,
    /// Stalled: a boot error on the console, or past the boot deadline.
    Stalled,
}

impl Until {
    fn holds(self, r: &Row) -> bool {
        match self {
            Until::Ready => r.boot.phase == Phase::Ready,
            Until::MultiUser => r.boot.phase >= Phase::MultiUser,
            Until::Stalled => r.stalled,
        }
    }
}

/// How following the nodes ended.
enum Followed {
    Reached,
    Stopped(Vec<Row>),
    TimedOut(Vec<Row>),
}

impl Lab {
    /// Observes the lab once a second, printing each phase change of the
    /// `names` nodes, until all of them meet `until`, `stop` says to give
    /// up, or `limit` passes.
    async fn follow(
        &self,
        names: &[String],
        until: Until,
        limit: Option<Duration>,
        stop: impl Fn(&[Row]) -> bool,
    ) -> Result<Followed> {
        let give_up = limit.map(|l| tokio::time::Instant::now() + l);
        let mut last: Vec<Phase> = Vec::new();
        loop {
            let rows: Vec<Row> = self
                .observe(now())?
                .into_iter()
                .filter(|r| names.contains(&r.name))
                .collect();
            let phases: Vec<Phase> = rows.iter().map(|r| r.boot.phase).collect();
            if phases != last {
                for (i, r) in rows.iter().enumerate() {
                    if last.get(i) != Some(&r.boot.phase) {
                        println!(
                            "lab: {:>4}s {} {}",
                            r.elapsed.as_secs(),
                            r.name,
                            r.boot.phase
                        );
                    }
                }
                last = phases;
            }
            if rows.iter().all(|r| until.holds(r)) {
                return Ok(Followed::Reached);
            }
            if stop(&rows) {
                return Ok(Followed::Stopped(rows));
            }
            if give_up.is_some_and(|g| tokio::time::Instant::now() >= g) {
                return Ok(Followed::TimedOut(rows));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

// ------------------------------------------------------------ status

/// One row of `lab status`.
#[derive(Debug, Clone)]
pub struct Row {
    pub name: String,
    /// Whether its virtual machine is powered on.
    pub running: bool,
    pub self_mount: bool,
    /// Since the current boot began (its firmware's DHCP lease, or the
    /// power-on when there is none yet).
    pub elapsed: Duration,
    pub deadline: Duration,
    pub stalled: bool,
    pub state: String,
    pub boot: NodeBoot,
}

impl Row {
    fn marker(&self, name: &str) -> Option<&str> {
        self.boot.console.as_ref().and_then(|c| c.marker(name))
    }
}

pub fn status_table(rows: &[Row]) -> String {
    let mut out = String::new();
    for r in rows {
        let what = if !r.running {
            "powered off".to_string()
        } else if r.stalled {
            format!("STALLED after {}", r.boot.phase)
        } else {
            r.boot.phase.to_string()
        };
        out.push_str(&format!(
            "{:<6} {:<34} coordinator: {:<10} {}s into this boot (deadline {}s)\n",
            r.name,
            what,
            r.state,
            r.elapsed.as_secs(),
            r.deadline.as_secs()
        ));
        if let Some(e) = &r.boot.error {
            out.push_str(&format!("       {e}\n"));
        }
        if let Some(root) = r.marker("ROOT") {
            out.push_str(&format!(
                "       root {root}; NFS root mounted by {}\n",
                r.marker("MOUNTED-BY").unwrap_or("?")
            ));
        }
    }
    out
}

fn status_json(rows: &[Row]) -> serde_json::Value {
    let nodes: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            let markers: serde_json::Map<String, serde_json::Value> = r
                .boot
                .console
                .iter()
                .flat_map(|c| c.markers.iter())
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect();
            serde_json::json!({
                "name": r.name,
                "running": r.running,
                "mount": if r.self_mount { "self" } else { "auto" },
                "phase": r.boot.phase.key(),
                "phase_text": r.boot.phase.to_string(),
                "stalled": r.stalled,
                "error": r.boot.error,
                "elapsed_s": r.elapsed.as_secs(),
                "deadline_s": r.deadline.as_secs(),
                "coordinator_state": r.state,
                "markers": markers,
            })
        })
        .collect();
    serde_json::json!({ "nodes": nodes })
}

// ------------------------------------------------------------ down

async fn down(dir: &Path) -> Result<std::process::ExitCode> {
    let lab = Lab::open(dir)?;
    let dir = lab.dir.as_path();
    // The coordinator first, while the agents can still answer the end of
    // their streams, then the nodes, then the servers, the holder of the
    // private /run last.
    let order = |p: &Started| match p.role.as_str() {
        "coordinator" => 0,
        r if r.starts_with("qemu-") => 1,
        "dnsmasq" => 2,
        "ganesha" => 3,
        "rpcbind" => 4,
        "nfs-holder" => 5,
        _ => 6,
    };
    let mut pids = read_pids(dir)?;
    pids.sort_by_key(order);
    for p in &pids {
        if !p.alive() {
            continue;
        }
        let t = now();
        procs::stop(p).await?;
        println!(
            "lab: stopped {} (PID {}) in {:.1}s",
            p.role,
            p.pid,
            t.elapsed().unwrap_or_default().as_secs_f32()
        );
    }
    if Path::new("/run/netns").join(&lab.netns).exists() {
        sh(&["ip", "netns", "delete", &lab.netns])?;
        println!("lab: deleted the network namespace {}", lab.netns);
    }
    let _ = std::fs::remove_file(procs::pids_path(dir));
    let _ = std::fs::remove_file(dir.join("admin.sock"));
    // Stale PID files would make the reload commands in cluster.toml signal
    // whatever process gets that PID next.
    for f in ["dnsmasq.pid", "ganesha.pid", "rpcbind.pid"] {
        let _ = std::fs::remove_file(dir.join("run").join(f));
    }
    Ok(std::process::ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(phase: Phase, stalled: bool, error: Option<&str>) -> Row {
        Row {
            name: "lab02".into(),
            running: true,
            self_mount: true,
            elapsed: Duration::from_secs(250),
            deadline: DEADLINE_TCG,
            stalled,
            state: "-".into(),
            boot: NodeBoot {
                phase,
                error: error.map(String::from),
                started: None,
                console: None,
            },
        }
    }

    #[test]
    fn a_stalled_node_reads_stalled_after_its_phase_with_its_error() {
        let rows = [row(
            Phase::InitramfsNetwork,
            true,
            Some("dracut Warning: dfleet: mounting the NFS root failed"),
        )];
        let t = status_table(&rows);
        assert!(t.contains("STALLED after DHCP lease (initramfs)"), "{t}");
        assert!(t.contains("mounting the NFS root failed"), "{t}");
        let j = status_json(&rows);
        assert_eq!(j["nodes"][0]["phase"], "initramfs-network");
        assert_eq!(j["nodes"][0]["stalled"], true);
        assert_eq!(j["nodes"][0]["mount"], "self");
    }

    #[test]
    fn kvm_only_with_vmx_or_svm() {
        assert!(has_virt_flag("flags\t\t: fpu vme vmx sse\n"));
        assert!(!has_virt_flag("flags\t\t: fpu vme sse hypervisor\n"));
    }

    #[test]
    fn the_inventory_names_every_node_and_mounts_even_ones_itself() {
        let t = cluster_toml(Path::new("/l"), 3);
        let inv = dfleet_provisioner::inventory::Inventory::parse(&t, Path::new("/l/c.toml"))
            .unwrap_or_else(|e| panic!("{e}\n{t}"));
        let names: Vec<&str> = inv.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["lab01", "lab02", "lab03"]);
        let args = |i: usize| inv.effective_boot(&inv.nodes[i]).kernel_args;
        assert_eq!(args(0), ["rd.shell=0", "panic=10"]);
        assert_eq!(args(1), ["rd.shell=0", "panic=10", "dfleet.mount=self"]);
        assert!(t.contains("kill -HUP $(cat /l/run/dnsmasq.pid)"), "{t}");
    }

    #[test]
    fn sizes_take_decimal_and_binary_units() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("32M").unwrap(), 32_000_000);
        assert_eq!(parse_size("32MiB").unwrap(), 32 << 20);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        let e = parse_size("12 parsecs").unwrap_err().to_string();
        assert!(e.contains("unknown unit"), "{e}");
        assert!(parse_size("M").is_err());
    }

    #[test]
    fn labs_in_other_directories_get_their_own_namespace() {
        assert_eq!(netns_for(Path::new(DEFAULT_DIR)), "dfleet-lab");
        let a = netns_for(Path::new("/var/tmp/a"));
        assert!(a.starts_with("dfleet-lab-") && a.len() == 19, "{a}");
        assert_ne!(a, netns_for(Path::new("/var/tmp/b")));
    }
}
