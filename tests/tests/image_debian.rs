//! A real Debian 12 image through its whole life: `dfleet image create`
//! (debootstrap, then kernel and dracut inside the sandbox), publish refused
//! while SSH host keys are in the tree, `install-agent`, publish (initramfs
//! with dfleet's dracut module, immutable tree with its modes unchanged,
//! manifest that catches tampering, kernel and initramfs in the TFTP root,
//! the tree exported), then `edit`, a package install inside, and a second
//! publish that leaves both generations exported.
//!
//! The created image is cached outside the clone, keyed by the recipe that
//! made it (`DFLEET_TEST_CACHE`, default /var/cache/dfleet-tests); a cold
//! cache builds it with the same command (about 3 minutes here).

use std::hash::{DefaultHasher, Hash, Hasher};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use anyhow::{Context, Result, bail};
use dfleet_provisioner::image::distro::{Distro, recipe};
use dfleet_provisioner::image::store::ImageStore;
use dfleet_provisioner::image::tree;
use dfleet_tests::{Coordinator, Settings, bin, cluster_toml};

/// What the cached image has besides the base: an SSH server, whose
/// package makes host keys on install (publish must refuse them).
const PACKAGES: &[&str] = &["openssh-server"];

fn dfleet(config: &Path, socket: &Path, args: &[&str]) -> Result<Output> {
    Ok(std::process::Command::new(bin("dfleet"))
        .arg("--socket")
        .arg(socket)
        .arg("image")
        .arg("--config")
        .arg(config)
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

fn ok(o: Output) -> Result<String> {
    if !o.status.success() {
        bail!("dfleet failed ({}):\n{}", o.status, text(&o));
    }
    Ok(text(&o))
}

/// A cluster.toml whose image store is `images` (and nothing else matters).
fn config_for(dir: &Path, images: &Path, boot: bool) -> Result<PathBuf> {
    let mut toml = cluster_toml(dir, &[], &Settings::default());
    if boot {
        toml.push_str(&format!(
            "\n[boot]\ninterface = \"lo\"\nsubnet = \"10.99.0.0/24\"\nnext_server = \"10.99.0.1\"\ndhcp = \"dnsmasq\"\ndhcp_reload = [\"true\"]\n\n[paths]\ntftp_root = \"{}\"\ndhcp_root = \"{}\"\nexports_root = \"{}\"\n",
            dir.join("tftp").display(),
            dir.join("dhcp").display(),
            dir.join("exports").display()
        ));
    }
    toml.push_str(&format!(
        "\n[nfs]\nserver = \"10.99.0.1\"\nexport_root = \"{}\"\nreload = [\"true\"]\n",
        images.display()
    ));
    let config = dir.join("cluster.toml");
    std::fs::write(&config, toml)?;
    Ok(config)
}

/// The image store holding `base:1` (open) as `dfleet image create` made
/// it, built on first use.
fn cached_base() -> Result<PathBuf> {
    let packages: Vec<String> = PACKAGES.iter().map(|p| p.to_string()).collect();
    let mut h = DefaultHasher::new();
    format!(
        "{:?}",
        recipe(Distro::Debian12, Path::new("/t"), &packages, None)
    )
    .hash(&mut h);
    let cache = std::env::var_os("DFLEET_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/dfleet-tests"));
    let store = cache.join(format!("debian12-{:016x}", h.finish()));
    if store.join("base/1.toml").exists() {
        return Ok(store);
    }
    std::fs::create_dir_all(&store)?;
    let scratch = tempfile::tempdir()?;
    let config = config_for(scratch.path(), &store, false)?;
    let out = dfleet(
        &config,
        &scratch.path().join("no.sock"),
        &[
            "create",
            "base",
            "--distro",
            "debian12",
            "--packages",
            &packages.join(","),
        ],
    )?;
    ok(out).context("creating the cached Debian 12 image")?;
    Ok(store)
}

fn file_hash(path: &Path) -> Result<u64> {
    let mut h = DefaultHasher::new();
    std::fs::read(path)
        .with_context(|| format!("reading {}", path.display()))?
        .hash(&mut h);
    Ok(h.finish())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_debian_image_is_created_published_edited_and_published_again() -> Result<()> {
    let cache = cached_base()?;
    let dir = tempfile::tempdir()?;
    let images = dir.path().join("images");
    std::fs::create_dir_all(images.join("base"))?;
    tree::copy_tree(&cache.join("base/1"), &images.join("base/1"))?;
    std::fs::copy(cache.join("base/1.toml"), images.join("base/1.toml"))?;
    let config = config_for(dir.path(), &images, true)?;
    let c = Coordinator::start_with(dir.path(), &config).await?;
    let run = |args: &[&str]| dfleet(&config, &c.socket, args);
    let store = ImageStore::new(&images);
    let g1 = store.tree(&"base:1".parse()?);

    // openssh-server made host keys on install: publish refuses them.
    let refused = run(&["publish", "base"])?;
    assert!(!refused.status.success());
    let why = text(&refused);
    assert!(
        why.contains("SSH host private keys") && why.contains("/etc/ssh/ssh_host_ed25519_key"),
        "{why}"
    );
    ok(run(&[
        "exec",
        "base",
        "--",
        "sh",
        "-c",
        "rm -f /etc/ssh/ssh_host_*",
    ])?)?;

    // The agent, its unit (enabled), the CA and the coordinator address.
    let ca = dir.path().join("ca.pem");
    std::fs::write(
        &ca,
        "-----BEGIN CERTIFICATE-----\ntest\n-----END CERTIFICATE-----\n",
    )?;
    let agent = bin("dfleet-agent");
    ok(run(&[
        "install-agent",
        "base",
        "--agent",
        agent.to_str().context("path")?,
        "--ca",
        ca.to_str().context("path")?,
        "--coordinator",
        "10.99.0.1:7443",
    ])?)?;
    assert!(
        std::fs::symlink_metadata(
            g1.join("etc/systemd/system/multi-user.target.wants/dfleet-agent.service")
        )
        .is_ok()
    );
    assert!(std::fs::read_to_string(g1.join("etc/dfleet/agent.toml"))?.contains("10.99.0.1:7443"));

    let passwd_mode = std::fs::metadata(g1.join("usr/bin/passwd"))?
        .permissions()
        .mode();
    let published = ok(run(&["publish", "base"])?)?;
    assert!(published.contains("base:1 is published"), "{published}");
    assert!(published.contains("boot files:"), "{published}");

    // Frozen without changing modes; the stamp is what the agent reads.
    assert_eq!(
        std::fs::metadata(g1.join("usr/bin/passwd"))?
            .permissions()
            .mode(),
        passwd_mode
    );
    let write = std::fs::OpenOptions::new()
        .append(true)
        .open(g1.join("etc/hostname"));
    assert_eq!(
        write.map(|_| ()).map_err(|e| e.raw_os_error()),
        Err(Some(1)),
        "a published file must refuse writes (EPERM)"
    );
    assert!(std::fs::read_to_string(g1.join("etc/dfleet/generation"))?.contains("generation = 1"));
    assert_eq!(std::fs::read(g1.join("etc/machine-id"))?, b"");

    // Its kernel and initramfs are in the TFTP root, and it is exported.
    let boot = store.boot_dir(&"base:1".parse()?);
    assert_eq!(
        file_hash(&dir.path().join("tftp/dfleet/base/1/vmlinuz"))?,
        file_hash(&boot.join("vmlinuz"))?
    );
    assert_eq!(
        file_hash(&dir.path().join("tftp/dfleet/base/1/initrd.img"))?,
        file_hash(&boot.join("initrd.img"))?
    );
    let exports = std::fs::read_to_string(dir.path().join("exports/dfleet.exports"))?;
    assert!(
        exports.contains(&format!("{} 10.99.0.0/24(ro,", g1.display())),
        "{exports}"
    );

    // The next generation: a copy, a package installed inside, published too.
    ok(run(&["edit", "base"])?)?;
    let g2 = store.tree(&"base:2".parse()?);
    std::fs::copy(boot.join("initrd.img"), g2.join("tmp/initrd.img"))?;
    let listing = ok(run(&["exec", "base", "--", "lsinitrd", "/tmp/initrd.img"])?)?;
    assert!(
        listing.contains("hooks/pre-pivot/") && listing.contains("dfleet"),
        "{listing}"
    );
    std::fs::remove_file(g2.join("tmp/initrd.img"))?;
    ok(run(&[
        "exec",
        "base",
        "--",
        "apt-get",
        "install",
        "--yes",
        "--no-install-recommends",
        "hello",
    ])?)?;
    assert!(g2.join("usr/bin/hello").exists());
    assert!(!g1.join("usr/bin/hello").exists());
    ok(run(&["publish", "base"])?)?;
    let exports = std::fs::read_to_string(dir.path().join("exports/dfleet.exports"))?;
    assert!(
        exports.contains(&format!("{} 10.99.0.0/24(ro,", g1.display())),
        "{exports}"
    );
    assert!(
        exports.contains(&format!("{} 10.99.0.0/24(ro,", g2.display())),
        "{exports}"
    );
    assert!(dir.path().join("tftp/dfleet/base/2/vmlinuz").exists());

    // The manifest catches a file changed behind dfleet's back.
    ok(run(&["verify", "base:1"])?)?;
    let hostname = g1.join("etc/hostname");
    let chattr = |flag: &str| {
        std::process::Command::new("chattr")
            .arg(flag)
            .arg(&hostname)
            .status()
    };
    assert!(chattr("-i")?.success());
    std::fs::write(&hostname, "tampered\n")?;
    assert!(chattr("+i")?.success());
    let tampered = run(&["verify", "base:1"])?;
    assert_eq!(tampered.status.code(), Some(1), "{}", text(&tampered));
    assert!(
        text(&tampered).contains("etc/hostname: content"),
        "{}",
        text(&tampered)
    );

    // Published trees are frozen: clear the flags so the temp dir can go.
    for g in [&g1, &g2] {
        tree::set_immutable(g, false)?;
    }
    Ok(())
}
