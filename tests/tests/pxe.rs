//! Boot files through the daemon's single writer: an assignment renders the
//! nodes' menus, `pxe apply` checks the DHCP configuration with the real
//! dnsmasq and writes atomically, a second apply changes nothing, and a node
//! removed from the inventory loses its menu while foreign files stay.

use std::path::Path;

use anyhow::{Context, Result};
use dfleet_proto::domain::EventKind;
use dfleet_tests::{Coordinator, Settings, TestNode, cluster_toml};

fn boot_nodes() -> Vec<TestNode> {
    (1..=3)
        .map(|i| TestNode {
            name: format!("cn{i:02}"),
            mac: format!("52:54:00:b0:00:{i:02x}"),
            ip: format!("10.99.0.{}", 10 + i).parse().unwrap(),
        })
        .collect()
}

/// The test inventory plus a boot network whose files land in `dir`.
/// (These addresses are data in the rendered files; nothing is sent to them.)
fn boot_toml(dir: &Path, nodes: &[TestNode]) -> String {
    boot_toml_nfs(dir, nodes, true)
}

fn boot_toml_nfs(dir: &Path, nodes: &[TestNode], nfs_managed: bool) -> String {
    let mut t = cluster_toml(dir, nodes, &Settings::default());
    t.push_str(&format!(
        r#"
[boot]
interface = "lo"
subnet = "10.99.0.0/24"
router = "10.99.0.1"
dns = ["10.99.0.1"]
domain = "test.example"
next_server = "10.99.0.1"
dhcp = "dnsmasq"
console = "ttyS0,115200"
dhcp_reload = ["sh", "-c", "echo reloaded >> {reloads}"]

[nfs]
server = "10.99.0.1"
export_root = "{images}"
managed = {nfs_managed}
reload = ["sh", "-c", "echo exports >> {reloads}"]

[paths]
tftp_root = "{tftp}"
dhcp_root = "{dhcp}"
exports_root = "{exports}"
"#,
        tftp = dir.join("tftp").display(),
        dhcp = dir.join("dhcp").display(),
        exports = dir.join("exports").display(),
        reloads = dir.join("reloads").display(),
        images = dir.join("images").display(),
    ));
    t
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unmanaged_nfs_server_gets_instructions_when_its_exports_change() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ns = boot_nodes();
    let c = Coordinator::start(dir.path(), &boot_toml_nfs(dir.path(), &ns, false)).await?;
    let images = dir.path().join("images");

    // Nothing is published yet: nothing to export, and nothing to assign.
    let none = c.cli(&["pxe", "apply"]).await?;
    assert!(!none.contains("Export each directory"), "{none}");
    let e = c.cli_err(&["node", "assign", "cn01", "compute:3"]).await?;
    assert!(
        e.contains("no generation compute:3 in the image store"),
        "{e}"
    );

    // The first publish needs a new export: the admin is told what to do.
    dfleet_tests::publish_generation(&images, "compute:3")?;
    let out = c.cli(&["node", "assign", "cn01", "compute:3"]).await?;
    let path3 = format!("{}/compute/3", images.display());
    assert!(
        out.contains("Export each directory below over NFSv3"),
        "{out}"
    );
    assert!(out.contains(&format!("  {path3}\n")), "{out}");
    assert!(
        out.contains(&format!("{path3} 10.99.0.0/24(ro,no_root_squash")),
        "{out}"
    );
    let file = dir.path().join("exports/EXPORTS-TO-CONFIGURE.txt");
    assert!(std::fs::read_to_string(&file)?.contains("compute/3"));
    assert!(!dir.path().join("exports/dfleet.exports").exists());

    // Another node on the same generation needs nothing new: no instructions.
    let out = c.cli(&["node", "assign", "cn02", "compute:3"]).await?;
    assert!(!out.contains("Export each directory"), "{out}");
    let again = c.cli(&["pxe", "apply"]).await?;
    assert!(!again.contains("Export each directory"), "{again}");

    // A new generation does; the list names every published generation.
    dfleet_tests::publish_generation(&images, "compute:4")?;
    let out = c.cli(&["pxe", "apply"]).await?;
    assert!(
        out.contains(&format!("  {}/compute/4\n", images.display())),
        "{out}"
    );
    assert!(out.contains(&format!("  {path3}\n")), "{out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn assign_renders_menus_apply_is_validated_and_idempotent() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ns = boot_nodes();
    let c = Coordinator::start(dir.path(), &boot_toml(dir.path(), &ns)).await?;
    let mut events = c.watch().await?;
    let kernel = dfleet_tests::publish_generation(&dir.path().join("images"), "compute:3")?;

    // Assigning writes the menus through the single writer.
    let out = c.cli(&["node", "assign", "cn[01-03]", "compute:3"]).await?;
    assert!(out.contains("3 nodes assigned to compute:3"), "{out}");
    for n in &ns {
        events.wait(EventKind::Assigned, &n.name).await?;
    }
    events
        .wait_for("boot files applied", |e| {
            e.kind == EventKind::BootFilesApplied
        })
        .await?;
    let mac = ns[0].mac.replace(':', "-");
    let menu = std::fs::read_to_string(dir.path().join(format!("tftp/pxelinux.cfg/01-{mac}")))
        .context("cn01's menu")?;
    assert!(menu.contains("dfleet/compute/3/vmlinuz"), "{menu}");
    assert!(
        menu.contains(&format!(
            "{}/compute/3",
            dir.path().join("images").display()
        )),
        "{menu}"
    );
    // The generation's kernel is in the TFTP root, and it is exported.
    assert_eq!(
        std::fs::read(dir.path().join("tftp/dfleet/compute/3/vmlinuz"))?,
        kernel
    );
    let exports = std::fs::read_to_string(dir.path().join("exports/dfleet.exports"))?;
    assert!(exports.contains("/compute/3 10.99.0.0/24(ro,"), "{exports}");
    assert!(menu.contains("console=ttyS0,115200"), "{menu}");
    assert!(dir.path().join("dhcp/dnsmasq.conf").exists());
    // The loader comes from this host's pxelinux package.
    assert_eq!(
        std::fs::read(dir.path().join("tftp/pxelinux.0"))?,
        std::fs::read("/usr/lib/PXELINUX/pxelinux.0")?
    );
    // The DHCP and NFS servers were told to re-read their configuration, once.
    assert_eq!(
        std::fs::read_to_string(dir.path().join("reloads"))?,
        "reloaded\nexports\n"
    );

    // Nothing left to do: diff and apply agree.
    let diff = c.cli(&["pxe", "diff"]).await?;
    assert!(diff.contains("0 created, 0 changed, 0 removed"), "{diff}");
    let again = c.cli(&["pxe", "apply"]).await?;
    assert!(again.contains("0 created, 0 changed, 0 removed"), "{again}");

    // A dry run renders the same files anywhere.
    let out_dir = dir.path().join("dry");
    c.cli(&["pxe", "render", "--out", out_dir.to_str().context("path")?])
        .await?;
    assert_eq!(
        std::fs::read_to_string(out_dir.join(format!("tftp/pxelinux.cfg/01-{mac}")))?,
        menu
    );

    // cn03 leaves the inventory: its menu goes, a file dfleet does not own stays.
    std::fs::write(dir.path().join("tftp/pxelinux.cfg/admins-note"), "keep me")?;
    std::fs::write(&c.config, boot_toml(dir.path(), &ns[..2]))?;
    c.cli(&["reload"]).await?;
    let applied = c.cli(&["pxe", "apply"]).await?;
    let gone = ns[2].mac.replace(':', "-");
    assert!(
        applied.contains(&format!(
            "- {}",
            dir.path()
                .join(format!("tftp/pxelinux.cfg/01-{gone}"))
                .display()
        )),
        "{applied}"
    );
    assert!(
        applied.contains("checked: dnsmasq.conf: accepted by /usr/sbin/dnsmasq"),
        "{applied}"
    );
    assert!(
        !dir.path()
            .join(format!("tftp/pxelinux.cfg/01-{gone}"))
            .exists()
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("tftp/pxelinux.cfg/admins-note"))?,
        "keep me"
    );
    // cn03's dnsmasq host entry went too, so the server was reloaded again.
    assert!(applied.contains("reload: sh -c"), "{applied}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("reloads"))?,
        "reloaded\nexports\nreloaded\n"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_dfleet_does_not_own_blocks_apply_and_nothing_changes() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ns = boot_nodes();
    let c = Coordinator::start(dir.path(), &boot_toml(dir.path(), &ns)).await?;
    std::fs::create_dir_all(dir.path().join("dhcp"))?;
    std::fs::write(dir.path().join("dhcp/dnsmasq.conf"), "# the admin's own\n")?;
    let out = c.cli_raw(&["pxe", "apply"]).await?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to overwrite") && err.contains("dnsmasq.conf"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("dhcp/dnsmasq.conf"))?,
        "# the admin's own\n"
    );
    assert!(!dir.path().join("tftp/pxelinux.cfg/default").exists());
    Ok(())
}
