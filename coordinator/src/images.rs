//! `dfleet image …`: the commands that change image generations. They run
//! on the management host as root, next to the image store, under the
//! image's lock; the daemon reads the store when it renders boot files.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use dfleet_proto::domain::{Generation, GenerationRef};
use dfleet_provisioner::image::manifest::Manifest;
use dfleet_provisioner::image::store::{GenState, ImageStore, Record};
use dfleet_provisioner::image::{chroot, tree};
use dfleet_provisioner::inventory::Inventory;

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
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
}

/// The image store the inventory names.
fn store(config: &Path) -> Result<ImageStore> {
    let text =
        std::fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    let inv = Inventory::parse(&text, config).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(ImageStore::new(&inv.paths.images_root))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn run(config: &Path, command: &ImageCommand) -> Result<std::process::ExitCode> {
    let store = store(config)?;
    match command {
        ImageCommand::List { json } => list(&store, *json)?,
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

fn list(store: &ImageStore, json: bool) -> Result<()> {
    let all = store.all()?;
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
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<20} {:<10} {:>10} {:<14} ORIGIN",
        "GENERATION", "STATE", "SIZE", "DIGEST"
    );
    for r in &all {
        println!(
            "{:<20} {:<10} {:>10} {:<14} {}",
            r.generation_ref().to_string(),
            r.state.to_string(),
            r.size_bytes
                .map(crate::cli::human_bytes)
                .unwrap_or_else(|| "-".into()),
            r.digest
                .as_deref()
                .map(|d| format!("{}…", &d[..d.len().min(12)]))
                .unwrap_or_else(|| "-".into()),
            r.origin
        );
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
        image: name.to_string(),
        generation: next.generation.0,
        state: GenState::Open,
        parent: Some(base.generation),
        origin: format!("copy of {} ({:?})", base.generation, report.method()),
        created_ms: now_ms(),
        published_ms: None,
        digest: None,
        size_bytes: Some(report.bytes),
        boot: None,
        notes: Vec::new(),
    })?;
    println!("{next} is open: {report}");
    Ok(())
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
