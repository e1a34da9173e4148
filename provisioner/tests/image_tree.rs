//! Image trees on a real filesystem: the exact copy (capabilities checked by
//! the real `getcap`, hard links, device nodes, owners, setuid, xattrs, odd
//! names, nanosecond times), the refusal of mount points, the immutable
//! attribute, removal, and the content manifest with its tamper report.
//!
//! These tests must run as root (chown, mknod, mount, the immutable flag)
//! with `setcap`/`getcap` installed (Debian's libcap2-bin); anything missing
//! fails the test with what to do, never skips it.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;

use dfleet_provisioner::image::manifest::{Change, Manifest, ManifestError};
use dfleet_provisioner::image::tree::{
    CopyMethod, TreeError, copy_tree, remove_tree, set_immutable,
};
use rustix::fs::{AtFlags, CWD, FileType, Mode, Timespec, Timestamps, XattrFlags};

/// The odd file name: a space, a newline and a byte that is not UTF-8.
const ODD_NAME: &[u8] = b"odd name\nwith \xff byte";

fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "these tests need root (chown, mknod, mount, immutable flag): run them as root"
    );
}

fn run(program: &str, args: &[&OsStr]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e} (install libcap2-bin)"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Access and modification times, each as (seconds, nanoseconds).
type Times = ((i64, i64), (i64, i64));

fn set_times(path: &Path, (atime, mtime): Times) {
    let times = Timestamps {
        last_access: Timespec {
            tv_sec: atime.0,
            tv_nsec: atime.1,
        },
        last_modification: Timespec {
            tv_sec: mtime.0,
            tv_nsec: mtime.1,
        },
    };
    rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW).unwrap();
}

fn times(path: &Path) -> Times {
    let m = fs::symlink_metadata(path).unwrap();
    ((m.atime(), m.atime_nsec()), (m.mtime(), m.mtime_nsec()))
}

/// Every path under `root` (relative), deepest first.
fn all_paths(root: &Path) -> Vec<PathBuf> {
    fn visit(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) {
        let path = root.join(rel);
        if fs::symlink_metadata(&path).unwrap().is_dir() {
            let mut names: Vec<OsString> = fs::read_dir(&path)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            for name in names {
                visit(root, &rel.join(name), out);
            }
        }
        out.push(rel.to_path_buf());
    }
    let mut out = Vec::new();
    visit(root, Path::new(""), &mut out);
    out
}

