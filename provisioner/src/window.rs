//! Maintenance windows: the weekly hours in which a rollout may start new node reboots
//! (`"Mon-Fri 22:00-06:00 Europe/Berlin"`, `"always"`), their parser, and when they open and close.
//!
//! A window is read in wall-clock time of its zone: it is open at an instant exactly when the
//! clock on the wall there shows one of the window's days and a time from its start up to (not
//! including) its end. A window whose end is not after its start runs past midnight and belongs
//! to the day it starts on: `Fri 22:00-06:00` is open from Friday 22:00 to Saturday 06:00.
//!
//! Daylight saving time follows from reading the wall clock, with no special cases:
//!
//! - In a gap (Europe/Berlin, 2026-03-29: 02:00 becomes 03:00) the clock never shows the skipped
//!   times, so a window `Sun 02:00-04:00` (or `02:30-04:00`) opens at 03:00, the first instant
//!   that exists after its start, and a window lying wholly inside the gap does not open that day.
//! - In a fold (Europe/Berlin, 2026-10-25: 03:00 becomes 02:00 again) the clock shows the repeated
//!   times twice, and both times count: `Sun 02:00-04:00` is open from the first 02:00 until
//!   04:00, three hours. A window ending inside the repeated hour (`01:00-02:30`) closes at the
//!   first 02:30 and opens again at the second 02:00 until the second 02:30; one starting inside
//!   it (`02:30-05:00`) is closed from the jump back to the second 02:30.
//!
//! This was chosen over "each day's window is one interval from the start to the end" because it
//! answers `is_open` with one look at the clock, the answer an operator gets by reading the clock
//! too, and because no choice of instants for a missing or repeated time makes every window one
//! interval that also stays inside its hours.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use jiff::civil::{Date, DateTime, Weekday};
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{SignedDuration, Timestamp};

/// How far ahead [`Window::next_open`] and [`Window::closes_at`] look. Windows repeat every
/// week, so two weeks find the next opening even when daylight saving time erases one.
const HORIZON: SignedDuration = SignedDuration::from_hours(15 * 24);

const MINUTES_PER_DAY: u16 = 24 * 60;

const DAY_NAMES: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

const SYNTAX: &str =
    "expected DAYS HH:MM-HH:MM [ZONE], e.g. \"Sat,Sun 02:00-06:00 Europe/Berlin\", or \"always\"";

/// When a rollout may start new node reboots: always, or some hours on some days of the week.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Window {
    /// `None` is always open.
    weekly: Option<Weekly>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Weekly {
    days: Days,
    /// Minutes after midnight, below 24:00.
    start: u16,
    /// Minutes after midnight, 24:00 included and 00:00 written as 24:00; never equal to `start`.
    /// The window runs past midnight when it is below `start`.
    end: u16,
    zone: TimeZone,
    /// The zone's name when the text gave one; `None` for the default (local) zone, which
    /// `Display` then leaves out too.
    zone_name: Option<String>,
}

/// A set of weekdays, bit `i` for the day `i` days after Monday.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Days(u8);

/// Why a window could not be read from its text, naming the part that is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error("empty window: {SYNTAX}")]
    Empty,
    #[error("{text:?} is not a window: {SYNTAX}")]
    Malformed { text: String },
    #[error(
        "unknown day {day:?} in {text:?}: expected Mon, Tue, Wed, Thu, Fri, Sat or Sun, a range \
         such as Mon-Fri or Fri-Mon, or daily"
    )]
    UnknownDay { day: String, text: String },
    #[error("malformed hours {hours:?} in {text:?}: expected HH:MM-HH:MM, e.g. 22:00-06:00")]
    MalformedHours { hours: String, text: String },
    #[error("{time} is not a time: expected HH:MM from 00:00 to 24:00")]
    NotATime { time: String },
    #[error("{text:?} starts at 24:00, which may only end a window")]
    StartsAtMidnight { text: String },
    #[error("{text:?} starts and ends at {time}: a whole day is 00:00-24:00")]
    StartIsEnd { time: String, text: String },
    #[error("unknown time zone {zone:?}")]
    UnknownZone { zone: String },
    #[error(
        "cannot look up time zone {zone:?}: no time zone database was found (is the tzdata \
         package installed?)"
    )]
    NoZoneDatabase { zone: String },
    #[error("unexpected {word:?} after the time zone in {text:?}")]
    Trailing { word: String, text: String },
    #[error("{}", unknown_name(.name, .known))]
    UnknownName {
        name: String,
        /// The named windows there are, in order.
        known: Vec<String>,
    },
}

fn unknown_name(name: &str, known: &[String]) -> String {
    let known = if known.is_empty() {
        "there are no named windows".to_string()
    } else {
        format!("the named windows are {}", known.join(", "))
    };
    format!(
        "unknown window {name:?}: {known}; or give one such as \"Sat,Sun 02:00-06:00 \
         Europe/Berlin\""
    )
}

