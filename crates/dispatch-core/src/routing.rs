//! Routing strategies: which of the workers able to take a task gets it.
//!
//! Each strategy is a small pure function over the [`Candidate`]s of the
//! task's type (the workers that registered it, in registration order, with
//! their load) and a `fits` predicate (the worker carries the task's
//! required labels); none allocates. Most pick among the fitting candidates
//! with a free slot; `consistent_hash` and `failover` pick one worker among
//! all fitting candidates and return `None` while that worker is full, so
//! that the task waits for it rather than going elsewhere.

use crate::WorkerId;

/// How to choose a worker for a task.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// Each next task to the next worker in turn.
    #[default]
    RoundRobin,
    /// In turn, in proportion to the workers' weights (smooth weighted
    /// round robin, as nginx does it).
    WeightedRoundRobin,
    /// Uniformly at random (from the scheduler's seeded generator).
    Random,
    /// The worker with the lowest in-flight / capacity ratio.
    LeastLoaded,
    /// Rendezvous hashing on the task's routing key: a key always goes to
    /// the same worker while it is registered, and removing a worker moves
    /// only its own keys.
    ConsistentHash,
    /// The first registered worker that is still alive.
    Failover,
    /// One copy per matching worker. The shell expands the task into copies
    /// pinned to each worker and a join that waits for them.
    Broadcast,
    /// N shards. The shell expands the task into shards (routed round
    /// robin, each told its index and the total) and a join.
    Sharding,
}

impl Strategy {
    /// Every strategy the core routes by.
    pub const ALL: [Strategy; 8] = [
        Strategy::RoundRobin,
        Strategy::WeightedRoundRobin,
        Strategy::Random,
        Strategy::LeastLoaded,
        Strategy::ConsistentHash,
        Strategy::Failover,
        Strategy::Broadcast,
        Strategy::Sharding,
    ];

    /// True for the strategies that expand one task into several.
    pub fn fans_out(self) -> bool {
        matches!(self, Strategy::Broadcast | Strategy::Sharding)
    }

    /// The contract name.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::RoundRobin => "round_robin",
            Strategy::WeightedRoundRobin => "weighted_round_robin",
            Strategy::Random => "random",
            Strategy::LeastLoaded => "least_loaded",
            Strategy::ConsistentHash => "consistent_hash",
            Strategy::Failover => "failover",
            Strategy::Broadcast => "broadcast",
            Strategy::Sharding => "sharding",
        }
    }

    /// Parses a contract name.
    pub fn parse(s: &str) -> Option<Strategy> {
        Strategy::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A worker of one task type, as routing sees it. The scheduler keeps one
/// per (type, worker) in registration order and updates it on every
/// assignment and release, so that a decision reads one contiguous array
/// instead of looking every worker up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Candidate {
    pub(crate) id: WorkerId,
    pub(crate) in_flight: u32,
    pub(crate) capacity: u32,
    /// The worker's demand (`u32::MAX` when it takes up to its capacity).
    pub(crate) demand: u32,
    pub(crate) weight: u32,
    /// Current weight of the smooth weighted round robin.
    pub(crate) current: i64,
}

impl Candidate {
    pub(crate) fn new(id: WorkerId, capacity: u32, weight: u32) -> Self {
        Candidate {
            id,
            in_flight: 0,
            capacity,
            demand: u32::MAX,
            weight,
            current: 0,
        }
    }

    /// Slots it has free for new tasks.
    pub(crate) fn free(&self) -> u32 {
        self.capacity
            .saturating_sub(self.in_flight)
            .min(self.demand)
    }
}

/// The next fitting candidate with a free slot at or after `cursor`, the
/// candidates taken as a ring in registration order; the cursor moves past
/// the one chosen.
pub(crate) fn round_robin(
    cands: &[Candidate],
    cursor: &mut usize,
    fits: impl Fn(&Candidate) -> bool,
) -> Option<WorkerId> {
    let n = cands.len();
    let i = (0..n)
        .map(|step| (*cursor + step) % n)
        .find(|&i| cands[i].free() > 0 && fits(&cands[i]))?;
    *cursor = (i + 1) % n;
    Some(cands[i].id)
}

/// Smooth weighted round robin over the candidates that `fit` and have a
/// free slot: every such candidate's current weight grows by its weight,
/// the largest wins and gives back the total. Over any window each worker
/// is chosen in proportion to its weight, interleaved rather than in bursts.
pub(crate) fn weighted_round_robin(
    cands: &mut [Candidate],
    fits: impl Fn(&Candidate) -> bool,
) -> Option<WorkerId> {
    let mut total: i64 = 0;
    let mut best: Option<(i64, usize)> = None;
    for (i, c) in cands.iter_mut().enumerate() {
        if c.free() == 0 || !fits(c) {
            continue;
        }
        c.current += i64::from(c.weight);
        total += i64::from(c.weight);
        if best.is_none_or(|(b, _)| c.current > b) {
            best = Some((c.current, i));
        }
    }
    let (_, i) = best?;
    cands[i].current -= total;
    Some(cands[i].id)
}