/// Builds the source tree under `dir/src` with every kind of object and
/// attribute an image holds. Returns it and the times each path was given.
fn source_tree(dir: &Path) -> (PathBuf, BTreeMap<PathBuf, Times>) {
    let src = dir.join("src");
    for d in ["usr/bin", "usr/lib", "dev", "etc", "run", "var/tmp/empty"] {
        fs::create_dir_all(src.join(d)).unwrap();
    }
    // A binary with a file capability, set by the real setcap.
    let pinger = src.join("usr/bin/pinger");
    fs::copy("/usr/bin/true", &pinger).unwrap();
    run("setcap", &["cap_net_raw+ep".as_ref(), pinger.as_os_str()]);
    // A hard-linked pair.
    fs::write(src.join("usr/lib/a"), b"shared content\n").unwrap();
    fs::hard_link(src.join("usr/lib/a"), src.join("usr/lib/b")).unwrap();
    // A character device, a fifo and a socket.
    rustix::fs::mknodat(
        CWD,
        src.join("dev/null"),
        FileType::CharacterDevice,
        Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
    fs::set_permissions(src.join("dev/null"), fs::Permissions::from_mode(0o666)).unwrap();
    rustix::fs::mknodat(
        CWD,
        src.join("run/fifo"),
        FileType::Fifo,
        Mode::from_raw_mode(0o620),
        0,
    )
    .unwrap();
    drop(std::os::unix::net::UnixListener::bind(src.join("run/socket")).unwrap());
    // An absolute and a dangling symlink, the first owned by 42:42.
    std::os::unix::fs::symlink("/etc/passwd", src.join("etc/abs")).unwrap();
    std::os::unix::fs::lchown(src.join("etc/abs"), Some(42), Some(42)).unwrap();
    std::os::unix::fs::symlink("../no/such/target", src.join("etc/dangling")).unwrap();
    // A setuid file owned by 1234:5678 (chmod after chown, which clears setuid).
    let suid = src.join("usr/bin/suid");
    fs::write(&suid, b"#!/bin/sh\n").unwrap();
    std::os::unix::fs::chown(&suid, Some(1234), Some(5678)).unwrap();
    fs::set_permissions(&suid, fs::Permissions::from_mode(0o4755)).unwrap();
    // A user xattr whose value is not text.
    fs::write(src.join("etc/conf"), b"hello\n").unwrap();
    rustix::fs::lsetxattr(
        src.join("etc/conf"),
        "user.dfleet",
        b"va\0lue\xff",
        XattrFlags::empty(),
    )
    .unwrap();
    fs::write(src.join("etc/replaced"), b"a file\n").unwrap();
    // A name with a space, a newline and a non-UTF-8 byte.
    fs::write(src.join(OsStr::from_bytes(ODD_NAME)), b"odd\n").unwrap();
    // A nested empty directory with the sticky bit, and a root owned by 7:7.
    fs::set_permissions(
        src.join("var/tmp/empty"),
        fs::Permissions::from_mode(0o1777),
    )
    .unwrap();
    std::os::unix::fs::chown(&src, Some(7), Some(7)).unwrap();
    fs::set_permissions(&src, fs::Permissions::from_mode(0o750)).unwrap();
    // Fixed times, different for every path and with nanoseconds, deepest
    // first so a directory's times are set after its content.
    let paths = all_paths(&src);
    for (i, rel) in paths.iter().enumerate() {
        let i = i as i64;
        let t = (
            (1_600_000_000 + i * 1000, 987_654_321 - i),
            (1_500_000_000 + i * 1000, 123_456_789 + i),
        );
        set_times(&src.join(rel), t);
    }
    // Read back: hard-linked names share the times last set.
    let given = paths
        .into_iter()
        .map(|rel| {
            let t = times(&src.join(&rel));
            (rel, t)
        })
        .collect();
    (src, given)
}

/// What must be equal between a path and its copy, times aside (reading a
/// symlink updates its access time, even for the copy).
#[derive(Debug, PartialEq, Eq)]
struct Attributes {
    kind: String,
    mode: u32,
    uid: u32,
    gid: u32,
    rdev: u64,
    size: u64,
    link: Option<PathBuf>,
    xattrs: BTreeMap<OsString, Vec<u8>>,
}

fn attributes(path: &Path) -> Attributes {
    let m = fs::symlink_metadata(path).unwrap();
    let mut xattrs = BTreeMap::new();
    let mut names = vec![0u8; 4096];
    let len = rustix::fs::llistxattr(path, &mut names[..]).unwrap();
    for name in names[..len].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let mut value = vec![0u8; 4096];
        let n = rustix::fs::lgetxattr(path, name, &mut value[..]).unwrap();
        xattrs.insert(OsStr::from_bytes(name).to_os_string(), value[..n].to_vec());
    }
    Attributes {
        kind: format!("{:?}", m.file_type()),
        mode: m.mode(),
        uid: m.uid(),
        gid: m.gid(),
        rdev: m.rdev(),
        size: if m.is_dir() { 0 } else { m.size() },
        link: m.is_symlink().then(|| fs::read_link(path).unwrap()),
        xattrs,
    }
}

