//! Boot-file benchmark for a 10,000-node cluster: inventory parse, render for
//! each DHCP flavour, and the writer's diff and apply on a real directory.
//!
//! Run with `cargo bench -p dfleet-provisioner --bench boot`. Each operation
//! runs 5 times; the table gives the minimum and the median. Targets: render
//! under 1 s, and an apply with nothing changed under 1 s (the common case of
//! `dfleet pxe apply` after an assignment that touches nothing).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::time::Duration;

use dfleet_proto::domain::GenerationRef;
use dfleet_provisioner::boot::write::{self, Changes, Hooks, Manifest};
use dfleet_provisioner::boot::{BootImage, BootPlan, DhcpFlavour, GeneratedFile, plan, render};
use dfleet_provisioner::image::store::{GenState, ImageStore, Record};
use dfleet_provisioner::inventory::Inventory;

const COMMAND: &str = "cargo bench -p dfleet-provisioner --bench boot";
const NODES: u32 = 10_000;
const RUNS: usize = 5;
const COORDINATOR: &str = "10.1.0.1:7443";
const TARGET: Duration = Duration::from_secs(1);

/// Runs `f` once and returns how long it took with its result.
///
/// Benchmarks measure wall-clock time on purpose, so this one helper uses the
/// monotonic `std::time::Instant` that the workspace bans elsewhere (there it
/// would keep tests from running with paused tokio time).
#[allow(clippy::disallowed_types)]
fn timed<T>(f: impl FnOnce() -> T) -> (Duration, T) {
    let start = std::time::Instant::now();
    let out = f();
    (start.elapsed(), out)
}

/// One table row: what was measured, how many files it covered, its timings.
struct Row {
    operation: String,
    files: String,
    times: Vec<Duration>,
    target: Option<Duration>,
}

impl Row {
    fn min(&self) -> Duration {
        self.times.iter().copied().min().unwrap_or_default()
    }

