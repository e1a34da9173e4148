//! The lab image, cached between runs outside the lab directory in two
//! levels, each keyed by its inputs:
//! - `base-KEY`: the open generation after `image create` and the lab's
//!   base setup (debootstrap, kernel, packages: the slow part), keyed by the
//!   install recipe and the setup script;
//! - `lab-KEY`: the published generation with the lab's tools, the agent and
//!   dfleet's dracut module in its initramfs, plus the lab CA the agent
//!   trusts, keyed by the base key, the tools script, the module, the dracut
//!   command line and the agent binary.
//!
//! So a new agent or lab tool costs an install and a publish, not a
//! debootstrap. Saving
//! a level removes the entries of that level with other keys: the cache
//! holds one of each.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use dfleet_provisioner::image::distro::{Distro, recipe};
use dfleet_provisioner::image::{dracut, tree};

use super::{BASE_SETUP, HOST_IP, IMAGE, LAB_TOOLS};

pub const CACHE_ROOT: &str = "/var/cache/dfleet-lab";

/// The two keys. The dfleet binary itself is not an input: rebuilding it
/// for an unrelated change must not cost a cold build (a change to image
/// creation or publish's hygiene needs a bump of the crate version).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    pub base: String,
    pub published: String,
}

pub fn keys(agent: &Path) -> Result<Keys> {
    let mut h = DefaultHasher::new();
    format!("{:?}", recipe(Distro::Debian12, Path::new("/t"), &[], None)).hash(&mut h);
    BASE_SETUP.hash(&mut h);
    env!("CARGO_PKG_VERSION").hash(&mut h);
    let base = format!("base-debian12-{:016x}", h.finish());
    base.hash(&mut h);
    LAB_TOOLS.hash(&mut h);
    for f in dracut::MODULE_FILES {
        f.bytes.hash(&mut h);
    }
    dracut::dracut_argv("KVER", "OUT").hash(&mut h);
    HOST_IP.hash(&mut h);
    std::fs::read(agent)
        .with_context(|| format!("reading {}", agent.display()))?
        .hash(&mut h);
    Ok(Keys {
        base,
        published: format!("lab-debian12-{:016x}", h.finish()),
    })
}

pub fn entry(key: &str) -> PathBuf {
    Path::new(CACHE_ROOT).join(key)
}

/// Whether `key` is cached whole (entries are renamed into place last).
pub fn has(key: &str) -> bool {
    entry(key).join("1.toml").exists()
}

/// Copies the cached generation 1 of `key` into `images/lab/` as it was
/// (open or published). The copy keeps content, owners, modes and xattrs but
/// not the immutable flag, which a published copy gets again.
pub fn restore(key: &str, images: &Path, published: bool) -> Result<()> {
    let src = entry(key);
    let dst = images.join(IMAGE);
    if dst.exists() {
        tree::set_immutable(&dst, false)?;
        tree::remove_tree(&dst)?;
    }
    std::fs::create_dir_all(&dst)?;
    tree::copy_tree(&src.join("1"), &dst.join("1"))?;
    if published {
        tree::copy_tree(&src.join("1.boot"), &dst.join("1.boot"))?;
        std::fs::copy(src.join("1.manifest"), dst.join("1.manifest"))?;
    }
    std::fs::copy(src.join("1.toml"), dst.join("1.toml"))?;
    if published {
        tree::set_immutable(&dst.join("1"), true)?;
    }
    Ok(())
}

/// Saves generation 1 of `images/lab/` (and, for a published one, the lab
/// CA from `state`) under `key`, then removes the other entries of its level.
pub fn save(key: &str, images: &Path, state: &Path, published: bool) -> Result<()> {
    let root = Path::new(CACHE_ROOT);
    let partial = root.join(format!(".{key}.partial"));
    if partial.exists() {
        tree::remove_tree(&partial)?;
    }
    std::fs::create_dir_all(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let src = images.join(IMAGE);
    tree::copy_tree(&src.join("1"), &partial.join("1"))?;
    std::fs::copy(src.join("1.toml"), partial.join("1.toml"))?;
    if published {
        tree::copy_tree(&src.join("1.boot"), &partial.join("1.boot"))?;
        std::fs::copy(src.join("1.manifest"), partial.join("1.manifest"))?;
        for f in ["ca.pem", "ca.key"] {
            std::fs::copy(state.join(f), partial.join(f))?;
        }
    }
    let dst = entry(key);
    if dst.exists() {
        tree::remove_tree(&dst)?;
    }
    std::fs::rename(&partial, &dst)?;
    gc(key)
}

/// Removes every cache entry of `key`'s level with another key, and
/// leftovers of interrupted saves and of older cache layouts.
fn gc(key: &str) -> Result<()> {
    let mine = level(key);
    for e in std::fs::read_dir(CACHE_ROOT)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let stale = if name.starts_with('.') && name.ends_with(".partial") {
            name != format!(".{key}.partial")
        } else if name.starts_with("base-") || name.starts_with("lab-") {
            level(&name) == mine && name != key
        } else {
            // Entries of the single-level cache before this one.
            name.starts_with("debian12-")
        };
        if stale {
            let p = e.path();
            tree::remove_tree(&p).with_context(|| format!("removing {}", p.display()))?;
            println!("lab: removed the stale cache entry {}", p.display());
        }
    }
    Ok(())
}

fn level(key: &str) -> &str {
    key.split('-').next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_agent_changes_only_the_published_key() {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("agent");
        std::fs::write(&agent, b"one").unwrap();
        let a = keys(&agent).unwrap();
        std::fs::write(&agent, b"two").unwrap();
        let b = keys(&agent).unwrap();
        assert_eq!(a.base, b.base);
        assert_ne!(a.published, b.published);
        assert!(a.base.starts_with("base-") && a.published.starts_with("lab-"));
        assert_eq!(level(&a.base), "base");
    }
}