#[test]
fn copy_keeps_every_attribute() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let (src, given) = source_tree(dir.path());
    let dst = dir.path().join("copy");
    let report = copy_tree(&src, &dst).unwrap();

    // Times first, as the source had them: reading the copy below may
    // update its access times.
    for (rel, t) in &given {
        assert_eq!(
            times(&dst.join(rel)),
            *t,
            "the times of {rel:?} in the copy"
        );
    }
    let paths: Vec<PathBuf> = given.keys().cloned().collect();
    for rel in &paths {
        assert_eq!(
            attributes(&src.join(rel)),
            attributes(&dst.join(rel)),
            "{rel:?} differs in the copy"
        );
    }
    let mut copied = all_paths(&dst);
    copied.sort();
    assert_eq!(copied, paths, "the copy has other paths");

    let getcap = run("getcap", &[dst.join("usr/bin/pinger").as_os_str()]);
    assert!(getcap.contains("cap_net_raw=ep"), "getcap says {getcap:?}");
    assert_eq!(
        fs::read(dst.join("usr/bin/pinger")).unwrap(),
        fs::read("/usr/bin/true").unwrap()
    );

    let ino = |p: &Path| fs::symlink_metadata(p).unwrap().ino();
    assert_eq!(ino(&dst.join("usr/lib/a")), ino(&dst.join("usr/lib/b")));
    assert_ne!(ino(&dst.join("usr/lib/a")), ino(&src.join("usr/lib/a")));
    assert_eq!(
        fs::read(dst.join("usr/lib/b")).unwrap(),
        b"shared content\n"
    );

    let null = fs::symlink_metadata(dst.join("dev/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), rustix::fs::makedev(1, 3));
    assert_eq!(null.mode() & 0o7777, 0o666);
    assert!(
        fs::symlink_metadata(dst.join("run/fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    assert!(
        fs::symlink_metadata(dst.join("run/socket"))
            .unwrap()
            .file_type()
            .is_socket()
    );

    assert_eq!(
        fs::read_link(dst.join("etc/abs")).unwrap(),
        Path::new("/etc/passwd")
    );
    let abs = fs::symlink_metadata(dst.join("etc/abs")).unwrap();
    assert_eq!((abs.uid(), abs.gid()), (42, 42));
    assert_eq!(
        fs::read_link(dst.join("etc/dangling")).unwrap(),
        Path::new("../no/such/target")
    );

    let suid = fs::symlink_metadata(dst.join("usr/bin/suid")).unwrap();
    assert_eq!(suid.mode() & 0o7777, 0o4755);
    assert_eq!((suid.uid(), suid.gid()), (1234, 5678));

    let mut value = [0u8; 64];
    let n = rustix::fs::lgetxattr(dst.join("etc/conf"), "user.dfleet", &mut value[..]).unwrap();
    assert_eq!(&value[..n], b"va\0lue\xff");

    assert_eq!(
        fs::read(dst.join(OsStr::from_bytes(ODD_NAME))).unwrap(),
        b"odd\n"
    );

    let empty = fs::symlink_metadata(dst.join("var/tmp/empty")).unwrap();
    assert_eq!(empty.mode() & 0o7777, 0o1777);
    assert_eq!(fs::read_dir(dst.join("var/tmp/empty")).unwrap().count(), 0);
    let root = fs::symlink_metadata(&dst).unwrap();
    assert_eq!(
        (root.mode() & 0o7777, root.uid(), root.gid()),
        (0o750, 7, 7)
    );

    // pinger, a, suid, conf, replaced, the odd name; b is a hard link.
    assert_eq!(report.files, 6);
    assert_eq!(report.hardlinks, 1);
    assert_eq!(report.symlinks, 2);
    assert_eq!(report.specials, 3);
    assert_eq!(report.dirs, 10);
    assert_eq!(report.reflinked + report.copied, report.files);
    if report.method() == CopyMethod::FullCopy {
        assert!(report.to_string().contains("by full copy"), "{report}");
    }

    // The same tree, so the same manifest and generation hash.
    assert_eq!(
        Manifest::build(&src).unwrap().digest(),
        Manifest::build(&dst).unwrap().digest()
    );

    // An existing destination is refused and left alone.
    let err = copy_tree(&src, &dst).unwrap_err();
    assert!(matches!(err, TreeError::DestinationExists(_)), "{err}");
    assert!(dst.join("usr/bin/pinger").exists());
}

/// A mount made for a test, undone however the test ends.
struct Mounted(PathBuf);

impl Mounted {
    fn tmpfs(at: &Path, options: &str) -> Mounted {
        rustix::mount::mount(
            "tmpfs",
            at,
            "tmpfs",
            rustix::mount::MountFlags::empty(),
            Some(std::ffi::CString::new(options).unwrap().as_c_str()),
        )
        .unwrap_or_else(|e| panic!("mounting a tmpfs on {}: {e}", at.display()));
        Mounted(at.to_path_buf())
    }

    fn bind(from: &Path, at: &Path) -> Mounted {
        rustix::mount::mount_bind(from, at)
            .unwrap_or_else(|e| panic!("bind-mounting on {}: {e}", at.display()));
        Mounted(at.to_path_buf())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
    }
}

#[test]
fn mount_points_inside_the_source_are_refused() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir_all(src.join("usr/lib")).unwrap();
    fs::write(src.join("usr/lib/file"), b"x").unwrap();
    fs::create_dir_all(src.join("proc")).unwrap();
    fs::create_dir_all(src.join("mnt/bound")).unwrap();
    let dst = dir.path().join("copy");

    // Another filesystem, as a leftover /proc from a sandbox would be.
    {
        let _proc = Mounted::tmpfs(&src.join("proc"), "size=1m");
        fs::write(src.join("proc/inside"), b"y").unwrap();
        let err = copy_tree(&src, &dst).unwrap_err();
        assert!(
            matches!(&err, TreeError::MountPoint(p) if p == &src.join("proc")),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains(&*src.join("proc").to_string_lossy()),
            "{err}"
        );
        assert!(!dst.exists(), "a failed copy left {}", dst.display());
        let err = remove_tree(&src).unwrap_err();
        assert!(matches!(&err, TreeError::MountPoint(_)), "{err}");
        assert!(
            src.join("usr/lib/file").exists(),
            "remove_tree removed files before refusing"
        );
        let err = Manifest::build(&src).unwrap_err();
        assert!(err.to_string().contains("mount point"), "{err}");
    }
    // A bind mount of the same filesystem: same st_dev, still a mount point.
    {
        let _bound = Mounted::bind(&src.join("usr"), &src.join("mnt/bound"));
        let err = copy_tree(&src, &dst).unwrap_err();
        assert!(
            matches!(&err, TreeError::MountPoint(p) if p == &src.join("mnt/bound")),
            "{err}"
        );
        assert!(!dst.exists());
    }
    copy_tree(&src, &dst).unwrap();
}

#[test]
fn a_failed_copy_leaves_nothing_behind() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir_all(src.join("a/b")).unwrap();
    fs::write(src.join("a/small"), b"small").unwrap();
    fs::write(src.join("a/b/big"), vec![7u8; 4 << 20]).unwrap();
    fs::write(src.join("z"), b"after").unwrap();
    // A destination filesystem too small for the source: the copy fails
    // part-way, after creating some of the tree.
    let small = dir.path().join("small");
    fs::create_dir(&small).unwrap();
    let _mounted = Mounted::tmpfs(&small, "size=1m");
    let dst = small.join("copy");
    let err = copy_tree(&src, &dst).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("copying the content to") && message.contains("a/b/big"),
        "{message}"
    );
    assert!(!dst.exists(), "a failed copy left {}", dst.display());
    assert_eq!(fs::read_dir(&small).unwrap().count(), 0);
}

