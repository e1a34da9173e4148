//! The end-to-end boot: `dfleet lab up` with two QEMU nodes that PXE-boot
//! the lab image over the network (dnsmasq DHCP and TFTP, pxelinux, kernel
//! and initramfs with dfleet's dracut module, NFSv3 from nfs-ganesha as the
//! read-only lower layer, tmpfs upper, systemd, the agent enrolling over
//! mTLS). One lab session serves every scenario, in order, with five boots
//! of lab01 and four of lab02 in all:
//! 1. both nodes reach multi-user on the overlay root; lab01's NFS root is
//!    mounted by the distribution's nfs module, lab02's by dfleet's own path
//!    (`dfleet.mount=self` in its inventory entry), and the test checks which
//!    path ran on each;
//! 2. each agent enrolled under its inventory name and address, is ready,
//!    and reports the guest's real overlay;
//! 3. `findmnt /` run on both nodes with `dfleet exec` says overlay; a file
//!    written on lab01 (`lab fill`, through `dfleet exec`) grows its
//!    reported upper usage by at least its size, and the exported tree is
//!    unchanged (`image verify`);
//! 4. with the NFS server stopped, a power-cycled lab02 is reported stalled
//!    after its initramfs's DHCP lease with the mount error, the coordinator
//!    keeps answering, and once the server is back lab02 boots and lab01
//!    (which runs from the same server) is ready again;
//! 5. a generation lab:2 is made (`image edit`, a change, `image publish`)
//!    and a rollout moves both nodes onto it: each is ordered to reboot by
//!    the coordinator, PXE-boots lab:2's menu, mounts lab:2's export and
//!    reports it, and the rollout completes (`dfleet rollout wait`);
//!    before it (step 3) and after: what each node's sshd serves (`ssh-keyscan`) is the
//!    key its agent reports, lab01 (certificates) and lab02 (managed) have
//!    different keys, `ssh -o StrictHostKeyChecking=yes` with only the
//!    fleet's known_hosts verifies both, and lab02's managed key is the same
//!    after its reboots;
//! 6. with the coordinator stopped, a power-cycled lab01 still reaches
//!    multi-user with sshd serving a key of its own boot; once the
//!    coordinator is back, its agent gets that key certified and reloads sshd;
//! 7. `dfleet lab down` leaves no process, mount or namespace behind.
//!
//! Runs as root, last and alone (test group `lab`); the lab directory is
//! fixed (`DFLEET_TEST_LAB_DIR`, default /var/tmp/dfleet-tests-lab) so a run
//! killed by the timeout is cleaned up by the next one, and it is removed at
//! the end. The image is cached by `dfleet lab` in /var/cache/dfleet-lab.
//! The test waits through `dfleet lab up`, `lab wait` and `lab fill`, which
//! follow what the lab's parts report. On failure it prints the tail of each
//! node's serial console.

use std::path::{Path, PathBuf};
use std::process::Output;

use anyhow::{Context, Result, bail};
use dfleet_tests::bin;
use serde_json::Value;

const NODES: [&str; 2] = ["lab01", "lab02"];

/// Bytes `lab fill` writes into lab01's overlay.
const FILL: u64 = 32 << 20;

