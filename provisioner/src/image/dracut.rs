//! dfleet's dracut module, installed into an image, and the dracut command
//! that builds a node's initramfs inside that image.
//!
//! The module (`provisioner/dracut/90dfleet`, embedded here) makes the node's
//! root an overlay: the image generation mounted read-only over NFS at
//! `/run/dfleet/lower`, the upper layer in a tmpfs at `/run/dfleet/rw` sized
//! by `dfleet.overlay.size=`. It works whether the distribution's nfs module
//! mounts the NFS root itself (Debian 12) or nobody does (SLES 15, dracut
//! issue 1010); `dfleet-lib.sh`'s header explains both paths.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// The module's name, as `dracut -m` and `--add` spell it.
pub const MODULE_NAME: &str = "dfleet";

/// Where the module lives in an image, relative to its root.
pub const MODULE_DIR: &str = "usr/lib/dracut/modules.d/90dfleet";

/// One file of the module: its name in [`MODULE_DIR`], content and mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModuleFile {
    pub name: &'static str,
    pub bytes: &'static [u8],
    pub mode: u32,
}

/// Every file of the module. All are shell scripts: dracut runs
/// `module-setup.sh`, and copies the others into the initramfs keeping their
/// mode (`/sbin/dfleetroot` is executed, the rest are sourced).
pub const MODULE_FILES: &[ModuleFile] = &[
    ModuleFile {
        name: "module-setup.sh",
        bytes: include_bytes!("../../dracut/90dfleet/module-setup.sh"),
        mode: 0o755,
    },
    ModuleFile {
        name: "dfleet-lib.sh",
        bytes: include_bytes!("../../dracut/90dfleet/dfleet-lib.sh"),
        mode: 0o755,
    },
    ModuleFile {
        name: "dfleet-cmdline.sh",
        bytes: include_bytes!("../../dracut/90dfleet/dfleet-cmdline.sh"),
        mode: 0o755,
    },
    ModuleFile {
        name: "dfleet-pre-pivot.sh",
        bytes: include_bytes!("../../dracut/90dfleet/dfleet-pre-pivot.sh"),
        mode: 0o755,
    },
    ModuleFile {
        name: "dfleetroot.sh",
        bytes: include_bytes!("../../dracut/90dfleet/dfleetroot.sh"),
        mode: 0o755,
    },
];

/// Kernel modules added to every initramfs besides what dracut's modules
/// bring. A missing one does not fail the build (dracut 059 exits 0); it
/// logs `dracut-install: Failed to find module 'NAME'` and a `dracut: FAILED:`
/// line, which is what a caller should look for in dracut's output. `virtio_pci`, `virtio_net`: virtual machines (the lab, and
/// `-m` leaves out dracut's qemu modules). `overlay`: the root itself. The NIC
/// drivers are already included by dracut's kernel-network-modules when not
/// host-only; naming them makes a kernel without them show up in the build
/// log. All exist in Debian 12's `linux-image-amd64`.
pub const DRIVERS: &[&str] = &[
    "virtio_pci",
    "virtio_net",
    "overlay",
    "e1000",
    "e1000e",
    "igb",
    "ixgbe",
    "i40e",
    "ice",
    "bnxt_en",
    "tg3",
    "mlx5_core",
];

/// The dracut modules of a node's initramfs (`-m` makes this the whole list,
/// plus what they depend on). `network-legacy` is named because the network
/// module otherwise picks systemd-networkd whenever the image has its
/// binary, which on Debian 12 needs dbus in the initramfs and fails; with
/// `-m` there is no systemd module, so dracut's shell init runs the hooks.
pub const DRACUT_MODULES: &[&str] = &["base", "network-legacy", "network", "nfs", MODULE_NAME];

#[derive(Debug, thiserror::Error)]
pub enum DracutError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("refusing to write through the symbolic link {0} in the image")]
    Symlink(PathBuf),
    #[error("no kernel in {0}: install linux-image-amd64 in the image first")]
    NoKernel(PathBuf),
    #[error(
        "several kernels in {dir}: {}; remove all but the one nodes should boot",
        versions.join(", ")
    )]
    SeveralKernels { dir: PathBuf, versions: Vec<String> },
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> DracutError + 'a {
    move |source| DracutError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Writes the module into the image at `<image_root>/`[`MODULE_DIR`]. Each
