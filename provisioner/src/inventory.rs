//! The cluster inventory (`cluster.toml`): its validated form and the parser that reports every problem at once.
//!
//! The file is read into a span-preserving TOML document and walked by hand instead of through
//! `#[serde(deny_unknown_fields)]`, because serde stops at the first problem and loses line
//! numbers, while an operator fixing a 2,000-node inventory wants every mistake, with its line, in
//! one run.

mod doc;
mod network;
mod nodes;
mod power;
mod sections;
mod ssh;
mod windows;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use dfleet_proto::domain::{HostKeyMode, MacAddr, NodeName};

use self::doc::{Ctx, LineIndex};
use crate::boot::{BootNetwork, BootPaths, Loader};
use crate::window::Window;

/// The most nodes one `[[nodes]]` entry may expand to; more is a typo, not a cluster.
pub const MAX_NODES_PER_ENTRY: usize = 100_000;
/// The most nodes a whole inventory may list.
pub const MAX_NODES_TOTAL: usize = 100_000;

pub const DEFAULT_ADMIN_SOCKET: &str = "/run/dfleet/admin.sock";
pub const DEFAULT_ADMIN_GROUP: &str = "dfleet-admin";
pub const DEFAULT_COORDINATOR_NAME: &str = "dfleet-coordinator";
pub const DEFAULT_REPORT_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_OVERLAY_SIZE: &str = "50%";
pub const DEFAULT_EXPORT_ROOT: &str = "/srv/dfleet/images";
pub const DEFAULT_TFTP_ROOT: &str = "/srv/tftp";
pub const DEFAULT_DHCP_ROOT: &str = "/etc/dfleet/dhcp";
/// Where the kernel NFS server reads extra exports (`exportfs` reads only
/// `*.exports` there, so the ganesha file beside them is left alone).
pub const DEFAULT_EXPORTS_ROOT: &str = "/etc/exports.d";

pub use self::power::{DEFAULT_BMC, DEFAULT_PASSWORD_ENV, DEFAULT_POWER_TIMEOUT, fill};
pub use self::ssh::DEFAULT_CERT_VALIDITY;

/// A validated inventory: the cluster's settings and every node, ranges expanded.
#[derive(Debug, Clone)]
pub struct Inventory {
    /// The file this inventory was read from, as given to [`Inventory::load`] or [`Inventory::parse`].
    pub path: PathBuf,
    pub cluster: ClusterConfig,
    pub enrollment: EnrollmentConfig,
    pub health: HealthConfig,
    pub checks: Vec<CheckCommand>,
    /// The `[boot]` table; `None` when the inventory does not describe a boot network.
    pub boot: Option<BootSettings>,
    /// The `[nfs]` table; `None` when the images are not served over NFS by this inventory.
    pub nfs: Option<NfsSettings>,
    /// The `[paths]` table, each root defaulted when absent.
    pub paths: BootPaths,
    /// The `[groups.NAME]` tables: boot settings shared by the nodes of a group.
    pub groups: BTreeMap<String, NodeBoot>,
    /// The `[windows]` table: maintenance windows by name.
    pub windows: BTreeMap<String, Window>,
    /// The `[power]` table; `None` when nodes cannot be power-cycled by dfleet.
    pub power: Option<PowerConfig>,
    /// The `[ssh]` table, defaulted when absent.
    pub ssh: SshConfig,
    /// Every node in file order, each range expanded in its own order.
    pub nodes: Vec<NodeEntry>,
    by_name: HashMap<String, usize>,
    by_mac: HashMap<MacAddr, usize>,
}

/// The `[cluster]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    pub name: String,
    pub state_dir: PathBuf,
    /// gRPC (TLS) listen addresses; never empty.
    pub listen: Vec<SocketAddr>,
    /// `None` means no metrics listener.
    pub metrics_listen: Option<SocketAddr>,
    pub admin_socket: PathBuf,
    pub admin_group: String,
    /// The TLS server name agents verify.
    pub coordinator_name: String,
    /// How often agents report; sent to them.
    pub report_interval: Duration,
}

