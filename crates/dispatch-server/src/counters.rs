//! [`Metrics`]: the process-wide counters the app keeps (submissions,
//! transitions, lost workers, purges, requests); `metrics` serves them.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use dispatch_core::TaskState;

/// Process-wide counters. Gauges are read from the core at scrape time.
#[derive(Default)]
pub(crate) struct Metrics {
    pub(crate) submitted: AtomicU64,
    /// Transitions into each state, indexed like `TaskState::ALL`.
    transitions: [AtomicU64; 6],
    pub(crate) workers_lost: AtomicU64,
    /// Finished tasks deleted after the retention period.
    pub(crate) purged: AtomicU64,
    /// Requests by (route, status).
    pub(crate) requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// Attempts started, succeeded and failed per second, for the
    /// dashboard's chart.
    pub(crate) throughput: crate::throughput::Throughput,
}

impl Metrics {
    /// Counts a transition into `to`.
    pub(crate) fn transition(&self, to: TaskState) {
        let i = TaskState::ALL.iter().position(|s| *s == to).unwrap_or(0);
        self.transitions[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Transitions into `to` so far.
    pub(crate) fn transitions(&self, to: TaskState) -> u64 {
        let i = TaskState::ALL.iter().position(|s| *s == to).unwrap_or(0);
        self.transitions[i].load(Ordering::Relaxed)
    }
}
