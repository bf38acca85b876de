//! [`Throughput`]: attempts started, succeeded and failed in each of the
//! last 900 seconds, kept in memory for the dashboard's chart.
//!
//! A ring of one-second buckets, each stamped with the second it counts:
//! a bucket whose stamp is not the second asked about counts nothing, so
//! seconds without transitions need no write and a quiet server keeps no
//! stale counts. `App::persist` feeds it once per drain of the core's
//! events, where every transition is applied.

use std::sync::Mutex;

use dispatch_core::{AttemptOutcome, Millis, TaskState, Transition};

/// Seconds the ring covers: 15 minutes.
pub(crate) const SECONDS: usize = 900;

/// Counts of one second: attempts started, tasks succeeded, attempts
/// failed (retried later, or dead).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Second {
    pub(crate) started: u32,
    pub(crate) succeeded: u32,
    pub(crate) failed: u32,
}

impl Second {
    /// Counts one transition: a collection starts an attempt; the attempt
    /// it ends, if any, succeeded or failed (an error, a timeout, a lost
    /// worker; a cancel is neither).
    pub(crate) fn count(&mut self, t: &Transition) {
        if t.state == TaskState::Running {
            self.started += 1;
        }
        match t.ended.as_ref().map(|e| e.outcome) {
            Some(AttemptOutcome::Succeeded) => self.succeeded += 1,
            Some(AttemptOutcome::Failed | AttemptOutcome::Timeout | AttemptOutcome::Lost) => {
                self.failed += 1
            }
            Some(AttemptOutcome::Cancelled) | None => {}
        }
    }

    fn is_empty(&self) -> bool {
        *self == Second::default()
    }
}

/// The ring of the last [`SECONDS`] seconds.
pub(crate) struct Throughput {
    ring: Mutex<Box<[(u64, Second); SECONDS]>>,
}

impl Default for Throughput {
    fn default() -> Self {
        Throughput {
            ring: Mutex::new(Box::new([(u64::MAX, Second::default()); SECONDS])),
        }
    }
}

impl Throughput {
    /// Adds `counts` to the second that holds `now`.
    pub(crate) fn add(&self, now: Millis, counts: Second) {
        if counts.is_empty() {
            return;
        }
        let sec = now / 1000;
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let slot = &mut ring[(sec % SECONDS as u64) as usize];
        if slot.0 != sec {
            *slot = (sec, Second::default());
        }
        slot.1.started += counts.started;
        slot.1.succeeded += counts.succeeded;
        slot.1.failed += counts.failed;
    }

    /// The [`SECONDS`] whole seconds before the one holding `now`, oldest
    /// first (the current second is still filling).
    pub(crate) fn last(&self, now: Millis) -> Vec<Second> {
        let current = now / 1000;
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        (1..=SECONDS as u64)
            .rev()
            .map(|back| {
                let sec = current.saturating_sub(back);
                let slot = &ring[(sec % SECONDS as u64) as usize];
                if slot.0 == sec && back <= current {
                    slot.1
                } else {
                    Second::default()
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn second(started: u32, succeeded: u32, failed: u32) -> Second {
        Second {
            started,
            succeeded,
            failed,
        }
    }

    #[test]
    fn seconds_are_counted_in_place_and_forgotten_after_fifteen_minutes() {
        let t = Throughput::default();
        let at = 1_000_000_000; // a whole second
        t.add(at, second(3, 1, 0));
        t.add(at + 999, second(1, 0, 2));
        t.add(at + 5_000, second(0, 4, 0));
        let last = t.last(at + 6_000);
        assert_eq!(last.len(), SECONDS);
        assert_eq!(last[SECONDS - 6], second(4, 1, 2));
        assert_eq!(last[SECONDS - 1], second(0, 4, 0));
        assert_eq!(last.iter().map(|s| s.started).sum::<u32>(), 4);
        // The current second is not shown until it is over.
        assert_eq!(t.last(at + 5_500)[SECONDS - 1], Second::default());
        // 900 s later the same slots hold other seconds: nothing is left.
        let later = t.last(at + 906_000);
        assert!(later.iter().all(|s| *s == Second::default()));
        // A new second in a reused slot starts from zero.
        t.add(at + 900_000, second(1, 0, 0));
        assert_eq!(t.last(at + 901_000)[SECONDS - 1], second(1, 0, 0));
    }

    #[test]
    fn failures_are_failed_attempts_not_cancels() {
        let tr = |state, outcome: Option<AttemptOutcome>| Transition {
            task: dispatch_core::TaskId(1),
            state,
            attempts: 1,
            worker: None,
            started_at: None,
            finished_at: None,
            ready_at: None,
            error: None,
            ended: outcome.map(|outcome| {
                Box::new(dispatch_core::AttemptEnd {
                    attempt: 1,
                    worker: dispatch_core::WorkerId::new(1).unwrap(),
                    worker_name: "w".into(),
                    collected_at: 0,
                    finished_at: 1,
                    outcome,
                    retry_delay_ms: None,
                })
            }),
        };
        let mut s = Second::default();
        s.count(&tr(TaskState::Running, None));
        s.count(&tr(TaskState::Scheduled, Some(AttemptOutcome::Failed)));
        s.count(&tr(TaskState::Queued, Some(AttemptOutcome::Lost)));
        s.count(&tr(TaskState::Dead, Some(AttemptOutcome::Timeout)));
        s.count(&tr(TaskState::Succeeded, Some(AttemptOutcome::Succeeded)));
        // A dead task requeued by a retry, a delayed submission, a cancel.
        s.count(&tr(TaskState::Queued, None));
        s.count(&tr(TaskState::Scheduled, None));
        s.count(&tr(TaskState::Cancelled, Some(AttemptOutcome::Cancelled)));
        assert_eq!(s, second(1, 1, 3));
    }
}
