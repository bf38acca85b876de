//! The scheduling brain of Dispatch, with no I/O.
//!
//! [`Scheduler`] holds every live (non-terminal) task and every registered
//! worker. The server feeds it inputs — a task was submitted, a worker
//! registered, polled, heartbeated, completed or failed a task, the clock
//! moved — and it answers with [`Event`]s: the state transitions the server
//! must persist and the assignments it must deliver.
//!
//! Time is always a parameter ([`Millis`], milliseconds since the Unix epoch):
//! this crate never reads a clock, a socket or a file, and randomness (retry
//! jitter) comes from a PRNG seeded by the caller. The same inputs therefore
//! always give the same outputs, which is what lets the property tests and the
//! seeded simulation in `tests/` replay any failure exactly.
//!
//! ```
//! use dispatch_core::{Scheduler, Config, TaskId, TaskSpec, WorkerSpec, TaskState};
//!
//! let mut s: Scheduler<()> = Scheduler::new(Config::default(), 7);
//! let w = s.register_worker(WorkerSpec::new("w1", ["email"], 2), 0);
//! s.submit(TaskId(1), TaskSpec::new("email"), (), 0).unwrap();
//! s.tick(0);
//! assert_eq!(s.poll(w, 10, 1).unwrap(), vec![TaskId(1)]);
//! s.complete(TaskId(1), w, 5).unwrap();
//! let last = s.drain_events().into_iter().last().unwrap();
//! assert!(matches!(last, dispatch_core::Event::Transition(t) if t.state == TaskState::Succeeded));
//! ```

mod backoff;
#[cfg(test)]
mod dispatch_equivalence;
mod queues;
mod rng;
mod routing;
mod scheduler;
mod table;
mod task;
mod worker;

pub use backoff::Backoff;
pub use queues::{QueueConfig, QueueInfo, TypeConfig};
pub use routing::Strategy;
pub use scheduler::{AttemptEnd, AttemptOutcome, Config, CoreError, Event, Scheduler, Transition};
pub use task::{Task, TaskSpec, TaskState};
pub use worker::{Worker, WorkerSpec, WorkerState};

/// Milliseconds since the Unix epoch. The core's only notion of time.
pub type Millis = u64;

/// A task's identity, assigned by the server before the task reaches the core.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(pub u64);

/// A registered worker's identity, assigned by the scheduler at registration.
///
/// Never 0, so that an `Option<WorkerId>` takes 8 bytes: a live task holds
/// two of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerId(std::num::NonZeroU64);

impl WorkerId {
    /// The worker id with this number, if it is not 0.
    pub const fn new(n: u64) -> Option<WorkerId> {
        match std::num::NonZeroU64::new(n) {
            Some(n) => Some(WorkerId(n)),
            None => None,
        }
    }

    /// Its number.
    pub const fn get(self) -> u64 {
        self.0.get()
    }
}

impl std::fmt::Display for TaskId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::fmt::Display for WorkerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "w{:016x}", self.0)
    }
}

impl std::str::FromStr for TaskId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(TaskId)
    }
}

impl std::str::FromStr for WorkerId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex = s.strip_prefix('w').unwrap_or(s);
        match WorkerId::new(u64::from_str_radix(hex, 16)?) {
            Some(id) => Ok(id),
            // The standard "number would be zero" error, which only the
            // standard parser can make.
            None => "0".parse().map(WorkerId),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::num::IntErrorKind;

    use super::WorkerId;

    #[test]
    fn worker_ids_parse_from_their_display_and_never_as_zero() {
        let id = WorkerId::new(0xdead_beef).expect("not 0");
        assert_eq!(id.to_string().parse::<WorkerId>(), Ok(id));
        assert_eq!("deadbeef".parse::<WorkerId>(), Ok(id));
        let zero = "w0000000000000000".parse::<WorkerId>().expect_err("0");
        assert_eq!(zero.kind(), &IntErrorKind::Zero);
        let junk = "wxyz".parse::<WorkerId>().expect_err("not hex");
        assert_eq!(junk.kind(), &IntErrorKind::InvalidDigit);
    }
}
