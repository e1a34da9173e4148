//! Simulated diskless nodes: directories that look like a booted node to [`HostRoot`].
//!
//! [`build`] lays out `proc/`, `sys/`, the NFS lower at `run/dfleet/lower`, the RAM upper at
//! `run/dfleet/rw/upper` and the merged `/etc`, every file in the format the real kernel or tool
//! writes, so the agent's collectors run unchanged on it. Tests and the demo fleet make N of them.
//!
//! What a sandbox cannot fake: `statfs` of a plain directory reports the host filesystem holding
//! it. Set [`SandboxSpec::tmpfs_bytes`] (needs root) to mount a real tmpfs of that size at
//! `run/dfleet/rw`, so the upper's size, used and free numbers are those of a node's RAM upper.
//! Only `/etc` of the merged view is materialized (copies of whichever layer wins); the upper's
//! data files live in the upper only.

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Write as _};
use std::net::Ipv4Addr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use dfleet_proto::domain::{Generation, GenerationRef, MacAddr};

use crate::os::HostRoot;

/// Node paths of the diskless layout dfleet's initramfs builds.
pub const LOWER: &str = "run/dfleet/lower";
pub const RW: &str = "run/dfleet/rw";
pub const UPPER: &str = "run/dfleet/rw/upper";
pub const WORK: &str = "run/dfleet/rw/work";

/// What a simulated node looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxSpec {
    pub hostname: String,
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    /// The generation the node booted (its lower's stamp and export path).
    pub image: GenerationRef,
    /// Host of the NFS export, e.g. `10.0.0.1`.
    pub nfs_server: String,
    /// Written as `dfleet.coordinator=` on the kernel command line.
    pub coordinator: String,
    /// `uname -r`.
    pub kernel: String,
    /// Host keys in the image (the same on every node built with it) instead of generated at boot.
    pub shared_image_keys: bool,
    /// Files in the upper layer: (path relative to the root, e.g. `/var/log/big.log`, bytes).
    pub upper_files: Vec<(String, u64)>,
    /// Files of the image deleted on this node (`/usr/share/doc/x`): a file in the lower and a
    /// whiteout in the upper.
    pub whiteouts: Vec<String>,
    pub mem_total_kib: u64,
    /// Whether systemd runs: `/run/systemd/system` and a `systemctl` saying "running".
    pub systemd: bool,
    /// Mount a tmpfs of this size at `run/dfleet/rw` (root only); see the module docs.
    pub tmpfs_bytes: Option<u64>,
}

impl SandboxSpec {
    /// A node of image `compute:7` served from 10.0.0.1, with per-boot keys, systemd and 16 GiB.
    pub fn new(hostname: &str, mac: MacAddr, ip: Ipv4Addr) -> Self {
        SandboxSpec {
            hostname: hostname.to_string(),
            mac,
            ip,
            image: GenerationRef {
                image: "compute".to_string(),
                generation: Generation(7),
            },
            nfs_server: "10.0.0.1".to_string(),
            coordinator: "10.0.0.1:7443".to_string(),
            kernel: "6.1.0-28-amd64".to_string(),
            shared_image_keys: false,
            upper_files: Vec::new(),
            whiteouts: Vec::new(),
            mem_total_kib: 16 * 1024 * 1024,
            systemd: true,
            tmpfs_bytes: None,
        }
    }

