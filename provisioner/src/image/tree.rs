//! Whole-tree operations on an image generation: an exact copy that keeps
//! every attribute a root filesystem depends on, the immutable attribute that
//! freezes a published generation, and removal of a (possibly frozen) tree.
//!
//! Every walk first lists the whole tree without following symlinks and
//! refuses a tree with a mount point inside it, before it changes anything:
//! a leftover `/proc` or bind mount from a sandbox must never be copied into,
//! frozen with, or deleted along with an image. Paths are raw bytes
//! throughout; nothing is converted through UTF-8.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use rustix::fs::{
    AtFlags, CWD, FileType, IFlags, Mode, OFlags, StatxAttributes, StatxFlags, StatxTimestamp,
    Timespec, Timestamps, XattrFlags,
};
use rustix::io::Errno;

/// A failed tree operation, naming the path and what was being done to it.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "{} is a mount point inside the tree (it is not on the root's filesystem; \
         e.g. a leftover /proc mount from a sandbox): unmount it first",
        .0.display()
    )]
    MountPoint(PathBuf),
    #[error("{} is not a directory", .0.display())]
    NotADirectory(PathBuf),
    #[error("the destination {} already exists", .0.display())]
    DestinationExists(PathBuf),
    #[error("{error}; removing the partial copy {} also failed: {cleanup}", dst.display())]
    Cleanup {
        error: Box<TreeError>,
        dst: PathBuf,
        cleanup: Box<TreeError>,
    },
}

fn io_err<'a, E: Into<io::Error>>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(E) -> TreeError + 'a {
    move |e| TreeError::Io {
        op,
        path: path.to_path_buf(),
        source: e.into(),
    }
}

/// The type of a filesystem object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileKind {
    File,
    Dir,
    Symlink,
    CharDevice,
    BlockDevice,
    Fifo,
    Socket,
}

impl FileKind {
    fn from_mode(mode: u32) -> FileKind {
        match FileType::from_raw_mode(mode) {
            FileType::RegularFile => FileKind::File,
            FileType::Directory => FileKind::Dir,
            FileType::Symlink => FileKind::Symlink,
            FileType::CharacterDevice => FileKind::CharDevice,
            FileType::BlockDevice => FileKind::BlockDevice,
            FileType::Fifo => FileKind::Fifo,
            FileType::Socket => FileKind::Socket,
            // The kernel reports no other type; treat anything unknown as
            // the least privileged kind so it is never opened.
            FileType::Unknown => FileKind::Socket,
        }
    }

    fn file_type(self) -> FileType {
        match self {
            FileKind::File => FileType::RegularFile,
            FileKind::Dir => FileType::Directory,
            FileKind::Symlink => FileType::Symlink,
            FileKind::CharDevice => FileType::CharacterDevice,
            FileKind::BlockDevice => FileType::BlockDevice,
            FileKind::Fifo => FileType::Fifo,
            FileKind::Socket => FileType::Socket,
        }
    }
}

/// What one `statx` (not following symlinks) says about an entry.
#[derive(Debug, Clone)]
pub(crate) struct Meta {
    pub kind: FileKind,
    /// Permission bits including setuid, setgid and sticky (`mode & 0o7777`).
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub dev: (u32, u32),
    pub ino: u64,
    /// Major and minor of a device node.
    pub rdev: (u32, u32),
    pub size: u64,
    pub atime: StatxTimestamp,
    pub mtime: StatxTimestamp,
    attributes: StatxAttributes,
    attributes_mask: StatxAttributes,
}

impl Meta {
    fn read(path: &Path) -> Result<Meta, TreeError> {
        let st = rustix::fs::statx(
            CWD,
            path,
            AtFlags::SYMLINK_NOFOLLOW,
            StatxFlags::BASIC_STATS,
        )
        .map_err(io_err("reading the attributes of", path))?;
        let mode = u32::from(st.stx_mode);
        Ok(Meta {
            kind: FileKind::from_mode(mode),
            perm: mode & 0o7777,
            uid: st.stx_uid,
            gid: st.stx_gid,
            nlink: st.stx_nlink,
            dev: (st.stx_dev_major, st.stx_dev_minor),
            ino: st.stx_ino,
            rdev: (st.stx_rdev_major, st.stx_rdev_minor),
            size: st.stx_size,
            atime: st.stx_atime,
            mtime: st.stx_mtime,
            attributes: st.stx_attributes,
            attributes_mask: st.stx_attributes_mask,
        })
    }

