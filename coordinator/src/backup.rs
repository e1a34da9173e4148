//! `dfleet backup` and `dfleet restore`: the state a coordinator cannot rebuild.
//!
//! A backup is a tar archive of the store (a consistent SQLite snapshot taken
//! by the store thread with `VACUUM INTO`), the cluster CA and the SSH host CA
//! with the managed host keys. Losing those means re-enrolling every node and
//! rebuilding every known_hosts; everything else in the state directory (boot
//! files, the boot manifest) is rendered again from the inventory, and image
//! generations live in the image store, backed up on their own.
//!
//! The archive's first member is `MANIFEST.json`: the cluster's name, the
//! snapshot's time and each file's size, mode and SHA-256. `restore` checks
//! all of them, and the store's `PRAGMA integrity_check`, in a staging
//! directory before it moves anything into the state directory, so a damaged
//! or foreign archive changes nothing.
//!
//! Node certificates issued between the snapshot and the restore are unknown
//! to the restored store. `restore` marks every node row as restored, and the
//! fleet adopts, once per node, a certificate its CA issued to that node after
//! the snapshot (see `Fleet::open`), so the fleet reconnects without anyone
//! re-enrolling it.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};
use dfleet_proto::pb;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The archive's first member.
pub const MANIFEST: &str = "MANIFEST.json";
const FORMAT: &str = "dfleet-backup";
const VERSION: u32 = 1;
/// A manifest larger than this is not one of ours.
const MANIFEST_MAX: u64 = 4 << 20;
/// The store's file in the state directory and in the archive.
pub const STORE_FILE: &str = "dfleet.db";
/// The files a state directory must hold for a backup, and must not hold for
/// a restore: the store, the cluster CA, the SSH host CA.
const REQUIRED: [&str; 4] = ["ca.pem", "ca.key", "ssh/host_ca", "ssh/host_ca.pub"];
/// Where the managed SSH host keys live, one directory per node.
const MANAGED: &str = "ssh/hosts";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub cluster: String,
    /// The dfleet version that wrote it.
    pub dfleet: String,
    /// When the store snapshot was taken.
    pub snapshot_unix_ms: i64,
    pub files: Vec<FileEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileEntry {
    pub path: String,
    pub size: u64,
    pub mode: u32,
    pub sha256: String,
}

/// What `restore` put in place.
#[derive(Debug, Clone, PartialEq)]
pub struct Restored {
    pub manifest: Manifest,
    pub nodes: usize,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A `Write` that hashes and counts what goes through it.
struct Hashing<W> {
    inner: W,
    sha: Sha256,
    n: u64,
}

impl<W: Write> Hashing<W> {
    fn new(inner: W) -> Self {
        Hashing {
            inner,
            sha: Sha256::new(),
            n: 0,
        }
    }