    /// The NFS export the node's lower is mounted from.
    pub fn export(&self) -> String {
        format!(
            "{}:/srv/dfleet/images/{}/{}",
            self.nfs_server, self.image.image, self.image.generation
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "creating whiteout {0}: a 0:0 character device needs root (CAP_MKNOD); run as root or drop the whiteouts"
    )]
    WhiteoutNeedsRoot(PathBuf),
    #[error("running {command}: {detail}")]
    Command { command: String, detail: String },
    #[error("mounting a tmpfs at {0} needs root")]
    TmpfsNeedsRoot(PathBuf),
    #[error("invalid sandbox path {0:?}: must be absolute and stay inside the node")]
    BadPath(String),
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SandboxError + 'a {
    move |source| SandboxError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// A built sandbox. Dropping it unmounts its tmpfs, if it mounted one.
#[derive(Debug)]
pub struct Sandbox {
    dir: PathBuf,
    spec: SandboxSpec,
    tmpfs_mounted: bool,
}

/// Lays out a diskless node under `dir` (created if needed; it should be empty).
pub fn build(dir: &Path, spec: &SandboxSpec) -> Result<Sandbox, SandboxError> {
    fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
    let mut sb = Sandbox {
        dir: dir.to_path_buf(),
        spec: spec.clone(),
        tmpfs_mounted: false,
    };
    if let Some(bytes) = spec.tmpfs_bytes {
        sb.mount_tmpfs(bytes)?;
    }
    sb.write_static()?;
    sb.write_lower()?;
    sb.fresh_upper()?;
    for (path, bytes) in &spec.upper_files {
        sb.write_upper_file(path, *bytes)?;
    }
    sb.write_meminfo()?;
    for path in &spec.whiteouts {
        sb.add_whiteout(path)?;
    }
    sb.write_boot()?;
    Ok(sb)
}

impl Sandbox {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn spec(&self) -> &SandboxSpec {
        &self.spec
    }

    /// The node as the agent sees it.
    pub fn root(&self) -> HostRoot {
        HostRoot::new(&self.dir)
    }

    pub fn upper_dir(&self) -> PathBuf {
        self.dir.join(UPPER)
    }

    pub fn lower_dir(&self) -> PathBuf {
        self.dir.join(LOWER)
    }

    /// Where a node path lands in the sandbox, refusing `..` and relative paths.
    fn under(&self, base: &Path, node_path: &str) -> Result<PathBuf, SandboxError> {
        let rel = node_path
            .strip_prefix('/')
            .filter(|r| !r.is_empty() && !r.split('/').any(|c| c == ".." || c == "."))
            .ok_or_else(|| SandboxError::BadPath(node_path.to_string()))?;
        Ok(base.join(rel))
    }

    /// Writes a file of `bytes` real bytes (not sparse) at `rel_path` in the upper layer, replacing
    /// one that is there, and updates `/proc/meminfo`'s Shmem to match.
    pub fn grow_upper(&self, rel_path: &str, bytes: u64) -> Result<(), SandboxError> {
        self.write_upper_file(rel_path, bytes)?;
        self.write_meminfo()
    }

    /// Writes one upper-layer file of `bytes` real bytes. Not synced: this is
    /// test data, and a swarm of sandboxes must be quick to build.
    fn write_upper_file(&self, rel_path: &str, bytes: u64) -> Result<(), SandboxError> {
        let path = self.under(&self.upper_dir(), rel_path)?;
        mkdir_parent(&path)?;
        let mut f = fs::File::create(&path).map_err(io_err("creating", &path))?;
        let chunk = [0x5au8; 64 * 1024];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            f.write_all(&chunk[..n]).map_err(io_err("writing", &path))?;
            left -= n as u64;
        }
        Ok(())
    }

    /// Simulates a reboot into the same generation: a new boot id, an empty upper layer, fresh
    /// per-boot host keys (unless the image carries them) and a reset uptime.
    pub fn regenerate_boot(&self) -> Result<(), SandboxError> {
        self.fresh_upper()?;
        self.write_boot()
    }

    /// Unmounts the tmpfs at `run/dfleet/rw`, if this sandbox mounted one.
    pub fn unmount(&mut self) -> Result<(), SandboxError> {
        if self.tmpfs_mounted {
            let rw = self.dir.join(RW);
            run(Command::new("umount").arg(&rw))?;
            self.tmpfs_mounted = false;
        }
        Ok(())
    }

