//! Enabling a systemd unit in an image without systemd: the symlinks
//! `systemctl enable` would make from the unit's `[Install]` section, for
//! hosts that have no `systemctl --root`.

use std::fs;
use std::path::{Path, PathBuf};

use super::store::StoreError;

/// Where units live in a tree, most specific first.
const UNIT_DIRS: [&str; 3] = [
    "etc/systemd/system",
    "usr/lib/systemd/system",
    "lib/systemd/system",
];

/// The links (path in the tree, target as the image sees it) that enable
/// `unit`: one per `WantedBy=`/`RequiredBy=` target and per `Alias=`.
pub fn enable_links(tree: &Path, unit: &str) -> Result<Vec<(PathBuf, PathBuf)>, StoreError> {
    let (dir, text) = UNIT_DIRS
        .iter()
        .find_map(|d| {
            let path = tree.join(d).join(unit);
            fs::read_to_string(&path).ok().map(|t| (*d, t))
        })
        .ok_or_else(|| StoreError::Record {
            path: tree.join(UNIT_DIRS[0]).join(unit),
            message: format!("no unit {unit} in {}", UNIT_DIRS.join(", ")),
        })?;
    let target = Path::new("/").join(dir).join(unit);
    let mut links = Vec::new();
    let mut in_install = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_install = line == "[Install]";
            continue;
        }
        let Some((key, value)) = line.split_once('=').filter(|_| in_install) else {
            continue;
        };
        for name in value.split_whitespace() {
            let link = match key.trim() {
                "WantedBy" => Path::new(UNIT_DIRS[0])
                    .join(format!("{name}.wants"))
                    .join(unit),
                "RequiredBy" => Path::new(UNIT_DIRS[0])
                    .join(format!("{name}.requires"))
                    .join(unit),
                "Alias" => Path::new(UNIT_DIRS[0]).join(name),
                _ => continue,
            };
            links.push((tree.join(link), target.clone()));
        }
    }
    if links.is_empty() {
        return Err(StoreError::Record {
            path: tree.join(dir).join(unit),
            message:
                "the unit has no [Install] WantedBy=, RequiredBy= or Alias=: nothing to enable"
                    .into(),
        });
    }
    Ok(links)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_follow_the_install_section() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("lib/systemd/system");
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("slurmd.service"),
            "[Unit]\nWantedBy=ignored.target\n[Service]\nExecStart=/x\n[Install]\nWantedBy=multi-user.target graphical.target\nAlias=slurm.service\n",
        )
        .unwrap();
        let links = enable_links(t.path(), "slurmd.service").unwrap();
        let target = PathBuf::from("/lib/systemd/system/slurmd.service");
        assert_eq!(
            links,
            [
                (
                    t.path()
                        .join("etc/systemd/system/multi-user.target.wants/slurmd.service"),
                    target.clone()
                ),
                (
                    t.path()
                        .join("etc/systemd/system/graphical.target.wants/slurmd.service"),
                    target.clone()
                ),
                (t.path().join("etc/systemd/system/slurm.service"), target),
            ]
        );
    }

    #[test]
    fn a_missing_or_static_unit_is_an_error_naming_it() {
        let t = tempfile::tempdir().unwrap();
        let e = enable_links(t.path(), "nope.service")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no unit nope.service"), "{e}");
        let dir = t.path().join("etc/systemd/system");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("static.service"), "[Service]\nExecStart=/x\n").unwrap();
        let e = enable_links(t.path(), "static.service")
            .unwrap_err()
            .to_string();
        assert!(e.contains("nothing to enable"), "{e}");
    }
}
