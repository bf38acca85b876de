//! Checks shared by the property tests and the simulation.
//!
//! They recompute the safety properties from the public API alone, so that a
//! bug in `Scheduler::check_invariants` cannot hide a bug in the scheduler.

#![allow(dead_code)] // Each test binary uses its own part of it.

use std::collections::{BTreeMap, BTreeSet};

use dispatch_core::{Event, Scheduler, TaskId, TaskState, Transition, WorkerId};

/// The case count of a property: `PROPTEST_CASES` when set (for longer
/// local runs), else `default`.
pub(crate) fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The task types each worker declared, as the test registered them.
pub(crate) type Registered = BTreeMap<WorkerId, BTreeSet<String>>;

/// Checks the safety properties from the public view of the scheduler: no
/// task is leased to two workers, no worker exceeds its capacity, no worker
/// holds a type it did not register, `Running` tasks and worker leases agree,
/// and no task starts more attempts than it is allowed.
pub(crate) fn check_safety<B>(s: &Scheduler<B>, registered: &Registered) -> Result<(), String> {
    let mut holder: BTreeMap<TaskId, WorkerId> = BTreeMap::new();
    for w in s.workers() {
        let declared = registered
            .get(&w.id)
            .ok_or_else(|| format!("worker {} was never registered by the test", w.id))?;
        // Compared without allocating: this runs after every simulated step.
        let same_types = w.spec.types.len() == declared.len()
            && w.spec.types.iter().all(|t| declared.contains(&**t));
        if !same_types {
            return Err(format!(
                "worker {} types {:?}, registered {declared:?}",
                w.id, w.spec.types
            ));
        }
        if w.in_flight() as usize != w.running.len() {
            return Err(format!(
                "worker {} in_flight {} vs {} running",
                w.id,
                w.in_flight(),
                w.running.len()
            ));
        }
        if w.running.len() > w.spec.capacity as usize {
            return Err(format!(
                "worker {} holds {} tasks, capacity {}",
                w.id,
                w.running.len(),
                w.spec.capacity
            ));
        }
        for &t in &w.running {
            if let Some(other) = holder.insert(t, w.id) {
                return Err(format!("task {t} leased to both {other} and {}", w.id));
            }
            let task = s
                .task(t)
                .ok_or_else(|| format!("worker {} holds task {t} the scheduler forgot", w.id))?;
            if !declared.contains(&*task.spec.kind) || !w.handles(&task.spec.kind) {
                return Err(format!(
                    "worker {} holds task {t} of type {} it did not register",
                    w.id, task.spec.kind
                ));
            }
            // Held: collected (`Running`) or assigned and not collected yet
            // (still `Queued`).
            let held = matches!(task.state, TaskState::Running | TaskState::Queued);
            if !held || task.worker != Some(w.id) {
                return Err(format!(
                    "task {t} on worker {} is {:?} held by {:?}",
                    w.id, task.state, task.worker
                ));
            }
        }
    }
    for t in s.tasks() {
        if t.state.is_terminal() {
            return Err(format!("terminal task {} is still live", t.id));
        }
        if t.attempts > t.spec.max_attempts {
            return Err(format!(
                "task {} started {} of {} attempts",
                t.id, t.attempts, t.spec.max_attempts
            ));
        }
        if t.state == TaskState::Running && holder.get(&t.id) != t.worker.as_ref() {
            return Err(format!(
                "running task {} claims worker {:?}, held by {:?}",
                t.id,
                t.worker,
                holder.get(&t.id)
            ));
        }
    }
    Ok(())
}

/// What the events say about every task: the last state of each live task,
/// and the one terminal transition of each finished task.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    /// Live tasks and the state the events last reported.
    pub(crate) live: BTreeMap<TaskId, TaskState>,
    /// Finished tasks and their terminal transition.
    pub(crate) terminal: BTreeMap<TaskId, Transition>,
}

impl Ledger {
    /// Records a submission, which emits no event, in the state it must start in.
    pub(crate) fn submitted(&mut self, id: TaskId, state: TaskState) {
        assert!(
            !self.live.contains_key(&id) && !self.terminal.contains_key(&id),
            "the test submitted {id} twice"
        );
        self.live.insert(id, state);
    }

    /// Applies drained events, refusing any transition of a task that is not
    /// live (unknown, or already terminal: a second terminal transition).
    pub(crate) fn apply(&mut self, events: &[Event]) -> Result<(), String> {
        for e in events {
            let Event::Transition(t) = e else { continue };
            if let Some(first) = self.terminal.get(&t.task) {
                return Err(format!(
                    "task {} moved to {:?} after its terminal {:?}",
                    t.task, t.state, first.state
                ));
            }
            if !self.live.contains_key(&t.task) {
                return Err(format!("transition of a task never submitted: {t:?}"));
            }
            if t.state.is_terminal() {
                if t.finished_at.is_none() {
                    return Err(format!("terminal transition without finished_at: {t:?}"));
                }
                self.live.remove(&t.task);
                self.terminal.insert(t.task, t.clone());
            } else {
                self.live.insert(t.task, t.state);
            }
        }
        Ok(())
    }

    /// Checks that the scheduler holds exactly the live tasks, each in the
    /// state its last event announced: no transition went unreported.
    pub(crate) fn check_against<B>(&self, s: &Scheduler<B>) -> Result<(), String> {
        if s.live_tasks() != self.live.len() {
            return Err(format!(
                "scheduler holds {} tasks, events say {} live",
                s.live_tasks(),
                self.live.len()
            ));
        }
        for (&id, &state) in &self.live {
            let task = s
                .task(id)
                .ok_or_else(|| format!("task {id} vanished without a terminal transition"))?;
            if task.state != state {
                return Err(format!(
                    "task {id} is {:?} but the last event said {state:?}",
                    task.state
                ));
            }
        }
        Ok(())
    }

    /// Terminal tasks per state: (succeeded, dead, cancelled).
    pub(crate) fn tally(&self) -> (usize, usize, usize) {
        let count = |st| self.terminal.values().filter(|t| t.state == st).count();
        (
            count(TaskState::Succeeded),
            count(TaskState::Dead),
            count(TaskState::Cancelled),
        )
    }
}
