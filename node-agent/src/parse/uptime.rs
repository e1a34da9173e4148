//! `/proc/uptime`: seconds since boot.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("parsing /proc/uptime {0:?}: expected two decimal numbers")]
pub struct UptimeError(pub String);

/// The first field (seconds since boot, with hundredths), as whole seconds.
pub fn parse(text: &str) -> Result<u64, UptimeError> {
    let bad = || UptimeError(text.trim().to_string());
    let first = text.split_whitespace().next().ok_or_else(bad)?;
    let secs: f64 = first.parse().map_err(|_| bad())?;
    if !secs.is_finite() || secs < 0.0 {
        return Err(bad());
    }
    Ok(secs as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_is_whole_seconds() {
        assert_eq!(parse("886.68 1445.22\n").unwrap(), 886);
        assert!(parse("").is_err());
        assert!(parse("-1.0 2.0").is_err());
        assert!(parse("abc 2.0").is_err());
    }
}
