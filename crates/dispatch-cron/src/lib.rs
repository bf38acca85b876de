//! Cron schedules for Dispatch: when a schedule fires, in its own time zone
//! and across daylight-saving changes, and which fires to run after a pause.
//!
//! - [`CronSchedule`]: a parsed expression (5 fields, or 6 with seconds
//!   first) in an IANA time zone. [`CronSchedule::next_after`] answers the
//!   next fire strictly after an instant.
//! - [`Misfire`] and [`MisfirePolicy`]: what to do with fires that were not
//!   run on time (`skip`, `fire_once`, `catch_up` with a limit), and
//!   [`CronSchedule::due_fires`], which applies it.
//! - [`CronError`]: what is wrong with an expression or a time zone, naming
//!   the field (`cron` or `timezone`) for the API's problem+json.
//!
//! Like `dispatch-core`, this crate is pure: no clock, no I/O. Every instant
//! is epoch milliseconds ([`Millis`]), passed in by the caller, so a test
//! drives a year of schedules in milliseconds with a simulated clock.
//!
//! # Daylight saving time
//!
//! Fire times are computed by [croner](https://docs.rs/croner) on the wall
//! clock of the time zone. A schedule is one of two kinds:
//!
//! - A **wall-clock** schedule names its second, minute and hour fields with
//!   plain values, lists and ranges (`30 2 * * *`, `0 9,17 * * 1-5`). It
//!   runs at those times of the local day: when the clock springs forward
//!   over one of them, it runs once at the first valid time after the gap
//!   (02:30 becomes 03:00 in New York on 2026-03-08); when the clock falls
//!   back and repeats one, it runs once, in the first pass.
//! - An **interval** schedule has a `*` or a step (`*/15`) in one of those
//!   fields. It runs in real time: wall times that do not exist are skipped
//!   and a repeated hour runs twice, so an every-minute job still runs once a
//!   minute and never twice at one instant.
//!
//! Croner treats only single values as wall-clock times; a list such as
//! `30 1,13 * * *` is expanded here into one pattern per time of day (at most
//! [`MAX_WALL_CLOCK_TIMES`]), so that every wall-clock schedule gets the
//! rules above.
//!
//! ```
//! use dispatch_cron::CronSchedule;
//!
//! let daily = CronSchedule::parse("30 2 * * *", "America/New_York")?;
//! // 2026-03-08 00:00 EST; the clock jumps from 02:00 to 03:00 EDT.
//! let midnight = 1_772_946_000_000;
//! // 03:00 EDT = 07:00 UTC.
//! assert_eq!(daily.next_after(midnight), Some(1_772_953_200_000));
//! # Ok::<(), dispatch_cron::CronError>(())
//! ```

mod misfire;

use std::str::FromStr;

use chrono::{DateTime, TimeZone};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

pub use dispatch_core::Millis;
pub use misfire::{DueFires, Misfire, MisfirePolicy};

/// The most times of day a wall-clock schedule may name before it is
/// treated as an interval schedule (`0-59 9 * * *` names 60).
pub const MAX_WALL_CLOCK_TIMES: usize = 64;

/// An invalid expression or time zone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CronError {
    /// The field at fault: `cron` or `timezone`.
    pub field: &'static str,
    /// What is wrong, lower-case, without a trailing period.
    pub message: String,
}

impl CronError {
    fn cron(message: impl Into<String>) -> Self {
        CronError {
            field: "cron",
            message: message.into(),
        }
    }
}

impl std::fmt::Display for CronError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for CronError {}

/// A cron expression in a time zone.
#[derive(Clone, Debug)]
pub struct CronSchedule {
    expression: String,
    tz: Tz,
    /// One pattern, or one per time of day of a wall-clock schedule.
    patterns: Vec<Cron>,
    wall_clock: bool,
}

/// Field names of a six-field expression, seconds first.
const FIELD_NAMES: [&str; 6] = [
    "second",
    "minute",
    "hour",
    "day-of-month",
    "month",
    "day-of-week",
];

/// `@nicknames` and the five fields they stand for.
const NICKNAMES: [(&str, &str); 7] = [
    ("@yearly", "0 0 1 1 *"),
    ("@annually", "0 0 1 1 *"),
    ("@monthly", "0 0 1 * *"),
    ("@weekly", "0 0 * * 0"),
    ("@daily", "0 0 * * *"),
    ("@midnight", "0 0 * * *"),
    ("@hourly", "0 * * * *"),
];

fn parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
}

