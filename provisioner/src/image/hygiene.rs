//! What `image publish` checks and fixes in a tree before freezing it, so
//! every node that boots it is a distinct host that does not fill its RAM:
//! no shared SSH host private keys, an empty machine-id (systemd makes one
//! per boot), a journal kept in RAM with a cap, and a warning for timers
//! that write into the overlay.

use std::fs;
use std::path::{Path, PathBuf};

use dfleet_proto::domain::GenerationRef;

use super::store::{StoreError, write_atomic};

/// Where the journald drop-in goes, inside the tree.
pub const JOURNALD_DROP_IN: &str = "etc/systemd/journald.conf.d/90-dfleet.conf";

/// The RAM the journal may use on a node.
pub const JOURNAL_RUNTIME_MAX: &str = "64M";

/// The generation stamp the agent reads from the mounted lower layer.
pub const STAMP: &str = "etc/dfleet/generation";

/// Timers that write into the root on a schedule, with what they write: on
/// a diskless node that lands in the overlay's RAM, on every node at once.
const FILLING_TIMERS: &[(&str, &str)] = &[
    (
        "apt-daily.timer",
        "downloads package lists and .debs into /var",
    ),
    (
        "apt-daily-upgrade.timer",
        "installs upgrades into the overlay",
    ),
    (
        "man-db.timer",
        "rebuilds the manual page index in /var/cache",
    ),
    ("logrotate.timer", "rewrites logs in /var/log"),
    (
        "e2scrub_all.timer",
        "scrubs ext4 filesystems a node does not have",
    ),
    ("fstrim.timer", "trims filesystems a node does not have"),
    (
        "dpkg-db-backup.timer",
        "copies the package database into /var/backups",
    ),
];

/// SSH host private keys in the tree (`/etc/ssh/ssh_host_*_key`): every
/// node could read them over NFS, and all nodes would be one host to SSH.
pub fn host_private_keys(tree: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let dir = tree.join("etc/ssh");
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("listing", &dir, e)),
    };
    let mut keys = Vec::new();
    for e in entries {
        let e = e.map_err(|e| io("listing", &dir, e))?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("ssh_host_") && name.ends_with("_key") {
            keys.push(Path::new("/etc/ssh").join(&*name));
        }
    }
    keys.sort();
    Ok(keys)
}

/// Empties `/etc/machine-id` (systemd then makes a new one at every boot,
/// in RAM) and removes D-Bus's copy when it is a file of its own.
pub fn reset_machine_id(tree: &Path) -> Result<(), StoreError> {
    let id = tree.join("etc/machine-id");
    if fs::symlink_metadata(&id).is_ok_and(|m| m.is_file()) || !id.exists() {
        write_atomic(&id, b"", 0o444)?;
    }
    let dbus = tree.join("var/lib/dbus/machine-id");
    if fs::symlink_metadata(&dbus).is_ok_and(|m| m.is_file()) {
        fs::remove_file(&dbus).map_err(|e| io("removing", &dbus, e))?;
    }
    Ok(())
}

/// Keeps the journal in RAM, capped: a persistent journal would grow in the
/// overlay until the node runs out of memory.
pub fn journal_in_ram(tree: &Path) -> Result<(), StoreError> {
    let text = format!(
        "# Written by dfleet image publish: a diskless node keeps its journal in RAM.\n\
         [Journal]\nStorage=volatile\nRuntimeMaxUse={JOURNAL_RUNTIME_MAX}\n"
    );
    write_atomic(&tree.join(JOURNALD_DROP_IN), text.as_bytes(), 0o644)
}

/// Warnings for enabled timers that fill the overlay's RAM.
pub fn filling_timers(tree: &Path) -> Vec<String> {
    let wants = tree.join("etc/systemd/system/timers.target.wants");
    FILLING_TIMERS
        .iter()
        .filter(|(timer, _)| fs::symlink_metadata(wants.join(timer)).is_ok())
        .map(|(timer, what)| {
            format!(
                "{timer} is enabled: it {what}, in every node's RAM; \
                 `dfleet image exec IMAGE -- systemctl disable {timer}` (or mask it) if nodes do not need it"
            )
        })
        .collect()
}

/// Writes the generation stamp the agent reports.
pub fn write_stamp(tree: &Path, g: &GenerationRef) -> Result<(), StoreError> {
    let text = format!(
        "# Written by dfleet image publish.\nimage = \"{}\"\ngeneration = {}\n",
        g.image, g.generation
    );
    write_atomic(&tree.join(STAMP), text.as_bytes(), 0o644)
}

fn io(action: &'static str, path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn host_private_keys_are_found_and_public_ones_ignored() {
        let t = tempfile::tempdir().unwrap();
        let ssh = t.path().join("etc/ssh");
        fs::create_dir_all(&ssh).unwrap();
        for f in [
            "ssh_host_ed25519_key",
            "ssh_host_ed25519_key.pub",
            "ssh_host_rsa_key",
            "sshd_config",
        ] {
            fs::write(ssh.join(f), "x").unwrap();
        }
        assert_eq!(
            host_private_keys(t.path()).unwrap(),
            [
                PathBuf::from("/etc/ssh/ssh_host_ed25519_key"),
                PathBuf::from("/etc/ssh/ssh_host_rsa_key")
            ]
        );
        assert!(
            host_private_keys(&t.path().join("none"))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn machine_id_is_emptied_and_the_journal_kept_in_ram() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("etc")).unwrap();
        fs::create_dir_all(t.path().join("var/lib/dbus")).unwrap();
        fs::write(t.path().join("etc/machine-id"), "0123456789abcdef\n").unwrap();
        fs::write(t.path().join("var/lib/dbus/machine-id"), "0123\n").unwrap();
        reset_machine_id(t.path()).unwrap();
        assert_eq!(fs::read(t.path().join("etc/machine-id")).unwrap(), b"");
        let mode = fs::metadata(t.path().join("etc/machine-id"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o444);
        assert!(!t.path().join("var/lib/dbus/machine-id").exists());
        journal_in_ram(t.path()).unwrap();
        let conf = fs::read_to_string(t.path().join(JOURNALD_DROP_IN)).unwrap();
        assert!(
            conf.contains("Storage=volatile\nRuntimeMaxUse=64M\n"),
            "{conf}"
        );
    }

    #[test]
    fn enabled_filling_timers_are_named() {
        let t = tempfile::tempdir().unwrap();
        let wants = t.path().join("etc/systemd/system/timers.target.wants");
        fs::create_dir_all(&wants).unwrap();
        std::os::unix::fs::symlink(
            "/lib/systemd/system/apt-daily.timer",
            wants.join("apt-daily.timer"),
        )
        .unwrap();
        std::os::unix::fs::symlink("/x", wants.join("systemd-tmpfiles-clean.timer")).unwrap();
        let w = filling_timers(t.path());
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].starts_with("apt-daily.timer is enabled"), "{w:?}");
    }

    #[test]
    fn the_stamp_is_what_the_agent_parses() {
        let t = tempfile::tempdir().unwrap();
        let g: GenerationRef = "compute:8".parse().unwrap();
        write_stamp(t.path(), &g).unwrap();
        let text = fs::read_to_string(t.path().join(STAMP)).unwrap();
        assert!(
            text.contains("image = \"compute\"\ngeneration = 8\n"),
            "{text}"
        );
    }
}
