//! `dfleet image …`: the commands that change image generations. They run
//! on the management host as root, next to the image store, under the
//! image's lock; the daemon reads the store when it renders boot files.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use dfleet_proto::domain::{Generation, GenerationRef};
use dfleet_provisioner::image::distro::{self, Distro};
use dfleet_provisioner::image::manifest::Manifest;
use dfleet_provisioner::image::store::{GenState, ImageStore, Record};
use dfleet_provisioner::image::{chroot, dracut, hygiene, tree};
use dfleet_provisioner::inventory::Inventory;

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Install a new image NAME with the distribution's own tool
    /// (debootstrap, zypper --root, dnf --installroot): its generation 1,
    /// open. Only debian12 is tested by dfleet.
    Create {
        name: String,
        #[arg(long)]
        distro: Distro,
        /// Extra packages, comma-separated or repeated.
        #[arg(long, value_delimiter = ',')]
        packages: Vec<String>,
        /// The distribution mirror (Debian: http://deb.debian.org/debian).
        #[arg(long)]
        mirror: Option<String>,
    },
    /// Generations with their state, size and hash.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Open generation G+1 of NAME as an exact copy of its latest published
    /// generation; only an open generation can be changed.
    Edit { name: String },
    /// Run a command inside NAME's open generation, in private mount and
    /// PID namespaces (nothing it starts or mounts outlives it).
    Exec {
        name: String,
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<OsString>,
    },
    /// An interactive shell inside NAME's open generation.
    Shell { name: String },
    /// Re-check a published generation against its manifest (NAME: its latest).
    Verify { generation: String },
    /// Withdraw a published generation no node runs or is assigned: it is
    /// unexported and can no longer be assigned (through the daemon).
    Retire { generation: String },
    /// Delete generations no node (connected, stale or lost) runs or is
    /// assigned, keeping the newest K published of each image (through the
    /// daemon, which unexports them first).
    Gc {
        #[arg(long, default_value_t = crate::image_gc::DEFAULT_KEEP)]
        keep: u32,
        /// Say what would go, delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Enable a systemd unit in NAME's open generation, offline.
    Enable { name: String, unit: String },
    /// Put dfleet-agent, its unit, the cluster CA and the coordinator's
    /// address into NAME's open generation, and enable the agent.
    InstallAgent {
        name: String,
        /// The agent binary (default: dfleet-agent next to this dfleet).
        #[arg(long)]
        agent: Option<PathBuf>,
        /// The cluster CA certificate (default: ca.crt in the state directory).
        #[arg(long, default_value = "/var/lib/dfleet/ca.crt")]
        ca: PathBuf,
        /// HOST:PORT nodes dial (default: [boot] coordinator, else the first
        /// listen address).
        #[arg(long)]
        coordinator: Option<String>,
    },
    /// Freeze NAME's open generation: hygiene, initramfs with dfleet's dracut
    /// module, generation stamp, manifest, immutable tree, kernel and
    /// initramfs for the TFTP root; then the daemon re-renders boot files.
    Publish {
        name: String,
        /// Publish although SSH host private keys are in the tree (every
        /// node can then read them, and all nodes are one host to SSH).
        #[arg(long)]
        allow_shared_host_keys: bool,
    },
}

