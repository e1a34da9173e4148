//! The content manifest of an image generation: every path with its kind,
//! mode, owner, content hash, link target, device numbers and extended
//! attributes, in a line-oriented text whose sha256 is the generation's hash.
//! `verify` rebuilds it from the tree and names every difference.
//!
//! Timestamps are deliberately absent: touching a file is not tampering, and
//! a copy of a generation must hash the same as the generation.
//!
//! The text, one entry per line after the `# dfleet manifest v1` header,
//! fields separated by single spaces:
//!
//! ```text
//! . dir 0755 0:0
//! bin symlink 0777 0:0 target=usr/bin
//! dev/null char 0666 0:0 dev=1:3
//! usr/bin/ping file 0755 0:0 size=90568 sha256=<64 hex> xattr:security.capability=0100000200200000…
//! usr/bin/pong file 0755 0:0 size=90568 same-inode-as=usr/bin/ping
//! ```
//!
//! Paths, link targets and attribute names are percent-escaped: every byte
//! outside `0x21..=0x7e`, and `%` itself, is written `%XX` (upper-case hex),
//! so any byte sequence round-trips and the text is plain ASCII. Only that
//! canonical form parses, so parsing and printing a manifest gives back the
//! same text and the same digest.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fmt::{self, Write as _};
use std::fs;
use std::io::{self, Read as _, Write as _};
use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use sha2::{Digest as _, Sha256};

use super::tree::{self, FileKind, Node, TreeError};

const HEADER: &str = "# dfleet manifest v1";

/// Files are read in pieces this large: big enough that a 800 MB tree costs
/// few system calls.
const READ_BUFFER: usize = 1 << 20;

/// Hashing runs on this many threads; the management host is shared with the
/// coordinator, so the walk never takes every core.
const HASH_THREADS: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{}: line {line}: {message}", file.display())]
    Parse {
        file: PathBuf,
        line: usize,
        message: String,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ManifestError + 'a {
    move |source| ManifestError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// A sha256 digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256Sum(pub [u8; 32]);

impl fmt::Display for Sha256Sum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Where a regular file's content is recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    Sha256(Sha256Sum),
    /// A further name of a hard-linked file: the content is that of the
    /// entry at this path, the smallest name of the inode.
    SameInodeAs(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File { size: u64, content: Content },
    Dir,
    Symlink { target: OsString },
    CharDevice { major: u32, minor: u32 },
    BlockDevice { major: u32, minor: u32 },
    Fifo,
    Socket,
}

impl EntryKind {
    /// The word the manifest uses for this kind.
    pub fn name(&self) -> &'static str {
        match self {
            EntryKind::File { .. } => "file",
            EntryKind::Dir => "dir",
            EntryKind::Symlink { .. } => "symlink",
            EntryKind::CharDevice { .. } => "char",
            EntryKind::BlockDevice { .. } => "block",
            EntryKind::Fifo => "fifo",
            EntryKind::Socket => "socket",
        }
    }
}

/// One path of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative to the tree's root; the root itself is `.`.
    pub path: PathBuf,
    pub kind: EntryKind,
    /// Permission bits including setuid, setgid and sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Every extended attribute, sorted by name bytes.
    pub xattrs: Vec<(OsString, Vec<u8>)>,
}

/// The content manifest of a tree: its entries sorted by path bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    entries: Vec<Entry>,
}

fn path_bytes(p: &Path) -> &[u8] {
    p.as_os_str().as_bytes()
}