/// file goes to a temporary name, is synced, gets its mode and is renamed over
/// its target, so dracut never sees half a file; files in that directory that
/// are not the module's (an older version's) are removed, since the directory
/// is dfleet's by its name. Refuses to follow a symbolic link on the way, which
/// could point out of the image.
pub fn install_module(image_root: &Path) -> Result<(), DracutError> {
    let dir = image_root.join(MODULE_DIR);
    let mut at = image_root.to_path_buf();
    for part in Path::new(MODULE_DIR).components() {
        at.push(part);
        match fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => return Err(DracutError::Symlink(at)),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("inspecting", &at)(e)),
        }
    }
    fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
        .map_err(io("setting the mode of", &dir))?;

    for file in MODULE_FILES {
        let target = dir.join(file.name);
        let temp = dir.join(format!(".{}.dfleet-new", file.name));
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(file.mode)
            .open(&temp)
            .map_err(io("creating", &temp))?;
        out.write_all(file.bytes).map_err(io("writing", &temp))?;
        // The umask may have taken bits away from the mode given at creation.
        out.set_permissions(fs::Permissions::from_mode(file.mode))
            .map_err(io("setting the mode of", &temp))?;
        out.sync_all().map_err(io("syncing", &temp))?;
        drop(out);
        fs::rename(&temp, &target).map_err(io("renaming into place", &target))?;
    }

    for entry in fs::read_dir(&dir).map_err(io("listing", &dir))? {
        let entry = entry.map_err(io("listing", &dir))?;
        let name = entry.file_name();
        if !MODULE_FILES.iter().any(|f| name == f.name) {
            let path = entry.path();
            let is_dir = entry.file_type().map_err(io("inspecting", &path))?.is_dir();
            if is_dir {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            }
            .map_err(io("removing the stale", &path))?;
        }
    }
    fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(io("syncing", &dir))
}

/// The command, run inside the image (`chroot <root> …`) so that kernel,
/// modules and dracut are the image's own, that writes a node's initramfs for
/// `kernel_version` to `out` (a path inside the image). Not host-only and
/// without the build host's command line: the initramfs serves every node,
/// and the root comes from the kernel command line dfleet writes. `ifcfg` is
/// omitted because Debian's dracut-network adds it in
/// `/etc/dracut.conf.d/11-ifcfg.conf` (config files add to `-m`): it only
/// writes Red Hat network-scripts files, which a diskless node has no use for.
pub fn dracut_argv(kernel_version: &str, out: &str) -> Vec<String> {
    vec![
        "dracut".to_string(),
        "--no-hostonly".to_string(),
        "--no-hostonly-cmdline".to_string(),
        "--nofscks".to_string(),
        "--force".to_string(),
        "--omit".to_string(),
        "ifcfg".to_string(),
        "--add-drivers".to_string(),
        DRIVERS.join(" "),
        "-m".to_string(),
        DRACUT_MODULES.join(" "),
        out.to_string(),
        kernel_version.to_string(),
    ]
}

