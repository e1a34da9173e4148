//! Compact node sets such as `cn[0001-0128,0200],login1`: expanding them to names and folding names back.
//!
//! Patterns (`expand`, what the inventory reads): bracket ranges with zero padding, several bracket
//! groups per name (`rack[1-2]-cn[01-02]`), comma lists. Sets (`resolve`, what commands take):
//! patterns and `@group` references joined by ClusterShell's operators `,` `!` `&` `^`. Folding
//! (`fold.rs`) turns names back into the shortest form it finds, in several dimensions.

mod fold;

use std::collections::HashSet;

/// Why a node set pattern could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeSetError {
    #[error("empty node set")]
    Empty,
    #[error("malformed node set {pattern:?}: an empty name before or after an operator (, ! & ^)")]
    EmptyElement { pattern: String },
    #[error("malformed node set {pattern:?}: '[' is never closed")]
    Unclosed { pattern: String },
    #[error("malformed node set {pattern:?}: ']' without a matching '['")]
    Unopened { pattern: String },
    #[error("malformed node set {pattern:?}: brackets cannot be nested")]
    Nested { pattern: String },
    #[error("malformed node set {pattern:?}: empty range inside brackets")]
    EmptyRange { pattern: String },
    #[error("malformed node set {pattern:?}: range bound {bound:?} is not a number")]
    NotANumber { pattern: String, bound: String },
    #[error("malformed node set {pattern:?}: reversed range {range:?} (first bound is larger)")]
    Reversed { pattern: String, range: String },
    #[error("node set {pattern:?}: {group}: {message}")]
    Group {
        pattern: String,
        group: String,
        message: String,
    },
    #[error("node set {pattern:?} has {count} names, more than the limit of {limit}")]
    TooLarge {
        pattern: String,
        count: u128,
        limit: usize,
    },
}

/// True when `pattern` names exactly one node as written (no brackets, no list).
pub fn is_plain_name(pattern: &str) -> bool {
    !pattern.contains(['[', ']', ','])
}

/// How many names `pattern` expands to (duplicates included), without expanding it.
pub fn count(pattern: &str) -> Result<u128, NodeSetError> {
    Ok(parse(pattern)?
        .iter()
        .map(Element::count)
        .fold(0u128, u128::saturating_add))
}

/// Expands `pattern` into node names, in order, refusing sets of more than `limit` names.
///
/// `cn[0001-0003]` gives `cn0001 cn0002 cn0003`: each range is padded with zeros to the width of
/// its first bound. Several bracket groups give their cartesian product, the leftmost group
/// varying slowest; a top-level comma separates independent patterns. Duplicates are kept, so
/// callers that care (the inventory) can report them.
pub fn expand(pattern: &str, limit: usize) -> Result<Vec<String>, NodeSetError> {
    let elements = parse(pattern)?;
    let count = elements
        .iter()
        .map(Element::count)
        .fold(0u128, u128::saturating_add);
    if count > limit as u128 {
        return Err(NodeSetError::TooLarge {
            pattern: pattern.to_string(),
            count,
            limit,
        });
    }
    // The count was checked against `limit`, so it fits in usize.
    let mut names = Vec::with_capacity(count as usize);
    for element in &elements {
        element.expand_into(&mut names);
    }
    Ok(names)
}

pub use self::fold::fold;

/// Where `@…` references of a node set are resolved: the inventory's groups (`@compute`) and
/// what the coordinator knows (`@state:ready`, `@gen:compute:8`).
pub trait Groups {
    /// The names of group `name` of `source` (`None`: an inventory group), or why there is no
    /// such group.
    fn group(&self, source: Option<&str>, name: &str) -> Result<Vec<String>, String>;
}

/// No groups: every `@…` reference is an error saying where they can be used.
pub struct NoGroups;

