//! Power-cycling a node through its BMC: the `[power]` command of the
//! inventory, filled for one node, with the BMC user and password read from
//! the credentials file at the moment of use (so a changed password needs no
//! restart).
//!
//! The credentials file is TOML:
//!
//! ```toml
//! user = "ADMIN"
//! password = "…"
//!
//! [nodes."gpu[01-08]"]     # a nodeset with other credentials
//! user = "root"
//! password = "…"
//! ```
//!
//! It must be a regular file owned by the coordinator's user and readable by
//! nobody else (mode 0600 or 0400); the password goes to the command in the
//! environment variable `password_env`, never in its arguments.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::Duration;

use dfleet_provisioner::inventory::{NodeEntry, PowerConfig};
use serde::Deserialize;

/// A power command ready to run for one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PowerOrder {
    pub argv: Vec<String>,
    /// The password's environment variable and value, when a password is
    /// configured.
    pub env: Option<(String, String)>,
    pub timeout: Duration,
}

impl PowerOrder {
    /// The command as shown in logs and events (it never holds the password).
    pub fn shown(&self) -> String {
        self.argv.join(" ")
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Credentials {
    user: Option<String>,
    password: Option<String>,
    #[serde(default)]
    nodes: BTreeMap<String, Login>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    user: Option<String>,
    password: Option<String>,
}

/// The power command for `node`: the credentials file read and checked now.
pub fn order_for(config: &PowerConfig, node: &NodeEntry) -> Result<PowerOrder, String> {
    let (user, password) = match &config.credentials {
        Some(path) => {
            let text = read_secret(path)?;
            login_for(&text, path, node.name.as_str())?
        }
        None => (String::new(), None),
    };
    let bmc = config.bmc_for(node);
    Ok(PowerOrder {
        argv: config.argv_for(node, &bmc, &user),
        env: password.map(|p| (config.password_env.clone(), p)),
        timeout: config.timeout,
    })
}

/// The contents of a secrets file that only this user can read; anything
/// else is refused, naming the file and what is wrong with it.
pub fn read_secret(path: &Path) -> Result<String, String> {
    let shown = path.display();
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .map_err(|e| format!("reading the BMC credentials {shown}: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("reading the BMC credentials {shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!(
            "the BMC credentials {shown} are not a regular file"
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "the BMC credentials {shown} can be read or changed by other users (mode {mode:04o}): \
             chmod 600 it"
        ));
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(format!(
            "the BMC credentials {shown} belong to uid {}, not to the coordinator's user (uid {me})",
            meta.uid()
        ));
    }
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(|e| format!("reading the BMC credentials {shown}: {e}"))?;
    Ok(text)
}

/// The user and password for `node` from the credentials file's text: the
/// first `[nodes."SET"]` table whose nodeset holds it, each field falling
/// back to the top-level one.
fn login_for(text: &str, path: &Path, node: &str) -> Result<(String, Option<String>), String> {
    // The parser's message may quote the line; it is not echoed, as it can
    // hold a password.
    let creds: Credentials = toml::from_str(text).map_err(|e| {
        let at = e
            .span()
            .map(|s| format!(" at line {}", text[..s.start].lines().count().max(1)))
            .unwrap_or_default();
        format!(
            "the BMC credentials {} are not valid TOML{at}",
            path.display()
        )
    })?;
    let mut user = creds.user;
    let mut password = creds.password;
    for (set, login) in &creds.nodes {
        let names = dfleet_provisioner::nodeset::expand(set, 100_000)
            .map_err(|e| format!("the BMC credentials {}: nodes.{set:?}: {e}", path.display()))?;
        if names.iter().any(|n| n == node) {
            user = login.user.clone().or(user);
            password = login.password.clone().or(password);
            break;
        }
    }
    Ok((user.unwrap_or_default(), password))
}

/// Runs the order: the password in the environment, nothing on stdin, and
/// killed when it outlives its timeout.
pub async fn run(order: &PowerOrder) -> Result<(), String> {
    let env = order.env.as_ref().map(|(k, v)| (k.as_str(), v.as_str()));
    crate::argv::succeed(&order.argv, env, order.timeout).await
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const CREDS: &str =
        "user = \"ADMIN\"\npassword = \"s3cret\"\n\n[nodes.\"gpu[01-02]\"]\npassword = \"other\"\n";

    #[test]
    fn a_node_gets_its_nodesets_login_falling_back_to_the_default() {
        let p = Path::new("/etc/dfleet/bmc.toml");
        assert_eq!(
            login_for(CREDS, p, "cn01").unwrap(),
            ("ADMIN".to_string(), Some("s3cret".to_string()))
        );
        assert_eq!(
            login_for(CREDS, p, "gpu02").unwrap(),
            ("ADMIN".to_string(), Some("other".to_string()))
        );
        let bad = login_for("password = \"x\"\nuser = 5\n", p, "cn01").unwrap_err();
        assert_eq!(
            bad,
            "the BMC credentials /etc/dfleet/bmc.toml are not valid TOML at line 2"
        );
        assert!(!bad.contains('x'));
        let set = login_for("[nodes.\"cn[2-1]\"]\n", p, "cn01").unwrap_err();
        assert!(set.contains("nodes.\"cn[2-1]\""), "{set}");
    }

    #[test]
    fn credentials_others_can_read_are_refused_with_their_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bmc.toml");
        std::fs::write(&path, CREDS).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_secret(&path).unwrap_err();
        assert!(e.contains("(mode 0644): chmod 600 it"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_secret(&path).unwrap(), CREDS);
        let link = dir.path().join("link.toml");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(read_secret(&link).is_err());
        assert!(read_secret(&dir.path().join("none.toml")).is_err());
    }
}
