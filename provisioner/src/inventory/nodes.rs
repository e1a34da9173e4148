//! The `[[nodes]]` entries: expanding ranges, assigning MACs (inline or from a MAC file) and addresses, finding duplicates.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::io;
use std::net::Ipv4Addr;
use std::path::Path;
use std::rc::Rc;

use dfleet_proto::domain::{MacAddr, NodeName};
use toml::de::DeValue;

use super::doc::{self, Ctx, Need, Table};
use super::network::{self, NODE_BOOT_KEYS, NODE_ONLY_KEYS};
use super::{MAX_NODES_PER_ENTRY, MAX_NODES_TOTAL, NodeEntry};
use crate::boot::Subnet;
use crate::nodeset;

const NODE_KEYS: [&str; 7] = ["name", "mac", "macs", "mac_file", "ip", "image", "groups"];
const MAC_KEYS: [&str; 3] = ["mac", "macs", "mac_file"];

/// Reads MAC files named by `mac_file`, relative paths already resolved.
pub(super) type ReadFile<'r> = dyn FnMut(&Path) -> io::Result<String> + 'r;

/// Where a node's MAC address was written, for problems about it.
struct MacLoc {
    /// `None` for the inventory itself, else the MAC file.
    file: Option<Rc<Path>>,
    line: usize,
    /// The inventory line the problem is listed with.
    anchor: usize,
    field: Rc<str>,
}

impl MacLoc {
    fn describe(&self) -> String {
        match &self.file {
            None => format!("line {}", self.line),
            Some(file) => format!("{}:{}", file.display(), self.line),
        }
    }
}

/// The first node to use each name, MAC and address, to name it when a later node reuses one.
#[derive(Default)]
struct FirstUse {
    names: HashMap<String, usize>,
    macs: HashMap<MacAddr, (NodeName, String)>,
    ips: HashMap<Ipv4Addr, (NodeName, usize)>,
}

/// What every entry is checked against.
struct Shared<'r, 's> {
    read_file: &'r mut ReadFile<'s>,
    /// `[boot]`'s subnet, which holds every node's address.
    subnet: Option<Subnet>,
    first: FirstUse,
    /// Nodes expanded so far, for the inventory's size limit.
    total: u128,
}

/// Reads every `[[nodes]]` entry, reporting problems into `ctx`. The nodes returned are complete
/// only if no problem was reported.
pub(super) fn nodes(
    ctx: &mut Ctx<'_>,
    root: &Table<'_, '_>,
    subnet: Option<Subnet>,
    read_file: &mut ReadFile<'_>,
) -> Vec<NodeEntry> {
    let mut shared = Shared {
        read_file,
        subnet,
        first: FirstUse::default(),
        total: 0,
    };
    let mut out = Vec::new();
    for t in ctx.tables(root, "nodes").into_iter().flatten() {
        entry(ctx, &t, &mut shared, &mut out);
    }
    out
}

