//! Which fires to run now: the on-time fire, and what the misfire policy
//! makes of the fires that were missed.
//!
//! A fire is **on time** when it is the latest fire due and at most
//! [`MisfirePolicy::grace_ms`] late. Every other due fire was **missed**:
//! the scheduler was down, paused or so busy that the next fire came due
//! before it ran. Missed fires follow the policy; an on-time fire always
//! runs.

use crate::{CronSchedule, Millis};

/// What to do with missed fires.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Misfire {
    /// Run none of them.
    Skip,
    /// Run one, for the latest missed time: the whole missed span becomes
    /// one task.
    #[default]
    FireOnce,
    /// Run each of them, oldest first, at most the policy's
    /// `catch_up_limit` (the most recent ones).
    CatchUp,
}

impl Misfire {
    /// Every policy, in the order the documentation lists them.
    pub const ALL: [Misfire; 3] = [Misfire::Skip, Misfire::FireOnce, Misfire::CatchUp];

    /// The wire name: `skip`, `fire_once` or `catch_up`.
    pub fn as_str(self) -> &'static str {
        match self {
            Misfire::Skip => "skip",
            Misfire::FireOnce => "fire_once",
            Misfire::CatchUp => "catch_up",
        }
    }

    /// The policy with this wire name.
    pub fn parse(s: &str) -> Option<Misfire> {
        Misfire::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

impl std::fmt::Display for Misfire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A misfire policy with its parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MisfirePolicy {
    /// What to do with missed fires.
    pub misfire: Misfire,
    /// Most missed fires one [`Misfire::CatchUp`] evaluation runs.
    pub catch_up_limit: usize,
    /// How late the latest due fire may be and still count as on time.
    pub grace_ms: Millis,
}

/// The answer of [`CronSchedule::due_fires`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DueFires {
    /// The fire times to run now, oldest first.
    pub fires: Vec<Millis>,
    /// True when due fires were missed (whatever the policy made of them).
    pub missed: bool,
    /// The first fire after `now`, if any.
    pub next: Option<Millis>,
}

/// The most fires one evaluation looks at, whatever the catch-up limit.
const WALK_LIMIT: usize = 100_000;

/// Where the searches end: croner looks for fires up to the year 5000
/// (5000-01-01T00:00:00Z). Beyond it no fire is found, so a walk back
/// from a later `now` would find none and the walk forward from `after`
/// would be bounded only by this end.
const SEARCH_END: Millis = 95_617_584_000_000;

impl CronSchedule {
    /// The fires to run at `now`, given that every fire up to `after`
    /// (inclusive) was already decided: run, or dropped by the policy.
    ///
    /// Only the most recent fires matter to any policy, so the work is
    /// bounded by the catch-up limit, not by the length of the pause: a
    /// month-long outage of an every-second schedule costs a few searches.
    pub fn due_fires(&self, after: Millis, now: Millis, policy: &MisfirePolicy) -> DueFires {
        let next = self.next_after(now.max(after));
        // The walks stop where the searches end (see `SEARCH_END`).
        let horizon = now.min(SEARCH_END);
        if horizon <= after {
            return DueFires {
                fires: Vec::new(),
                missed: false,
                next,
            };
        }
        let keep_missed = match policy.misfire {
            Misfire::Skip => 0,
            Misfire::FireOnce => 1,
            Misfire::CatchUp => policy.catch_up_limit,
        };
        // The latest fire plus the missed ones the policy may keep.
        let keep = keep_missed.saturating_add(1).min(WALK_LIMIT);

        // Step back from `now` over the last `keep` fires; older fires can
        // only be dropped, so the forward walk may start after them.
        let mut from = after;
        let mut t = horizon + 1;
        let mut seen = 0usize;
        while seen < keep {
            match self.last_before(t) {
                Some(p) if p > after => {
                    t = p;
                    seen += 1;
                }
                _ => break,
            }
        }
        let mut older_dropped = false;
        if seen == keep {
            // A fire at or before `from` exists only if one is before `t`.
            older_dropped = self.last_before(t).is_some_and(|p| p > after);
            from = t - 1;
        }

        // Walk forward: the forward search is the one truth of fire times.
        let mut due = std::collections::VecDeque::new();
        let mut cursor = from;
        while let Some(f) = self.next_after(cursor) {
            if f > horizon {
                break;
            }
            if due.len() == keep {
                due.pop_front();
                older_dropped = true;
            }
            due.push_back(f);
            cursor = f;
        }
        let mut due: Vec<Millis> = due.into();

        let on_time = due
            .last()
            .copied()
            .filter(|&latest| now - latest <= policy.grace_ms);
        if on_time.is_some() {
            due.pop();
        }
        let missed = older_dropped || !due.is_empty();
        let start = due.len().saturating_sub(keep_missed);
        let mut fires = due.split_off(start);
        fires.extend(on_time);
        DueFires {
            fires,
            missed,
            next,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for m in Misfire::ALL {
            assert_eq!(Misfire::parse(m.as_str()), Some(m));
        }
        assert_eq!(Misfire::parse("later"), None);
        assert_eq!(Misfire::default(), Misfire::FireOnce);
    }

    fn policy(misfire: Misfire, limit: usize) -> MisfirePolicy {
        MisfirePolicy {
            misfire,
            catch_up_limit: limit,
            grace_ms: 60_000,
        }
    }

    #[test]
    fn nothing_is_due_before_the_first_fire() {
        let s = CronSchedule::parse("* * * * *", "UTC").unwrap();
        for m in Misfire::ALL {
            let d = s.due_fires(0, 59_999, &policy(m, 10));
            assert_eq!(d.fires, Vec::<Millis>::new());
            assert!(!d.missed);
            assert_eq!(d.next, Some(60_000));
            let d = s.due_fires(60_000, 60_000, &policy(m, 10));
            assert_eq!(d.fires, Vec::<Millis>::new());
            assert_eq!(d.next, Some(120_000));
        }
    }

    #[test]
    fn the_on_time_fire_runs_whatever_the_policy() {
        let s = CronSchedule::parse("* * * * *", "UTC").unwrap();
        for m in Misfire::ALL {
            let d = s.due_fires(59_000, 60_005, &policy(m, 10));
            assert_eq!(d.fires, vec![60_000], "{m}");
            assert!(!d.missed);
            assert_eq!(d.next, Some(120_000));
        }
    }

    #[test]
    fn a_month_long_pause_costs_little() {
        let s = CronSchedule::parse("* * * * * *", "UTC").unwrap();
        let month = 30 * 86_400_000;
        let started = std::time::Instant::now();
        let d = s.due_fires(0, month + 500, &policy(Misfire::CatchUp, 3));
        assert_eq!(
            d.fires,
            vec![month - 3_000, month - 2_000, month - 1_000, month]
        );
        assert!(d.missed);
        let d = s.due_fires(0, month + 500, &policy(Misfire::Skip, 3));
        assert_eq!(d.fires, vec![month]);
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn a_now_past_the_end_of_the_calendar_costs_little() {
        // Before the end was kept in mind, these walked every minute up to
        // the year 5000.
        let s = CronSchedule::parse("* * * * *", "UTC").unwrap();
        // Three missed fires, and the last one on time when it is.
        for (now, fires) in [(u64::MAX, 3), (SEARCH_END + 1, 4), (200_000_000_000_000, 3)] {
            let d = s.due_fires(1_700_000_000_000, now, &policy(Misfire::CatchUp, 3));
            assert_eq!(d.fires.len(), fires, "{now}: {d:?}");
            assert!(d.missed);
            assert_eq!(d.next, None);
        }
    }
}