/// Whether enrollment requests from nodes in the inventory are approved without an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EnrollmentPolicy {
    #[default]
    Inventory,
    Manual,
}

/// The `[enrollment]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollmentConfig {
    pub policy: EnrollmentPolicy,
    pub cert_lifetime: Duration,
    /// Token bucket refill rate for enrollment requests.
    pub rate_per_second: u32,
    pub burst: u32,
    pub pending_max: usize,
}

impl Default for EnrollmentConfig {
    fn default() -> Self {
        EnrollmentConfig {
            policy: EnrollmentPolicy::Inventory,
            cert_lifetime: Duration::from_secs(24 * 3600),
            rate_per_second: 50,
            burst: 200,
            pending_max: 1024,
        }
    }
}

/// The `[health]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    pub stale_after: Duration,
    /// Always longer than `stale_after`.
    pub lost_after: Duration,
    /// In 1..=100.
    pub overlay_used_warn_percent: u8,
    pub overlay_time_to_full_warn: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            stale_after: Duration::from_secs(30),
            lost_after: Duration::from_secs(120),
            overlay_used_warn_percent: 80,
            overlay_time_to_full_warn: Duration::from_secs(3600),
        }
    }
}

/// One `[[checks]]` entry: a readiness command agents may be told to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckCommand {
    pub name: String,
    /// Program and arguments; never empty.
    pub command: Vec<String>,
    pub timeout: Duration,
}

/// The `[power]` table: how to power-cycle a node through its BMC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PowerConfig {
    /// An argument vector with `{node}`, `{ip}`, `{mac}`, `{bmc}` and `{user}` placeholders.
    pub command: Vec<String>,
    /// The BMC's host name or address, with `{node}`, `{ip}` and `{mac}` placeholders.
    pub bmc: String,
    /// The file holding BMC users and passwords (mode 0600, owned by the coordinator's user).
    pub credentials: Option<PathBuf>,
    /// The environment variable the command reads the password from.
    pub password_env: String,
    /// How long the command may run.
    pub timeout: Duration,
}

/// The `[ssh]` table: how nodes get their SSH host keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshConfig {
    /// The mode of nodes whose entry and groups do not name one.
    pub host_keys: HostKeyMode,
    /// How long a host certificate is valid (agents renew at two thirds).
    pub cert_validity: Duration,
    /// The host patterns of the `@cert-authority` line; empty: every node's
    /// name, FQDN and address.
    pub cert_authority_hosts: Vec<String>,
}

impl Default for SshConfig {
    fn default() -> Self {
        SshConfig {
            host_keys: HostKeyMode::Certificates,
            cert_validity: DEFAULT_CERT_VALIDITY,
            cert_authority_hosts: Vec::new(),
        }
    }
}

/// Boot settings that a `[[nodes]]` entry, a `[groups.NAME]` table or `[boot]` may give; each
/// unset one falls through to the next (see [`Inventory::effective_boot`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeBoot {
    pub loader: Option<Loader>,
    /// Extra kernel arguments, added to (not replacing) those of the levels below.
    pub kernel_args: Vec<String>,
    /// Serial console, e.g. `ttyS0,115200`.
    pub console: Option<String>,
    /// Cap of the RAM upper layer in tmpfs `size=` syntax: `50%` or `4g`.
    pub overlay_size: Option<String>,
    /// How the node gets its SSH host keys (groups and nodes only; the
    /// cluster's default is `[ssh] host_keys`).
    pub ssh_host_keys: Option<HostKeyMode>,
}

/// The `[boot]` table: the boot network the management host serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootSettings {
    /// Interface, subnet, router, DNS, NTP, next server and DHCP flavour:
    /// the same type the renderers read.
    pub network: BootNetwork,
    /// `HOST:PORT` nodes reach the coordinator at; `None` leaves the choice to the caller.
    pub coordinator: Option<String>,
    /// What `pxe apply` runs after changing DHCP files, as an argument vector
    /// (default: `systemctl reload dnsmasq`, `systemctl reload
    /// kea-dhcp4-server` or `systemctl restart isc-dhcp-server`).
    pub dhcp_reload: Vec<String>,
    /// The DHCP server's log, read for requests from MACs the inventory does
    /// not know (they show in `dfleet node pending`).
    pub dhcp_log: Option<PathBuf>,
    /// The boot settings of nodes whose entry and groups do not give their own.
    pub defaults: NodeBoot,
}

