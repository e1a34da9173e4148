//! The processes a lab starts: each recorded by role, PID and start time in
//! `DIR/pids` before the next starts, so `lab down` stops exactly those, and
//! a recycled PID is never signalled.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// One process the lab started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    pub role: String,
    pub pid: i32,
    /// Field 22 of /proc/PID/stat: the same PID with another start time is
    /// another process.
    pub start: u64,
}

impl Started {
    pub fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start) && !zombie(self.pid)
    }
}

fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

/// The start time in a /proc/PID/stat line (after the parenthesised name,
/// which may itself hold spaces and parentheses).
pub fn parse_start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // Fields after the name start at field 3 (state); start time is field 22.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// A process that exited but whose parent has not reaped it yet.
fn zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rfind(')')
                .map(|i| s[i + 1..].trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

pub fn pids_path(dir: &Path) -> PathBuf {
    dir.join("pids")
}

/// Every process the lab in `dir` recorded, oldest first.
pub fn read_pids(dir: &Path) -> Result<Vec<Started>> {
    let path = pids_path(dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let parsed = match f.as_slice() {
                [role, pid, start] => {
                    pid.parse()
                        .ok()
                        .zip(start.parse().ok())
                        .map(|(pid, start)| Started {
                            role: role.to_string(),
                            pid,
                            start,
                        })
                }
                _ => None,
            };
            parsed.with_context(|| {
                format!(
                    "{} line {}: expected `ROLE PID START`, found {l:?}",
                    path.display(),
                    i + 1
                )
            })
        })
        .collect()
}

/// The live process recorded last for `role`.
pub fn running(dir: &Path, role: &str) -> Result<Option<Started>> {
    Ok(read_pids(dir)?
        .into_iter()
        .rev()
        .find(|p| p.role == role && p.alive()))
}

pub fn record_pid(dir: &Path, role: &str, pid: i32) -> Result<Started> {
    use std::io::Write;
    let start = start_time(pid).with_context(|| format!("{role} (PID {pid}) exited at once"))?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(pids_path(dir))?;
    writeln!(f, "{role} {pid} {start}")?;
    Ok(Started {
        role: role.into(),
        pid,
        start,
    })
}

/// Starts a long-running `argv` (whose launcher execs the program, so the
/// child's PID is the program's) in its own process group (Ctrl-C on the
/// caller does not reach it), output into `log`, and records it.
pub fn spawn(dir: &Path, role: &str, argv: &[String], log: &Path) -> Result<Started> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("creating {}", log.display()))?;
    let child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {role}: {}", argv.join(" ")))?;
    let pid = i32::try_from(child.id()).context("pid out of range")?;
    // Reaped by init once the caller exits; `down` stops it by PID.
    drop(child);
    record_pid(dir, role, pid)
}

/// Polls `cond` until it holds, `what` failing after `limit`. The lab waits
/// on what the real parts show (ready lines, sockets, ports, exits),
/// checked every 100 ms.
pub async fn wait_for(
    what: &str,
    limit: Duration,
    mut cond: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let give_up = tokio::time::Instant::now() + limit;
    loop {
        if cond()? {
            return Ok(());
        }
        if tokio::time::Instant::now() >= give_up {
            bail!("timed out after {}s waiting for {what}", limit.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// SIGTERM, then SIGKILL after 15 s, and waits for the exit.
pub async fn stop(p: &Started) -> Result<()> {
    let pid = rustix::process::Pid::from_raw(p.pid).context("PID 0 in the record")?;
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    let what = format!("{} (PID {}) to exit", p.role, p.pid);
    if wait_for(&what, Duration::from_secs(15), || Ok(!p.alive()))
        .await
        .is_err()
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        wait_for(&what, Duration::from_secs(5), || Ok(!p.alive())).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_survives_names_with_spaces_and_parentheses() {
        let stat =
            "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_start_time(stat), Some(987654));
    }

    #[test]
    fn a_bad_pid_record_names_its_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(pids_path(dir.path()), "dnsmasq 12 34\nganesha x 1\n").unwrap();
        let e = read_pids(dir.path()).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("ganesha x 1"), "{e}");
    }

    #[test]
    fn a_recorded_process_is_alive_until_it_exits() {
        let dir = tempfile::tempdir().unwrap();
        let p = spawn(
            dir.path(),
            "sleeper",
            &["sleep".into(), "600".into()],
            &dir.path().join("log"),
        )
        .unwrap();
        assert!(running(dir.path(), "sleeper").unwrap().is_some());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(stop(&p)).unwrap();
        assert!(!p.alive());
        assert_eq!(running(dir.path(), "sleeper").unwrap(), None);
    }
}
