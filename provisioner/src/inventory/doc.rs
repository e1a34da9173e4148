//! Walking the span-preserving TOML document: line numbers, typed reads with problems, unknown keys.

use std::net::{Ipv4Addr, SocketAddr};
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::{InventoryError, Problem};
use crate::duration::{format_duration, parse_duration};

/// Maps byte offsets in the inventory text to 1-based line numbers.
pub(super) struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    pub(super) fn new(text: &str) -> LineIndex {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        LineIndex { starts }
    }

    /// The 1-based line holding byte `offset`.
    pub(super) fn line(&self, offset: usize) -> usize {
        self.starts.partition_point(|&start| start <= offset)
    }
}

/// Whether a key must be present.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Need {
    Required,
    Optional,
}

/// The walk's state: which file is read and every problem found so far.
pub(super) struct Ctx<'p> {
    file: &'p Path,
    lines: LineIndex,
    /// Each problem with the inventory line it belongs to, so that problems found in a MAC file
    /// are listed next to the `[[nodes]]` entry that names it.
    problems: Vec<(usize, Problem)>,
}

impl<'p> Ctx<'p> {
    pub(super) fn new(file: &'p Path, lines: LineIndex) -> Ctx<'p> {
        Ctx {
            file,
            lines,
            problems: Vec::new(),
        }
    }

    pub(super) fn file(&self) -> &'p Path {
        self.file
    }

    pub(super) fn line(&self, span: &Range<usize>) -> usize {
        self.lines.line(span.start)
    }

    /// Records a problem in the inventory at `line`.
    pub(super) fn report_line(
        &mut self,
        line: usize,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        let problem = Problem {
            file: self.file.to_path_buf(),
            line,
            field: field.into(),
            message: message.into(),
        };
        self.problems.push((line, problem));
    }

    /// Records a problem in the inventory at the start of `span`.
    pub(super) fn report(
        &mut self,
        span: &Range<usize>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.report_line(self.line(span), field, message);
    }

    /// Records a problem in another file (a MAC file), listed with inventory line `anchor`.
    pub(super) fn report_in(
        &mut self,
        file: &Path,
        line: usize,
        anchor: usize,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        let problem = Problem {
            file: file.to_path_buf(),
            line,
            field: field.into(),
            message: message.into(),
        };
        self.problems.push((anchor, problem));
    }

    pub(super) fn has_problems(&self) -> bool {
        !self.problems.is_empty()
    }

    pub(super) fn into_error(mut self) -> InventoryError {
        // A stable sort keeps problems on one line in the order they were found.
        self.problems.sort_by_key(|(anchor, _)| *anchor);
        InventoryError {
            problems: self.problems.into_iter().map(|(_, p)| p).collect(),
        }
    }

