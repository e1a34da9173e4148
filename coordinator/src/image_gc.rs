//! `dfleet image gc`: deletes the image generations nothing needs any more,
//! and tells `dfleet image list` which nodes run and are assigned each one.
//!
//! What goes is decided by the pure [`collectable`]. The daemon carries it
//! out in [`gc`], under the boot writer's lock (no assignment or apply can
//! interleave) and each image's lock (no CLI command can change the image),
//! in the one order that never leaves a deleted tree exported or a deleted
//! kernel served: first the records (the generations stop being published),
//! then the boot files are re-rendered without them, and only then are the
//! trees, manifests and boot directories deleted.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use anyhow::Context as _;
use dfleet_proto::domain::{BootedGeneration, Generation, GenerationRef};
use dfleet_proto::pb;
use dfleet_provisioner::image::store::{GenState, ImageLock, ImageStore, Record, StoreError};
use dfleet_provisioner::image::tree;
use tonic::Status;

use crate::boot::{self, BootWriter};
use crate::client::{self, Target};
use crate::fleet::{Command, FleetHandle, NodeGenerations};

/// How many of the newest published generations of each image `image gc`
/// keeps unless told otherwise.
pub const DEFAULT_KEEP: u32 = 2;

/// Why a generation stays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeepReason {
    /// Being changed; `image publish` will make it bootable.
    Open,
    /// These nodes' last reports say they booted it: they may still run
    /// from its tree.
    Running(Vec<String>),
    /// These nodes boot it next.
    Assigned(Vec<String>),
    /// A rollout in progress still needs it (see [`References::rollouts`]).
    Rollout,
    /// Among the newest `keep` published generations of its image.
    Newest(usize),
    /// The image's highest generation number. `image edit` numbers the next
    /// generation after it, and a number must never be used twice: nodes'
    /// stamps and the event log name generations by number.
    Latest,
}

impl fmt::Display for KeepReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nodes = |names: &[String]| {
            format!(
                "{} node{} ({})",
                names.len(),
                if names.len() == 1 { "" } else { "s" },
                dfleet_provisioner::nodeset::fold(names)
            )
        };
        match self {
            KeepReason::Open => f.write_str("open"),
            KeepReason::Running(n) => write!(f, "running on {}", nodes(n)),
            KeepReason::Assigned(n) => write!(f, "assigned to {}", nodes(n)),
            KeepReason::Rollout => f.write_str("needed by a rollout"),
            KeepReason::Newest(k) => write!(f, "newest {k} published"),
            KeepReason::Latest => {
                f.write_str("the image's newest generation (the next number follows it)")
            }
        }
    }
}

/// What [`collectable`] decided for one generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Delete,
    /// Every reason it stays, never empty.
    Keep(Vec<KeepReason>),
}

/// What refers to generations and so keeps them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct References {
    /// Generation → the nodes running it, sorted.
    pub running: HashMap<GenerationRef, Vec<String>>,
    /// Generation → the nodes assigned it, sorted.
    pub assigned: HashMap<GenerationRef, Vec<String>>,
    /// The hook for rollouts, which do not exist yet: the generations a
    /// rollout in progress still needs (its source and its target), filled
    /// by whoever owns rollouts. Empty until then.
    pub rollouts: HashSet<GenerationRef>,
}

impl References {
    /// The references of the fleet's nodes; no rollout references.
    pub fn from_nodes(nodes: &[NodeGenerations]) -> References {
        let mut refs = References::default();
        for n in nodes {
            if let Some(g) = &n.assigned {
                refs.assigned
                    .entry(g.clone())
                    .or_default()
                    .push(n.node.clone());
            }
            if let Some(g) = n.booted.as_ref().and_then(running_generation) {
                refs.running.entry(g).or_default().push(n.node.clone());
            }
        }
        for names in refs.running.values_mut().chain(refs.assigned.values_mut()) {
            names.sort();
        }
        refs
    }

    fn is_referenced(&self, g: &GenerationRef) -> bool {
        self.running.contains_key(g) || self.assigned.contains_key(g) || self.rollouts.contains(g)
    }
}

