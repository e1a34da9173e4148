//! The image store: every generation of every image, as files on the
//! management host, so that the CLI (which builds and edits trees) and the
//! daemon (which renders boot files and collects garbage) read one truth.
//!
//! ```text
//! <images_root>/<image>/
//!     .lock              flock: one changing command per image at a time
//!     <gen>/             the root tree (exported read-only once published)
//!     <gen>.toml         the generation's record (state, parent, hashes)
//!     <gen>.manifest     the content manifest, written at publish
//!     <gen>.boot/        vmlinuz and initrd.img, copied to the TFTP root
//!     .<gen>.partial/    a tree being built or copied; never a generation
//! ```
//!
//! A record is replaced atomically (temp file, fsync, rename), so a crash
//! leaves either the old or the new state, never half of one.

use std::fs;
use std::io::Write as _;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use dfleet_proto::domain::{Generation, GenerationRef};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Record { path: PathBuf, message: String },
    #[error(
        "invalid image name {0:?}: use 1 to 63 lowercase letters, digits, '-' or '_', starting with a letter or digit"
    )]
    BadName(String),
    #[error("image {image} is busy: another dfleet command is changing it (lock {lock})")]
    Busy { image: String, lock: PathBuf },
    #[error("no generation {0} in the image store")]
    NoGeneration(GenerationRef),
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Where a generation is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GenState {
    /// Being changed with `image exec`/`shell`/`enable`; never booted.
    Open,
    /// Frozen, exported and bootable.
    Published,
    /// Withdrawn by `dfleet image retire`: no longer exported or assignable,
    /// its tree kept until `dfleet image gc`.
    Retired,
    /// A failed build or publish left it unusable; `image edit` starts over
    /// from the last published generation.
    Broken,
}

impl std::fmt::Display for GenState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GenState::Open => "open",
            GenState::Published => "published",
            GenState::Retired => "retired",
            GenState::Broken => "broken",
        })
    }
}

/// The kernel and initramfs a published generation boots, as copied next to
/// the tree (`<gen>.boot/`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootFiles {
    pub kernel_version: String,
    pub kernel_sha256: String,
    pub kernel_size: u64,
    pub initrd_sha256: String,
    pub initrd_size: u64,
}

/// One generation's record, `<gen>.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub image: String,
    pub generation: u64,
    pub state: GenState,
    /// The generation this one was copied from (`image edit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<u64>,
    /// How the tree was made: `debootstrap debian12`, `copy of 7 (full copy)`…
    pub origin: String,
    /// Milliseconds since the epoch.
    pub created_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_ms: Option<u64>,
    /// The manifest's digest: the generation's content hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<BootFiles>,
    /// Why a generation is broken, or what publish warned about.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl Record {
    /// A record with no parent, publish facts or notes yet.
    pub fn new(
        g: &GenerationRef,
        state: GenState,
        origin: impl Into<String>,
        created_ms: u64,
    ) -> Record {
        Record {
            image: g.image.clone(),
            generation: g.generation.0,
            state,
            parent: None,
            origin: origin.into(),
            created_ms,
            published_ms: None,
            digest: None,
            size_bytes: None,
            boot: None,
            notes: Vec::new(),
        }
    }

    pub fn generation_ref(&self) -> GenerationRef {
        GenerationRef {
            image: self.image.clone(),
            generation: Generation(self.generation),
        }
    }
}

/// Checks an image name: it becomes a directory and part of TFTP paths.
pub fn check_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadName(name.to_string()))
    }
}

/// The store rooted at `[paths] images_root`.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
}

/// An exclusive hold on one image; released when dropped (or when the
/// process dies, as flock locks are).
#[derive(Debug)]
pub struct ImageLock {
    _file: fs::File,
}