impl Manifest {
    /// Reads the whole tree under `root` (a directory; no mount point may be
    /// inside it) and hashes every regular file once per inode.
    pub fn build(root: &Path) -> Result<Manifest, ManifestError> {
        let mut nodes = tree::walk(root)?;
        for node in &mut nodes {
            if node.rel.as_os_str().is_empty() {
                node.rel = PathBuf::from(".");
            }
        }
        nodes.sort_by(|a, b| path_bytes(&a.rel).cmp(path_bytes(&b.rel)));

        let mut entries = Vec::with_capacity(nodes.len());
        // The smallest path of every multiply-linked inode, which alone is hashed.
        let mut first_names: HashMap<((u32, u32), u64), PathBuf> = HashMap::new();
        let mut to_hash = Vec::new();
        for node in &nodes {
            let meta = &node.meta;
            let kind = match meta.kind {
                FileKind::File => {
                    let inode = (meta.dev, meta.ino);
                    match first_names.get(&inode) {
                        Some(first) if meta.nlink > 1 => EntryKind::File {
                            size: meta.size,
                            content: Content::SameInodeAs(first.clone()),
                        },
                        _ => {
                            if meta.nlink > 1 {
                                first_names.insert(inode, node.rel.clone());
                            }
                            to_hash.push(entries.len());
                            // Filled in by the hashing below.
                            EntryKind::File {
                                size: meta.size,
                                content: Content::Sha256(Sha256Sum([0; 32])),
                            }
                        }
                    }
                }
                FileKind::Dir => EntryKind::Dir,
                FileKind::Symlink => EntryKind::Symlink {
                    target: fs::read_link(&node.path)
                        .map_err(io_err("reading symlink", &node.path))?
                        .into_os_string(),
                },
                FileKind::CharDevice => EntryKind::CharDevice {
                    major: meta.rdev.0,
                    minor: meta.rdev.1,
                },
                FileKind::BlockDevice => EntryKind::BlockDevice {
                    major: meta.rdev.0,
                    minor: meta.rdev.1,
                },
                FileKind::Fifo => EntryKind::Fifo,
                FileKind::Socket => EntryKind::Socket,
            };
            entries.push(Entry {
                path: node.rel.clone(),
                kind,
                mode: meta.perm,
                uid: meta.uid,
                gid: meta.gid,
                xattrs: read_xattrs(&node.path)?,
            });
        }

        for (index, hashed) in hash_files(&nodes, &to_hash)? {
            if let EntryKind::File { size, content } = &mut entries[index].kind {
                // What was read is what is recorded, should the file have
                // changed size since it was listed.
                *size = hashed.size;
                *content = Content::Sha256(hashed.sum);
            }
        }
        Ok(Manifest { entries })
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The bytes of content the manifest covers, each hard-linked file once.
    pub fn total_bytes(&self) -> u64 {
        self.entries
            .iter()
            .map(|e| match &e.kind {
                EntryKind::File {
                    size,
                    content: Content::Sha256(_),
                } => *size,
                _ => 0,
            })
            .sum()
    }

    pub fn to_text(&self) -> String {
        let mut out = String::with_capacity(HEADER.len() + 1 + self.entries.len() * 120);
        out.push_str(HEADER);
        out.push('\n');
        for e in &self.entries {
            escape_into(&mut out, path_bytes(&e.path));
            let _ = write!(out, " {} {:04o} {}:{}", e.kind.name(), e.mode, e.uid, e.gid);
            match &e.kind {
                EntryKind::File { size, content } => {
                    let _ = write!(out, " size={size}");
                    match content {
                        Content::Sha256(sum) => {
                            let _ = write!(out, " sha256={sum}");
                        }
                        Content::SameInodeAs(first) => {
                            out.push_str(" same-inode-as=");
                            escape_into(&mut out, path_bytes(first));
                        }
                    }
                }
                EntryKind::Symlink { target } => {
                    out.push_str(" target=");
                    escape_into(&mut out, target.as_bytes());
                }
                EntryKind::CharDevice { major, minor }
                | EntryKind::BlockDevice { major, minor } => {
                    let _ = write!(out, " dev={major}:{minor}");
                }
                EntryKind::Dir | EntryKind::Fifo | EntryKind::Socket => {}
            }
            for (name, value) in &e.xattrs {
                out.push_str(" xattr:");
                escape_into(&mut out, name.as_bytes());
                out.push('=');
                for b in value {
                    let _ = write!(out, "{b:02x}");
                }
            }
            out.push('\n');
        }
        out
    }

    /// The generation's hash: the hex sha256 of `to_text()`.
    pub fn digest(&self) -> String {
        Sha256Sum(Sha256::digest(self.to_text().as_bytes()).into()).to_string()
    }

    /// Parses a manifest's text; `source` is the file it came from, named
    /// in errors with the line number and the bad value.
    pub fn parse(text: &str, source: &Path) -> Result<Manifest, ManifestError> {
        let err = |line: usize, message: String| ManifestError::Parse {
            file: source.to_path_buf(),
            line,
            message,
        };
        let Some(body) = text.strip_suffix('\n') else {
            return Err(err(
                text.lines().count().max(1),
                "the manifest does not end with a newline (truncated?)".into(),
            ));
        };
        let mut lines = body.split('\n');
        let header = lines.next().unwrap_or_default();
        if header != HEADER {
            return Err(err(
                1,
                format!("expected the header `{HEADER}`, found `{header}`"),
            ));
        }
        let mut entries: Vec<Entry> = Vec::new();
        // The hashed files, for checking `same-inode-as` references.
        let mut hashed: HashSet<PathBuf> = HashSet::new();
        for (i, line) in lines.enumerate() {
            let number = i + 2;
            let entry = parse_entry(line).map_err(|m| err(number, m))?;
            if let Some(prev) = entries.last()
                && path_bytes(&prev.path) >= path_bytes(&entry.path)
            {
                return Err(err(
                    number,
                    format!(
                        "path `{}` is not after `{}` (entries must be sorted and unique)",
                        escape(path_bytes(&entry.path)),
                        escape(path_bytes(&prev.path))
                    ),
                ));
            }
            if let EntryKind::File { content, .. } = &entry.kind {
                match content {
                    Content::Sha256(_) => {
                        hashed.insert(entry.path.clone());
                    }
                    Content::SameInodeAs(first) if !hashed.contains(first) => {
                        return Err(err(
                            number,
                            format!(
                                "same-inode-as `{}` is not a hashed file listed before",
                                escape(path_bytes(first))
                            ),
                        ));
                    }
                    Content::SameInodeAs(_) => {}
                }
            }
            entries.push(entry);
        }
        Ok(Manifest { entries })
    }

    /// Writes the manifest atomically: a temporary file in the same
    /// directory, fsynced, renamed over `path`, and the directory fsynced.
    pub fn write(&self, path: &Path) -> Result<(), ManifestError> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let mut tmp_name = OsString::from(".");
        tmp_name.push(path.file_name().unwrap_or(OsStr::new("manifest")));
        tmp_name.push(format!(".tmp{}", std::process::id()));
        let tmp = dir.join(tmp_name);
        let result = (|| {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)
                .map_err(io_err("creating", &tmp))?;
            file.write_all(self.to_text().as_bytes())
                .map_err(io_err("writing", &tmp))?;
            file.sync_all().map_err(io_err("syncing", &tmp))?;
            fs::rename(&tmp, path).map_err(io_err("renaming into place", path))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result?;
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("syncing directory", dir))
    }

    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let bytes = fs::read(path).map_err(io_err("reading", path))?;
        let text = String::from_utf8(bytes).map_err(|e| ManifestError::Parse {
            file: path.to_path_buf(),
            line: e.as_bytes()[..e.utf8_error().valid_up_to()]
                .iter()
                .filter(|b| **b == b'\n')
                .count()
                + 1,
            message: "the manifest is not plain text".into(),
        })?;
        Manifest::parse(&text, path)
    }

    /// Rebuilds the manifest of `root` and compares it with this one.
    pub fn verify(&self, root: &Path) -> Result<Vec<Difference>, ManifestError> {
        Ok(self.compare(&Manifest::build(root)?))
    }

    /// Every difference from this (expected) manifest to `actual`, in path order.
    pub fn compare(&self, actual: &Manifest) -> Vec<Difference> {
        let (old_sums, new_sums) = (self.content_sums(), actual.content_sums());
        let mut out = Vec::new();
        let (mut a, mut b) = (
            self.entries.iter().peekable(),
            actual.entries.iter().peekable(),
        );
        loop {
            let order = match (a.peek(), b.peek()) {
                (None, None) => break,
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some(x), Some(y)) => path_bytes(&x.path).cmp(path_bytes(&y.path)),
            };
            match order {
                std::cmp::Ordering::Less => {
                    let e = a.next().unwrap();
                    out.push(Difference {
                        path: e.path.clone(),
                        change: Change::Removed,
                    });
                }
                std::cmp::Ordering::Greater => {
                    let e = b.next().unwrap();
                    out.push(Difference {
                        path: e.path.clone(),
                        change: Change::Added,
                    });
                }
                std::cmp::Ordering::Equal => {
                    let (x, y) = (a.next().unwrap(), b.next().unwrap());
                    let details = compare_entries(x, y, &old_sums, &new_sums);
                    if !details.is_empty() {
                        out.push(Difference {
                            path: x.path.clone(),
                            change: Change::Changed(details),
                        });
                    }
                }
            }
        }
        out
    }

    /// The content hash of every regular file, hard links resolved.
    fn content_sums(&self) -> HashMap<&Path, Sha256Sum> {
        let mut sums = HashMap::new();
        for e in &self.entries {
            if let EntryKind::File { content, .. } = &e.kind {
                let sum = match content {
                    Content::Sha256(sum) => Some(*sum),
                    Content::SameInodeAs(first) => sums.get(first.as_path()).copied(),
                };
                if let Some(sum) = sum {
                    sums.insert(e.path.as_path(), sum);
                }
            }
        }
        sums
    }
}