/// The generation a node runs according to its report: the stamp in its
/// lower layer or, when the stamp could not be read (the NFS server did not
/// answer the probe), the export its lower is mounted from
/// (`server:/…/<image>/<generation>`). Such a node still runs from that tree,
/// so an unreadable stamp must not make its generation look unused.
pub fn running_generation(b: &BootedGeneration) -> Option<GenerationRef> {
    if let Some(g) = &b.stamp {
        return Some(g.clone());
    }
    let path = b
        .lower_source
        .rsplit_once(':')
        .map_or(b.lower_source.as_str(), |(_, p)| p);
    let mut parts = path.trim_end_matches('/').rsplit('/');
    let generation = parts.next()?.parse::<u64>().ok()?;
    let image = parts.next()?;
    dfleet_provisioner::image::store::check_name(image).ok()?;
    Some(GenerationRef {
        image: image.to_string(),
        generation: Generation(generation),
    })
}

/// Decides, for every record, whether `image gc` deletes it. A published or
/// broken generation goes when no node runs it or is assigned it, no rollout
/// needs it, it is not among the newest `keep` published generations of its
/// image and it is not the image's highest number. An open generation always
/// stays. The answer is in image and generation order.
pub fn collectable(
    records: &[Record],
    refs: &References,
    keep: usize,
) -> Vec<(GenerationRef, Verdict)> {
    let mut by_image: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
    for r in records {
        by_image.entry(r.image.as_str()).or_default().push(r);
    }
    let mut out = Vec::new();
    for gens in by_image.values_mut() {
        gens.sort_by_key(|r| r.generation);
        let newest: HashSet<u64> = gens
            .iter()
            .rev()
            .filter(|r| r.state == GenState::Published)
            .take(keep)
            .map(|r| r.generation)
            .collect();
        let highest = gens.last().map(|r| r.generation);
        for r in gens.iter() {
            let g = r.generation_ref();
            let mut reasons = Vec::new();
            match r.state {
                GenState::Open => reasons.push(KeepReason::Open),
                GenState::Published | GenState::Broken | GenState::Retired => {}
            }
            if let Some(nodes) = refs.running.get(&g) {
                reasons.push(KeepReason::Running(nodes.clone()));
            }
            if let Some(nodes) = refs.assigned.get(&g) {
                reasons.push(KeepReason::Assigned(nodes.clone()));
            }
            if refs.rollouts.contains(&g) {
                reasons.push(KeepReason::Rollout);
            }
            if newest.contains(&r.generation) {
                reasons.push(KeepReason::Newest(keep));
            }
            if reasons.is_empty() && highest == Some(r.generation) {
                reasons.push(KeepReason::Latest);
            }
            let verdict = if reasons.is_empty() {
                Verdict::Delete
            } else {
                Verdict::Keep(reasons)
            };
            out.push((g, verdict));
        }
    }
    out
}

/// Generations of `image` whose files are in its directory (`entries`, the
/// names there) without a record: a gc that was interrupted after removing
/// the record. Only numbers below the image's highest record count: a tree
/// above it may be one `image edit` is making right now. Generations that
/// something still references are left alone.
pub fn leftovers(
    image: &str,
    entries: &[String],
    records: &[Record],
    refs: &References,
) -> Vec<GenerationRef> {
    let Some(highest) = records
        .iter()
        .filter(|r| r.image == image)
        .map(|r| r.generation)
        .max()
    else {
        return Vec::new();
    };
    let recorded: HashSet<u64> = records
        .iter()
        .filter(|r| r.image == image)
        .map(|r| r.generation)
        .collect();
    let mut found: Vec<u64> = entries
        .iter()
        .filter_map(|name| {
            let number = name
                .strip_suffix(".manifest")
                .or_else(|| name.strip_suffix(".boot"))
                .unwrap_or(name);
            number.parse::<u64>().ok()
        })
        .filter(|n| *n < highest && !recorded.contains(n))
        .collect();
    found.sort_unstable();
    found.dedup();
    found
        .into_iter()
        .map(|n| GenerationRef {
            image: image.to_string(),
            generation: Generation(n),
        })
        .filter(|g| !refs.is_referenced(g))
        .collect()
}