/// The `[nfs]` table: where the image generations are exported from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NfsSettings {
    pub server: Ipv4Addr,
    /// Directory holding `<image>/<generation>` trees.
    pub export_root: PathBuf,
    /// Whether dfleet writes the exports itself (else it prints what to export).
    pub managed: bool,
    /// The only client allowed to write; the server itself unless given.
    pub management_host: Ipv4Addr,
    /// Run when dfleet's exports change, so the NFS server serves them
    /// (default `exportfs -ra`; empty when `managed = false`).
    pub reload: Vec<String>,
}

/// A node's boot settings with every level applied: what its boot files say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedBoot {
    pub loader: Loader,
    /// `[boot]`'s, then each group's in the node's order, then the node's own.
    pub kernel_args: Vec<String>,
    pub console: Option<String>,
    pub overlay_size: String,
}

/// One node, after range expansion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEntry {
    pub name: NodeName,
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    pub image: String,
    pub groups: Vec<String>,
    /// The entry's own boot settings, before groups and `[boot]` are applied.
    pub boot: NodeBoot,
    /// The line of the entry's `name` key in the inventory file (1-based).
    pub line: usize,
}

/// Everything wrong with an inventory, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", render_problems(.problems))]
pub struct InventoryError {
    pub problems: Vec<Problem>,
}

/// One problem, located by file, line and field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The inventory, or the MAC file the problem is in.
    pub file: PathBuf,
    /// 1-based; 0 when the problem has no line (a missing table, an unreadable file).
    pub line: usize,
    /// Where in the document, e.g. `nodes[3].mac`; empty for TOML syntax errors.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

fn render_problems(problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(Problem::to_string).collect();
    lines.join("\n")
}

impl Inventory {
    /// Reads and validates the inventory at `path`, and the MAC files it names.
    pub fn load(path: &Path) -> Result<Inventory, InventoryError> {
        let text = std::fs::read_to_string(path).map_err(|err| InventoryError {
            problems: vec![Problem {
                file: path.to_path_buf(),
                line: 0,
                field: String::new(),
                message: format!("cannot read the inventory: {err}"),
            }],
        })?;
        Self::parse(&text, path)
    }

    /// Validates inventory `text` that was read from `path`.
    ///
    /// `path` names the file in problems, and MAC files (`mac_file`) are read relative to its
    /// directory.
    pub fn parse(text: &str, path: &Path) -> Result<Inventory, InventoryError> {
        Self::parse_with(text, path, &mut |p| std::fs::read_to_string(p))
    }

    /// [`Inventory::parse`] with MAC files read through `read_file`, so tests and callers that
    /// hold files elsewhere can supply them.
    pub fn parse_with(
        text: &str,
        path: &Path,
        read_file: &mut dyn FnMut(&Path) -> io::Result<String>,
    ) -> Result<Inventory, InventoryError> {
        let mut ctx = Ctx::new(path, LineIndex::new(text));
        let root = match doc::parse_document(&mut ctx, text) {
            Some(root) => root,
            None => return Err(ctx.into_error()),
        };
        let root = doc::Table::root(&root);
        root.check_keys(
            &mut ctx,
            &[
                "cluster",
                "enrollment",
                "health",
                "checks",
                "boot",
                "nfs",
                "paths",
                "groups",
                "windows",
                "power",
                "ssh",
                "nodes",
            ],
        );
        let cluster = sections::cluster(&mut ctx, &root);
        let enrollment = sections::enrollment(&mut ctx, &root);
        let health = sections::health(&mut ctx, &root);
        let checks = sections::checks(&mut ctx, &root);
        let (boot, subnet) = network::boot(&mut ctx, &root);
        let nfs = network::nfs(&mut ctx, &root);
        let paths = network::paths(&mut ctx, &root, nfs.as_ref());
        let groups = network::groups(&mut ctx, &root);
        let windows = windows::windows(&mut ctx, &root);
        let power = power::power(&mut ctx, &root);
        let ssh = ssh::ssh(&mut ctx, &root);
        let nodes = nodes::nodes(&mut ctx, &root, subnet, read_file);
        match cluster {
            Some(cluster) if !ctx.has_problems() => Ok(Inventory {
                path: path.to_path_buf(),
                cluster,
                enrollment,
                health,
                checks,
                boot,
                nfs,
                paths,
                groups,
                windows,
                power,
                ssh,
                nodes,
                by_name: HashMap::new(),
                by_mac: HashMap::new(),
            }
            .indexed()),
            _ => Err(ctx.into_error()),
        }
    }

