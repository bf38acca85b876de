//! Fuzzing the cron parser and the fire-time searches: arbitrary text and
//! mutated expressions and zones through [`CronSchedule::parse`], then
//! [`CronSchedule::next_after`] and [`CronSchedule::due_fires`] at random
//! instants from the epoch to the far future, in zones with odd or
//! frequent daylight-saving changes.
//!
//! Nothing may panic; a refusal names `cron` or `timezone` and says what
//! is wrong; fires come strictly after the instant asked about and in
//! order; `due_fires` answers within its policy's bounds. Case counts are
//! fixed, so a run takes a few seconds and replays.

mod common;

use common::config;
use dispatch_cron::{CronSchedule, Millis, Misfire, MisfirePolicy};
use proptest::prelude::*;

/// Zones whose rules stress the searches: half-hour and 30-minute shifts,
/// negative DST, skipped days, two-hour DST, DST tied to a calendar.
const ZONES: [&str; 14] = [
    "UTC",
    "America/New_York",
    "Europe/London",
    "Europe/Dublin",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "Pacific/Apia",
    "America/Santiago",
    "America/St_Johns",
    "Antarctica/Troll",
    "Africa/Casablanca",
    "Asia/Gaza",
    "Asia/Kathmandu",
    "America/Godthab",
];

const VALID: [&str; 16] = [
    "* * * * *",
    "* * * * * *",
    "*/7 * * * *",
    "30 2 * * *",
    "0 30 1 * * *",
    "0 9,17 * * 1-5",
    "0-59 2 * * *",
    "0 0 L * *",
    "0 0 29 2 *",
    "0 12 * * 5#2",
    "15 3 1-7 * SUN",
    "0 0 1 1 *",
    "@hourly",
    "@weekly",
    "59 23 31 12 *",
    "0 */2 * JAN-MAR *",
];

/// Tokens that a cron field may be replaced with.
const TOKENS: [&str; 40] = [
    "*",
    "?",
    "L",
    "W",
    "LW",
    "5W",
    "L-3",
    "#",
    "5#6",
    "MON#1",
    "*/0",
    "*/1",
    "0/5",
    "5/5",
    "*/99999999999",
    "1-0",
    "0-99999",
    "99999999999999999999",
    "-1",
    "1--2",
    "1,,2",
    ",",
    "-",
    "/",
    "60",
    "24",
    "32",
    "13",
    "8",
    "7",
    "JAN",
    "FEB-DEC",
    "SUN-SAT",
    "MON-FOO",
    "é",
    "\u{0}",
    "\u{3000}",
    "１",
    "@daily",
    "0-59/61",
];

/// Instants from the epoch to the far future.
fn instant() -> impl Strategy<Value = Millis> {
    prop_oneof![
        4 => 1_500_000_000_000u64..2_200_000_000_000,
        1 => 0u64..100_000_000,
        1 => 2_200_000_000_000u64..300_000_000_000_000,
        1 => 300_000_000_000_000u64..8_300_000_000_000_000,
        1 => any::<u64>(),
        1 => prop_oneof![
            Just(u64::MAX),
            Just(i64::MAX as u64),
            Just((i64::MAX as u64) + 1),
            Just(8_210_298_412_799_999u64),
            Just(253_402_300_799_999u64),
        ],
    ]
}

fn zone() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => (0..ZONES.len()).prop_map(|i| ZONES[i].to_owned()),
        1 => ".{0,24}",
        1 => prop_oneof![
            Just("utc".to_owned()),
            Just("Etc/GMT+14".to_owned()),
            Just("Etc/GMT-14".to_owned()),
            Just("America/New_York\u{0}".to_owned()),
            Just("../../../etc/localtime".to_owned()),
            Just(" UTC".to_owned()),
            Just("EST5EDT".to_owned()),
        ],
    ]
}

/// A valid expression with up to three fields replaced, added or removed.
fn mutated_expression() -> impl Strategy<Value = String> {
    (
        0..VALID.len(),
        prop::collection::vec(
            (any::<prop::sample::Index>(), 0..TOKENS.len(), 0u8..4),
            0..3,
        ),
    )
        .prop_map(|(base, edits)| {
            let mut fields: Vec<String> =
                VALID[base].split_whitespace().map(str::to_owned).collect();
            for (at, token, op) in edits {
                let token = TOKENS[token].to_owned();
                match op {
                    0 | 1 if !fields.is_empty() => {
                        let i = at.index(fields.len());
                        fields[i] = token;
                    }
                    2 => {
                        let i = at.index(fields.len() + 1);
                        fields.insert(i, token);
                    }
                    _ if !fields.is_empty() => {
                        let i = at.index(fields.len());
                        fields.remove(i);
                    }
                    _ => fields.push(token),
                }
            }
            fields.join(" ")
        })
}

fn expression() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => mutated_expression(),
        2 => (0..VALID.len()).prop_map(|i| VALID[i].to_owned()),
        1 => ".{0,40}",
        1 => "[0-9*/,LW#?A-Z -]{0,40}",
    ]
}