impl Groups for NoGroups {
    fn group(&self, _: Option<&str>, _: &str) -> Result<Vec<String>, String> {
        Err("groups are known to the coordinator: ask it (dfleet nodeset, dfleet exec)".into())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Union,
    Difference,
    Intersection,
    Xor,
}

/// Resolves a node set in ClusterShell's syntax: terms joined by `,` (union), `!` (minus), `&`
/// (intersection) and `^` (in one but not both), applied left to right; a term is a pattern
/// (`cn[001-128]`, `rack[1-2]-cn[01-02]`) or a group (`@compute`, `@state:ready`,
/// `@gen:compute:8`). Each name comes out once, in natural order (`cn2` before `cn10`); the
/// set may be empty (`cn1!cn1`). More than `limit` names at any step is an error.
pub fn resolve(expr: &str, limit: usize, groups: &dyn Groups) -> Result<Vec<String>, NodeSetError> {
    if expr.trim().is_empty() {
        return Err(NodeSetError::Empty);
    }
    let mut set: HashSet<String> = HashSet::new();
    for (op, term) in terms(expr)? {
        let names = term_names(expr, term, limit, groups)?;
        match op {
            Op::Union => set.extend(names),
            Op::Difference => names.iter().for_each(|n| {
                set.remove(n);
            }),
            Op::Intersection => {
                let keep: HashSet<String> = names.into_iter().collect();
                set.retain(|n| keep.contains(n));
            }
            Op::Xor => {
                for n in names {
                    if !set.remove(&n) {
                        set.insert(n);
                    }
                }
            }
        }
        if set.len() > limit {
            return Err(NodeSetError::TooLarge {
                pattern: expr.to_string(),
                count: set.len() as u128,
                limit,
            });
        }
    }
    let mut names: Vec<String> = set.into_iter().collect();
    names.sort_by_cached_key(|n| natural_key(n));
    Ok(names)
}

/// Whether `expr` refers to a group, so only the coordinator can resolve it.
pub fn has_groups(expr: &str) -> bool {
    expr.contains('@')
}

/// A key that sorts digit runs by value: `cn2` before `cn10`, `cn02` beside `cn2`.
pub fn natural_key(name: &str) -> Vec<(String, u64, usize)> {
    let mut key = Vec::new();
    let mut rest = name;
    while !rest.is_empty() {
        let text_len = rest.len() - rest.trim_start_matches(|c: char| !c.is_ascii_digit()).len();
        let (text, tail) = rest.split_at(text_len);
        let digits_len = tail.len() - tail.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let (digits, tail) = tail.split_at(digits_len);
        key.push((
            text.to_string(),
            digits.parse().unwrap_or(u64::MAX),
            digits.len(),
        ));
        rest = tail;
    }
    key
}

/// Splits a set at its operators outside brackets: the first term is a union with nothing.
fn terms(expr: &str) -> Result<Vec<(Op, &str)>, NodeSetError> {
    let owned = || expr.to_string();
    let mut out = Vec::new();
    let mut open = false;
    let mut start = 0;
    let mut op = Op::Union;
    for (i, c) in expr.char_indices() {
        let next = match c {
            '[' if open => return Err(NodeSetError::Nested { pattern: owned() }),
            '[' => {
                open = true;
                continue;
            }
            ']' if !open => return Err(NodeSetError::Unopened { pattern: owned() }),
            ']' => {
                open = false;
                continue;
            }
            ',' if !open => Op::Union,
            '!' if !open => Op::Difference,
            '&' if !open => Op::Intersection,
            '^' if !open => Op::Xor,
            _ => continue,
        };
        out.push((op, expr[start..i].trim()));
        op = next;
        start = i + c.len_utf8();
    }
    if open {
        return Err(NodeSetError::Unclosed { pattern: owned() });
    }
    out.push((op, expr[start..].trim()));
    if out.iter().any(|(_, t)| t.is_empty()) {
        return Err(NodeSetError::EmptyElement { pattern: owned() });
    }
    Ok(out)
}

fn term_names(
    expr: &str,
    term: &str,
    limit: usize,
    groups: &dyn Groups,
) -> Result<Vec<String>, NodeSetError> {
    let Some(group) = term.strip_prefix('@') else {
        return expand(term, limit).map_err(|e| match e {
            // Name the whole set, not just the term.
            NodeSetError::TooLarge { count, limit, .. } => NodeSetError::TooLarge {
                pattern: expr.to_string(),
                count,
                limit,
            },
            other => other,
        });
    };
    let (source, name) = match group.split_once(':') {
        Some((source, name)) => (Some(source), name),
        None => (None, group),
    };
    if name.is_empty() || source.is_some_and(str::is_empty) {
        return Err(NodeSetError::Group {
            pattern: expr.to_string(),
            group: term.to_string(),
            message: "expected @GROUP or @SOURCE:GROUP".to_string(),
        });
    }
    groups
        .group(source, name)
        .map_err(|message| NodeSetError::Group {
            pattern: expr.to_string(),
            group: term.to_string(),
            message,
        })
}

/// One comma-separated element of a pattern: literal text and bracket groups in sequence.
struct Element {
    parts: Vec<Part>,
}

enum Part {
    Literal(String),
    Ranges(Vec<NumRange>),
}

struct NumRange {
    lo: u64,
    hi: u64,
    width: usize,
}

impl Element {
    fn count(&self) -> u128 {
        self.parts
            .iter()
            .map(|part| match part {
                Part::Literal(_) => 1,
                Part::Ranges(ranges) => ranges
                    .iter()
                    .map(|r| u128::from(r.hi - r.lo) + 1)
                    .fold(0u128, u128::saturating_add),
            })
            .fold(1u128, u128::saturating_mul)
    }