    fn median(&self) -> Duration {
        let mut t = self.times.clone();
        t.sort();
        t.get(t.len() / 2).copied().unwrap_or_default()
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// The inventory text: boot network, NFS, paths into `root`, and one node
/// range whose MACs come from `macs.txt` next to it.
fn cluster_toml(root: &Path) -> String {
    let last = format!("{NODES:05}");
    format!(
        r#"[cluster]
name = "bench"
state_dir = "{state}"
listen = ["0.0.0.0:7443"]

[boot]
interface = "eth1"
subnet = "10.1.0.0/16"
router = "10.1.255.254"
dns = ["10.1.0.1"]
domain = "cluster.example"
ntp = ["10.1.0.1"]
next_server = "10.1.0.1"
dhcp = "dnsmasq"
loader = "pxelinux"
kernel_args = ["quiet"]
console = "ttyS0,115200"
overlay_size = "50%"

[nfs]
server = "10.1.0.2"
export_root = "{images}"
managed = true
management_host = "10.1.0.1"

[paths]
tftp_root = "{tftp}"
dhcp_root = "{dhcp}"
exports_root = "{exports}"

[[nodes]]
name = "cn[00001-{last}]"
ip = "10.1.0.1"
mac_file = "macs.txt"
image = "compute"
groups = ["compute"]
"#,
        state = root.join("state").display(),
        tftp = root.join("tftp").display(),
        dhcp = root.join("dhcp").display(),
        exports = root.join("exports").display(),
        images = root.join("images").display(),
    )
}

/// `name mac` for every node, one a line.
fn mac_file() -> String {
    let mut out = String::from("# name  mac\n");
    for i in 1..=NODES {
        let [_, a, b, c] = i.to_be_bytes();
        writeln!(out, "cn{i:05} 52:54:00:{a:02x}:{b:02x}:{c:02x}").unwrap();
    }
    out
}

fn generation(s: &str) -> GenerationRef {
    s.parse().unwrap()
}

/// Publishes generation `g` in the inventory's image store as `image
/// publish` leaves it: a record with the hashes of its kernel and initramfs.
fn publish(inv: &Inventory, g: &GenerationRef) {
    let store = ImageStore::new(&inv.paths.images_root);
    let scratch = inv.paths.images_root.join("scratch");
    fs::create_dir_all(&scratch).unwrap();
    let (k, i) = (scratch.join("vmlinuz"), scratch.join("initrd.img"));
    fs::write(&k, format!("kernel of {g}").repeat(100_000)).unwrap();
    fs::write(&i, format!("initramfs of {g}").repeat(300_000)).unwrap();
    let boot = store.install_boot_files(g, "6.1.0-bench", &k, &i).unwrap();
    store
        .write_record(&Record {
            published_ms: Some(0),
            boot: Some(boot),
            ..Record::new(g, GenState::Published, "benchmark", 0)
        })
        .unwrap();
}

/// The published generations of the inventory's image store.
fn images(inv: &Inventory) -> Vec<BootImage> {
    let nfs = inv.nfs.as_ref().unwrap();
    plan::published_images(&ImageStore::new(&inv.paths.images_root), &nfs.export_root).unwrap()
}

/// Every node of `inv` assigned to `g`.
fn assign_all(inv: &Inventory, g: &GenerationRef) -> HashMap<String, GenerationRef> {
    inv.nodes
        .iter()
        .map(|n| (n.name.to_string(), g.clone()))
        .collect()
}

fn no_hooks_apply(files: &[GeneratedFile], plan: &BootPlan, manifest: &Path) -> Changes {
    write::apply(
        files,
        &plan.paths,
        manifest,
        Hooks {
            validate: &mut |_| Ok(()),
            before_step: &mut |_| Ok(()),
        },
    )
    .unwrap_or_else(|e| panic!("applying the boot files: {e}"))
}

/// Removes what an apply wrote, so the next first apply starts from nothing.
fn clear(plan: &BootPlan, manifest: &Path) {
    for dir in [
        &plan.paths.tftp_root,
        &plan.paths.dhcp_root,
        &plan.paths.exports_root,
    ] {
        if dir.exists() {
            fs::remove_dir_all(dir).unwrap();
        }
    }
    if manifest.exists() {
        fs::remove_file(manifest).unwrap();
    }
}

fn touched(c: &Changes) -> usize {
    c.created.len() + c.changed.len() + c.removed.len()
}

fn main() {
    println!("command: {COMMAND}");
    let argv: Vec<String> = std::env::args().collect();
    println!("binary:  {}", argv.join(" "));
    println!();

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let toml_path = root.join("cluster.toml");
    let text = cluster_toml(root);
    fs::write(&toml_path, &text).unwrap();
    fs::write(root.join("macs.txt"), mac_file()).unwrap();
    let manifest = root.join("state").join("boot.manifest");
    fs::create_dir_all(manifest.parent().unwrap()).unwrap();

    let mut rows = Vec::new();

    // Inventory parse, including reading the MAC file.
    let mut times = Vec::new();
    let mut inv = None;
    for _ in 0..RUNS {
        let (t, parsed) = timed(|| Inventory::parse(&text, &toml_path));
        times.push(t);
        inv = Some(parsed.unwrap_or_else(|e| panic!("parsing the inventory: {e}")));
    }
    let inv = inv.unwrap();
    assert_eq!(inv.nodes.len(), NODES as usize);
    rows.push(Row {
        operation: format!("inventory parse ({NODES} nodes, with mac_file)"),
        files: "2".into(),
        times,
        target: None,
    });

    // Plan: every node on compute:3; generations 3 to 3 + RUNS are published.
    for n in 3..=3 + RUNS as u64 {
        publish(&inv, &generation(&format!("compute:{n}")));
    }
    let published = images(&inv);
    let assignments = assign_all(&inv, &generation("compute:3"));
    let mut times = Vec::new();
    let mut base = None;
    for _ in 0..RUNS {
        let (t, p) = timed(|| plan::plan(&inv, &assignments, &published, COORDINATOR));
        times.push(t);
        base = Some(p.unwrap_or_else(|e| panic!("planning: {e}")));
    }
    let base = base.unwrap();
    rows.push(Row {
        operation: "plan (all nodes on compute:3)".into(),
        files: "-".into(),
        times,
        target: None,
    });

    // Render, once per DHCP flavour.
    for (name, flavour) in [
        ("dnsmasq", DhcpFlavour::Dnsmasq),
        ("isc", DhcpFlavour::Isc),
        ("kea", DhcpFlavour::Kea),
    ] {
        let mut p = base.clone();
        p.network.dhcp = flavour;
        let mut times = Vec::new();
        let mut count = 0;
        for _ in 0..RUNS {
            let (t, files) = timed(|| render::render(&p));
            times.push(t);
            count = files.len();
        }
        rows.push(Row {
            operation: format!("render ({name})"),
            files: count.to_string(),
            times,
            target: Some(TARGET),
        });
    }

    // The writer works on the inventory's own flavour (dnsmasq: one hosts file
    // per node, the most files of the three).
    let files = render::render(&base);

    let empty = Manifest::default();
    let mut times = Vec::new();
    let mut changes = Changes::default();
    for _ in 0..RUNS {
        let (t, c) = timed(|| write::diff(&files, &base.paths, &empty));
        times.push(t);
        changes = c.unwrap_or_else(|e| panic!("diffing: {e}"));
    }
    assert_eq!(changes.created.len(), files.len());
    rows.push(Row {
        operation: "diff against an empty tree".into(),
        files: changes.created.len().to_string(),
        times,
        target: None,
    });

    let mut times = Vec::new();
    for run in 0..RUNS {
        if run > 0 {
            clear(&base, &manifest);
        }
        let (t, c) = timed(|| no_hooks_apply(&files, &base, &manifest));
        times.push(t);
        changes = c;
    }
    assert_eq!(changes.created.len(), files.len());
    rows.push(Row {
        operation: "first apply (empty tree)".into(),
        files: changes.created.len().to_string(),
        times,
        target: None,
    });

    let mut times = Vec::new();
    for _ in 0..RUNS {
        let (t, c) = timed(|| no_hooks_apply(&files, &base, &manifest));
        times.push(t);
        assert!(
            c.is_empty(),
            "an apply with nothing changed changed something: {} created, {} changed, {} removed",
            c.created.len(),
            c.changed.len(),
            c.removed.len()
        );
        changes = c;
    }
    rows.push(Row {
        operation: "apply, nothing changed".into(),
        files: changes.unchanged.to_string(),
        times,
        target: Some(TARGET),
    });

    let owned = Manifest::load(&manifest).unwrap();
    let mut times = Vec::new();
    for _ in 0..RUNS {
        let (t, c) = timed(|| write::diff(&files, &base.paths, &owned));
        times.push(t);
        changes = c.unwrap_or_else(|e| panic!("diffing: {e}"));
        assert!(changes.is_empty());
    }
    rows.push(Row {
        operation: "diff, nothing changed".into(),
        files: changes.unchanged.to_string(),
        times,
        target: None,
    });

    // One node moves to a new generation on every run, so each apply has
    // something to change; planning and rendering stay outside the timing.
    let moved = inv.nodes[0].name.to_string();
    let mut times = Vec::new();
    let mut changed = Vec::new();
    for run in 0..RUNS {
        let mut a = assignments.clone();
        a.insert(moved.clone(), generation(&format!("compute:{}", 4 + run)));
        let p = plan::plan(&inv, &a, &published, COORDINATOR).unwrap();
        let files = render::render(&p);
        let (t, c) = timed(|| no_hooks_apply(&files, &p, &manifest));
        times.push(t);
        assert!(!c.is_empty(), "moving {moved} changed no file");
        changed.push(touched(&c));
    }
    changed.sort();
    changed.dedup();
    let changed: Vec<String> = changed.iter().map(ToString::to_string).collect();
    rows.push(Row {
        operation: format!("apply, one node ({moved}) reassigned"),
        files: changed.join("/"),
        times,
        target: None,
    });

    print_table(&rows);
}

fn print_table(rows: &[Row]) {
    println!(
        "{NODES} nodes, {RUNS} runs each; targets: render < {}s, apply with nothing changed < {}s",
        TARGET.as_secs(),
        TARGET.as_secs()
    );
    println!();
    println!("| operation | files | min | median |");
    println!("|---|---:|---:|---:|");
    for r in rows {
        let verdict = match r.target {
            Some(t) if r.median() < t => " (target met)",
            Some(_) => " (TARGET MISSED)",
            None => "",
        };
        println!(
            "| {} | {} | {} | {}{verdict} |",
            r.operation,
            r.files,
            ms(r.min()),
            ms(r.median())
        );
    }
    let missed: Vec<&str> = rows
        .iter()
        .filter(|r| r.target.is_some_and(|t| r.median() >= t))
        .map(|r| r.operation.as_str())
        .collect();
    println!();
    if missed.is_empty() {
        println!("all targets met");
    } else {
        println!("targets missed: {}", missed.join(", "));
    }
}