fn lab_dir() -> PathBuf {
    std::env::var_os("DFLEET_TEST_LAB_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/dfleet-tests-lab"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `dfleet lab ARGS… --dir DIR`.
fn lab(dir: &Path, args: &[&str]) -> Result<Output> {
    std::process::Command::new(bin("dfleet"))
        .arg("lab")
        .args(args)
        .arg("--dir")
        .arg(dir)
        .output()
        .context("running dfleet lab")
}

fn lab_ok(dir: &Path, args: &[&str]) -> Result<String> {
    let o = lab(dir, args)?;
    if !o.status.success() {
        bail!(
            "dfleet lab {} failed ({}):\n{}",
            args.join(" "),
            o.status,
            text(&o)
        );
    }
    Ok(text(&o))
}

/// `dfleet --socket DIR/admin.sock ARGS…` against the lab's coordinator.
fn admin(dir: &Path, args: &[&str]) -> Result<String> {
    let o = std::process::Command::new(bin("dfleet"))
        .arg("--socket")
        .arg(dir.join("admin.sock"))
        .args(args)
        .output()?;
    if !o.status.success() {
        bail!(
            "dfleet {} failed ({}):\n{}",
            args.join(" "),
            o.status,
            text(&o)
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// `dfleet image ARGS…` on the lab's image store, talking to its coordinator.
fn image(dir: &Path, args: &[&str]) -> Result<String> {
    let o = std::process::Command::new(bin("dfleet"))
        .arg("--socket")
        .arg(dir.join("admin.sock"))
        .arg("image")
        .arg("--config")
        .arg(dir.join("cluster.toml"))
        .args(args)
        .output()?;
    if !o.status.success() {
        bail!(
            "dfleet image {} failed ({}):\n{}",
            args.join(" "),
            o.status,
            text(&o)
        );
    }
    Ok(text(&o))
}

/// The lab's view: `dfleet lab status --json` (it exits 1 while a node is
/// not ready, which is not an error here).
fn lab_status(dir: &Path, name: &str) -> Result<Value> {
    let o = lab(dir, &["status", "--json"])?;
    let v: Value = serde_json::from_slice(&o.stdout)
        .with_context(|| format!("lab status --json:\n{}", text(&o)))?;
    v["nodes"]
        .as_array()
        .and_then(|a| a.iter().find(|n| n["name"] == name))
        .cloned()
        .with_context(|| format!("{name} not in the lab status: {v}"))
}

/// The coordinator's view of one node: `dfleet status --json`.
fn coordinator_node(dir: &Path, name: &str) -> Result<Value> {
    let v: Value = serde_json::from_str(&admin(dir, &["status", "--json"])?)?;
    v["nodes"]
        .as_array()
        .and_then(|a| a.iter().find(|n| n["name"] == name))
        .cloned()
        .with_context(|| format!("{name} not in dfleet status: {v}"))
}

/// Stops the lab and removes its directory however the test ends; on a
/// failure first prints what a person debugging it needs.
struct Session {
    dir: PathBuf,
}

impl Session {
    fn start(dir: PathBuf) -> Result<Session> {
        // A run killed by its timeout left its lab running: stop it.
        if dir.join("pids").exists() {
            eprintln!("stopping the lab a previous run left in {}", dir.display());
            lab_ok(&dir, &["down"])?;
        }
        if dir.exists() {
            remove_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        Ok(Session { dir })
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for node in NODES {
                let console = std::fs::read(self.dir.join("console").join(format!("{node}.log")))
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                let lines: Vec<&str> = console.lines().collect();
                eprintln!(
                    "---- {node}: last lines of its serial console ----\n{}",
                    lines[lines.len().saturating_sub(60)..].join("\n")
                );
            }
            if let Ok(o) = lab(&self.dir, &["status"]) {
                eprintln!("---- dfleet lab status ----\n{}", text(&o));
            }
            let log =
                std::fs::read_to_string(self.dir.join("logs/coordinator.log")).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "---- coordinator log (end) ----\n{}",
                lines[lines.len().saturating_sub(30)..].join("\n")
            );
        }
        if self.dir.join("pids").exists() {
            match lab(&self.dir, &["down"]) {
                Ok(o) => eprintln!("{}", text(&o)),
                Err(e) => eprintln!("dfleet lab down: {e:#}"),
            }
        }
        if let Err(e) = remove_all(&self.dir) {
            eprintln!("removing {}: {e:#}", self.dir.display());
        }
    }
}

/// Removes a lab directory, whose published image tree is immutable.
fn remove_all(dir: &Path) -> Result<()> {
    if dir.exists() {
        dfleet_provisioner::image::tree::set_immutable(dir, false)?;
        dfleet_provisioner::image::tree::remove_tree(dir)?;
    }
    Ok(())
}

fn marker<'a>(node: &'a Value, name: &str) -> Result<&'a str> {
    node["markers"][name].as_str().with_context(|| {
        format!(
            "no DFLEET-{name} marker on {}'s console: {node}",
            node["name"]
        )
    })
}

fn pid_alive(pid: i32, start: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s[s.rfind(')')? + 1..].to_string();
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.first() != Some(&"Z") && f.get(19) == Some(&start))
        })
        .unwrap_or(false)
}

