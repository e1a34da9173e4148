//! The fleet's `ssh_known_hosts`: one `@cert-authority` line for the nodes
//! in certificates mode, and each managed node's own key.

use dfleet_proto::domain::HostKeyMode;

/// One node as its known_hosts entry needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Name, FQDN, address: the names clients reach it by.
    pub names: Vec<String>,
    pub mode: HostKeyMode,
    /// Managed mode: its public key line.
    pub managed_key: Option<String>,
}

/// The file's text. `patterns` (from `[ssh] cert_authority_hosts`) replace
/// the certificate nodes' own names on the `@cert-authority` line.
pub fn render(cluster: &str, ca_public: &str, patterns: &[String], hosts: &[Host]) -> String {
    let mut out = format!(
        "# SSH known hosts of the dfleet cluster {cluster}, written by `dfleet ssh known-hosts`.\n"
    );
    let certified: Vec<&str> = hosts
        .iter()
        .filter(|h| h.mode == HostKeyMode::Certificates)
        .flat_map(|h| h.names.iter().map(String::as_str))
        .collect();
    // Only the key type and the key: the CA's comment is not part of it.
    let ca: Vec<&str> = ca_public.split_whitespace().take(2).collect();
    let ca = ca.join(" ");
    if !patterns.is_empty() {
        out.push_str("# Hosts whose certificate the cluster's SSH host CA signed:\n");
        out.push_str(&format!("@cert-authority {} {ca}\n", patterns.join(",")));
    } else if !certified.is_empty() {
        out.push_str("# Nodes in certificates mode, through the cluster's SSH host CA:\n");
        out.push_str(&format!("@cert-authority {} {ca}\n", certified.join(",")));
    }
    let managed: Vec<&Host> = hosts
        .iter()
        .filter(|h| h.mode == HostKeyMode::Managed)
        .collect();
    if !managed.is_empty() {
        out.push_str("# Nodes in managed mode, each with its own key:\n");
    }
    for h in managed {
        if let Some(key) = &h.managed_key {
            let key: Vec<&str> = key.split_whitespace().take(2).collect();
            out.push_str(&format!("{} {}\n", h.names.join(","), key.join(" ")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(names: &[&str], mode: HostKeyMode, key: Option<&str>) -> Host {
        Host {
            names: names.iter().map(|s| s.to_string()).collect(),
            mode,
            managed_key: key.map(str::to_string),
        }
    }

    #[test]
    fn one_ca_line_for_certificates_and_a_line_per_managed_node() {
        let hosts = [
            host(&["cn01", "10.0.0.11"], HostKeyMode::Certificates, None),
            host(&["cn02", "10.0.0.12"], HostKeyMode::Certificates, None),
            host(
                &["gpu01", "gpu01.x", "10.0.1.1"],
                HostKeyMode::Managed,
                Some("ssh-ed25519 AAAAkey root@gpu01"),
            ),
        ];
        let text = render(
            "hpc",
            "ssh-ed25519 AAAAca dfleet SSH host CA hpc",
            &[],
            &hosts,
        );
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            [
                "@cert-authority cn01,10.0.0.11,cn02,10.0.0.12 ssh-ed25519 AAAAca",
                "gpu01,gpu01.x,10.0.1.1 ssh-ed25519 AAAAkey",
            ]
        );
        let text = render(
            "hpc",
            "ssh-ed25519 AAAAca",
            &["cn*".into(), "10.0.0.*".into()],
            &hosts[..2],
        );
        assert!(
            text.contains("\n@cert-authority cn*,10.0.0.* ssh-ed25519 AAAAca\n"),
            "{text}"
        );
    }
}