impl ImageStore {
    pub fn new(root: impl Into<PathBuf>) -> ImageStore {
        ImageStore { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn image_dir(&self, image: &str) -> PathBuf {
        self.root.join(image)
    }

    /// The root tree of a generation.
    pub fn tree(&self, g: &GenerationRef) -> PathBuf {
        self.image_dir(&g.image).join(g.generation.0.to_string())
    }

    pub fn record_path(&self, g: &GenerationRef) -> PathBuf {
        self.image_dir(&g.image)
            .join(format!("{}.toml", g.generation.0))
    }

    pub fn manifest_path(&self, g: &GenerationRef) -> PathBuf {
        self.image_dir(&g.image)
            .join(format!("{}.manifest", g.generation.0))
    }

    /// Where the generation's kernel (`vmlinuz`) and initramfs
    /// (`initrd.img`) wait to be copied to the TFTP root.
    pub fn boot_dir(&self, g: &GenerationRef) -> PathBuf {
        self.image_dir(&g.image)
            .join(format!("{}.boot", g.generation.0))
    }

    /// Where a tree is built before it becomes generation `g`.
    pub fn partial_tree(&self, g: &GenerationRef) -> PathBuf {
        self.image_dir(&g.image)
            .join(format!(".{}.partial", g.generation.0))
    }

    /// Takes the image's lock, or says who has it. Creates the image's
    /// directory on first use.
    pub fn lock(&self, image: &str) -> Result<ImageLock, StoreError> {
        check_name(image)?;
        let dir = self.image_dir(image);
        fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
        let path = dir.join(".lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io("opening", &path))?;
        match rustix::fs::flock(
            file.as_fd(),
            rustix::fs::FlockOperation::NonBlockingLockExclusive,
        ) {
            Ok(()) => Ok(ImageLock { _file: file }),
            Err(rustix::io::Errno::WOULDBLOCK) => Err(StoreError::Busy {
                image: image.to_string(),
                lock: path,
            }),
            Err(e) => Err(io("locking", &path)(e.into())),
        }
    }

    /// Image names, sorted.
    pub fn images(&self) -> Result<Vec<String>, StoreError> {
        let entries = match fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("listing", &self.root)(e)),
        };
        let mut names = Vec::new();
        for e in entries {
            let e = e.map_err(io("listing", &self.root))?;
            if let Some(name) = e.file_name().to_str()
                && check_name(name).is_ok()
                && e.path().is_dir()
            {
                names.push(name.to_string());
            }
        }
        names.sort();
        Ok(names)
    }

    /// Every generation record of `image`, oldest first.
    pub fn generations(&self, image: &str) -> Result<Vec<Record>, StoreError> {
        let dir = self.image_dir(image);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("listing", &dir)(e)),
        };
        let mut records = Vec::new();
        for e in entries {
            let e = e.map_err(io("listing", &dir))?;
            let name = e.file_name();
            let Some(n) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".toml"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            records.push(self.record(&GenerationRef {
                image: image.to_string(),
                generation: Generation(n),
            })?);
        }
        records.sort_by_key(|r| r.generation);
        Ok(records)
    }

    /// Every record of every image.
    pub fn all(&self) -> Result<Vec<Record>, StoreError> {
        let mut all = Vec::new();
        for image in self.images()? {
            all.extend(self.generations(&image)?);
        }
        Ok(all)
    }

    /// One generation's record.
    pub fn record(&self, g: &GenerationRef) -> Result<Record, StoreError> {
        let path = self.record_path(g);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NoGeneration(g.clone()));
            }
            Err(e) => return Err(io("reading", &path)(e)),
        };
        let record: Record = toml::from_str(&text).map_err(|e| StoreError::Record {
            path: path.clone(),
            message: e.to_string(),
        })?;
        if record.image != g.image || record.generation != g.generation.0 {
            return Err(StoreError::Record {
                path,
                message: format!("describes {}:{}, not {g}", record.image, record.generation),
            });
        }
        Ok(record)
    }

    /// Replaces a record atomically.
    pub fn write_record(&self, r: &Record) -> Result<(), StoreError> {
        check_name(&r.image)?;
        let path = self.record_path(&r.generation_ref());
        let text = toml::to_string(r).map_err(|e| StoreError::Record {
            path: path.clone(),
            message: e.to_string(),
        })?;
        write_atomic(&path, text.as_bytes(), 0o644)
    }

    /// The newest generation of `image` in any state.
    pub fn latest(&self, image: &str) -> Result<Option<Record>, StoreError> {
        Ok(self.generations(image)?.pop())
    }

    /// The newest published generation of `image`.
    pub fn latest_published(&self, image: &str) -> Result<Option<Record>, StoreError> {
        Ok(self
            .generations(image)?
            .into_iter()
            .rev()
            .find(|r| r.state == GenState::Published))
    }

    /// Copies a generation's kernel and initramfs into its boot directory
    /// (`vmlinuz`, `initrd.img`, each atomically) and returns their facts for
    /// the record.
    pub fn install_boot_files(
        &self,
        g: &GenerationRef,
        kernel_version: &str,
        kernel: &Path,
        initrd: &Path,
    ) -> Result<BootFiles, StoreError> {
        let dir = self.boot_dir(g);
        fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
        let (kernel_sha256, kernel_size) = copy_hashed(kernel, &dir.join("vmlinuz"))?;
        let (initrd_sha256, initrd_size) = copy_hashed(initrd, &dir.join("initrd.img"))?;
        Ok(BootFiles {
            kernel_version: kernel_version.to_string(),
            kernel_sha256,
            kernel_size,
            initrd_sha256,
            initrd_size,
        })
    }

    /// Every published generation, the ones the boot network serves.
    pub fn published(&self) -> Result<Vec<Record>, StoreError> {
        Ok(self
            .all()?
            .into_iter()
            .filter(|r| r.state == GenState::Published)
            .collect())
    }
}

