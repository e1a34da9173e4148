//! `dfleet audit`: the events with a person behind them, from the event log.

use anyhow::{Context, Result, anyhow, bail};
use dfleet_proto::domain::Event;
use dfleet_proto::pb;

use crate::cli::{Cli, event_line, status_err};
use crate::client;

/// Whether an event's actor is a person: a uid on the admin socket or an
/// admin certificate (not a node, not the coordinator itself).
pub fn is_audited(e: &Event) -> bool {
    e.actor.starts_with("uid:") || e.actor.starts_with("admin:")
}

/// Prints the audited events at or after `--since`, as lines or JSON.
pub async fn run(cli: &Cli, since: Option<&str>, json: bool) -> Result<()> {
    let from_ms = match since {
        None => i64::MIN,
        Some(s) => since_ms(s, crate::fleet::now_ms())?,
    };
    let mut c = client::connect(&cli.target()?).await?;
    let mut stream = c
        .events(pb::EventsRequest {
            after_id: 0,
            follow: false,
            last: u32::MAX,
        })
        .await
        .map_err(status_err)?
        .into_inner();
    while let Some(e) = stream.message().await.map_err(status_err)? {
        let e = Event::try_from(e).context("reading an event")?;
        if e.at_unix_ms < from_ms || !is_audited(&e) {
            continue;
        }
        if json {
            println!("{}", serde_json::to_string(&e)?);
        } else {
            println!("{}", event_line(&e));
        }
    }
    Ok(())
}

/// The start of a `--since` window in Unix milliseconds: a duration back
/// from `now_ms` ("90m", "7d"), or a UTC time the way event lines print it
/// ("2026-11-26 06:00:00"; also "2026-11-26", "2026-11-26 06:00",
/// "2026-11-26T06:00:00.250Z").
pub fn since_ms(s: &str, now_ms: i64) -> Result<i64> {
    let s = s.trim();
    if s.starts_with(|c: char| c.is_ascii_digit()) && s.contains('-') {
        return utc_ms(s).map_err(|e| anyhow!("--since {s:?}: {e}"));
    }
    let d = dfleet_provisioner::duration::parse_duration(s).map_err(|e| {
        anyhow!("--since {s:?}: {e} (or give a UTC time such as \"2026-11-26 06:00:00\")")
    })?;
    Ok(now_ms.saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
}

/// `YYYY-MM-DD[( |T)HH:MM[:SS[.fff]]][Z]`, UTC, in Unix milliseconds.
fn utc_ms(s: &str) -> Result<i64> {
    let expected = "expected a UTC time such as \"2026-11-26 06:00:00\"";
    let body = s.strip_suffix('Z').unwrap_or(s);
    let (date, clock) = match body.split_once([' ', 'T']) {
        Some((d, c)) => (d, Some(c)),
        None => (body, None),
    };
    let num = |part: &str, what: &str| -> Result<u32> {
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            bail!("{what} {part:?} is not a number; {expected}");
        }
        part.parse()
            .map_err(|_| anyhow!("{what} {part:?} is out of range"))
    };
    let d: Vec<&str> = date.split('-').collect();
    let [y, mo, day] = d[..] else {
        bail!("{expected}");
    };
    let year = i32::try_from(num(y, "year")?)?;
    let month = u8::try_from(num(mo, "month")?)
        .ok()
        .and_then(|m| time::Month::try_from(m).ok())
        .ok_or_else(|| anyhow!("month {mo:?} is not 1 to 12"))?;
    let date = time::Date::from_calendar_date(year, month, u8::try_from(num(day, "day")?)?)
        .map_err(|e| anyhow!("{date:?}: {e}"))?;
    let (mut h, mut m, mut sec, mut milli) = (0, 0, 0, 0);
    if let Some(clock) = clock {
        let (hms, frac) = match clock.split_once('.') {
            Some((hms, f)) => (hms, Some(f)),
            None => (clock, None),
        };
        let parts: Vec<&str> = hms.split(':').collect();
        match parts[..] {
            [hh, mm] => (h, m) = (num(hh, "hour")?, num(mm, "minute")?),
            [hh, mm, ss] => {
                (h, m, sec) = (num(hh, "hour")?, num(mm, "minute")?, num(ss, "second")?);
            }
            _ => bail!("{clock:?}: {expected}"),
        }
        if let Some(f) = frac {
            if f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()) {
                bail!("fraction {f:?} is not a number; {expected}");
            }
            // Milliseconds: the first three digits, padded.
            let digits: String = f.chars().chain("000".chars()).take(3).collect();
            milli = num(&digits, "fraction")?;
        }
    }
    let clock = time::Time::from_hms_milli(
        u8::try_from(h)?,
        u8::try_from(m)?,
        u8::try_from(sec)?,
        u16::try_from(milli)?,
    )
    .map_err(|e| anyhow!("{:?}: {e}", clock.unwrap_or_default()))?;
    let at = time::PrimitiveDateTime::new(date, clock).assume_utc();
    Ok(i64::try_from(at.unix_timestamp_nanos() / 1_000_000)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_durations_and_utc_times() {
        let now = 1_800_000_000_000;
        assert_eq!(since_ms("1h", now).unwrap(), now - 3_600_000);
        assert_eq!(since_ms("7d", now).unwrap(), now - 7 * 86_400_000);
        assert_eq!(since_ms("1970-01-02", now).unwrap(), 86_400_000);
        assert_eq!(since_ms("1970-01-01 00:01", now).unwrap(), 60_000);
        assert_eq!(since_ms("1970-01-01 00:00:02", now).unwrap(), 2_000);
        assert_eq!(since_ms("1970-01-01T00:00:02.5Z", now).unwrap(), 2_500);
        assert_eq!(
            since_ms("2026-11-26 06:00:00", now).unwrap(),
            1_795_672_800_000
        );
        // Round trip with the printed form.
        assert_eq!(
            since_ms(&crate::cli::format_time(1_796_191_234_000), now).unwrap(),
            1_796_191_234_000
        );
    }

    #[test]
    fn bad_since_names_the_value_and_the_part() {
        for (bad, says) in [
            ("soon", "\"soon\""),
            ("2026-13-01", "month \"13\" is not 1 to 12"),
            ("2026-02-30", "\"2026-02-30\""),
            ("2026-11-26 25:00", "\"25:00\""),
            ("2026-11-26 06:xx", "minute \"xx\" is not a number"),
            ("2026-11", "expected a UTC time"),
            ("2026-11-26 06:00:00.2x", "fraction"),
        ] {
            let e = since_ms(bad, 0).unwrap_err().to_string();
            assert!(e.contains(says) && e.contains("--since"), "{bad}: {e}");
        }
    }
}
