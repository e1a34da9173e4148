//! `dfleet demo` end to end: the built binary runs a demo fleet of four
//! nodes, rolls it onto compute:2 and exits by itself. What it printed and
//! the files it left say that every node booted compute:1, was rebooted once
//! by the rollout and came back on compute:2, and that the demo unmounted
//! every tmpfs it mounted.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use dfleet_tests::bin;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// Far more than four nodes need to boot and roll (seconds), within
/// nextest's limit for a test.
const DEADLINE: Duration = Duration::from_secs(200);

const NODES: u8 = 4;

/// Runs `dfleet demo` to its end; returns its output, failing if it fails.
async fn run_demo(dir: &Path) -> Result<String> {
    let mut child = Command::new(bin("dfleet"))
        .args(["demo", "--nodes", &NODES.to_string(), "--exit-when-ready"])
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting dfleet demo")?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, lines.next_line()).await {
            Ok(Ok(Some(line))) => out.push(line),
            Ok(Ok(None)) => break,
            Ok(Err(e)) => return Err(e).context("reading the demo's output"),
            Err(_) => bail!(
                "the demo did not end within {DEADLINE:?}; it printed:\n{}",
                out.join("\n")
            ),
        }
    }
    let text = out.join("\n");
    let status = tokio::time::timeout_at(deadline, child.wait())
        .await
        .with_context(|| format!("the demo did not exit; it printed:\n{text}"))??;
    if !status.success() {
        bail!("dfleet demo failed ({status}); it printed:\n{text}");
    }
    Ok(text)
}

/// The rows of the `dfleet status` table printed after `after`:
/// (node, state, generation).
fn status_rows(text: &str, after: &str) -> Vec<(String, String, String)> {
    let Some((_, rest)) = text.split_once(after) else {
        return Vec::new();
    };
    let Some((_, table)) = rest.split_once("$ dfleet status\n") else {
        return Vec::new();
    };
    table
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("cn"))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let field = |i: usize| f.get(i).copied().unwrap_or_default().to_string();
            (field(0), field(1), field(2))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_rolls_every_node_onto_compute_2_and_cleans_up() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let text = run_demo(dir.path()).await?;
    let names: Vec<String> = (1..=NODES).map(|i| format!("cn{i:02}")).collect();

    // Booted on compute:1, then rolled with a canary and batches…
    let rows = |generation: &str| -> Vec<(String, String, String)> {
        names
            .iter()
            .map(|n| (n.clone(), "ready".to_string(), generation.to_string()))
            .collect()
    };
    assert_eq!(
        status_rows(&text, "$ dfleet node assign cn[01-04] compute:1"),
        rows("compute:1"),
        "{text}"
    );
    for line in [
        "$ dfleet rollout start compute:2 --canary 1 --batch 3 --max-unavailable 3",
        "rollout 1 (onto compute:2): completed",
        "4/4 nodes finished",
        "4 done",
    ] {
        assert!(text.contains(line), "no {line:?} in:\n{text}");
    }
    // …each node ordered to reboot once, and all back ready on compute:2.
    for n in &names {
        // An event line: ID DATE TIME KIND NODE: DETAIL.
        let orders = text
            .lines()
            .map(|l| l.split_whitespace().skip(3).take(2).collect::<Vec<_>>())
            .filter(|f| *f == ["reboot-ordered", &format!("{n}:")])
            .count();
        assert_eq!(
            orders, 1,
            "{n} was ordered to reboot {orders} times:\n{text}"
        );
    }
    assert_eq!(
        status_rows(&text, "$ dfleet rollout status"),
        rows("compute:2"),
        "{text}"
    );

    // The files say the same: each node's menu names compute:2, its
    // sandbox booted compute:2's stamp, and it booted twice.
    let d = dir.path();
    for (i, n) in (1..=NODES).zip(&names) {
        let menu = d.join(format!("tftp/pxelinux.cfg/01-52-54-00-de-00-{i:02x}"));
        let text = std::fs::read_to_string(&menu).with_context(|| menu.display().to_string())?;
        assert!(
            text.contains("dfleet.generation=compute:2"),
            "{}:\n{text}",
            menu.display()
        );
        let stamp = d.join(format!("nodes/{n}/run/dfleet/lower/etc/dfleet/generation"));
        let text = std::fs::read_to_string(&stamp).with_context(|| stamp.display().to_string())?;
        assert!(
            text.contains("image = \"compute\"\ngeneration = 2\n"),
            "{}:\n{text}",
            stamp.display()
        );
        let log = d.join(format!("{n}.log"));
        let boots: Vec<String> = std::fs::read_to_string(&log)
            .with_context(|| log.display().to_string())?
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("dfleet demo: {n} ")))
            .map(String::from)
            .collect();
        assert_eq!(boots, ["boot 1: compute:1", "boot 2: compute:2"], "{n}");
    }

    // Nothing of the demo is still mounted: the tempdir can go.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    let prefix = d.to_string_lossy();
    let left: Vec<&str> = mounts
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(4)
                .is_some_and(|m| m.starts_with(prefix.as_ref()))
        })
        .collect();
    assert!(left.is_empty(), "still mounted: {left:#?}");
    Ok(())
}