fn entry(
    ctx: &mut Ctx<'_>,
    t: &Table<'_, '_>,
    shared: &mut Shared<'_, '_>,
    out: &mut Vec<NodeEntry>,
) {
    let known: Vec<&str> = NODE_KEYS
        .iter()
        .chain(&NODE_BOOT_KEYS)
        .chain(&NODE_ONLY_KEYS)
        .copied()
        .collect();
    t.check_keys(ctx, &known);
    let pattern = ctx.read(t, "name", Need::Required, doc::non_empty_string);
    let name_line = t.value_line(ctx, "name").unwrap_or_else(|| t.line(ctx));
    let start_ip = ctx.read(t, "ip", Need::Required, doc::ipv4);
    let ip_line = t.value_line(ctx, "ip").unwrap_or_else(|| t.line(ctx));
    let image = ctx.read(t, "image", Need::Required, identifier("image name"));
    let groups = ctx.list(t, "groups", Need::Optional, identifier("group name"));
    let groups_ok = groups.is_some() || t.get("groups").is_none();
    let groups: Vec<String> = groups
        .unwrap_or_default()
        .into_iter()
        .map(|(g, _)| g)
        .collect();
    let boot = network::node_boot(ctx, t);

    let names = pattern
        .as_deref()
        .and_then(|p| expand_names(ctx, t, p, name_line, &mut shared.total));
    let macs = assign_macs(
        ctx,
        t,
        pattern.as_deref(),
        names.as_deref(),
        shared.read_file,
    );
    let Some(names) = names else {
        return;
    };
    let ips = start_ip.and_then(|start| addresses(ctx, t, start, names.len(), ip_line));
    if let (Some(subnet), Some(ips)) = (shared.subnet, &ips) {
        network::check_addresses(ctx, &t.field("ip"), ip_line, subnet, &names, ips);
    }
    let first = &mut shared.first;

    let is_range = pattern
        .as_deref()
        .is_some_and(|p| !nodeset::is_plain_name(p));
    let of_node = |name: &NodeName| {
        if is_range {
            format!(" for {name}")
        } else {
            String::new()
        }
    };
    for (k, name) in names.iter().enumerate() {
        match first.names.entry(name.as_str().to_string()) {
            Entry::Occupied(e) => {
                let message = format!(
                    "duplicate node name {name} (first used at line {})",
                    e.get()
                );
                ctx.report_line(name_line, t.field("name"), message);
            }
            Entry::Vacant(e) => {
                e.insert(name_line);
            }
        }
        if let Some(Some((mac, loc))) = macs.as_ref().map(|m| &m[k]) {
            match first.macs.entry(*mac) {
                Entry::Occupied(e) => {
                    let (first_name, first_at) = e.get();
                    let message = format!(
                        "duplicate MAC {mac}{} (first used by {first_name} at {first_at})",
                        of_node(name)
                    );
                    match &loc.file {
                        None => ctx.report_line(loc.line, &*loc.field, message),
                        Some(file) => {
                            ctx.report_in(file, loc.line, loc.anchor, &*loc.field, message)
                        }
                    }
                }
                Entry::Vacant(e) => {
                    e.insert((name.clone(), loc.describe()));
                }
            }
        }
        if let Some(ip) = ips.as_ref().map(|ips| ips[k]) {
            match first.ips.entry(ip) {
                Entry::Occupied(e) => {
                    let (first_name, first_line) = e.get();
                    let message = format!(
                        "duplicate IP {ip}{} (first used by {first_name} at line {first_line})",
                        of_node(name)
                    );
                    ctx.report_line(ip_line, t.field("ip"), message);
                }
                Entry::Vacant(e) => {
                    e.insert((name.clone(), ip_line));
                }
            }
        }
    }

    let (Some(macs), Some(ips), Some(image), true) = (macs, ips, image, groups_ok) else {
        return;
    };
    for ((name, mac), ip) in names.into_iter().zip(macs).zip(ips) {
        // A node missing from its MAC file was reported; the inventory is rejected anyway.
        if let Some((mac, _)) = mac {
            out.push(NodeEntry {
                name,
                mac,
                ip,
                image: image.clone(),
                groups: groups.clone(),
                boot: boot.clone(),
                line: name_line,
            });
        }
    }
}

/// Expands the entry's `name` into valid node names, enforcing the size limits.
fn expand_names(
    ctx: &mut Ctx<'_>,
    t: &Table<'_, '_>,
    pattern: &str,
    line: usize,
    total: &mut u128,
) -> Option<Vec<NodeName>> {
    let field = t.field("name");
    let count = match nodeset::count(pattern) {
        Ok(count) => count,
        Err(err) => {
            ctx.report_line(line, field, err.to_string());
            return None;
        }
    };
    if count > MAX_NODES_PER_ENTRY as u128 {
        let message = format!(
            "the range {pattern:?} has {count} nodes, more than the limit of \
             {MAX_NODES_PER_ENTRY} per [[nodes]] entry"
        );
        ctx.report_line(line, field, message);
        return None;
    }
    let before = *total;
    *total += count;
    if *total > MAX_NODES_TOTAL as u128 {
        // Only the entry that crosses the limit says so; later ones are not expanded at all.
        if before <= MAX_NODES_TOTAL as u128 {
            let message = format!(
                "this entry brings the inventory to {total} nodes, more than the limit of \
                 {MAX_NODES_TOTAL} in total"
            );
            ctx.report_line(line, field, message);
        }
        return None;
    }
    let names = match nodeset::expand(pattern, MAX_NODES_PER_ENTRY) {
        Ok(names) => names,
        Err(err) => {
            ctx.report_line(line, field, err.to_string());
            return None;
        }
    };
    let mut valid = Vec::with_capacity(names.len());
    let mut invalid = Vec::new();
    for name in names {
        match name.parse::<NodeName>() {
            Ok(name) => valid.push(name),
            Err(err) => invalid.push(err),
        }
    }
    if let Some(err) = invalid.first() {
        let more = match invalid.len() {
            1 => String::new(),
            n => format!(" (and {} more invalid names in {pattern:?})", n - 1),
        };
        ctx.report_line(line, field, format!("{err}{more}"));
        return None;
    }
    Some(valid)
}