fn compare_entries(
    old: &Entry,
    new: &Entry,
    old_sums: &HashMap<&Path, Sha256Sum>,
    new_sums: &HashMap<&Path, Sha256Sum>,
) -> Vec<Detail> {
    let mut details = Vec::new();
    if old.kind.name() != new.kind.name() {
        // A different kind of object: its other fields mean different things.
        details.push(Detail::Kind {
            from: old.kind.name(),
            to: new.kind.name(),
        });
        return details;
    }
    match (&old.kind, &new.kind) {
        (
            EntryKind::File {
                size: old_size,
                content: old_content,
            },
            EntryKind::File {
                size: new_size,
                content: new_content,
            },
        ) => {
            let from = old_sums.get(old.path.as_path()).copied();
            let to = new_sums.get(new.path.as_path()).copied();
            if old_size != new_size || from != to {
                details.push(Detail::Content {
                    from_size: *old_size,
                    to_size: *new_size,
                    from,
                    to,
                });
            }
            let link = |c: &Content| match c {
                Content::SameInodeAs(first) => Some(first.clone()),
                Content::Sha256(_) => None,
            };
            if link(old_content) != link(new_content) {
                details.push(Detail::HardLink {
                    from: link(old_content),
                    to: link(new_content),
                });
            }
        }
        (EntryKind::Symlink { target: from }, EntryKind::Symlink { target: to }) if from != to => {
            details.push(Detail::LinkTarget {
                from: from.clone(),
                to: to.clone(),
            });
        }
        (
            EntryKind::CharDevice { major, minor } | EntryKind::BlockDevice { major, minor },
            EntryKind::CharDevice {
                major: new_major,
                minor: new_minor,
            }
            | EntryKind::BlockDevice {
                major: new_major,
                minor: new_minor,
            },
        ) if (major, minor) != (new_major, new_minor) => {
            details.push(Detail::Device {
                from: (*major, *minor),
                to: (*new_major, *new_minor),
            });
        }
        _ => {}
    }
    if old.mode != new.mode {
        details.push(Detail::Mode {
            from: old.mode,
            to: new.mode,
        });
    }
    if (old.uid, old.gid) != (new.uid, new.gid) {
        details.push(Detail::Owner {
            from: (old.uid, old.gid),
            to: (new.uid, new.gid),
        });
    }
    let (mut x, mut y) = (old.xattrs.iter().peekable(), new.xattrs.iter().peekable());
    loop {
        let change = match (x.peek(), y.peek()) {
            (None, None) => break,
            (Some(_), None) => XattrChange::Removed,
            (None, Some(_)) => XattrChange::Added,
            (Some((a, _)), Some((b, _))) => match a.as_bytes().cmp(b.as_bytes()) {
                std::cmp::Ordering::Less => XattrChange::Removed,
                std::cmp::Ordering::Greater => XattrChange::Added,
                std::cmp::Ordering::Equal => XattrChange::Changed,
            },
        };
        let name = match change {
            XattrChange::Removed => x.next().unwrap().0.clone(),
            XattrChange::Added => y.next().unwrap().0.clone(),
            XattrChange::Changed => {
                let ((name, a), (_, b)) = (x.next().unwrap(), y.next().unwrap());
                if a == b {
                    continue;
                }
                name.clone()
            }
        };
        details.push(Detail::Xattr { name, change });
    }
    details
}

