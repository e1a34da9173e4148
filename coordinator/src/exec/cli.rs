//! `dfleet exec NODESET -- CMD…`: the command line and how results are shown.
//!
//! By default each line is printed as it arrives, prefixed with its node
//! (stdout lines on stdout, stderr lines on stderr). With `--gather` nodes
//! whose (result, stdout, stderr) are identical are printed once under a
//! header such as `cn[001-004,007] (exit 0)`. A summary line on stderr names
//! the nodes that failed, timed out or were unreachable, folded and counted.
//!
//! Exit status: the highest exit code of the nodes (127 for a command a node
//! could not run); [`EXIT_TIMED_OUT`] when a node timed out, and
//! [`EXIT_UNREACHABLE`] when a node could not be reached, which win over it.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;

use anyhow::{Result, bail};
use dfleet_proto::pb;
use dfleet_provisioner::nodeset;

use super::session::Tally;
use crate::cli::Cli;
use crate::client;

/// Exit status when a node timed out (and none was unreachable).
pub const EXIT_TIMED_OUT: i32 = 254;
/// Exit status when a node could not be reached.
pub const EXIT_UNREACHABLE: i32 = 255;
/// Exit status counted for a node that could not run the command at all.
pub const EXIT_COULD_NOT_RUN: i32 = 127;

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// Node set: `cn[001-128,200]`, `rack[1-2]-cn[01-02]`, `@compute`,
    /// `@state:ready`, `@gen:IMAGE:GEN`, joined with , ! & ^.
    nodeset: String,
    /// Nodes running the command at once (default 1024).
    #[arg(long, short = 'f')]
    fanout: Option<u32>,
    /// Kill the command (and everything it started) after this long, e.g.
    /// "30s"; the node counts as timed out.
    #[arg(long, short = 't')]
    timeout: Option<String>,
    /// Fold nodes with identical output and result under one header.
    #[arg(long, short = 'b')]
    gather: bool,
    /// Run on this many nodes of the set, picked at random.
    #[arg(long)]
    pick: Option<u32>,
    /// Nodes to leave out (a node set).
    #[arg(long, short = 'x')]
    exclude: Option<String>,
    /// Run the words through `sh -c` (joined by spaces) instead of as a
    /// program and its arguments.
    #[arg(long)]
    shell: bool,
    /// Output bytes kept per node, stdout and stderr together (default 1 MiB).
    #[arg(long)]
    max_output: Option<u32>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// What one node said.
