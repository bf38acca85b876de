//! Timeouts and dependencies: how attempts end without a report, and how a
//! task waits for its parents. Time is simulated; nothing sleeps.

use dispatch_core::{
    Config, CoreError, Event, Scheduler, TaskId, TaskSpec, TaskState, Transition, WorkerId,
    WorkerSpec,
};

fn scheduler() -> Scheduler<()> {
    Scheduler::new(
        Config {
            lease_ms: 60_000,
            ..Config::default()
        },
        7,
    )
}

fn worker(s: &mut Scheduler<()>, capacity: u32) -> WorkerId {
    s.register_worker(WorkerSpec::new("w", ["job"], capacity), 0)
}

fn submit(s: &mut Scheduler<()>, id: u64, spec: TaskSpec) -> TaskId {
    s.submit(TaskId(id), spec, (), 0).unwrap();
    TaskId(id)
}

fn job() -> TaskSpec {
    TaskSpec::new("job")
}

fn timed(timeout_ms: u64, max_attempts: u32) -> TaskSpec {
    TaskSpec {
        timeout_ms: Some(timeout_ms),
        max_attempts,
        ..job()
    }
}

fn state(s: &Scheduler<()>, id: TaskId) -> Option<TaskState> {
    s.task(id).map(|t| t.state)
}

fn terminal(s: &mut Scheduler<()>) -> Vec<Transition> {
    s.drain_events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Transition(t) if t.state.is_terminal() => Some(t),
            _ => None,
        })
        .collect()
}

/// Runs every assigned task of `w` to success at `now`.
fn complete_all(s: &mut Scheduler<()>, w: WorkerId, now: u64) -> Vec<TaskId> {
    s.tick(now);
    let ids = s.poll(w, 100, now).unwrap();
    for id in &ids {
        s.complete(*id, w, now).unwrap();
    }
    ids
}

#[test]
fn a_timed_out_attempt_fails_with_timeout_and_the_worker_is_told() {
    let mut s = scheduler();
    let w = worker(&mut s, 1);
    let t = submit(&mut s, 1, timed(100, 2));
    s.tick(0);
    assert_eq!(s.poll(w, 1, 0).unwrap(), vec![t]);
    s.tick(99);
    assert_eq!(state(&s, t), Some(TaskState::Running));
    assert_eq!(s.next_deadline(), Some(100));
    s.tick(100);
    let task = s.task(t).unwrap();
    assert_ne!(task.state, TaskState::Running);
    assert_eq!(
        task.last_error.as_deref(),
        Some("timeout after 100 ms (the task's timeout_ms)")
    );
    assert_eq!(s.heartbeat(w, 101).unwrap(), vec![t]);
    assert_eq!(s.worker(w).unwrap().in_flight(), 0);
    assert_eq!(
        s.complete(t, w, 102),
        Err(CoreError::NotLeased { task: t, worker: w })
    );
    s.check_invariants().unwrap();
}

#[test]
fn the_last_attempt_timing_out_makes_the_task_dead() {
    let mut s = scheduler();
    let w = worker(&mut s, 1);
    let t = submit(&mut s, 1, timed(50, 1));
    s.tick(0);
    s.poll(w, 1, 0).unwrap();
    s.drain_events();
    s.tick(50);
    let ended = terminal(&mut s);
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].state, TaskState::Dead);
    assert_eq!(
        ended[0].error.as_deref(),
        Some("timeout after 50 ms (the task's timeout_ms)")
    );
    assert!(s.task(t).is_none());
    s.check_invariants().unwrap();
}

#[test]
fn the_timeout_clock_starts_when_the_worker_collects_the_task() {
    let mut s = scheduler();
    let w = worker(&mut s, 1);
    let t = submit(&mut s, 1, timed(100, 1));
    s.tick(0);
    // Assigned at 0 but collected at 70: the attempt may run until 170.
    s.tick(150);
    assert_eq!(s.poll(w, 1, 70).unwrap(), vec![t]);
    s.tick(169);
    assert_eq!(state(&s, t), Some(TaskState::Running));
    s.tick(170);
    assert!(s.task(t).is_none());
    s.check_invariants().unwrap();
}

#[test]
fn a_completed_attempt_leaves_no_deadline_behind() {
    let mut s = scheduler();
    let w = worker(&mut s, 1);
    submit(&mut s, 1, timed(100, 1));
    complete_all(&mut s, w, 10);
    assert_eq!(
        s.next_deadline(),
        Some(60_000),
        "only the lease check is left"
    );
    s.check_invariants().unwrap();
}

#[test]
fn a_child_runs_only_after_every_parent_succeeded() {
    let mut s = scheduler();
    let w = worker(&mut s, 10);
    let a = submit(&mut s, 1, job());
    let b = submit(&mut s, 2, job());
    let c = submit(&mut s, 3, job());
    assert_eq!(
        s.hold_for_parents(c, &[a, b, a]).unwrap(),
        Vec::<TaskId>::new()
    );
    assert_eq!(state(&s, c), Some(TaskState::Scheduled));
    s.check_invariants().unwrap();

    s.tick(1);
    let first = s.poll(w, 10, 1).unwrap();
    assert_eq!(first, vec![a, b], "the child is not assigned while waiting");
    s.complete(a, w, 2).unwrap();
    s.tick(2);
    assert_eq!(state(&s, c), Some(TaskState::Scheduled));
    s.complete(b, w, 3).unwrap();
    assert_eq!(state(&s, c), Some(TaskState::Queued));
    s.tick(3);
    assert_eq!(s.poll(w, 10, 3).unwrap(), vec![c]);
    s.check_invariants().unwrap();
}