/// How one path of a tree differs from its manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// Relative to the tree's root, as in the manifest (`.` for the root).
    pub path: PathBuf,
    pub change: Change,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// In the tree, not in the manifest.
    Added,
    /// In the manifest, not in the tree.
    Removed,
    Changed(Vec<Detail>),
}

/// One thing that differs about a path present in both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detail {
    Kind {
        from: &'static str,
        to: &'static str,
    },
    /// `None` where a hard link points at a name no longer hashed.
    Content {
        from_size: u64,
        to_size: u64,
        from: Option<Sha256Sum>,
        to: Option<Sha256Sum>,
    },
    /// `Some(first)`: the path was another name of `first`'s inode.
    HardLink {
        from: Option<PathBuf>,
        to: Option<PathBuf>,
    },
    LinkTarget {
        from: OsString,
        to: OsString,
    },
    Device {
        from: (u32, u32),
        to: (u32, u32),
    },
    Mode {
        from: u32,
        to: u32,
    },
    Owner {
        from: (u32, u32),
        to: (u32, u32),
    },
    Xattr {
        name: OsString,
        change: XattrChange,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XattrChange {
    Added,
    Removed,
    Changed,
}

/// The start of a digest, enough for an admin to tell two apart.
fn short(sum: Option<Sha256Sum>) -> String {
    match sum {
        Some(sum) => format!("{}…", &sum.to_string()[..8]),
        None => "unknown".into(),
    }
}

impl fmt::Display for Detail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Detail::Kind { from, to } => write!(f, "kind {from} → {to}"),
            Detail::Content {
                from_size,
                to_size,
                from,
                to,
            } => {
                f.write_str("content (")?;
                if from_size != to_size {
                    write!(f, "size {from_size} → {to_size}, ")?;
                }
                write!(f, "sha256 {} → {})", short(*from), short(*to))
            }
            Detail::HardLink { from, to } => {
                let side = |p: &Option<PathBuf>| match p {
                    Some(first) => format!("same inode as {}", display_path(first)),
                    None => "its own inode".to_string(),
                };
                write!(f, "hard link: {} → {}", side(from), side(to))
            }
            Detail::LinkTarget { from, to } => write!(
                f,
                "link target {} → {}",
                escape(from.as_bytes()),
                escape(to.as_bytes())
            ),
            Detail::Device { from, to } => {
                write!(f, "device {}:{} → {}:{}", from.0, from.1, to.0, to.1)
            }
            Detail::Mode { from, to } => write!(f, "mode {from:04o} → {to:04o}"),
            Detail::Owner { from, to } => {
                write!(f, "owner {}:{} → {}:{}", from.0, from.1, to.0, to.1)
            }
            Detail::Xattr { name, change } => {
                let what = match change {
                    XattrChange::Added => "added",
                    XattrChange::Removed => "removed",
                    XattrChange::Changed => "changed",
                };
                write!(f, "xattr {} {what}", escape(name.as_bytes()))
            }
        }
    }
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", display_path(&self.path))?;
        match &self.change {
            Change::Added => f.write_str("added"),
            Change::Removed => f.write_str("removed"),
            Change::Changed(details) => {
                for (i, d) in details.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{d}")?;
                }
                Ok(())
            }
        }
    }
}

