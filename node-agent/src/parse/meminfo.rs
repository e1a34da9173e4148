//! `/proc/meminfo`: the memory numbers a report carries.

use dfleet_proto::domain::MemoryFacts;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MeminfoError {
    #[error("parsing meminfo line {line}: {reason}: {text:?}")]
    Line {
        line: usize,
        reason: &'static str,
        text: String,
    },
    #[error("parsing meminfo: no {0} line")]
    Missing(&'static str),
}

/// MemTotal, MemAvailable and Shmem (which includes tmpfs, hence the overlay's upper layer), in
/// bytes. Every line of the file must be well formed; unknown fields are ignored.
pub fn parse(text: &str) -> Result<MemoryFacts, MeminfoError> {
    let (mut total, mut available, mut shmem) = (None, None, None);
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason| MeminfoError::Line {
            line: i + 1,
            reason,
            text: line.to_string(),
        };
        let (key, rest) = line.split_once(':').ok_or_else(|| bad("no ':'"))?;
        let mut words = rest.split_whitespace();
        let value: u64 = words
            .next()
            .ok_or_else(|| bad("no value"))?
            .parse()
            .map_err(|_| bad("value is not a number"))?;
        // Counts such as HugePages_Total have no unit; sizes are always in kibibytes ("kB").
        let bytes = match words.next() {
            Some("kB") => value
                .checked_mul(1024)
                .ok_or_else(|| bad("value too large"))?,
            Some(_) => return Err(bad("unknown unit")),
            None => value,
        };
        match key {
            "MemTotal" => total = Some(bytes),
            "MemAvailable" => available = Some(bytes),
            "Shmem" => shmem = Some(bytes),
            _ => {}
        }
    }
    Ok(MemoryFacts {
        total_bytes: total.ok_or(MeminfoError::Missing("MemTotal"))?,
        available_bytes: available.ok_or(MeminfoError::Missing("MemAvailable"))?,
        shmem_bytes: shmem.ok_or(MeminfoError::Missing("Shmem"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captured_meminfo() {
        let m = parse(include_str!("../../tests/fixtures/meminfo.txt")).unwrap();
        assert_eq!(
            m,
            MemoryFacts {
                total_bytes: 24_683_656 * 1024,
                available_bytes: 24_204_040 * 1024,
                shmem_bytes: 8_952 * 1024,
            }
        );
    }

    #[test]
    fn missing_and_malformed_fields_are_named() {
        assert_eq!(
            parse("MemTotal: 10 kB\nShmem: 1 kB\n").unwrap_err(),
            MeminfoError::Missing("MemAvailable")
        );
        let err = parse("MemTotal: ten kB\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "parsing meminfo line 1: value is not a number: \"MemTotal: ten kB\""
        );
    }
}