/// Copies `from` to `to` (temp file, fsync, rename) and returns the
/// content's SHA-256 and size.
fn copy_hashed(from: &Path, to: &Path) -> Result<(String, u64), StoreError> {
    use sha2::Digest as _;
    use std::io::Read as _;
    let mut src = fs::File::open(from).map_err(io("opening", from))?;
    let tmp = to.with_extension("tmp");
    let result = (|| {
        let mut out = fs::File::create(&tmp).map_err(io("creating", &tmp))?;
        let mut hasher = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut size = 0u64;
        loop {
            let n = src.read(&mut buf).map_err(io("reading", from))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(io("writing", &tmp))?;
            size += n as u64;
        }
        out.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .map_err(io("setting the mode of", &tmp))?;
        out.sync_all().map_err(io("syncing", &tmp))?;
        fs::rename(&tmp, to).map_err(io("renaming into place", to))?;
        let hex: String = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok((hex, size))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Writes `bytes` to `path` through a temp file in the same directory,
/// fsyncs it, renames it into place and fsyncs the directory.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io("creating", &tmp))?;
        f.write_all(bytes).map_err(io("writing", &tmp))?;
        f.sync_all().map_err(io("syncing", &tmp))?;
        fs::rename(&tmp, path).map_err(io("renaming into place", path))?;
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("syncing", dir))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(image: &str, generation: u64, state: GenState) -> Record {
        let g = GenerationRef {
            image: image.into(),
            generation: Generation(generation),
        };
        let mut r = Record::new(&g, state, "test", 1_700_000_000_000 + generation);
        r.parent = generation.checked_sub(1).filter(|p| *p > 0);
        r
    }

    #[test]
    fn image_names_are_checked() {
        for ok in ["compute", "gpu-2", "a", "x_y"] {
            check_name(ok).unwrap();
        }
        for bad in ["", "Compute", "-x", "a/b", "..", "a b", &"x".repeat(64)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn records_round_trip_and_list_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::new(dir.path());
        let mut r2 = record("compute", 2, GenState::Open);
        r2.notes.push("warning: apt-daily.timer is enabled".into());
        for r in [
            record("compute", 10, GenState::Published),
            r2.clone(),
            record("compute", 1, GenState::Published),
            record("gpu", 1, GenState::Broken),
        ] {
            store.write_record(&r).unwrap();
        }
        assert_eq!(store.images().unwrap(), ["compute", "gpu"]);
        let gens: Vec<u64> = store
            .generations("compute")
            .unwrap()
            .iter()
            .map(|r| r.generation)
            .collect();
        assert_eq!(gens, [1, 2, 10]);
        assert_eq!(store.record(&r2.generation_ref()).unwrap(), r2);
        assert_eq!(store.latest("compute").unwrap().unwrap().generation, 10);
        assert_eq!(
            store
                .published()
                .unwrap()
                .iter()
                .map(|r| r.generation_ref().to_string())
                .collect::<Vec<_>>(),
            ["compute:1", "compute:10"]
        );
    }

    #[test]
    fn a_damaged_record_names_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::new(dir.path());
        let g = record("compute", 3, GenState::Open).generation_ref();
        fs::create_dir_all(store.image_dir("compute")).unwrap();
        fs::write(store.record_path(&g), "state = \"sideways\"\n").unwrap();
        let e = store.record(&g).unwrap_err().to_string();
        assert!(e.contains("compute/3.toml"), "{e}");
        assert!(matches!(
            store.record(&record("compute", 4, GenState::Open).generation_ref()),
            Err(StoreError::NoGeneration(_))
        ));
    }

    #[test]
    fn boot_files_are_copied_with_their_hash() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::new(dir.path().join("images"));
        let g = record("compute", 3, GenState::Open).generation_ref();
        fs::write(dir.path().join("k"), b"abc").unwrap();
        fs::write(dir.path().join("i"), b"").unwrap();
        let b = store
            .install_boot_files(
                &g,
                "6.1.0-test",
                &dir.path().join("k"),
                &dir.path().join("i"),
            )
            .unwrap();
        // SHA-256 of "abc" and of nothing (FIPS 180-2 test vectors).
        assert_eq!(
            b.kernel_sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            b.initrd_sha256,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!((b.kernel_size, b.initrd_size), (3, 0));
        assert_eq!(
            fs::read(store.boot_dir(&g).join("vmlinuz")).unwrap(),
            b"abc"
        );
    }

    #[test]
    fn one_command_at_a_time_per_image() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::new(dir.path());
        let held = store.lock("compute").unwrap();
        let e = store.lock("compute").unwrap_err();
        assert!(matches!(e, StoreError::Busy { .. }), "{e}");
        store.lock("gpu").unwrap();
        drop(held);
        store.lock("compute").unwrap();
    }
}