/// A manifest path as the admin knows it inside the image: `/usr/bin/ping`,
/// `/` for the root, escaped as in the manifest so a strange name cannot
/// break the line.
fn display_path(path: &Path) -> String {
    if path == Path::new(".") {
        "/".into()
    } else {
        format!("/{}", escape(path_bytes(path)))
    }
}

fn needs_escape(b: u8) -> bool {
    !(0x21..=0x7e).contains(&b) || b == b'%'
}

fn escape_into(out: &mut String, bytes: &[u8]) {
    for &b in bytes {
        if needs_escape(b) {
            let _ = write!(out, "%{b:02X}");
        } else {
            out.push(char::from(b));
        }
    }
}

/// Percent-escapes every byte outside `0x21..=0x7e`, and `%`.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    escape_into(&mut out, bytes);
    out
}

/// The inverse of `escape`, accepting only its canonical output.
pub fn unescape(text: &str) -> Result<Vec<u8>, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .filter(|h| h.bytes().all(|c| matches!(c, b'0'..=b'9' | b'A'..=b'F')))
                .ok_or_else(|| format!("bad escape in `{text}` (expected %XX, upper-case hex)"))?;
            let value = u8::from_str_radix(hex, 16).unwrap();
            if !needs_escape(value) {
                return Err(format!(
                    "`%{hex}` in `{text}` escapes a byte that is written as itself"
                ));
            }
            out.push(value);
            i += 3;
        } else if needs_escape(b) {
            return Err(format!("unescaped byte 0x{b:02x} in `{text}`"));
        } else {
            out.push(b);
            i += 1;
        }
    }
    Ok(out)
}