#[test]
fn a_failed_parent_cancels_its_descendants_with_a_reason() {
    let mut s = scheduler();
    let w = worker(&mut s, 10);
    let parent = submit(
        &mut s,
        1,
        TaskSpec {
            max_attempts: 1,
            ..job()
        },
    );
    let child = submit(&mut s, 2, job());
    let grandchild = submit(&mut s, 3, job());
    s.hold_for_parents(child, &[parent]).unwrap();
    s.hold_for_parents(grandchild, &[child]).unwrap();
    s.tick(1);
    s.poll(w, 10, 1).unwrap();
    s.drain_events();
    s.fail(parent, w, "boom".into(), None, false, 2).unwrap();
    let ended = terminal(&mut s);
    let got: Vec<_> = ended.iter().map(|t| (t.task, t.state)).collect();
    assert_eq!(
        got,
        vec![
            (parent, TaskState::Dead),
            (child, TaskState::Cancelled),
            (grandchild, TaskState::Cancelled)
        ]
    );
    assert_eq!(ended[1].error.as_deref(), Some("parent task 1 ended dead"));
    assert_eq!(
        ended[2].error.as_deref(),
        Some("parent task 2 ended cancelled")
    );
    assert_eq!(s.live_tasks(), 0);
    s.check_invariants().unwrap();
}

#[test]
fn parents_the_core_no_longer_holds_are_resolved_by_the_caller() {
    let mut s = scheduler();
    let live = submit(&mut s, 1, job());
    let child = submit(&mut s, 5, job());
    let gone = TaskId(2);
    assert_eq!(
        s.hold_for_parents(child, &[live, gone]).unwrap(),
        vec![gone]
    );
    s.parent_ended(child, gone, TaskState::Succeeded, 1);
    assert_eq!(
        state(&s, child),
        Some(TaskState::Scheduled),
        "still waits for 1"
    );

    let other = submit(&mut s, 6, job());
    s.hold_for_parents(other, &[gone]).unwrap();
    s.parent_ended(other, gone, TaskState::Cancelled, 1);
    assert!(s.task(other).is_none());
    s.check_invariants().unwrap();
}

#[test]
fn a_child_due_later_gets_its_timer_once_its_parents_succeeded() {
    let mut s = scheduler();
    let w = worker(&mut s, 10);
    let parent = submit(&mut s, 1, job());
    let child = submit(
        &mut s,
        2,
        TaskSpec {
            run_at: Some(500),
            ..job()
        },
    );
    s.hold_for_parents(child, &[parent]).unwrap();
    complete_all(&mut s, w, 10);
    assert_eq!(state(&s, child), Some(TaskState::Scheduled));
    assert_eq!(s.task(child).unwrap().ready_at, Some(500));
    s.tick(500);
    assert_eq!(state(&s, child), Some(TaskState::Queued));
    assert_eq!(s.task(child).unwrap().worker, Some(w));
    assert_eq!(s.poll(w, 10, 500).unwrap(), vec![child]);
    assert_eq!(state(&s, child), Some(TaskState::Running));
    s.check_invariants().unwrap();
}

#[test]
fn cancelling_a_waiting_child_is_final() {
    let mut s = scheduler();
    let w = worker(&mut s, 10);
    let parent = submit(&mut s, 1, job());
    let child = submit(&mut s, 2, job());
    s.hold_for_parents(child, &[parent]).unwrap();
    s.cancel(child, "no longer needed".into(), 1).unwrap();
    complete_all(&mut s, w, 2);
    assert!(s.task(child).is_none());
    s.check_invariants().unwrap();
}

#[test]
fn a_long_chain_is_cancelled_without_deep_recursion() {
    let mut s = scheduler();
    let n = 20_000u64;
    for id in 1..=n {
        submit(&mut s, id, job());
        if id > 1 {
            s.hold_for_parents(TaskId(id), &[TaskId(id - 1)]).unwrap();
        }
    }
    s.cancel(TaskId(1), "stop".into(), 1).unwrap();
    assert_eq!(s.live_tasks(), 0);
    assert_eq!(terminal(&mut s).len(), n as usize);
}

#[test]
fn a_lost_worker_hands_its_tasks_over_at_once_and_the_attempt_counts() {
    let mut s = scheduler();
    let a = worker(&mut s, 1);
    let t = submit(&mut s, 1, job());
    s.tick(0);
    assert_eq!(s.poll(a, 1, 0).unwrap(), vec![t]);
    let b = worker(&mut s, 1);
    s.lose_worker(a, 5).unwrap();
    s.tick(5);
    assert_eq!(s.poll(b, 1, 5).unwrap(), vec![t]);
    let task = s.task(t).unwrap();
    assert_eq!(
        (task.state, task.worker, task.attempts),
        (TaskState::Running, Some(b), 2)
    );
    assert_eq!(s.lose_worker(a, 6), Err(CoreError::UnknownWorker(a)));
    s.check_invariants().unwrap();
}