    /// Reads `key` of `table` through `convert`, reporting a missing required key or a bad value.
    /// Returns `None` when the key is absent or its value is bad.
    pub(super) fn read<T>(
        &mut self,
        table: &Table<'_, '_>,
        key: &str,
        need: Need,
        convert: impl FnOnce(&DeValue<'_>) -> Result<T, String>,
    ) -> Option<T> {
        let Some(value) = table.get(key) else {
            if need == Need::Required {
                self.missing(table, key);
            }
            return None;
        };
        match convert(value.get_ref()) {
            Ok(v) => Some(v),
            Err(message) => {
                self.report(&value.span(), table.field(key), message);
                None
            }
        }
    }

    /// Reads array `key` of `table`, converting each element and reporting each bad one with its
    /// own line. Returns `None` when the key is absent or anything in it is bad.
    pub(super) fn list<T>(
        &mut self,
        table: &Table<'_, '_>,
        key: &str,
        need: Need,
        mut convert: impl FnMut(&DeValue<'_>) -> Result<T, String>,
    ) -> Option<Vec<(T, Range<usize>)>> {
        let Some(value) = table.get(key) else {
            if need == Need::Required {
                self.missing(table, key);
            }
            return None;
        };
        let Some(array) = value.get_ref().as_array() else {
            let found = value.get_ref().type_str();
            self.report(
                &value.span(),
                table.field(key),
                format!("expected an array, found {found}"),
            );
            return None;
        };
        let mut out = Vec::with_capacity(array.len());
        let mut ok = true;
        for (j, item) in array.iter().enumerate() {
            match convert(item.get_ref()) {
                Ok(v) => out.push((v, item.span())),
                Err(message) => {
                    ok = false;
                    let field = format!("{}[{j}]", table.field(key));
                    self.report(&item.span(), field, message);
                }
            }
        }
        ok.then_some(out)
    }

    /// Reads array `key` of `table` as a command's argument vector: strings, at least the
    /// program's.
    pub(super) fn argv(
        &mut self,
        table: &Table<'_, '_>,
        key: &str,
        need: Need,
    ) -> Option<Vec<(String, Range<usize>)>> {
        let words = self.list(table, key, need, non_empty_string)?;
        if words.is_empty() {
            let span = table.get(key).map(|v| v.span()).unwrap_or_default();
            self.report(
                &span,
                table.field(key),
                "must name at least the program to run",
            );
            return None;
        }
        Some(words)
    }

    /// The sub-table `key` of `parent`, reporting it if it is missing and required, or not a table.
    pub(super) fn table<'t, 'i>(
        &mut self,
        parent: &Table<'t, 'i>,
        key: &str,
        need: Need,
    ) -> Option<Table<'t, 'i>> {
        let Some(value) = parent.get(key) else {
            if need == Need::Required {
                self.report_line(0, key, format!("missing required table [{key}]"));
            }
            return None;
        };
        match value.get_ref().as_table() {
            Some(table) => Some(Table {
                table,
                path: parent.field(key),
                span: value.span(),
            }),
            None => {
                let found = value.get_ref().type_str();
                self.report(
                    &value.span(),
                    parent.field(key),
                    format!("expected a table [{}], found {found}", parent.field(key)),
                );
                None
            }
        }
    }

    /// The entries of array of tables `key` (`[[key]]`), each named `key[i]`; other values are
    /// reported. Entry `i` of the result is entry `i` of the file, or `None` if it is not a table.
    pub(super) fn tables<'t, 'i>(
        &mut self,
        parent: &Table<'t, 'i>,
        key: &str,
    ) -> Vec<Option<Table<'t, 'i>>> {
        let Some(value) = parent.get(key) else {
            return Vec::new();
        };
        let Some(array) = value.get_ref().as_array() else {
            let found = value.get_ref().type_str();
            self.report(
                &value.span(),
                parent.field(key),
                format!("expected an array of tables [[{key}]], found {found}"),
            );
            return Vec::new();
        };
        let mut out = Vec::with_capacity(array.len());
        for (i, item) in array.iter().enumerate() {
            let path = format!("{}[{i}]", parent.field(key));
            match item.get_ref().as_table() {
                Some(table) => out.push(Some(Table {
                    table,
                    path,
                    span: item.span(),
                })),
                None => {
                    let found = item.get_ref().type_str();
                    self.report(
                        &item.span(),
                        path,
                        format!("expected a table, found {found}"),
                    );
                    out.push(None);
                }
            }
        }
        out
    }

    fn missing(&mut self, table: &Table<'_, '_>, key: &str) {
        let line = self.line(&table.span);
        self.report_line(
            line,
            table.field(key),
            format!("missing required key `{key}`"),
        );
    }
}

/// A table of the document with its dotted path (`cluster`, `nodes[3]`; empty for the root).
pub(super) struct Table<'t, 'i> {
    table: &'t DeTable<'i>,
    path: String,
    span: Range<usize>,
}

impl<'t, 'i> Table<'t, 'i> {
    pub(super) fn root(doc: &'t Spanned<DeTable<'i>>) -> Table<'t, 'i> {
        Table {
            table: doc.get_ref(),
            path: String::new(),
            span: doc.span(),
        }
    }

    /// The dotted field name of `key` in this table, as shown in problems.
    pub(super) fn field(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    pub(super) fn get(&self, key: &str) -> Option<&'t Spanned<DeValue<'i>>> {
        self.table.get(key)
    }

    /// The table's keys with the span of each key, in file order.
    pub(super) fn keys(&self) -> Vec<(&'t str, Range<usize>)> {
        let mut keys: Vec<_> = self
            .table
            .keys()
            .map(|key| (key.get_ref().as_ref(), key.span()))
            .collect();
        keys.sort_by_key(|(_, span)| span.start);
        keys
    }

    /// The line of the table's header (or of its first key for the root).
    pub(super) fn line(&self, ctx: &Ctx<'_>) -> usize {
        ctx.line(&self.span)
    }

    /// The line of `key`'s value, if present.
    pub(super) fn value_line(&self, ctx: &Ctx<'_>, key: &str) -> Option<usize> {
        self.get(key).map(|v| ctx.line(&v.span()))
    }

    /// Reports every key not in `known`, each at its own line.
    pub(super) fn check_keys(&self, ctx: &mut Ctx<'_>, known: &[&str]) {
        let mut unknown: Vec<_> = self
            .table
            .iter()
            .filter(|(key, _)| !known.contains(&key.get_ref().as_ref()))
            .collect();
        unknown.sort_by_key(|(key, _)| key.span().start);
        for (key, _) in unknown {
            let name = key.get_ref().as_ref();
            ctx.report(
                &key.span(),
                self.field(name),
                format!(
                    "unknown key `{name}`; expected one of: {}",
                    known.join(", ")
                ),
            );
        }
    }
}

/// Parses the whole document, or reports every TOML syntax error and returns `None`.
pub(super) fn parse_document<'i>(ctx: &mut Ctx<'_>, text: &'i str) -> Option<Spanned<DeTable<'i>>> {
    let (doc, errors) = DeTable::parse_recoverable(text);
    if errors.is_empty() {
        return Some(doc);
    }
    for error in errors {
        let line = error.span().map_or(0, |span| ctx.line(&span));
        let message = error.message().trim().replace('\n', "; ");
        ctx.report_line(line, "", format!("invalid TOML: {message}"));
    }
    None
}

fn expected(what: &str, value: &DeValue<'_>) -> String {
    format!("expected {what}, found {}", value.type_str())
}

pub(super) fn string(value: &DeValue<'_>) -> Result<String, String> {
    value
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| expected("a string", value))
}

pub(super) fn non_empty_string(value: &DeValue<'_>) -> Result<String, String> {
    let s = string(value)?;
    if s.trim().is_empty() {
        return Err("must not be empty".to_string());
    }
    Ok(s)
}

pub(super) fn absolute_path(value: &DeValue<'_>) -> Result<PathBuf, String> {
    let s = string(value)?;
    let path = PathBuf::from(&s);
    if !path.is_absolute() {
        return Err(format!("expected an absolute path, found {s:?}"));
    }
    Ok(path)
}

pub(super) fn boolean(value: &DeValue<'_>) -> Result<bool, String> {
    value
        .as_bool()
        .ok_or_else(|| expected("true or false", value))
}

pub(super) fn socket_addr(value: &DeValue<'_>) -> Result<SocketAddr, String> {
    let s = string(value)?;
    s.parse().map_err(|_| {
        format!("malformed socket address {s:?}: expected IP:PORT, e.g. \"0.0.0.0:7443\"")
    })
}

pub(super) fn ipv4(value: &DeValue<'_>) -> Result<Ipv4Addr, String> {
    let s = string(value)?;
    s.parse()
        .map_err(|_| format!("malformed IPv4 address {s:?}: expected e.g. \"10.0.0.1\""))
}

/// An integer within `range`.
pub(super) fn integer(
    range: RangeInclusive<u64>,
) -> impl FnOnce(&DeValue<'_>) -> Result<u64, String> {
    move |value| {
        let int = value
            .as_integer()
            .ok_or_else(|| expected("an integer", value))?;
        let out_of_range = || {
            format!(
                "must be between {} and {}, found {int}",
                range.start(),
                range.end()
            )
        };
        let n = u64::from_str_radix(int.as_str(), int.radix()).map_err(|_| out_of_range())?;
        if !range.contains(&n) {
            return Err(out_of_range());
        }
        Ok(n)
    }
}

/// A duration string within `range`.
pub(super) fn duration(
    range: RangeInclusive<Duration>,
) -> impl FnOnce(&DeValue<'_>) -> Result<Duration, String> {
    move |value| {
        let s = value
            .as_str()
            .ok_or_else(|| expected("a duration string such as \"10s\"", value))?;
        let d = parse_duration(s).map_err(|e| e.to_string())?;
        if !range.contains(&d) {
            return Err(if *range.end() == Duration::MAX {
                format!(
                    "must be at least {}, found {s:?}",
                    format_duration(*range.start())
                )
            } else {
                format!(
                    "must be between {} and {}, found {s:?}",
                    format_duration(*range.start()),
                    format_duration(*range.end())
                )
            });
        }
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_one_based_and_count_newlines() {
        let index = LineIndex::new("a = 1\nb = 2\n\nc = 3");
        assert_eq!(index.line(0), 1);
        assert_eq!(index.line(5), 1);
        assert_eq!(index.line(6), 2);
        assert_eq!(index.line(12), 3);
        assert_eq!(index.line(13), 4);
        assert_eq!(index.line(100), 4);
    }

    #[test]
    fn integers_are_checked_against_their_range() {
        let doc = DeTable::parse("a = 5\nb = -1\nc = \"x\"\nd = 0x10").unwrap();
        let get = |k: &str| doc.get_ref().get(k).unwrap().get_ref().clone();
        assert_eq!(integer(1..=10)(&get("a")), Ok(5));
        assert_eq!(
            integer(1..=10)(&get("b")),
            Err("must be between 1 and 10, found -1".to_string())
        );
        assert_eq!(
            integer(1..=10)(&get("c")),
            Err("expected an integer, found string".to_string())
        );
        assert_eq!(integer(1..=100)(&get("d")), Ok(16));
    }
}