fn parse_path(text: &str) -> Result<PathBuf, String> {
    let bytes = unescape(text)?;
    if bytes.is_empty() {
        return Err("empty path".into());
    }
    Ok(PathBuf::from(OsString::from_vec(bytes)))
}

fn parse_u32(text: &str, what: &str) -> Result<u32, String> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) || text.len() > 10 {
        return Err(format!("bad {what} `{text}`"));
    }
    text.parse().map_err(|_| format!("bad {what} `{text}`"))
}

fn parse_pair(text: &str, what: &str) -> Result<(u32, u32), String> {
    let (a, b) = text
        .split_once(':')
        .ok_or_else(|| format!("bad {what} `{text}` (expected N:N)"))?;
    Ok((parse_u32(a, what)?, parse_u32(b, what)?))
}

fn parse_hex(text: &str, what: &str) -> Result<Vec<u8>, String> {
    let bad = || format!("bad {what} `{text}` (expected lower-case hex)");
    if !text.len().is_multiple_of(2)
        || !text.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(bad());
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).map_err(|_| bad()))
        .collect()
}

/// Takes the next field, which must be `key=value`.
fn field<'a>(
    fields: &mut impl Iterator<Item = &'a str>,
    key: &str,
    kind: &str,
) -> Result<&'a str, String> {
    let f = fields
        .next()
        .ok_or_else(|| format!("a {kind} needs `{key}=`"))?;
    f.strip_prefix(key)
        .and_then(|rest| rest.strip_prefix('='))
        .ok_or_else(|| format!("expected `{key}=…`, found `{f}`"))
}