/// The lab's network namespace.
fn netns(dir: &Path) -> Result<String> {
    Ok(std::fs::read_to_string(dir.join("netns"))?
        .trim()
        .to_string())
}

/// The fingerprint of the ed25519 host key the sshd at `ip` serves, read
/// with `ssh-keyscan` from the lab's namespace.
fn served_key(dir: &Path, ip: &str) -> Result<String> {
    let o = std::process::Command::new("ip")
        .args(["netns", "exec", &netns(dir)?])
        .args(["ssh-keyscan", "-T", "30", "-t", "ed25519", ip])
        .output()?;
    let scanned = String::from_utf8_lossy(&o.stdout).to_string();
    if !scanned.contains(" ssh-ed25519 ") {
        bail!("ssh-keyscan {ip} found no ed25519 key:\n{}", text(&o));
    }
    let file = dir.join(format!("keyscan-{ip}"));
    std::fs::write(&file, &scanned)?;
    let o = std::process::Command::new("ssh-keygen")
        .arg("-lf")
        .arg(&file)
        .output()?;
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .nth(1)
        .map(str::to_string)
        .with_context(|| format!("ssh-keygen -lf {}: {}", file.display(), text(&o)))
}

/// The fingerprint a node's agent reports for the key dfleet manages.
fn reported_key(dir: &Path, name: &str) -> Result<String> {
    let c = coordinator_node(dir, name)?;
    c["report"]["host_keys"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|k| k["path"] == "/etc/ssh/ssh_host_ed25519_key")
        .and_then(|k| k["fingerprint"].as_str())
        .map(str::to_string)
        .with_context(|| format!("{name} reports no ed25519 host key: {c}"))
}

/// `ssh` to `ip` from the lab's namespace trusting only `known_hosts`
/// (strict checking): the host key must verify. Nobody may log in to the lab
/// image, so the end is the server refusing the login, after the host key.
fn host_key_verifies(dir: &Path, ip: &str, known_hosts: &Path) -> Result<()> {
    let o = std::process::Command::new("ip")
        .args(["netns", "exec", &netns(dir)?, "ssh", "-F", "/dev/null"])
        .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .args([
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=30",
        ])
        .args([&format!("root@{ip}"), "true"])
        .output()?;
    let err = String::from_utf8_lossy(&o.stderr);
    if err.contains("Host key verification failed") || !err.contains("Permission denied") {
        bail!("ssh {ip} with the fleet's known_hosts: {err}");
    }
    Ok(())
}

