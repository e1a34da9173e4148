//! The one writer of boot files: puts a rendered tree in place atomically.
//!
//! Apply stages every new or changed file next to its target (temp file,
//! fsync), lets the caller validate, then renames the staged files over their
//! targets, removes the files a previous apply wrote that the new tree no
//! longer has, and records what it owns in a manifest. A failure at any step
//! puts back every file it already replaced or removed, so a failed apply
//! leaves the previous tree intact. It never touches a file it does not own:
//! a target that exists but is not in its manifest stops the apply.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{BootPaths, CopySource, GeneratedFile, Tree};

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "refusing to overwrite {0}: dfleet did not write it (move it away, or delete it if dfleet should own it)"
    )]
    NotOurs(PathBuf),
    #[error("the rendered path {0} leaves its tree")]
    BadPath(PathBuf),
    #[error("reading the manifest {path}: {message}")]
    Manifest { path: PathBuf, message: String },
    #[error("validation of the staged files failed, nothing was replaced: {0}")]
    Invalid(String),
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> WriteError + 'a {
    move |source| WriteError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// The files a previous apply wrote, with a hash of their content.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    pub files: BTreeMap<PathBuf, String>,
}

impl Manifest {
    /// Reads the manifest; a missing one is empty (nothing owned yet).
    pub fn load(path: &Path) -> Result<Manifest, WriteError> {
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Manifest::default()),
            Err(e) => return Err(io("reading", path)(e)),
        };
        let mut files = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (hash, file) = line.split_once("  ").ok_or_else(|| WriteError::Manifest {
                path: path.to_path_buf(),
                message: format!("line {}: expected `HASH  PATH`", i + 1),
            })?;
            files.insert(PathBuf::from(file), hash.to_string());
        }
        Ok(Manifest { files })
    }

    fn render(&self) -> String {
        let mut out = String::from(
            "# Files written by `dfleet pxe apply`; dfleet removes them when they are no longer rendered.\n",
        );
        for (path, hash) in &self.files {
            out.push_str(&format!("{hash}  {}\n", path.display()));
        }
        out
    }
}

/// A content hash for the manifest (FNV-1a 64; it detects change, it is not
/// a security boundary).
fn hash(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

/// What the manifest records for `f`: the content hash of rendered bytes,
/// or the source's SHA-256 for a copy.
fn file_hash(f: &GeneratedFile) -> String {
    match &f.copy_of {
        Some(src) => format!("sha256:{}", src.sha256),
        None => hash(&f.bytes),
    }
}

/// Where a generated file goes on this host.
pub fn target(paths: &BootPaths, f: &GeneratedFile) -> Result<PathBuf, WriteError> {
    if f.path.is_absolute()
        || f.path
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(WriteError::BadPath(f.path.clone()));
    }
    let root = match f.tree {
        Tree::Tftp => &paths.tftp_root,
        Tree::Dhcp => &paths.dhcp_root,
        Tree::Exports => &paths.exports_root,
    };
    Ok(root.join(&f.path))
}

/// What an apply would change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub created: Vec<PathBuf>,
    pub changed: Vec<PathBuf>,
    pub removed: Vec<PathBuf>,
    pub unchanged: usize,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.created.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}

impl std::fmt::Display for Changes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for p in &self.created {
            writeln!(f, "+ {}", p.display())?;
        }
        for p in &self.changed {
            writeln!(f, "~ {}", p.display())?;
        }
        for p in &self.removed {
            writeln!(f, "- {}", p.display())?;
        }
        write!(
            f,
            "{} created, {} changed, {} removed, {} unchanged",
            self.created.len(),
            self.changed.len(),
            self.removed.len(),
            self.unchanged
        )
    }
}