fn parse_entry(line: &str) -> Result<Entry, String> {
    let mut fields = line.split(' ');
    let path_field = fields.next().unwrap_or_default();
    if path_field.is_empty() {
        return Err(format!("empty path in `{line}`"));
    }
    let path = parse_path(path_field)?;
    let kind_field = fields.next().ok_or("missing kind")?;
    let mode_field = fields.next().ok_or("missing mode")?;
    if mode_field.len() != 4 || !mode_field.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(format!("bad mode `{mode_field}` (expected 4 octal digits)"));
    }
    let mode = u32::from_str_radix(mode_field, 8).unwrap();
    let (uid, gid) = parse_pair(fields.next().ok_or("missing owner")?, "owner")?;
    let kind = match kind_field {
        "file" => {
            let size_field = field(&mut fields, "size", "file")?;
            let size = if size_field.bytes().all(|b| b.is_ascii_digit())
                && !size_field.is_empty()
                && (size_field == "0" || !size_field.starts_with('0'))
            {
                size_field
                    .parse()
                    .map_err(|_| format!("bad size `{size_field}`"))?
            } else {
                return Err(format!("bad size `{size_field}`"));
            };
            let content_field = fields
                .next()
                .ok_or("a file needs `sha256=` or `same-inode-as=`")?;
            let content = if let Some(hex) = content_field.strip_prefix("sha256=") {
                let sum: [u8; 32] = parse_hex(hex, "sha256")?
                    .try_into()
                    .map_err(|_| format!("bad sha256 `{hex}` (expected 64 hex digits)"))?;
                Content::Sha256(Sha256Sum(sum))
            } else if let Some(first) = content_field.strip_prefix("same-inode-as=") {
                Content::SameInodeAs(parse_path(first)?)
            } else {
                return Err(format!(
                    "expected `sha256=…` or `same-inode-as=…`, found `{content_field}`"
                ));
            };
            EntryKind::File { size, content }
        }
        "dir" => EntryKind::Dir,
        "symlink" => {
            let target = unescape(field(&mut fields, "target", "symlink")?)?;
            if target.is_empty() {
                return Err("empty symlink target".into());
            }
            EntryKind::Symlink {
                target: OsString::from_vec(target),
            }
        }
        "char" | "block" => {
            let (major, minor) = parse_pair(field(&mut fields, "dev", "device")?, "device")?;
            if kind_field == "char" {
                EntryKind::CharDevice { major, minor }
            } else {
                EntryKind::BlockDevice { major, minor }
            }
        }
        "fifo" => EntryKind::Fifo,
        "socket" => EntryKind::Socket,
        other => return Err(format!("unknown kind `{other}`")),
    };
    let mut xattrs: Vec<(OsString, Vec<u8>)> = Vec::new();
    for f in fields {
        let rest = f
            .strip_prefix("xattr:")
            .ok_or_else(|| format!("unexpected field `{f}`"))?;
        // Hex values never hold `=`, so the last one ends the name.
        let (name, value) = rest
            .rsplit_once('=')
            .ok_or_else(|| format!("bad xattr `{f}` (expected xattr:NAME=HEX)"))?;
        let name = unescape(name)?;
        if name.is_empty() {
            return Err(format!("bad xattr `{f}`: empty name"));
        }
        if let Some((prev, _)) = xattrs.last()
            && prev.as_bytes() >= name.as_slice()
        {
            return Err(format!(
                "xattr `{}` is not after `{}` (names must be sorted and unique)",
                escape(&name),
                escape(prev.as_bytes())
            ));
        }
        xattrs.push((OsString::from_vec(name), parse_hex(value, "xattr value")?));
    }
    Ok(Entry {
        path,
        kind,
        mode,
        uid,
        gid,
        xattrs,
    })
}

/// Every extended attribute of `path`, sorted by name.
fn read_xattrs(path: &Path) -> Result<Vec<(OsString, Vec<u8>)>, ManifestError> {
    let mut names =
        tree::list_xattrs(path).map_err(io_err("listing the extended attributes of", path))?;
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    names
        .into_iter()
        .map(|name| {
            let value = tree::get_xattr(path, &name).map_err(|e| ManifestError::Io {
                op: "reading an extended attribute of",
                path: path.to_path_buf(),
                source: io::Error::new(e.kind(), format!("{}: {e}", name.to_string_lossy())),
            })?;
            Ok((name, value))
        })
        .collect()
}

/// Hashes the files `nodes[i]` for every `i` in `indices` on
/// `HASH_THREADS` threads; returns `(i, what was read)`.
fn hash_files(nodes: &[Node], indices: &[usize]) -> Result<Vec<(usize, Hashed)>, ManifestError> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<ManifestError>> = Mutex::new(None);
    let results = Mutex::new(Vec::with_capacity(indices.len()));
    std::thread::scope(|s| {
        for _ in 0..HASH_THREADS.min(indices.len()) {
            s.spawn(|| {
                let mut buf = vec![0u8; READ_BUFFER];
                let mut mine = Vec::new();
                while !failed.load(Ordering::Relaxed) {
                    let Some(&index) = indices.get(next.fetch_add(1, Ordering::Relaxed)) else {
                        break;
                    };
                    match hash_file(&nodes[index], &mut buf) {
                        Ok(hashed) => mine.push((index, hashed)),
                        Err(e) => {
                            failed.store(true, Ordering::Relaxed);
                            first_error.lock().unwrap().get_or_insert(e);
                            break;
                        }
                    }
                }
                results.lock().unwrap().extend(mine);
            });
        }
    });
    if let Some(e) = first_error.into_inner().unwrap() {
        return Err(e);
    }
    Ok(results.into_inner().unwrap())
}

