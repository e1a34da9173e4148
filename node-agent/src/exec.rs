//! Fleet-wide commands: one command the coordinator's stream orders this
//! node to run. It runs without a shell (unless the order asks for `sh -c`),
//! with a clean environment, stdin closed, in its own process group; its
//! output goes back in chunks as it comes, up to a cap, then its result.
//! When it exits, times out or is cancelled (its caller went away) the whole
//! group is killed, so nothing it started outlives it.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use dfleet_proto::pb;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{mpsc, oneshot};

use crate::os::HostRoot;

/// The environment a command gets is nothing of the agent's own: `PATH` is
/// the directories the agent looks programs up in.
fn path_env() -> String {
    crate::os::PROGRAM_DIRS.join(":")
}

/// The most output bytes a command may send when the order names no cap.
pub const DEFAULT_MAX_OUTPUT: usize = 1 << 20;

/// Output read per chunk sent.
const CHUNK: usize = 16 << 10;

/// The commands running on this node, by order id, so that an
/// `ExecCancel` can stop one.
#[derive(Debug, Clone, Default)]
pub struct Running(Arc<Mutex<HashMap<u64, oneshot::Sender<()>>>>);

impl Running {
    /// Stops the command of order `id`; false when none runs.
    pub fn cancel(&self, id: u64) -> bool {
        let cancel = self.map().remove(&id);
        cancel.is_some_and(|c| c.send(()).is_ok())
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<()>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Runs the order's command and sends its output and result on `tx`. The
/// command can be cancelled through `running` from the moment this is
/// called (before the returned future first runs).
pub fn run(
    host: HostRoot,
    id: u64,
    order: pb::Exec,
    tx: mpsc::Sender<pb::AgentMessage>,
    running: Running,
) -> impl Future<Output = ()> + Send + 'static {
    let (cancel, cancelled) = oneshot::channel();
    running.map().insert(id, cancel);
    async move {
        let done = execute(&host, id, &order, &tx, cancelled).await;
        running.map().remove(&id);
        let _ = tx
            .send(pb::AgentMessage {
                kind: Some(pb::agent_message::Kind::ExecDone(done)),
            })
            .await;
    }
}

async fn execute(
    host: &HostRoot,
    id: u64,
    order: &pb::Exec,
    tx: &mpsc::Sender<pb::AgentMessage>,
    cancelled: oneshot::Receiver<()>,
) -> pb::ExecDone {
    let started = tokio::time::Instant::now();
    let mut done = pb::ExecDone {
        order_id: id,
        ..Default::default()
    };
    let argv: Vec<String> = if order.shell {
        vec!["/bin/sh".into(), "-c".into(), order.argv.join(" ")]
    } else {
        order.argv.clone()
    };
    let Some((program, args)) = argv.split_first() else {
        done.error = "an empty command".into();
        return done;
    };
    let path = host.resolve_program(program);
    let mut cmd = tokio::process::Command::new(&path);
    cmd.args(args)
        .env_clear()
        .env("PATH", path_env())
        .env("HOME", "/root")
        .env("LANG", "C.UTF-8")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            done.error = format!("{}: {e}", path.display());
            return done;
        }
    };
    let group = child
        .id()
        .and_then(|p| rustix::process::Pid::from_raw(p as i32));
    let cap = match order.max_output_bytes {
        0 => DEFAULT_MAX_OUTPUT,
        n => n as usize,
    };
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let budget = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(cap));
    let pipes = async {
        let out = forward(stdout, false, id, tx, &budget);
        let err = forward(stderr, true, id, tx, &budget);
        let (a, b) = tokio::join!(out, err);
        a || b
    };
    let kill_group = || {
        if let Some(pid) = group {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    };
    // Once the command exits, what it left running in its group goes too,
    // which closes their ends of the pipes, so reading them ends.
    let waited = async {
        let status = child.wait().await;
        kill_group();
        status
    };
    let run = async { tokio::join!(pipes, waited) };
    let limit = async {
        match order.timeout_ms {
            0 => std::future::pending().await,
            ms => tokio::time::sleep(Duration::from_millis(u64::from(ms))).await,
        }
    };
    enum Ended<T> {
        Ran(T),
        TimedOut,
        Cancelled,
    }
    let ended = tokio::select! {
        r = run => Ended::Ran(r),
        () = limit => Ended::TimedOut,
        // A dropped sender (the registry gone) cancels too.
        _ = cancelled => Ended::Cancelled,
    };
    match ended {
        Ended::Ran((truncated, Ok(status))) => {
            done.truncated = truncated;
            use std::os::unix::process::ExitStatusExt;
            match (status.code(), status.signal()) {
                (Some(code), _) => done.exit_code = code,
                (None, Some(sig)) => {
                    done.signal = sig;
                    done.exit_code = 128 + sig;
                }
                (None, None) => done.error = "ended without a status".into(),
            }
        }
        Ended::Ran((_, Err(e))) => done.error = format!("waiting for {}: {e}", path.display()),
        Ended::TimedOut | Ended::Cancelled => {
            done.timed_out = matches!(ended, Ended::TimedOut);
            done.cancelled = matches!(ended, Ended::Cancelled);
            kill_group();
            // Reap the leader, killed with its group.
            let _ = child.wait().await;
        }
    }
    done.duration_ms = started.elapsed().as_millis() as u64;
    done
}