    fn mount_tmpfs(&mut self, bytes: u64) -> Result<(), SandboxError> {
        let rw = self.dir.join(RW);
        if !rustix::process::geteuid().is_root() {
            return Err(SandboxError::TmpfsNeedsRoot(rw));
        }
        fs::create_dir_all(&rw).map_err(io_err("creating", &rw))?;
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={bytes},mode=755"))
            .arg("tmpfs")
            .arg(&rw))?;
        self.tmpfs_mounted = true;
        Ok(())
    }

    /// Files that do not change across boots: the mount table, kernel files, the NIC.
    fn write_static(&self) -> Result<(), SandboxError> {
        let s = &self.spec;
        self.put("proc/self/mountinfo", &self.mountinfo())?;
        self.put(
            "proc/cmdline",
            &format!(
                "BOOT_IMAGE=vmlinuz-{k} initrd=initramfs-{k}.img root=nfs:{export} ro rd.neednet=1 \
                 ip=dhcp BOOTIF={bootif} dfleet.coordinator={coord} dfleet.overlay.size=50% quiet\n",
                k = s.kernel,
                export = s.export(),
                bootif = s.mac.pxelinux_form(),
                coord = s.coordinator,
            ),
        )?;
        self.put("proc/sys/kernel/hostname", &format!("{}\n", s.hostname))?;
        self.put("proc/sys/kernel/osrelease", &format!("{}\n", s.kernel))?;
        self.put("proc/net/fib_trie", &fib_trie(s.ip))?;
        self.put("sys/class/net/eth0/address", &format!("{}\n", s.mac))?;
        self.put("sys/class/net/lo/address", "00:00:00:00:00:00\n")?;
        if s.systemd {
            let dir = self.dir.join("run/systemd/system");
            fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
            let systemctl = self.dir.join("usr/bin/systemctl");
            self.put(
                "usr/bin/systemctl",
                "#!/bin/sh\n# dfleet sandbox: systemd is up\necho running\n",
            )?;
            fs::set_permissions(&systemctl, fs::Permissions::from_mode(0o755))
                .map_err(io_err("chmod", &systemctl))?;
        }
        Ok(())
    }

    /// The image: stamp, os-release, sshd config, the files whiteouts will hide, and host keys
    /// when the image carries them.
    fn write_lower(&self) -> Result<(), SandboxError> {
        let s = &self.spec;
        self.put(
            &format!("{LOWER}/etc/dfleet/generation"),
            &format!(
                "# written by dfleet image publish\nimage = \"{}\"\ngeneration = {}\n",
                s.image.image, s.image.generation
            ),
        )?;
        self.put(
            &format!("{LOWER}/etc/os-release"),
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\n\
             VERSION_ID=\"12\"\nVERSION=\"12 (bookworm)\"\nVERSION_CODENAME=bookworm\nID=debian\n",
        )?;
        self.put(
            &format!("{LOWER}/etc/ssh/sshd_config"),
            "Include /etc/ssh/sshd_config.d/*.conf\nKbdInteractiveAuthentication no\nUsePAM yes\n",
        )?;
        for path in &s.whiteouts {
            let p = self.under(&self.lower_dir(), path)?;
            mkdir_parent(&p)?;
            fs::write(&p, format!("{path} as shipped in the image\n"))
                .map_err(io_err("writing", &p))?;
        }
        if s.shared_image_keys {
            keygen(&self.lower_dir().join("etc/ssh"), "root@image")?;
        }
        Ok(())
    }

    /// An empty upper and work directory (the contents of the tmpfs when one is mounted).
    fn fresh_upper(&self) -> Result<(), SandboxError> {
        for dir in [self.dir.join(UPPER), self.dir.join(WORK)] {
            match fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("removing", &dir)(e)),
            }
            fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        }
        let work = self.dir.join(WORK).join("work");
        fs::create_dir_all(&work).map_err(io_err("creating", &work))?;
        Ok(())
    }

    fn add_whiteout(&self, path: &str) -> Result<(), SandboxError> {
        let p = self.under(&self.upper_dir(), path)?;
        mkdir_parent(&p)?;
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &p,
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::empty(),
            rustix::fs::makedev(0, 0),
        )
        .map_err(|e| match e {
            rustix::io::Errno::PERM | rustix::io::Errno::ACCESS => {
                SandboxError::WhiteoutNeedsRoot(p.clone())
            }
            e => io_err("mknod", &p)(e.into()),
        })
    }

    /// Per-boot state: boot id, uptime, host keys when generated at boot, merged `/etc`, meminfo.
    fn write_boot(&self) -> Result<(), SandboxError> {
        self.put(
            "proc/sys/kernel/random/boot_id",
            &format!("{}\n", random_uuid()),
        )?;
        self.put("proc/uptime", "37.52 71.80\n")?;
        if !self.spec.shared_image_keys {
            let comment = format!("root@{}", self.spec.hostname);
            keygen(&self.upper_dir().join("etc/ssh"), &comment)?;
        }
        self.merge_etc()?;
        self.write_meminfo()
    }

    /// Rebuilds `<dir>/etc` as overlayfs would show it: the lower's `/etc`, then the upper's
    /// files on top, with whiteouts removing what they hide.
    fn merge_etc(&self) -> Result<(), SandboxError> {
        let merged = self.dir.join("etc");
        match fs::remove_dir_all(&merged) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("removing", &merged)(e)),
        }
        copy_layer(&self.lower_dir().join("etc"), &merged)?;
        copy_layer(&self.upper_dir().join("etc"), &merged)
    }

    fn write_meminfo(&self) -> Result<(), SandboxError> {
        let upper_bytes = dir_bytes(&self.upper_dir());
        self.put(
            "proc/meminfo",
            &meminfo(self.spec.mem_total_kib, upper_bytes / 1024),
        )
    }

    fn mountinfo(&self) -> String {
        let s = &self.spec;
        let mem = s.mem_total_kib;
        let rw_kib = s.tmpfs_bytes.map_or(mem / 2, |b| b / 1024);
        let server = &s.nfs_server;
        format!(
            "\
22 1 0:21 / / rw,relatime shared:1 - overlay overlay rw,lowerdir=/run/dfleet/lower,upperdir=/run/dfleet/rw/upper,workdir=/run/dfleet/rw/work,uuid=on
23 22 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:2 - sysfs sysfs rw
24 22 0:23 / /proc rw,nosuid,nodev,noexec,relatime shared:13 - proc proc rw
25 22 0:5 / /dev rw,nosuid shared:9 - devtmpfs devtmpfs rw,size={dev}k,nr_inodes={dev_inodes},mode=755
26 22 0:24 / /run rw,nosuid,nodev shared:12 - tmpfs tmpfs rw,size={run}k,nr_inodes=819200,mode=755
27 26 0:25 / /run/dfleet/rw rw,relatime shared:14 - tmpfs tmpfs rw,size={rw_kib}k,mode=755
28 26 0:26 / /run/dfleet/lower ro,relatime shared:15 - nfs {export} ro,vers=3,rsize=1048576,wsize=1048576,namlen=255,hard,nolock,proto=tcp,timeo=600,retrans=2,sec=sys,mountaddr={server},mountvers=3,mountport=20048,mountproto=udp,local_lock=all,addr={server}
29 25 0:27 / /dev/shm rw,nosuid,nodev shared:10 - tmpfs tmpfs rw,size={shm}k
30 25 0:28 / /dev/pts rw,nosuid,noexec,relatime shared:11 - devpts devpts rw,gid=5,mode=620,ptmxmode=000
31 23 0:29 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:3 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
",
            dev = mem / 2,
            dev_inodes = mem / 8,
            run = mem / 5,
            shm = mem / 2,
            export = s.export(),
        )
    }

    /// Writes `text` at a path relative to the sandbox directory, creating parents.
    fn put(&self, rel: &str, text: &str) -> Result<(), SandboxError> {
        let p = self.dir.join(rel);
        mkdir_parent(&p)?;
        fs::write(&p, text).map_err(io_err("writing", &p))
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Err(e) = self.unmount() {
            tracing::warn!("sandbox {}: {e}", self.dir.display());
        }
    }
}