/// The window `spec` names in `named`, or else the window `spec` spells out.
///
/// A single word that is neither a name nor `always` is reported as an unknown name, listing the
/// known ones, since that is what it most likely is.
pub fn resolve(spec: &str, named: &BTreeMap<String, Window>) -> Result<Window, WindowError> {
    let spec = spec.trim();
    if let Some(window) = named.get(spec) {
        return Ok(window.clone());
    }
    Window::parse(spec).map_err(|err| match err {
        WindowError::Malformed { .. } if !spec.contains(char::is_whitespace) => {
            WindowError::UnknownName {
                name: spec.to_string(),
                known: named.keys().cloned().collect(),
            }
        }
        other => other,
    })
}

impl Window {
    /// The window that is always open: no restriction.
    pub fn always() -> Window {
        Window { weekly: None }
    }

    /// Reads a window; one that names no zone is in the coordinator's local zone.
    pub fn parse(text: &str) -> Result<Window, WindowError> {
        parse(text, TimeZone::system)
    }

    /// Reads a window; one that names no zone is in `local`.
    pub fn parse_in(text: &str, local: &TimeZone) -> Result<Window, WindowError> {
        parse(text, || local.clone())
    }

    /// Whether this is the window that never closes (`always`).
    pub fn is_always(&self) -> bool {
        self.weekly.is_none()
    }

    /// Whether new reboots may start at `now`.
    pub fn is_open(&self, now: Timestamp) -> bool {
        self.weekly.as_ref().is_none_or(|w| w.is_open(now))
    }

    /// When the window next opens: `now` if it is open. `None` if it does not open within
    /// two weeks, which only a time zone that skips its hours twice in a row can cause.
    pub fn next_open(&self, now: Timestamp) -> Option<Timestamp> {
        let Some(w) = &self.weekly else {
            return Some(now);
        };
        if w.is_open(now) {
            return Some(now);
        }
        w.changes_after(now).into_iter().find(|&t| w.is_open(t))
    }

    /// When the window, open at `now`, closes. `None` if it is closed, always open, or stays
    /// open for the next two weeks (`daily 00:00-24:00`).
    pub fn closes_at(&self, now: Timestamp) -> Option<Timestamp> {
        let w = self.weekly.as_ref()?;
        if !w.is_open(now) {
            return None;
        }
        w.changes_after(now).into_iter().find(|&t| !w.is_open(t))
    }
}

impl Weekly {
    fn is_open(&self, now: Timestamp) -> bool {
        let wall = self.zone.to_datetime(now);
        let minute = minute_of(wall);
        let day = wall.weekday();
        if self.start < self.end {
            self.days.contains(day) && (self.start..self.end).contains(&minute)
        } else {
            (self.days.contains(day) && minute >= self.start)
                || (self.days.contains(day.previous()) && minute < self.end)
        }
    }