/// Compares the rendered files with what is on disk. Errors when a target
/// exists that dfleet does not own.
pub fn diff(
    files: &[GeneratedFile],
    paths: &BootPaths,
    manifest: &Manifest,
) -> Result<Changes, WriteError> {
    let mut changes = Changes::default();
    let mut wanted = std::collections::BTreeSet::new();
    for f in files {
        let t = target(paths, f)?;
        wanted.insert(t.clone());
        let meta = match fs::symlink_metadata(&t) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                changes.created.push(t);
                continue;
            }
            Err(e) => return Err(io("reading", &t)(e)),
        };
        let Some(owned_hash) = manifest.files.get(&t) else {
            return Err(WriteError::NotOurs(t));
        };
        let mode_ok = meta.is_file() && meta.permissions().mode() & 0o7777 == f.mode;
        let same = match &f.copy_of {
            // A copy is recognised by the hash its source was recorded with
            // and its size, without reading a kernel again on every apply.
            Some(src) => *owned_hash == file_hash(f) && meta.len() == src.size,
            None => fs::read(&t).map_err(io("reading", &t))? == f.bytes,
        };
        if same && mode_ok {
            changes.unchanged += 1;
        } else {
            changes.changed.push(t);
        }
    }
    for owned in manifest.files.keys() {
        if !wanted.contains(owned) && owned.exists() {
            changes.removed.push(owned.clone());
        }
    }
    Ok(changes)
}

fn staged_name(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(".{name}.dfleet-new"))
}

fn backup_name(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(".{name}.dfleet-old"))
}

/// Writes a file; with `sync`, waits until it is on disk. Staged files are
/// written unsynced and made durable together by [`sync_roots`], which is
/// one `syncfs` per tree instead of one fsync per file.
fn write_file(path: &Path, bytes: &[u8], mode: u32, sync: bool) -> Result<(), WriteError> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io("creating", dir))?;
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(io("creating", path))?;
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io("setting the mode of", path))?;
    f.write_all(bytes).map_err(io("writing", path))?;
    if sync {
        f.sync_all().map_err(io("syncing", path))?;
    }
    Ok(())
}

/// Flushes the filesystems holding the trees: file data before the renames
/// that publish it, and the renames themselves after.
/// Copies `src` to `path` with `mode`, checking it is still the file the
/// plan describes (its size; the hash was taken when it was published).
fn copy_file(src: &CopySource, path: &Path, mode: u32) -> Result<(), WriteError> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io("creating", dir))?;
    }
    let copied = fs::copy(&src.path, path).map_err(io("copying", &src.path))?;
    if copied != src.size {
        let _ = fs::remove_file(path);
        return Err(WriteError::Io {
            action: "copying",
            path: src.path.clone(),
            source: std::io::Error::other(format!(
                "{copied} bytes where the image store recorded {}",
                src.size
            )),
        });
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(io("setting the mode of", path))
}

fn sync_roots(paths: &BootPaths) -> Result<(), WriteError> {
    for root in [&paths.tftp_root, &paths.dhcp_root, &paths.exports_root] {
        if let Ok(dir) = fs::File::open(root) {
            rustix::fs::syncfs(&dir)
                .map_err(|e| io("syncing the filesystem of", root)(e.into()))?;
        }
    }
    Ok(())
}

/// One step of the commit, undone on failure.
enum Done {
    Created(PathBuf),
    Replaced(PathBuf),
    Removed(PathBuf),
}

/// A (target, staged file) pair.
pub type Staged = (PathBuf, PathBuf);

/// Checks staged files before anything is replaced; the error says why not.
pub type Validate<'a> = dyn FnMut(&[Staged]) -> Result<(), String> + 'a;

/// Seams for the caller: validation of the staged files, and a hook before
/// each replacement (the tests inject failures there).
pub struct Hooks<'a> {
    /// Called with (target, staged file) pairs once everything is staged.
    pub validate: &'a mut Validate<'a>,
    /// Called before the k-th replacement or removal.
    pub before_step: &'a mut dyn FnMut(usize) -> std::io::Result<()>,
}

