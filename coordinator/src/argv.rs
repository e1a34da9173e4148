//! Running a command an administrator configured (drain hooks, the power
//! command): an argument vector, never through a shell, with stdin closed,
//! killed when it outlives its time limit.

use std::process::{Output, Stdio};
use std::time::Duration;

/// Runs `argv` to its end, with `env` added to its environment. An error,
/// naming the command, when it cannot start or outlives `limit`.
pub async fn output(
    argv: &[String],
    env: Option<(&str, &str)>,
    limit: Duration,
) -> Result<Output, String> {
    let Some((program, args)) = argv.split_first() else {
        return Err("empty command".into());
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).stdin(Stdio::null()).kill_on_drop(true);
    if let Some((name, value)) = env {
        cmd.env(name, value);
    }
    match tokio::time::timeout(limit, cmd.output()).await {
        Ok(Ok(o)) => Ok(o),
        Ok(Err(e)) => Err(format!("{}: {e}", argv.join(" "))),
        Err(_) => Err(format!(
            "{}: no answer after {}s",
            argv.join(" "),
            limit.as_secs()
        )),
    }
}

/// [`output`], and an error with the exit status and standard error
/// unless the command exits 0.
pub async fn succeed(
    argv: &[String],
    env: Option<(&str, &str)>,
    limit: Duration,
) -> Result<(), String> {
    let o = output(argv, env, limit).await?;
    if o.status.success() {
        return Ok(());
    }
    Err(format!(
        "{}: {} {}",
        argv.join(" "),
        o.status,
        String::from_utf8_lossy(&o.stderr).trim()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failing_command_is_named_with_its_status_and_error_output() {
        let argv = |words: &[&str]| words.iter().map(|w| w.to_string()).collect::<Vec<_>>();
        let limit = Duration::from_secs(30);
        assert_eq!(succeed(&argv(&["true"]), None, limit).await, Ok(()));
        let e = succeed(&argv(&["sh", "-c", "echo no >&2; exit 3"]), None, limit)
            .await
            .unwrap_err();
        assert_eq!(e, "sh -c echo no >&2; exit 3: exit status: 3 no");
        let env = succeed(
            &argv(&["sh", "-c", "test \"$SECRET\" = x"]),
            Some(("SECRET", "x")),
            limit,
        )
        .await;
        assert_eq!(env, Ok(()));
        let missing = output(&argv(&["/nonexistent/dfleet-x"]), None, limit)
            .await
            .unwrap_err();
        assert!(missing.starts_with("/nonexistent/dfleet-x: "), "{missing}");
        let slow = output(&argv(&["sleep", "5"]), None, Duration::from_millis(10))
            .await
            .unwrap_err();
        assert_eq!(slow, "sleep 5: no answer after 0s");
    }
}
