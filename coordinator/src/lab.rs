//! `dfleet lab`: a real diskless cluster on one machine. A network namespace
//! holds a bridge, the coordinator, dnsmasq (DHCP + TFTP from the files dfleet
//! renders), rpcbind and nfs-ganesha (with a private /run), and N QEMU nodes
//! that PXE-boot the lab image over NFS. Every process it starts is recorded
//! by PID (and start time) in `DIR/pids`, so `lab down` stops exactly those.

use std::collections::hash_map::DefaultHasher;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use dfleet_provisioner::image::distro::{Distro, recipe};
use dfleet_provisioner::image::{dracut, tree};

/// Where a lab lives unless `--dir` says otherwise.
const DEFAULT_DIR: &str = "/var/lib/dfleet-lab";

/// The published lab generation, kept between runs keyed by its inputs.
const CACHE_ROOT: &str = "/var/cache/dfleet-lab";

/// The network namespace every lab process runs in.
const NETNS: &str = "dfleet-lab";

/// The boot network's bridge inside the namespace.
const BRIDGE: &str = "br0";

/// The management host's address on the boot network.
const HOST_IP: &str = "10.77.0.1";

/// The image and generation the nodes boot.
const IMAGE: &str = "lab";

/// What a node may take from QEMU's start to agent ready under TCG: two
/// nodes on a 2-core host that was also running CI took 283 s (40–60 s to
/// multi-user on an idle host, per node); real KVM is much faster.
const DEADLINE_TCG: Duration = Duration::from_secs(420);
const DEADLINE_KVM: Duration = Duration::from_secs(120);

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Build (or reuse from the cache) the lab image and start the lab: a
    /// namespace with bridge, coordinator, dnsmasq, NFS server and N QEMU
    /// nodes booting over the network. Waits until every node is ready or
    /// the boot deadline passes.
    Up {
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=50))]
        nodes: u8,
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
    },
    /// Each node's boot phase, from dnsmasq's log, the serial console and
    /// the coordinator.
    Status {
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
    },
    /// A node's serial console log.
    Console {
        node: String,
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
    },
    /// Stop every process `up` started (by PID) and delete the namespace.
    Down {
        #[arg(long, default_value = DEFAULT_DIR)]
        dir: PathBuf,
    },
}