fn mkdir_parent(p: &Path) -> Result<(), SandboxError> {
    match p.parent() {
        Some(parent) => fs::create_dir_all(parent).map_err(io_err("creating", parent)),
        None => Ok(()),
    }
}

fn run(cmd: &mut Command) -> Result<(), SandboxError> {
    let command = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| SandboxError::Command {
        command: command.clone(),
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(SandboxError::Command {
            command,
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(())
}

/// Real host keys, as `ssh-keygen -A` would make them: ed25519 and ecdsa (256).
fn keygen(ssh_dir: &Path, comment: &str) -> Result<(), SandboxError> {
    fs::create_dir_all(ssh_dir).map_err(io_err("creating", ssh_dir))?;
    for (kind, extra) in [("ed25519", None), ("ecdsa", Some("256"))] {
        let key = ssh_dir.join(format!("ssh_host_{kind}_key"));
        for p in [key.clone(), key.with_extension("pub")] {
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("removing", &p)(e)),
            }
        }
        let mut cmd = Command::new("ssh-keygen");
        cmd.args(["-q", "-t", kind]);
        if let Some(bits) = extra {
            cmd.args(["-b", bits]);
        }
        cmd.args(["-N", "", "-C", comment, "-f"]).arg(&key);
        run(&mut cmd)?;
    }
    Ok(())
}

/// Copies a layer's tree onto `dst` like overlayfs merges it: a 0:0 character device (whiteout)
/// removes what it names, anything else replaces it.
fn copy_layer(src: &Path, dst: &Path) -> Result<(), SandboxError> {
    let entries = match fs::read_dir(src) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("listing", src)(e)),
    };
    fs::create_dir_all(dst).map_err(io_err("creating", dst))?;
    for entry in entries {
        let entry = entry.map_err(io_err("listing", src))?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let ft = entry.file_type().map_err(io_err("lstat", &from))?;
        if ft.is_dir() {
            copy_layer(&from, &to)?;
        } else if ft.is_char_device() {
            let _ = fs::remove_file(&to);
            let _ = fs::remove_dir_all(&to);
        } else {
            fs::copy(&from, &to).map_err(io_err("copying", &from))?;
        }
    }
    Ok(())
}

