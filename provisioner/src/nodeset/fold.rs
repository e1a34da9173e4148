//! Folding node names into the compact form `expand` reads, in as many dimensions as the names
//! have numbers: `rack1-cn01 rack1-cn02 rack2-cn01 rack2-cn02` folds to `rack[1-2]-cn[01-02]`.
//!
//! Each name is cut into text and digit runs; names with the same texts in the same places form
//! one family. Within a family the last number is folded first (every name that differs only
//! there becomes one entry with a set of values), then entries that differ only in the number
//! before it and carry the same set are merged, and so on leftwards. Every entry printed is the
//! exact product of its dimensions, so expanding the folded text gives back the same names.

use std::collections::BTreeMap;

/// One digit run: its value and its text (the text keeps the zero padding).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Num {
    value: u64,
    text: String,
}

/// A set of numbers in one dimension, sorted and without duplicates.
type Values = Vec<Num>;

/// Folds `names` (duplicates ignored) into a comma-separated set, sorted by family and number.
pub fn fold(names: &[String]) -> String {
    // Family key: the text runs; value: each name's numbers.
    let mut families: BTreeMap<Vec<String>, Vec<Vec<Num>>> = BTreeMap::new();
    let mut plain: Vec<&str> = Vec::new();
    for name in names {
        match cut(name) {
            Some((texts, nums)) if !nums.is_empty() => {
                families.entry(texts).or_default().push(nums)
            }
            _ => plain.push(name),
        }
    }
    plain.sort_unstable();
    plain.dedup();
    let mut out: Vec<String> = plain.into_iter().map(str::to_string).collect();
    for (texts, members) in families {
        for dims in fold_family(members) {
            let mut s = String::new();
            for (i, values) in dims.iter().enumerate() {
                s.push_str(&texts[i]);
                s.push_str(&print_values(values));
            }
            s.push_str(&texts[dims.len()]);
            out.push(s);
        }
    }
    out.join(",")
}

/// Cuts a name into its text runs (one more than its numbers: the first and last may be empty)
/// and its numbers. `None` for names that cannot be folded: a number too long for u64, or
/// characters the set syntax uses.
fn cut(name: &str) -> Option<(Vec<String>, Vec<Num>)> {
    if name.contains(['[', ']', ',', '!', '&', '^', '@']) {
        return None;
    }
    let mut texts = vec![String::new()];
    let mut nums = Vec::new();
    let mut rest = name;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits > 0 {
            let text = &rest[..digits];
            nums.push(Num {
                value: text.parse().ok()?,
                text: text.to_string(),
            });
            texts.push(String::new());
            rest = &rest[digits..];
        } else {
            let c = rest.chars().next()?;
            texts.last_mut()?.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    Some((texts, nums))
}

/// Folds the numbers of one family: returns entries, each a set of values per dimension.
fn fold_family(members: Vec<Vec<Num>>) -> Vec<Vec<Values>> {
    // Start with one entry per distinct name: every dimension a single value.
    let mut entries: Vec<Vec<Values>> = members
        .into_iter()
        .map(|nums| nums.into_iter().map(|n| vec![n]).collect())
        .collect();
    entries.sort();
    entries.dedup();
    let dims = entries.first().map_or(0, Vec::len);
    // Fold the last dimension first, then each one to its left.
    for d in (0..dims).rev() {
        let mut merged: BTreeMap<Vec<Values>, Values> = BTreeMap::new();
        for mut e in entries {
            let values = std::mem::take(&mut e[d]);
            merged.entry(e).or_default().extend(values);
        }
        entries = merged
            .into_iter()
            .map(|(mut e, mut values)| {
                values.sort();
                values.dedup();
                e[d] = values;
                e
            })
            .collect();
    }
    entries.sort_by_cached_key(|e| first_values(e));
    entries
}

fn first_values(e: &[Values]) -> Vec<u64> {
    e.iter().map(|v| v.first().map_or(0, |n| n.value)).collect()
}

/// One dimension's values: the plain number when there is one, else `[a-b,c]`.
fn print_values(values: &[Num]) -> String {
    if let [one] = values {
        return one.text.clone();
    }
    let mut items: Vec<String> = Vec::new();
    let mut i = 0;
    while i < values.len() {
        let first = &values[i];
        let width = first.text.len();
        // A range keeps going while each next number is one more and printing it with the first
        // bound's width gives its text exactly.
        let mut j = i;
        while let Some(next) = values.get(j + 1) {
            if next.value != values[j].value + 1 || format!("{:0width$}", next.value) != next.text {
                break;
            }
            j += 1;
        }
        if j == i {
            items.push(first.text.clone());
        } else {
            items.push(format!("{}-{}", first.text, values[j].text));
        }
        i = j + 1;
    }
    format!("[{}]", items.join(","))
}