    /// Whether the kernel says this is the root of a mount. Bind mounts of
    /// the same filesystem keep `st_dev`, so the device alone is not enough.
    fn is_mount_root(&self) -> bool {
        self.attributes_mask.contains(StatxAttributes::MOUNT_ROOT)
            && self.attributes.contains(StatxAttributes::MOUNT_ROOT)
    }

    /// Whether the immutable or append-only flag may be set: `None` when
    /// the kernel did not say, so the flags must be asked for.
    fn may_block_removal(&self) -> Option<bool> {
        let flags = StatxAttributes::IMMUTABLE | StatxAttributes::APPEND;
        self.attributes_mask
            .contains(flags)
            .then(|| self.attributes.intersects(flags))
    }
}

/// One entry of a walked tree.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    /// The path relative to the tree's root; empty for the root itself.
    pub rel: PathBuf,
    /// The path as given to the walk joined with `rel`.
    pub path: PathBuf,
    pub meta: Meta,
}

/// Lists every entry under `root` (which must be a directory), the root
/// first, in depth-first pre-order with each directory's entries sorted by
/// name bytes. Symlinks are not followed. A mount point inside the tree is an
/// error naming it.
pub(crate) fn walk(root: &Path) -> Result<Vec<Node>, TreeError> {
    let meta = Meta::read(root)?;
    if meta.kind != FileKind::Dir {
        return Err(TreeError::NotADirectory(root.to_path_buf()));
    }
    let root_dev = meta.dev;
    let mut nodes = Vec::new();
    let mut stack = vec![Node {
        rel: PathBuf::new(),
        path: root.to_path_buf(),
        meta,
    }];
    while let Some(node) = stack.pop() {
        if node.meta.kind == FileKind::Dir {
            let mut names = list_dir(&node.path)?;
            names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            // Pushed in reverse so the smallest name is visited first.
            for name in names.into_iter().rev() {
                let path = node.path.join(&name);
                let meta = Meta::read(&path)?;
                if meta.dev != root_dev || meta.is_mount_root() {
                    return Err(TreeError::MountPoint(path));
                }
                stack.push(Node {
                    rel: node.rel.join(&name),
                    path,
                    meta,
                });
            }
        }
        nodes.push(node);
    }
    Ok(nodes)
}

/// The names in a directory, read without updating its access time (a
/// copy must find the source as it was) and without following a symlink
/// swapped in for it.
fn list_dir(path: &Path) -> Result<Vec<OsString>, TreeError> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = match rustix::fs::openat(CWD, path, flags | OFlags::NOATIME, Mode::empty()) {
        // O_NOATIME needs ownership or CAP_FOWNER.
        Err(Errno::PERM) => rustix::fs::openat(CWD, path, flags, Mode::empty()),
        other => other,
    }
    .map_err(io_err("opening directory", path))?;
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::new(fd).map_err(io_err("listing", path))? {
        let entry = entry.map_err(io_err("listing", path))?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(name).to_os_string());
        }
    }
    Ok(names)
}

/// How the regular files of a copy got their content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyMethod {
    /// Every file shares its blocks with the source (no data was copied).
    Reflink,
    /// Every file's bytes were copied: the filesystem has no reflinks.
    FullCopy,
    /// Some files were reflinked, others copied.
    Mixed,
}

/// What `copy_tree` made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// Regular files (inodes; further names of a hard-linked file are in `hardlinks`).
    pub files: u64,
    /// Directories, the root included.
    pub dirs: u64,
    pub symlinks: u64,
    /// Names made as hard links to a file already copied.
    pub hardlinks: u64,
    /// Device nodes, fifos and sockets.
    pub specials: u64,
    /// Content bytes of the regular files.
    pub bytes: u64,
    /// Files whose content was cloned (`FICLONE`).
    pub reflinked: u64,
    /// Files whose content was copied byte by byte.
    pub copied: u64,
}

impl CopyReport {
    pub fn method(&self) -> CopyMethod {
        match (self.reflinked, self.copied) {
            (r, 0) if r > 0 => CopyMethod::Reflink,
            (0, _) => CopyMethod::FullCopy,
            _ => CopyMethod::Mixed,
        }
    }
}

