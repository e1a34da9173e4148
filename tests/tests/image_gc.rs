//! `image gc` through a real coordinator: generations nothing needs leave the
//! store, the TFTP root and the exports; assigned, running, open and newest
//! generations stay, and a second gc finds nothing to do.

use std::path::Path;

use anyhow::{Context, Result};
use dfleet_agent::sandbox::{self, SandboxSpec};
use dfleet_coordinator::client::Target;
use dfleet_coordinator::image_gc;
use dfleet_proto::domain::{EventKind, GenerationRef};
use dfleet_provisioner::image::store::{GenState, ImageStore, Record};
use dfleet_tests::{Agent, Coordinator, nodes};

fn g(s: &str) -> GenerationRef {
    s.parse().unwrap()
}

/// What of generation `n` of compute is on disk: (record, tree, TFTP kernel,
/// export line).
fn present(dir: &Path, n: u64) -> Result<(bool, bool, bool, bool)> {
    let images = dir.join("images");
    let store = ImageStore::new(&images);
    let generation = g(&format!("compute:{n}"));
    let exports = std::fs::read_to_string(dir.join("exports/dfleet.exports")).unwrap_or_default();
    let line = format!("{}/compute/{n} ", images.display());
    Ok((
        store.record_path(&generation).exists(),
        store.tree(&generation).exists(),
        dir.join(format!("tftp/dfleet/compute/{n}/vmlinuz"))
            .exists(),
        exports.lines().any(|l| l.starts_with(&line)),
    ))
}

fn open_generation(images: &Path, n: u64) -> Result<()> {
    let store = ImageStore::new(images);
    let mut r = Record::new(&format!("compute:{n}").parse()?, GenState::Open, "test", 0);
    r.parent = Some(n - 1);
    std::fs::create_dir_all(store.tree(&r.generation_ref()).join("etc"))?;
    store.write_record(&r)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn gc_deletes_unused_generations_after_unexporting_them() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ns = nodes(61, 2);
    let c = Coordinator::start(
        dir.path(),
        &dfleet_tests::loopback_boot_toml(dir.path(), 61, &ns),
    )
    .await?;
    let mut events = c.watch().await?;
    let images = dir.path().join("images");
    for n in 1..=5 {
        dfleet_tests::publish_generation(&images, &format!("compute:{n}"))?;
    }
    // A published tree carries the immutable flag: gc deletes it anyway.
    let report = dfleet_provisioner::image::tree::set_immutable(&images.join("compute/1"), true)?;
    assert!(report.supported, "the test directory has no immutable flag");
    open_generation(&images, 6)?;
    c.cli(&["node", "assign", "cn01", "compute:2"]).await?;
    for n in 1..=5 {
        assert_eq!(
            present(dir.path(), n)?,
            (true, true, true, true),
            "compute:{n}"
        );
    }
    let target = Target::Socket(c.socket.clone());

    // The usage the CLI's `image list` shows.
    let usage = image_gc::usage(&target).await?;
    assert_eq!(usage["compute:2"], (vec![], vec!["cn01".to_string()]));
    assert_eq!(usage["compute:6"], (vec![], vec![]));

    // 0 is refused rather than taken for "delete everything unused".
    let e = image_gc::request_gc(&target, 0, false).await.unwrap_err();
    assert!(e.to_string().contains("keep at least 1"), "{e}");

    // A dry run names the victims and changes nothing.
    let dry = image_gc::request_gc(&target, 1, true).await?;
    assert_eq!(dry.deleted, ["compute:1", "compute:3", "compute:4"]);
    assert_eq!(present(dir.path(), 1)?, (true, true, true, true));
    let text = image_gc::gc_text(&dry, true);
    assert!(text.contains("would delete compute:3\n"), "{text}");

    let done = image_gc::request_gc(&target, 1, false).await?;
    assert_eq!(done.deleted, ["compute:1", "compute:3", "compute:4"]);
    let kept = done.kept_reasons.join("\n");
    assert!(
        kept.contains("compute:2: assigned to 1 node (cn01)"),
        "{kept}"
    );
    assert!(kept.contains("compute:5: newest 1 published"), "{kept}");
    assert!(kept.contains("compute:6: open"), "{kept}");
    // Kernels and initramfs of three generations left the TFTP root.
    assert!(done.boot_files.contains("6 removed"), "{}", done.boot_files);
    for n in [1, 3, 4] {
        assert_eq!(
            present(dir.path(), n)?,
            (false, false, false, false),
            "compute:{n}"
        );
        let store = ImageStore::new(&images);
        let generation = g(&format!("compute:{n}"));
        assert!(!store.boot_dir(&generation).exists());
        assert!(!store.manifest_path(&generation).exists());
    }
    for n in [2, 5] {
        assert_eq!(
            present(dir.path(), n)?,
            (true, true, true, true),
            "compute:{n}"
        );
    }
    let open = ImageStore::new(&images).record(&g("compute:6"))?;
    assert_eq!(open.state, GenState::Open);
    assert!(images.join("compute/6/etc").is_dir());
    let e = events
        .wait_for("generations deleted", |e| {
            e.kind == EventKind::GenerationsDeleted
        })
        .await?;
    assert!(
        e.detail.contains("compute:1, compute:3, compute:4"),
        "{}",
        e.detail
    );
    assert!(e.actor.starts_with("uid:"), "{}", e.actor);

    // Nothing is left to collect.
    let again = image_gc::request_gc(&target, 1, false).await?;
    assert!(again.deleted.is_empty(), "{:?}", again.deleted);
    assert!(
        again.boot_files.contains("nothing to delete"),
        "{}",
        again.boot_files
    );
    // The menus and exports still agree with the store.
    let diff = c.cli(&["pxe", "diff"]).await?;
    assert!(diff.contains("0 created, 0 changed, 0 removed"), "{diff}");

    // A tree left without its record (a gc interrupted between its steps)
    // is finished off by the next one.
    std::fs::create_dir_all(images.join("compute/4/etc"))?;
    let left = image_gc::request_gc(&target, 1, false).await?;
    assert_eq!(left.deleted, ["compute:4"]);
    assert!(!images.join("compute/4").exists());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_generation_a_node_runs_stays_after_the_node_goes_away() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir()?;
    let ns = nodes(62, 2);
    let c = Coordinator::start(
        dir.path(),
        &dfleet_tests::loopback_boot_toml(dir.path(), 62, &ns),
    )
    .await?;
    let mut events = c.watch().await?;
    let images = dir.path().join("images");
    for n in 1..=4 {
        dfleet_tests::publish_generation(&images, &format!("compute:{n}"))?;
    }
    c.cli(&["pxe", "apply"]).await?;

    // cn02 booted compute:2: the stamp in its lower layer says so.
    let n = &ns[1];
    let mut spec = SandboxSpec::new(&n.name, n.mac.parse()?, n.ip);
    spec.image = g("compute:2");
    let root = dir.path().join(&n.name);
    sandbox::build(&root, &spec).context("building cn02's sandbox")?;
    let agent = Agent::start(&c, n, &root).await?;
    events.wait(EventKind::Ready, "cn02").await?;
    let target = Target::Socket(c.socket.clone());
    let usage = image_gc::usage(&target).await?;
    assert_eq!(usage["compute:2"], (vec!["cn02".to_string()], vec![]));

    // The node vanishes: its last report still counts.
    agent.kill().await?;
    events.wait(EventKind::Disconnected, "cn02").await?;
    let done = image_gc::request_gc(&target, 1, false).await?;
    assert_eq!(done.deleted, ["compute:1", "compute:3"]);
    let kept = done.kept_reasons.join("\n");
    assert!(
        kept.contains("compute:2: running on 1 node (cn02)"),
        "{kept}"
    );
    assert_eq!(present(dir.path(), 2)?, (true, true, true, true));
    assert_eq!(present(dir.path(), 1)?, (false, false, false, false));
    Ok(())
}