    fn indexed(mut self) -> Inventory {
        let nodes = self.nodes.iter().enumerate();
        self.by_name = nodes
            .clone()
            .map(|(i, n)| (n.name.as_str().to_string(), i))
            .collect();
        self.by_mac = nodes.map(|(i, n)| (n.mac, i)).collect();
        self
    }

    /// The node called `name`, if the inventory lists it.
    ///
    /// Lookups go through indices built when the inventory was parsed. `nodes` is public, so a
    /// caller could change it afterwards; a stale index hit is then answered by a scan instead of
    /// with the wrong node.
    pub fn node(&self, name: &str) -> Option<&NodeEntry> {
        match self.by_name.get(name).map(|&i| self.nodes.get(i)) {
            Some(Some(node)) if node.name.as_str() == name => Some(node),
            Some(_) => self.nodes.iter().find(|n| n.name.as_str() == name),
            None => None,
        }
    }

    /// The node whose boot interface has `mac`, if the inventory lists one.
    pub fn node_by_mac(&self, mac: &MacAddr) -> Option<&NodeEntry> {
        match self.by_mac.get(mac).map(|&i| self.nodes.get(i)) {
            Some(Some(node)) if node.mac == *mac => Some(node),
            Some(_) => self.nodes.iter().find(|n| n.mac == *mac),
            None => None,
        }
    }

    /// How `node` gets its SSH host keys: its entry's `ssh_host_keys`, else
    /// its groups' in the order it lists them, else `[ssh] host_keys`.
    pub fn host_key_mode(&self, node: &NodeEntry) -> HostKeyMode {
        std::iter::once(&node.boot)
            .chain(node.groups.iter().filter_map(|g| self.groups.get(g)))
            .find_map(|l| l.ssh_host_keys)
            .unwrap_or(self.ssh.host_keys)
    }

    /// The node's effective boot settings: each of loader, console and overlay size from the
    /// node's own entry, else its groups in the order it lists them, else `[boot]`'s defaults,
    /// else the built-ins (pxelinux, `50%`). Kernel arguments add up instead, in the order the
    /// kernel should see them: `[boot]`'s first, then each group's, then the node's, so that
    /// the most specific one is last and wins where an argument is given twice.
    pub fn effective_boot(&self, node: &NodeEntry) -> ResolvedBoot {
        let defaults = self.boot.as_ref().map(|b| &b.defaults);
        let groups: Vec<&NodeBoot> = node
            .groups
            .iter()
            .filter_map(|g| self.groups.get(g))
            .collect();
        // Most specific first, the order in which a setting is looked for.
        let levels: Vec<&NodeBoot> = std::iter::once(&node.boot)
            .chain(groups.iter().copied())
            .chain(defaults)
            .collect();
        // The order in which the kernel reads its arguments: groups keep the node's order.
        let kernel_args = defaults
            .into_iter()
            .chain(groups)
            .chain(std::iter::once(&node.boot))
            .flat_map(|l| l.kernel_args.iter().cloned())
            .collect();
        ResolvedBoot {
            loader: levels.iter().find_map(|l| l.loader).unwrap_or(Loader::Auto),
            kernel_args,
            console: levels.iter().find_map(|l| l.console.clone()),
            overlay_size: levels
                .iter()
                .find_map(|l| l.overlay_size.clone())
                .unwrap_or_else(|| DEFAULT_OVERLAY_SIZE.to_string()),
        }
    }
}