/// Sends what `pipe` gives, chunk by chunk, while the shared budget lasts
/// and the stream is there; then keeps reading (so the command never blocks
/// on a full pipe) without sending. True when output was dropped.
async fn forward(
    pipe: Option<impl AsyncRead + Unpin>,
    stderr: bool,
    id: u64,
    tx: &mpsc::Sender<pb::AgentMessage>,
    budget: &std::sync::atomic::AtomicUsize,
) -> bool {
    use std::sync::atomic::Ordering;
    let Some(mut pipe) = pipe else {
        return false;
    };
    let mut truncated = false;
    let mut stream_gone = false;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return truncated,
            Ok(n) => n,
        };
        let allowed = budget
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                Some(left.saturating_sub(n))
            })
            .unwrap_or(0)
            .min(n);
        if allowed < n {
            truncated = true;
        }
        if allowed > 0 && !stream_gone {
            let msg = pb::AgentMessage {
                kind: Some(pb::agent_message::Kind::ExecOutput(pb::ExecOutput {
                    order_id: id,
                    stderr,
                    data: buf[..allowed].to_vec(),
                })),
            };
            // The stream ended (the agent reconnects): nobody waits for
            // this output any more, but the pipe is still drained.
            stream_gone = tx.send(msg).await.is_err();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn exec(order: pb::Exec) -> (Vec<u8>, Vec<u8>, pb::ExecDone) {
        let (tx, mut rx) = mpsc::channel(1024);
        run(HostRoot::system(), 7, order, tx, Running::default()).await;
        let (mut out, mut err) = (Vec::new(), Vec::new());
        while let Ok(m) = rx.try_recv() {
            match m.kind {
                Some(pb::agent_message::Kind::ExecOutput(o)) if o.stderr => err.extend(o.data),
                Some(pb::agent_message::Kind::ExecOutput(o)) => out.extend(o.data),
                Some(pb::agent_message::Kind::ExecDone(d)) => return (out, err, d),
                _ => {}
            }
        }
        panic!("no result");
    }

    fn argv(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[tokio::test]
    async fn output_exit_code_and_a_clean_environment() {
        let (out, err, done) = exec(pb::Exec {
            argv: argv(&["sh", "-c", "echo $PATH; echo ${SECRET:-unset} >&2; exit 3"]),
            ..Default::default()
        })
        .await;
        assert_eq!(String::from_utf8(out).unwrap(), format!("{}\n", path_env()));
        assert_eq!(err, b"unset\n");
        assert_eq!(
            (done.order_id, done.exit_code, done.timed_out),
            (7, 3, false)
        );
        assert!(done.error.is_empty());
    }

    #[tokio::test]
    async fn the_shell_only_when_asked_and_output_capped() {
        let (out, _, done) = exec(pb::Exec {
            argv: argv(&["echo", "a;", "echo", "b"]),
            ..Default::default()
        })
        .await;
        assert_eq!(out, b"a; echo b\n");
        assert_eq!(done.exit_code, 0);
        let (out, _, done) = exec(pb::Exec {
            argv: argv(&["echo a;", "echo b"]),
            shell: true,
            ..Default::default()
        })
        .await;
        assert_eq!(out, b"a\nb\n");
        assert_eq!(done.exit_code, 0);
        let (out, _, done) = exec(pb::Exec {
            argv: argv(&["head", "-c", "100000", "/dev/zero"]),
            max_output_bytes: 1000,
            ..Default::default()
        })
        .await;
        assert_eq!(out.len(), 1000);
        assert!(done.truncated);
        let (_, _, done) = exec(pb::Exec {
            argv: argv(&["/nonexistent/dfleet-cmd"]),
            ..Default::default()
        })
        .await;
        assert!(
            done.error.starts_with("/nonexistent/dfleet-cmd: "),
            "{done:?}"
        );
    }

    /// Waits until the process whose pid `file` holds has ended (a pidfd
    /// turns readable when it does; a pid that no longer exists has ended),
    /// failing after a minute rather than waiting out a 300 s sleep. The
    /// wait has its own limit, so a survivor fails the test, never hangs it.
    async fn ended_in_time(file: &std::path::Path) {
        let pid: i32 = std::fs::read_to_string(file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let Some(pid) = rustix::process::Pid::from_raw(pid) else {
            return;
        };
        let Ok(fd) = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) else {
            return;
        };
        let ready = tokio::task::spawn_blocking(move || {
            let mut fds = [rustix::event::PollFd::new(
                &fd,
                rustix::event::PollFlags::IN,
            )];
            let minute = rustix::event::Timespec {
                tv_sec: 60,
                tv_nsec: 0,
            };
            rustix::event::poll(&mut fds, Some(&minute))
        })
        .await
        .unwrap()
        .unwrap();
        assert!(ready > 0, "the command's background child survived it");
    }

    /// Runs `sh -c "sleep 300 & echo $! > FILE<rest>"` with `timeout_ms`,
    /// then waits until that background sleep has ended: it was in the
    /// command's group. Returns the command's result.
    async fn background_child_ends(rest: &str, timeout_ms: u32) -> pb::ExecDone {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pid");
        let script = format!("sleep 300 & echo $! > {}{rest}", file.display());
        let (_, _, done) = exec(pb::Exec {
            argv: argv(&["sh", "-c", &script]),
            timeout_ms,
            ..Default::default()
        })
        .await;
        ended_in_time(&file).await;
        done
    }

    #[tokio::test]
    async fn a_timeout_kills_the_whole_process_group() {
        let done = background_child_ends("; sleep 300", 2000).await;
        assert!(done.timed_out, "{done:?}");
    }

    #[tokio::test]
    async fn what_a_command_leaves_running_ends_with_it() {
        let done = background_child_ends("", 0).await;
        assert_eq!((done.exit_code, done.timed_out), (0, false));
    }

    #[tokio::test]
    async fn a_command_finishes_when_its_stream_is_gone() {
        // The agent reconnected: nobody reads the old stream. The command
        // must not block on a full pipe; its output is drained and dropped.
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        run(
            HostRoot::system(),
            9,
            pb::Exec {
                argv: argv(&["head", "-c", "10000000", "/dev/zero"]),
                ..Default::default()
            },
            tx,
            Running::default(),
        )
        .await;
    }

    #[tokio::test]
    async fn a_cancelled_command_ends_with_its_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pid");
        let script = format!(
            "sleep 300 & echo $! > {}; echo started; sleep 300",
            file.display()
        );
        let (tx, mut rx) = mpsc::channel(1024);
        let running = Running::default();
        let order = pb::Exec {
            argv: argv(&["sh", "-c", &script]),
            ..Default::default()
        };
        let task = tokio::spawn(run(HostRoot::system(), 11, order, tx, running.clone()));
        // Started once it says so (after writing the background pid).
        loop {
            match rx.recv().await.expect("the command's output").kind {
                Some(pb::agent_message::Kind::ExecOutput(o)) if o.data == b"started\n" => break,
                _ => {}
            }
        }
        assert!(running.cancel(11));
        task.await.unwrap();
        let done = loop {
            if let Some(pb::agent_message::Kind::ExecDone(d)) = rx.recv().await.unwrap().kind {
                break d;
            }
        };
        assert!(done.cancelled && !done.timed_out, "{done:?}");
        assert!(
            !running.cancel(11),
            "a finished command is no longer running"
        );
        ended_in_time(&file).await;
    }
}