/// Bytes of regular files under `dir`, as the upper's share of Shmem.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) if m.is_file() => m.len(),
            _ => 0,
        })
        .sum()
}

/// A random version-4 UUID, as the kernel's `boot_id`.
fn random_uuid() -> String {
    let mut b: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// `/proc/meminfo` with every field a 6.1 x86_64 kernel shows. The upper's bytes count in Shmem
/// (tmpfs is shared memory) and come out of MemAvailable.
fn meminfo(total_kib: u64, upper_kib: u64) -> String {
    let shmem = 8_952 + upper_kib;
    let used = 180_000 + shmem;
    let available = total_kib.saturating_sub(used);
    let cached = 569_384 + upper_kib;
    let free = available.saturating_sub(cached.min(available / 2));
    let fields: &[(&str, u64, bool)] = &[
        ("MemTotal", total_kib, true),
        ("MemFree", free, true),
        ("MemAvailable", available, true),
        ("Buffers", 2_900, true),
        ("Cached", cached, true),
        ("SwapCached", 0, true),
        ("Active", 129_192 + upper_kib / 2, true),
        ("Inactive", 608_580 + upper_kib / 2, true),
        ("Active(anon)", 1_540 + upper_kib / 2, true),
        ("Inactive(anon)", 173_032 + upper_kib / 2, true),
        ("Active(file)", 127_652, true),
        ("Inactive(file)", 435_548, true),
        ("Unevictable", 10_304, true),
        ("Mlocked", 8_708, true),
        ("SwapTotal", 0, true),
        ("SwapFree", 0, true),
        ("Zswap", 0, true),
        ("Zswapped", 0, true),
        ("Dirty", 84, true),
        ("Writeback", 0, true),
        ("AnonPages", 175_928, true),
        ("Mapped", 172_884, true),
        ("Shmem", shmem, true),
        ("KReclaimable", 41_964, true),
        ("Slab", 61_728, true),
        ("SReclaimable", 41_964, true),
        ("SUnreclaim", 19_764, true),
        ("KernelStack", 1_600, true),
        ("PageTables", 3_580, true),
        ("SecPageTables", 0, true),
        ("NFS_Unstable", 0, true),
        ("Bounce", 0, true),
        ("WritebackTmp", 0, true),
        ("CommitLimit", total_kib / 2, true),
        ("Committed_AS", 149_020, true),
        ("VmallocTotal", 34_359_738_367, true),
        ("VmallocUsed", 5_860, true),
        ("VmallocChunk", 0, true),
        ("Percpu", 664, true),
        ("HardwareCorrupted", 0, true),
        ("AnonHugePages", 0, true),
        ("ShmemHugePages", 0, true),
        ("ShmemPmdMapped", 0, true),
        ("FileHugePages", 0, true),
        ("FilePmdMapped", 0, true),
        ("HugePages_Total", 0, false),
        ("HugePages_Free", 0, false),
        ("HugePages_Rsvd", 0, false),
        ("HugePages_Surp", 0, false),
        ("Hugepagesize", 2_048, true),
        ("Hugetlb", 0, true),
        ("DirectMap4k", 20_480, true),
        ("DirectMap2M", 2_076_672, true),
        (
            "DirectMap1G",
            total_kib.div_ceil(1024 * 1024) * 1024 * 1024,
            true,
        ),
    ];
    let mut out = String::new();
    for (name, value, kb) in fields {
        let label = format!("{name}:");
        let _ = writeln!(out, "{label:<16}{value:>8}{}", if *kb { " kB" } else { "" });
    }
    out
}

/// `/proc/net/fib_trie` for a node with loopback and one address in a /24, shaped as the kernel
/// prints it (both the Main and the Local table).
fn fib_trie(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    let net = Ipv4Addr::new(a, b, c, 0);
    let bcast = Ipv4Addr::new(a, b, c, 255);
    // The inner node joining the network and host leaves covers their common prefix.
    let inner = 24 + d.leading_zeros();
    let table = format!(
        "  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
     +-- {net}/24 2 0 2
        +-- {net}/{inner} 2 0 2
           |-- {net}
              /24 link UNICAST
           |-- {ip}
              /32 host LOCAL
        |-- {bcast}
           /32 link BROADCAST
"
    );
    format!("Main:\n{table}Local:\n{table}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse;

    #[test]
    fn generated_kernel_files_parse_like_real_ones() {
        let mem = parse::meminfo::parse(&meminfo(16 * 1024 * 1024, 4096)).unwrap();
        assert_eq!(mem.total_bytes, 16 << 30);
        assert_eq!(mem.shmem_bytes, (8_952 + 4096) * 1024);
        let addrs = parse::fib_trie::parse(&fib_trie(Ipv4Addr::new(10, 0, 0, 21))).unwrap();
        assert_eq!(addrs, vec![Ipv4Addr::new(10, 0, 0, 21)]);
        let uuid = random_uuid();
        assert_eq!(uuid.len(), 36);
        assert_eq!(&uuid[14..15], "4");
        assert_ne!(uuid, random_uuid());
    }

    #[test]
    fn meminfo_lines_are_aligned_like_the_kernel() {
        let text = meminfo(24_683_656, 0);
        assert!(text.starts_with("MemTotal:       24683656 kB\n"), "{text}");
        assert!(text.contains("\nHugePages_Total:       0\n"));
        assert!(text.contains("\nVmallocTotal:   34359738367 kB\n"));
    }
}