/// Puts `files` in place. Returns what changed; on error, the previous tree
/// is back as it was.
pub fn apply(
    files: &[GeneratedFile],
    paths: &BootPaths,
    manifest_path: &Path,
    hooks: Hooks<'_>,
) -> Result<Changes, WriteError> {
    let manifest = Manifest::load(manifest_path)?;
    let changes = diff(files, paths, &manifest)?;
    let mut new_manifest = Manifest::default();
    let mut staged = Vec::new();
    let to_write: std::collections::HashSet<&PathBuf> =
        changes.created.iter().chain(&changes.changed).collect();
    for f in files {
        let t = target(paths, f)?;
        new_manifest.files.insert(t.clone(), file_hash(f));
        if to_write.contains(&t) {
            let s = staged_name(&t);
            let written = match &f.copy_of {
                Some(src) => copy_file(src, &s, f.mode),
                None => write_file(&s, &f.bytes, f.mode, false),
            };
            if let Err(e) = written {
                cleanup(&staged);
                return Err(e);
            }
            staged.push((t, s));
        }
    }
    if changes.is_empty() && new_manifest == manifest {
        // Nothing to replace, remove or record.
        (hooks.validate)(&staged).map_err(WriteError::Invalid)?;
        return Ok(changes);
    }
    if let Err(e) = sync_roots(paths) {
        cleanup(&staged);
        return Err(e);
    }
    if let Err(e) = (hooks.validate)(&staged) {
        cleanup(&staged);
        return Err(WriteError::Invalid(e));
    }
    let mut done = Vec::new();
    let result = (|| -> Result<(), WriteError> {
        let mut step = 0;
        for (t, s) in &staged {
            (hooks.before_step)(step).map_err(io("replacing", t))?;
            step += 1;
            if t.exists() {
                fs::rename(t, backup_name(t)).map_err(io("keeping the previous", t))?;
                done.push(Done::Replaced(t.clone()));
            } else {
                done.push(Done::Created(t.clone()));
            }
            fs::rename(s, t).map_err(io("renaming into place", t))?;
        }
        for r in &changes.removed {
            (hooks.before_step)(step).map_err(io("removing", r))?;
            step += 1;
            fs::rename(r, backup_name(r)).map_err(io("removing", r))?;
            done.push(Done::Removed(r.clone()));
        }
        sync_roots(paths)?;
        write_file(
            &manifest_path.with_extension("new"),
            new_manifest.render().as_bytes(),
            0o644,
            true,
        )?;
        fs::rename(manifest_path.with_extension("new"), manifest_path)
            .map_err(io("renaming into place", manifest_path))?;
        Ok(())
    })();
    match result {
        Ok(()) => {
            for d in done {
                if let Done::Replaced(t) | Done::Removed(t) = d {
                    let _ = fs::remove_file(backup_name(&t));
                }
            }
            Ok(changes)
        }
        Err(e) => {
            rollback(done);
            cleanup(&staged);
            Err(e)
        }
    }
}

/// Puts back what a failed apply already did, newest first.
fn rollback(done: Vec<Done>) {
    for d in done.into_iter().rev() {
        match d {
            Done::Created(t) => {
                let _ = fs::remove_file(&t);
            }
            Done::Replaced(t) | Done::Removed(t) => {
                let _ = fs::rename(backup_name(&t), &t);
            }
        }
    }
}