#[derive(Debug, Default)]
struct NodeOutput {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// Runs the exec and exits with its status.
pub async fn run(cli: &Cli, args: &ExecArgs) -> Result<()> {
    let timeout_ms = match &args.timeout {
        None => 0,
        Some(t) => {
            let d = dfleet_provisioner::duration::parse_duration(t)
                .map_err(|e| anyhow::anyhow!("--timeout {t:?}: {e}"))?;
            u32::try_from(d.as_millis().max(1))
                .map_err(|_| anyhow::anyhow!("--timeout {t:?} is too long"))?
        }
    };
    let mut c = client::connect(&cli.target()?).await?;
    let mut stream = c
        .exec(pb::ExecRequest {
            nodeset: args.nodeset.clone(),
            exclude: args.exclude.clone().unwrap_or_default(),
            pick: args.pick.unwrap_or(0),
            argv: args.command.clone(),
            shell: args.shell,
            fanout: args.fanout.unwrap_or(0),
            timeout_ms,
            max_output_bytes: args.max_output.unwrap_or(0),
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    let mut shown = Shown::new(args.gather);
    loop {
        let e = match stream.message().await {
            Ok(Some(e)) => e,
            Ok(None) => break,
            Err(s) => bail!("the coordinator ended the exec: {}", s.message()),
        };
        match e.kind {
            Some(pb::exec_event::Kind::Targets(t)) => shown.targets = t.nodes.len(),
            Some(pb::exec_event::Kind::Output(o)) => shown.output(o)?,
            Some(pb::exec_event::Kind::Done(d)) => shown.done(d)?,
            Some(pb::exec_event::Kind::Summary(s)) => shown.duration_ms = Some(s.duration_ms),
            None => {}
        }
    }
    let code = shown.finish()?;
    if code != 0 {
        std::io::stdout().flush()?;
        std::process::exit(code);
    }
    Ok(())
}

/// The output as it is printed.
struct Shown {
    gather: bool,
    targets: usize,
    nodes: HashMap<String, NodeOutput>,
    results: Vec<pb::ExecNodeDone>,
    duration_ms: Option<u64>,
}

impl Shown {
    fn new(gather: bool) -> Shown {
        Shown {
            gather,
            targets: 0,
            nodes: HashMap::new(),
            results: Vec::new(),
            duration_ms: None,
        }
    }

    fn output(&mut self, o: pb::ExecNodeOutput) -> Result<()> {
        let n = self.nodes.entry(o.node.clone()).or_default();
        let buf = if o.stderr {
            &mut n.stderr
        } else {
            &mut n.stdout
        };
        buf.extend_from_slice(&o.data);
        if !self.gather {
            // Whole lines go out now; a partial one waits for its end.
            if let Some(end) = buf.iter().rposition(|&b| b == b'\n') {
                let lines: Vec<u8> = buf.drain(..=end).collect();
                print_lines(&o.node, &lines, o.stderr)?;
            }
        }
        Ok(())
    }

    fn done(&mut self, mut d: pb::ExecNodeDone) -> Result<()> {
        let n = self.nodes.entry(d.node.clone()).or_default();
        if d.truncated {
            n.stderr
                .extend_from_slice(b"[output truncated: more than --max-output bytes]\n");
            d.truncated = false;
        }
        if !self.gather {
            let n = self.nodes.remove(&d.node).unwrap_or_default();
            print_lines(&d.node, &n.stdout, false)?;
            print_lines(&d.node, &n.stderr, true)?;
        }
        self.results.push(d);
        Ok(())
    }

    /// Prints what is left and the summary; returns the exit status.
    fn finish(mut self) -> Result<i32> {
        if self.gather {
            self.print_gathered()?;
        }
        let mut tally = Tally::default();
        // Why nodes gave no result, nodes with the same reason folded.
        let mut why: BTreeMap<(&str, &str), Vec<String>> = BTreeMap::new();
        for d in &self.results {
            tally.add(d);
            let what = match d.outcome.as_str() {
                "unreachable" => "unreachable",
                "timed-out" => "timed out",
                _ => continue,
            };
            if !d.detail.is_empty() {
                why.entry((what, d.detail.as_str()))
                    .or_default()
                    .push(d.node.clone());
            }
        }
        for ((what, detail), nodes) in why {
            eprintln!("dfleet exec: {}: {what}: {detail}", nodeset::fold(&nodes));
        }
        let took = self
            .duration_ms
            .map(|ms| format!(" in {:.1}s", ms as f64 / 1000.0))
            .unwrap_or_default();
        let missing = self.targets.saturating_sub(self.results.len());
        let mut line = format!(
            "dfleet exec: {} nodes{took}: {}",
            self.targets,
            tally.summary()
        );
        if missing > 0 {
            line.push_str(&format!("; {missing} without a result"));
        }
        eprintln!("{line}");
        Ok(exit_status(&self.results))
    }

    fn print_gathered(&mut self) -> Result<()> {
        // (result, stdout, stderr) → nodes
        let mut groups: BTreeMap<(String, Vec<u8>, Vec<u8>), Vec<String>> = BTreeMap::new();
        for d in &self.results {
            let out = self.nodes.remove(&d.node).unwrap_or_default();
            groups
                .entry((label(d), out.stdout, out.stderr))
                .or_default()
                .push(d.node.clone());
        }
        let mut groups: Vec<_> = groups
            .into_iter()
            .filter(|((_, out, err), _)| !out.is_empty() || !err.is_empty())
            .collect();
        groups.sort_by_cached_key(|(_, nodes)| {
            nodes
                .iter()
                .map(|n| nodeset::natural_key(n))
                .min()
                .unwrap_or_default()
        });
        let rule = "-".repeat(15);
        let stdout = std::io::stdout();
        let stderr = std::io::stderr();
        for ((label, out, err), nodes) in groups {
            let header = format!("{rule}\n{} ({label})\n{rule}\n", nodeset::fold(&nodes));
            if !out.is_empty() {
                let mut w = stdout.lock();
                w.write_all(header.as_bytes())?;
                w.write_all(&out)?;
                if !out.ends_with(b"\n") {
                    w.write_all(b"\n")?;
                }
            }
            if !err.is_empty() {
                let mut w = stderr.lock();
                w.write_all(
                    format!(
                        "{rule}\n{} ({label}, stderr)\n{rule}\n",
                        nodeset::fold(&nodes)
                    )
                    .as_bytes(),
                )?;
                w.write_all(&err)?;
                if !err.ends_with(b"\n") {
                    w.write_all(b"\n")?;
                }
            }
        }
        Ok(())
    }
}

/// A node's result as a header shows it.
fn label(d: &pb::ExecNodeDone) -> String {
    match d.outcome.as_str() {
        "ok" | "failed" => format!("exit {}", d.exit_code),
        "timed-out" => "timed out".to_string(),
        "unreachable" => "unreachable".to_string(),
        _ => format!("could not run: {}", d.detail),
    }
}

/// Each line of `text` (a last one without newline too) prefixed with the node.
fn print_lines(node: &str, text: &[u8], stderr: bool) -> Result<()> {
    if text.is_empty() {
        return Ok(());
    }
    let mut out = Vec::with_capacity(text.len() + 16);
    for line in text.split_inclusive(|&b| b == b'\n') {
        out.extend_from_slice(node.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(line);
        if !line.ends_with(b"\n") {
            out.push(b'\n');
        }
    }
    if stderr {
        std::io::stderr().lock().write_all(&out)?;
    } else {
        std::io::stdout().lock().write_all(&out)?;
    }
    Ok(())
}

/// The exit status for these results (see the module's comment).
pub fn exit_status(results: &[pb::ExecNodeDone]) -> i32 {
    let any = |o: &str| results.iter().any(|d| d.outcome == o);
    if any("unreachable") {
        return EXIT_UNREACHABLE;
    }
    if any("timed-out") {
        return EXIT_TIMED_OUT;
    }
    results
        .iter()
        .map(|d| match d.outcome.as_str() {
            "error" => EXIT_COULD_NOT_RUN,
            _ => d.exit_code,
        })
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(node: &str, outcome: &str, code: i32) -> pb::ExecNodeDone {
        pb::ExecNodeDone {
            node: node.into(),
            outcome: outcome.into(),
            exit_code: code,
            ..Default::default()
        }
    }

    #[test]
    fn the_exit_status_is_the_highest_code_unless_a_node_was_lost() {
        assert_eq!(
            exit_status(&[done("a", "ok", 0), done("b", "failed", 3)]),
            3
        );
        assert_eq!(
            exit_status(&[done("a", "error", 0), done("b", "failed", 3)]),
            127
        );
        assert_eq!(
            exit_status(&[done("a", "failed", 200), done("b", "timed-out", 137)]),
            EXIT_TIMED_OUT
        );
        assert_eq!(
            exit_status(&[done("a", "timed-out", 137), done("b", "unreachable", 0)]),
            EXIT_UNREACHABLE
        );
        assert_eq!(exit_status(&[]), 0);
    }
}