    fn finish(self) -> (u64, String) {
        (self.n, hex(&self.sha.finalize()))
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn hash_file(path: &Path) -> Result<(u64, String)> {
    let mut f = fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut h = Hashing::new(std::io::sink());
    std::io::copy(&mut f, &mut h).with_context(|| format!("reading {}", path.display()))?;
    Ok(h.finish())
}

/// The key files of a state directory, as (path in the archive, path on disk).
fn key_files(state_dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for rel in REQUIRED {
        let path = state_dir.join(rel);
        if !path.is_file() {
            bail!(
                "{} is missing: the state directory has no {rel}",
                path.display()
            );
        }
        out.push((rel.to_string(), path));
    }
    let managed = state_dir.join(MANAGED);
    if managed.is_dir() {
        let mut nodes: Vec<_> = fs::read_dir(&managed)
            .with_context(|| format!("listing {}", managed.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("listing {}", managed.display()))?;
        nodes.sort_by_key(|e| e.file_name());
        for node in nodes {
            if !node.file_type()?.is_dir() {
                continue;
            }
            let mut files: Vec<_> = fs::read_dir(node.path())
                .with_context(|| format!("listing {}", node.path().display()))?
                .collect::<Result<_, _>>()
                .with_context(|| format!("listing {}", node.path().display()))?;
            files.sort_by_key(|e| e.file_name());
            for f in files {
                let name = f.file_name().to_string_lossy().into_owned();
                // A key being written is a `.tmp` until it is renamed.
                if !f.file_type()?.is_file() || name.ends_with(".tmp") {
                    continue;
                }
                let rel = format!("{MANAGED}/{}/{name}", node.file_name().to_string_lossy());
                out.push((rel, f.path()));
            }
        }
    }
    Ok(out)
}

/// Writes the archive of `state_dir`, with `snapshot` (a copy of the store
/// taken at `snapshot_unix_ms`) as its store. Returns the bytes written.
pub fn write_archive(
    state_dir: &Path,
    cluster: &str,
    snapshot: &Path,
    snapshot_unix_ms: i64,
    out: impl Write,
) -> Result<u64> {
    // The key files are small and read once, into memory: a key replaced
    // meanwhile (by rename) is archived as it was hashed. The snapshot is
    // this backup's own copy, which nothing else writes: hashed, then
    // streamed.
    let mut keys = Vec::new();
    for (rel, path) in key_files(state_dir)? {
        let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let mode = fs::metadata(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .permissions()
            .mode()
            & 0o644;
        keys.push((rel, mode, bytes));
    }
    let (size, sha256) = hash_file(snapshot)?;
    let mut entries = vec![FileEntry {
        path: STORE_FILE.into(),
        size,
        mode: 0o600,
        sha256,
    }];
    for (rel, mode, bytes) in &keys {
        entries.push(FileEntry {
            path: rel.clone(),
            size: bytes.len() as u64,
            mode: *mode,
            sha256: hex(&Sha256::digest(bytes)),
        });
    }
    let manifest = Manifest {
        format: FORMAT.into(),
        version: VERSION,
        cluster: cluster.into(),
        dfleet: env!("CARGO_PKG_VERSION").into(),
        snapshot_unix_ms,
        files: entries,
    };
    let mtime = (snapshot_unix_ms / 1000).max(0) as u64;
    let mut counter = Counting { inner: out, n: 0 };
    {
        let mut tar = tar::Builder::new(&mut counter);
        let json = serde_json::to_vec_pretty(&manifest)?;
        let mut h = header(json.len() as u64, 0o600, mtime);
        tar.append_data(&mut h, MANIFEST, json.as_slice())
            .context("writing the manifest")?;
        let db =
            fs::File::open(snapshot).with_context(|| format!("reading {}", snapshot.display()))?;
        let mut h = header(size, 0o600, mtime);
        tar.append_data(&mut h, STORE_FILE, db.take(size))
            .context("archiving the store")?;
        for (rel, mode, bytes) in &keys {
            let mut h = header(bytes.len() as u64, *mode, mtime);
            tar.append_data(&mut h, rel, bytes.as_slice())
                .with_context(|| format!("archiving {rel}"))?;
        }
        tar.finish().context("finishing the archive")?;
    }
    counter.inner.flush().context("writing the archive")?;
    Ok(counter.n)
}

fn header(size: u64, mode: u32, mtime: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(mtime);
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(tar::EntryType::Regular);
    h
}

struct Counting<W> {
    inner: W,
    n: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A relative path made only of plain names: no `..`, no root, no `.`.
fn safe_relative(path: &Path) -> bool {
    !path.as_os_str().is_empty() && path.components().all(|c| matches!(c, Component::Normal(_)))
}

/// Restores `archive` into `state_dir`, which must not hold a coordinator's
/// state yet. Nothing in `state_dir` changes unless every check passes.
pub fn restore(archive: &Path, state_dir: &Path, cluster: &str, now_ms: i64) -> Result<Restored> {
    let present: Vec<String> = std::iter::once(STORE_FILE)
        .chain(REQUIRED)
        .filter(|rel| state_dir.join(rel).exists())
        .map(str::to_string)
        .collect();
    if !present.is_empty() {
        bail!(
            "{} already holds a coordinator's state ({}): restore writes only into a fresh state \
             directory; stop the coordinator and move the directory aside first",
            state_dir.display(),
            present.join(", ")
        );
    }
    fs::create_dir_all(state_dir)
        .with_context(|| format!("creating the state directory {}", state_dir.display()))?;
    fs::set_permissions(state_dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("setting the mode of {}", state_dir.display()))?;
    let staging = tempfile::Builder::new()
        .prefix(".restore-")
        .tempdir_in(state_dir)
        .with_context(|| format!("creating a staging directory in {}", state_dir.display()))?;
    let manifest = unpack(archive, staging.path(), cluster)?;
    let db = staging.path().join(STORE_FILE);
    let nodes = crate::store::mark_restored(&db, manifest.snapshot_unix_ms, now_ms)
        .with_context(|| format!("{}: the store in the archive", archive.display()))?;
    // Every check passed: move the files into place, the store last, so a
    // state directory with a store is always a whole one.
    let mut order: Vec<&FileEntry> = manifest.files.iter().collect();
    order.sort_by_key(|e| e.path == STORE_FILE);
    let mut placed = Vec::new();
    for e in order {
        let from = staging.path().join(&e.path);
        let to = state_dir.join(&e.path);
        let moved = to
            .parent()
            .map_or(Ok(()), |p| {
                fs::create_dir_all(p)?;
                fs::set_permissions(p, fs::Permissions::from_mode(0o700))
            })
            .and_then(|()| fs::rename(&from, &to));
        if let Err(err) = moved {
            for p in &placed {
                let _ = fs::remove_file(p);
            }
            return Err(err).with_context(|| format!("moving {} into place", to.display()));
        }
        placed.push(to);
    }
    Ok(Restored { manifest, nodes })
}

/// Reads and checks the archive into `dir`; returns its manifest.
fn unpack(archive: &Path, dir: &Path, cluster: &str) -> Result<Manifest> {
    let name = archive.display();
    let file = fs::File::open(archive).with_context(|| format!("opening {name}"))?;
    let mut tar = tar::Archive::new(std::io::BufReader::new(file));
    let mut entries = tar
        .entries()
        .with_context(|| format!("{name}: not a tar archive"))?;
    let mut first = entries
        .next()
        .with_context(|| format!("{name}: the archive is empty"))?
        .with_context(|| format!("{name}: not a tar archive"))?;
    let first_path = first.path()?.to_string_lossy().into_owned();
    if first_path != MANIFEST {
        bail!("{name}: not a dfleet backup (its first member is {first_path:?}, not {MANIFEST})");
    }
    if first.size() > MANIFEST_MAX {
        bail!(
            "{name}: {MANIFEST} is {} bytes, more than a manifest can be",
            first.size()
        );
    }
    let mut json = Vec::new();
    first
        .read_to_end(&mut json)
        .with_context(|| format!("{name}: reading {MANIFEST}"))?;
    let manifest: Manifest = serde_json::from_slice(&json)
        .with_context(|| format!("{name}: {MANIFEST} does not parse"))?;
    if manifest.format != FORMAT || manifest.version != VERSION {
        bail!(
            "{name}: format {:?} version {}; this dfleet reads {FORMAT:?} version {VERSION}",
            manifest.format,
            manifest.version
        );
    }
    if manifest.cluster != cluster {
        bail!(
            "{name}: a backup of cluster {:?}, but the configuration is for cluster {cluster:?}",
            manifest.cluster
        );
    }
    let mut expected: std::collections::BTreeMap<&str, &FileEntry> = Default::default();
    for e in &manifest.files {
        if !safe_relative(Path::new(&e.path)) || e.path == MANIFEST {
            bail!("{name}: {MANIFEST} lists an unsafe path {:?}", e.path);
        }
        if expected.insert(e.path.as_str(), e).is_some() {
            bail!("{name}: {MANIFEST} lists {:?} twice", e.path);
        }
    }
    for rel in std::iter::once(STORE_FILE).chain(REQUIRED) {
        if !expected.contains_key(rel) {
            bail!("{name}: {MANIFEST} does not list {rel}");
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for entry in entries {
        let mut entry = entry.with_context(|| format!("{name}: a damaged member"))?;
        let rel = entry.path()?.to_string_lossy().into_owned();
        let Some(want) = expected.get(rel.as_str()) else {
            bail!("{name}: member {rel:?} is not in {MANIFEST}");
        };
        if entry.header().entry_type() != tar::EntryType::Regular {
            bail!("{name}: member {rel:?} is not a regular file");
        }
        if !seen.insert(rel.clone()) {
            bail!("{name}: member {rel:?} appears twice");
        }
        let to = dir.join(&rel);
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&to)
            .with_context(|| format!("creating {}", to.display()))?;
        // One byte more than listed is enough to tell a member too large.
        let mut h = Hashing::new(&mut out);
        std::io::copy(&mut (&mut entry).take(want.size + 1), &mut h)
            .with_context(|| format!("{name}: reading member {rel:?} into {}", to.display()))?;
        let (size, sha) = h.finish();
        if size != want.size || sha != want.sha256 {
            bail!(
                "{name}: member {rel:?} is damaged ({size} bytes, sha256 {sha}; the manifest says {} bytes, sha256 {})",
                want.size,
                want.sha256
            );
        }
        out.sync_all()
            .with_context(|| format!("syncing {}", to.display()))?;
        fs::set_permissions(&to, fs::Permissions::from_mode(want.mode & 0o644))
            .with_context(|| format!("setting the mode of {}", to.display()))?;
    }
    if let Some(missing) = expected.keys().find(|k| !seen.contains(**k)) {
        bail!(
            "{name}: member {missing:?} is listed in {MANIFEST} but missing (a truncated archive?)"
        );
    }
    Ok(manifest)
}

/// A `Write` that sends what is written as chunks of a `Backup` stream.
struct ChunkWriter {
    tx: tokio::sync::mpsc::Sender<Result<pb::BackupChunk, tonic::Status>>,
    buf: Vec<u8>,
}

const CHUNK: usize = 256 << 10;

impl ChunkWriter {
    fn send(&mut self, summary: String) -> std::io::Result<()> {
        let chunk = pb::BackupChunk {
            data: std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)),
            summary,
        };
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client left"))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(buf);
        if self.buf.len() >= CHUNK {
            self.send(String::new())?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Serves `dfleet backup`: a store snapshot taken through the store thread
/// (after every write queued before it), then the archive in chunks; the last
/// chunk carries the summary, which is also recorded as a `backup` event.
pub async fn serve(
    store: &crate::store::Store,
    fleet: crate::fleet::FleetHandle,
    state_dir: PathBuf,
    cluster: String,
    actor: String,
) -> Result<tokio::sync::mpsc::Receiver<Result<pb::BackupChunk, tonic::Status>>, tonic::Status> {
    let internal = |what: &str, e: &dyn std::fmt::Display| {
        tonic::Status::internal(format!("backup: {what}: {e}"))
    };
    let staging = tempfile::Builder::new()
        .prefix(".backup-")
        .tempdir_in(&state_dir)
        .map_err(|e| {
            internal(
                &format!("a staging directory in {}", state_dir.display()),
                &e,
            )
        })?;
    let snapshot = staging.path().join(STORE_FILE);
    let snapshot_ms = store
        .snapshot(snapshot.clone())
        .await
        .map_err(|e| internal("the store snapshot", &e))?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let chunks = tx.clone();
    let job = tokio::task::spawn_blocking(move || {
        let result = (|| -> Result<String> {
            let nodes: i64 = rusqlite::Connection::open(&snapshot)?.query_row(
                "SELECT COUNT(*) FROM nodes",
                [],
                |r| r.get(0),
            )?;
            let mut w = ChunkWriter {
                tx: chunks,
                buf: Vec::with_capacity(CHUNK),
            };
            let bytes = write_archive(&state_dir, &cluster, &snapshot, snapshot_ms, &mut w)?;
            let summary = format!(
                "cluster {cluster:?}: {nodes} nodes, the cluster CA, the SSH host CA; store snapshot at unix ms {snapshot_ms}; {bytes} bytes"
            );
            w.send(summary.clone())?;
            Ok(summary)
        })();
        drop(staging);
        result
    });
    tokio::spawn(async move {
        let failed = match job.await {
            Ok(Ok(summary)) => {
                let _ = fleet
                    .send(crate::fleet::Command::Record {
                        kind: dfleet_proto::domain::EventKind::Backup,
                        node: String::new(),
                        detail: summary,
                        actor,
                    })
                    .await;
                return;
            }
            Ok(Err(e)) => format!("{e:#}"),
            Err(e) => e.to_string(),
        };
        tracing::warn!(error = %failed, "backup failed");
        let _ = tx
            .send(Err(tonic::Status::internal(format!("backup: {failed}"))))
            .await;
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(files: &[(&str, &[u8])]) -> Manifest {
        Manifest {
            format: FORMAT.into(),
            version: VERSION,
            cluster: "t".into(),
            dfleet: "test".into(),
            snapshot_unix_ms: 1,
            files: files
                .iter()
                .map(|(path, data)| FileEntry {
                    path: path.to_string(),
                    size: data.len() as u64,
                    mode: 0o600,
                    sha256: hex(&Sha256::digest(data)),
                })
                .collect(),
        }
    }

    /// An archive with `m` as its manifest and `members` after it.
    fn archive(dir: &Path, m: &Manifest, members: &[(&str, &[u8])]) -> PathBuf {
        let path = dir.join("a.tar");
        let mut tar = tar::Builder::new(fs::File::create(&path).unwrap());
        let json = serde_json::to_vec(m).unwrap();
        tar.append_data(
            &mut header(json.len() as u64, 0o600, 0),
            MANIFEST,
            json.as_slice(),
        )
        .unwrap();
        for (name, data) in members {
            let mut h = header(data.len() as u64, 0o600, 0);
            // Written raw, so a hostile name is kept as it is.
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_cksum();
            tar.append(&h, *data).unwrap();
        }
        tar.finish().unwrap();
        path
    }

    const ALL: [(&str, &[u8]); 5] = [
        ("dfleet.db", b"db"),
        ("ca.pem", b"pem"),
        ("ca.key", b"key"),
        ("ssh/host_ca", b"sshkey"),
        ("ssh/host_ca.pub", b"sshpub"),
    ];

    fn unpack_err(m: &Manifest, members: &[(&str, &[u8])]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let a = archive(dir.path(), m, members);
        let out = dir.path().join("out");
        fs::create_dir(&out).unwrap();
        let err = format!("{:#}", unpack(&a, &out, "t").unwrap_err());
        // Nothing escaped the staging directory.
        assert!(!dir.path().join("evil").exists());
        err
    }

    #[test]
    fn a_whole_archive_unpacks() {
        let dir = tempfile::tempdir().unwrap();
        let a = archive(dir.path(), &manifest(&ALL), &ALL);
        let out = dir.path().join("out");
        fs::create_dir(&out).unwrap();
        unpack(&a, &out, "t").unwrap();
        assert_eq!(fs::read(out.join("ssh/host_ca")).unwrap(), b"sshkey");
        let mode = fs::metadata(out.join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn hostile_or_damaged_archives_are_refused_by_name() {
        let mut with_escape = ALL.to_vec();
        with_escape.push(("../evil", b"x"));
        let err = unpack_err(&manifest(&with_escape), &with_escape);
        assert!(err.contains("unsafe path \"../evil\""), "{err}");

        let mut extra = ALL.to_vec();
        extra.push(("ssh/hosts/cn1/key", b"x"));
        let err = unpack_err(&manifest(&ALL), &extra);
        assert!(
            err.contains("\"ssh/hosts/cn1/key\" is not in MANIFEST.json"),
            "{err}"
        );

        let err = unpack_err(&manifest(&ALL), &ALL[..4]);
        assert!(err.contains("\"ssh/host_ca.pub\" is listed"), "{err}");

        let mut changed = ALL.to_vec();
        changed[2] = ("ca.key", b"KEY");
        let err = unpack_err(&manifest(&ALL), &changed);
        assert!(err.contains("\"ca.key\" is damaged"), "{err}");

        let mut other = manifest(&ALL);
        other.cluster = "prod".into();
        let err = unpack_err(&other, &ALL);
        assert!(err.contains("cluster \"prod\""), "{err}");

        let err = unpack_err(&manifest(&ALL[1..]), &ALL[1..]);
        assert!(err.contains("does not list dfleet.db"), "{err}");
    }
}
