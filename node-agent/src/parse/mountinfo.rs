//! `/proc/self/mountinfo`: the mount table, and from it the overlay root's layers.
//!
//! Line format (proc(5)): `ID PARENT MAJ:MIN ROOT MOUNT_POINT MOUNT_OPTS [OPTIONAL…] - FSTYPE SOURCE
//! SUPER_OPTS`. The kernel writes space, tab, newline and backslash in paths as octal escapes
//! (`\040`); they are decoded here.

/// One mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub id: u32,
    pub parent_id: u32,
    /// `MAJ:MIN` of the device.
    pub device: String,
    /// The directory of the filesystem that forms this mount's root (`/` unless a bind mount).
    pub root: String,
    pub mount_point: String,
    pub mount_options: String,
    /// Tagged fields such as `shared:1`, `master:2`.
    pub optional_fields: Vec<String>,
    pub fstype: String,
    pub source: String,
    /// Filesystem-specific options; kept raw (still escaped) because overlay's `lowerdir` needs
    /// its own splitting before decoding.
    pub super_options: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("parsing mountinfo line {line}: {reason}: {text:?}")]
pub struct MountinfoError {
    pub line: usize,
    pub reason: &'static str,
    pub text: String,
}

/// Parses the whole table, in kernel order. Blank lines are ignored.
pub fn parse(text: &str) -> Result<Vec<Mount>, MountinfoError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            parse_line(l).map_err(|reason| MountinfoError {
                line: i + 1,
                reason,
                text: l.to_string(),
            })
        })
        .collect()
}

fn parse_line(line: &str) -> Result<Mount, &'static str> {
    let (left, right) = line
        .split_once(" - ")
        .ok_or("no ' - ' separator before the filesystem type")?;
    let mut f = left.split(' ');
    let mut next = |what: &'static str| f.next().filter(|s| !s.is_empty()).ok_or(what);
    let id = next("missing mount id")?
        .parse()
        .map_err(|_| "mount id is not a number")?;
    let parent_id = next("missing parent id")?
        .parse()
        .map_err(|_| "parent id is not a number")?;
    let device = next("missing major:minor")?.to_string();
    if !device.contains(':') {
        return Err("device is not major:minor");
    }
    let root = unescape_octal(next("missing root")?);
    let mount_point = unescape_octal(next("missing mount point")?);
    let mount_options = next("missing mount options")?.to_string();
    let optional_fields = f.filter(|s| !s.is_empty()).map(str::to_string).collect();

    let mut r = right.splitn(3, ' ');
    let fstype = r
        .next()
        .filter(|s| !s.is_empty())
        .ok_or("missing filesystem type")?;
    let source = r.next().ok_or("missing mount source")?;
    let super_options = r.next().unwrap_or("").to_string();
    Ok(Mount {
        id,
        parent_id,
        device,
        root,
        mount_point,
        mount_options,
        optional_fields,
        fstype: unescape_octal(fstype),
        source: unescape_octal(source),
        super_options,
    })
}

/// Decodes the kernel's `\NNN` octal escapes; anything else is kept as written.
pub fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..=i + 3].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            if let Ok(byte) = u8::try_from(v) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount at `/`. When several are stacked there, the last one in the table is on top and is
/// the one processes see.
pub fn root_mount(mounts: &[Mount]) -> Option<&Mount> {
    mounts.iter().rev().find(|m| m.mount_point == "/")
}

/// The mount that holds `path`: the one whose mount point is the longest path prefix of it (the
/// last such mount when several are stacked).
pub fn mount_containing<'a>(mounts: &'a [Mount], path: &str) -> Option<&'a Mount> {
    let mut best: Option<&Mount> = None;
    for m in mounts {
        if is_path_prefix(&m.mount_point, path)
            && best.is_none_or(|b| m.mount_point.len() >= b.mount_point.len())
        {
            best = Some(m);
        }
    }
    best
}

fn is_path_prefix(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return path.starts_with('/');
    }
    let prefix = prefix.trim_end_matches('/');
    path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// The layer directories of an overlay mount, from its super options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OverlayOptions {
    /// Top-most first, as given to the kernel. Data-only lower layers (after `::`) are included.
    pub lowerdirs: Vec<String>,
    pub upperdir: Option<String>,
    pub workdir: Option<String>,
}

/// Reads `lowerdir=`, `upperdir=` and `workdir=` from an overlay's (raw) super options.
///
/// The kernel prints the option text as it was given, octal-escaping `\` and whitespace, so
/// `lowerdir=/a\:b:/c` (a directory named `a:b`, then `/c`) appears as `/a\134:b:/c`. Hence:
/// decode octal first, then split on `:` not preceded by `\`, then unescape `\:` and `\\`.
pub fn overlay_options(super_options: &str) -> OverlayOptions {
    let mut out = OverlayOptions::default();
    for opt in super_options.split(',') {
        let Some((key, value)) = opt.split_once('=') else {
            continue;
        };
        let value = unescape_octal(value);
        match key {
            "lowerdir" => out.lowerdirs = split_lowerdirs(&value),
            "upperdir" => out.upperdir = Some(value),
            "workdir" => out.workdir = Some(value),
            _ => {}
        }
    }
    out
}

