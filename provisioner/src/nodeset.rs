//! Compact node sets such as `cn[0001-0128,0200],login1`: expanding them to names and folding names back.
//!
//! This is the minimal subset the inventory needs (bracket ranges with zero padding, several bracket
//! groups per name, comma lists). `@group` references and exclusions come later with the exec fan-out.

use std::collections::{HashMap, HashSet};

/// Why a node set pattern could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeSetError {
    #[error("empty node set")]
    Empty,
    #[error("malformed node set {pattern:?}: empty name in the comma-separated list")]
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

/// Folds names back into the compact form `expand` reads, for display.
///
/// Names ending in digits are grouped by the text before those digits; consecutive numbers
/// become ranges (`cn[0001-0003,0007]`). Other names are listed as they are. Groups appear in
/// the order of their first name; numbers within a group are sorted and deduplicated, so
/// `expand(&fold(names))` gives the same set of names.
pub fn fold(names: &[String]) -> String {
    enum Slot<'a> {
        Plain(&'a str),
        Numbered(&'a str),
    }
    let mut slots: Vec<Slot<'_>> = Vec::new();
    let mut numbered: HashMap<&str, Vec<(u64, &str)>> = HashMap::new();
    let mut plain_seen: HashSet<&str> = HashSet::new();
    for name in names {
        let digits_start = name.trim_end_matches(|c: char| c.is_ascii_digit()).len();
        let (prefix, digits) = name.split_at(digits_start);
        match digits.parse::<u64>() {
            Ok(number) if !prefix.contains(['[', ']', ',']) => {
                let entry = numbered.entry(prefix).or_insert_with(|| {
                    slots.push(Slot::Numbered(prefix));
                    Vec::new()
                });
                entry.push((number, digits));
            }
            _ => {
                if plain_seen.insert(name) {
                    slots.push(Slot::Plain(name));
                }
            }
        }
    }
    let mut out = Vec::with_capacity(slots.len());
    for slot in slots {
        match slot {
            Slot::Plain(name) => out.push(name.to_string()),
            Slot::Numbered(prefix) => {
                let mut numbers = numbered.remove(prefix).unwrap_or_default();
                numbers.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.len().cmp(&b.1.len())));
                numbers.dedup();
                out.push(fold_group(prefix, &numbers));
            }
        }
    }
    out.join(",")
}

/// Folds one prefix's sorted, deduplicated numbers (with their text) into `prefix[a-b,c]`.
fn fold_group(prefix: &str, numbers: &[(u64, &str)]) -> String {
    if let [(_, digits)] = numbers {
        return format!("{prefix}{digits}");
    }
    let mut items: Vec<String> = Vec::new();
    let mut i = 0;
    while i < numbers.len() {
        let first_text = numbers[i].1;
        let width = first_text.len();
        // A range keeps going while each next number is one more and expanding with the first
        // bound's width would print it exactly as written.
        let mut j = i;
        while let Some(&(next, next_text)) = numbers.get(j + 1) {
            if next != numbers[j].0 + 1 || format!("{next:0width$}") != next_text {
                break;
            }
            j += 1;
        }
        if j == i {
            items.push(first_text.to_string());
        } else {
            items.push(format!("{first_text}-{}", numbers[j].1));
        }
        i = j + 1;
    }
    format!("{prefix}[{}]", items.join(","))
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
    fn plain_names_are_recognised() {
        assert!(is_plain_name("login1"));
        assert!(!is_plain_name("cn[1-2]"));
        assert!(!is_plain_name("a,b"));
        assert!(!is_plain_name("cn]"));
    }
}
