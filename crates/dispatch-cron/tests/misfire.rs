//! Misfire policies driven by a simulated clock: a loop like the server's
//! (sleep until the next fire, wake a little late, run what is due) that
//! can be paused, and a model check of `due_fires` against a plain walk.

use dispatch_cron::{CronSchedule, Millis, Misfire, MisfirePolicy};
use proptest::prelude::*;

const MINUTE: Millis = 60_000;
const HOUR: Millis = 60 * MINUTE;

/// 2026-06-01T10:07:00Z.
const T0: Millis = 1_780_308_420_000;

fn policy(misfire: Misfire, limit: usize) -> MisfirePolicy {
    MisfirePolicy {
        misfire,
        catch_up_limit: limit,
        grace_ms: MINUTE,
    }
}

/// Runs the scheduler loop from `start` to `end` on a simulated clock: it
/// wakes `late_ms` after each next fire, except during `pause` (the process
/// is down or stopped), after which it wakes at the pause's end. Returns
/// every fire run.
fn simulate(
    s: &CronSchedule,
    p: &MisfirePolicy,
    start: Millis,
    end: Millis,
    late_ms: Millis,
    pause: Option<(Millis, Millis)>,
) -> Vec<Millis> {
    let mut ran = Vec::new();
    let mut decided = start;
    let mut now = start;
    while now <= end {
        let due = s.due_fires(decided, now, p);
        assert!(due.fires.windows(2).all(|w| w[0] < w[1]));
        assert!(due.fires.iter().all(|&f| f > decided && f <= now));
        ran.extend(&due.fires);
        decided = now;
        let Some(next) = due.next else { break };
        now = next + late_ms;
        if let Some((from, to)) = pause
            && now > from
            && now < to
        {
            now = to;
        }
    }
    ran
}

fn every_15() -> CronSchedule {
    CronSchedule::parse("*/15 * * * *", "America/New_York").unwrap()
}

/// The quarter hours in `(from, to]`.
fn quarters(from: Millis, to: Millis) -> Vec<Millis> {
    (from / (15 * MINUTE) + 1..=to / (15 * MINUTE))
        .map(|q| q * 15 * MINUTE)
        .collect()
}

#[test]
fn without_a_pause_every_fire_runs_once_whatever_the_policy() {
    let s = every_15();
    for m in Misfire::ALL {
        let ran = simulate(&s, &policy(m, 100), T0, T0 + 6 * HOUR, 250, None);
        assert_eq!(ran, quarters(T0, T0 + 6 * HOUR), "{m}");
    }
}

#[test]
fn a_three_hour_pause_follows_the_policy() {
    let s = every_15();
    // Down from 10:20 to 13:07: the fires of 10:30 to 13:00 (11 of them)
    // are missed, and 13:00 is 7 minutes late, beyond the grace.
    let (down, up) = (T0 + 13 * MINUTE, T0 + 3 * HOUR);
    let end = T0 + 4 * HOUR;
    let before = quarters(T0, down);
    let missed = quarters(down, up);
    assert_eq!(missed.len(), 11);
    let after = quarters(up, end);
    let with = |middle: &[Millis]| -> Vec<Millis> { [&before[..], middle, &after[..]].concat() };

    let run = |m, limit| simulate(&s, &policy(m, limit), T0, end, 100, Some((down, up)));
    assert_eq!(run(Misfire::Skip, 100), with(&[]));
    assert_eq!(run(Misfire::FireOnce, 100), with(&missed[10..]));
    assert_eq!(run(Misfire::CatchUp, 100), with(&missed));
    // The limit keeps the most recent missed fires.
    assert_eq!(run(Misfire::CatchUp, 4), with(&missed[7..]));
    assert_eq!(run(Misfire::CatchUp, 0), with(&[]));
}

#[test]
fn a_pause_ending_just_after_a_fire_keeps_that_fire_on_time() {
    let s = every_15();
    // Back 30 s after 13:00: that fire is on time, the ten before it missed.
    let (down, up) = (T0 + 13 * MINUTE, T0 + 173 * MINUTE + 30_000);
    let end = T0 + 4 * HOUR;
    let missed = quarters(down, T0 + 173 * MINUTE - 1);
    let on_time = T0 + 173 * MINUTE;
    assert_eq!(missed.len(), 10);
    let run = |m| simulate(&s, &policy(m, 100), T0, end, 100, Some((down, up)));
    let middle = |v: &[Millis]| -> Vec<Millis> {
        let mut out: Vec<Millis> = v.to_vec();
        out.push(on_time);
        out
    };
    let around = |ran: Vec<Millis>| -> Vec<Millis> {
        ran.into_iter().filter(|&f| f > down && f < up).collect()
    };
    assert_eq!(around(run(Misfire::Skip)), middle(&[]));
    assert_eq!(around(run(Misfire::FireOnce)), middle(&missed[9..]));
    assert_eq!(around(run(Misfire::CatchUp)), middle(&missed));
}