/// The MAC of each node of the entry, in order, from exactly one of `mac`, `macs` and `mac_file`.
/// `None` when the MACs could not be assigned (already reported); an inner `None` is a node its
/// MAC file does not list.
fn assign_macs(
    ctx: &mut Ctx<'_>,
    t: &Table<'_, '_>,
    pattern: Option<&str>,
    names: Option<&[NodeName]>,
    read_file: &mut ReadFile<'_>,
) -> Option<Vec<Option<(MacAddr, MacLoc)>>> {
    let mut given: Vec<(&str, usize)> = MAC_KEYS
        .iter()
        .filter_map(|&key| t.get(key).map(|v| (key, v.span().start)))
        .collect();
    given.sort_by_key(|&(_, offset)| offset);
    let plain = pattern.map(nodeset::is_plain_name);
    let key = match given[..] {
        [] => {
            let message = match plain {
                Some(true) => "missing `mac`: a single node needs its MAC address",
                Some(false) => {
                    "missing `macs` or `mac_file`: a range needs one MAC address per node"
                }
                None => "missing `mac`, `macs` or `mac_file`",
            };
            ctx.report_line(t.line(ctx), t.field("mac"), message);
            return None;
        }
        [(key, _)] => key,
        [_, (second, _), ..] => {
            let found: Vec<String> = given.iter().map(|(k, _)| format!("`{k}`")).collect();
            let message = format!(
                "give only one of `mac`, `macs` and `mac_file` (found {})",
                found.join(" and ")
            );
            let line = t.value_line(ctx, second).unwrap_or_else(|| t.line(ctx));
            ctx.report_line(line, t.field(second), message);
            return None;
        }
    };
    let line = t.value_line(ctx, key).unwrap_or_else(|| t.line(ctx));
    let pattern_text = pattern.unwrap_or_default();
    match (key, plain) {
        ("mac", Some(false)) => {
            let message = format!(
                "`mac` is for a single node; the range {pattern_text:?} needs `macs` (one per \
                 node, in order) or `mac_file`"
            );
            ctx.report_line(line, t.field(key), message);
            None
        }
        ("macs" | "mac_file", Some(true)) => {
            let message =
                format!("`{key}` is for a range; the single node {pattern_text:?} needs `mac`");
            ctx.report_line(line, t.field(key), message);
            None
        }
        ("mac", _) => {
            let mac = ctx.read(t, "mac", Need::Required, mac)?;
            let loc = MacLoc {
                file: None,
                line,
                anchor: line,
                field: t.field("mac").into(),
            };
            Some(vec![Some((mac, loc))])
        }
        ("macs", _) => {
            let list = ctx.list(t, "macs", Need::Required, mac)?;
            if let Some(names) = names
                && names.len() != list.len()
            {
                let message = format!(
                    "the range {pattern_text:?} has {} nodes but {} MAC addresses are listed",
                    names.len(),
                    list.len()
                );
                ctx.report_line(line, t.field(key), message);
                return None;
            }
            let macs = list
                .into_iter()
                .enumerate()
                .map(|(j, (mac, span))| {
                    let line = ctx.line(&span);
                    let field = format!("{}[{j}]", t.field("macs")).into();
                    Some((
                        mac,
                        MacLoc {
                            file: None,
                            line,
                            anchor: line,
                            field,
                        },
                    ))
                })
                .collect();
            Some(macs)
        }
        _ => {
            let relative = ctx.read(t, "mac_file", Need::Required, doc::non_empty_string)?;
            let file = ctx.file().parent().unwrap_or(Path::new("")).join(relative);
            let mac_file = MacFile {
                file: file.into(),
                anchor: line,
                field: t.field("mac_file").into(),
            };
            mac_file.assign(ctx, pattern_text, names, read_file)
        }
    }
}

/// A `mac_file` of `name mac` lines and where the inventory names it.
struct MacFile {
    file: Rc<Path>,
    anchor: usize,
    field: Rc<str>,
}