/// The inventory the image commands read the store's place from.
fn inventory(config: &Path) -> Result<Inventory> {
    let text =
        std::fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    Inventory::parse(&text, config).map_err(|e| anyhow::anyhow!("{e}"))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn run(
    cli: &crate::cli::Cli,
    config: &Path,
    command: &ImageCommand,
) -> Result<std::process::ExitCode> {
    if let ImageCommand::Retire { generation } = command {
        let g: GenerationRef = generation.parse()?;
        let target = cli.target()?;
        let detail = current_thread()?.block_on(async {
            let mut c = crate::client::connect(&target).await?;
            let r = c
                .image_retire(dfleet_proto::pb::ImageRetireRequest {
                    generation: Some(g.into()),
                })
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
            Ok::<_, anyhow::Error>(r.into_inner().detail)
        })?;
        println!("{detail}");
        return Ok(std::process::ExitCode::SUCCESS);
    }
    if let ImageCommand::Gc { keep, dry_run } = command {
        let target = cli.target()?;
        current_thread()?.block_on(crate::image_gc::gc_command(&target, *keep, *dry_run))?;
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let socket = cli.socket.as_path();
    let inv = inventory(config)?;
    let store = ImageStore::new(&inv.paths.images_root);
    match command {
        ImageCommand::Create {
            name,
            distro,
            packages,
            mirror,
        } => create(&store, name, *distro, packages, mirror.as_deref())?,
        ImageCommand::Enable { name, unit } => enable(&store, name, unit)?,
        ImageCommand::InstallAgent {
            name,
            agent,
            ca,
            coordinator,
        } => install_agent(
            &store,
            &inv,
            name,
            agent.as_deref(),
            ca,
            coordinator.as_deref(),
        )?,
        ImageCommand::Publish {
            name,
            allow_shared_host_keys,
        } => publish(&store, socket, name, *allow_shared_host_keys)?,
        ImageCommand::List { json } => list(cli, &store, *json)?,
        ImageCommand::Gc { .. } | ImageCommand::Retire { .. } => {
            unreachable!("handled above")
        }
        ImageCommand::Edit { name } => edit(&store, name)?,
        ImageCommand::Exec { name, command } => return exec(&store, name, command),
        ImageCommand::Shell { name } => {
            let shell: Vec<OsString> = vec!["/bin/sh".into(), "-c".into(), SHELL.into()];
            return exec(&store, name, &shell);
        }
        ImageCommand::Verify { generation } => return verify(&store, generation),
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// bash as a login shell where the image has it, else sh.
const SHELL: &str = "if [ -x /bin/bash ]; then exec /bin/bash -l; else exec /bin/sh -l; fi";

/// A runtime on this thread for the few image commands that talk to the
/// daemon.
fn current_thread() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
}

/// Node names as a folded node set, `-` for none.
fn folded(names: &[String]) -> String {
    if names.is_empty() {
        "-".into()
    } else {
        dfleet_provisioner::nodeset::fold(names)
    }
}

fn list(cli: &crate::cli::Cli, store: &ImageStore, json: bool) -> Result<()> {
    let all = store.all()?;
    // Which nodes run and are assigned each generation: the daemon knows;
    // without it the store alone is listed.
    let usage = cli
        .target()
        .and_then(|t| current_thread()?.block_on(crate::image_gc::usage(&t)));
    let (usage, note) = match usage {
        Ok(u) => (u, None),
        Err(e) => (Default::default(), Some(format!("(nodes unknown: {e:#})"))),
    };
    let nodes = |r: &Record| {
        usage
            .get(&r.generation_ref().to_string())
            .cloned()
            .unwrap_or_default()
    };
    if json {
        let rows: Vec<serde_json::Value> = all
            .iter()
            .map(|r| {
                serde_json::json!({
                    "generation": r.generation_ref().to_string(),
                    "state": r.state.to_string(),
                    "parent": r.parent,
                    "origin": r.origin,
                    "created_ms": r.created_ms,
                    "published_ms": r.published_ms,
                    "size_bytes": r.size_bytes,
                    "digest": r.digest,
                    "kernel": r.boot.as_ref().map(|b| b.kernel_version.clone()),
                    "notes": r.notes,
                    "running": nodes(r).0,
                    "assigned": nodes(r).1,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<20} {:<10} {:>10} {:<14} {:<16} {:<16} ORIGIN",
        "GENERATION", "STATE", "SIZE", "DIGEST", "RUNNING", "ASSIGNED"
    );
    for r in &all {
        let (running, assigned) = nodes(r);
        println!(
            "{:<20} {:<10} {:>10} {:<14} {:<16} {:<16} {}",
            r.generation_ref().to_string(),
            r.state.to_string(),
            r.size_bytes
                .map(crate::cli::human_bytes)
                .unwrap_or_else(|| "-".into()),
            r.digest
                .as_deref()
                .map(|d| format!("{}…", &d[..d.len().min(12)]))
                .unwrap_or_else(|| "-".into()),
            folded(&running),
            folded(&assigned),
            r.origin
        );
    }
    if let Some(note) = note {
        println!("{note}");
    }
    if all.is_empty() {
        println!("(no generations in {})", store.root().display());
    }
    Ok(())
}

fn edit(store: &ImageStore, name: &str) -> Result<()> {
    let _lock = store.lock(name)?;
    let gens = store.generations(name)?;
    if let Some(open) = gens.iter().find(|r| r.state == GenState::Open) {
        bail!(
            "{} is already open: change it with `dfleet image exec {name}` and publish it",
            open.generation_ref()
        );
    }
    let Some(base) = gens.iter().rev().find(|r| r.state == GenState::Published) else {
        bail!("image {name} has no published generation to start from");
    };
    let next = GenerationRef {
        image: name.to_string(),
        generation: Generation(gens.last().map_or(1, |r| r.generation + 1)),
    };
    let partial = store.partial_tree(&next);
    if partial.exists() {
        // Left by a copy that was killed: never a generation.
        tree::remove_tree(&partial)?;
    }
    let report = tree::copy_tree(&store.tree(&base.generation_ref()), &partial)?;
    std::fs::rename(&partial, store.tree(&next))
        .with_context(|| format!("renaming {} into place", partial.display()))?;
    store.write_record(&Record {
        parent: Some(base.generation),
        size_bytes: Some(report.bytes),
        ..Record::new(
            &next,
            GenState::Open,
            format!("copy of {} ({})", base.generation, copy_method(&report)),
            now_ms(),
        )
    })?;
    println!("{next} is open: {report}");
    Ok(())
}

/// How a copy was made, as the record says it.
fn copy_method(report: &tree::CopyReport) -> &'static str {
    match report.method() {
        tree::CopyMethod::Reflink => "reflink",
        tree::CopyMethod::FullCopy => "full copy",
        tree::CopyMethod::Mixed => "partly reflinked",
    }
}

/// The open generation of `name`, or why there is none.
fn open_generation(store: &ImageStore, name: &str) -> Result<Record> {
    let gens = store.generations(name)?;
    match gens.iter().rev().find(|r| r.state == GenState::Open) {
        Some(r) => Ok(r.clone()),
        None if gens.is_empty() => bail!("no image {name} in {}", store.root().display()),
        None => bail!(
            "image {name} has no open generation: published generations never change; \
             `dfleet image edit {name}` opens the next one"
        ),
    }
}

fn exec(store: &ImageStore, name: &str, argv: &[OsString]) -> Result<std::process::ExitCode> {
    let _lock = store.lock(name)?;
    let open = open_generation(store, name)?;
    let root = store.tree(&open.generation_ref());
    let self_exe = PathBuf::from("/proc/self/exe");
    let command = chroot::command(&self_exe, &root, argv);
    // Ctrl-C belongs to the command inside (a shell, apt): dfleet keeps
    // waiting instead of dying and tearing the sandbox down with it. The
    // runtime runs on this thread, the one the sandbox's parent-death
    // signal watches.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let status = runtime.block_on(async {
        let mut child = tokio::process::Command::from(command)
            .spawn()
            .with_context(|| format!("starting the sandbox for {}", root.display()))?;
        loop {
            tokio::select! {
                status = child.wait() => return Ok::<_, anyhow::Error>(status?),
                _ = tokio::signal::ctrl_c() => continue,
            }
        }
    })?;
    let code = match (
        status.code(),
        std::os::unix::process::ExitStatusExt::signal(&status),
    ) {
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 1,
    };
    Ok(std::process::ExitCode::from(code.clamp(0, 255) as u8))
}

fn verify(store: &ImageStore, generation: &str) -> Result<std::process::ExitCode> {
    let record = match generation.parse::<GenerationRef>() {
        Ok(g) => store.record(&g)?,
        Err(_) => store
            .latest_published(generation)?
            .with_context(|| format!("image {generation} has no published generation"))?,
    };
    let g = record.generation_ref();
    if record.state != GenState::Published {
        bail!(
            "{g} is {}: only a published generation has a manifest",
            record.state
        );
    }
    let manifest = Manifest::load(&store.manifest_path(&g))?;
    let differences = manifest.verify(&store.tree(&g))?;
    if differences.is_empty() {
        println!(
            "{g}: matches its manifest ({} entries)",
            manifest.entries().len()
        );
        return Ok(std::process::ExitCode::SUCCESS);
    }
    println!("{g}: {} differences from its manifest:", differences.len());
    for d in &differences {
        println!("  {d}");
    }
    Ok(std::process::ExitCode::FAILURE)
}

/// Runs `command` with its output appended to `log`; on failure the error
/// names the command and ends with the log's last lines.
fn run_logged(mut command: std::process::Command, what: &str, log: &Path) -> Result<()> {
    use std::io::Write as _;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    writeln!(file, "== {what}")?;
    let started = std::time::SystemTime::now();
    let status = command
        .stdin(std::process::Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file.try_clone()?)
        .status()
        .with_context(|| format!("starting {what}"))?;
    let took = started.elapsed().map(|d| d.as_secs()).unwrap_or(0);
    if status.success() {
        println!("  {what}: done in {took} s");
        return Ok(());
    }
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(15).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    bail!(
        "{what} failed ({status}); the last lines of {}:\n{}",
        log.display(),
        tail.join("\n")
    )
}

/// A command inside `root` in the image sandbox, package scripts kept from
/// starting daemons and from asking questions.
fn in_image(root: &Path, argv: &[String]) -> std::process::Command {
    chroot::Sandbox::new(root, argv.iter().map(OsString::from))
        .debian_frontend("noninteractive")
        .command(Path::new("/proc/self/exe"))
}

fn create(
    store: &ImageStore,
    name: &str,
    distro: Distro,
    packages: &[String],
    mirror: Option<&str>,
) -> Result<()> {
    let _lock = store.lock(name)?;
    if let Some(last) = store.latest(name)? {
        bail!(
            "image {name} exists (up to {}): `dfleet image edit {name}` opens its next generation",
            last.generation_ref()
        );
    }
    let g = GenerationRef {
        image: name.to_string(),
        generation: Generation(1),
    };
    let partial = store.partial_tree(&g);
    let recipe = distro::recipe(distro, &partial, packages, mirror);
    let path = std::env::var("PATH").unwrap_or_default();
    if !distro::on_path(recipe.tool, &path) {
        bail!(
            "{distro} images are installed with {}, which is not on this host: install the Debian package {}",
            recipe.tool,
            recipe.tool_package
        );
    }
    if partial.exists() {
        tree::remove_tree(&partial)?;
    }
    std::fs::create_dir_all(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let log = store
        .image_dir(name)
        .join(format!("{}.create.log", g.generation));
    let _ = std::fs::remove_file(&log);
    println!("creating {g} ({distro}) in {}", partial.display());
    let built = (|| {
        let mut bootstrap = std::process::Command::new(&recipe.bootstrap[0]);
        bootstrap.args(&recipe.bootstrap[1..]);
        run_logged(bootstrap, &recipe.bootstrap[0], &log)?;
        for (path, text) in &recipe.files {
            dfleet_provisioner::image::store::write_atomic(
                &partial.join(path),
                text.as_bytes(),
                0o644,
            )?;
        }
        for step in &recipe.in_image {
            run_logged(in_image(&partial, step), &step.join(" "), &log)?;
        }
        Ok::<_, anyhow::Error>(())
    })();
    if let Err(e) = built {
        // A half-installed tree is never a generation.
        let _ = tree::remove_tree(&partial);
        return Err(e);
    }
    let report_size = dir_size(&partial);
    std::fs::rename(&partial, store.tree(&g))
        .with_context(|| format!("renaming {} into place", partial.display()))?;
    let mut origin = format!("{distro} install");
    if !packages.is_empty() {
        origin.push_str(&format!(" with {}", packages.join(",")));
    }
    store.write_record(&Record {
        size_bytes: Some(report_size),
        ..Record::new(&g, GenState::Open, origin, now_ms())
    })?;
    println!(
        "{g} is open ({}): change it with `dfleet image exec {name} -- …`, then `dfleet image publish {name}`",
        crate::cli::human_bytes(report_size)
    );
    Ok(())
}

/// Bytes of regular files under `root` (not following symlinks).
fn dir_size(root: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => total += e.metadata().map(|m| m.len()).unwrap_or(0),
                _ => {}
            }
        }
    }
    total
}

fn enable(store: &ImageStore, name: &str, unit: &str) -> Result<()> {
    let _lock = store.lock(name)?;
    let open = open_generation(store, name)?;
    let root = store.tree(&open.generation_ref());
    enable_in(&root, unit)?;
    println!("{unit} is enabled in {}", open.generation_ref());
    Ok(())
}

/// `systemctl --root` where the host has systemctl, else the symlinks it
/// would make from the unit's `[Install]` section.
fn enable_in(root: &Path, unit: &str) -> Result<()> {
    let path = std::env::var("PATH").unwrap_or_default();
    if distro::on_path("systemctl", &path) {
        let out = std::process::Command::new("systemctl")
            .arg(format!("--root={}", root.display()))
            .args(["enable", unit])
            .output()
            .context("running systemctl --root")?;
        if out.status.success() {
            return Ok(());
        }
        bail!(
            "systemctl --root={} enable {unit}: {}",
            root.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let links = dfleet_provisioner::image::units::enable_links(root, unit)?;
    for (link, target) in links {
        if let Some(dir) = link.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&target, &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    Ok(())
}

/// The agent's unit, as shipped in deploy/systemd.
const AGENT_UNIT: &str = include_str!("../../deploy/systemd/dfleet-agent.service");

fn install_agent(
    store: &ImageStore,
    inv: &Inventory,
    name: &str,
    agent: Option<&Path>,
    ca: &Path,
    coordinator: Option<&str>,
) -> Result<()> {
    let _lock = store.lock(name)?;
    let open = open_generation(store, name)?;
    let root = store.tree(&open.generation_ref());
    let agent = match agent {
        Some(a) => a.to_path_buf(),
        None => std::env::current_exe()
            .context("finding this dfleet")?
            .with_file_name("dfleet-agent"),
    };
    let coordinator = match coordinator {
        Some(c) => c.to_string(),
        None => inv
            .boot
            .as_ref()
            .and_then(|b| b.coordinator.clone())
            .or_else(|| inv.cluster.listen.first().map(ToString::to_string))
            .context(
                "no coordinator address: pass --coordinator HOST:PORT or set [boot] coordinator",
            )?,
    };
    let copy = |from: &Path, to: &str, mode: u32| -> Result<()> {
        let bytes = std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
        dfleet_provisioner::image::store::write_atomic(&root.join(to), &bytes, mode)?;
        Ok(())
    };
    copy(&agent, "usr/local/bin/dfleet-agent", 0o755)?;
    copy(ca, "etc/dfleet/ca.pem", 0o644)?;
    dfleet_provisioner::image::store::write_atomic(
        &root.join("etc/systemd/system/dfleet-agent.service"),
        AGENT_UNIT.as_bytes(),
        0o644,
    )?;
    let config = format!(
        "# Written by dfleet image install-agent. Nothing here is secret: every node reads it.\n\
         coordinator = \"{coordinator}\"\nca_cert = \"/etc/dfleet/ca.pem\"\n\
         server_name = \"dfleet-coordinator\"\nstate_dir = \"/run/dfleet-agent\"\n"
    );
    dfleet_provisioner::image::store::write_atomic(
        &root.join("etc/dfleet/agent.toml"),
        config.as_bytes(),
        0o644,
    )?;
    enable_in(&root, "dfleet-agent.service")?;
    println!(
        "dfleet-agent ({}) is installed and enabled in {}; nodes dial {coordinator}",
        agent.display(),
        open.generation_ref()
    );
    Ok(())
}

fn publish(
    store: &ImageStore,
    socket: &Path,
    name: &str,
    allow_shared_host_keys: bool,
) -> Result<()> {
    let _lock = store.lock(name)?;
    let mut record = open_generation(store, name)?;
    let g = record.generation_ref();
    let root = store.tree(&g);
    // A publish that was killed after freezing may have left flags behind.
    tree::set_immutable(&root, false)?;
    chroot::remove_leftover_policy(&root)?;
    println!("publishing {g}");

    // Hygiene first: nothing below runs while it fails.
    let keys = hygiene::host_private_keys(&root)?;
    let mut notes = Vec::new();
    if !keys.is_empty() {
        let list: Vec<String> = keys.iter().map(|k| k.display().to_string()).collect();
        if !allow_shared_host_keys {
            bail!(
                "{g} holds SSH host private keys ({}): every node could read them and all nodes would be one host to SSH. \
                 Remove them (`dfleet image exec {name} -- sh -c 'rm -f /etc/ssh/ssh_host_*'`; dfleet gives each node its own), \
                 or publish with --allow-shared-host-keys",
                list.join(", ")
            );
        }
        notes.push(format!(
            "shared SSH host keys kept (--allow-shared-host-keys): {}",
            list.join(", ")
        ));
    }
    hygiene::reset_machine_id(&root)?;
    hygiene::journal_in_ram(&root)?;
    for w in hygiene::filling_timers(&root) {
        println!("  warning: {w}");
        notes.push(w);
    }
    hygiene::write_stamp(&root, &g)?;

    // The initramfs, built inside the image with its own kernel and dracut.
    dracut::install_module(&root)?;
    let kver = dracut::kernel_version(&root)?;
    let inside = "/tmp/dfleet-initrd.img";
    let log = store
        .image_dir(name)
        .join(format!("{}.publish.log", g.generation));
    let _ = std::fs::remove_file(&log);
    let built = root.join(inside.trim_start_matches('/'));
    let result = run_logged(
        in_image(&root, &dracut::dracut_argv(&kver, inside)),
        &format!("dracut for {kver}"),
        &log,
    );
    if let Err(e) = result {
        let _ = std::fs::remove_file(&built);
        // The open generation stays usable: fix it and publish again.
        return Err(e.context(format!("{g} stays open")));
    }
    let scratch = tempfile::tempdir_in(store.image_dir(name)).context("a scratch directory")?;
    let initrd = scratch.path().join("initrd.img");
    std::fs::rename(&built, &initrd).context("moving the initramfs out of the tree")?;
    let kernel = root.join(format!("boot/vmlinuz-{kver}"));
    let boot = store.install_boot_files(&g, &kver, &kernel, &initrd)?;

    // The manifest describes the tree as it is frozen.
    let manifest = Manifest::build(&root)?;
    manifest.write(&store.manifest_path(&g))?;
    let frozen = tree::set_immutable(&root, true)?;
    if !frozen.supported {
        notes.push(
            "the filesystem has no immutable attribute: the read-only export and the manifest protect the tree"
                .into(),
        );
    }
    record.state = GenState::Published;
    record.published_ms = Some(now_ms());
    record.digest = Some(manifest.digest());
    record.size_bytes = Some(manifest.total_bytes());
    record.boot = Some(boot);
    record.notes.extend(notes);
    store.write_record(&record)?;
    println!(
        "{g} is published: kernel {kver}, {} in {} entries, digest {}…",
        crate::cli::human_bytes(manifest.total_bytes()),
        manifest.entries().len(),
        &manifest.digest()[..12]
    );
    notify_daemon(socket);
    Ok(())
}

/// Asks the daemon to re-render the boot files: the new generation's kernel
/// goes to the TFTP root and its tree is exported. Publishing never changes
/// which generation a node is assigned.
fn notify_daemon(socket: &Path) {
    let applied = (|| -> Result<String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let mut c =
                crate::client::connect(&crate::client::Target::Socket(socket.to_path_buf()))
                    .await?;
            let d = c
                .pxe_apply(dfleet_proto::pb::PxeRequest {})
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))?
                .into_inner();
            let mut out = format!(
                "boot files: {} created, {} changed, {} removed",
                d.created.len(),
                d.changed.len(),
                d.removed.len()
            );
            if !d.nfs_instructions.is_empty() {
                out.push_str(&format!("\n\n{}", d.nfs_instructions));
            }
            Ok(out)
        })
    })();
    match applied {
        Ok(text) => println!("{text}"),
        Err(e) => println!(
            "boot files not written now ({e:#}): they follow at the coordinator's next `dfleet pxe apply`"
        ),
    }
}
