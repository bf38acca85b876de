//! Fire times across daylight-saving changes: the New York changes of 2026
//! as examples, and property tests over several time zones.

mod common;

use chrono::{DateTime, NaiveDate, TimeZone, Timelike};
use chrono_tz::Tz;
use common::config;
use dispatch_cron::{CronSchedule, Millis};
use proptest::prelude::*;

const NEW_YORK: &str = "America/New_York";

/// A New York wall time; the earlier instant when it happens twice.
fn ny(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> Millis {
    let tz: Tz = NEW_YORK.parse().unwrap();
    let t = tz
        .with_ymd_and_hms(y, mo, d, h, mi, 0)
        .earliest()
        .expect("a wall time that exists");
    t.timestamp_millis() as Millis
}

fn local(ms: Millis, tz: &str) -> DateTime<Tz> {
    let tz: Tz = tz.parse().unwrap();
    tz.timestamp_millis_opt(ms as i64).unwrap()
}

/// Every fire in `(from, to]`.
fn fires(s: &CronSchedule, from: Millis, to: Millis) -> Vec<Millis> {
    let mut out = Vec::new();
    let mut t = from;
    while let Some(next) = s.next_after(t) {
        if next > to {
            break;
        }
        assert!(next > t, "next_after({t}) went back to {next}");
        out.push(next);
        t = next;
    }
    out
}

fn shown(v: &[Millis], tz: &str) -> Vec<String> {
    v.iter().map(|&t| local(t, tz).to_rfc3339()).collect()
}

#[test]
fn spring_forward_runs_a_daily_0230_job_once_at_0300_edt() {
    let s = CronSchedule::parse("30 2 * * *", NEW_YORK).unwrap();
    let got = fires(&s, ny(2026, 3, 6, 0, 0), ny(2026, 3, 10, 0, 0));
    assert_eq!(
        shown(&got, NEW_YORK),
        [
            "2026-03-06T02:30:00-05:00",
            "2026-03-07T02:30:00-05:00",
            "2026-03-08T03:00:00-04:00",
            "2026-03-09T02:30:00-04:00",
        ]
    );
    // 03:00 EDT is 07:00 UTC.
    assert_eq!(got[2], 1_772_953_200_000);
}

#[test]
fn fall_back_runs_a_daily_0130_job_once() {
    let s = CronSchedule::parse("30 1 * * *", NEW_YORK).unwrap();
    let got = fires(&s, ny(2026, 10, 30, 0, 0), ny(2026, 11, 3, 0, 0));
    assert_eq!(
        shown(&got, NEW_YORK),
        [
            "2026-10-30T01:30:00-04:00",
            "2026-10-31T01:30:00-04:00",
            "2026-11-01T01:30:00-04:00",
            "2026-11-02T01:30:00-05:00",
        ]
    );
}

#[test]
fn lists_of_times_are_wall_clock_times_too() {
    // Croner alone runs `30 1,13` twice on the fall-back night; a list of
    // times of day must behave like each single time.
    let s = CronSchedule::parse("30 1,13 * * *", NEW_YORK).unwrap();
    let got = fires(&s, ny(2026, 11, 1, 0, 0), ny(2026, 11, 2, 0, 0));
    assert_eq!(
        shown(&got, NEW_YORK),
        ["2026-11-01T01:30:00-04:00", "2026-11-01T13:30:00-05:00"]
    );
    let s = CronSchedule::parse("30 2,14 * * *", NEW_YORK).unwrap();
    let got = fires(&s, ny(2026, 3, 8, 0, 0), ny(2026, 3, 9, 0, 0));
    assert_eq!(
        shown(&got, NEW_YORK),
        ["2026-03-08T03:00:00-04:00", "2026-03-08T14:30:00-04:00"]
    );
    // Two times that land on one instant fire once.
    let s = CronSchedule::parse("0 2,3 * * *", NEW_YORK).unwrap();
    let got = fires(&s, ny(2026, 3, 8, 0, 0), ny(2026, 3, 9, 0, 0));
    assert_eq!(shown(&got, NEW_YORK), ["2026-03-08T03:00:00-04:00"]);
}

#[test]
fn every_minute_runs_once_a_minute_of_real_time_across_both_changes() {
    let s = CronSchedule::parse("* * * * *", NEW_YORK).unwrap();
    // 00:00 EST to 04:00 EDT is three real hours.
    let spring = fires(&s, ny(2026, 3, 8, 0, 0), ny(2026, 3, 8, 4, 0));
    assert_eq!(spring.len(), 180);
    // 00:00 EDT to 03:00 EST is four real hours: 01:xx happens twice.
    let fall = fires(&s, ny(2026, 11, 1, 0, 0), ny(2026, 11, 1, 3, 0));
    assert_eq!(fall.len(), 240);
    for run in [&spring, &fall] {
        for w in run.windows(2) {
            assert_eq!(w[1] - w[0], 60_000, "{:?}", shown(w, NEW_YORK));
        }
    }
    // The hourly job of the fall-back night runs at both 01:00s.
    let hourly = CronSchedule::parse("0 * * * *", NEW_YORK).unwrap();
    let got = fires(&hourly, ny(2026, 11, 1, 0, 30), ny(2026, 11, 1, 2, 30));
    assert_eq!(
        shown(&got, NEW_YORK),
        [
            "2026-11-01T01:00:00-04:00",
            "2026-11-01T01:00:00-05:00",
            "2026-11-01T02:00:00-05:00",
        ]
    );
}

#[test]
fn seconds_field_fires_every_second() {
    let s = CronSchedule::parse("* * * * * *", "UTC").unwrap();
    assert_eq!(fires(&s, 0, 5_000), vec![1_000, 2_000, 3_000, 4_000, 5_000]);
    let s = CronSchedule::parse("*/20 * * * * *", "UTC").unwrap();
    assert_eq!(fires(&s, 0, 60_000), vec![20_000, 40_000, 60_000]);
}

const ZONES: [&str; 9] = [
    "America/New_York",
    "Europe/Berlin",
    "Australia/Sydney",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "America/Havana",
    "America/Santiago",
    "Asia/Kolkata",
    "UTC",
];

proptest! {
    #![proptest_config(config(48))]

    /// A wall-clock daily job runs exactly once on every local day of a
    /// year, DST changes or not, at its time or just after a gap.
    #[test]
    fn a_daily_job_runs_once_every_local_day(
        zone in prop::sample::select(&ZONES[..]),
        year in 2024i32..2031,
        hour in 0u32..24,
        minute in 0u32..60,
    ) {
        let s = CronSchedule::parse(&format!("{minute} {hour} * * *"), zone).unwrap();
        prop_assert!(s.is_wall_clock());
        let tz: Tz = zone.parse().unwrap();
        let start = tz.from_utc_datetime(
            &NaiveDate::from_ymd_opt(year, 1, 1).unwrap().and_hms_opt(12, 0, 0).unwrap(),
        );
        let end = start + chrono::Duration::days(365);
        let got = fires(&s, start.timestamp_millis() as Millis, end.timestamp_millis() as Millis);
        let days: Vec<NaiveDate> = got.iter().map(|&t| local(t, zone).date_naive()).collect();
        for w in days.windows(2) {
            prop_assert_eq!(w[1], w[0].succ_opt().unwrap(), "{:?}", shown(&got, zone));
        }
        prop_assert!((364..=365).contains(&got.len()), "{} fires", got.len());
        for &t in &got {
            let l = local(t, zone);
            let exact = l.hour() == hour && l.minute() == minute;
            // Otherwise the time fell into a gap: the fire is the first
            // valid time after it, within the hour.
            let after_gap = {
                let wall = l.date_naive().and_hms_opt(hour, minute, 0).unwrap();
                tz.from_local_datetime(&wall).single().is_none() && l.naive_local() > wall
            };
            prop_assert!(exact || after_gap, "{}", l);
        }
    }

    /// Interval jobs run on matching wall times, strictly increasing, and
    /// never twice at one instant.
    #[test]
    fn interval_jobs_increase_and_match(
        zone in prop::sample::select(&ZONES[..]),
        step in prop::sample::select(&[1u32, 5, 15, 30][..]),
        day in 0i64..365,
    ) {
        let s = CronSchedule::parse(&format!("*/{step} * * * *"), zone).unwrap();
        prop_assert!(!s.is_wall_clock());
        let from = 1_767_225_600_000 + day as Millis * 86_400_000;
        let got = fires(&s, from, from + 2 * 86_400_000);
        prop_assert!(got.len() as u32 >= 2 * 24 * 60 / step - 60 / step);
        for w in got.windows(2) {
            prop_assert!(w[0] < w[1]);
        }
        for &t in &got {
            let l = local(t, zone);
            prop_assert_eq!(l.minute() % step, 0);
            prop_assert_eq!(l.second(), 0);
        }
        prop_assert_eq!(got.first().map(|&f| f > from), Some(true));
    }
}
