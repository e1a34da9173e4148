//! `dfleet image` on a real image store: `edit` opens the next generation as
//! an exact copy (file capabilities included, checked with the real
//! `getcap`), `exec` runs commands inside the open generation only, and
//! `verify` names what changed in a published tree.

use std::path::{Path, PathBuf};
use std::process::Output;

use anyhow::{Context, Result};
use dfleet_provisioner::image::manifest::Manifest;
use dfleet_provisioner::image::store::ImageStore;
use dfleet_tests::{Settings, bin, busybox_root, cluster_toml, publish_generation};

struct Site {
    _dir: tempfile::TempDir,
    config: PathBuf,
    images: PathBuf,
}

fn site() -> Result<Site> {
    let dir = tempfile::tempdir()?;
    let images = dir.path().join("images");
    let mut toml = cluster_toml(dir.path(), &[], &Settings::default());
    toml.push_str(&format!(
        "\n[nfs]\nserver = \"10.99.0.1\"\nexport_root = \"{}\"\nreload = [\"true\"]\n",
        images.display()
    ));
    let config = dir.path().join("cluster.toml");
    std::fs::write(&config, toml)?;
    Ok(Site {
        _dir: dir,
        config,
        images,
    })
}

fn dfleet(site: &Site, args: &[&str]) -> Result<Output> {
    Ok(std::process::Command::new(bin("dfleet"))
        .arg("image")
        .arg("--config")
        .arg(&site.config)
        .args(args)
        .output()?)
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// compute:1, published, with a busybox root, a capability on a binary and
/// its manifest.
fn published_base(site: &Site) -> Result<PathBuf> {
    publish_generation(&site.images, "compute:1")?;
    let store = ImageStore::new(&site.images);
    let g = "compute:1".parse()?;
    let tree = store.tree(&g);
    busybox_root(&tree)?;
    let ping = tree.join("usr/bin/ping");
    std::fs::copy("/usr/bin/busybox", &ping)?;
    let set = std::process::Command::new("setcap")
        .args(["cap_net_raw+ep"])
        .arg(&ping)
        .status()?;
    assert!(set.success(), "setcap failed");
    Manifest::build(&tree)?.write(&store.manifest_path(&g))?;
    Ok(tree)
}

fn getcap(path: &Path) -> Result<String> {
    let out = std::process::Command::new("getcap").arg(path).output()?;
    Ok(String::from_utf8(out.stdout)?
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string())
}

#[test]
fn edit_copies_exactly_and_exec_changes_only_the_open_generation() -> Result<()> {
    let site = site()?;
    let base = published_base(&site)?;

    // Published generations never change: there is nothing open to exec in.
    let o = dfleet(&site, &["exec", "compute", "--", "touch", "/x"])?;
    assert!(!o.status.success());
    assert!(text(&o).contains("has no open generation"), "{}", text(&o));

    let o = dfleet(&site, &["edit", "compute"])?;
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("compute:2 is open"), "{}", text(&o));
    let open = site.images.join("compute/2");
    assert_eq!(getcap(&open.join("usr/bin/ping"))?, "cap_net_raw=ep");
    assert_eq!(getcap(&base.join("usr/bin/ping"))?, "cap_net_raw=ep");
    // One open generation at a time.
    let o = dfleet(&site, &["edit", "compute"])?;
    assert!(
        text(&o).contains("compute:2 is already open"),
        "{}",
        text(&o)
    );

    // A change made inside lands in the open generation only.
    let o = dfleet(
        &site,
        &[
            "exec",
            "compute",
            "--",
            "sh",
            "-c",
            "echo changed > /etc/motd; exit 7",
        ],
    )?;
    assert_eq!(o.status.code(), Some(7), "{}", text(&o));
    assert_eq!(std::fs::read_to_string(open.join("etc/motd"))?, "changed\n");
    assert!(!base.join("etc/motd").exists());

    let list = dfleet(&site, &["list"])?;
    let listing = text(&list);
    assert!(
        listing.contains("compute:1") && listing.contains("published"),
        "{listing}"
    );
    assert!(
        listing.contains("compute:2") && listing.contains("open"),
        "{listing}"
    );
    Ok(())
}

#[test]
fn verify_names_what_changed_in_a_published_tree() -> Result<()> {
    let site = site()?;
    let base = published_base(&site)?;
    let o = dfleet(&site, &["verify", "compute"])?;
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("compute:1: matches its manifest"),
        "{}",
        text(&o)
    );

    // Someone edits the published tree behind dfleet's back.
    std::fs::write(base.join("etc/motd"), "tampered\n")?;
    let removed = std::process::Command::new("setcap")
        .arg("-r")
        .arg(base.join("usr/bin/ping"))
        .status()?;
    assert!(removed.success());
    let o = dfleet(&site, &["verify", "compute:1"])?;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("2 differences"), "{out}");
    assert!(out.contains("etc/motd"), "{out}");
    assert!(
        out.contains("usr/bin/ping") && out.contains("security.capability"),
        "{out}"
    );
    Ok(())
}

#[test]
fn a_bad_image_name_is_refused() -> Result<()> {
    let site = site()?;
    let o = dfleet(&site, &["edit", "../etc"])?;
    assert!(!o.status.success());
    assert!(text(&o).contains("invalid image name"), "{}", text(&o));
    std::fs::metadata(&site.config).context("config")?;
    Ok(())
}

