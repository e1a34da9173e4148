//! The agent's configuration: `/etc/dfleet/agent.toml` (in the image, so it
//! holds nothing secret), overridden by the command line. The coordinator's
//! address may instead come from the kernel command line that dfleet writes
//! (`dfleet.coordinator=HOST:PORT`).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
}

/// A readiness check command the agent runs before calling itself ready.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CheckCommand {
    pub name: String,
    pub command: Vec<String>,
    /// Seconds before the command is killed and the check fails.
    #[serde(default = "default_check_timeout")]
    pub timeout_seconds: u64,
}

fn default_check_timeout() -> u64 {
    5
}

/// The agent's settings, as read from its file.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    /// Root of the machine the agent reads (`/` on a node; a sandbox in tests).
    pub root: PathBuf,
    /// `HOST:PORT` of the coordinator; when absent, `dfleet.coordinator=` on
    /// the kernel command line.
    pub coordinator: Option<String>,
    /// The cluster CA certificate (public; it is part of the image).
    pub ca_cert: PathBuf,
    /// The name the coordinator's certificate carries.
    pub server_name: String,
    /// Where this boot's key and certificate live: RAM, never the image.
    pub state_dir: PathBuf,
    /// Source address for connections to the coordinator.
    pub bind: Option<IpAddr>,
    /// What `reboot` orders run.
    pub reboot_command: Vec<String>,
    /// Readiness check commands.
    pub checks: Vec<CheckCommand>,
}

impl Default for FileConfig {
    fn default() -> Self {
        FileConfig {
            root: PathBuf::from("/"),
            coordinator: None,
            ca_cert: PathBuf::from("/etc/dfleet/ca.pem"),
            server_name: "dfleet-coordinator".into(),
            state_dir: PathBuf::from("/run/dfleet-agent"),
            bind: None,
            reboot_command: vec!["systemctl".into(), "reboot".into()],
            checks: Vec::new(),
        }
    }
}

impl FileConfig {
    /// What the collector needs from these settings.
    pub fn collector_config(&self) -> crate::collect::CollectorConfig {
        crate::collect::CollectorConfig {
            checks: self
                .checks
                .iter()
                .map(|c| crate::readiness::CheckCommand {
                    name: c.name.clone(),
                    argv: c.command.clone(),
                    timeout: Duration::from_secs(c.timeout_seconds.max(1)),
                })
                .collect(),
            ..Default::default()
        }
    }

    /// Reads the file at `path`; a missing file gives the defaults.
    pub fn load(path: &Path, must_exist: bool) -> Result<FileConfig, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => {
                return Ok(FileConfig::default());
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            ConfigError::Parse {
                path: path.to_path_buf(),
                message: match line {
                    Some(l) => format!("line {l}: {}", e.message()),
                    None => e.message().to_string(),
                },
            }
        })
    }
}

/// How long to wait before retrying after the `attempt`-th consecutive
/// failure: exponential from 1 s, capped at `cap`, with full jitter over the
/// upper half, so ten thousand agents that lost the coordinator together do
/// not return in the same second.
pub fn backoff(attempt: u32, cap: Duration, rand01: f64) -> Duration {
    let base = Duration::from_secs(1).saturating_mul(1u32 << attempt.min(16));
    let ceiling = base.min(cap);
    ceiling.mul_f64(0.5 + 0.5 * rand01.clamp(0.0, 1.0))
}

/// The report interval with ±20 % jitter.
pub fn jittered(interval: Duration, rand01: f64) -> Duration {
    interval.mul_f64(0.8 + 0.4 * rand01.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_a_partial_file() {
        let c =
            FileConfig::parse("coordinator = \"10.0.0.1:7443\"\n", Path::new("a.toml")).unwrap();
        assert_eq!(c.coordinator.as_deref(), Some("10.0.0.1:7443"));
        assert_eq!(c.root, PathBuf::from("/"));
        assert_eq!(c.reboot_command, vec!["systemctl", "reboot"]);
    }

    #[test]
    fn unknown_keys_name_the_file_and_line() {
        let err = FileConfig::parse(
            "root = \"/\"\ncoordinater = \"x\"\n",
            Path::new("agent.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("agent.toml: line 2"), "{err}");
        assert!(err.contains("coordinater"), "{err}");
    }

    #[test]
    fn checks_parse_with_default_timeout() {
        let c = FileConfig::parse(
            "[[checks]]\nname = \"slurmd\"\ncommand = [\"systemctl\", \"is-active\", \"slurmd\"]\n",
            Path::new("a"),
        )
        .unwrap();
        assert_eq!(c.checks[0].timeout_seconds, 5);
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let cap = Duration::from_secs(60);
        assert_eq!(backoff(0, cap, 1.0), Duration::from_secs(1));
        assert_eq!(backoff(0, cap, 0.0), Duration::from_millis(500));
        assert_eq!(backoff(3, cap, 1.0), Duration::from_secs(8));
        assert_eq!(backoff(30, cap, 1.0), cap);
        assert_eq!(backoff(30, cap, 0.0), Duration::from_secs(30));
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let i = Duration::from_secs(10);
        assert_eq!(jittered(i, 0.0), Duration::from_secs(8));
        assert_eq!(jittered(i, 1.0), Duration::from_secs(12));
    }
}