#[test]
fn a_loop_that_falls_behind_misses_fires() {
    // Every second, but each wake-up comes 1.5 s after the fire: the fire
    // before the latest is always missed.
    let s = CronSchedule::parse("* * * * * *", "UTC").unwrap();
    let p = policy(Misfire::Skip, 100);
    let ran = simulate(&s, &p, 0, 20_500, 1_500, None);
    assert!(ran.windows(2).all(|w| w[1] - w[0] == 2_000), "{ran:?}");
    let p = policy(Misfire::CatchUp, 100);
    let ran = simulate(&s, &p, 0, 20_500, 1_500, None);
    assert_eq!(ran, (1..=20).map(|s| s * 1_000).collect::<Vec<_>>());
}

#[test]
fn the_fall_back_night_is_caught_up_in_real_time() {
    // Down over the repeated hour of 2026-11-01 in New York, every 30
    // minutes: the missed fires include both 01:00s and both 01:30s.
    let s = CronSchedule::parse("*/30 * * * *", "America/New_York").unwrap();
    let midnight_edt = 1_793_505_600_000; // 2026-11-01T00:00-04:00
    let (down, up) = (
        midnight_edt + 10 * MINUTE,
        midnight_edt + 4 * HOUR + 10 * MINUTE,
    );
    let ran = simulate(
        &s,
        &policy(Misfire::CatchUp, 100),
        midnight_edt,
        midnight_edt + 5 * HOUR + MINUTE,
        50,
        Some((down, up)),
    );
    // 00:30, 01:00, 01:30 (EDT), 01:00, 01:30, 02:00, 02:30, 03:00 (EST),
    // then 03:30 and 04:00.
    let expect: Vec<Millis> = (1..=10).map(|k| midnight_edt + k * 30 * MINUTE).collect();
    assert_eq!(ran, expect);
}

/// The policy's definition, on a plain list of every due fire.
fn model(all_due: &[Millis], now: Millis, p: &MisfirePolicy) -> Vec<Millis> {
    let mut due = all_due.to_vec();
    let on_time = due.last().copied().filter(|&l| now - l <= p.grace_ms);
    if on_time.is_some() {
        due.pop();
    }
    let keep = match p.misfire {
        Misfire::Skip => 0,
        Misfire::FireOnce => 1,
        Misfire::CatchUp => p.catch_up_limit,
    };
    let mut out = due.split_off(due.len().saturating_sub(keep));
    out.extend(on_time);
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// `due_fires` agrees with the definition applied to every due fire,
    /// for any pause, policy and limit.
    #[test]
    fn due_fires_matches_the_model(
        expr in prop::sample::select(&[
            "* * * * *", "*/15 * * * *", "0 * * * *", "*/20 * * * * *",
            "30 1,2 * * *", "0 9 * * 1-5",
        ][..]),
        zone in prop::sample::select(&["UTC", "America/New_York", "Australia/Lord_Howe"][..]),
        after_offset in 0u64..(400 * 86_400_000),
        pause in 0u64..(2 * 86_400_000),
        misfire in prop::sample::select(&Misfire::ALL[..]),
        limit in 0usize..6,
        grace_ms in prop::sample::select(&[0u64, 1_000, 60_000][..]),
    ) {
        let s = CronSchedule::parse(expr, zone).unwrap();
        // From 2026-01-01, across both DST changes of the year.
        let after = 1_767_225_600_000 + after_offset;
        let now = after + pause;
        let p = MisfirePolicy { misfire, catch_up_limit: limit, grace_ms };
        let mut all = Vec::new();
        let mut t = after;
        while let Some(f) = s.next_after(t) {
            if f > now {
                break;
            }
            all.push(f);
            t = f;
        }
        let got = s.due_fires(after, now, &p);
        prop_assert_eq!(&got.fires, &model(&all, now, &p));
        prop_assert_eq!(got.next, s.next_after(now));
        let on_time = all.last().is_some_and(|&l| now - l <= grace_ms);
        prop_assert_eq!(got.missed, all.len() > usize::from(on_time));
    }
}