fn cleanup(staged: &[(PathBuf, PathBuf)]) {
    for (_, s) in staged {
        let _ = fs::remove_file(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(dir: &Path) -> BootPaths {
        BootPaths {
            tftp_root: dir.join("tftp"),
            dhcp_root: dir.join("dhcp"),
            exports_root: dir.join("exports"),
            images_root: dir.join("images"),
        }
    }

    fn file(tree: Tree, path: &str, text: &str) -> GeneratedFile {
        GeneratedFile {
            tree,
            path: PathBuf::from(path),
            bytes: text.as_bytes().to_vec(),
            mode: 0o644,
            copy_of: None,
        }
    }

    fn ok_hooks<'a>(
        v: &'a mut Validate<'a>,
        b: &'a mut dyn FnMut(usize) -> std::io::Result<()>,
    ) -> Hooks<'a> {
        Hooks {
            validate: v,
            before_step: b,
        }
    }

    fn apply_ok(files: &[GeneratedFile], p: &BootPaths, m: &Path) -> Changes {
        apply(files, p, m, ok_hooks(&mut |_| Ok(()), &mut |_| Ok(()))).unwrap()
    }

    /// Every regular file under `dir` with its content.
    fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut out = BTreeMap::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            let Ok(entries) = fs::read_dir(&d) else {
                continue;
            };
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.insert(p.clone(), fs::read(&p).unwrap());
                }
            }
        }
        out
    }

    #[test]
    fn apply_writes_then_changes_nothing_the_second_time() {
        let dir = tempfile::tempdir().unwrap();
        let p = paths(dir.path());
        let m = dir.path().join("manifest");
        let files = vec![
            file(Tree::Tftp, "pxelinux.cfg/default", "LOCALBOOT 0\n"),
            file(Tree::Dhcp, "dhcpd.conf", "x;\n"),
        ];
        let first = apply_ok(&files, &p, &m);
        assert_eq!(first.created.len(), 2);
        assert_eq!(
            fs::read_to_string(p.tftp_root.join("pxelinux.cfg/default")).unwrap(),
            "LOCALBOOT 0\n"
        );
        let mtime = fs::metadata(p.dhcp_root.join("dhcpd.conf"))
            .unwrap()
            .modified()
            .unwrap();
        let second = apply_ok(&files, &p, &m);
        assert!(second.is_empty(), "{second}");
        assert_eq!(second.unchanged, 2);
        assert_eq!(
            fs::metadata(p.dhcp_root.join("dhcpd.conf"))
                .unwrap()
                .modified()
                .unwrap(),
            mtime
        );
    }

    fn copy(path: &str, src: &Path, sha256: &str) -> GeneratedFile {
        GeneratedFile {
            tree: Tree::Tftp,
            path: PathBuf::from(path),
            bytes: Vec::new(),
            mode: 0o644,
            copy_of: Some(CopySource {
                path: src.to_path_buf(),
                sha256: sha256.to_string(),
                size: fs::metadata(src).unwrap().len(),
            }),
        }
    }

    #[test]
    fn a_kernel_is_copied_once_and_again_only_when_its_source_changes() {
        let dir = tempfile::tempdir().unwrap();
        let p = paths(dir.path());
        let m = dir.path().join("manifest");
        let src = dir.path().join("vmlinuz");
        fs::write(&src, vec![7u8; 100_000]).unwrap();
        let k = copy("dfleet/c/7/vmlinuz", &src, "aa");
        let first = apply_ok(std::slice::from_ref(&k), &p, &m);
        assert_eq!(first.created, [p.tftp_root.join("dfleet/c/7/vmlinuz")]);
        assert_eq!(
            fs::read(p.tftp_root.join("dfleet/c/7/vmlinuz")).unwrap(),
            fs::read(&src).unwrap()
        );
        assert_eq!(apply_ok(std::slice::from_ref(&k), &p, &m).unchanged, 1);
        // A rebuilt source has another hash: copied again.
        fs::write(&src, vec![8u8; 100_001]).unwrap();
        let k2 = copy("dfleet/c/7/vmlinuz", &src, "bb");
        let again = apply_ok(&[k2], &p, &m);
        assert_eq!(again.changed.len(), 1, "{again}");
        assert_eq!(
            fs::read(p.tftp_root.join("dfleet/c/7/vmlinuz")).unwrap(),
            vec![8u8; 100_001]
        );
        // A source that is not what the store recorded stops the apply.
        let mut wrong = copy("dfleet/c/8/vmlinuz", &src, "cc");
        wrong.copy_of.as_mut().unwrap().size = 5;
        assert!(apply(&[wrong], &p, &m, ok_hooks(&mut |_| Ok(()), &mut |_| Ok(()))).is_err());
        assert!(!p.tftp_root.join("dfleet/c/8/vmlinuz").exists());
    }

    #[test]
    fn a_file_no_longer_rendered_is_removed_and_foreign_files_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let p = paths(dir.path());
        let m = dir.path().join("manifest");
        let a = file(Tree::Tftp, "pxelinux.cfg/01-aa", "a\n");
        let b = file(Tree::Tftp, "pxelinux.cfg/01-bb", "b\n");
        apply_ok(&[a.clone(), b], &p, &m);
        fs::write(p.tftp_root.join("pxelinux.cfg/admins-own"), "mine").unwrap();
        let c = apply_ok(&[a], &p, &m);
        assert_eq!(c.removed, vec![p.tftp_root.join("pxelinux.cfg/01-bb")]);
        assert!(!p.tftp_root.join("pxelinux.cfg/01-bb").exists());
        assert_eq!(
            fs::read_to_string(p.tftp_root.join("pxelinux.cfg/admins-own")).unwrap(),
            "mine"
        );
    }

    #[test]
    fn an_existing_file_dfleet_does_not_own_stops_the_apply() {
        let dir = tempfile::tempdir().unwrap();
        let p = paths(dir.path());
        fs::create_dir_all(&p.dhcp_root).unwrap();
        fs::write(p.dhcp_root.join("dhcpd.conf"), "admin's\n").unwrap();
        let err = apply(
            &[file(Tree::Dhcp, "dhcpd.conf", "ours\n")],
            &p,
            &dir.path().join("manifest"),
            ok_hooks(&mut |_| Ok(()), &mut |_| Ok(())),
        )
        .unwrap_err();
        assert!(matches!(err, WriteError::NotOurs(_)), "{err}");
        assert_eq!(
            fs::read_to_string(p.dhcp_root.join("dhcpd.conf")).unwrap(),
            "admin's\n"
        );
    }

    #[test]
    fn a_failure_after_k_of_n_steps_leaves_the_previous_tree_intact() {
        let n = 6;
        for k in 0..=n {
            let dir = tempfile::tempdir().unwrap();
            let p = paths(dir.path());
            let m = dir.path().join("manifest");
            let old: Vec<GeneratedFile> = (0..n)
                .map(|i| file(Tree::Tftp, &format!("f{i}"), &format!("old {i}\n")))
                .collect();
            apply_ok(&old, &p, &m);
            let before = snapshot(dir.path());
            // New tree: four changed, one new, one (f5) removed.
            let mut new: Vec<GeneratedFile> = (0..n - 2)
                .map(|i| file(Tree::Tftp, &format!("f{i}"), &format!("new {i}\n")))
                .collect();
            new.push(file(Tree::Tftp, "f4", "old 4\n"));
            new.push(file(Tree::Tftp, "g", "new g\n"));
            let result = apply(
                &new,
                &p,
                &m,
                ok_hooks(&mut |_| Ok(()), &mut |step| {
                    if step == k {
                        Err(std::io::Error::other("injected failure"))
                    } else {
                        Ok(())
                    }
                }),
            );
            // Steps: 4 changed + 1 created + 1 removed = 6; k == 6 succeeds.
            if k < n {
                assert!(result.is_err(), "k={k}");
                assert_eq!(
                    snapshot(dir.path()),
                    before,
                    "tree changed after a failure at step {k}"
                );
            } else {
                let c = result.unwrap();
                assert_eq!(
                    (c.changed.len(), c.created.len(), c.removed.len()),
                    (4, 1, 1)
                );
            }
        }
    }

    #[test]
    fn a_failed_validation_replaces_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = paths(dir.path());
        let m = dir.path().join("manifest");
        apply_ok(&[file(Tree::Dhcp, "dhcpd.conf", "good;\n")], &p, &m);
        let before = snapshot(dir.path());
        let mut seen = Vec::new();
        let err = apply(
            &[file(Tree::Dhcp, "dhcpd.conf", "bad\n")],
            &p,
            &m,
            ok_hooks(
                &mut |staged| {
                    seen = staged.to_vec();
                    Err("dhcpd -t: line 1: syntax error".into())
                },
                &mut |_| Ok(()),
            ),
        )
        .unwrap_err();
        assert!(err.to_string().contains("line 1: syntax error"), "{err}");
        assert_eq!(seen.len(), 1);
        assert_eq!(snapshot(dir.path()), before);
    }

    #[test]
    fn paths_may_not_leave_their_tree() {
        let p = paths(Path::new("/x"));
        assert!(target(&p, &file(Tree::Tftp, "../etc/passwd", "")).is_err());
        assert!(target(&p, &file(Tree::Tftp, "/etc/passwd", "")).is_err());
        assert_eq!(
            target(&p, &file(Tree::Tftp, "a/b", "")).unwrap(),
            PathBuf::from("/x/tftp/a/b")
        );
    }
}