/// What one gc did, or with `dry_run` would do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcOutcome {
    pub deleted: Vec<GenerationRef>,
    /// `IMAGE:GEN: why`, for every generation kept (and images skipped).
    pub kept: Vec<String>,
    pub boot_files: String,
}

/// What was read from the store under the images' locks.
struct StoreView {
    /// Held until the gc is done.
    _locks: Vec<ImageLock>,
    records: Vec<Record>,
    /// Image → the names in its directory.
    entries: BTreeMap<String, Vec<String>>,
    /// Images another command is changing: skipped.
    busy: Vec<String>,
}

fn read_store(store: &ImageStore, lock: bool) -> Result<StoreView, StoreError> {
    let mut view = StoreView {
        _locks: Vec::new(),
        records: Vec::new(),
        entries: BTreeMap::new(),
        busy: Vec::new(),
    };
    for image in store.images()? {
        if lock {
            match store.lock(&image) {
                Ok(l) => view._locks.push(l),
                Err(StoreError::Busy { .. }) => {
                    view.busy.push(image);
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        view.records.extend(store.generations(&image)?);
        let dir = store.image_dir(&image);
        let names = std::fs::read_dir(&dir)
            .and_then(|rd| {
                rd.map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(|source| StoreError::Io {
                action: "listing",
                path: dir.clone(),
                source,
            })?;
        view.entries.insert(image, names);
    }
    Ok(view)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(e.to_string()))
}

/// Removes a record, so the generation is no longer published, and makes the
/// removal durable before anything is re-rendered.
fn remove_record(store: &ImageStore, g: &GenerationRef) -> Result<(), String> {
    let path = store.record_path(g);
    std::fs::remove_file(&path).map_err(|e| format!("removing {}: {e}", path.display()))?;
    let dir = store.image_dir(&g.image);
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("syncing {}: {e}", dir.display()))
}

/// Deletes a generation's tree (clearing the immutable flag), boot directory
/// and manifest; what is already gone is fine.
fn delete_files(store: &ImageStore, g: &GenerationRef) -> Result<(), String> {
    for path in [store.tree(g), store.boot_dir(g), store.manifest_path(g)] {
        let removed = match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => tree::remove_tree(&path).map_err(|e| e.to_string()),
            Ok(_) => std::fs::remove_file(&path).map_err(|e| e.to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.to_string()),
        };
        removed.map_err(|e| format!("deleting {}: {e}", path.display()))?;
    }
    Ok(())
}

fn list(gens: &[GenerationRef]) -> String {
    gens.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Deletes what [`collectable`] (and [`leftovers`]) name, keeping the newest
/// `keep` published generations of each image; with `dry_run` only says what
/// would go.
///
/// The work runs in a task of its own: a caller that hangs up half-way must
/// not stop it between its steps (records gone, boot files not re-rendered)
/// while the boot writer's lock is released for the next writer.
pub async fn gc(
    fleet: &FleetHandle,
    writer: &Arc<BootWriter>,
    keep: u32,
    dry_run: bool,
    actor: &str,
) -> Result<GcOutcome, Status> {
    let (fleet, writer, actor) = (fleet.clone(), writer.clone(), actor.to_string());
    tokio::spawn(async move { run_gc(&fleet, &writer, keep, dry_run, &actor).await })
        .await
        .map_err(|e| Status::internal(format!("image gc: {e}")))?
}

async fn run_gc(
    fleet: &FleetHandle,
    writer: &BootWriter,
    keep: u32,
    dry_run: bool,
    actor: &str,
) -> Result<GcOutcome, Status> {
    if keep == 0 {
        return Err(Status::invalid_argument(
            "keep at least 1 published generation of each image: `image edit` starts from the newest one",
        ));
    }
    // The boot writer's lock first: while it is held no assignment or apply
    // runs, so the assignments read below stay true until the gc is done,
    // and no menu or export can name a generation after its record is gone.
    let held = if dry_run {
        None
    } else {
        Some(writer.hold().await)
    };
    let (inv, _) = fleet.ask(|reply| Command::BootInputs { reply }).await?;
    let store = ImageStore::new(&inv.paths.images_root);
    // Then every image's lock, and everything is read under them.
    let view = {
        let store = store.clone();
        blocking(move || read_store(&store, !dry_run))
            .await?
            .map_err(|e| Status::failed_precondition(format!("reading the image store: {e}")))?
    };
    let nodes = fleet.ask(|reply| Command::Generations { reply }).await?;
    let refs = References::from_nodes(&nodes);

    let mut outcome = GcOutcome::default();
    let mut victims: Vec<Record> = Vec::new();
    for (g, verdict) in collectable(&view.records, &refs, keep as usize) {
        match verdict {
            Verdict::Delete => {
                let record = view
                    .records
                    .iter()
                    .find(|r| r.generation_ref() == g)
                    .cloned()
                    .ok_or_else(|| Status::internal(format!("{g} has no record")))?;
                victims.push(record);
            }
            Verdict::Keep(reasons) => {
                let why: Vec<String> = reasons.iter().map(ToString::to_string).collect();
                outcome.kept.push(format!("{g}: {}", why.join(", ")));
            }
        }
    }
    for image in &view.busy {
        outcome.kept.push(format!(
            "{image}: skipped: another dfleet command is changing it"
        ));
    }
    let mut left: Vec<GenerationRef> = Vec::new();
    for (image, entries) in &view.entries {
        left.extend(leftovers(image, entries, &view.records, &refs));
    }
    outcome.deleted = victims.iter().map(Record::generation_ref).collect();
    outcome.deleted.extend(left.iter().cloned());
    outcome
        .deleted
        .sort_by(|a, b| (&a.image, a.generation).cmp(&(&b.image, b.generation)));

    let Some(held) = held else {
        outcome.boot_files = "dry run: nothing changed".into();
        return Ok(outcome);
    };
    if outcome.deleted.is_empty() {
        outcome.boot_files = "nothing to delete: boot files unchanged".into();
        return Ok(outcome);
    }

    // 1. The records go: the generations are no longer published.
    {
        let s = store.clone();
        let gens: Vec<GenerationRef> = victims.iter().map(Record::generation_ref).collect();
        let removed = blocking(move || {
            let mut removed = Vec::new();
            for g in &gens {
                remove_record(&s, g).map_err(|e| (removed.clone(), e))?;
                removed.push(g.clone());
            }
            Ok::<_, (Vec<GenerationRef>, String)>(removed)
        })
        .await?;
        if let Err((removed, e)) = removed {
            restore(&store, &victims, &removed).await;
            return Err(Status::internal(format!("{e}; nothing was deleted")));
        }
    }

    // 2. The boot files are re-rendered without them, so nothing exports a
    // tree or serves a kernel that is about to disappear. Leftovers have no
    // record already; the apply makes sure nothing still names them either.
    let all: Vec<GenerationRef> = victims.iter().map(Record::generation_ref).collect();
    let undo = |e: Status| {
        let code = e.code();
        let message = format!(
            "{}; nothing was deleted, the records of {} are back",
            e.message(),
            list(&all)
        );
        Status::new(code, message)
    };
    let exported = victims.iter().any(|r| r.state == GenState::Published) || !left.is_empty();
    outcome.boot_files = if !exported {
        "no published generation deleted: boot files unchanged".into()
    } else if inv.boot.is_some() && inv.nfs.is_some() {
        match boot::apply_held(fleet, &held, actor).await {
            Ok(applied) => {
                let c = &applied.changes;
                let mut text = format!(
                    "{} created, {} changed, {} removed, {} unchanged",
                    c.created.len(),
                    c.changed.len(),
                    c.removed.len(),
                    c.unchanged
                );
                for check in &applied.checks {
                    text.push_str(&format!("\n{check}"));
                }
                if let Some(nfs) = applied.nfs_instructions {
                    text.push_str(&format!("\n\n{nfs}"));
                }
                text
            }
            Err(e) => {
                restore(&store, &victims, &all).await;
                return Err(undo(Status::new(
                    e.code(),
                    format!("re-rendering the boot files: {}", e.message()),
                )));
            }
        }
    } else {
        match boot::has_written(&held).await {
            Ok(false) => "no boot network in the inventory: no boot files to re-render".into(),
            Ok(true) => {
                restore(&store, &victims, &all).await;
                return Err(undo(Status::failed_precondition(format!(
                    "the inventory {} has no [boot] and [nfs] tables, so the boot files written earlier, which may still export these generations, cannot be re-rendered",
                    inv.path.display()
                ))));
            }
            Err(e) => {
                restore(&store, &victims, &all).await;
                return Err(undo(e));
            }
        }
    };

    // 3. Only now the files themselves.
    let failures = {
        let store = store.clone();
        let gens = outcome.deleted.clone();
        blocking(move || {
            gens.iter()
                .filter_map(|g| delete_files(&store, g).err())
                .collect::<Vec<_>>()
        })
        .await?
    };
    let _ = fleet
        .send(Command::GenerationsDeleted {
            detail: format!(
                "deleted {} (keeping the newest {keep} published of each image)",
                list(&outcome.deleted)
            ),
            actor: actor.to_string(),
        })
        .await;
    drop(held);
    if !failures.is_empty() {
        return Err(Status::internal(format!(
            "{} are no longer generations, but some of their files stayed (the next gc retries):\n{}",
            list(&outcome.deleted),
            failures.join("\n")
        )));
    }
    Ok(outcome)
}

/// Writes back the records of `removed` after a failed step, so the store is
/// as it was before the gc.
async fn restore(store: &ImageStore, victims: &[Record], removed: &[GenerationRef]) {
    let store = store.clone();
    let records: Vec<Record> = victims
        .iter()
        .filter(|r| removed.contains(&r.generation_ref()))
        .cloned()
        .collect();
    let _ = blocking(move || {
        for r in &records {
            if let Err(e) = store.write_record(r) {
                tracing::error!(generation = %r.generation_ref(), error = %e, "restoring a record after a failed gc");
            }
        }
    })
    .await;
}

/// `dfleet image retire`: under the boot writer's lock and the image's
/// lock, a published generation no node runs or is assigned becomes retired
/// and the boot files are re-rendered, so it is unexported and its kernel
/// leaves the TFTP root. Returns what was done.
pub async fn retire(
    fleet: &FleetHandle,
    writer: &BootWriter,
    g: &GenerationRef,
    actor: &str,
) -> Result<String, Status> {
    let held = writer.hold().await;
    let (inv, _) = fleet.ask(|reply| Command::BootInputs { reply }).await?;
    let store = ImageStore::new(&inv.paths.images_root);
    let lock = {
        let (store, image) = (store.clone(), g.image.clone());
        blocking(move || store.lock(&image))
            .await?
            .map_err(|e| Status::failed_precondition(e.to_string()))?
    };
    let mut record = {
        let (store, g) = (store.clone(), g.clone());
        blocking(move || store.record(&g))
            .await?
            .map_err(|e| Status::not_found(e.to_string()))?
    };
    if record.state != GenState::Published {
        return Err(Status::failed_precondition(format!(
            "{g} is {}: only a published generation can be retired",
            record.state
        )));
    }
    let nodes = fleet.ask(|reply| Command::Generations { reply }).await?;
    let refs = References::from_nodes(&nodes);
    let mut users = Vec::new();
    if let Some(n) = refs.running.get(g) {
        users.push(format!(
            "running on {}",
            dfleet_provisioner::nodeset::fold(n)
        ));
    }
    if let Some(n) = refs.assigned.get(g) {
        users.push(format!(
            "assigned to {}",
            dfleet_provisioner::nodeset::fold(n)
        ));
    }
    if !users.is_empty() {
        return Err(Status::failed_precondition(format!(
            "{g} is {}: assign those nodes another generation (and reboot them) first",
            users.join(" and ")
        )));
    }
    record.state = GenState::Retired;
    {
        let (store, record) = (store.clone(), record.clone());
        blocking(move || store.write_record(&record))
            .await?
            .map_err(|e| Status::internal(e.to_string()))?;
    }
    let applied = crate::boot::apply_held(fleet, &held, actor).await;
    drop(lock);
    let applied = match applied {
        Ok(a) => a,
        Err(e) => {
            // Put it back: a generation is retired only when it is unexported.
            record.state = GenState::Published;
            let _ = blocking(move || store.write_record(&record)).await;
            return Err(e);
        }
    };
    let detail = format!(
        "{g} is retired: unexported and its kernel removed from the TFTP root ({} changed, {} removed); `dfleet image gc` deletes it",
        applied.changes.changed.len(),
        applied.changes.removed.len()
    );
    let _ = fleet
        .send(Command::GenerationRetired {
            detail: detail.clone(),
            actor: actor.to_string(),
        })
        .await;
    Ok(detail)
}

/// Which nodes run and which are assigned one generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    pub generation: GenerationRef,
    pub running: Vec<String>,
    pub assigned: Vec<String>,
}

/// Every generation of the image store, and any other one a node runs or is
/// assigned, with its nodes; sorted by image and generation.
pub async fn usage_of(fleet: &FleetHandle) -> Result<Vec<Usage>, Status> {
    let (inv, _) = fleet.ask(|reply| Command::BootInputs { reply }).await?;
    let store = ImageStore::new(&inv.paths.images_root);
    let records = blocking(move || store.all())
        .await?
        .map_err(|e| Status::failed_precondition(format!("reading the image store: {e}")))?;
    let nodes = fleet.ask(|reply| Command::Generations { reply }).await?;
    let refs = References::from_nodes(&nodes);
    let mut all: BTreeMap<(String, u64), Usage> = BTreeMap::new();
    let empty = |g: GenerationRef| Usage {
        generation: g,
        running: Vec::new(),
        assigned: Vec::new(),
    };
    for g in records.iter().map(Record::generation_ref) {
        all.insert((g.image.clone(), g.generation.0), empty(g));
    }
    for (g, nodes) in refs.running {
        let key = (g.image.clone(), g.generation.0);
        all.entry(key).or_insert_with(|| empty(g)).running = nodes;
    }
    for (g, nodes) in refs.assigned {
        let key = (g.image.clone(), g.generation.0);
        all.entry(key).or_insert_with(|| empty(g)).assigned = nodes;
    }
    Ok(all.into_values().collect())
}

// The CLI's side: `dfleet image gc` and the node columns of `image list`.

/// Asks the daemon to collect generations; the reply as it came.
pub async fn request_gc(
    target: &Target,
    keep: u32,
    dry_run: bool,
) -> anyhow::Result<pb::ImageGcReply> {
    let mut c = client::connect(target).await?;
    let r = c
        .image_gc(pb::ImageGcRequest { keep, dry_run })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    Ok(r.into_inner())
}

/// What `dfleet image gc` prints for a reply.
pub fn gc_text(r: &pb::ImageGcReply, dry_run: bool) -> String {
    let mut out = String::new();
    let verb = if dry_run { "would delete" } else { "deleted" };
    for g in &r.deleted {
        out.push_str(&format!("{verb} {g}\n"));
    }
    for k in &r.kept_reasons {
        out.push_str(&format!("kept {k}\n"));
    }
    out.push_str(&format!("boot files: {}\n", r.boot_files));
    out.push_str(&format!(
        "{} generations {}, {} kept\n",
        r.deleted.len(),
        if dry_run {
            "would be deleted"
        } else {
            "deleted"
        },
        r.kept_reasons.len()
    ));
    out
}

/// `dfleet image gc [--keep K] [--dry-run]`.
pub async fn gc_command(target: &Target, keep: u32, dry_run: bool) -> anyhow::Result<()> {
    let r = request_gc(target, keep, dry_run).await?;
    print!("{}", gc_text(&r, dry_run));
    Ok(())
}

/// For `dfleet image list`: `IMAGE:GEN` → (nodes running it, nodes assigned
/// it), each sorted, for every generation in the store and any other one a
/// node runs or is assigned.
pub async fn usage(target: &Target) -> anyhow::Result<HashMap<String, (Vec<String>, Vec<String>)>> {
    let mut c = client::connect(target).await?;
    let r = c
        .image_usage(pb::ImageUsageRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    r.usage
        .into_iter()
        .map(|u| {
            let g: GenerationRef = u
                .generation
                .context("a usage entry without its generation")?
                .try_into()?;
            Ok((g.to_string(), (u.running, u.assigned)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(image: &str, generation: u64, state: GenState) -> Record {
        let g = GenerationRef {
            image: image.into(),
            generation: Generation(generation),
        };
        Record::new(&g, state, "test", 0)
    }

    fn g(s: &str) -> GenerationRef {
        s.parse().unwrap()
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn deleted(verdicts: &[(GenerationRef, Verdict)]) -> Vec<String> {
        verdicts
            .iter()
            .filter(|(_, v)| *v == Verdict::Delete)
            .map(|(g, _)| g.to_string())
            .collect()
    }

    fn reasons(verdicts: &[(GenerationRef, Verdict)], name: &str) -> Vec<KeepReason> {
        match verdicts.iter().find(|(x, _)| *x == g(name)) {
            Some((_, Verdict::Keep(r))) => r.clone(),
            other => panic!("{name}: {other:?}"),
        }
    }

    fn published(image: &str, gens: std::ops::RangeInclusive<u64>) -> Vec<Record> {
        gens.map(|n| record(image, n, GenState::Published))
            .collect()
    }

    #[test]
    fn unused_generations_beyond_the_newest_keep_go() {
        let records = published("compute", 1..=5);
        let refs = References {
            assigned: HashMap::from([(g("compute:2"), names(&["cn01"]))]),
            running: HashMap::from([(g("compute:3"), names(&["cn02", "cn03"]))]),
            ..References::default()
        };
        let v = collectable(&records, &refs, 1);
        assert_eq!(deleted(&v), ["compute:1", "compute:4"]);
        assert_eq!(
            reasons(&v, "compute:2"),
            [KeepReason::Assigned(names(&["cn01"]))]
        );
        assert_eq!(
            reasons(&v, "compute:3"),
            [KeepReason::Running(names(&["cn02", "cn03"]))]
        );
        assert_eq!(reasons(&v, "compute:5"), [KeepReason::Newest(1)]);
        assert_eq!(
            reasons(&v, "compute:3")[0].to_string(),
            "running on 2 nodes (cn[02-03])"
        );
        // The default keeps two.
        let v = collectable(&records, &References::default(), DEFAULT_KEEP as usize);
        assert_eq!(deleted(&v), ["compute:1", "compute:2", "compute:3"]);
    }

    #[test]
    fn an_open_generation_always_stays_and_does_not_count_as_newest() {
        let mut records = published("compute", 1..=3);
        records.push(record("compute", 4, GenState::Open));
        let v = collectable(&records, &References::default(), 1);
        assert_eq!(deleted(&v), ["compute:1", "compute:2"]);
        assert_eq!(reasons(&v, "compute:4"), [KeepReason::Open]);
        // The newest published one stays although an open one is newer.
        assert_eq!(reasons(&v, "compute:3"), [KeepReason::Newest(1)]);
        // Even with nothing published, an open generation stays.
        let v = collectable(
            &[record("gpu", 1, GenState::Open)],
            &References::default(),
            1,
        );
        assert_eq!(reasons(&v, "gpu:1"), [KeepReason::Open]);
    }

    #[test]
    fn broken_generations_go_unless_used_or_the_highest_number() {
        let records = vec![
            record("compute", 1, GenState::Published),
            record("compute", 2, GenState::Broken),
            record("compute", 3, GenState::Published),
            record("compute", 4, GenState::Broken),
        ];
        let v = collectable(&records, &References::default(), 1);
        // Broken ones never count among the newest published.
        assert_eq!(deleted(&v), ["compute:1", "compute:2"]);
        assert_eq!(reasons(&v, "compute:4"), [KeepReason::Latest]);
        // A node still running a broken generation keeps it.
        let refs = References {
            running: HashMap::from([(g("compute:2"), names(&["cn01"]))]),
            ..References::default()
        };
        let v = collectable(&records, &refs, 1);
        assert_eq!(deleted(&v), ["compute:1"]);
    }

    #[test]
    fn images_are_judged_apart_and_every_reason_is_given() {
        let mut records = published("gpu", 1..=2);
        records.extend(published("compute", 1..=3));
        let refs = References {
            assigned: HashMap::from([(g("compute:3"), names(&["cn01"]))]),
            running: HashMap::from([(g("compute:3"), names(&["cn01"]))]),
            rollouts: HashSet::from([g("gpu:1")]),
        };
        let v = collectable(&records, &refs, 1);
        assert_eq!(deleted(&v), ["compute:1", "compute:2"]);
        assert_eq!(
            reasons(&v, "compute:3"),
            [
                KeepReason::Running(names(&["cn01"])),
                KeepReason::Assigned(names(&["cn01"])),
                KeepReason::Newest(1)
            ]
        );
        // The rollout hook keeps what a rollout needs.
        assert_eq!(reasons(&v, "gpu:1"), [KeepReason::Rollout]);
        // The answer is in image, then generation order.
        let order: Vec<String> = v.iter().map(|(g, _)| g.to_string()).collect();
        assert_eq!(
            order,
            ["compute:1", "compute:2", "compute:3", "gpu:1", "gpu:2"]
        );
    }

    #[test]
    fn the_fleets_nodes_become_references_stale_and_lost_alike() {
        let booted = |stamp: Option<&str>, source: &str| BootedGeneration {
            stamp: stamp.map(g),
            lower_source: source.into(),
        };
        let nodes = vec![
            NodeGenerations {
                node: "cn02".into(),
                assigned: Some(g("compute:5")),
                booted: Some(booted(Some("compute:4"), "10.0.0.1:/srv/i/compute/4")),
            },
            NodeGenerations {
                node: "cn01".into(),
                assigned: Some(g("compute:5")),
                // The stamp could not be read: the mounted export says.
                booted: Some(booted(None, "10.0.0.1:/srv/dfleet/images/compute/3")),
            },
            NodeGenerations {
                node: "cn03".into(),
                assigned: None,
                booted: None,
            },
        ];
        let refs = References::from_nodes(&nodes);
        assert_eq!(refs.assigned[&g("compute:5")], ["cn01", "cn02"]);
        assert_eq!(refs.running[&g("compute:4")], ["cn02"]);
        assert_eq!(refs.running[&g("compute:3")], ["cn01"]);
        assert_eq!(refs.running.len(), 2);
    }

    #[test]
    fn the_running_generation_comes_from_the_stamp_or_the_export() {
        let b = |stamp: Option<&str>, source: &str| BootedGeneration {
            stamp: stamp.map(g),
            lower_source: source.into(),
        };
        assert_eq!(
            running_generation(&b(Some("compute:7"), "x:/srv/compute/6")),
            Some(g("compute:7"))
        );
        assert_eq!(
            running_generation(&b(None, "10.0.0.1:/srv/images/gpu-2/12/")),
            Some(g("gpu-2:12"))
        );
        for unknown in ["", "10.0.0.1:/srv/images/compute", "/dev/sda1", "x:/a/B/3"] {
            assert_eq!(running_generation(&b(None, unknown)), None, "{unknown}");
        }
    }

    #[test]
    fn files_without_a_record_below_the_highest_are_leftovers() {
        let records = vec![
            record("compute", 2, GenState::Published),
            record("compute", 5, GenState::Published),
        ];
        let entries = names(&[
            ".lock",
            "1",
            "1.manifest",
            "1.boot",
            "2",
            "2.toml",
            "3.boot",
            "4",
            "5",
            "5.toml",
            "6",
            ".7.partial",
            "notes",
        ]);
        let refs = References::default();
        let left: Vec<String> = leftovers("compute", &entries, &records, &refs)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(left, ["compute:1", "compute:3", "compute:4"]);
        // A referenced one stays; an image without records is left alone.
        let refs = References {
            running: HashMap::from([(g("compute:3"), names(&["cn01"]))]),
            ..References::default()
        };
        assert_eq!(leftovers("compute", &entries, &records, &refs).len(), 2);
        assert!(leftovers("gpu", &entries, &records, &refs).is_empty());
    }
}