/// The image's kernel version: the one name under `<image_root>/lib/modules`
/// that has both a `modules.dep` there and a `boot/vmlinuz-<version>`
/// (leftover module directories of a removed kernel do not count). None or
/// several is an error naming the directory (and the versions): a generation
/// boots exactly one kernel, and picking the "newest" would need Debian's
/// version ordering and could boot one the admin meant to remove.
pub fn kernel_version(image_root: &Path) -> Result<String, DracutError> {
    let dir = image_root.join("lib/modules");
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(DracutError::NoKernel(dir));
        }
        Err(e) => return Err(io("listing", &dir)(e)),
    };
    let mut versions = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io("listing", &dir))?;
        let Some(version) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let kernel = image_root.join("boot").join(format!("vmlinuz-{version}"));
        if entry.path().join("modules.dep").is_file() && kernel.is_file() {
            versions.push(version);
        }
    }
    versions.sort();
    match versions.len() {
        0 => Err(DracutError::NoKernel(dir)),
        1 => Ok(versions.remove(0)),
        _ => Err(DracutError::SeveralKernels { dir, versions }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn install_module_writes_every_file_with_its_mode() {
        let root = tempfile::tempdir().unwrap();
        install_module(root.path()).unwrap();
        let dir = root.path().join(MODULE_DIR);
        assert_eq!(mode(&dir), 0o755);
        let mut names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        let mut expected: Vec<_> = MODULE_FILES.iter().map(|f| f.name.to_string()).collect();
        expected.sort();
        assert_eq!(names, expected, "no temporary file left behind");
        for file in MODULE_FILES {
            let path = dir.join(file.name);
            assert_eq!(fs::read(&path).unwrap(), file.bytes, "{}", file.name);
            assert_eq!(mode(&path), 0o755, "{}", file.name);
        }
    }

    #[test]
    fn install_module_replaces_an_older_version_and_removes_stale_files() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join(MODULE_DIR);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("module-setup.sh"), "old").unwrap();
        fs::set_permissions(
            dir.join("module-setup.sh"),
            fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        fs::write(dir.join("old-hook.sh"), "old").unwrap();
        install_module(root.path()).unwrap();
        assert_eq!(
            fs::read(dir.join("module-setup.sh")).unwrap(),
            MODULE_FILES[0].bytes
        );
        assert_eq!(mode(&dir.join("module-setup.sh")), 0o755);
        assert!(!dir.join("old-hook.sh").exists());
    }

    #[test]
    fn install_module_refuses_a_symlink_out_of_the_image() {
        let root = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("usr/lib")).unwrap();
        symlink(elsewhere.path(), root.path().join("usr/lib/dracut")).unwrap();
        let err = install_module(root.path()).unwrap_err();
        assert!(
            matches!(&err, DracutError::Symlink(p) if p.ends_with("usr/lib/dracut")),
            "{err}"
        );
        assert_eq!(fs::read_dir(elsewhere.path()).unwrap().count(), 0);
    }

    #[test]
    fn the_module_files_are_the_ones_module_setup_installs() {
        let setup = std::str::from_utf8(MODULE_FILES[0].bytes).unwrap();
        for file in &MODULE_FILES[1..] {
            assert!(
                setup.contains(&format!("\"$moddir/{}\"", file.name)),
                "{}",
                file.name
            );
        }
    }

    #[test]
    fn dracut_argv_builds_a_generic_initramfs_with_the_module() {
        assert_eq!(
            dracut_argv("6.1.0-50-amd64", "/boot/initrd.img-6.1.0-50-amd64"),
            [
                "dracut",
                "--no-hostonly",
                "--no-hostonly-cmdline",
                "--nofscks",
                "--force",
                "--omit",
                "ifcfg",
                "--add-drivers",
                "virtio_pci virtio_net overlay e1000 e1000e igb ixgbe i40e ice bnxt_en tg3 mlx5_core",
                "-m",
                "base network-legacy network nfs dfleet",
                "/boot/initrd.img-6.1.0-50-amd64",
                "6.1.0-50-amd64",
            ]
        );
    }

    fn kernel(root: &Path, version: &str) {
        fs::create_dir_all(root.join("lib/modules").join(version)).unwrap();
        fs::write(
            root.join("lib/modules").join(version).join("modules.dep"),
            "",
        )
        .unwrap();
        fs::create_dir_all(root.join("boot")).unwrap();
        fs::write(root.join("boot").join(format!("vmlinuz-{version}")), "").unwrap();
    }

    #[test]
    fn kernel_version_finds_the_one_kernel() {
        let root = tempfile::tempdir().unwrap();
        kernel(root.path(), "6.1.0-50-amd64");
        // A removed kernel's leftover module directory does not count.
        fs::create_dir_all(root.path().join("lib/modules/6.1.0-40-amd64/updates")).unwrap();
        assert_eq!(kernel_version(root.path()).unwrap(), "6.1.0-50-amd64");
    }

    #[test]
    fn kernel_version_names_the_directory_when_there_is_none() {
        let root = tempfile::tempdir().unwrap();
        let err = kernel_version(root.path()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "no kernel in {}/lib/modules: install linux-image-amd64 in the image first",
                root.path().display()
            )
        );
        fs::create_dir_all(root.path().join("lib/modules/6.1.0-50-amd64")).unwrap();
        assert!(matches!(
            kernel_version(root.path()),
            Err(DracutError::NoKernel(_))
        ));
    }

    #[test]
    fn kernel_version_refuses_to_choose_between_several() {
        let root = tempfile::tempdir().unwrap();
        kernel(root.path(), "6.1.0-50-amd64");
        kernel(root.path(), "6.1.0-49-amd64");
        let err = kernel_version(root.path()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "several kernels in {}/lib/modules: 6.1.0-49-amd64, 6.1.0-50-amd64; \
                 remove all but the one nodes should boot",
                root.path().display()
            )
        );
    }
}