/// Runs `dfleet image ARGS` against the coordinator.
async fn image_cli(c: &Coordinator, args: &[&str]) -> Result<std::process::Output> {
    Ok(tokio::process::Command::new(dfleet_tests::bin("dfleet"))
        .arg("--socket")
        .arg(&c.socket)
        .arg("image")
        .arg("--config")
        .arg(&c.config)
        .args(args)
        .output()
        .await?)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retired_generation_is_unexported_unassignable_and_collected() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ns = nodes(62, 2);
    let c = Coordinator::start(
        dir.path(),
        &dfleet_tests::loopback_boot_toml(dir.path(), 62, &ns),
    )
    .await?;
    let mut events = c.watch().await?;
    let images = dir.path().join("images");
    for n in 1..=3 {
        dfleet_tests::publish_generation(&images, &format!("compute:{n}"))?;
    }
    c.cli(&["node", "assign", "cn01", "compute:2"]).await?;

    // A generation in use cannot be retired.
    let o = image_cli(&c, &["retire", "compute:2"]).await?;
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("compute:2 is assigned to cn01"), "{e}");

    // An unused one is withdrawn: record kept, tree kept, nothing served.
    let o = image_cli(&c, &["retire", "compute:1"]).await?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("compute:1 is retired"));
    assert_eq!(present(dir.path(), 1)?, (true, true, false, false));
    let store = ImageStore::new(&images);
    assert_eq!(store.record(&g("compute:1"))?.state, GenState::Retired);
    events
        .wait_for("retired", |e| e.kind == EventKind::GenerationRetired)
        .await?;
    let list = image_cli(&c, &["list"]).await?;
    let listing = String::from_utf8_lossy(&list.stdout);
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("compute:1 ") && l.contains("retired")),
        "{listing}"
    );
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("compute:2 ") && l.contains("cn01")),
        "{listing}"
    );

    // It cannot be assigned, nor retired twice.
    let e = c.cli_err(&["node", "assign", "cn02", "compute:1"]).await?;
    assert!(e.contains("compute:1 is retired, not published"), "{e}");
    let o = image_cli(&c, &["retire", "compute:1"]).await?;
    assert!(!o.status.success());

    // gc deletes it although it is not among the newest kept.
    let o = image_cli(&c, &["gc", "--keep", "5"]).await?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(present(dir.path(), 1)?, (false, false, false, false));
    assert_eq!(present(dir.path(), 3)?, (true, true, true, true));
    Ok(())
}