fn policy() -> impl Strategy<Value = MisfirePolicy> {
    (0..3usize, 0usize..300, 0u64..3_600_000).prop_map(|(m, limit, grace_ms)| MisfirePolicy {
        misfire: Misfire::ALL[m],
        catch_up_limit: limit,
        grace_ms,
    })
}

/// Parses, checking the shape of a refusal.
fn parse(expr: &str, tz: &str) -> Option<CronSchedule> {
    match CronSchedule::parse(expr, tz) {
        Ok(s) => Some(s),
        Err(e) => {
            assert!(
                e.field == "cron" || e.field == "timezone",
                "{expr:?} in {tz:?}: field {:?}",
                e.field
            );
            assert!(
                !e.message.trim().is_empty(),
                "{expr:?} in {tz:?}: no message"
            );
            assert!(
                !e.message.ends_with('.'),
                "{expr:?} in {tz:?}: style: {}",
                e.message
            );
            None
        }
    }
}

/// Walks `n` fires forward from `t`, checking they increase strictly.
fn walk(s: &CronSchedule, mut t: Millis, n: usize) {
    for _ in 0..n {
        match s.next_after(t) {
            Some(f) => {
                assert!(
                    f > t,
                    "{:?} in {}: next_after({t}) = {f}",
                    s.expression(),
                    s.timezone()
                );
                // Fires fall on whole seconds.
                assert_eq!(f % 1000, 0, "{:?}: {f}", s.expression());
                t = f;
            }
            None => break,
        }
    }
}

/// Checks one `due_fires` answer against its contract.
fn check_due(s: &CronSchedule, after: Millis, now: Millis, p: &MisfirePolicy) {
    let d = s.due_fires(after, now, p);
    let what = format!(
        "{:?} in {}: due_fires({after}, {now}, {p:?}) = {d:?}",
        s.expression(),
        s.timezone()
    );
    if now <= after {
        assert!(d.fires.is_empty() && !d.missed, "{what}");
    }
    assert!(d.fires.windows(2).all(|w| w[0] < w[1]), "{what}");
    assert!(d.fires.iter().all(|&f| f > after && f <= now), "{what}");
    let most = match p.misfire {
        Misfire::Skip => 1,
        Misfire::FireOnce => 2,
        Misfire::CatchUp => p.catch_up_limit + 1,
    };
    assert!(d.fires.len() <= most, "{what}");
    if let Some(next) = d.next {
        assert!(next > now && next > after, "{what}");
    }
    // Every fire returned is a real fire: the next one after the instant
    // just before it.
    for &f in &d.fires {
        assert_eq!(s.next_after(f - 1), Some(f), "{what}");
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn arbitrary_text_never_panics(expr in ".{0,64}", tz in ".{0,32}") {
        parse(&expr, &tz);
    }

    #[test]
    fn mutated_expressions_parse_or_say_why(expr in expression(), tz in zone()) {
        if let Some(s) = parse(&expr, &tz) {
            prop_assert_eq!(s.expression(), expr.trim());
            // A parsed expression fires (the parser refuses one that never
            // does), so the first fire after the epoch exists.
            prop_assert!(s.next_after(0).is_some(), "{:?} never fires", expr);
        }
    }

    #[test]
    fn fires_come_after_and_in_order(
        expr in expression(),
        tz in zone(),
        t in instant(),
    ) {
        if let Some(s) = parse(&expr, &tz) {
            walk(&s, t, 8);
        }
    }

    #[test]
    fn due_fires_keep_the_policy_bounds(
        i in 0..VALID.len(),
        tz in 0..ZONES.len(),
        after in instant(),
        span in prop_oneof![0u64..10_000, 0u64..100_000_000, 0u64..400 * 86_400_000, any::<u64>()],
        policy in policy(),
    ) {
        let s = CronSchedule::parse(VALID[i], ZONES[tz]).expect("valid expression");
        let now = after.saturating_add(span);
        check_due(&s, after, now, &policy);
        // And backwards: `now` before `after` answers nothing.
        check_due(&s, now, after, &policy);
    }
}

/// Instants where the searches run out of calendar: answers, no panic.
#[test]
fn the_end_of_the_calendar_is_an_answer() {
    for expr in ["* * * * * *", "0 0 29 2 *", "30 2 * * *", "0 0 L * *"] {
        for tz in ZONES {
            let s = CronSchedule::parse(expr, tz).expect("valid");
            for t in [
                u64::MAX,
                u64::MAX - 1,
                i64::MAX as u64,
                8_210_298_412_799_999,
                253_402_300_799_999,
            ] {
                walk(&s, t, 2);
                let p = MisfirePolicy {
                    misfire: Misfire::CatchUp,
                    catch_up_limit: 5,
                    grace_ms: 1_000,
                };
                check_due(&s, t.saturating_sub(86_400_000), t, &p);
            }
        }
    }
}