/// Croner's message, in our style: lower-case start, no prefix or period.
fn tidy(e: &croner::errors::CronError) -> String {
    let text = e.to_string();
    let text = text
        .strip_prefix("Component error: ")
        .or_else(|| text.strip_prefix("Invalid pattern: "))
        .unwrap_or(&text);
    let text = text.trim_end_matches('.');
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// The values of a second, minute or hour field made only of numbers,
/// lists and ranges; `None` for a `*`, a step or anything else.
fn plain_values(field: &str, max: u32) -> Option<Vec<u32>> {
    let mut out = Vec::new();
    for part in field.split(',') {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<u32>().ok()?, b.parse::<u32>().ok()?),
            None => {
                let v = part.parse::<u32>().ok()?;
                (v, v)
            }
        };
        if lo > hi || hi > max {
            return None;
        }
        out.extend(lo..=hi);
    }
    out.sort_unstable();
    out.dedup();
    Some(out)
}

impl CronSchedule {
    /// Parses `expression` (5 fields, or 6 with seconds first, or one of
    /// `@yearly`, `@monthly`, `@weekly`, `@daily`, `@hourly`) in the IANA
    /// time zone `timezone`. An expression that never fires (`0 0 30 2 *`)
    /// is refused.
    pub fn parse(expression: &str, timezone: &str) -> Result<CronSchedule, CronError> {
        let tz = Tz::from_str(timezone).map_err(|_| CronError {
            field: "timezone",
            message: format!(
                "unknown time zone {timezone:?}; use an IANA name such as \
                 \"UTC\", \"Europe/Berlin\" or \"America/New_York\""
            ),
        })?;
        let trimmed = expression.trim();
        if trimmed.is_empty() {
            return Err(CronError::cron(
                "is empty; give 5 fields (minute hour day-of-month month day-of-week) \
                 or 6 with seconds first",
            ));
        }
        let text = if trimmed.starts_with('@') {
            let lower = trimmed.to_ascii_lowercase();
            NICKNAMES
                .iter()
                .find(|(nick, _)| *nick == lower)
                .map(|(_, fields)| (*fields).to_owned())
                .ok_or_else(|| {
                    let names: Vec<&str> = NICKNAMES.iter().map(|(n, _)| *n).collect();
                    CronError::cron(format!(
                        "unknown nickname {trimmed:?}; one of {}",
                        names.join(", ")
                    ))
                })?
        } else {
            trimmed.to_owned()
        };
        let given: Vec<&str> = text.split_whitespace().collect();
        if given.len() != 5 && given.len() != 6 {
            return Err(CronError::cron(format!(
                "has {} fields; give 5 (minute hour day-of-month month day-of-week) \
                 or 6 with seconds first",
                given.len()
            )));
        }
        // Always six fields from here on: seconds first.
        let mut fields: Vec<&str> = Vec::with_capacity(6);
        if given.len() == 5 {
            fields.push("0");
        }
        fields.extend(&given);
        let names = &FIELD_NAMES[6 - given.len()..];
        let parser = parser();
        let whole = parser.parse(&fields.join(" ")).map_err(|e| {
            // Find the field at fault by parsing each one alone.
            let offset = 6 - given.len();
            for (i, name) in names.iter().enumerate() {
                let mut alone = ["0", "*", "*", "*", "*", "*"];
                alone[i + offset] = fields[i + offset];
                if let Err(e) = parser.parse(&alone.join(" ")) {
                    return CronError::cron(format!(
                        "the {name} field {:?} is invalid: {}",
                        fields[i + offset],
                        tidy(&e)
                    ));
                }
            }
            CronError::cron(format!("{trimmed:?} is invalid: {}", tidy(&e)))
        })?;
        // Croner gives up on a pattern that matches no date (31 April) after
        // a bounded search; refuse it now rather than never fire. Checked
        // once, on the whole pattern: the times of day do not change which
        // dates match.
        let epoch = Tz::UTC.timestamp_opt(0, 0).single();
        if epoch.is_none_or(|t| whole.find_next_occurrence(&t, false).is_err()) {
            return Err(CronError::cron(format!(
                "{trimmed:?} never fires: no date matches its day and month fields"
            )));
        }

        let times = (
            plain_values(fields[0], 59),
            plain_values(fields[1], 59),
            plain_values(fields[2], 23),
        );
        let (patterns, wall_clock) = match times {
            (Some(s), Some(m), Some(h)) if s.len() * m.len() * h.len() <= MAX_WALL_CLOCK_TIMES => {
                let rest = fields[3..].join(" ");
                let mut patterns = Vec::with_capacity(s.len() * m.len() * h.len());
                for hour in &h {
                    for minute in &m {
                        for second in &s {
                            let one = format!("{second} {minute} {hour} {rest}");
                            patterns.push(parser.parse(&one).map_err(|e| {
                                CronError::cron(format!("{trimmed:?} is invalid: {}", tidy(&e)))
                            })?);
                        }
                    }
                }
                (patterns, true)
            }
            _ => (vec![whole], false),
        };
        Ok(CronSchedule {
            expression: trimmed.to_owned(),
            tz,
            patterns,
            wall_clock,
        })
    }

    /// The expression as given (trimmed).
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The IANA name of the time zone.
    pub fn timezone(&self) -> &str {
        self.tz.name()
    }

