//! The kill schedule, drawn from the seed before the run starts. Each kill
//! is due at a point of the run's progress rather than at a time, so that
//! kills land during both submission and drain on a fast or a slow machine:
//! progress is a quarter submission (tasks acknowledged) and three quarters
//! drain (tasks finished), from 0 to 1.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What to kill.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// The worker process in this slot (it is replaced by a new one).
    Worker(usize),
    /// The server (restarted on the same data folder and port).
    Server,
}

/// One kill, due once progress reaches `at`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Kill {
    pub(crate) at: f64,
    pub(crate) target: Target,
}

/// The earliest and latest progress points of a kill.
const FIRST: f64 = 0.02;
const LAST: f64 = 0.9;

/// The schedule of `worker_kills` kills of random worker slots (of
/// `slots`) and `server_kills` server kills, spread out so that no two
/// server kills fall in the same slice of the run; sorted by `at`.
pub(crate) fn schedule(seed: u64, worker_kills: u32, server_kills: u32, slots: usize) -> Vec<Kill> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut kills: Vec<Kill> = (0..worker_kills)
        .map(|_| Kill {
            at: rng.random_range(FIRST..LAST),
            target: Target::Worker(rng.random_range(0..slots.max(1))),
        })
        .collect();
    let slice = (LAST - FIRST) / f64::from(server_kills.max(1));
    for k in 0..server_kills {
        let start = FIRST + slice * f64::from(k);
        kills.push(Kill {
            at: start + slice * rng.random_range(0.1..0.9),
            target: Target::Server,
        });
    }
    kills.sort_by(|a, b| a.at.total_cmp(&b.at));
    kills
}

/// The run's progress: a quarter submission, three quarters drain.
pub(crate) fn progress(tasks: u64, acknowledged: u64, finished: u64) -> f64 {
    let total = tasks.max(1) as f64;
    0.25 * acknowledged as f64 / total + 0.75 * finished as f64 / total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedule_replays_from_its_seed_and_keeps_its_counts() {
        let a = schedule(7, 20, 3, 8);
        let b = schedule(7, 20, 3, 8);
        assert_eq!(a.len(), 23);
        assert_eq!(
            a.iter().map(|k| (k.at, k.target)).collect::<Vec<_>>(),
            b.iter().map(|k| (k.at, k.target)).collect::<Vec<_>>()
        );
        assert_eq!(a.iter().filter(|k| k.target == Target::Server).count(), 3);
        assert!(a.windows(2).all(|w| w[0].at <= w[1].at));
        assert!(a.iter().all(|k| (FIRST..LAST).contains(&k.at)));
        assert!(
            a.iter()
                .all(|k| !matches!(k.target, Target::Worker(s) if s >= 8))
        );
        let other = schedule(8, 20, 3, 8);
        assert_ne!(a[0].at, other[0].at);
    }

    #[test]
    fn server_kills_fall_in_separate_slices() {
        let s: Vec<f64> = schedule(1, 0, 3, 1).iter().map(|k| k.at).collect();
        let slice = (LAST - FIRST) / 3.0;
        for (k, at) in s.iter().enumerate() {
            let start = FIRST + slice * k as f64;
            assert!(*at > start && *at < start + slice, "{at} not in slice {k}");
        }
    }

    #[test]
    fn progress_weighs_submission_and_drain() {
        assert_eq!(progress(100, 0, 0), 0.0);
        assert_eq!(progress(100, 100, 0), 0.25);
        assert_eq!(progress(100, 100, 100), 1.0);
    }
}