impl fmt::Display for CopyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "copied {} files ({})",
            thousands(self.files),
            human_bytes(self.bytes)
        )?;
        match self.method() {
            CopyMethod::Reflink => f.write_str(" by reflink (no data copied)")?,
            CopyMethod::FullCopy if self.files > 0 => {
                f.write_str(" by full copy — the filesystem has no reflinks")?
            }
            CopyMethod::FullCopy => {}
            CopyMethod::Mixed => write!(
                f,
                " ({} by reflink, {} by full copy)",
                thousands(self.reflinked),
                thousands(self.copied)
            )?,
        }
        write!(
            f,
            "; {} directories, {} symlinks, {} hard links, {} special files",
            thousands(self.dirs),
            thousands(self.symlinks),
            thousands(self.hardlinks),
            thousands(self.specials)
        )
    }
}

/// `31204` → `31,204`.
pub(crate) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A size as an admin reads it: `812 MiB`, `1.2 GiB`, `512 bytes`.
pub(crate) fn human_bytes(n: u64) -> String {
    const KIB: u64 = 1 << 10;
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    match n {
        n if n >= GIB => format!("{:.1} GiB", n as f64 / GIB as f64),
        n if n >= MIB => format!("{} MiB", (n + MIB / 2) / MIB),
        n if n >= KIB => format!("{} KiB", (n + KIB / 2) / KIB),
        n => format!("{n} bytes"),
    }
}

/// Creates `dst` (which must not exist; its parent must) as an exact copy
/// of the directory `src`: contents (reflinked where the filesystem can),
/// directories, symlinks, hard links, device nodes, fifos, sockets, numeric
/// owners, full modes, every extended attribute, and access and modification
/// times to the nanosecond. A failed copy removes what it made.
///
/// Needs root (or the capabilities to chown, mknod and set `trusted.*` and
/// `security.*` attributes).
pub fn copy_tree(src: &Path, dst: &Path) -> Result<CopyReport, TreeError> {
    // The whole source is listed first, so a mount point inside it stops the
    // copy before anything exists at `dst`.
    let nodes = walk(src)?;
    match fs::symlink_metadata(dst) {
        Ok(_) => return Err(TreeError::DestinationExists(dst.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("checking the destination", dst)(e)),
    }
    // Private until the copy is complete: the root's own mode is applied last.
    if let Err(e) = fs::DirBuilder::new().mode(0o700).create(dst) {
        return Err(if e.kind() == io::ErrorKind::AlreadyExists {
            TreeError::DestinationExists(dst.to_path_buf())
        } else {
            io_err("creating directory", dst)(e)
        });
    }
    match copy_nodes(&nodes, dst) {
        Ok(report) => Ok(report),
        Err(error) => match remove_tree(dst) {
            Ok(()) => Err(error),
            Err(cleanup) => Err(TreeError::Cleanup {
                error: Box::new(error),
                dst: dst.to_path_buf(),
                cleanup: Box::new(cleanup),
            }),
        },
    }
}

fn copy_nodes(nodes: &[Node], dst: &Path) -> Result<CopyReport, TreeError> {
    let mut report = CopyReport::default();
    // The copy of the first name seen of each multiply-linked inode.
    let mut first_copies: HashMap<((u32, u32), u64), PathBuf> = HashMap::new();
    let mut dirs = Vec::new();
    for node in nodes {
        let to = if node.rel.as_os_str().is_empty() {
            dst.to_path_buf()
        } else {
            dst.join(&node.rel)
        };
        let meta = &node.meta;
        let inode = (meta.dev, meta.ino);
        if meta.kind != FileKind::Dir
            && meta.nlink > 1
            && let Some(first) = first_copies.get(&inode)
        {
            fs::hard_link(first, &to).map_err(io_err("making the hard link", &to))?;
            report.hardlinks += 1;
            continue;
        }
        match meta.kind {
            FileKind::Dir => {
                if !node.rel.as_os_str().is_empty() {
                    fs::DirBuilder::new()
                        .mode(0o700)
                        .create(&to)
                        .map_err(io_err("creating directory", &to))?;
                }
                report.dirs += 1;
                // Attributes and times once the directory's content is in
                // place: filling it would change its times, and a default
                // ACL on it would leak into the copied children.
                dirs.push((node, to));
                continue;
            }
            FileKind::File => {
                let (bytes, reflinked) = copy_file(node, &to)?;
                report.files += 1;
                report.bytes += bytes;
                if reflinked {
                    report.reflinked += 1;
                } else {
                    report.copied += 1;
                }
            }
            FileKind::Symlink => {
                let target =
                    fs::read_link(&node.path).map_err(io_err("reading symlink", &node.path))?;
                std::os::unix::fs::symlink(&target, &to)
                    .map_err(io_err("creating symlink", &to))?;
                report.symlinks += 1;
            }
            FileKind::CharDevice | FileKind::BlockDevice | FileKind::Fifo | FileKind::Socket => {
                let rdev = rustix::fs::makedev(meta.rdev.0, meta.rdev.1);
                rustix::fs::mknodat(
                    CWD,
                    &to,
                    meta.kind.file_type(),
                    Mode::RUSR | Mode::WUSR,
                    rdev,
                )
                .map_err(io_err("creating special file", &to))?;
                report.specials += 1;
            }
        }
        apply_attributes(&node.path, &to, meta)?;
        if meta.nlink > 1 {
            first_copies.insert(inode, to);
        }
    }
    // Deepest first, so setting a directory's times comes after every change
    // inside it.
    for (node, to) in dirs.iter().rev() {
        apply_attributes(&node.path, to, &node.meta)?;
    }
    Ok(report)
}

/// Copies a regular file's content, cloning it when the filesystem can.
/// Returns the number of bytes and whether they were reflinked.
fn copy_file(node: &Node, to: &Path) -> Result<(u64, bool), TreeError> {
    let from = &node.path;
    let src = open_regular(from, &node.meta)?;
    let mut dst = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(OFlags::NOFOLLOW.bits() as i32)
        .open(to)
        .map_err(io_err("creating file", to))?;
    match rustix::fs::ioctl_ficlone(&dst, &src) {
        Ok(()) => Ok((node.meta.size, true)),
        Err(Errno::OPNOTSUPP | Errno::XDEV | Errno::INVAL | Errno::NOTTY) => {
            // `io::copy` between two files uses copy_file_range, so the
            // bytes still stay in the kernel.
            let bytes =
                io::copy(&mut &src, &mut dst).map_err(io_err("copying the content to", to))?;
            Ok((bytes, false))
        }
        Err(e) => Err(io_err("cloning the content to", to)(e)),
    }
}

/// Opens the regular file the walk saw at `path` for reading, without
/// following a symlink, blocking on a fifo or updating its access time, and
/// checks it is still that file.
pub(crate) fn open_regular(path: &Path, meta: &Meta) -> Result<File, TreeError> {
    let flags = OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY;
    let open = |extra: OFlags| {
        OpenOptions::new()
            .read(true)
            .custom_flags((flags | extra).bits() as i32)
            .open(path)
    };
    // O_NOATIME needs ownership or CAP_FOWNER; without it the read simply
    // updates the access time.
    let file = match open(OFlags::NOATIME) {
        Err(e) if e.raw_os_error() == Some(Errno::PERM.raw_os_error()) => open(OFlags::empty()),
        other => other,
    }
    .map_err(io_err("opening", path))?;
    let st = rustix::fs::fstat(&file).map_err(io_err("reading the attributes of", path))?;
    if st.st_ino != meta.ino || FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(TreeError::Io {
            op: "opening",
            path: path.to_path_buf(),
            source: io::Error::other("the file was replaced while the tree was being read"),
        });
    }
    Ok(file)
}