#[test]
fn two_nodes_boot_over_the_network_onto_the_overlay_root() -> Result<()> {
    if !rustix::process::geteuid().is_root() {
        panic!(
            "the lab test runs as root (namespaces, taps, an NFS server); run it as the test command does"
        );
    }
    let session = Session::start(lab_dir())?;
    let dir = session.dir.clone();
    // How long each part took, in the test's output (CI prints it).
    let t0 = tokio::time::Instant::now();
    let step = |what: &str| eprintln!("[lab +{:.0}s] {what}", t0.elapsed().as_secs_f64());

    // ---- 1. both nodes boot
    step("1. both nodes boot");
    let up = lab(&dir, &["up", "--nodes", "2"])?;
    eprintln!("{}", text(&up));
    assert!(up.status.success(), "dfleet lab up failed:\n{}", text(&up));
    let export = format!("10.77.0.1:{}/images/lab/1", dir.display());
    for (name, path) in [("lab01", "nfs-module"), ("lab02", "dfleet")] {
        let n = lab_status(&dir, name)?;
        assert_eq!(n["phase"], "ready", "{n}");
        let root: Vec<&str> = marker(&n, "ROOT")?.split_whitespace().collect();
        assert_eq!(
            root[..2],
            ["overlay", "overlay"],
            "{name}: / is not the overlay: {n}"
        );
        assert!(
            root[2].contains("lowerdir=/run/dfleet/lower")
                && root[2].contains("upperdir=/run/dfleet/rw/upper"),
            "{name}: {n}"
        );
        let lower: Vec<&str> = marker(&n, "LOWER")?.split_whitespace().collect();
        assert_eq!(
            lower[..2],
            [export.as_str(), "nfs"],
            "{name}: lower is not the export: {n}"
        );
        assert!(
            lower[2].split(',').any(|o| o == "ro"),
            "{name}: lower not read-only: {n}"
        );
        assert!(lower[2].split(',').any(|o| o == "vers=3"), "{name}: {n}");
        assert_eq!(
            marker(&n, "MOUNTED-BY")?,
            path,
            "{name} took the wrong mount path: {n}"
        );
        let self_arg = marker(&n, "CMDLINE")?
            .split_whitespace()
            .any(|a| a == "dfleet.mount=self");
        assert_eq!(self_arg, name == "lab02", "{name}: {n}");
    }

    step("2. the agents");
    // ---- 2. the agents, enrolled under their inventory names
    let mut upper_size = Vec::new();
    for (name, ip) in [("lab01", "10.77.0.11"), ("lab02", "10.77.0.12")] {
        let c = coordinator_node(&dir, name)?;
        assert_eq!(c["connected"], true, "{c}");
        assert_eq!(c["ready"], true, "{c}");
        assert_eq!(c["ip"], ip, "{c}");
        let r = &c["report"];
        let addresses: Vec<&str> = r["identity"]["addresses"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        assert!(
            addresses.iter().any(|a| a.starts_with(ip)),
            "{name} reports {addresses:?}"
        );
        assert_eq!(r["booted"]["stamp"]["image"], "lab", "{c}");
        assert_eq!(r["booted"]["stamp"]["generation"], 1, "{c}");
        assert_eq!(r["booted"]["lower_source"], export.as_str(), "{c}");
        let o = &r["overlay"];
        assert_eq!(o["root_is_overlay"], true, "{c}");
        assert_eq!(
            o["lowerdirs"],
            serde_json::json!(["/run/dfleet/lower"]),
            "{c}"
        );
        assert_eq!(o["upper_mount_point"], "/run/dfleet/rw", "{c}");
        // The guest's own statfs of its upper layer, printed at multi-user.
        let guest: u64 = marker(&lab_status(&dir, name)?, "UPPER-SIZE")?.parse()?;
        assert_eq!(
            o["size_bytes"].as_u64(),
            Some(guest),
            "{name}: reported size is not the guest's: {c}"
        );
        upper_size.push(guest);
    }

    step("3. commands through the agents");
    // ---- 3. commands through the agents; a file written on lab01 grows its
    // upper layer, not the export
    let findmnt = admin(
        &dir,
        &[
            "exec",
            "lab[01-02]",
            "-b",
            "--",
            "findmnt",
            "-n",
            "-o",
            "FSTYPE,TARGET",
            "/",
        ],
    )?;
    let rule = "-".repeat(15);
    assert!(
        findmnt.contains(&format!("{rule}\nlab[01-02] (exit 0)\n{rule}\noverlay /\n")),
        "{findmnt}"
    );
    let before = coordinator_node(&dir, "lab01")?["report"]["overlay"]["used_bytes"]
        .as_u64()
        .context("no used_bytes")?;
    let answer = lab_ok(&dir, &["fill", "lab01", &FILL.to_string()])?;
    assert!(
        answer.contains(&format!("filled /var/tmp/dfleet-lab-fill {FILL}")),
        "{answer}"
    );
    // `lab fill` returns once lab01's agent reported the growth.
    eprintln!("{answer}");
    let after = coordinator_node(&dir, "lab01")?["report"]["overlay"]["used_bytes"]
        .as_u64()
        .context("no used_bytes")?;
    assert!(
        after >= before + FILL,
        "lab01's upper grew from {before} to {after} bytes only"
    );
    eprintln!("lab01 upper: {before} bytes before, {after} after writing {FILL}");
    assert!(
        !dir.join("images/lab/1/var/tmp/dfleet-lab-fill").exists(),
        "the file reached the exported tree"
    );
    let verify = std::process::Command::new(bin("dfleet"))
        .args(["image", "--config"])
        .arg(dir.join("cluster.toml"))
        .args(["verify", "lab:1"])
        .output()?;
    assert!(
        verify.status.success(),
        "the exported tree changed:\n{}",
        text(&verify)
    );

    step("3b. SSH host keys");
    // ---- 3b. SSH host keys: lab01 has a host certificate, lab02 its
    // managed key; what sshd serves is what the agent reports, the keys
    // differ, and the fleet's known_hosts verifies both
    let known_hosts = dir.join("known_hosts");
    admin(
        &dir,
        &[
            "ssh",
            "known-hosts",
            "--out",
            known_hosts.to_str().context("path")?,
        ],
    )?;
    let mut served = Vec::new();
    for (name, ip) in [("lab01", "10.77.0.11"), ("lab02", "10.77.0.12")] {
        let key = served_key(&dir, ip)?;
        assert_eq!(key, reported_key(&dir, name)?, "{name} serves another key");
        host_key_verifies(&dir, ip, &known_hosts)?;
        served.push(key);
    }
    assert_ne!(served[0], served[1], "both nodes serve the same key");
    let origins: Vec<String> = NODES
        .iter()
        .map(|n| {
            let c = coordinator_node(&dir, n)?;
            let keys = c["report"]["host_keys"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            Ok(keys
                .iter()
                .find(|k| k["path"] == "/etc/ssh/ssh_host_ed25519_key")
                .map(|k| k["origin"].as_str().unwrap_or_default().to_string())
                .unwrap_or_default())
        })
        .collect::<Result<_>>()?;
    assert_eq!(origins, ["certificate", "coordinator"]);
    let managed_key = served[1].clone();

    step("4. no NFS server");
    // ---- 4. no NFS server: lab02 stalls and says where, lab01 is served
    lab_ok(&dir, &["nfs", "stop"])?;
    lab_ok(&dir, &["power", "cycle", "lab02"])?;
    lab_ok(
        &dir,
        &["wait", "lab02", "--until", "stalled", "--timeout", "420"],
    )?;
    let stalled = lab_status(&dir, "lab02")?;
    eprintln!("lab02 while the NFS server is down: {stalled}");
    assert_eq!(stalled["phase"], "initramfs-network", "{stalled}");
    let error = stalled["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("dfleet: mounting the NFS root") && error.contains(&export),
        "{stalled}"
    );
    let table = text(&lab(&dir, &["status"])?);
    assert!(
        table.contains("STALLED after DHCP lease (initramfs)"),
        "{table}"
    );
    // The coordinator keeps answering, with lab01's last report. (lab01
    // runs from the same NFS server: its agent stalls on it too, and may
    // lose its stream until the server is back.)
    let one = coordinator_node(&dir, "lab01")?;
    assert_eq!(one["report"]["booted"]["stamp"]["generation"], 1, "{one}");
    // Back: lab02's initramfs retries the mount and boots.
    lab_ok(&dir, &["nfs", "start"])?;
    // (It may give up on that boot first: rd.retry, then panic=10 reboots
    // it, and the next boot finds the server.)
    // lab01's agent carries on where it stalled.
    lab_ok(
        &dir,
        &[
            "wait",
            "lab01",
            "lab02",
            "--until",
            "ready",
            "--timeout",
            "420",
        ],
    )?;
    let two = lab_status(&dir, "lab02")?;
    assert_eq!(marker(&two, "MOUNTED-BY")?, "dfleet", "{two}");
    let one = coordinator_node(&dir, "lab01")?;
    assert_eq!(one["ready"], true, "{one}");

    step("5. a rollout onto lab:2");
    // ---- 5. a rollout onto lab:2
    image(&dir, &["edit", "lab"])?;
    image(
        &dir,
        &[
            "exec",
            "lab",
            "--",
            "sh",
            "-c",
            "echo 'lab release 2' > /etc/dfleet-lab-release",
        ],
    )?;
    eprintln!("{}", image(&dir, &["publish", "lab"])?);
    let started = admin(
        &dir,
        &[
            "rollout",
            "start",
            "lab:2",
            "--batch",
            "2",
            "--order",
            "name",
            "--ready-timeout",
            "15m",
        ],
    )?;
    eprintln!("{started}");
    // Exits 0 only once both nodes are done: back on lab:2 and ready.
    let waited = admin(&dir, &["rollout", "wait", "--timeout", "20m"])?;
    eprintln!("{waited}");
    assert!(waited.contains("2 done"), "{waited}");
    let export2 = format!("10.77.0.1:{}/images/lab/2", dir.display());
    for name in NODES {
        let c = coordinator_node(&dir, name)?;
        assert_eq!(c["ready"], true, "{c}");
        assert_eq!(c["report"]["booted"]["stamp"]["generation"], 2, "{c}");
        assert_eq!(
            c["report"]["booted"]["lower_source"],
            export2.as_str(),
            "{c}"
        );
        let n = lab_status(&dir, name)?;
        assert_eq!(n["phase"], "ready", "{n}");
        let lower: Vec<&str> = marker(&n, "LOWER")?.split_whitespace().collect();
        assert_eq!(lower[0], export2, "{name} did not boot lab:2's export: {n}");
        let menu_arg = marker(&n, "CMDLINE")?
            .split_whitespace()
            .any(|a| a == "dfleet.generation=lab:2");
        assert!(menu_arg, "{name} did not boot lab:2's menu: {n}");
    }
    let events = admin(&dir, &["events", "--last", "200"])?;
    for name in NODES {
        assert!(
            events.contains(&format!("{name}: reboot of boot")),
            "{name} was not ordered to reboot by the rollout:\n{events}"
        );
    }

    // Managed keys survive reboots (lab02 booted twice since), and lab01's
    // new boot key has its certificate.
    assert_eq!(
        served_key(&dir, "10.77.0.12")?,
        managed_key,
        "lab02's managed key changed"
    );
    for (name, ip) in [("lab01", "10.77.0.11"), ("lab02", "10.77.0.12")] {
        assert_eq!(served_key(&dir, ip)?, reported_key(&dir, name)?, "{name}");
        host_key_verifies(&dir, ip, &known_hosts)?;
    }

    step("6. the coordinator stopped");
    // ---- 6. the coordinator stopped: a booting node's sshd still comes
    // up (with a key of that boot), and has its certificate once the
    // coordinator is back
    lab_ok(&dir, &["coordinator", "stop"])?;
    lab_ok(&dir, &["power", "cycle", "lab01"])?;
    lab_ok(
        &dir,
        &["wait", "lab01", "--until", "multi-user", "--timeout", "420"],
    )?;
    let own = served_key(&dir, "10.77.0.11")?;
    lab_ok(&dir, &["coordinator", "start"])?;
    lab_ok(
        &dir,
        &["wait", "lab01", "--until", "ready", "--timeout", "420"],
    )?;
    assert_eq!(reported_key(&dir, "lab01")?, own);
    host_key_verifies(&dir, "10.77.0.11", &known_hosts)?;

    step("7. down");
    // ---- 7. down leaves nothing behind
    let pids = std::fs::read_to_string(dir.join("pids"))?;
    let netns = std::fs::read_to_string(dir.join("netns"))?
        .trim()
        .to_string();
    let down = lab_ok(&dir, &["down"])?;
    eprintln!("{down}");
    for line in pids.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let pid: i32 = f[1].parse()?;
        assert!(
            !pid_alive(pid, f[2]),
            "{} (PID {pid}) survived lab down",
            f[0]
        );
    }
    assert!(
        !Path::new("/run/netns").join(&netns).exists(),
        "namespace {netns} left"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    let d = dir.display().to_string();
    assert!(
        !mounts.lines().any(|l| l.contains(&d) || l.contains(&netns)),
        "a mount of the lab is left:\n{mounts}"
    );
    for e in std::fs::read_dir("/proc")? {
        let p = e?.path();
        if let Ok(cmd) = std::fs::read(p.join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            assert!(
                !cmd.contains(&d),
                "a lab process is left: {} {cmd}",
                p.display()
            );
        }
    }
    drop(session);
    step("done");
    Ok(())
}