    /// Every instant after `from` and within [`HORIZON`] at which `is_open` may change, in
    /// order. It can change only when the wall clock reaches midnight, the start or the end, or
    /// jumps (a time zone transition); `is_open` then holds until the next such instant.
    fn changes_after(&self, from: Timestamp) -> Vec<Timestamp> {
        let until = from.checked_add(HORIZON).unwrap_or(Timestamp::MAX);
        let mut out: Vec<Timestamp> = self
            .zone
            .following(from)
            .map(|transition| transition.timestamp())
            .take_while(|&t| t < until)
            .collect();
        // The clock can go back across midnight in a fold, and forward past the last date in a
        // gap: a day's margin on each side covers both.
        let first = self.zone.to_datetime(from).date();
        let first = first.yesterday().unwrap_or(first);
        let last = self.zone.to_datetime(until).date();
        let last = last.tomorrow().unwrap_or(last);
        let mut date = first;
        while date <= last {
            for minute in [0, self.start, self.end % MINUTES_PER_DAY] {
                out.extend(instants(&self.zone, at(date, minute)));
            }
            match date.tomorrow() {
                Ok(next) => date = next,
                Err(_) => break,
            }
        }
        out.retain(|&t| from < t && t < until);
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// The instants at which the clock in `zone` shows `dt`: none in a gap, two in a fold.
fn instants(zone: &TimeZone, dt: DateTime) -> Vec<Timestamp> {
    let offsets = match zone.to_ambiguous_timestamp(dt).offset() {
        AmbiguousOffset::Unambiguous { offset } => vec![offset],
        // The transition that opens the gap is a change instant of its own.
        AmbiguousOffset::Gap { .. } => vec![],
        AmbiguousOffset::Fold { before, after } => vec![before, after],
    };
    offsets
        .into_iter()
        .filter_map(|offset| offset.to_timestamp(dt).ok())
        .collect()
}

fn at(date: Date, minute: u16) -> DateTime {
    // Both fit: `minute` is below 24 * 60.
    date.at((minute / 60) as i8, (minute % 60) as i8, 0, 0)
}

fn minute_of(wall: DateTime) -> u16 {
    // Hours and minutes of a civil time are never negative.
    u16::from(wall.hour().unsigned_abs()) * 60 + u16::from(wall.minute().unsigned_abs())
}

fn parse(text: &str, local: impl FnOnce() -> TimeZone) -> Result<Window, WindowError> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let malformed = || WindowError::Malformed {
        text: text.to_string(),
    };
    let (days, hours, zone) = match words[..] {
        [] => return Err(WindowError::Empty),
        [word] if word.eq_ignore_ascii_case("always") => return Ok(Window::always()),
        // Hours without days are a shape error, not an unknown day "02:00-06:00".
        [days, ..] if days.contains(':') => return Err(malformed()),
        [days, hours] => (days, hours, None),
        [days, hours, zone] => (days, hours, Some(zone)),
        [_, _, _, word, ..] => {
            return Err(WindowError::Trailing {
                word: word.to_string(),
                text: text.to_string(),
            });
        }
        [_] => return Err(malformed()),
    };
    let days = parse_days(days, text)?;
    let (start, end) = parse_hours(hours, text)?;
    let (zone, zone_name) = match zone {
        None => (local(), None),
        Some(name) => {
            let zone = lookup_zone(name)?;
            let canonical = zone.iana_name().unwrap_or(name).to_string();
            (zone, Some(canonical))
        }
    };
    Ok(Window {
        weekly: Some(Weekly {
            days,
            start,
            end,
            zone,
            zone_name,
        }),
    })
}

fn lookup_zone(name: &str) -> Result<TimeZone, WindowError> {
    TimeZone::get(name).map_err(|_| {
        let zone = name.to_string();
        if jiff::tz::db().is_definitively_empty() {
            WindowError::NoZoneDatabase { zone }
        } else {
            WindowError::UnknownZone { zone }
        }
    })
}

fn parse_days(field: &str, text: &str) -> Result<Days, WindowError> {
    let mut days = Days(0);
    for item in field.split(',') {
        if item.eq_ignore_ascii_case("daily") || item == "*" {
            days.0 = Days::ALL;
            continue;
        }
        let day = |name: &str| {
            weekday(name).ok_or_else(|| WindowError::UnknownDay {
                day: name.to_string(),
                text: text.to_string(),
            })
        };
        match item.split_once('-') {
            None => days.insert(day(item)?),
            Some((from, to)) => {
                let (mut d, to) = (day(from)?, day(to)?);
                days.insert(d);
                while d != to {
                    d = d.next();
                    days.insert(d);
                }
            }
        }
    }
    Ok(days)
}

fn weekday(name: &str) -> Option<Weekday> {
    let i = DAY_NAMES
        .iter()
        .position(|d| d.eq_ignore_ascii_case(name))?;
    Weekday::from_monday_zero_offset(i as i8).ok()
}

fn parse_hours(field: &str, text: &str) -> Result<(u16, u16), WindowError> {
    let malformed = || WindowError::MalformedHours {
        hours: field.to_string(),
        text: text.to_string(),
    };
    let (start, end) = field.split_once('-').ok_or_else(malformed)?;
    if start.is_empty() || end.is_empty() {
        return Err(malformed());
    }
    let (start, end) = (parse_time(start)?, parse_time(end)?);
    if start == MINUTES_PER_DAY {
        return Err(WindowError::StartsAtMidnight {
            text: text.to_string(),
        });
    }
    if start == end {
        return Err(WindowError::StartIsEnd {
            time: format_time(start),
            text: text.to_string(),
        });
    }
    // 00:00 as an end is the midnight after the start, the same as 24:00.
    let end = if end == 0 { MINUTES_PER_DAY } else { end };
    Ok((start, end))
}

/// `H:MM` or `HH:MM` from 00:00 to 24:00, in minutes after midnight.
fn parse_time(s: &str) -> Result<u16, WindowError> {
    let not_a_time = || WindowError::NotATime {
        time: s.to_string(),
    };
    let (h, m) = s.split_once(':').ok_or_else(not_a_time)?;
    let digits = |part: &str, len: std::ops::RangeInclusive<usize>| {
        len.contains(&part.len()) && part.bytes().all(|b| b.is_ascii_digit())
    };
    if !digits(h, 1..=2) || !digits(m, 2..=2) {
        return Err(not_a_time());
    }
    let (h, m): (u16, u16) = (
        h.parse().map_err(|_| not_a_time())?,
        m.parse().map_err(|_| not_a_time())?,
    );
    match (h, m) {
        (0..=23, 0..=59) | (24, 0) => Ok(h * 60 + m),
        _ => Err(not_a_time()),
    }
}

fn format_time(minute: u16) -> String {
    format!("{:02}:{:02}", minute / 60, minute % 60)
}

impl Days {
    const ALL: u8 = 0x7f;