#[test]
fn a_missing_install_tool_names_its_package_and_leaves_nothing() -> Result<()> {
    let site = site()?;
    // This host has debootstrap (the test command installs it), not dnf.
    let o = dfleet(&site, &["create", "el", "--distro", "rhel8"])?;
    assert!(!o.status.success());
    assert!(
        text(&o).contains("rhel8 images are installed with dnf, which is not on this host: install the Debian package dnf"),
        "{}",
        text(&o)
    );
    assert!(!site.images.join("el/1").exists() && !site.images.join("el/.1.partial").exists());
    let o = dfleet(&site, &["create", "el", "--distro", "ubuntu"])?;
    assert!(
        text(&o).contains("expected debian12, sles15 or rhel8"),
        "{}",
        text(&o)
    );
    Ok(())
}

#[test]
fn a_failed_publish_leaves_the_generation_open_and_usable() -> Result<()> {
    let site = site()?;
    published_base(&site)?;
    let o = dfleet(&site, &["edit", "compute"])?;
    assert!(o.status.success(), "{}", text(&o));
    // A kernel, but no dracut in the tree: the initramfs build fails.
    let open = site.images.join("compute/2");
    std::fs::create_dir_all(open.join("lib/modules/6.1.0-test"))?;
    std::fs::write(open.join("lib/modules/6.1.0-test/modules.dep"), "")?;
    std::fs::create_dir_all(open.join("boot"))?;
    std::fs::write(open.join("boot/vmlinuz-6.1.0-test"), "kernel")?;
    let o = dfleet(&site, &["publish", "compute"])?;
    assert!(!o.status.success());
    let out = text(&o);
    assert!(out.contains("dracut for 6.1.0-test failed"), "{out}");
    assert!(out.contains("compute:2 stays open"), "{out}");
    // Still open and writable; nothing of a publish left behind.
    let store = ImageStore::new(&site.images);
    let g2 = "compute:2".parse()?;
    assert_eq!(
        store.record(&g2)?.state,
        dfleet_provisioner::image::store::GenState::Open
    );
    std::fs::write(open.join("etc/still-writable"), "yes")?;
    assert!(!store.manifest_path(&g2).exists());
    assert!(!store.boot_dir(&g2).exists());
    assert!(!open.join("tmp/dfleet-initrd.img").exists());
    // The sandbox can still run in it, and the previous generation is intact.
    let o = dfleet(
        &site,
        &["exec", "compute", "--", "cat", "/etc/still-writable"],
    )?;
    assert_eq!(String::from_utf8_lossy(&o.stdout), "yes");
    let o = dfleet(&site, &["verify", "compute:1"])?;
    assert!(o.status.success(), "{}", text(&o));
    Ok(())
}

/// A tmpfs the test mounted, unmounted on drop (before the temporary
/// directory it sits in is removed).
struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_during_publish_leaves_the_previous_generation_serving() -> Result<()> {
    let site = site()?;
    // The image store on a filesystem that fills up during the publish.
    std::fs::create_dir_all(&site.images)?;
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=12m", "dfleet-test-full"])
        .arg(&site.images)
        .status()?;
    assert!(mounted.success(), "mounting a tmpfs");
    let _tmpfs = Tmpfs(site.images.clone());
    let base = published_base(&site)?;
    let o = dfleet(&site, &["edit", "compute"])?;
    assert!(o.status.success(), "{}", text(&o));
    let open = site.images.join("compute/2");
    // A kernel, and a dracut that writes a 4 MiB initramfs: it fits in the
    // tree, but copying it out next to the tree fills the disk.
    std::fs::create_dir_all(open.join("lib/modules/6.1.0-test"))?;
    std::fs::write(open.join("lib/modules/6.1.0-test/modules.dep"), "")?;
    std::fs::create_dir_all(open.join("boot"))?;
    std::fs::write(open.join("boot/vmlinuz-6.1.0-test"), "kernel")?;
    std::os::unix::fs::symlink("/usr/bin/busybox", open.join("bin/dd"))?;
    std::fs::write(
        open.join("bin/dracut"),
        "#!/bin/sh\nexec dd if=/dev/zero of=/tmp/dfleet-initrd.img bs=1048576 count=4\n",
    )?;
    std::fs::set_permissions(
        open.join("bin/dracut"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let o = dfleet(&site, &["publish", "compute"])?;
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("No space left on device"), "{}", text(&o));

    // The new generation is still open; the previous one is whole and
    // published, with its boot files, and verifies.
    let store = ImageStore::new(&site.images);
    use dfleet_provisioner::image::store::GenState;
    assert_eq!(store.record(&"compute:2".parse()?)?.state, GenState::Open);
    let g1 = "compute:1".parse()?;
    assert_eq!(store.record(&g1)?.state, GenState::Published);
    assert!(store.boot_dir(&g1).join("vmlinuz").exists());
    let o = dfleet(&site, &["verify", "compute:1"])?;
    assert!(o.status.success(), "{}", text(&o));
    assert!(base.join("usr/bin/ping").exists());
    Ok(())
}