/// A uniformly chosen candidate that fits and has a free slot; `unit`
/// draws a sample in `[0, 1)`, only when there is a choice to make.
pub(crate) fn random(
    cands: &[Candidate],
    fits: impl Fn(&Candidate) -> bool,
    unit: impl FnOnce() -> f64,
) -> Option<WorkerId> {
    let eligible = |c: &&Candidate| c.free() > 0 && fits(c);
    let n = cands.iter().filter(eligible).count();
    if n == 0 {
        return None;
    }
    let i = ((unit() * n as f64) as usize).min(n - 1);
    cands.iter().filter(eligible).nth(i).map(|c| c.id)
}

/// The candidate that fits, has a free slot and the lowest in-flight /
/// capacity ratio; ties go to the earliest candidate.
pub(crate) fn least_loaded(
    cands: &[Candidate],
    fits: impl Fn(&Candidate) -> bool,
) -> Option<WorkerId> {
    cands
        .iter()
        .filter(|c| c.free() > 0 && fits(c))
        // a/b < c/d  <=>  a*d < c*b, without floating point.
        .min_by(|a, b| {
            (u64::from(a.in_flight) * u64::from(b.capacity))
                .cmp(&(u64::from(b.in_flight) * u64::from(a.capacity)))
        })
        .map(|c| c.id)
}

/// The position of the fitting candidate with the highest rendezvous score
/// for `key`, full or not.
pub(crate) fn rendezvous(
    cands: &[Candidate],
    fits: impl Fn(&Candidate) -> bool,
    key: &str,
) -> Option<usize> {
    let h = fnv1a(key.as_bytes());
    cands
        .iter()
        .enumerate()
        .filter(|(_, c)| fits(c))
        .max_by_key(|(_, c)| (mix(h ^ c.id.get().rotate_left(17)), c.id))
        .map(|(i, _)| i)
}

/// 64-bit FNV-1a: a stable hash of the routing key (the standard library's
/// hasher is randomly seeded per process, which would move keys on restart).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The SplitMix64 finalizer: spreads a combined key-worker value uniformly.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wid(n: u64) -> WorkerId {
        WorkerId::new(n).expect("not 0")
    }

    fn cands(n: u64) -> Vec<Candidate> {
        (1..=n)
            .map(|i| Candidate::new(wid(i * 7919), 1, 1))
            .collect()
    }

    fn any(_: &Candidate) -> bool {
        true
    }

    #[test]
    fn names_round_trip() {
        for s in Strategy::ALL {
            assert_eq!(Strategy::parse(s.as_str()), Some(s));
        }
        assert_eq!(Strategy::parse("fastest"), None);
    }

    #[test]
    fn weighted_round_robin_follows_the_weights_smoothly() {
        let mut c = cands(3);
        c[0].weight = 5;
        c[1].weight = 1;
        c[2].weight = 1;
        let picks: Vec<WorkerId> = (0..7)
            .map(|_| weighted_round_robin(&mut c, any).unwrap())
            .collect();
        let heavy = picks.iter().filter(|&&w| w == c[0].id).count();
        assert_eq!(heavy, 5);
        // Smooth: the heavy worker never runs three in a row here.
        assert_ne!(picks[..3], [c[0].id; 3]);
    }

    #[test]
    fn strategies_skip_candidates_that_do_not_fit_or_are_full() {
        let mut c = cands(4);
        c[0].in_flight = 1;
        let not_second = |x: &Candidate| x.id != wid(2 * 7919);
        assert_eq!(least_loaded(&c, not_second), Some(c[2].id));
        assert_eq!(weighted_round_robin(&mut c, not_second), Some(c[2].id));
        assert_eq!(random(&c, not_second, || 0.99), Some(c[3].id));
        assert_eq!(random(&c, |_| false, || unreachable!("no choice")), None);
    }

    #[test]
    fn least_loaded_compares_ratios() {
        let mut c = cands(2);
        c[0].in_flight = 3;
        c[0].capacity = 4;
        c[1].in_flight = 1;
        c[1].capacity = 2;
        assert_eq!(least_loaded(&c, any), Some(c[1].id));
    }

    #[test]
    fn rendezvous_moves_only_the_removed_workers_keys() {
        let all = cands(10);
        let keys: Vec<String> = (0..2_000).map(|i| format!("customer-{i}")).collect();
        let before: Vec<WorkerId> = keys
            .iter()
            .map(|k| all[rendezvous(&all, any, k).unwrap()].id)
            .collect();
        let removed = all[3].id;
        let rest: Vec<Candidate> = all.iter().copied().filter(|c| c.id != removed).collect();
        for (k, was) in keys.iter().zip(&before) {
            let now = rest[rendezvous(&rest, any, k).unwrap()].id;
            if *was != removed {
                assert_eq!(now, *was, "{k} moved although its worker stayed");
            }
            // Filtering the worker out is the same as removing it.
            assert_eq!(
                all[rendezvous(&all, |c| c.id != removed, k).unwrap()].id,
                now
            );
        }
        let share = before.iter().filter(|&&w| w == removed).count() as f64 / keys.len() as f64;
        assert!(
            (share - 0.1).abs() < 0.03,
            "the removed worker had {share} of the keys"
        );
    }
}