/// Clears the immutable flag however the test ends, so the temporary
/// directory can be removed.
struct Unfreeze<'a>(&'a Path);

impl Drop for Unfreeze<'_> {
    fn drop(&mut self) {
        let _ = set_immutable(self.0, false);
    }
}

fn modes_and_owners(root: &Path) -> Vec<(PathBuf, u32, u32, u32)> {
    all_paths(root)
        .into_iter()
        .map(|rel| {
            let m = fs::symlink_metadata(root.join(&rel)).unwrap();
            (rel, m.mode(), m.uid(), m.gid())
        })
        .collect()
}

#[test]
fn immutable_trees_refuse_changes_and_still_remove() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let (src, _) = source_tree(dir.path());
    let _unfreeze = Unfreeze(&src);
    let before = modes_and_owners(&src);

    // The fifo, socket and device are never opened: opening the fifo would
    // block, opening the device would be wrong.
    let report = set_immutable(&src, true).unwrap();
    assert!(report.supported, "ext4 has the immutable attribute");
    assert_eq!((report.files, report.dirs), (7, 10), "{report:?}");
    assert_eq!(report.changed, 16);
    assert_eq!(report.skipped, 5, "3 special files and 2 symlinks");
    assert_eq!(modes_and_owners(&src), before);
    assert!(run("getcap", &[src.join("usr/bin/pinger").as_os_str()]).contains("cap_net_raw=ep"));

    let eperm = |e: std::io::Error| {
        assert_eq!(
            e.raw_os_error(),
            Some(rustix::io::Errno::PERM.raw_os_error()),
            "{e}"
        );
    };
    eperm(fs::write(src.join("etc/conf"), b"changed").unwrap_err());
    eperm(fs::write(src.join("etc/new"), b"new").unwrap_err());
    eperm(fs::remove_file(src.join("usr/lib/b")).unwrap_err());
    assert_eq!(fs::read(src.join("etc/conf")).unwrap(), b"hello\n");

    // Setting it again changes nothing.
    assert_eq!(set_immutable(&src, true).unwrap().changed, 0);

    let report = set_immutable(&src, false).unwrap();
    assert_eq!(report.changed, 16);
    fs::write(src.join("etc/new"), b"new").unwrap();
    fs::remove_file(src.join("etc/new")).unwrap();
    assert_eq!(modes_and_owners(&src), before);

    set_immutable(&src, true).unwrap();
    remove_tree(&src).unwrap();
    assert!(!src.exists());
}

fn changes(diffs: &[dfleet_provisioner::image::manifest::Difference]) -> Vec<String> {
    diffs.iter().map(ToString::to_string).collect()
}