    fn bit(day: Weekday) -> u8 {
        1 << day.to_monday_zero_offset()
    }

    fn insert(&mut self, day: Weekday) {
        self.0 |= Days::bit(day);
    }

    fn contains(self, day: Weekday) -> bool {
        self.0 & Days::bit(day) != 0
    }

    fn has(self, i: usize) -> bool {
        self.0 & (1 << (i % 7)) != 0
    }
}

/// `daily`, or runs of days from Monday on: three or more as a range (a run through Sunday into
/// Monday stays one range, `Fri-Mon`), fewer listed (`Sat,Sun`).
impl fmt::Display for Days {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == Days::ALL {
            return f.write_str("daily");
        }
        let mut parts = Vec::new();
        for first in (0..7).filter(|&i| self.has(i) && !self.has(i + 6)) {
            let len = (first..first + 7).take_while(|&i| self.has(i)).count();
            let last = (first + len - 1) % 7;
            match len {
                1 => parts.push(DAY_NAMES[first].to_string()),
                2 => parts.push(format!("{},{}", DAY_NAMES[first], DAY_NAMES[last])),
                _ => parts.push(format!("{}-{}", DAY_NAMES[first], DAY_NAMES[last])),
            }
        }
        f.write_str(&parts.join(","))
    }
}

/// The canonical text, which reads back as the same window (in the same default zone).
impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(w) = &self.weekly else {
            return f.write_str("always");
        };
        write!(
            f,
            "{} {}-{}",
            w.days,
            format_time(w.start),
            format_time(w.end)
        )?;
        if let Some(zone) = &w.zone_name {
            write!(f, " {zone}")?;
        }
        Ok(())
    }
}

impl FromStr for Window {
    type Err = WindowError;