impl MacFile {
    /// Reads the file and gives each of `names` its MAC, reporting malformed lines, names outside
    /// the range, names listed twice and names of the range it does not list.
    fn assign(
        &self,
        ctx: &mut Ctx<'_>,
        pattern: &str,
        names: Option<&[NodeName]>,
        read_file: &mut ReadFile<'_>,
    ) -> Option<Vec<Option<(MacAddr, MacLoc)>>> {
        let text = match read_file(&self.file) {
            Ok(text) => text,
            Err(err) => {
                let message = format!("cannot read MAC file {}: {err}", self.file.display());
                ctx.report_line(self.anchor, &*self.field, message);
                return None;
            }
        };
        let count = names.map_or(0, <[NodeName]>::len);
        let index: HashMap<&str, usize> = names
            .into_iter()
            .flatten()
            .enumerate()
            .map(|(k, name)| (name.as_str(), k))
            .collect();
        let mut macs: Vec<Option<(MacAddr, MacLoc)>> = (0..count).map(|_| None).collect();
        let mut listed_at = vec![0usize; count];
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let content = raw.split('#').next().unwrap_or_default().trim();
            if content.is_empty() {
                continue;
            }
            let words: Vec<&str> = content.split_whitespace().collect();
            let [name, mac_text] = words[..] else {
                let message = format!("malformed line {content:?}: expected `NAME MAC`");
                self.report(ctx, line, message);
                continue;
            };
            let mac = match mac_text.parse::<MacAddr>() {
                Ok(mac) => Some(mac),
                Err(err) => {
                    self.report(ctx, line, err.to_string());
                    None
                }
            };
            if names.is_none() {
                // The range itself is bad (reported); the file's syntax was still worth checking.
                continue;
            }
            match index.get(name) {
                None => {
                    let message = format!("node {name} is not in this entry's range {pattern:?}");
                    self.report(ctx, line, message);
                }
                Some(&k) if listed_at[k] != 0 => {
                    let message = format!(
                        "node {name} is listed twice (first at line {})",
                        listed_at[k]
                    );
                    self.report(ctx, line, message);
                }
                Some(&k) => {
                    listed_at[k] = line;
                    macs[k] = mac.map(|mac| (mac, self.loc(line)));
                }
            }
        }
        let names = names?;
        let missing: Vec<String> = names
            .iter()
            .zip(&listed_at)
            .filter(|(_, at)| **at == 0)
            .map(|(name, _)| name.to_string())
            .collect();
        if !missing.is_empty() {
            let message = format!(
                "{} does not list {} node(s) of the range {pattern:?}: {}",
                self.file.display(),
                missing.len(),
                nodeset::fold(&missing)
            );
            ctx.report_line(self.anchor, &*self.field, message);
        }
        Some(macs)
    }

    fn report(&self, ctx: &mut Ctx<'_>, line: usize, message: String) {
        ctx.report_in(&self.file, line, self.anchor, &*self.field, message);
    }

    fn loc(&self, line: usize) -> MacLoc {
        MacLoc {
            file: Some(Rc::clone(&self.file)),
            line,
            anchor: self.anchor,
            field: Rc::clone(&self.field),
        }
    }
}

/// The addresses of `count` nodes numbered up from `start`.
fn addresses(
    ctx: &mut Ctx<'_>,
    t: &Table<'_, '_>,
    start: Ipv4Addr,
    count: usize,
    line: usize,
) -> Option<Vec<Ipv4Addr>> {
    let first = u32::from(start);
    let last = u64::from(first) + (count as u64).saturating_sub(1);
    let Ok(last) = u32::try_from(last) else {
        let message =
            format!("{count} nodes numbered up from {start} would run past 255.255.255.255");
        ctx.report_line(line, t.field("ip"), message);
        return None;
    };
    Some((first..=last).map(Ipv4Addr::from).collect())
}

fn mac(value: &DeValue<'_>) -> Result<MacAddr, String> {
    doc::string(value)?.parse().map_err(|e| format!("{e}"))
}

/// A name used as a directory or in node sets (`@group`): letters, digits, '.', '_' and '-'.
fn identifier(what: &'static str) -> impl Fn(&DeValue<'_>) -> Result<String, String> {
    move |value| {
        let s = doc::string(value)?;
        let ok = !s.is_empty()
            && !s.starts_with('.')
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !ok {
            return Err(format!(
                "invalid {what} {s:?}: expected letters, digits, '.', '_' and '-', not starting \
                 with '.'"
            ));
        }
        Ok(s)
    }
}
