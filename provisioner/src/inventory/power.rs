//! The `[power]` table of `cluster.toml`: the command that power-cycles a node through its BMC
//! when its agent cannot be told to reboot.
//!
//! ```toml
//! [power]
//! command = ["ipmitool", "-I", "lanplus", "-H", "{bmc}", "-U", "{user}", "-E",
//!            "chassis", "power", "cycle"]
//! bmc = "{node}-ipmi"
//! credentials = "/etc/dfleet/bmc.toml"
//! ```
//!
//! The command is an argument vector with placeholders, never run through a shell. The BMC's
//! password is never one of its arguments (every user on the host can read a process's
//! arguments): it goes in the environment variable `password_env`.

use std::time::Duration;

use super::doc::{self, Ctx, Need, Table};
use super::{NodeEntry, PowerConfig};

pub const DEFAULT_BMC: &str = "{node}-bmc";
pub const DEFAULT_PASSWORD_ENV: &str = "IPMI_PASSWORD";
pub const DEFAULT_POWER_TIMEOUT: Duration = Duration::from_secs(60);

/// The placeholders of the command, and of the `bmc` pattern (all but `{bmc}` and `{user}`).
const COMMAND_KEYS: [&str; 5] = ["node", "ip", "mac", "bmc", "user"];
const BMC_KEYS: [&str; 3] = ["node", "ip", "mac"];

pub(super) fn power(ctx: &mut Ctx<'_>, root: &Table<'_, '_>) -> Option<PowerConfig> {
    let t = ctx.table(root, "power", Need::Optional)?;
    t.check_keys(
        ctx,
        &["command", "bmc", "credentials", "password_env", "timeout"],
    );
    let command = ctx.argv(&t, "command", Need::Required);
    let command = command.map(|words| {
        let mut ok = true;
        for (j, (word, span)) in words.iter().enumerate() {
            if let Err(message) = check_template(word, &COMMAND_KEYS) {
                ctx.report(span, format!("{}[{j}]", t.field("command")), message);
                ok = false;
            }
        }
        (ok, words.into_iter().map(|(w, _)| w).collect::<Vec<_>>())
    });
    let bmc = ctx.read(&t, "bmc", Need::Optional, |v| {
        let s = doc::non_empty_string(v)?;
        check_template(&s, &BMC_KEYS)?;
        Ok(s)
    });
    let bmc_ok = bmc.is_some() || t.get("bmc").is_none();
    let credentials = ctx.read(&t, "credentials", Need::Optional, doc::absolute_path);
    let credentials_ok = credentials.is_some() || t.get("credentials").is_none();
    let password_env = ctx.read(&t, "password_env", Need::Optional, env_name);
    let password_env_ok = password_env.is_some() || t.get("password_env").is_none();
    let timeout = ctx.read(
        &t,
        "timeout",
        Need::Optional,
        doc::duration(Duration::from_secs(1)..=Duration::from_secs(3600)),
    );
    let timeout_ok = timeout.is_some() || t.get("timeout").is_none();
    match command {
        Some((true, command)) if bmc_ok && credentials_ok && password_env_ok && timeout_ok => {
            Some(PowerConfig {
                command,
                bmc: bmc.unwrap_or_else(|| DEFAULT_BMC.to_string()),
                credentials,
                password_env: password_env.unwrap_or_else(|| DEFAULT_PASSWORD_ENV.to_string()),
                timeout: timeout.unwrap_or(DEFAULT_POWER_TIMEOUT),
            })
        }
        _ => None,
    }
}

/// Every `{…}` in `text` names one of `keys`; `{password}` is refused with the reason.
fn check_template(text: &str, keys: &[&str]) -> Result<(), String> {
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let Some(len) = rest[open..].find('}') else {
            return Err(format!("unclosed '{{' in {text:?}"));
        };
        let key = &rest[open + 1..open + len];
        if key == "password" {
            return Err(
                "the BMC password is never put on a command line (any user can read a \
                 process's arguments): it is passed in the environment variable named by \
                 password_env (ipmitool -E reads IPMI_PASSWORD)"
                    .to_string(),
            );
        }
        if !keys.contains(&key) {
            let known: Vec<String> = keys.iter().map(|k| format!("{{{k}}}")).collect();
            return Err(format!(
                "unknown placeholder {{{key}}} in {text:?}: expected {}",
                known.join(", ")
            ));
        }
        rest = &rest[open + len + 1..];
    }
    Ok(())
}

fn env_name(value: &toml::de::DeValue<'_>) -> Result<String, String> {
    let s = doc::string(value)?;
    let ok = s
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_uppercase() || b == b'_')
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    if !ok {
        return Err(format!(
            "invalid environment variable name {s:?}: expected capital letters, digits and '_'"
        ));
    }
    Ok(s)
}

/// `text` with each `{key}` of `values` replaced, in one pass (a value holding braces is not
/// read again); an argument stays one argument, whatever the values hold.
pub fn fill(text: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open..];
        let found = after.find('}').and_then(|close| {
            let key = &after[1..close];
            values
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| (*v, close))
        });
        match found {
            Some((value, close)) => {
                out.push_str(value);
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = &after[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

impl PowerConfig {
    /// The host name or address of `node`'s BMC, from the `bmc` pattern.
    pub fn bmc_for(&self, node: &NodeEntry) -> String {
        let (ip, mac) = (node.ip.to_string(), node.mac.to_string());
        fill(
            &self.bmc,
            &[("node", node.name.as_str()), ("ip", &ip), ("mac", &mac)],
        )
    }

    /// The command for `node`, its BMC at `bmc` and logged into as `user`.
    pub fn argv_for(&self, node: &NodeEntry, bmc: &str, user: &str) -> Vec<String> {
        let (ip, mac) = (node.ip.to_string(), node.mac.to_string());
        let values = [
            ("node", node.name.as_str()),
            ("ip", &ip),
            ("mac", &mac),
            ("bmc", bmc),
            ("user", user),
        ];
        self.command.iter().map(|a| fill(a, &values)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_filled_once_and_unknown_braces_kept() {
        let values = [("node", "cn01"), ("user", "{node}")];
        assert_eq!(fill("-H {node}-ipmi", &values), "-H cn01-ipmi");
        assert_eq!(fill("{user}", &values), "{node}");
        assert_eq!(fill("{x} {node", &values), "{x} {node");
    }

    #[test]
    fn templates_name_only_known_placeholders_and_never_the_password() {
        assert_eq!(check_template("{node}-bmc", &BMC_KEYS), Ok(()));
        assert!(
            check_template("{bmc}", &BMC_KEYS)
                .unwrap_err()
                .contains("unknown placeholder {bmc}")
        );
        assert!(
            check_template("-P{password}", &COMMAND_KEYS)
                .unwrap_err()
                .contains("environment variable")
        );
        assert!(
            check_template("{node", &COMMAND_KEYS)
                .unwrap_err()
                .contains("unclosed")
        );
    }
}