#[test]
fn manifest_round_trips_and_reports_tampering() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let (src, _) = source_tree(dir.path());
    let manifest = Manifest::build(&src).unwrap();
    let text = manifest.to_text();
    assert!(text.starts_with("# dfleet manifest v1\n"), "{text}");
    assert_eq!(Manifest::parse(&text, Path::new("m")).unwrap(), manifest);
    assert_eq!(manifest.digest(), Manifest::build(&src).unwrap().digest());
    assert_eq!(manifest.entries().len(), all_paths(&src).len());
    assert!(
        text.contains("\nusr/lib/b file 0644 0:0 size=15 same-inode-as=usr/lib/a\n"),
        "{text}"
    );
    assert!(
        text.contains("\nodd%20name%0Awith%20%FF%20byte file "),
        "{text}"
    );
    assert!(
        text.contains("\ndev/null char 0666 0:0 dev=1:3\n"),
        "{text}"
    );
    assert!(text.contains(" xattr:security.capability="), "{text}");
    assert!(text.contains("\n. dir 0750 7:7\n"), "{text}");
    let true_size = fs::metadata("/usr/bin/true").unwrap().len();
    assert_eq!(manifest.total_bytes(), true_size + 15 + 10 + 6 + 7 + 4);

    let file = dir.path().join("gen.manifest");
    manifest.write(&file).unwrap();
    assert_eq!(fs::read_to_string(&file).unwrap(), text);
    assert_eq!(Manifest::load(&file).unwrap(), manifest);
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        2,
        "write left a temporary file"
    );

    let copy = dir.path().join("copy");
    copy_tree(&src, &copy).unwrap();
    assert_eq!(manifest.verify(&copy).unwrap(), vec![]);
    // A touch is not tampering.
    set_times(&copy.join("etc/conf"), ((1, 2), (3, 4)));
    assert_eq!(manifest.verify(&copy).unwrap(), vec![]);

    fs::write(copy.join("etc/conf"), b"jello\n").unwrap();
    fs::set_permissions(copy.join("usr/bin/suid"), fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(copy.join("var/tmp/empty"), Some(1000), Some(1000)).unwrap();
    run(
        "setcap",
        &["-r".as_ref(), copy.join("usr/bin/pinger").as_os_str()],
    );
    fs::write(copy.join("etc/new"), b"new").unwrap();
    fs::remove_file(copy.join("usr/lib/b")).unwrap();
    fs::remove_file(copy.join("etc/replaced")).unwrap();
    std::os::unix::fs::symlink("conf", copy.join("etc/replaced")).unwrap();
    fs::set_permissions(
        copy.join(OsStr::from_bytes(ODD_NAME)),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();

    let diffs = manifest.verify(&copy).unwrap();
    let sum = |bytes: &[u8]| {
        use sha2::Digest as _;
        let hex: String = sha2::Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("{}…", &hex[..8])
    };
    assert_eq!(
        changes(&diffs),
        vec![
            format!(
                "/etc/conf: content (sha256 {} → {})",
                sum(b"hello\n"),
                sum(b"jello\n")
            ),
            "/etc/new: added".to_string(),
            "/etc/replaced: kind file → symlink".to_string(),
            "/odd%20name%0Awith%20%FF%20byte: mode 0644 → 0600".to_string(),
            "/usr/bin/pinger: xattr security.capability removed".to_string(),
            "/usr/bin/suid: mode 4755 → 0755".to_string(),
            "/usr/lib/b: removed".to_string(),
            "/var/tmp/empty: owner 0:0 → 1000:1000".to_string(),
        ]
    );
    assert_eq!(diffs[1].path, Path::new("etc/new"));
    assert_eq!(diffs[1].change, Change::Added);
    assert_eq!(diffs[3].path.as_os_str().as_bytes(), ODD_NAME);
}

#[test]
fn a_malformed_manifest_names_file_line_and_value() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gen.manifest");
    fs::write(
        &file,
        "# dfleet manifest v1\n. dir 0755 0:0\netc dir 07x5 0:0\n",
    )
    .unwrap();
    let err = Manifest::load(&file).unwrap_err();
    assert!(matches!(err, ManifestError::Parse { line: 3, .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "{}: line 3: bad mode `07x5` (expected 4 octal digits)",
            file.display()
        )
    );

    fs::write(&file, "# dfleet manifest v2\n").unwrap();
    let err = Manifest::load(&file).unwrap_err().to_string();
    assert!(err.contains("line 1: expected the header"), "{err}");

    fs::write(
        &file,
        "# dfleet manifest v1\n. dir 0755 0:0\nx file 0644 0:0 size=1 same-inode-as=y\n",
    )
    .unwrap();
    let err = Manifest::load(&file).unwrap_err().to_string();
    assert!(err.contains("line 3: same-inode-as `y`"), "{err}");

    fs::write(
        &file,
        "# dfleet manifest v1\n. dir 0755 0:0\na%2 dir 0755 0:0\n",
    )
    .unwrap();
    let err = Manifest::load(&file).unwrap_err().to_string();
    assert!(err.contains("line 3: bad escape in `a%2`"), "{err}");
}
