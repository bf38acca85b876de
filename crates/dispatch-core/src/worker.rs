//! Workers as the core sees them: what they run, how much, and their lease.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use crate::{Millis, TaskId, WorkerId};

/// What a worker declares when it registers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerSpec {
    /// A human-readable name (host, pod, process); not necessarily unique.
    pub name: String,
    /// The task types it runs; never empty.
    pub types: Vec<Arc<str>>,
    /// Free-form labels describing the worker.
    pub labels: BTreeMap<String, String>,
    /// How many tasks it runs at once (>= 1).
    pub capacity: u32,
    /// Its share under `weighted_round_robin` (>= 1).
    pub weight: u32,
}

impl WorkerSpec {
    /// A spec with no labels.
    pub fn new<'a>(name: &str, types: impl IntoIterator<Item = &'a str>, capacity: u32) -> Self {
        WorkerSpec {
            name: name.to_owned(),
            types: types.into_iter().map(Arc::from).collect(),
            labels: BTreeMap::new(),
            capacity,
            weight: 1,
        }
    }
}

/// Whether a worker is taking tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerState {
    /// Registered and within its lease.
    Active,
}

impl WorkerState {
    /// The contract name of the state.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Active => "active",
        }
    }
}

/// A registered worker held by the [`crate::Scheduler`].
#[derive(Clone, Debug)]
pub struct Worker {
    /// Its identity.
    pub id: WorkerId,
    /// What it declared at registration.
    pub spec: WorkerSpec,
    /// Its state.
    pub state: WorkerState,
    /// When it registered.
    pub registered_at: Millis,
    /// Last time it heartbeated, polled or reported.
    pub last_seen_at: Millis,
    /// Tasks holding one of its slots: assigned to it (still `Queued`
    /// until it collects them) or collected (`Running`).
    pub running: BTreeSet<TaskId>,
    /// Tasks assigned to it but not yet collected (by a poll, or pushed on
    /// its stream), oldest assignment first, with the time of assignment.
    pub(crate) undelivered: VecDeque<(TaskId, Millis)>,
    /// The credit it granted and assignments have not used yet (a stream);
    /// `None` for a worker that takes up to its capacity whenever it has
    /// room (HTTP), which must collect what it is given in time.
    pub(crate) demand: Option<u32>,
    /// A worker without credit that let an assignment wait too long: it is
    /// given nothing until it polls again.
    pub(crate) stalled: bool,
    /// When its oldest uncollected assignment must be collected by, while
    /// that is being watched.
    pub(crate) collect_by: Option<Millis>,
    /// Collected tasks that were cancelled or timed out and that the worker
    /// must be told to stop; repeated until the worker reports the task or
    /// goes.
    pub(crate) cancel_notices: Vec<TaskId>,
    /// How many polls handed it tasks: each such answer carries its number
    /// (see [`crate::Scheduler::reconcile`]).
    pub handouts: u32,
    /// Tasks completed over its lifetime.
    pub completed: u64,
    /// Tasks failed over its lifetime.
    pub failed: u64,
}

impl Worker {
    /// Tasks it holds right now.
    pub fn in_flight(&self) -> u32 {
        self.running.len() as u32
    }

    /// True for a worker that takes tasks only against the credit it
    /// granted (the gRPC stream), false for one that polls (HTTP).
    pub fn streaming(&self) -> bool {
        self.demand.is_some()
    }

    /// Slots it has free for new tasks, and asks to fill now.
    pub fn free_slots(&self) -> u32 {
        self.room().min(self.asks())
    }

    /// How many tasks it asks for now, whatever its room.
    pub(crate) fn asks(&self) -> u32 {
        if self.stalled {
            0
        } else {
            self.demand.unwrap_or(u32::MAX)
        }
    }

    /// Slots it has free, whether or not it asks for tasks now.
    pub fn room(&self) -> u32 {
        self.spec.capacity.saturating_sub(self.in_flight())
    }

    /// Tasks it must stop, as last told.
    pub fn cancel_notices(&self) -> &[TaskId] {
        &self.cancel_notices
    }

    /// True when it carries every label in `required` with the same value.
    pub fn has_labels(&self, required: &BTreeMap<String, String>) -> bool {
        required
            .iter()
            .all(|(k, v)| self.spec.labels.get(k) == Some(v))
    }

    /// True when it registered the task type.
    pub fn handles(&self, kind: &str) -> bool {
        self.spec.types.iter().any(|t| &**t == kind)
    }
}