pub fn run(cmd: &LabCommand) -> Result<std::process::ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    match cmd {
        LabCommand::Up { nodes, dir } => rt.block_on(up(*nodes, dir)),
        LabCommand::Status { dir } => {
            let lab = Lab::load(dir)?;
            let rows = lab.observe(now())?;
            print!("{}", status_table(&rows));
            Ok(exit(rows.iter().all(|r| r.phase == Phase::Ready)))
        }
        LabCommand::Console { node, dir } => {
            let path = dir.join("console").join(format!("{node}.log"));
            let bytes =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            print!("{}", String::from_utf8_lossy(&bytes));
            Ok(std::process::ExitCode::SUCCESS)
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
    fn tap(&self) -> String {
        format!("tap-{}", self.name())
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
    let macs: Vec<String> = lab_nodes(nodes)
        .iter()
        .map(|n| format!("\"{}\"", n.mac()))
        .collect();
    let reload = |pidfile: &str| {
        format!(
            "[\"sh\", \"-c\", \"test ! -s {d}/run/{pidfile} || kill -HUP $(cat {d}/run/{pidfile})\"]"
        )
    };
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

[[nodes]]
name = "lab[01-{nodes:02}]"
ip = "10.77.0.11"
macs = [{macs}]
image = "{IMAGE}"
groups = ["lab"]

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

[nfs]
server = "{HOST_IP}"
export_root = "{d}/images"
reload = {ganesha_reload}

[paths]
tftp_root = "{d}/tftp"
dhcp_root = "{d}/dhcp"
exports_root = "{d}/exports"
"#,
        macs = macs.join(", "),
        dnsmasq_reload = reload("dnsmasq.pid"),
        ganesha_reload = reload("ganesha.pid"),
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
        what: "unshare",
        candidates: &["/usr/bin/unshare"],
        package: "util-linux",
    },
];

fn check_tools() -> Result<()> {
    let missing: Vec<String> = TOOLS
        .iter()
        .filter(|t| !t.candidates.iter().any(|c| Path::new(c).exists()))
        .map(|t| format!("{} (Debian package {})", t.what, t.package))
        .collect();
    if !missing.is_empty() {
        let pkgs: Vec<&str> = TOOLS
            .iter()
            .filter(|t| !t.candidates.iter().any(|c| Path::new(c).exists()))
            .map(|t| t.package)
            .collect();
        bail!(
            "the lab needs host tools that are missing: {}; install them with `apt-get install {}`",
            missing.join(", "),
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

// ------------------------------------------------------------ PID records

/// One process `up` started: role, PID and its start time (field 22 of
/// /proc/PID/stat), so a recycled PID is never killed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Started {
    role: String,
    pid: i32,
    start: u64,
}

fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

/// The start time in a /proc/PID/stat line (after the parenthesised name,
/// which may itself hold spaces and parentheses).
fn parse_start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // Fields after the name start at field 3 (state); start time is field 22.
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn alive(p: &Started) -> bool {
    start_time(p.pid) == Some(p.start)
}

fn pids_path(dir: &Path) -> PathBuf {
    dir.join("pids")
}

fn read_pids(dir: &Path) -> Result<Vec<Started>> {
    let path = pids_path(dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                [role, pid, start] => Ok(Started {
                    role: role.to_string(),
                    pid: pid.parse()?,
                    start: start.parse()?,
                }),
                _ => bail!(
                    "{} line {}: expected `ROLE PID START`",
                    path.display(),
                    i + 1
                ),
            }
        })
        .collect()
}

fn record_pid(dir: &Path, role: &str, pid: i32) -> Result<Started> {
    use std::io::Write;
    let start = start_time(pid).with_context(|| format!("{role} (PID {pid}) exited at once"))?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(pids_path(dir))?;
    writeln!(f, "{role} {pid} {start}")?;
    Ok(Started {
        role: role.into(),
        pid,
        start,
    })
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

fn in_ns(argv: &[&str]) -> Result<String> {
    let mut full = vec!["ip", "netns", "exec", NETNS];
    full.extend_from_slice(argv);
    sh(&full)
}

/// Starts a long-running process inside the namespace, in its own process
/// group (Ctrl-C on `up` does not reach it), output into `log`, and records
/// it. `ip netns exec` execs the program, so the child's PID is the
/// program's.
fn spawn_in_ns(dir: &Path, role: &str, argv: &[String], log: &Path) -> Result<Started> {
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let child = Command::new("ip")
        .args(["netns", "exec", NETNS])
        .args(argv)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {role}: {}", argv.join(" ")))?;
    let pid = i32::try_from(child.id()).context("pid out of range")?;
    // The child is reaped by init once `up` exits; `down` stops it by PID.
    drop(child);
    record_pid(dir, role, pid)
}

/// Polls `cond` until it holds, `what` failing after `limit`. The lab waits
/// on real signals (ready lines, sockets, ports), checked every 100 ms.
async fn wait_for(
    what: &str,
    limit: Duration,
    mut cond: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let give_up = tokio::time::Instant::now() + limit;
    loop {
        if cond()? {
            return Ok(());
        }
        if tokio::time::Instant::now() >= give_up {
            bail!("timed out after {}s waiting for {what}", limit.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn self_exe() -> Result<PathBuf> {
    std::env::current_exe().context("finding the dfleet binary")
}

/// `dfleet --socket DIR/admin.sock image --config DIR/cluster.toml ARGS…`,
/// its output appended to DIR/logs/image.log.
fn image_cmd(dir: &Path, args: &[&str]) -> Result<()> {
    let log_path = dir.join("logs/image.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)?;
    // The lab's image script is long; its first line says enough.
    let shown: Vec<&str> = args
        .iter()
        .map(|a| a.lines().next().unwrap_or(""))
        .collect();
    println!("lab: dfleet image {}", shown.join(" "));
    let status = Command::new(self_exe()?)
        .arg("--socket")
        .arg(dir.join("admin.sock"))
        .arg("image")
        .arg("--config")
        .arg(dir.join("cluster.toml"))
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
            args.join(" "),
            log_path.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(())
}

/// `dfleet --socket DIR/admin.sock ARGS…` against the lab's coordinator.
fn admin_cmd(dir: &Path, args: &[&str]) -> Result<String> {
    let exe = self_exe()?;
    let sock = dir.join("admin.sock");
    let mut argv = vec![exe.to_str().context("binary path")?, "--socket"];
    argv.push(sock.to_str().context("socket path")?);
    argv.extend_from_slice(args);
    sh(&argv)
}

// ------------------------------------------------------------ the image

/// What the lab adds to the image: units that would hang up the serial port
/// or slow the boot are masked, and a unit writes markers to the serial
/// console at multi-user (status and tests read them from the console log).
const IMAGE_SCRIPT: &str = r#"set -e
for u in serial-getty@ttyS0 e2scrub_reap getty-static getty@tty1 systemd-user-sessions; do
  ln -sf /dev/null /etc/systemd/system/$u.service
done
cat > /usr/local/sbin/dfleet-lab-marker <<'EOF'
#!/bin/sh
# Written by dfleet lab: markers on the serial console for `dfleet lab status`.
{
  echo "DFLEET-READY uptime=$(cut -d' ' -f1 /proc/uptime)"
  echo "DFLEET-ROOT $(findmnt -no SOURCE,FSTYPE,OPTIONS /)"
  echo "DFLEET-LOWER $(findmnt -no SOURCE,FSTYPE,OPTIONS /run/dfleet/lower)"
  echo "DFLEET-CMDLINE $(cat /proc/cmdline)"
} > /dev/ttyS0 2>&1
EOF
chmod 755 /usr/local/sbin/dfleet-lab-marker
cat > /etc/systemd/system/dfleet-lab-marker.service <<'EOF'
[Unit]
Description=dfleet lab: boot markers on the serial console
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/dfleet-lab-marker

[Install]
WantedBy=multi-user.target
EOF
"#;

/// The cache key: the install recipe, the lab's changes, what publish puts
/// into the initramfs (dfleet's dracut module, its dracut command line) and
/// the agent binary. Not the dfleet binary itself: rebuilding it for an
/// unrelated change must not cost a cold image build (a change to publish's
/// hygiene needs a bump of the crate version or an emptied cache).
fn cache_key(agent: &Path) -> Result<String> {
    let mut h = DefaultHasher::new();
    format!("{:?}", recipe(Distro::Debian12, Path::new("/t"), &[], None)).hash(&mut h);
    IMAGE_SCRIPT.hash(&mut h);
    env!("CARGO_PKG_VERSION").hash(&mut h);
    for f in dracut::MODULE_FILES {
        f.bytes.hash(&mut h);
    }
    dracut::dracut_argv("KVER", "OUT").hash(&mut h);
    std::fs::read(agent)
        .with_context(|| format!("reading {}", agent.display()))?
        .hash(&mut h);
    Ok(format!("debian12-{:016x}", h.finish()))
}

/// Copies the cached published `lab:1` into DIR/images (unless it is
/// there already). The copy keeps content, owners and modes but not the
/// immutable flag, which is set again on the copy.
fn copy_from_cache(dir: &Path, cache: &Path) -> Result<()> {
    let images = dir.join("images");
    let record = images.join(IMAGE).join("1.toml");
    if record.exists() && read_lossy(&record).contains("published") {
        println!(
            "lab: {IMAGE}:1 is already published in {}",
            images.display()
        );
        return Ok(());
    }
    let t = now();
    let dst = images.join(IMAGE);
    if dst.exists() {
        tree::set_immutable(&dst, false)?;
        tree::remove_tree(&dst)?;
    }
    std::fs::create_dir_all(&dst)?;
    tree::copy_tree(&cache.join("1"), &dst.join("1"))?;
    tree::copy_tree(&cache.join("1.boot"), &dst.join("1.boot"))?;
    for f in ["1.toml", "1.manifest"] {
        std::fs::copy(cache.join(f), dst.join(f))?;
    }
    tree::set_immutable(&dst.join("1"), true)?;
    println!(
        "lab: {IMAGE}:1 copied from the cache {} ({}s)",
        cache.display(),
        secs(t)
    );
    Ok(())
}

/// Builds `lab:1` with `dfleet image` (the coordinator must be running: its
/// CA goes into the image and publish asks it to re-render), then saves the
/// published generation and the CA to the cache.
fn build_image(dir: &Path, key: &str, agent: &Path) -> Result<()> {
    let images = dir.join("images");
    let record = images.join(IMAGE).join("1.toml");
    let t = now();
    if read_lossy(&record).contains("published") {
        println!(
            "lab: {IMAGE}:1 is already published in {}",
            images.display()
        );
        return save_to_cache(dir, key);
    }
    if !record.exists() {
        image_cmd(dir, &["create", IMAGE, "--distro", "debian12"])?;
    }
    image_cmd(dir, &["exec", IMAGE, "--", "sh", "-c", IMAGE_SCRIPT])?;
    image_cmd(dir, &["enable", IMAGE, "dfleet-lab-marker.service"])?;
    let ca = dir.join("state/ca.pem");
    image_cmd(
        dir,
        &[
            "install-agent",
            IMAGE,
            "--agent",
            agent.to_str().context("agent path")?,
            "--ca",
            ca.to_str().context("CA path")?,
            "--coordinator",
            &format!("{HOST_IP}:7443"),
        ],
    )?;
    image_cmd(dir, &["publish", IMAGE])?;
    println!(
        "lab: {IMAGE}:1 built and published in {}s",
        t.elapsed().unwrap_or_default().as_secs()
    );
    save_to_cache(dir, key)
}

fn save_to_cache(dir: &Path, key: &str) -> Result<()> {
    let t = now();
    let cache = Path::new(CACHE_ROOT).join(key);
    let partial = Path::new(CACHE_ROOT).join(format!(".{key}.partial"));
    if partial.exists() {
        tree::remove_tree(&partial)?;
    }
    std::fs::create_dir_all(&partial)?;
    let src = dir.join("images").join(IMAGE);
    tree::copy_tree(&src.join("1"), &partial.join("1"))?;
    tree::copy_tree(&src.join("1.boot"), &partial.join("1.boot"))?;
    for f in ["1.manifest", "1.toml"] {
        std::fs::copy(src.join(f), partial.join(f))?;
    }
    for f in ["ca.pem", "ca.key"] {
        std::fs::copy(dir.join("state").join(f), partial.join(f))?;
    }
    std::fs::rename(&partial, &cache)?;
    println!(
        "lab: cached {IMAGE}:1 and the lab CA in {} ({}s)",
        cache.display(),
        t.elapsed().unwrap_or_default().as_secs()
    );
    Ok(())
}

// ------------------------------------------------------------ up

async fn up(nodes: u8, dir: &Path) -> Result<std::process::ExitCode> {
    if !rustix::process::geteuid().is_root() {
        bail!("dfleet lab runs as root (namespaces, taps, NFS server)");
    }
    check_tools()?;
    let started = now();
    std::fs::create_dir_all(dir)?;
    let dir = &std::fs::canonicalize(dir)?;
    if read_pids(dir)?.iter().any(alive) {
        bail!(
            "a lab is already running from {} (see `dfleet lab status`); stop it with `dfleet lab down`",
            dir.display()
        );
    }
    if Path::new("/run/netns").join(NETNS).exists() {
        bail!(
            "the network namespace {NETNS} exists already: another lab runs, or `dfleet lab down` did not finish"
        );
    }
    let _ = std::fs::remove_file(pids_path(dir));
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
    let key = cache_key(&agent)?;
    let cache = Path::new(CACHE_ROOT).join(&key);
    let warm = cache.join("1.toml").exists();
    println!(
        "lab: image cache {} ({})",
        cache.display(),
        if warm { "hit" } else { "miss: building" }
    );
    if warm {
        // The cached image carries the CA it was built with.
        for f in ["ca.pem", "ca.key"] {
            std::fs::copy(cache.join(f), state.join(f))?;
        }
        copy_from_cache(dir, &cache)?;
    }

    start(nodes, dir, started, warm, &key, &exe, &agent)
        .await
        .with_context(|| {
            format!(
                "the lab is partly up: `dfleet lab down --dir {}` stops what started",
                dir.display()
            )
        })
}

/// Everything `up` does from the namespace on: each process it starts is
/// recorded before the next starts, so `down` can undo a failure anywhere.
async fn start(
    nodes: u8,
    dir: &Path,
    started: SystemTime,
    warm: bool,
    key: &str,
    exe: &Path,
    agent: &Path,
) -> Result<std::process::ExitCode> {
    // The namespace and its bridge.
    let t = now();
    sh(&["ip", "netns", "add", NETNS])?;
    in_ns(&["ip", "link", "set", "lo", "up"])?;
    in_ns(&[
        "ip",
        "link",
        "add",
        BRIDGE,
        "type",
        "bridge",
        "forward_delay",
        "0",
    ])?;
    in_ns(&["ip", "addr", "add", "10.77.0.1/24", "dev", BRIDGE])?;
    // An IPv6 address for dnsmasq's router advertisements: without one,
    // iPXE waits ~13 s for an RA on every boot.
    let ra = in_ns(&[
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
    in_ns(&["ip", "link", "set", BRIDGE, "up"])?;
    println!(
        "lab: namespace {NETNS} with {BRIDGE} 10.77.0.1/24 ({}s)",
        secs(t)
    );

    // The coordinator. dnsmasq's log must exist before it starts: the
    // coordinator follows it for unknown MACs and gives up on a missing file.
    let t = now();
    std::fs::File::create(dir.join("logs/dnsmasq.log"))?;
    let config = dir.join("cluster.toml");
    let coordinator = spawn_in_ns(
        dir,
        "coordinator",
        &[
            exe.display().to_string(),
            "serve".into(),
            "--config".into(),
            config.display().to_string(),
        ],
        &dir.join("logs/coordinator.log"),
    )?;
    let log = dir.join("logs/coordinator.log");
    wait_for(
        "the coordinator's ready line",
        Duration::from_secs(30),
        || {
            let text = read_lossy(&log);
            if !alive(&coordinator) || zombie(coordinator.pid) {
                bail!("the coordinator exited:\n{text}");
            }
            Ok(text.contains("dfleet: serving"))
        },
    )
    .await?;
    println!("lab: coordinator serving on {HOST_IP}:7443 ({}s)", secs(t));

    if !warm {
        build_image(dir, key, agent)?;
    }
    let t = now();
    admin_cmd(
        dir,
        &[
            "node",
            "assign",
            &format!("lab[01-{nodes:02}]"),
            &format!("{IMAGE}:1"),
        ],
    )?;
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

    // NFS: rpcbind, then ganesha, in a private /run.
    let t = now();
    let holder_script = format!(
        "set -e\n\
         mount -t tmpfs -o mode=0755 dfleet-lab-run /run\n\
         mkdir -p /run/rpcbind /run/ganesha\n\
         chown _rpc:root /run/rpcbind 2>/dev/null || true\n\
         rpcbind -f &\n\
         echo $! > {d}/run/rpcbind.pid.new && mv {d}/run/rpcbind.pid.new {d}/run/rpcbind.pid\n\
         i=0; while [ ! -S /run/rpcbind.sock ]; do i=$((i+1)); [ $i -lt 300 ] || exit 1; sleep 0.1; done\n\
         ganesha.nfsd -F -f {d}/ganesha.conf -L {d}/logs/ganesha.log -p /run/ganesha/ganesha.pid -N NIV_EVENT &\n\
         echo $! > {d}/run/ganesha.pid.new && mv {d}/run/ganesha.pid.new {d}/run/ganesha.pid\n\
         wait\n",
        d = dir.display()
    );
    spawn_in_ns(
        dir,
        "nfs-holder",
        &[
            "unshare".into(),
            "-m".into(),
            "--propagation".into(),
            "private".into(),
            "sh".into(),
            "-c".into(),
            holder_script,
        ],
        &dir.join("logs/nfs-holder.log"),
    )?;
    for role in ["rpcbind", "ganesha"] {
        let pidfile = dir.join("run").join(format!("{role}.pid"));
        wait_for(&format!("{role} to start"), Duration::from_secs(30), || {
            Ok(pidfile.exists())
        })
        .await?;
        let pid: i32 = read_lossy(&pidfile).trim().parse()?;
        record_pid(dir, role, pid)?;
    }
    wait_for(
        "ganesha listening on 2049 and 20048",
        Duration::from_secs(30),
        || {
            let ss = in_ns(&["ss", "-Hltn"])?;
            Ok(ss.contains(":2049 ") && ss.contains(":20048 "))
        },
    )
    .await?;
    println!("lab: rpcbind and ganesha serving NFSv3 ({}s)", secs(t));

    // DHCP and TFTP.
    let t = now();
    let mut dnsmasq: Vec<String> = vec![
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
    spawn_in_ns(dir, "dnsmasq", &dnsmasq, &dir.join("logs/dnsmasq.out"))?;
    let dlog = dir.join("logs/dnsmasq.log");
    let dout = dir.join("logs/dnsmasq.out");
    wait_for("dnsmasq's TFTP ready line", Duration::from_secs(30), || {
        let out = read_lossy(&dout);
        if out.contains("dnsmasq:") && out.contains("FAILED") {
            bail!("dnsmasq failed: {out}");
        }
        Ok(read_lossy(&dlog).contains("TFTP root is"))
    })
    .await?;
    println!(
        "lab: dnsmasq serving DHCP and TFTP on {BRIDGE} ({}s)",
        secs(t)
    );

    // The nodes. Their boot deadline counts from here, not from the start
    // of `up` (a cold image build takes minutes).
    std::fs::write(dir.join("boot.time"), format!("{}\n", unix_secs(now())))?;
    let kvm = real_kvm();
    for n in lab_nodes(nodes) {
        let tap = n.tap();
        in_ns(&["ip", "tuntap", "add", "dev", &tap, "mode", "tap"])?;
        in_ns(&["ip", "link", "set", &tap, "master", BRIDGE])?;
        in_ns(&["ip", "link", "set", &tap, "up"])?;
        let mut argv: Vec<String> = vec![
            "qemu-system-x86_64".into(),
            "-name".into(),
            n.name(),
            "-machine".into(),
            format!("q35,accel={}", if kvm { "kvm" } else { "tcg" }),
            "-m".into(),
            "512".into(),
            "-netdev".into(),
            format!("tap,id=n0,ifname={tap},script=no,downscript=no"),
            "-device".into(),
            format!("virtio-net-pci,netdev=n0,mac={}", n.mac()),
            "-boot".into(),
            "n".into(),
            "-serial".into(),
            format!(
                "file:{}",
                dir.join("console")
                    .join(format!("{}.log", n.name()))
                    .display()
            ),
            "-display".into(),
            "none".into(),
            "-monitor".into(),
            "none".into(),
            "-pidfile".into(),
            dir.join("run")
                .join(format!("{}.qemu.pid", n.name()))
                .display()
                .to_string(),
        ];
        if kvm {
            argv.extend(["-cpu".into(), "host".into()]);
        }
        spawn_in_ns(
            dir,
            &format!("qemu-{}", n.name()),
            &argv,
            &dir.join("logs").join(format!("qemu-{}.log", n.name())),
        )?;
    }
    println!(
        "lab: {nodes} node(s) booting under {} ({}s since up); `dfleet lab status`, `dfleet lab console lab01`",
        if kvm { "KVM" } else { "TCG" },
        secs(started)
    );

    // Follow the boot until every node is ready or the deadline passes.
    let lab = Lab::load(dir)?;
    let mut last: Vec<Phase> = Vec::new();
    loop {
        let rows = lab.observe(now())?;
        let phases: Vec<Phase> = rows.iter().map(|r| r.phase).collect();
        if phases != last {
            for (i, r) in rows.iter().enumerate() {
                if last.get(i) != Some(&r.phase) {
                    println!("lab: {:>4}s {} {}", r.elapsed.as_secs(), r.name, r.phase);
                }
            }
            last = phases;
        }
        if rows.iter().all(|r| r.phase == Phase::Ready) {
            println!("lab: all {nodes} node(s) ready {}s after up", secs(started));
            return Ok(std::process::ExitCode::SUCCESS);
        }
        if rows.iter().any(|r| r.stalled) {
            print!("{}", status_table(&rows));
            println!("lab: a node stalled; the lab keeps running (`dfleet lab down` stops it)");
            return Ok(std::process::ExitCode::FAILURE);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn secs(since: SystemTime) -> u64 {
    since.elapsed().unwrap_or_default().as_secs()
}

// ------------------------------------------------------------ status

/// How far a node got, in boot order. Each step is seen in dnsmasq's log
/// (DHCP and TFTP), the serial console (markers) or the coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Waiting,
    Lease,
    Loader,
    Menu,
    Kernel,
    Initramfs,
    InitramfsNetwork,
    SwitchRoot,
    MultiUser,
    Enrolled,
    Ready,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Waiting => "no DHCP request yet",
            Phase::Lease => "DHCP lease (firmware)",
            Phase::Loader => "pxelinux.0 fetched",
            Phase::Menu => "menu fetched",
            Phase::Kernel => "kernel fetched",
            Phase::Initramfs => "initramfs fetched",
            Phase::InitramfsNetwork => "DHCP lease (initramfs)",
            Phase::SwitchRoot => "root mounted, systemd starting",
            Phase::MultiUser => "multi-user (serial marker)",
            Phase::Enrolled => "agent enrolled",
            Phase::Ready => "agent ready",
        })
    }
}

/// What the coordinator says about a node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CoordinatorView {
    pub enrolled: bool,
    pub ready: bool,
    pub state: String,
}

/// The furthest phase `node` reached, from dnsmasq's log text, its serial
/// console text and the coordinator's view.
pub fn phase(
    dnsmasq_log: &str,
    console: &str,
    node: &LabNode,
    coord: Option<&CoordinatorView>,
) -> Phase {
    if let Some(c) = coord {
        if c.ready {
            return Phase::Ready;
        }
        if c.enrolled {
            return Phase::Enrolled;
        }
    }
    if console.contains("DFLEET-READY") {
        return Phase::MultiUser;
    }
    if console.contains("dracut: Switching root") {
        return Phase::SwitchRoot;
    }
    let mac = node.mac();
    let sent_to = format!(" to {}", node.ip());
    let mut p = Phase::Waiting;
    for line in dnsmasq_log.lines() {
        if line.contains("DHCPACK(") && line.contains(&mac) {
            p = if p >= Phase::Initramfs {
                Phase::InitramfsNetwork
            } else {
                p.max(Phase::Lease)
            };
        } else if line.contains("dnsmasq-tftp")
            && line.contains(" sent ")
            && line.ends_with(&sent_to)
        {
            let file = line
                .split(" sent ")
                .nth(1)
                .and_then(|r| r.strip_suffix(&sent_to))
                .unwrap_or("");
            let got = if file.ends_with("/pxelinux.0") {
                Phase::Loader
            } else if file.contains("/pxelinux.cfg/") {
                Phase::Menu
            } else if file.ends_with("/vmlinuz") {
                Phase::Kernel
            } else if file.ends_with("/initrd.img") {
                Phase::Initramfs
            } else {
                continue;
            };
            p = p.max(got);
        }
    }
    p
}

/// The coordinator's view of every node, from `dfleet status --json`.
pub fn parse_status_json(text: &str) -> Result<Vec<(String, CoordinatorView)>> {
    let v: serde_json::Value =
        serde_json::from_str(text).context("parsing dfleet status --json")?;
    let nodes = v["nodes"].as_array().context("no nodes in the status")?;
    Ok(nodes
        .iter()
        .map(|n| {
            let name = n["name"].as_str().unwrap_or_default().to_string();
            let view = CoordinatorView {
                enrolled: n["cert_not_after_unix"].as_u64().unwrap_or(0) > 0
                    || n["connected"].as_bool().unwrap_or(false),
                ready: n["ready"].as_bool().unwrap_or(false),
                state: n["state"].as_str().unwrap_or_default().to_string(),
            };
            (name, view)
        })
        .collect())
}

/// One row of `lab status`.
#[derive(Debug, Clone)]
pub struct Row {
    pub name: String,
    pub phase: Phase,
    pub elapsed: Duration,
    pub deadline: Duration,
    pub stalled: bool,
    pub state: String,
    pub root: Option<String>,
}

struct Lab {
    dir: PathBuf,
    nodes: u8,
    up: SystemTime,
    deadline: Duration,
}

impl Lab {
    fn load(dir: &Path) -> Result<Lab> {
        let nodes: u8 = read_lossy(&dir.join("nodes"))
            .trim()
            .parse()
            .with_context(|| format!("no lab in {} (run `dfleet lab up`)", dir.display()))?;
        let up: u64 = read_lossy(&dir.join("boot.time"))
            .trim()
            .parse()
            .with_context(|| format!("the lab in {} started no node", dir.display()))?;
        Ok(Lab {
            dir: dir.to_path_buf(),
            nodes,
            up: UNIX_EPOCH + Duration::from_secs(up),
            deadline: if real_kvm() {
                DEADLINE_KVM
            } else {
                DEADLINE_TCG
            },
        })
    }

    fn observe(&self, now: SystemTime) -> Result<Vec<Row>> {
        let dns = read_lossy(&self.dir.join("logs/dnsmasq.log"));
        let coord: Vec<(String, CoordinatorView)> =
            match admin_cmd(&self.dir, &["status", "--json"]) {
                Ok(text) => parse_status_json(&text)?,
                Err(_) => Vec::new(),
            };
        let elapsed = now.duration_since(self.up).unwrap_or_default();
        Ok(lab_nodes(self.nodes)
            .iter()
            .map(|n| {
                let console =
                    read_lossy(&self.dir.join("console").join(format!("{}.log", n.name())));
                let view = coord
                    .iter()
                    .find(|(name, _)| *name == n.name())
                    .map(|(_, v)| v);
                let phase = phase(&dns, &console, n, view);
                let root = console
                    .lines()
                    .find_map(|l| l.find("DFLEET-ROOT ").map(|i| l[i..].trim().to_string()));
                Row {
                    name: n.name(),
                    phase,
                    elapsed,
                    deadline: self.deadline,
                    stalled: phase != Phase::Ready && elapsed > self.deadline,
                    state: view.map(|v| v.state.clone()).unwrap_or_else(|| "-".into()),
                    root,
                }
            })
            .collect())
    }
}

pub fn status_table(rows: &[Row]) -> String {
    let mut out = String::new();
    for r in rows {
        let what = if r.stalled {
            format!("STALLED after {}", r.phase)
        } else {
            r.phase.to_string()
        };
        out.push_str(&format!(
            "{:<6} {:<34} coordinator: {:<10} {}s since the nodes started (deadline {}s)\n",
            r.name,
            what,
            r.state,
            r.elapsed.as_secs(),
            r.deadline.as_secs()
        ));
        if let Some(root) = &r.root {
            out.push_str(&format!("       {root}\n"));
        }
    }
    out
}

// ------------------------------------------------------------ down

async fn down(dir: &Path) -> Result<std::process::ExitCode> {
    let pids = read_pids(dir)?;
    // The coordinator first, while the agents can still answer the end of
    // their streams (with the nodes gone it waits for them), then the
    // nodes, then the servers, the holder of the private /run last.
    let order = |p: &Started| match p.role.as_str() {
        "coordinator" => 0,
        r if r.starts_with("qemu-") => 1,
        "dnsmasq" => 2,
        "ganesha" => 3,
        "rpcbind" => 4,
        "nfs-holder" => 5,
        _ => 6,
    };
    let mut pids = pids;
    pids.sort_by_key(order);
    for p in &pids {
        if !alive(p) {
            println!("lab: {} (PID {}) had already exited", p.role, p.pid);
            continue;
        }
        let t = now();
        let pid = rustix::process::Pid::from_raw(p.pid).context("PID 0 in the record")?;
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let gone = wait_for(
            &format!("{} to exit", p.role),
            Duration::from_secs(15),
            || Ok(!alive(p) || zombie(p.pid)),
        )
        .await;
        if gone.is_err() {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            wait_for(
                &format!("{} to exit after SIGKILL", p.role),
                Duration::from_secs(5),
                || Ok(!alive(p) || zombie(p.pid)),
            )
            .await?;
        }
        println!(
            "lab: stopped {} (PID {}) in {:.1}s",
            p.role,
            p.pid,
            t.elapsed().unwrap_or_default().as_secs_f32()
        );
    }
    if Path::new("/run/netns").join(NETNS).exists() {
        sh(&["ip", "netns", "delete", NETNS])?;
        println!("lab: deleted the network namespace {NETNS}");
    }
    let _ = std::fs::remove_file(pids_path(dir));
    let _ = std::fs::remove_file(dir.join("admin.sock"));
    // Stale PID files would make the reload commands in cluster.toml signal
    // whatever process gets that PID next.
    for f in ["dnsmasq.pid", "ganesha.pid", "rpcbind.pid"] {
        let _ = std::fs::remove_file(dir.join("run").join(f));
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// A process that exited but whose parent has not reaped it yet.
fn zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rfind(')')
                .map(|i| s[i + 1..].trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DNSMASQ: &str = "\
Nov 25 23:40:01 dnsmasq-dhcp[12]: 3721 DHCPACK(br0) 10.77.0.11 52:54:00:77:00:01 lab01
Nov 25 23:40:02 dnsmasq-tftp[12]: sent /var/lib/dfleet-lab/tftp/pxelinux.0 to 10.77.0.11
Nov 25 23:40:03 dnsmasq-tftp[12]: sent /var/lib/dfleet-lab/tftp/ldlinux.c32 to 10.77.0.11
Nov 25 23:40:03 dnsmasq-tftp[12]: sent /var/lib/dfleet-lab/tftp/pxelinux.cfg/01-52-54-00-77-00-01 to 10.77.0.11
Nov 25 23:40:05 dnsmasq-tftp[12]: sent /var/lib/dfleet-lab/tftp/dfleet/lab/1/vmlinuz to 10.77.0.11
Nov 25 23:40:09 dnsmasq-dhcp[12]: 3722 DHCPACK(br0) 10.77.0.12 52:54:00:77:00:02 lab02
Nov 25 23:40:15 dnsmasq-tftp[12]: sent /var/lib/dfleet-lab/tftp/dfleet/lab/1/initrd.img to 10.77.0.11
";

    #[test]
    fn phases_follow_dnsmasqs_log_per_node() {
        let one = LabNode { index: 1 };
        let two = LabNode { index: 2 };
        assert_eq!(phase(DNSMASQ, "", &one, None), Phase::Initramfs);
        assert_eq!(phase(DNSMASQ, "", &two, None), Phase::Lease);
        assert_eq!(phase("", "", &two, None), Phase::Waiting);
        let again = format!(
            "{DNSMASQ}Nov 25 23:40:40 dnsmasq-dhcp[12]: 9 DHCPACK(br0) 10.77.0.11 52:54:00:77:00:01 lab01\n"
        );
        assert_eq!(phase(&again, "", &one, None), Phase::InitramfsNetwork);
        assert_eq!(
            phase(&again, "[ 39.4] dracut: Switching root\n", &one, None),
            Phase::SwitchRoot
        );
        assert_eq!(
            phase(&again, "x\nDFLEET-READY uptime=80.1\n", &one, None),
            Phase::MultiUser
        );
        let c = CoordinatorView {
            enrolled: true,
            ready: false,
            state: "not-ready".into(),
        };
        assert_eq!(phase(&again, "", &one, Some(&c)), Phase::Enrolled);
    }

    #[test]
    fn a_late_node_reads_stalled_after_its_phase() {
        let rows = [Row {
            name: "lab01".into(),
            phase: Phase::Initramfs,
            elapsed: Duration::from_secs(250),
            deadline: DEADLINE_TCG,
            stalled: true,
            state: "-".into(),
            root: None,
        }];
        assert!(
            status_table(&rows).contains("STALLED after initramfs fetched"),
            "{}",
            status_table(&rows)
        );
    }

    #[test]
    fn start_time_survives_names_with_spaces_and_parentheses() {
        let stat =
            "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_start_time(stat), Some(987654));
    }

    #[test]
    fn kvm_only_with_vmx_or_svm() {
        assert!(has_virt_flag("flags\t\t: fpu vme vmx sse\n"));
        assert!(!has_virt_flag("flags\t\t: fpu vme sse hypervisor\n"));
    }

    #[test]
    fn the_inventory_names_every_node_and_the_lab_daemons() {
        let t = cluster_toml(Path::new("/l"), 3);
        assert!(t.contains("name = \"lab[01-03]\""), "{t}");
        assert!(
            t.contains(
                "macs = [\"52:54:00:77:00:01\", \"52:54:00:77:00:02\", \"52:54:00:77:00:03\"]"
            ),
            "{t}"
        );
        assert!(t.contains("kill -HUP $(cat /l/run/dnsmasq.pid)"), "{t}");
    }
}