/// Gives `to` the owner, extended attributes, mode and times of `from`.
fn apply_attributes(from: &Path, to: &Path, meta: &Meta) -> Result<(), TreeError> {
    // Owner first: chown clears setuid/setgid and file capabilities, so the
    // mode and the attributes come after it.
    std::os::unix::fs::lchown(to, Some(meta.uid), Some(meta.gid))
        .map_err(io_err("changing the owner of", to))?;
    copy_xattrs(from, to)?;
    // Linux has no symlink modes (they are always 0777).
    if meta.kind != FileKind::Symlink {
        rustix::fs::chmodat(CWD, to, Mode::from_raw_mode(meta.perm), AtFlags::empty())
            .map_err(io_err("changing the mode of", to))?;
    }
    let times = Timestamps {
        last_access: timespec(meta.atime),
        last_modification: timespec(meta.mtime),
    };
    rustix::fs::utimensat(CWD, to, &times, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(io_err("setting the times of", to))?;
    Ok(())
}

fn timespec(t: StatxTimestamp) -> Timespec {
    Timespec {
        tv_sec: t.tv_sec,
        tv_nsec: i64::from(t.tv_nsec),
    }
}

/// Makes the extended attributes of `to` exactly those of `from`, removing
/// any `to` inherited (e.g. an ACL from a default ACL above it).
fn copy_xattrs(from: &Path, to: &Path) -> Result<(), TreeError> {
    let names = list_xattrs(from).map_err(io_err("listing the extended attributes of", from))?;
    for name in &names {
        let value = get_xattr(from, name).map_err(|e| xattr_err("reading", from, name, e))?;
        rustix::fs::lsetxattr(to, name.as_os_str(), &value, XattrFlags::empty())
            .map_err(|e| xattr_err("setting", to, name, e.into()))?;
    }
    let present = list_xattrs(to).map_err(io_err("listing the extended attributes of", to))?;
    for name in present.iter().filter(|n| !names.contains(n)) {
        match rustix::fs::lremovexattr(to, name.as_os_str()) {
            Ok(()) => {}
            // A host with SELinux labels every new file and will not let the
            // label go; the source simply had none to copy.
            Err(_) if name.as_bytes() == b"security.selinux" => {}
            Err(e) => return Err(xattr_err("removing", to, name, e.into())),
        }
    }
    Ok(())
}

fn xattr_err(op: &str, path: &Path, name: &OsStr, e: io::Error) -> TreeError {
    TreeError::Io {
        op: "handling an extended attribute of",
        path: path.to_path_buf(),
        source: io::Error::new(e.kind(), format!("{op} {}: {e}", name.to_string_lossy())),
    }
}

/// The names of the extended attributes of `path` (not following a
/// symlink), in the kernel's order; none where the filesystem has none.
pub(crate) fn list_xattrs(path: &Path) -> io::Result<Vec<OsString>> {
    let mut buf = vec![0u8; 1024];
    loop {
        match rustix::fs::llistxattr(path, &mut buf[..]) {
            Ok(len) => {
                return Ok(buf[..len]
                    .split(|b| *b == 0)
                    .filter(|n| !n.is_empty())
                    .map(|n| OsStr::from_bytes(n).to_os_string())
                    .collect());
            }
            Err(Errno::OPNOTSUPP) => return Ok(Vec::new()),
            Err(Errno::RANGE) => {
                let len = rustix::fs::llistxattr_query(path)?;
                buf.resize(len.max(buf.len() * 2), 0);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The value of one extended attribute of `path` (not following a symlink).
pub(crate) fn get_xattr(path: &Path, name: &OsStr) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    loop {
        match rustix::fs::lgetxattr(path, name, &mut buf[..]) {
            Ok(len) => {
                buf.truncate(len);
                return Ok(buf);
            }
            Err(Errno::RANGE) => {
                let len = rustix::fs::lgetxattr_query(path, name)?;
                buf.resize(len.max(buf.len() * 2), 0);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// What `set_immutable` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImmutableReport {
    /// False when the filesystem has no immutable attribute; nothing was changed then.
    pub supported: bool,
    pub files: u64,
    pub dirs: u64,
    /// Files and directories whose flag actually changed.
    pub changed: u64,
    /// Symlinks, device nodes, fifos and sockets, which were left alone.
    pub skipped: u64,
}

impl fmt::Display for ImmutableReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.supported {
            return f.write_str(
                "the filesystem has no immutable attribute: the generation is not frozen",
            );
        }
        write!(
            f,
            "{} files and {} directories checked, {} changed",
            thousands(self.files),
            thousands(self.dirs),
            thousands(self.changed)
        )
    }
}

fn flags_unsupported(e: Errno) -> bool {
    matches!(e, Errno::NOTTY | Errno::OPNOTSUPP | Errno::INVAL)
}

/// Opens a regular file or directory of the tree for the flags ioctls,
/// without following symlinks or blocking. `None` for every other kind,
/// which is never opened.
fn open_for_flags(node: &Node) -> Result<Option<OwnedFd>, TreeError> {
    let common = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let flags = match node.meta.kind {
        FileKind::File => common | OFlags::NONBLOCK | OFlags::NOCTTY,
        FileKind::Dir => common | OFlags::DIRECTORY,
        _ => return Ok(None),
    };
    let fd = rustix::fs::openat(CWD, &node.path, flags, Mode::empty())
        .map_err(io_err("opening", &node.path))?;
    let st = rustix::fs::fstat(&fd).map_err(io_err("reading the attributes of", &node.path))?;
    if st.st_ino != node.meta.ino || FileKind::from_mode(st.st_mode) != node.meta.kind {
        return Err(TreeError::Io {
            op: "opening",
            path: node.path.clone(),
            source: io::Error::other("the file was replaced while the tree was being read"),
        });
    }
    Ok(Some(fd))
}

/// Sets (`on`) or clears the immutable attribute on every regular file and
/// directory of the tree, keeping their other inode flags, modes and owners.
/// Symlinks, device nodes, fifos and sockets are never opened. When the
/// filesystem has no such attribute the report says `supported: false`.
pub fn set_immutable(root: &Path, on: bool) -> Result<ImmutableReport, TreeError> {
    let nodes = walk(root)?;
    let mut report = ImmutableReport {
        supported: true,
        ..ImmutableReport::default()
    };
    let mut first = true;
    // Children before their directory: no order is needed by the kernel, but
    // a half-done run then never leaves a frozen directory over unfrozen content.
    for node in nodes.iter().rev() {
        let Some(fd) = open_for_flags(node)? else {
            report.skipped += 1;
            continue;
        };
        let flags = match rustix::fs::ioctl_getflags(&fd) {
            Ok(flags) => flags,
            Err(e) if first && flags_unsupported(e) => {
                return Ok(ImmutableReport {
                    supported: false,
                    ..ImmutableReport::default()
                });
            }
            Err(e) => return Err(io_err("reading the inode flags of", &node.path)(e)),
        };
        let wanted = if on {
            flags | IFlags::IMMUTABLE
        } else {
            flags - IFlags::IMMUTABLE
        };
        if wanted != flags {
            match rustix::fs::ioctl_setflags(&fd, wanted) {
                Ok(()) => report.changed += 1,
                Err(e) if first && flags_unsupported(e) => {
                    return Ok(ImmutableReport {
                        supported: false,
                        ..ImmutableReport::default()
                    });
                }
                Err(e) => return Err(io_err("setting the inode flags of", &node.path)(e)),
            }
        }
        first = false;
        match node.meta.kind {
            FileKind::Dir => report.dirs += 1,
            _ => report.files += 1,
        }
    }
    Ok(report)
}

/// Removes the directory `root` and everything in it, first clearing the
/// immutable and append-only flags (both forbid removal) where they are set.
/// Refuses, before removing anything, a tree with a mount point inside.
pub fn remove_tree(root: &Path) -> Result<(), TreeError> {
    let nodes = walk(root)?;
    for node in &nodes {
        if node.meta.may_block_removal() == Some(false) {
            continue;
        }
        let Some(fd) = open_for_flags(node)? else {
            continue;
        };
        let flags = match rustix::fs::ioctl_getflags(&fd) {
            Ok(flags) => flags,
            // No flags on this filesystem: nothing can block the removal.
            Err(e) if flags_unsupported(e) => continue,
            Err(e) => return Err(io_err("reading the inode flags of", &node.path)(e)),
        };
        let blocking = IFlags::IMMUTABLE | IFlags::APPEND;
        if flags.intersects(blocking) {
            rustix::fs::ioctl_setflags(&fd, flags - blocking)
                .map_err(io_err("clearing the immutable flag of", &node.path))?;
        }
    }
    for node in nodes.iter().rev() {
        if node.meta.kind == FileKind::Dir {
            fs::remove_dir(&node.path).map_err(io_err("removing directory", &node.path))?;
        } else {
            fs::remove_file(&node.path).map_err(io_err("removing", &node.path))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(31204), "31,204");
        assert_eq!(thousands(1234567), "1,234,567");
    }

    #[test]
    fn report_reads_like_a_sentence() {
        let report = CopyReport {
            files: 31204,
            dirs: 2310,
            symlinks: 4501,
            hardlinks: 120,
            specials: 35,
            bytes: 812 * 1024 * 1024,
            reflinked: 0,
            copied: 31204,
        };
        assert_eq!(report.method(), CopyMethod::FullCopy);
        assert_eq!(
            report.to_string(),
            "copied 31,204 files (812 MiB) by full copy — the filesystem has no reflinks; \
             2,310 directories, 4,501 symlinks, 120 hard links, 35 special files"
        );
        let reflinked = CopyReport {
            reflinked: 31204,
            copied: 0,
            ..report.clone()
        };
        assert_eq!(reflinked.method(), CopyMethod::Reflink);
        assert!(
            reflinked
                .to_string()
                .contains("by reflink (no data copied)")
        );
        let mixed = CopyReport {
            reflinked: 31000,
            copied: 204,
            ..report
        };
        assert_eq!(mixed.method(), CopyMethod::Mixed);
        assert!(
            mixed
                .to_string()
                .contains("(31,000 by reflink, 204 by full copy)")
        );
        assert_eq!(human_bytes(1536 * 1024 * 1024), "1.5 GiB");
        assert_eq!(human_bytes(100), "100 bytes");
    }
}