    /// True for a wall-clock schedule (see the crate documentation): one
    /// whose second, minute and hour fields name plain values.
    pub fn is_wall_clock(&self) -> bool {
        self.wall_clock
    }

    fn at_second(&self, secs: i64) -> Option<DateTime<Tz>> {
        self.tz.timestamp_opt(secs, 0).single()
    }

    /// The first fire strictly after `t`; `None` when there is none before
    /// the end of croner's calendar.
    pub fn next_after(&self, t: Millis) -> Option<Millis> {
        // Fires fall on whole seconds: searching after the second that holds
        // `t` finds the first one after `t`.
        let start = self.at_second(i64::try_from(t / 1000).ok()?)?;
        self.patterns
            .iter()
            .filter_map(|p| p.find_next_occurrence(&start, false).ok())
            .filter_map(|dt| Millis::try_from(dt.timestamp_millis()).ok())
            .filter(|&at| at > t)
            .min()
    }

    /// The last fire strictly before `t`.
    fn last_before(&self, t: Millis) -> Option<Millis> {
        let start = self.at_second(i64::try_from(t.div_ceil(1000)).ok()?)?;
        self.patterns
            .iter()
            .filter_map(|p| p.find_previous_occurrence(&start, false).ok())
            .filter_map(|dt| Millis::try_from(dt.timestamp_millis()).ok())
            .filter(|&at| at < t)
            .max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(expr: &str, tz: &str) -> CronError {
        CronSchedule::parse(expr, tz).expect_err(expr)
    }

    #[test]
    fn five_and_six_fields_parse() {
        for expr in [
            "* * * * *",
            "*/15 * * * *",
            "0 9 * * 1-5",
            "* * * * * *",
            "30 0 9 * * MON",
            "@daily",
            "@HOURLY",
            "0 0 L * *",
        ] {
            CronSchedule::parse(expr, "UTC").expect(expr);
        }
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let e = err("* * * *", "UTC");
        assert_eq!(e.field, "cron");
        assert!(e.message.contains("has 4 fields"), "{e}");
        let e = err("* * * * * * *", "UTC");
        assert!(e.message.contains("has 7 fields"), "{e}");
        let e = err("61 * * * *", "UTC");
        assert!(e.message.contains("minute field \"61\""), "{e}");
        let e = err("0 0 0 32 * *", "UTC");
        assert!(e.message.contains("day-of-month field \"32\""), "{e}");
        let e = err("0 0 * 13 *", "UTC");
        assert!(e.message.contains("month field \"13\""), "{e}");
        let e = err("0 0 * * FUNDAY", "UTC");
        assert!(e.message.contains("day-of-week field"), "{e}");
        let e = err("", "UTC");
        assert!(e.message.contains("is empty"), "{e}");
        let e = err("@fortnightly", "UTC");
        assert!(e.message.contains("unknown nickname"), "{e}");
        let e = err("0 0 30 2 *", "UTC");
        assert!(e.message.contains("never fires"), "{e}");
        let started = std::time::Instant::now();
        let e = err("0-59 0 31 4 *", "UTC");
        assert!(e.message.contains("never fires"), "{e}");
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        let e = err("* * * * *", "Mars/Olympus_Mons");
        assert_eq!(e.field, "timezone");
        assert!(e.message.contains("Mars/Olympus_Mons"), "{e}");
        for e in [err("61 * * * *", "UTC"), err("5/5 * * * *", "UTC")] {
            let first = e.message.chars().next().unwrap_or('x');
            assert!(!first.is_uppercase() && !e.message.ends_with('.'), "{e}");
        }
    }

    #[test]
    fn kinds_follow_the_fields() {
        let wall = |e: &str| CronSchedule::parse(e, "UTC").unwrap().is_wall_clock();
        assert!(wall("30 2 * * *"));
        assert!(wall("0 9,17 * * 1-5"));
        assert!(wall("0-59 9 * * *"));
        assert!(!wall("* 9 * * *"));
        assert!(!wall("*/15 * * * *"));
        assert!(!wall("0 * * * *"));
        assert!(!wall("* * * * * *"));
        assert!(
            !wall("0-59 0-1 * * *"),
            "120 times of day is beyond the limit"
        );
    }

    #[test]
    fn next_after_is_strictly_after() {
        let s = CronSchedule::parse("* * * * * *", "UTC").unwrap();
        assert_eq!(s.next_after(1_000), Some(2_000));
        assert_eq!(s.next_after(1_001), Some(2_000));
        assert_eq!(s.next_after(1_999), Some(2_000));
        assert_eq!(s.last_before(2_000), Some(1_000));
        assert_eq!(s.last_before(2_001), Some(2_000));
        let m = CronSchedule::parse("* * * * *", "UTC").unwrap();
        assert_eq!(m.next_after(0), Some(60_000));
        assert_eq!(m.next_after(60_000), Some(120_000));
        assert_eq!(m.next_after(u64::MAX), None);
    }
}
