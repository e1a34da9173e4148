//! Parsing and printing the short durations used in `cluster.toml` ("500ms", "10s", "24h", "7d").

use std::time::Duration;

/// Why a duration could not be read from its text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration: expected a number followed by ms, s, m, h or d (e.g. \"10s\")")]
    Empty,
    #[error("malformed duration {0:?}: expected a whole number followed by ms, s, m, h or d")]
    NoNumber(String),
    #[error("malformed duration {0:?}: missing unit, expected one of ms, s, m, h, d")]
    NoUnit(String),
    #[error("malformed duration {text:?}: unknown unit {unit:?}, expected one of ms, s, m, h, d")]
    UnknownUnit { text: String, unit: String },
    #[error("duration {0:?} is too large")]
    TooLarge(String),
}

/// Reads a whole number followed by exactly one unit: `ms`, `s`, `m`, `h` or `d`.
///
/// Fractions and compound forms ("1h30m") are refused on purpose: every value
/// in the inventory has one obvious spelling, which keeps diffs and reviews simple.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(DurationError::Empty);
    }
    let digits_end = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(digits_end);
    if digits.is_empty() {
        return Err(DurationError::NoNumber(text.to_string()));
    }
    if unit.is_empty() {
        return Err(DurationError::NoUnit(text.to_string()));
    }
    let too_large = || DurationError::TooLarge(text.to_string());
    let number: u64 = digits.parse().map_err(|_| too_large())?;
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(DurationError::UnknownUnit {
                text: text.to_string(),
                unit: unit.to_string(),
            });
        }
    };
    let millis = number.checked_mul(millis_per_unit).ok_or_else(too_large)?;
    Ok(Duration::from_millis(millis))
}

/// Prints a duration in the largest unit that represents it exactly, so that
/// `parse_duration(&format_duration(d)) == Ok(d)` for whole milliseconds.
pub fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis == 0 {
        return "0s".to_string();
    }
    for (unit, per) in [
        ("d", 86_400_000u128),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if millis.is_multiple_of(per) {
            return format!("{}{unit}", millis / per);
        }
    }
    format!("{millis}ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(15 * 60)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(24 * 3600)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration(" 0s "), Ok(Duration::ZERO));
    }

    #[test]
    fn refuses_malformed_text_with_the_input_in_the_message() {
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        assert_eq!(
            parse_duration("s"),
            Err(DurationError::NoNumber("s".into()))
        );
        assert_eq!(
            parse_duration("10"),
            Err(DurationError::NoUnit("10".into()))
        );
        assert_eq!(
            parse_duration("1.5h"),
            Err(DurationError::UnknownUnit {
                text: "1.5h".into(),
                unit: ".5h".into()
            })
        );
        assert_eq!(
            parse_duration("10 s").unwrap_err().to_string(),
            "malformed duration \"10 s\": unknown unit \" s\", expected one of ms, s, m, h, d"
        );
        assert_eq!(
            parse_duration("1h30m"),
            Err(DurationError::UnknownUnit {
                text: "1h30m".into(),
                unit: "h30m".into()
            })
        );
        assert_eq!(
            parse_duration("99999999999999999999d"),
            Err(DurationError::TooLarge("99999999999999999999d".into()))
        );
        assert_eq!(
            parse_duration("18446744073709551615d"),
            Err(DurationError::TooLarge("18446744073709551615d".into()))
        );
    }

    #[test]
    fn formats_in_the_largest_exact_unit_and_round_trips() {
        for (d, text) in [
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_secs(3600), "1h"),
            (Duration::from_secs(2 * 86_400), "2d"),
            (Duration::ZERO, "0s"),
        ] {
            assert_eq!(format_duration(d), text);
            assert_eq!(parse_duration(text), Ok(d));
        }
    }
}
