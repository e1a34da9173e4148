//! `/proc/cmdline`: what the boot loader dfleet configured tells the node.

use dfleet_proto::domain::MacAddr;

/// The parameters dfleet writes into each node's boot menu.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelCmdline {
    /// From pxelinux's `BOOTIF=01-aa-bb-…` (`ipappend 2`): the NIC the node booted from.
    pub boot_mac: Option<MacAddr>,
    /// `dfleet.coordinator=HOST:PORT`.
    pub coordinator: Option<String>,
    /// `dfleet.overlay.size=` as written (e.g. `50%`, `4g`), for the initramfs's tmpfs.
    pub overlay_size: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CmdlineError {
    #[error(
        "parsing kernel command line: BOOTIF={0:?} is not a pxelinux MAC (01-aa-bb-cc-dd-ee-ff)"
    )]
    BootIf(String),
    #[error("parsing kernel command line: dfleet.coordinator={0:?} is not HOST:PORT")]
    Coordinator(String),
}

/// Splits like the kernel does: on whitespace, except inside double quotes, which are removed.
fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in text.chars() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Reads the dfleet parameters. Everything after a bare `--` belongs to init and is ignored; the
/// last occurrence of a parameter wins, as in the kernel.
pub fn parse(text: &str) -> Result<KernelCmdline, CmdlineError> {
    let mut out = KernelCmdline::default();
    for word in words(text) {
        if word == "--" {
            break;
        }
        let Some((key, value)) = word.split_once('=') else {
            continue;
        };
        match key {
            "BOOTIF" => out.boot_mac = Some(parse_bootif(value)?),
            "dfleet.coordinator" => {
                let port_ok = value
                    .rsplit_once(':')
                    .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
                if !port_ok {
                    return Err(CmdlineError::Coordinator(value.to_string()));
                }
                out.coordinator = Some(value.to_string());
            }
            "dfleet.overlay.size" => out.overlay_size = Some(value.to_string()),
            _ => {}
        }
    }
    Ok(out)
}

/// `01-aa-bb-cc-dd-ee-ff`: the leading `01` is the ARP hardware type (Ethernet). A bare MAC is
/// accepted too, as some loaders (iPXE scripts) write it that way.
fn parse_bootif(value: &str) -> Result<MacAddr, CmdlineError> {
    let mac = match value.strip_prefix("01-") {
        Some(rest) if rest.len() == 17 => rest,
        _ => value,
    };
    mac.parse()
        .map_err(|_| CmdlineError::BootIf(value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pxelinux_parameters_are_read() {
        let c = parse(
            "BOOT_IMAGE=vmlinuz initrd=initrd.img root=nfs:10.0.0.1:/srv/dfleet/images/compute/7 ro \
             BOOTIF=01-52-54-00-AB-cd-01 dfleet.coordinator=mgmt.cluster:7443 dfleet.overlay.size=50% quiet\n",
        )
        .unwrap();
        assert_eq!(c.boot_mac, Some("52:54:00:ab:cd:01".parse().unwrap()));
        assert_eq!(c.coordinator.as_deref(), Some("mgmt.cluster:7443"));
        assert_eq!(c.overlay_size.as_deref(), Some("50%"));
    }

    #[test]
    fn init_arguments_and_quotes() {
        let c = parse("quiet dfleet.overlay.size=\"4g\" -- BOOTIF=garbage").unwrap();
        assert_eq!(c.overlay_size.as_deref(), Some("4g"));
        assert_eq!(c.boot_mac, None);
        assert_eq!(
            parse("console=ttyS0 quiet").unwrap(),
            KernelCmdline::default()
        );
    }

    #[test]
    fn malformed_values_are_errors() {
        assert_eq!(
            parse("BOOTIF=01-52-54-00").unwrap_err(),
            CmdlineError::BootIf("01-52-54-00".into())
        );
        assert_eq!(
            parse("dfleet.coordinator=mgmt").unwrap_err(),
            CmdlineError::Coordinator("mgmt".into())
        );
        // A bare MAC without the hardware type is fine.
        assert!(
            parse("BOOTIF=52:54:00:ab:cd:01")
                .unwrap()
                .boot_mac
                .is_some()
        );
    }
}