/// A file's content as read: its length and sha256.
struct Hashed {
    size: u64,
    sum: Sha256Sum,
}

fn hash_file(node: &Node, buf: &mut [u8]) -> Result<Hashed, ManifestError> {
    let mut file = tree::open_regular(&node.path, &node.meta)?;
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    loop {
        match file.read(buf) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
                total += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err("reading", &node.path)(e)),
        }
    }
    Ok(Hashed {
        size: total,
        sum: Sha256Sum(hasher.finalize().into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: EntryKind) -> Entry {
        Entry {
            path: PathBuf::from(path),
            kind,
            mode: 0o755,
            uid: 0,
            gid: 0,
            xattrs: Vec::new(),
        }
    }

    #[test]
    fn escape_round_trips_every_byte() {
        let all: Vec<u8> = (0..=255).collect();
        let text = escape(&all);
        assert!(text.bytes().all(|b| (0x21..=0x7e).contains(&b)));
        assert_eq!(unescape(&text).unwrap(), all);
        assert_eq!(escape(b"a b%\n\xff"), "a%20b%25%0A%FF");
        assert!(unescape("%41").is_err(), "non-canonical escape accepted");
        assert!(unescape("%0a").is_err(), "lower-case escape accepted");
        assert!(unescape("%2").is_err());
    }

    #[test]
    fn text_round_trips_and_names_bad_lines() {
        let mut file = entry(
            "usr/bin/ping",
            EntryKind::File {
                size: 3,
                content: Content::Sha256(Sha256Sum([0xab; 32])),
            },
        );
        file.xattrs = vec![(OsString::from("security.capability"), vec![1, 0, 0, 2])];
        let manifest = Manifest {
            entries: vec![
                entry(".", EntryKind::Dir),
                entry("dev/null", EntryKind::CharDevice { major: 1, minor: 3 }),
                file,
                entry(
                    "usr/bin/pong",
                    EntryKind::File {
                        size: 3,
                        content: Content::SameInodeAs("usr/bin/ping".into()),
                    },
                ),
                entry(
                    "usr/lib/a b",
                    EntryKind::Symlink {
                        target: OsString::from_vec(b"../x\ny\xfe".to_vec()),
                    },
                ),
            ],
        };
        let text = manifest.to_text();
        let source = Path::new("/srv/m");
        assert_eq!(Manifest::parse(&text, source).unwrap(), manifest);
        assert!(text.contains("usr/lib/a%20b symlink 0755 0:0 target=../x%0Ay%FE\n"));
        assert_eq!(manifest.total_bytes(), 3);

        let broken = text.replace("dev=1:3", "dev=1:x");
        let err = Manifest::parse(&broken, source).unwrap_err().to_string();
        assert_eq!(err, "/srv/m: line 3: bad device `x`");
        let unsorted = text.replace("dev/null", "zzz");
        let err = Manifest::parse(&unsorted, source).unwrap_err().to_string();
        assert!(
            err.starts_with("/srv/m: line 4: path `usr/bin/ping` is not after `zzz`"),
            "{err}"
        );
    }

    #[test]
    fn compare_names_each_change() {
        let old = Manifest {
            entries: vec![entry(".", EntryKind::Dir), entry("bin", EntryKind::Dir)],
        };
        let mut changed = old.clone();
        changed.entries[1].mode = 0o1777;
        changed.entries[1].uid = 5;
        let diffs = old.compare(&changed);
        assert_eq!(diffs.len(), 1);
        assert_eq!(
            diffs[0].to_string(),
            "/bin: mode 0755 → 1777, owner 0:0 → 5:0"
        );
        assert!(old.compare(&old).is_empty());
    }
}
