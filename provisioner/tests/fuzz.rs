//! Property-based fuzzing of the parsers that read what administrators type:
//! the inventory (`cluster.toml`) and node sets. No input may panic, and what
//! comes out stays within the limits whatever the input claims (a range of a
//! billion nodes is refused, not expanded). Thousands of cases each.

use std::path::Path;

use dfleet_provisioner::inventory::Inventory;
use dfleet_provisioner::nodeset::{self, NoGroups};
use proptest::prelude::*;

const LIMIT: usize = 10_000;

/// A valid inventory the mutations start from: ranges, a mac list, checks,
/// a boot network.
const VALID: &str = r#"[cluster]
name = "hpc"
state_dir = "/var/lib/dfleet"
listen = ["10.0.0.1:7443"]
report_interval = "10s"

[enrollment]
policy = "inventory"
cert_lifetime = "24h"

[health]
stale_after = "30s"
lost_after = "120s"

[[checks]]
name = "slurmd"
command = ["systemctl", "is-active", "slurmd"]
timeout = "5s"

[[nodes]]
name = "cn[001-004]"
ip = "10.0.1.1"
macs = ["52:54:00:00:00:01", "52:54:00:00:00:02", "52:54:00:00:00:03", "52:54:00:00:00:04"]
image = "compute"
groups = ["compute"]

[[nodes]]
name = "login1"
mac = "52:54:00:00:01:01"
ip = "10.0.0.10"
image = "compute"
"#;

/// Pieces of TOML and of dfleet's own value syntax that a mutation splices in.
fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("[".to_string()),
        Just("]".to_string()),
        Just("\"".to_string()),
        Just("=".to_string()),
        Just("\n".to_string()),
        Just("[[nodes]]\n".to_string()),
        Just("name = \"cn[0-99999999999]\"\n".to_string()),
        Just("name = \"a[1-3]b[1-4000]c[1-4000]\"\n".to_string()),
        Just("ip = \"255.255.255.255\"\n".to_string()),
        Just("mac_file = \"/nonexistent\"\n".to_string()),
        Just("report_interval = \"99999999999999999999h\"\n".to_string()),
        Just("cert_lifetime = \"-1s\"\n".to_string()),
        Just("{".to_string()),
        Just("'''".to_string()),
        Just("\u{0}".to_string()),
        Just("é".to_string()),
        "[a-z0-9\\[\\]\\-,:.\"= \n]{0,12}",
        any::<u64>().prop_map(|n| n.to_string()),
    ]
}

/// An edit at a character position: (position, characters removed, text
/// inserted).
fn edits() -> impl Strategy<Value = Vec<(usize, usize, String)>> {
    prop::collection::vec((0..VALID.len(), 0usize..16, token()), 1..6)
}

fn mutate(edits: &[(usize, usize, String)]) -> String {
    let mut text: Vec<char> = VALID.chars().collect();
    for (at, remove, insert) in edits {
        let at = (*at).min(text.len());
        let end = (at + remove).min(text.len());
        text.splice(at..end, insert.chars());
    }
    text.into_iter().collect()
}

fn parse(text: &str) {
    if let Ok(inv) = Inventory::parse(text, Path::new("cluster.toml")) {
        // Whatever a valid inventory says, its node count is within the
        // inventory's limit (a range claims its size, it is not trusted).
        assert!(
            inv.nodes.len() <= dfleet_provisioner::inventory::MAX_NODES_TOTAL,
            "{} nodes",
            inv.nodes.len()
        );
    }
}

/// Node set expressions: names, ranges, lists, operators, groups.
fn nodeset_expr() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            "[a-z]{1,3}",
            "[0-9]{1,12}",
            Just("[".to_string()),
            Just("]".to_string()),
            Just("-".to_string()),
            Just(",".to_string()),
            Just("!".to_string()),
            Just("&".to_string()),
            Just("^".to_string()),
            Just("@".to_string()),
            Just(":".to_string()),
            Just(" ".to_string()),
            Just("[0-99999999999999999999]".to_string()),
            Just("[1-100][1-100][1-100]".to_string()),
        ],
        0..24,
    )
    .prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(ProptestConfig {
        // Nothing is written into the source tree.
        failure_persistence: None,
        ..ProptestConfig::with_cases(4096)
    })]

    #[test]
    fn any_text_is_an_inventory_or_an_error(text in "\\PC{0,300}") {
        parse(&text);
    }

    #[test]
    fn a_mutated_inventory_is_an_inventory_or_an_error(e in edits()) {
        parse(&mutate(&e));
    }

    #[test]
    fn node_sets_expand_within_their_limit_or_fail(expr in nodeset_expr()) {
        if let Ok(names) = nodeset::expand(&expr, LIMIT) {
            prop_assert!(names.len() <= LIMIT);
        }
        if let Ok(names) = nodeset::resolve(&expr, LIMIT, &NoGroups) {
            prop_assert!(names.len() <= LIMIT);
        }
        let _ = nodeset::count(&expr);
    }

    #[test]
    fn any_text_is_a_node_set_or_an_error(expr in "\\PC{0,64}") {
        let _ = nodeset::expand(&expr, LIMIT);
        let _ = nodeset::resolve(&expr, LIMIT, &NoGroups);
    }
}

#[test]
fn the_unmutated_inventory_parses() {
    let inv = Inventory::parse(VALID, Path::new("cluster.toml")).unwrap();
    assert_eq!(inv.nodes.len(), 5);
}