    fn from_str(s: &str) -> Result<Window, WindowError> {
        Window::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    /// A window in a zone the text names, or in UTC if it names none: never the machine's own.
    fn window(text: &str) -> Window {
        Window::parse_in(text, &TimeZone::UTC).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    fn error(text: &str) -> String {
        match Window::parse_in(text, &TimeZone::UTC) {
            Ok(w) => panic!("{text:?} was accepted as {w}"),
            Err(e) => e.to_string(),
        }
    }

    /// Whether `w` is open at each instant, as `(instant, open)` pairs for readable failures.
    fn openness(w: &Window, instants: &[&str]) -> Vec<(String, bool)> {
        instants
            .iter()
            .map(|t| (t.to_string(), w.is_open(ts(t))))
            .collect()
    }

    fn expect(pairs: &[(&str, bool)]) -> Vec<(String, bool)> {
        pairs.iter().map(|(t, o)| (t.to_string(), *o)).collect()
    }

    #[test]
    fn the_canonical_text_reads_back_as_the_same_window() {
        for (text, canonical) in [
            ("always", "always"),
            ("  ALWAYS ", "always"),
            (
                "Sat,Sun 02:00-06:00 Europe/Berlin",
                "Sat,Sun 02:00-06:00 Europe/Berlin",
            ),
            (
                "sat,SUN 2:00-06:00 europe/berlin",
                "Sat,Sun 02:00-06:00 Europe/Berlin",
            ),
            ("Mon-Fri 22:00-06:00 UTC", "Mon-Fri 22:00-06:00 UTC"),
            ("Mon,Tue,Wed,Thu,Fri 22:00-06:00", "Mon-Fri 22:00-06:00"),
            ("Fri-Mon 01:00-03:00", "Fri-Mon 01:00-03:00"),
            ("Sun-Mon 01:00-03:00", "Sun,Mon 01:00-03:00"),
            ("Mon,Wed,Sat-Mon 01:00-03:00", "Wed,Sat-Mon 01:00-03:00"),
            ("Tue,Tue 01:00-03:00", "Tue 01:00-03:00"),
            ("Wed-Wed 01:00-03:00", "Wed 01:00-03:00"),
            ("daily 01:00-03:00", "daily 01:00-03:00"),
            ("* 01:00-03:00", "daily 01:00-03:00"),
            ("Mon-Sun 01:00-03:00", "daily 01:00-03:00"),
            ("Tue-Mon 01:00-03:00", "daily 01:00-03:00"),
            ("Mon,daily 01:00-03:00", "daily 01:00-03:00"),
            ("Sat,Sun 00:00-24:00", "Sat,Sun 00:00-24:00"),
            ("Sat 22:00-00:00", "Sat 22:00-24:00"),
            (
                "Sat 00:00-00:01 America/New_York",
                "Sat 00:00-00:01 America/New_York",
            ),
        ] {
            let w = window(text);
            assert_eq!(w.to_string(), canonical, "{text:?}");
            assert_eq!(window(canonical), w, "{canonical:?}");
        }
    }

    #[test]
    fn a_window_without_a_zone_is_in_the_default_zone() {
        let berlin = TimeZone::get("Europe/Berlin").unwrap();
        let w = Window::parse_in("daily 01:00-03:00", &berlin).unwrap();
        assert_eq!(
            w,
            window("daily 01:00-03:00 Europe/Berlin").weekly_zone_unnamed()
        );
        // 01:30 in Berlin in winter, 00:30 UTC.
        assert!(w.is_open(ts("2026-01-10T00:30:00Z")));
        assert!(!window("daily 01:00-03:00").is_open(ts("2026-01-10T00:30:00Z")));
    }

    impl Window {
        /// The same window as if its zone had been the default one.
        fn weekly_zone_unnamed(mut self) -> Window {
            if let Some(w) = &mut self.weekly {
                w.zone_name = None;
            }
            self
        }
    }

    #[test]
    fn always_is_always_open_and_never_closes() {
        let w = Window::always();
        assert_eq!(w, Window::default());
        assert!(w.is_always() && !window("daily 00:00-24:00").is_always());
        let now = ts("2026-05-01T12:00:00Z");
        assert!(w.is_open(now));
        assert_eq!(w.next_open(now), Some(now));
        assert_eq!(w.closes_at(now), None);
    }

    #[test]
    fn a_window_past_midnight_belongs_to_the_day_it_starts_on() {
        // 2026-05-01 is a Friday.
        let w = window("Mon-Fri 22:00-06:00 UTC");
        assert_eq!(
            openness(
                &w,
                &[
                    "2026-05-01T21:59:59Z",
                    "2026-05-01T22:00:00Z",
                    "2026-05-02T00:00:00Z",
                    "2026-05-02T05:59:59Z",
                    "2026-05-02T06:00:00Z",
                    "2026-05-02T23:00:00Z",
                    "2026-05-03T23:00:00Z",
                    "2026-05-04T05:00:00Z",
                    "2026-05-04T22:00:00Z",
                    "2026-05-05T05:59:00Z",
                ]
            ),
            expect(&[
                ("2026-05-01T21:59:59Z", false),
                ("2026-05-01T22:00:00Z", true),
                ("2026-05-02T00:00:00Z", true),
                ("2026-05-02T05:59:59Z", true),
                ("2026-05-02T06:00:00Z", false),
                // Saturday and Sunday nights are not in Mon-Fri.
                ("2026-05-02T23:00:00Z", false),
                ("2026-05-03T23:00:00Z", false),
                ("2026-05-04T05:00:00Z", false),
                ("2026-05-04T22:00:00Z", true),
                ("2026-05-05T05:59:00Z", true),
            ])
        );
        assert_eq!(
            w.closes_at(ts("2026-05-01T23:00:00Z")),
            Some(ts("2026-05-02T06:00:00Z"))
        );
        assert_eq!(
            w.next_open(ts("2026-05-02T06:00:00Z")),
            Some(ts("2026-05-04T22:00:00Z"))
        );
    }

    #[test]
    fn sunday_night_runs_into_monday() {
        // 2026-05-03 is a Sunday.
        let w = window("Sun 22:00-02:00 UTC");
        assert!(w.is_open(ts("2026-05-03T23:30:00Z")));
        assert!(w.is_open(ts("2026-05-04T01:59:59Z")));
        assert!(!w.is_open(ts("2026-05-04T02:00:00Z")));
        assert!(!w.is_open(ts("2026-05-04T22:30:00Z")));
        assert_eq!(
            w.next_open(ts("2026-05-04T02:00:00Z")),
            Some(ts("2026-05-10T22:00:00Z"))
        );
        assert_eq!(
            w.closes_at(ts("2026-05-03T22:00:00Z")),
            Some(ts("2026-05-04T02:00:00Z"))
        );
    }

    #[test]
    fn a_day_range_may_wrap_through_sunday() {
        let w = window("Fri-Mon 01:00-03:00 UTC");
        // Thursday 2026-04-30 to Wednesday 2026-05-06.
        let open: Vec<bool> = (30..=36)
            .map(|d| {
                let date = jiff::civil::date(2026, 4, 30)
                    .checked_add(jiff::Span::new().days(d - 30))
                    .unwrap();
                w.is_open(TimeZone::UTC.to_timestamp(date.at(2, 0, 0, 0)).unwrap())
            })
            .collect();
        assert_eq!(open, [false, true, true, true, true, false, false]);
    }

    #[test]
    fn a_whole_day_ends_at_24_00() {
        let w = window("Sat,Sun 00:00-24:00 UTC");
        assert!(!w.is_open(ts("2026-05-01T23:59:59Z")));
        assert!(w.is_open(ts("2026-05-02T00:00:00Z")));
        assert!(w.is_open(ts("2026-05-03T23:59:59Z")));
        assert!(!w.is_open(ts("2026-05-04T00:00:00Z")));
        assert_eq!(
            w.next_open(ts("2026-04-29T10:00:00Z")),
            Some(ts("2026-05-02T00:00:00Z"))
        );
        // One window over both days: it does not close at Saturday midnight.
        assert_eq!(
            w.closes_at(ts("2026-05-02T10:00:00Z")),
            Some(ts("2026-05-04T00:00:00Z"))
        );
        let daily = window("daily 00:00-24:00 UTC");
        assert_eq!(daily.closes_at(ts("2026-05-02T10:00:00Z")), None);
        let evening = window("Sat 22:00-24:00 UTC");
        assert_eq!(
            evening.closes_at(ts("2026-05-02T23:00:00Z")),
            Some(ts("2026-05-03T00:00:00Z"))
        );
    }

    #[test]
    fn a_closed_window_has_no_closing_time_and_an_open_one_opens_now() {
        let w = window("Sat,Sun 02:00-06:00 UTC");
        let closed = ts("2026-05-02T07:00:00Z");
        assert_eq!(w.closes_at(closed), None);
        assert_eq!(w.next_open(closed), Some(ts("2026-05-03T02:00:00Z")));
        let open = ts("2026-05-03T03:00:00Z");
        assert_eq!(w.next_open(open), Some(open));
        assert_eq!(w.closes_at(open), Some(ts("2026-05-03T06:00:00Z")));
    }

    #[test]
    fn a_zone_shifts_the_window_by_its_offset() {
        // 02:00-06:00 in Berlin in May (UTC+2) is 00:00-04:00 UTC.
        let w = window("Sat,Sun 02:00-06:00 Europe/Berlin");
        assert!(!w.is_open(ts("2026-05-01T23:59:59Z")));
        assert!(w.is_open(ts("2026-05-02T00:00:00Z")));
        assert_eq!(
            w.closes_at(ts("2026-05-02T00:00:00Z")),
            Some(ts("2026-05-02T04:00:00Z"))
        );
    }

    // Europe/Berlin, 2026-03-29: 02:00 CET (01:00 UTC) becomes 03:00 CEST.

    #[test]
    fn in_a_spring_gap_a_window_opens_at_the_first_instant_after_its_start() {
        let before = ts("2026-03-28T12:00:00Z");
        for text in [
            "Sun 02:00-04:00 Europe/Berlin",
            "Sun 02:30-04:00 Europe/Berlin",
        ] {
            let w = window(text);
            assert!(!w.is_open(ts("2026-03-29T00:59:59Z")), "{text}");
            assert!(w.is_open(ts("2026-03-29T01:00:00Z")), "{text}");
            assert_eq!(
                w.next_open(before),
                Some(ts("2026-03-29T01:00:00Z")),
                "{text}"
            );
            // 04:00 CEST.
            assert_eq!(
                w.closes_at(ts("2026-03-29T01:00:00Z")),
                Some(ts("2026-03-29T02:00:00Z")),
                "{text}"
            );
        }
        // Ending in the gap: closed when the clock jumps past the end.
        let w = window("Sun 01:00-02:30 Europe/Berlin");
        assert_eq!(w.next_open(before), Some(ts("2026-03-29T00:00:00Z")));
        assert_eq!(
            w.closes_at(ts("2026-03-29T00:00:00Z")),
            Some(ts("2026-03-29T01:00:00Z"))
        );
        // Wholly inside the gap: not that Sunday, but the next, 02:00 CEST.
        let w = window("Sun 02:00-03:00 Europe/Berlin");
        assert_eq!(w.next_open(before), Some(ts("2026-04-05T00:00:00Z")));
    }

    // Europe/Berlin, 2026-10-25: 03:00 CEST (01:00 UTC) becomes 02:00 CET.

    #[test]
    fn in_an_autumn_fold_a_window_opens_at_the_first_start_and_counts_the_repeat() {
        let w = window("Sun 02:00-04:00 Europe/Berlin");
        let before = ts("2026-10-24T12:00:00Z");
        // The first 02:00 is 02:00 CEST.
        assert_eq!(w.next_open(before), Some(ts("2026-10-25T00:00:00Z")));
        assert!(w.is_open(ts("2026-10-25T01:30:00Z")));
        // 04:00 CET: three hours.
        assert_eq!(
            w.closes_at(ts("2026-10-25T00:00:00Z")),
            Some(ts("2026-10-25T03:00:00Z"))
        );

        // Ending in the repeated hour: the first pass closes, the repeat opens again.
        let w = window("Sun 01:00-02:30 Europe/Berlin");
        assert_eq!(w.next_open(before), Some(ts("2026-10-24T23:00:00Z")));
        assert_eq!(
            w.closes_at(ts("2026-10-24T23:00:00Z")),
            Some(ts("2026-10-25T00:30:00Z"))
        );
        assert_eq!(
            w.next_open(ts("2026-10-25T00:30:00Z")),
            Some(ts("2026-10-25T01:00:00Z"))
        );
        assert_eq!(
            w.closes_at(ts("2026-10-25T01:00:00Z")),
            Some(ts("2026-10-25T01:30:00Z"))
        );
    }

    // America/New_York: 2026-03-08 02:00 EST (07:00 UTC) becomes 03:00 EDT; 2026-11-01 02:00 EDT
    // (06:00 UTC) becomes 01:00 EST.

    #[test]
    fn new_york_gap_and_fold() {
        let w = window("daily 02:30-03:30 America/New_York");
        assert_eq!(
            w.next_open(ts("2026-03-08T05:00:00Z")),
            Some(ts("2026-03-08T07:00:00Z"))
        );
        assert_eq!(
            w.closes_at(ts("2026-03-08T07:00:00Z")),
            Some(ts("2026-03-08T07:30:00Z"))
        );

        // Starting inside the repeated hour: open from 01:30 EDT, closed when the clock goes
        // back to 01:00, open again from 01:30 EST until 03:00 EST.
        let w = window("Sun 01:30-03:00 America/New_York");
        let before = ts("2026-10-31T12:00:00Z");
        assert_eq!(w.next_open(before), Some(ts("2026-11-01T05:30:00Z")));
        assert_eq!(
            w.closes_at(ts("2026-11-01T05:30:00Z")),
            Some(ts("2026-11-01T06:00:00Z"))
        );
        assert_eq!(
            w.next_open(ts("2026-11-01T06:00:00Z")),
            Some(ts("2026-11-01T06:30:00Z"))
        );
        assert_eq!(
            w.closes_at(ts("2026-11-01T06:30:00Z")),
            Some(ts("2026-11-01T08:00:00Z"))
        );
    }

    /// Checks `next_open` and `closes_at` against `is_open` read minute by minute over `days`
    /// from `from`: every change instant of these zones and windows falls on a whole minute. The
    /// two are asked every 7th minute, which keeps the test fast in debug builds and still lands
    /// on, just before and just after changes at every minute of the hour.
    fn agrees_minute_by_minute(text: &str, from: &str, days: usize) {
        let w = window(text);
        let start = ts(from);
        let at = |i: usize| {
            let minutes = i64::try_from(i).unwrap();
            start
                .checked_add(SignedDuration::from_mins(minutes))
                .unwrap()
        };
        let open: Vec<bool> = (0..days * 24 * 60).map(|i| w.is_open(at(i))).collect();
        let (mut next_open, mut next_close) = (None, None);
        for (i, &is_open) in open.iter().enumerate().rev() {
            if is_open {
                next_open = Some(at(i));
            } else {
                next_close = Some(at(i));
            }
            if i % 7 != 0 {
                continue;
            }
            let t = at(i);
            if next_open.is_some() {
                assert_eq!(w.next_open(t), next_open, "{text}: next_open at {t}");
            }
            if !is_open {
                assert_eq!(w.closes_at(t), None, "{text}: closes_at at {t}");
            } else if next_close.is_some() {
                assert_eq!(w.closes_at(t), next_close, "{text}: closes_at at {t}");
            }
        }
    }

    #[test]
    fn next_open_and_closes_at_agree_with_is_open() {
        for text in [
            "Sun 02:00-04:00 Europe/Berlin",
            "Sat,Sun 01:00-02:30 Europe/Berlin",
            "Sat-Mon 23:30-02:15 Europe/Berlin",
            "daily 02:30-01:30 Europe/Berlin",
        ] {
            agrees_minute_by_minute(text, "2026-03-27T00:00:00Z", 4);
            agrees_minute_by_minute(text, "2026-10-23T00:00:00Z", 4);
        }
        for text in [
            "Sun 01:30-03:00 America/New_York",
            "Fri-Mon 22:00-01:30 America/New_York",
        ] {
            agrees_minute_by_minute(text, "2026-03-06T00:00:00Z", 4);
            agrees_minute_by_minute(text, "2026-10-30T00:00:00Z", 4);
        }
    }

    #[test]
    fn every_error_names_the_part_that_is_wrong() {
        for (text, message) in [
            (
                "",
                "empty window: expected DAYS HH:MM-HH:MM [ZONE], e.g. \"Sat,Sun 02:00-06:00 \
                 Europe/Berlin\", or \"always\"",
            ),
            (
                "nightly",
                "\"nightly\" is not a window: expected DAYS HH:MM-HH:MM [ZONE], e.g. \"Sat,Sun \
                 02:00-06:00 Europe/Berlin\", or \"always\"",
            ),
            (
                "02:00-06:00 UTC",
                "\"02:00-06:00 UTC\" is not a window: expected DAYS HH:MM-HH:MM [ZONE], e.g. \
                 \"Sat,Sun 02:00-06:00 Europe/Berlin\", or \"always\"",
            ),
            (
                "Sta,Sun 02:00-06:00",
                "unknown day \"Sta\" in \"Sta,Sun 02:00-06:00\": expected Mon, Tue, Wed, Thu, \
                 Fri, Sat or Sun, a range such as Mon-Fri or Fri-Mon, or daily",
            ),
            (
                "Mon-Fxi 02:00-06:00",
                "unknown day \"Fxi\" in \"Mon-Fxi 02:00-06:00\": expected Mon, Tue, Wed, Thu, \
                 Fri, Sat or Sun, a range such as Mon-Fri or Fri-Mon, or daily",
            ),
            (
                "Mon,,Tue 02:00-06:00",
                "unknown day \"\" in \"Mon,,Tue 02:00-06:00\": expected Mon, Tue, Wed, Thu, \
                 Fri, Sat or Sun, a range such as Mon-Fri or Fri-Mon, or daily",
            ),
            (
                "Monday 02:00-06:00",
                "unknown day \"Monday\" in \"Monday 02:00-06:00\": expected Mon, Tue, Wed, Thu, \
                 Fri, Sat or Sun, a range such as Mon-Fri or Fri-Mon, or daily",
            ),
            (
                "Mon 02:00",
                "malformed hours \"02:00\" in \"Mon 02:00\": expected HH:MM-HH:MM, e.g. \
                 22:00-06:00",
            ),
            (
                "Mon 02:00-",
                "malformed hours \"02:00-\" in \"Mon 02:00-\": expected HH:MM-HH:MM, e.g. \
                 22:00-06:00",
            ),
            (
                "Mon 22:75-06:00",
                "22:75 is not a time: expected HH:MM from 00:00 to 24:00",
            ),
            (
                "Mon 22:00-25:00",
                "25:00 is not a time: expected HH:MM from 00:00 to 24:00",
            ),
            (
                "Mon 22:00-24:01",
                "24:01 is not a time: expected HH:MM from 00:00 to 24:00",
            ),
            (
                "Mon 2200-0600",
                "2200 is not a time: expected HH:MM from 00:00 to 24:00",
            ),
            (
                "Mon 2:0-06:00",
                "2:0 is not a time: expected HH:MM from 00:00 to 24:00",
            ),
            (
                "Mon +2:00-06:00",
                "+2:00 is not a time: expected HH:MM from 00:00 to 24:00",
            ),
            (
                "Mon 24:00-06:00",
                "\"Mon 24:00-06:00\" starts at 24:00, which may only end a window",
            ),
            (
                "Mon 02:00-02:00",
                "\"Mon 02:00-02:00\" starts and ends at 02:00: a whole day is 00:00-24:00",
            ),
            (
                "Mon 00:00-00:00",
                "\"Mon 00:00-00:00\" starts and ends at 00:00: a whole day is 00:00-24:00",
            ),
            (
                "Mon 02:00-06:00 Europe/Berln",
                "unknown time zone \"Europe/Berln\"",
            ),
            (
                "Mon 02:00-06:00 Europe/Berlin extra",
                "unexpected \"extra\" after the time zone in \"Mon 02:00-06:00 Europe/Berlin \
                 extra\"",
            ),
        ] {
            assert_eq!(error(text), message, "{text:?}");
        }
    }

    #[test]
    fn resolve_prefers_a_name_then_reads_the_text() {
        let named: BTreeMap<String, Window> = [
            (
                "night".to_string(),
                window("Mon-Fri 22:00-06:00 Europe/Berlin"),
            ),
            ("weekend".to_string(), window("Sat,Sun 00:00-24:00 UTC")),
        ]
        .into();
        assert_eq!(resolve("night", &named), Ok(named["night"].clone()));
        assert_eq!(resolve(" weekend ", &named), Ok(named["weekend"].clone()));
        assert_eq!(resolve("always", &named), Ok(Window::always()));
        assert_eq!(
            resolve("Sat,Sun 02:00-06:00 Europe/Berlin", &named),
            Ok(window("Sat,Sun 02:00-06:00 Europe/Berlin"))
        );
        assert_eq!(
            resolve("nigth", &named).unwrap_err().to_string(),
            "unknown window \"nigth\": the named windows are night, weekend; or give one such \
             as \"Sat,Sun 02:00-06:00 Europe/Berlin\""
        );
        assert_eq!(
            resolve("night", &BTreeMap::new()).unwrap_err().to_string(),
            "unknown window \"night\": there are no named windows; or give one such as \
             \"Sat,Sun 02:00-06:00 Europe/Berlin\""
        );
        // Text that is more than a word is a window with a mistake in it, not a name.
        assert_eq!(
            resolve("Sta 02:00-06:00 UTC", &named),
            Err(WindowError::UnknownDay {
                day: "Sta".into(),
                text: "Sta 02:00-06:00 UTC".into()
            })
        );
    }
}