    fn expand_into(&self, names: &mut Vec<String>) {
        let mut partial = vec![String::new()];
        for part in &self.parts {
            match part {
                Part::Literal(text) => partial.iter_mut().for_each(|p| p.push_str(text)),
                Part::Ranges(ranges) => {
                    let mut next = Vec::new();
                    for prefix in &partial {
                        for range in ranges {
                            let width = range.width;
                            for n in range.lo..=range.hi {
                                next.push(format!("{prefix}{n:0width$}"));
                            }
                        }
                    }
                    partial = next;
                }
            }
        }
        names.append(&mut partial);
    }
}

fn parse(pattern: &str) -> Result<Vec<Element>, NodeSetError> {
    if pattern.trim().is_empty() {
        return Err(NodeSetError::Empty);
    }
    let mut elements = Vec::new();
    for text in split_top_level(pattern)? {
        let text = text.trim();
        if text.is_empty() {
            return Err(NodeSetError::EmptyElement {
                pattern: pattern.to_string(),
            });
        }
        elements.push(parse_element(pattern, text)?);
    }
    Ok(elements)
}

/// Splits at commas outside brackets, checking that brackets pair up and do not nest.
fn split_top_level(pattern: &str) -> Result<Vec<&str>, NodeSetError> {
    let owned = || pattern.to_string();
    let mut pieces = Vec::new();
    let mut open = false;
    let mut start = 0;
    for (i, c) in pattern.char_indices() {
        match c {
            '[' if open => return Err(NodeSetError::Nested { pattern: owned() }),
            '[' => open = true,
            ']' if !open => return Err(NodeSetError::Unopened { pattern: owned() }),
            ']' => open = false,
            ',' if !open => {
                pieces.push(&pattern[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if open {
        return Err(NodeSetError::Unclosed { pattern: owned() });
    }
    pieces.push(&pattern[start..]);
    Ok(pieces)
}

/// Parses one element whose brackets are already known to be balanced and flat.
fn parse_element(pattern: &str, text: &str) -> Result<Element, NodeSetError> {
    let mut parts = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        if open > 0 {
            parts.push(Part::Literal(rest[..open].to_string()));
        }
        let close = open + rest[open..].find(']').unwrap_or(rest.len() - open);
        parts.push(Part::Ranges(parse_ranges(pattern, &rest[open + 1..close])?));
        rest = rest.get(close + 1..).unwrap_or("");
    }
    if !rest.is_empty() {
        parts.push(Part::Literal(rest.to_string()));
    }
    Ok(Element { parts })
}

/// Parses the inside of one bracket group: `1-4,7,10-12`.
fn parse_ranges(pattern: &str, inside: &str) -> Result<Vec<NumRange>, NodeSetError> {
    let mut ranges = Vec::new();
    for item in inside.split(',') {
        let item = item.trim();
        if item.is_empty() {
            return Err(NodeSetError::EmptyRange {
                pattern: pattern.to_string(),
            });
        }
        let (lo_text, hi_text) = item.split_once('-').unwrap_or((item, item));
        let lo = parse_bound(pattern, lo_text.trim())?;
        let hi = parse_bound(pattern, hi_text.trim())?;
        if lo > hi {
            return Err(NodeSetError::Reversed {
                pattern: pattern.to_string(),
                range: item.to_string(),
            });
        }
        ranges.push(NumRange {
            lo,
            hi,
            width: lo_text.trim().len(),
        });
    }
    Ok(ranges)
}

fn parse_bound(pattern: &str, bound: &str) -> Result<u64, NodeSetError> {
    let not_a_number = || NodeSetError::NotANumber {
        pattern: pattern.to_string(),
        bound: bound.to_string(),
    };
    if bound.is_empty() || !bound.bytes().all(|b| b.is_ascii_digit()) {
        return Err(not_a_number());
    }
    // Bounds longer than u64 are not node numbers anyone means.
    bound.parse().map_err(|_| not_a_number())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn expands_a_padded_range() {
        assert_eq!(
            expand("cn[0001-0004]", 100).unwrap(),
            names(&["cn0001", "cn0002", "cn0003", "cn0004"])
        );
    }

    #[test]
    fn padding_follows_the_first_bound_of_each_range() {
        assert_eq!(
            expand("cn[8-11]", 100).unwrap(),
            names(&["cn8", "cn9", "cn10", "cn11"])
        );
        assert_eq!(
            expand("cn[098-101]", 100).unwrap(),
            names(&["cn098", "cn099", "cn100", "cn101"])
        );
    }

    #[test]
    fn expands_lists_inside_brackets() {
        assert_eq!(
            expand("cn[1-3,7]", 100).unwrap(),
            names(&["cn1", "cn2", "cn3", "cn7"])
        );
        assert_eq!(expand("cn[1-4,7,10-12]", 100).unwrap().len(), 4 + 1 + 3);
    }

    #[test]
    fn expands_several_groups_as_a_product_leftmost_slowest() {
        assert_eq!(
            expand("rack[1-2]-cn[01-02]", 100).unwrap(),
            names(&["rack1-cn01", "rack1-cn02", "rack2-cn01", "rack2-cn02"])
        );
    }

    #[test]
    fn expands_plain_names_and_top_level_lists() {
        assert_eq!(expand("login1", 100).unwrap(), names(&["login1"]));
        assert_eq!(
            expand("login1,cn[01-02]", 100).unwrap(),
            names(&["login1", "cn01", "cn02"])
        );
        assert_eq!(expand("[1-2]x", 100).unwrap(), names(&["1x", "2x"]));
    }

    #[test]
    fn refuses_malformed_patterns() {
        let p = |s: &str| s.to_string();
        assert_eq!(
            expand("cn[3-1]", 100),
            Err(NodeSetError::Reversed {
                pattern: p("cn[3-1]"),
                range: p("3-1")
            })
        );
        assert_eq!(
            expand("cn[", 100),
            Err(NodeSetError::Unclosed { pattern: p("cn[") })
        );
        assert_eq!(
            expand("cn[a-b]", 100),
            Err(NodeSetError::NotANumber {
                pattern: p("cn[a-b]"),
                bound: p("a")
            })
        );
        assert_eq!(
            expand("cn[1-]", 100),
            Err(NodeSetError::NotANumber {
                pattern: p("cn[1-]"),
                bound: p("")
            })
        );
        assert_eq!(expand("", 100), Err(NodeSetError::Empty));
        assert_eq!(
            expand("cn[]", 100),
            Err(NodeSetError::EmptyRange { pattern: p("cn[]") })
        );
        assert_eq!(
            expand("a,,b", 100),
            Err(NodeSetError::EmptyElement { pattern: p("a,,b") })
        );
        assert_eq!(
            expand("cn]1", 100),
            Err(NodeSetError::Unopened { pattern: p("cn]1") })
        );
        assert_eq!(
            expand("cn[1[2]]", 100),
            Err(NodeSetError::Nested {
                pattern: p("cn[1[2]]")
            })
        );
        assert_eq!(
            expand("cn[3-1]", 100).unwrap_err().to_string(),
            "malformed node set \"cn[3-1]\": reversed range \"3-1\" (first bound is larger)"
        );
    }

    #[test]
    fn refuses_sets_over_the_limit_without_expanding_them() {
        assert_eq!(
            expand("cn[1-5]", 4),
            Err(NodeSetError::TooLarge {
                pattern: "cn[1-5]".into(),
                count: 5,
                limit: 4
            })
        );
        assert_eq!(expand("cn[1-4]", 4).unwrap().len(), 4);
        assert_eq!(count("cn[1-4],login1,r[1-2]n[1-3]"), Ok(4 + 1 + 6));
        // Huge products must be refused before any allocation.
        let huge = "a[0-999999999]b[0-999999999]c[0-999999999]";
        assert!(matches!(
            expand(huge, 100_000),
            Err(NodeSetError::TooLarge { count, .. }) if count == 1_000_000_000u128.pow(3)
        ));
    }

    #[test]
    fn folds_numbered_names_into_ranges() {
        let input = names(&["cn0001", "cn0002", "cn0003", "cn0007", "login1"]);
        assert_eq!(fold(&input), "cn[0001-0003,0007],login1");
        assert_eq!(fold(&names(&["cn8", "cn9", "cn10"])), "cn[8-10]");
        assert_eq!(fold(&names(&["cn09", "cn10", "cn11"])), "cn[09-11]");
        assert_eq!(fold(&names(&["login1"])), "login1");
        assert_eq!(
            fold(&names(&["mgmt", "cn2", "cn1", "mgmt"])),
            "mgmt,cn[1-2]"
        );
        assert_eq!(fold(&[]), "");
    }

    #[test]
    fn fold_and_expand_round_trip() {
        let cases: Vec<Vec<String>> = vec![
            expand("cn[0001-0100,0200-0210,0999]", 10_000).unwrap(),
            expand("cn[8-12],login[1-2],mgmt", 100).unwrap(),
            expand("rack[1-3]-cn[01-10]", 100).unwrap(),
            names(&["cn01", "cn1", "cn001", "cn2", "x"]),
        ];
        for names in cases {
            let folded = fold(&names);
            let mut again = expand(&folded, 100_000).unwrap();
            let mut expected = names.clone();
            again.sort();
            expected.sort();
            assert_eq!(again, expected, "folded form {folded:?}");
        }
    }

    #[test]
    fn folds_in_every_dimension() {
        let grid = expand("rack[1-2]-cn[01-02]", 100).unwrap();
        assert_eq!(fold(&grid), "rack[1-2]-cn[01-02]");
        // A hole in one rack keeps that rack apart.
        let holed = names(&[
            "rack1-cn01",
            "rack1-cn02",
            "rack2-cn01",
            "rack3-cn01",
            "rack3-cn02",
        ]);
        assert_eq!(fold(&holed), "rack[1,3]-cn[01-02],rack2-cn01");
        assert_eq!(fold(&names(&["cn1-ib", "cn2-ib", "cn3"])), "cn3,cn[1-2]-ib");
        assert_eq!(fold(&names(&["cn10", "cn2", "cn9"])), "cn[2,9-10]");
    }

    /// Groups for tests: `@compute`, `@gpu`, and `@state:ready`.
    struct TestGroups;

    impl Groups for TestGroups {
        fn group(&self, source: Option<&str>, name: &str) -> Result<Vec<String>, String> {
            match (source, name) {
                (None, "compute") => Ok(expand("cn[1-4]", 10).unwrap()),
                (None, "gpu") => Ok(names(&["cn4", "gpu1"])),
                (Some("state"), "ready") => Ok(names(&["cn1", "cn3", "gpu1"])),
                (Some(s), _) => Err(format!("unknown source {s:?}")),
                (None, _) => Err("no such group in the inventory".into()),
            }
        }
    }

    fn resolved(expr: &str) -> Result<String, String> {
        resolve(expr, 1000, &TestGroups)
            .map(|n| n.join(" "))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn sets_combine_patterns_and_groups_left_to_right() {
        assert_eq!(resolved("cn[10,2,1]").unwrap(), "cn1 cn2 cn10");
        assert_eq!(resolved("@compute!cn2").unwrap(), "cn1 cn3 cn4");
        assert_eq!(resolved("@compute&@state:ready").unwrap(), "cn1 cn3");
        assert_eq!(resolved("@compute^@gpu").unwrap(), "cn1 cn2 cn3 gpu1");
        assert_eq!(resolved("@gpu,@compute!cn[1-3]").unwrap(), "cn4 gpu1");
        assert_eq!(resolved("cn1!cn1").unwrap(), "");
        assert_eq!(
            resolved("rack[1-2]-cn[01-02]").unwrap().split(' ').count(),
            4
        );
    }

    #[test]
    fn bad_sets_say_what_is_wrong() {
        assert_eq!(
            resolved("cn[3-1]").unwrap_err(),
            "malformed node set \"cn[3-1]\": reversed range \"3-1\" (first bound is larger)"
        );
        assert_eq!(
            resolved("@compute,@nosuch").unwrap_err(),
            "node set \"@compute,@nosuch\": @nosuch: no such group in the inventory"
        );
        assert_eq!(
            resolved("@rack:r1").unwrap_err(),
            "node set \"@rack:r1\": @rack:r1: unknown source \"rack\""
        );
        assert!(resolved("cn1,,cn2").unwrap_err().contains("empty name"));
        assert!(resolved("cn1!").unwrap_err().contains("empty name"));
        assert!(resolved("@").unwrap_err().contains("expected @GROUP"));
        assert!(
            resolved("cn[1-2000]")
                .unwrap_err()
                .contains("more than the limit of 1000")
        );
        assert_eq!(
            resolve("@compute", 10, &NoGroups).unwrap_err().to_string(),
            "node set \"@compute\": @compute: groups are known to the coordinator: ask it \
             (dfleet nodeset, dfleet exec)"
        );
    }

    #[test]
    fn plain_names_are_recognised() {
        assert!(is_plain_name("login1"));
        assert!(!is_plain_name("cn[1-2]"));
        assert!(!is_plain_name("a,b"));
        assert!(!is_plain_name("cn]"));
    }
}

/// Property tests: whatever names or patterns, folding then expanding gives the same set.
#[cfg(test)]
mod properties {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    /// A name: a few text and digit runs, the digits sometimes zero-padded.
    fn name() -> impl Strategy<Value = String> {
        let text = prop::sample::select(vec!["cn", "rack", "-", "gpu", "-ib", "x", "n"]);
        let digits = (0u64..40, 0usize..4).prop_map(|(n, w)| format!("{n:0w$}"));
        prop::collection::vec((text, prop::option::of(digits)), 1..4).prop_map(|parts| {
            parts
                .into_iter()
                .map(|(t, d)| format!("{t}{}", d.unwrap_or_default()))
                .collect()
        })
    }

    /// A pattern of one to three bracket dimensions.
    fn pattern() -> impl Strategy<Value = String> {
        let range = (0u64..30, 0u64..5, 1usize..4)
            .prop_map(|(lo, len, w)| format!("{lo:0w$}-{:0w$}", lo + len));
        let dim = prop::collection::vec(range, 1..3).prop_map(|r| format!("[{}]", r.join(",")));
        (
            prop::sample::select(vec!["cn", "rack", "node"]),
            prop::collection::vec(dim, 1..4),
        )
            .prop_map(|(prefix, dims)| format!("{prefix}{}", dims.join("-n")))
    }

    fn set(names: &[String]) -> BTreeSet<String> {
        names.iter().cloned().collect()
    }

    proptest! {
        #[test]
        fn folded_names_expand_to_the_same_names(names in prop::collection::vec(name(), 0..60)) {
            let folded = fold(&names);
            let again = if names.is_empty() {
                prop_assert_eq!(folded.as_str(), "");
                Vec::new()
            } else {
                expand(&folded, 1_000_000).unwrap()
            };
            prop_assert_eq!(set(&again), set(&names), "folded: {}", folded);
            // Each name once: folding never repeats one.
            prop_assert_eq!(again.len(), set(&names).len(), "folded: {}", folded);
        }

        #[test]
        fn fold_of_expand_round_trips(p in pattern()) {
            let names = expand(&p, 1_000_000).unwrap();
            let folded = fold(&names);
            prop_assert_eq!(set(&expand(&folded, 1_000_000).unwrap()), set(&names));
            prop_assert_eq!(set(&resolve(&folded, 1_000_000, &NoGroups).unwrap()), set(&names));
        }
    }
}