fn split_lowerdirs(value: &str) -> Vec<String> {
    let mut dirs = Vec::new();
    let mut cur = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(escaped) => cur.push(escaped),
                None => cur.push('\\'),
            },
            ':' => {
                // `::` separates data-only lower layers; an empty piece is not a directory.
                if !cur.is_empty() {
                    dirs.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        dirs.push(cur);
    }
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    const OVERLAY_ROOT: &str = include_str!("../../tests/fixtures/mountinfo-overlay-root.txt");
    const ESCAPES: &str = include_str!("../../tests/fixtures/mountinfo-overlay-escapes.txt");
    const HOST: &str = include_str!("../../tests/fixtures/mountinfo-host-ext4.txt");
    const DISKLESS: &str = include_str!("../../tests/fixtures/mountinfo-diskless.txt");

    #[test]
    fn captured_overlay_root_is_found_with_its_layers() {
        let mounts = parse(OVERLAY_ROOT).unwrap();
        assert_eq!(mounts.len(), 7);
        let root = root_mount(&mounts).unwrap();
        assert_eq!((root.id, root.parent_id), (67, 43));
        assert_eq!(root.fstype, "overlay");
        assert_eq!(root.source, "overlay");
        let o = overlay_options(&root.super_options);
        assert_eq!(o.lowerdirs, vec!["/run/dfleet/lower"]);
        assert_eq!(o.upperdir.as_deref(), Some("/run/dfleet/rw/upper"));
        assert_eq!(o.workdir.as_deref(), Some("/run/dfleet/rw/work"));

        let upper = mount_containing(&mounts, "/run/dfleet/rw/upper").unwrap();
        assert_eq!(
            (upper.mount_point.as_str(), upper.fstype.as_str()),
            ("/run/dfleet/rw", "tmpfs")
        );
        assert_eq!(upper.super_options, "rw,size=65536k,mode=755");
        let lower = mount_containing(&mounts, "/run/dfleet/lower").unwrap();
        assert_eq!(
            (lower.fstype.as_str(), lower.source.as_str()),
            ("ext4", "/dev/vda")
        );
        assert_eq!(lower.mount_options, "ro,relatime");
    }

    #[test]
    fn escaped_lowerdirs_are_split_and_decoded() {
        let mounts = parse(ESCAPES).unwrap();
        let ov = mounts.iter().find(|m| m.fstype == "overlay").unwrap();
        assert_eq!(ov.mount_point, "/tmp/cap2/merged");
        let o = overlay_options(&ov.super_options);
        assert_eq!(o.lowerdirs, vec!["/tmp/cap2/b:lower", "/tmp/cap2/lower a"]);
        assert_eq!(o.upperdir.as_deref(), Some("/tmp/cap2/rw/upper"));
        // The root of this table is the VM's disk, not the overlay.
        assert_eq!(root_mount(&mounts).unwrap().fstype, "ext4");
    }

    #[test]
    fn host_table_has_an_ext4_root() {
        let mounts = parse(HOST).unwrap();
        let root = root_mount(&mounts).unwrap();
        assert_eq!(
            (
                root.fstype.as_str(),
                root.source.as_str(),
                root.device.as_str()
            ),
            ("ext4", "/dev/vda", "254:0")
        );
        assert!(root.optional_fields.is_empty());
        // /dev/shm is mounted twice; the longest-prefix rule picks the later one.
        assert_eq!(mount_containing(&mounts, "/dev/shm/x").unwrap().id, 30);
    }

    #[test]
    fn diskless_layout_with_optional_fields() {
        let mounts = parse(DISKLESS).unwrap();
        let root = root_mount(&mounts).unwrap();
        assert_eq!(root.optional_fields, vec!["shared:1"]);
        let lower = mount_containing(&mounts, "/run/dfleet/lower").unwrap();
        assert_eq!(lower.fstype, "nfs");
        assert_eq!(lower.source, "10.0.0.1:/srv/dfleet/images/compute/7");
        assert_eq!(lower.optional_fields, vec!["shared:15"]);
        // /run/dfleet/rw, not /run, holds the upper dir.
        assert_eq!(
            mount_containing(&mounts, "/run/dfleet/rw/upper")
                .unwrap()
                .mount_point,
            "/run/dfleet/rw"
        );
        assert_eq!(
            mount_containing(&mounts, "/run/dfleet/rwx")
                .unwrap()
                .mount_point,
            "/run"
        );
    }

    #[test]
    fn the_last_mount_stacked_on_root_wins() {
        let text = "\
1 0 8:1 / / rw - ext4 /dev/sda1 rw
2 1 0:40 / / rw - overlay overlay rw,lowerdir=/a:/b,upperdir=/u/upper,workdir=/u/work
";
        let mounts = parse(text).unwrap();
        let root = root_mount(&mounts).unwrap();
        assert_eq!(root.id, 2);
        assert_eq!(
            overlay_options(&root.super_options).lowerdirs,
            vec!["/a", "/b"]
        );
    }

    #[test]
    fn octal_escapes_in_mount_points_are_decoded() {
        let mounts = parse("5 1 0:50 / /mnt/with\\040space\\011tab rw - tmpfs none rw\n").unwrap();
        assert_eq!(mounts[0].mount_point, "/mnt/with space\ttab");
        assert_eq!(unescape_octal("a\\134b"), "a\\b");
        assert_eq!(unescape_octal("trailing\\04"), "trailing\\04");
    }

    #[test]
    fn data_only_lower_layers_are_listed() {
        let o = overlay_options("rw,lowerdir=/l1:/l2::/data,upperdir=/u,workdir=/w");
        assert_eq!(o.lowerdirs, vec!["/l1", "/l2", "/data"]);
    }

    #[test]
    fn malformed_lines_are_errors_with_their_number() {
        let err =
            parse("1 0 8:1 / / rw - ext4 /dev/sda1 rw\n\n2 1 0:40 / /x rw ext4\n").unwrap_err();
        assert_eq!(err.line, 3);
        assert_eq!(err.reason, "no ' - ' separator before the filesystem type");
        let err = parse("x 0 8:1 / / rw - ext4 /dev/sda1 rw").unwrap_err();
        assert_eq!(err.reason, "mount id is not a number");
    }
}
