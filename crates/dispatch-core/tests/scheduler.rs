//! Example-based tests of the scheduler, one behaviour each.
//!
//! Every test drives the scheduler through its public inputs with explicit
//! times and ends by asking it to check its own invariants.

use dispatch_core::{
    AttemptEnd, AttemptOutcome, Backoff, Config, CoreError, Event, Millis, Scheduler, TaskId,
    TaskSpec, TaskState, Transition, WorkerId, WorkerSpec,
};

const LEASE: u64 = 10_000;

fn scheduler() -> Scheduler<()> {
    Scheduler::new(
        Config {
            lease_ms: LEASE,
            ..Config::default()
        },
        42,
    )
}

fn spec(kind: &str) -> TaskSpec {
    TaskSpec::new(kind)
}

fn with_priority(kind: &str, priority: i8) -> TaskSpec {
    TaskSpec {
        priority,
        ..TaskSpec::new(kind)
    }
}

fn with_attempts(kind: &str, max_attempts: u32) -> TaskSpec {
    TaskSpec {
        max_attempts,
        ..TaskSpec::new(kind)
    }
}

fn worker(s: &mut Scheduler<()>, types: &[&str], capacity: u32, now: Millis) -> WorkerId {
    s.register_worker(WorkerSpec::new("w", types.iter().copied(), capacity), now)
}

fn submit(s: &mut Scheduler<()>, id: u64, spec: TaskSpec, now: Millis) -> TaskId {
    s.submit(TaskId(id), spec, (), now).unwrap();
    TaskId(id)
}

fn state(s: &Scheduler<()>, id: TaskId) -> Option<TaskState> {
    s.task(id).map(|t| t.state)
}

/// The transitions among the drained events, dropping `WorkerLost`.
fn transitions(s: &mut Scheduler<()>) -> Vec<Transition> {
    s.drain_events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Transition(t) => Some(t),
            _ => None,
        })
        .collect()
}

fn states(ts: &[Transition]) -> Vec<(TaskId, TaskState)> {
    ts.iter().map(|t| (t.task, t.state)).collect()
}

fn ok(s: &Scheduler<()>) {
    s.check_invariants().unwrap();
}

/// Submits one task and runs it on a fresh single-slot worker; returns both.
fn running_task(s: &mut Scheduler<()>, spec: TaskSpec, now: Millis) -> (TaskId, WorkerId) {
    let kind = spec.kind.to_string();
    let w = worker(s, &[&kind], 1, now);
    let t = submit(s, 1, spec, now);
    s.tick(now);
    assert_eq!(s.poll(w, 10, now).unwrap(), vec![t]);
    s.drain_events();
    (t, w)
}

// ---- ordering and routing ---------------------------------------------

#[test]
fn higher_priority_runs_first_then_submission_order() {
    let mut s = scheduler();
    for (id, p) in [(1, 0), (2, 5), (3, -3), (4, 5), (5, 0), (6, 100), (7, -100)] {
        submit(&mut s, id, with_priority("email", p), 0);
    }
    let w = worker(&mut s, &["email"], 10, 0);
    s.tick(0);
    let order: Vec<u64> = s.poll(w, 10, 0).unwrap().iter().map(|t| t.0).collect();
    assert_eq!(order, vec![6, 2, 4, 1, 5, 3, 7]);
    ok(&s);
}

#[test]
fn priority_order_holds_across_types_for_a_shared_slot() {
    // One slot shared by two types: the best task of either type wins it.
    let mut s = scheduler();
    submit(&mut s, 1, with_priority("a", 1), 0);
    submit(&mut s, 2, with_priority("b", 9), 0);
    let w = worker(&mut s, &["a", "b"], 1, 0);
    s.tick(0);
    assert_eq!(s.poll(w, 10, 0).unwrap(), vec![TaskId(2)]);
    ok(&s);
}

#[test]
fn worker_only_gets_types_it_registered() {
    let mut s = scheduler();
    let mail = worker(&mut s, &["email"], 10, 0);
    let img = worker(&mut s, &["resize"], 10, 0);
    for id in 1..=3 {
        submit(&mut s, id, spec("email"), 0);
        submit(&mut s, 10 + id, spec("resize"), 0);
    }
    let orphan = submit(&mut s, 99, spec("pdf"), 0);
    s.tick(0);
    for (w, kind) in [(mail, "email"), (img, "resize")] {
        let got = s.poll(w, 10, 0).unwrap();
        assert_eq!(got.len(), 3);
        for t in got {
            assert_eq!(&*s.task(t).unwrap().spec.kind, kind);
        }
    }
    // Nobody runs "pdf": it waits in the queue.
    assert_eq!(state(&s, orphan), Some(TaskState::Queued));
    ok(&s);
}

#[test]
fn capacity_is_respected() {
    let mut s = scheduler();
    let w = worker(&mut s, &["email"], 2, 0);
    for id in 1..=5 {
        submit(&mut s, id, spec("email"), 0);
    }
    s.tick(0);
    assert_eq!(s.worker(w).unwrap().in_flight(), 2);
    let got = s.poll(w, 10, 0).unwrap();
    assert_eq!(got, vec![TaskId(1), TaskId(2)]);
    let queued = s.tasks().filter(|t| t.state == TaskState::Queued).count();
    assert_eq!(queued, 3);

    // A completion frees exactly one slot for the next tick.
    s.complete(TaskId(1), w, 1).unwrap();
    s.tick(1);
    assert_eq!(s.poll(w, 10, 1).unwrap(), vec![TaskId(3)]);
    assert_eq!(s.worker(w).unwrap().in_flight(), 2);
    ok(&s);
}

#[test]
fn round_robin_spreads_tasks_evenly_across_equal_workers() {
    let mut s = scheduler();
    let ws: Vec<WorkerId> = (0..4).map(|_| worker(&mut s, &["email"], 10, 0)).collect();
    for id in 1..=10 {
        submit(&mut s, id, spec("email"), 0);
    }
    s.tick(0);
    let counts: Vec<u32> = ws
        .iter()
        .map(|&w| s.worker(w).unwrap().in_flight())
        .collect();
    let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
    assert_eq!(counts.iter().sum::<u32>(), 10);
    assert!(max - min <= 1, "uneven spread {counts:?}");

    // The ring continues where it stopped instead of refilling the first worker.
    for id in 11..=12 {
        submit(&mut s, id, spec("email"), 0);
    }
    s.tick(0);
    let counts: Vec<u32> = ws
        .iter()
        .map(|&w| s.worker(w).unwrap().in_flight())
        .collect();
    assert_eq!(counts, vec![3, 3, 3, 3]);
    ok(&s);
}

// ---- poll and reports -------------------------------------------------

#[test]
fn poll_hands_over_at_most_max_oldest_assignment_first() {
    let mut s = scheduler();
    let w = worker(&mut s, &["email"], 10, 0);
    submit(&mut s, 1, with_priority("email", 0), 0);
    s.tick(0);
    // Assigned later but with a higher priority: still handed over second.
    submit(&mut s, 2, with_priority("email", 50), 1);
    submit(&mut s, 3, with_priority("email", 0), 1);
    s.tick(1);
    assert_eq!(s.undelivered(w), 3);
    assert_eq!(s.poll(w, 2, 2).unwrap(), vec![TaskId(1), TaskId(2)]);
    assert_eq!(s.poll(w, 2, 2).unwrap(), vec![TaskId(3)]);
    assert_eq!(s.poll(w, 2, 2).unwrap(), vec![]);
    // Handed-over tasks are still leased to the worker.
    assert_eq!(s.worker(w).unwrap().in_flight(), 3);
    ok(&s);
}

#[test]
fn complete_by_the_wrong_worker_is_not_leased() {
    let mut s = scheduler();
    let (t, w) = running_task(&mut s, spec("email"), 0);
    let other = worker(&mut s, &["email"], 1, 0);
    assert_eq!(
        s.complete(t, other, 1),
        Err(CoreError::NotLeased {
            task: t,
            worker: other
        })
    );
    // The refusal changed nothing: the owner can still complete it.
    assert_eq!(state(&s, t), Some(TaskState::Running));
    s.complete(t, w, 2).unwrap();
    ok(&s);
}

#[test]
fn complete_of_a_task_that_is_not_running_is_not_leased() {
    let mut s = scheduler();
    let w = worker(&mut s, &["email"], 1, 0);
    let queued = submit(&mut s, 1, spec("pdf"), 0);
    let done = submit(&mut s, 2, spec("email"), 0);
    s.tick(0);
    // Assigned but not collected: not the worker's to report yet.
    assert_eq!(
        s.complete(done, w, 1),
        Err(CoreError::NotLeased {
            task: done,
            worker: w
        })
    );
    assert_eq!(s.poll(w, 1, 1).unwrap(), vec![done]);
    s.complete(done, w, 1).unwrap();
    for t in [queued, done, TaskId(404)] {
        assert_eq!(
            s.complete(t, w, 2),
            Err(CoreError::NotLeased { task: t, worker: w })
        );
        assert_eq!(
            s.fail(t, w, "x".into(), None, false, 2),
            Err(CoreError::NotLeased { task: t, worker: w })
        );
    }
    assert_eq!(state(&s, queued), Some(TaskState::Queued));
    ok(&s);
}

#[test]
fn unknown_workers_and_duplicate_tasks_are_refused() {
    let mut s = scheduler();
    let ghost = WorkerId::new(7).expect("not 0");
    assert_eq!(s.poll(ghost, 1, 0), Err(CoreError::UnknownWorker(ghost)));
    assert_eq!(s.heartbeat(ghost, 0), Err(CoreError::UnknownWorker(ghost)));
    assert_eq!(s.deregister(ghost, 0), Err(CoreError::UnknownWorker(ghost)));
    let t = submit(&mut s, 1, spec("email"), 0);
    assert_eq!(
        s.submit(t, spec("email"), (), 0),
        Err(CoreError::DuplicateTask(t))
    );
    assert_eq!(
        s.restore(t, spec("email"), (), 1, None, 0),
        Err(CoreError::DuplicateTask(t))
    );
    assert_eq!(s.live_tasks(), 1);
    ok(&s);
}

// ---- failures and retries ---------------------------------------------

#[test]
fn fail_with_attempts_left_waits_for_the_backoff_then_requeues() {
    let backoff = Backoff {
        initial_ms: 1_000,
        max_ms: 60_000,
        multiplier: 2.0,
    };
    // Several seeds, so that the jitter takes several values.
    for seed in 0..20 {
        let mut s: Scheduler<()> = Scheduler::new(
            Config {
                lease_ms: LEASE,
                ..Config::default()
            },
            seed,
        );
        let task = TaskSpec {
            backoff,
            ..spec("email")
        };
        let (t, w) = running_task(&mut s, task, 0);
        let now = 100;
        s.fail(t, w, "boom".into(), None, false, now).unwrap();
        let ts = transitions(&mut s);
        assert_eq!(ts.len(), 1);
        let ready_at = ts[0].ready_at.expect("a retry has a time");
        assert!(
            (now + 500..=now + 1_000).contains(&ready_at),
            "seed {seed}: ready_at {ready_at} outside the jitter window"
        );
        assert_eq!(ts[0].state, TaskState::Scheduled);
        assert_eq!(ts[0].error.as_deref(), Some("boom"));
        assert_eq!(ts[0].attempts, 1);
        assert_eq!(s.worker(w).unwrap().in_flight(), 0);

        s.tick(ready_at - 1);
        assert_eq!(state(&s, t), Some(TaskState::Scheduled));
        assert!(transitions(&mut s).is_empty());

        // At its time it is queued and assigned to the free worker, which
        // starts the second attempt when it collects it.
        s.tick(ready_at);
        assert_eq!(states(&transitions(&mut s)), vec![(t, TaskState::Queued)]);
        assert_eq!(s.task(t).unwrap().worker, Some(w));
        assert_eq!(s.poll(w, 1, ready_at).unwrap(), vec![t]);
        let ts = transitions(&mut s);
        assert_eq!(states(&ts), vec![(t, TaskState::Running)]);
        assert_eq!(ts[0].attempts, 2);
        ok(&s);
    }
}

#[test]
fn retry_becomes_queued_when_no_worker_is_free() {
    let mut s = scheduler();
    let (t, w) = running_task(&mut s, spec("email"), 0);
    s.fail(t, w, "boom".into(), Some(300), false, 0).unwrap();
    s.deregister(w, 0).unwrap();
    s.tick(300);
    assert_eq!(state(&s, t), Some(TaskState::Queued));
    ok(&s);
}

#[test]
fn fail_with_retry_after_uses_it() {
    let mut s = scheduler();
    let (t, w) = running_task(&mut s, spec("email"), 0);
    s.fail(t, w, "slow down".into(), Some(7_000), false, 50)
        .unwrap();
    let task = s.task(t).unwrap();
    assert_eq!(task.state, TaskState::Scheduled);
    assert_eq!(task.ready_at, Some(7_050));
    assert_eq!(transitions(&mut s)[0].ready_at, Some(7_050));
    ok(&s);
}

#[test]
fn fail_with_retry_after_zero_requeues_at_once() {
    let mut s = scheduler();
    let (t, w) = running_task(&mut s, spec("email"), 0);
    s.fail(t, w, "again".into(), Some(0), false, 50).unwrap();
    assert_eq!(state(&s, t), Some(TaskState::Queued));
    ok(&s);
}

#[test]
fn fail_with_abort_is_dead_even_with_attempts_left() {
    let mut s = scheduler();
    let (t, w) = running_task(&mut s, with_attempts("email", 5), 0);
    s.fail(t, w, "bad input".into(), None, true, 10).unwrap();
    assert_eq!(
        s.task(t).map(|t| t.state),
        None,
        "terminal tasks leave the core"
    );
    let ts = transitions(&mut s);
    assert_eq!(states(&ts), vec![(t, TaskState::Dead)]);
    assert_eq!(ts[0].error.as_deref(), Some("bad input"));
    assert_eq!(ts[0].finished_at, Some(10));
    assert_eq!(s.worker(w).unwrap().in_flight(), 0);
    assert_eq!(s.worker(w).unwrap().failed, 1);
    ok(&s);
}

#[test]
fn failing_the_last_attempt_is_dead_with_its_error() {
    let mut s = scheduler();
    let (t, w) = running_task(&mut s, with_attempts("email", 2), 0);
    s.fail(t, w, "first".into(), Some(0), false, 1).unwrap();
    s.tick(1);
    assert_eq!(s.poll(w, 1, 1).unwrap(), vec![t]);
    s.fail(t, w, "second".into(), Some(0), false, 2).unwrap();
    let last = transitions(&mut s).pop().unwrap();
    assert_eq!(last.state, TaskState::Dead);
    assert_eq!(last.attempts, 2);
    assert_eq!(last.error.as_deref(), Some("second"));
    assert!(s.task(t).is_none());
    ok(&s);
}

// ---- leases -----------------------------------------------------------

#[test]
fn silent_worker_is_lost_and_its_tasks_go_to_another_worker_on_the_same_tick() {
    let mut s = scheduler();
    let (t, lost) = running_task(&mut s, spec("email"), 0);
    let heir = worker(&mut s, &["email"], 1, 0);
    s.heartbeat(heir, 5_000).unwrap();

    // The lease lasts exactly lease_ms.
    s.tick(LEASE - 1);
    assert!(s.worker(lost).is_some());

    s.tick(LEASE);
    let events = s.drain_events();
    assert!(events.contains(&Event::WorkerLost {
        worker: lost,
        at: LEASE
    }));
    let ts: Vec<&Transition> = events
        .iter()
        .filter_map(|e| match e {
            Event::Transition(t) => Some(t),
            _ => None,
        })
        .collect();
    assert_eq!(ts.len(), 1, "{events:?}");
    assert_eq!((ts[0].state, ts[0].attempts), (TaskState::Queued, 1));
    assert!(ts[0].error.as_deref().unwrap().contains("lost"));
    assert!(events.contains(&Event::Assigned {
        task: t,
        worker: heir
    }));
    assert_eq!(s.poll(heir, 1, LEASE).unwrap(), vec![t]);
    let ts = transitions(&mut s);
    assert_eq!(ts[0].state, TaskState::Running);
    assert_eq!(ts[0].worker, Some(heir));
    assert_eq!(ts[0].attempts, 2, "the lost attempt counts");

    assert!(s.worker(lost).is_none());
    assert_eq!(s.poll(lost, 1, LEASE), Err(CoreError::UnknownWorker(lost)));
    assert_eq!(
        s.complete(t, lost, LEASE),
        Err(CoreError::NotLeased {
            task: t,
            worker: lost
        })
    );
    ok(&s);
}

#[test]
fn heartbeat_renews_the_lease() {
    let mut s = scheduler();
    let w = worker(&mut s, &["email"], 1, 0);
    s.heartbeat(w, 6_000).unwrap();
    s.tick(LEASE);
    assert!(s.worker(w).is_some());
    s.tick(6_000 + LEASE - 1);
    assert!(s.worker(w).is_some());
    s.tick(6_000 + LEASE);
    assert!(s.worker(w).is_none());
    ok(&s);
}

#[test]
fn poll_and_reports_renew_the_lease_too() {
    let mut s = scheduler();
    let (t, w) = running_task(&mut s, spec("email"), 0);
    s.poll(w, 1, 4_000).unwrap();
    s.tick(LEASE);
    assert!(s.worker(w).is_some());
    s.complete(t, w, 8_000).unwrap();
    s.tick(4_000 + LEASE);
    assert!(s.worker(w).is_some());
    s.tick(8_000 + LEASE);
    assert!(s.worker(w).is_none());
    ok(&s);
}

#[test]
fn worker_lost_on_the_last_attempt_makes_the_task_dead() {
    let mut s = scheduler();
    let (t, w) = running_task(&mut s, with_attempts("email", 1), 0);
    s.tick(LEASE);
    let events = s.drain_events();
    let Event::Transition(dead) = &events[0] else {
        panic!("expected a transition first: {events:?}");
    };
    assert_eq!((dead.task, dead.state), (t, TaskState::Dead));
    assert_eq!(dead.worker, Some(w));
    assert_eq!(dead.finished_at, Some(LEASE));
    assert!(dead.error.as_deref().unwrap().contains("lost"));
    assert_eq!(
        events[1],
        Event::WorkerLost {
            worker: w,
            at: LEASE
        }
    );
    assert!(s.task(t).is_none());
    ok(&s);
}

#[test]
fn deregister_requeues_without_counting_the_attempt() {
    let mut s = scheduler();
    // A single attempt: were the interrupted attempt counted, it would die.
    let (t, w) = running_task(&mut s, with_attempts("email", 1), 0);
    s.deregister(w, 5).unwrap();
    let events = s.drain_events();
    assert!(
        !events.iter().any(|e| matches!(e, Event::WorkerLost { .. })),
        "a graceful leave is not a loss"
    );
    let Event::Transition(back) = &events[0] else {
        panic!("{events:?}");
    };
    assert_eq!((back.state, back.attempts), (TaskState::Queued, 0));
    assert!(s.worker(w).is_none());

    let heir = worker(&mut s, &["email"], 1, 6);
    s.tick(6);
    assert_eq!(s.poll(heir, 1, 6).unwrap(), vec![t]);
    assert_eq!(s.task(t).unwrap().attempts, 1);
    ok(&s);
}

// ---- cancellation -----------------------------------------------------

#[test]
fn cancel_queued_task() {
    let mut s = scheduler();
    let t = submit(&mut s, 1, spec("email"), 0);
    s.cancel(t, "not needed".into(), 3).unwrap();
    let ts = transitions(&mut s);
    assert_eq!(states(&ts), vec![(t, TaskState::Cancelled)]);
    assert_eq!(ts[0].error.as_deref(), Some("not needed"));
    assert_eq!(ts[0].finished_at, Some(3));
    // It never reaches a worker that shows up later.
    let w = worker(&mut s, &["email"], 1, 4);
    s.tick(4);
    assert_eq!(s.poll(w, 1, 4).unwrap(), vec![]);
    assert_eq!(
        s.cancel(t, "again".into(), 5),
        Err(CoreError::UnknownTask(t))
    );
    ok(&s);
}

#[test]
fn cancel_scheduled_task_removes_its_timer() {
    let mut s = scheduler();
    let t = submit(
        &mut s,
        1,
        TaskSpec {
            run_at: Some(1_000),
            ..spec("email")
        },
        0,
    );
    assert_eq!(s.next_deadline(), Some(1_000));
    s.cancel(t, "changed my mind".into(), 10).unwrap();
    assert_eq!(s.next_deadline(), None);
    s.tick(1_000);
    assert_eq!(
        states(&transitions(&mut s)),
        vec![(t, TaskState::Cancelled)]
    );
    ok(&s);
}

#[test]
fn cancel_running_task_notifies_the_worker_and_frees_its_slot() {
    let mut s = scheduler();
    let (t, w) = running_task(&mut s, spec("email"), 0);
    let next = submit(&mut s, 2, spec("email"), 0);
    s.cancel(t, "stop".into(), 10).unwrap();
    let ts = transitions(&mut s);
    assert_eq!(states(&ts), vec![(t, TaskState::Cancelled)]);
    assert_eq!(ts[0].worker, Some(w));
    assert_eq!(s.worker(w).unwrap().in_flight(), 0);

    // The worker learns it from every heartbeat until it reports the task.
    assert_eq!(s.heartbeat(w, 11).unwrap(), vec![t]);
    assert_eq!(s.heartbeat(w, 12).unwrap(), vec![t]);

    // The freed slot takes the next task.
    s.tick(12);
    assert_eq!(s.poll(w, 1, 12).unwrap(), vec![next]);

    // The worker had not stopped yet: its late report is refused, and the
    // report tells the scheduler the worker has heard.
    assert_eq!(
        s.complete(t, w, 13),
        Err(CoreError::NotLeased { task: t, worker: w })
    );
    assert_eq!(s.heartbeat(w, 13).unwrap(), vec![t]);
    s.stop_heard(w, t);
    assert_eq!(s.heartbeat(w, 14).unwrap(), vec![]);
    ok(&s);
}

#[test]
fn a_credit_worker_gets_only_what_its_credit_allows() {
    let mut s = scheduler();
    let w = worker(&mut s, &["email"], 4, 0);
    let other = worker(&mut s, &["email"], 4, 0);
    s.offer(w, 0, 0).unwrap();
    s.offer(other, 0, 0).unwrap();
    let ts: Vec<TaskId> = (1..=6)
        .map(|i| submit(&mut s, i, spec("email"), 0))
        .collect();
    // No credit: nothing is assigned, every task stays in the queue.
    s.tick(1);
    assert!(s.tasks().all(|t| t.worker.is_none()));
    ok(&s);
    // Two credits: two tasks, the oldest, and nothing more.
    s.offer(w, 2, 2).unwrap();
    s.tick(2);
    assert_eq!(s.poll(w, 10, 2).unwrap(), ts[..2].to_vec());
    s.tick(3);
    assert_eq!(s.undelivered(w), 0);
    ok(&s);
    // Credit adds up, to the capacity at most, and never passes the room.
    s.offer(w, 100, 4).unwrap();
    s.tick(4);
    assert_eq!(s.undelivered(w), 2, "4 slots, 2 busy");
    s.offer(other, 3, 4).unwrap();
    s.offer(other, 3, 4).unwrap();
    s.tick(4);
    assert_eq!(s.undelivered(other), 2, "only 2 tasks were left");
    // Credit workers are never timed out on collection: the stream pushes.
    s.tick(4 + Config::default().collect_ms * 2);
    assert_eq!(s.undelivered(other), 2);
    ok(&s);
}

#[test]
fn a_worker_that_does_not_collect_in_time_gives_everything_back() {
    let mut s = scheduler();
    let collect = Config::default().collect_ms;
    let idle = worker(&mut s, &["email"], 100, 0);
    let ids: Vec<TaskId> = (1..=10)
        .map(|i| submit(&mut s, i, spec("email"), 0))
        .collect();
    s.tick(0);
    assert_eq!(s.undelivered(idle), 10);
    assert_eq!(s.next_deadline(), Some(collect));
    s.tick(collect - 1);
    assert_eq!(s.undelivered(idle), 10);
    // A busy worker registers meanwhile: once the idle one's time is up,
    // its tasks go back in order, with no attempt spent, and go to the
    // other at once; the idle one gets nothing more until it polls.
    let busy = worker(&mut s, &["email"], 100, collect - 1);
    s.tick(collect);
    let events = s.drain_events();
    assert!(events.contains(&Event::Uncollected {
        worker: idle,
        tasks: 10,
        at: collect
    }));
    assert_eq!(s.undelivered(idle), 0);
    assert_eq!(s.poll(busy, 100, collect).unwrap(), ids);
    assert!(ids.iter().all(|t| s.task(*t).unwrap().attempts == 1));
    ok(&s);
    let more = submit(&mut s, 11, spec("email"), collect);
    s.tick(collect + 1);
    assert_eq!(s.task(more).unwrap().worker, Some(busy));
    // It polls again: it is given tasks again.
    assert_eq!(s.poll(idle, 10, collect + 2).unwrap(), vec![]);
    let last = submit(&mut s, 12, with_attempts("email", 1), collect + 2);
    s.tick(collect + 3);
    assert!(s.task(last).unwrap().worker.is_some());
    ok(&s);
}

#[test]
fn withdrawn_assignments_go_back_in_place_with_no_attempt_spent() {
    let mut s = scheduler();
    let w = worker(&mut s, &["email"], 2, 0);
    let a = submit(&mut s, 1, spec("email"), 0);
    let b = submit(&mut s, 2, spec("email"), 0);
    s.tick(0);
    assert_eq!(s.undelivered(w), 2);
    assert_eq!(s.withdraw(w).unwrap(), 2);
    for t in [a, b] {
        let task = s.task(t).unwrap();
        assert_eq!(
            (task.state, task.worker, task.attempts),
            (TaskState::Queued, None, 0)
        );
    }
    assert!(transitions(&mut s).is_empty(), "nothing to persist");
    // It is given nothing until it polls again; another worker gets the
    // oldest first.
    s.tick(1);
    assert_eq!(s.undelivered(w), 0);
    let other = worker(&mut s, &["email"], 1, 1);
    s.tick(1);
    assert_eq!(s.poll(other, 1, 1).unwrap(), vec![a]);
    ok(&s);
}

#[test]
fn a_worker_lost_before_collecting_spends_no_attempt() {
    let mut s = scheduler();
    let w = worker(&mut s, &["email"], 10, 0);
    let ids: Vec<TaskId> = (1..=10)
        .map(|i| submit(&mut s, i, with_attempts("email", 1), 0))
        .collect();
    s.tick(0);
    assert_eq!(s.undelivered(w), 10);
    // It never polls: its lease runs out, and every task is queued again
    // with its one attempt intact, never having been dead.
    s.tick(LEASE);
    let ts = transitions(&mut s);
    assert!(ts.iter().all(|t| !t.state.is_terminal()), "{ts:?}");
    for t in &ids {
        let task = s.task(*t).unwrap();
        assert_eq!(
            (task.state, task.attempts, task.started_at),
            (TaskState::Queued, 0, None)
        );
    }
    ok(&s);
}

#[test]
fn cancel_of_an_undelivered_task_sends_no_notice() {
    // The worker never saw the task, so there is nothing for it to stop.
    let mut s = scheduler();
    let w = worker(&mut s, &["email"], 1, 0);
    let t = submit(&mut s, 1, spec("email"), 0);
    s.tick(0);
    s.cancel(t, "stop".into(), 1).unwrap();
    assert_eq!(s.undelivered(w), 0);
    assert_eq!(s.poll(w, 1, 2).unwrap(), vec![]);
    assert_eq!(s.heartbeat(w, 2).unwrap(), vec![]);
    ok(&s);
}

// ---- time ---------------------------------------------------------------

#[test]
fn delayed_task_stays_scheduled_until_run_at() {
    let mut s = scheduler();
    let w = worker(&mut s, &["email"], 1, 0);
    let t = submit(
        &mut s,
        1,
        TaskSpec {
            run_at: Some(5_000),
            ..spec("email")
        },
        0,
    );
    assert_eq!(s.task(t).unwrap().ready_at, Some(5_000));
    s.tick(4_999);
    assert_eq!(state(&s, t), Some(TaskState::Scheduled));
    assert_eq!(s.poll(w, 1, 4_999).unwrap(), vec![]);
    s.tick(5_000);
    assert_eq!(states(&transitions(&mut s)), vec![(t, TaskState::Queued)]);
    assert_eq!(s.poll(w, 1, 5_000).unwrap(), vec![t]);
    assert_eq!(states(&transitions(&mut s)), vec![(t, TaskState::Running)]);
    ok(&s);
}

#[test]
fn run_at_not_in_the_future_is_queued_at_once() {
    let mut s = scheduler();
    let t = submit(
        &mut s,
        1,
        TaskSpec {
            run_at: Some(100),
            ..spec("email")
        },
        100,
    );
    assert_eq!(state(&s, t), Some(TaskState::Queued));
    ok(&s);
}

#[test]
fn restore_keeps_the_attempts_already_used() {
    let mut s = scheduler();
    let w = worker(&mut s, &["email"], 1, 0);
    let t = TaskId(1);
    s.restore(t, with_attempts("email", 3), (), 2, Some("old".into()), 0)
        .unwrap();
    let task = s.task(t).unwrap();
    assert_eq!(
        (task.state, task.attempts, task.last_error.as_deref()),
        (TaskState::Queued, 2, Some("old"))
    );
    s.tick(0);
    assert_eq!(
        s.task(t).unwrap().attempts,
        2,
        "assigned, not yet collected"
    );
    s.poll(w, 1, 0).unwrap();
    assert_eq!(s.task(t).unwrap().attempts, 3);
    // That was the last attempt: one more failure kills it.
    s.fail(t, w, "third".into(), None, false, 1).unwrap();
    let last = transitions(&mut s).pop().unwrap();
    assert_eq!(
        (last.state, last.attempts, last.error.as_deref()),
        (TaskState::Dead, 3, Some("third"))
    );
    ok(&s);
}

#[test]
fn next_deadline_reports_the_earliest_timer() {
    let mut s = scheduler();
    assert_eq!(s.next_deadline(), None);
    let at = |ms| TaskSpec {
        run_at: Some(ms),
        ..spec("email")
    };
    submit(&mut s, 1, at(500), 0);
    submit(&mut s, 2, at(200), 0);
    assert_eq!(s.next_deadline(), Some(200));
    // A worker adds its lease check, later than both timers.
    let w = worker(&mut s, &["email"], 5, 0);
    assert_eq!(s.next_deadline(), Some(200));
    s.tick(200);
    assert_eq!(s.next_deadline(), Some(500));
    s.tick(500);
    // The worker has not collected what it was given at 200.
    let collect = Config::default().collect_ms;
    assert_eq!(s.next_deadline(), Some(200 + collect));
    s.poll(w, 5, 600).unwrap();
    assert_eq!(s.next_deadline(), Some(LEASE));
    s.deregister(w, 600).unwrap();
    assert_eq!(s.next_deadline(), None);
    ok(&s);
}

// ---- events -------------------------------------------------------------

#[test]
fn assignment_and_completion_events_carry_exact_fields() {
    let mut s = scheduler();
    let w = worker(&mut s, &["email"], 1, 0);
    let t = submit(&mut s, 1, spec("email"), 0);
    assert!(s.drain_events().is_empty(), "submission emits no event");
    s.tick(90);
    assert_eq!(
        s.drain_events(),
        vec![Event::Assigned { task: t, worker: w }]
    );
    assert_eq!(s.task(t).unwrap().state, TaskState::Queued);
    assert_eq!(s.task(t).unwrap().attempts, 0);
    s.poll(w, 1, 100).unwrap();
    assert_eq!(
        s.drain_events(),
        vec![Event::Transition(Transition {
            task: t,
            state: TaskState::Running,
            attempts: 1,
            worker: Some(w),
            started_at: Some(100),
            finished_at: None,
            ready_at: None,
            error: None,
            ended: None,
        })]
    );
    s.complete(t, w, 250).unwrap();
    assert_eq!(
        s.drain_events(),
        vec![Event::Transition(Transition {
            task: t,
            state: TaskState::Succeeded,
            attempts: 1,
            worker: Some(w),
            started_at: Some(100),
            finished_at: Some(250),
            ready_at: None,
            error: None,
            ended: Some(Box::new(AttemptEnd {
                attempt: 1,
                worker: w,
                worker_name: "w".into(),
                collected_at: 100,
                finished_at: 250,
                outcome: AttemptOutcome::Succeeded,
                retry_delay_ms: None,
            })),
        })]
    );
    assert_eq!(s.worker(w).unwrap().completed, 1);
    ok(&s);
}

/// The attempts ended by the events drained so far: (number, outcome,
/// collected, finished, retry delay).
fn ended(s: &mut Scheduler<()>) -> Vec<(u32, AttemptOutcome, Millis, Millis, Option<u64>)> {
    s.drain_events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Transition(t) => t.ended,
            _ => None,
        })
        .map(|e| {
            (
                e.attempt,
                e.outcome,
                e.collected_at,
                e.finished_at,
                e.retry_delay_ms,
            )
        })
        .collect()
}

#[test]
fn every_counted_attempt_ends_in_one_event_with_its_outcome() {
    let mut s = scheduler();
    let w = worker(&mut s, &["email"], 1, 0);
    let mut sp = spec("email");
    sp.max_attempts = 5;
    sp.timeout_ms = Some(1_000);
    let t = submit(&mut s, 1, sp, 0);
    s.tick(0);
    s.poll(w, 1, 10).unwrap();
    s.fail(t, w, "boom".into(), Some(40), false, 30).unwrap();
    assert_eq!(
        ended(&mut s),
        [(1, AttemptOutcome::Failed, 10, 30, Some(40))]
    );
    s.tick(70);
    s.poll(w, 1, 80).unwrap();
    s.tick(1_080);
    assert_eq!(ended(&mut s)[0].1, AttemptOutcome::Timeout);
    s.stop_heard(w, t);
    let at = s.task(t).unwrap().ready_at.unwrap_or(1_080);
    s.tick(at);
    s.poll(w, 1, at).unwrap();
    let _ = s.drain_events();
    s.lose_worker(w, at + 5).unwrap();
    assert_eq!(
        ended(&mut s),
        [(3, AttemptOutcome::Lost, at, at + 5, Some(0))]
    );
    let w2 = worker(&mut s, &["email"], 1, at + 5);
    s.tick(at + 5);
    s.poll(w2, 1, at + 6).unwrap();
    s.cancel(t, "no longer wanted".into(), at + 7).unwrap();
    assert_eq!(
        ended(&mut s),
        [(4, AttemptOutcome::Cancelled, at + 6, at + 7, None)]
    );
    // An attempt cut short by a graceful leave does not count, and is not
    // reported.
    let t2 = submit(&mut s, 2, spec("email"), at + 8);
    s.tick(at + 8);
    s.poll(w2, 1, at + 9).unwrap();
    s.deregister(w2, at + 10).unwrap();
    assert!(ended(&mut s).is_empty());
    assert_eq!(s.task(t2).unwrap().attempts, 0);
    ok(&s);
}

#[test]
fn every_transition_of_a_task_life_is_an_event() {
    let mut s = scheduler();
    let w = worker(&mut s, &["email"], 1, 0);
    let t = submit(
        &mut s,
        1,
        TaskSpec {
            run_at: Some(10),
            ..spec("email")
        },
        0,
    );
    let mut seen = Vec::new();
    let step = |s: &mut Scheduler<()>, seen: &mut Vec<TaskState>| {
        let ts = transitions(s);
        seen.extend(ts.iter().map(|tr| tr.state));
        // The last event always agrees with the task it describes.
        if let (Some(last), Some(task)) = (ts.last(), s.task(t)) {
            assert_eq!((task.state, task.attempts), (last.state, last.attempts));
        }
        ok(s);
    };
    s.tick(10);
    s.poll(w, 1, 10).unwrap();
    step(&mut s, &mut seen);
    s.fail(t, w, "boom".into(), Some(20), false, 30).unwrap();
    step(&mut s, &mut seen);
    s.tick(50);
    s.poll(w, 1, 50).unwrap();
    step(&mut s, &mut seen);
    s.complete(t, w, 60).unwrap();
    step(&mut s, &mut seen);
    use TaskState::*;
    assert_eq!(
        seen,
        vec![Queued, Running, Scheduled, Queued, Running, Succeeded]
    );
}

#[test]
fn queues_count_in_constant_time_and_are_forgotten_when_idle() {
    let mut s = scheduler();
    let w = worker(&mut s, &["email"], 2, 0);
    for i in 1..=3 {
        submit(
            &mut s,
            i,
            TaskSpec {
                queue: format!("q{i}").into(),
                ..spec("email")
            },
            0,
        );
    }
    let delayed = submit(
        &mut s,
        4,
        TaskSpec {
            queue: "q1".into(),
            run_at: Some(1_000),
            ..spec("email")
        },
        0,
    );
    s.tick(0);
    // Two assigned (still queued), one waiting for a slot, one delayed.
    assert_eq!(
        s.queue_depth("q1") + s.queue_depth("q2") + s.queue_depth("q3"),
        4
    );
    let got = s.poll(w, 2, 1).unwrap();
    assert_eq!(got.len(), 2);
    let running: usize = s.queues().iter().map(|q| q.running).sum();
    assert_eq!(running, 2);
    ok(&s);
    for t in got {
        s.complete(t, w, 2).unwrap();
    }
    s.tick(2);
    for t in s.poll(w, 2, 3).unwrap() {
        s.complete(t, w, 3).unwrap();
    }
    s.cancel(delayed, "no".into(), 4).unwrap();
    // Every task ended: the queues named once are forgotten.
    assert!(s.queues().is_empty(), "{:?}", s.queues());
    assert_eq!(s.queue_depth("q1"), 0);
    ok(&s);
}

#[test]
fn a_fleet_expiring_together_is_removed_and_its_tasks_requeued() {
    let mut s = scheduler();
    let fleet: Vec<WorkerId> = (0..5_000)
        .map(|_| worker(&mut s, &["email"], 1, 0))
        .collect();
    for i in 1..=100 {
        submit(&mut s, i, spec("email"), 0);
    }
    s.tick(0);
    for &w in &fleet {
        s.poll(w, 1, 0).unwrap();
    }
    let heir = worker(&mut s, &["email"], 100, LEASE - 1);
    s.tick(LEASE);
    let lost = s
        .drain_events()
        .iter()
        .filter(|e| matches!(e, Event::WorkerLost { .. }))
        .count();
    assert_eq!(lost, fleet.len());
    assert_eq!(s.workers().count(), 1);
    assert_eq!(s.poll(heir, 100, LEASE).unwrap().len(), 100);
    ok(&s);
}

// ---- takeover: workers and their running tasks restored ----------------

/// A new scheduler restores a worker under its own id and the task it was
/// running stays running on it, its attempt still counted: the worker's
/// report is accepted as if nothing happened.
#[test]
fn a_restored_worker_keeps_its_running_task_and_reports_it() {
    let mut s = scheduler();
    let w = WorkerId::new(77).unwrap();
    s.restore_worker(w, WorkerSpec::new("w", ["email"], 2), 1_000)
        .unwrap();
    let t = TaskId(5);
    s.restore_running(t, with_attempts("email", 3), (), 2, w, 1_000)
        .unwrap();
    let task = s.task(t).unwrap();
    assert_eq!(
        (task.state, task.attempts, task.worker, task.started_at),
        (TaskState::Running, 2, Some(w), Some(1_000))
    );
    assert_eq!(states(&transitions(&mut s)), vec![(t, TaskState::Running)]);
    ok(&s);
    // Nothing else is assigned to it beyond its one free slot.
    submit(&mut s, 6, spec("email"), 1_000);
    submit(&mut s, 7, spec("email"), 1_000);
    s.tick(1_000);
    assert_eq!(s.poll(w, 10, 1_000).unwrap(), vec![TaskId(6)]);
    s.complete(t, w, 1_500).unwrap();
    assert_eq!(state(&s, t), None, "succeeded and gone from the core");
    ok(&s);
}

/// A restored worker that never comes back loses its lease a lease after
/// the takeover, and its task is requeued with the attempt counted.
#[test]
fn a_restored_worker_that_is_gone_loses_its_task_after_a_lease() {
    let mut s = scheduler();
    let w = WorkerId::new(77).unwrap();
    s.restore_worker(w, WorkerSpec::new("w", ["email"], 1), 1_000)
        .unwrap();
    let t = TaskId(5);
    s.restore_running(t, with_attempts("email", 3), (), 1, w, 1_000)
        .unwrap();
    s.drain_events();
    s.tick(1_000 + LEASE - 1);
    assert_eq!(state(&s, t), Some(TaskState::Running));
    s.tick(1_000 + LEASE);
    let task = s.task(t).unwrap();
    assert_eq!((task.state, task.attempts), (TaskState::Queued, 1));
    assert!(s.worker(w).is_none());
    ok(&s);
}

/// A worker that cannot hold the task (full, or not its type) is refused
/// and nothing changes: the caller restores the task as interrupted.
#[test]
fn restore_running_is_refused_when_the_worker_cannot_hold_the_task() {
    let mut s = scheduler();
    let w = WorkerId::new(77).unwrap();
    s.restore_worker(w, WorkerSpec::new("w", ["email"], 1), 0)
        .unwrap();
    assert_eq!(
        s.restore_worker(w, WorkerSpec::new("w", ["email"], 1), 0),
        Err(CoreError::DuplicateWorker(w))
    );
    s.restore_running(TaskId(1), spec("email"), (), 1, w, 0)
        .unwrap();
    for (id, kind) in [(2, "email"), (3, "sms")] {
        assert_eq!(
            s.restore_running(TaskId(id), spec(kind), (), 1, w, 0),
            Err(CoreError::WorkerCannotHold {
                task: TaskId(id),
                worker: w
            })
        );
        assert_eq!(state(&s, TaskId(id)), None);
    }
    let unknown = WorkerId::new(9).unwrap();
    assert!(
        s.restore_running(TaskId(4), spec("email"), (), 1, unknown, 0)
            .is_err()
    );
    ok(&s);
}

/// A worker claims what it holds: named tasks stay, a task it does not
/// name goes back to its queue at once with no attempt counted (it never
/// got it: the answer handing it over died with the previous scheduler).
#[test]
fn a_worker_claims_the_tasks_it_holds_and_the_others_go_back() {
    let mut s = scheduler();
    let w = WorkerId::new(77).unwrap();
    s.restore_worker(w, WorkerSpec::new("w", ["email"], 4), 0)
        .unwrap();
    for id in [1, 2] {
        s.restore_running(TaskId(id), spec("email"), (), 1, w, 0)
            .unwrap();
    }
    assert!(s.is_unclaimed(TaskId(1)) && s.is_unclaimed(TaskId(2)));
    s.drain_events();
    s.claim_running(w, &[TaskId(1)], 100);
    assert!(!s.is_unclaimed(TaskId(1)));
    assert_eq!(state(&s, TaskId(1)), Some(TaskState::Running));
    let back = s.task(TaskId(2)).unwrap();
    assert_eq!(
        (back.state, back.attempts, back.worker),
        (TaskState::Queued, 0, None)
    );
    assert_eq!(
        states(&transitions(&mut s)),
        vec![(TaskId(2), TaskState::Queued)]
    );
    ok(&s);
    // Claimed, it stays past the claim's deadline.
    s.heartbeat(w, LEASE - 1).unwrap();
    s.tick(LEASE + 1);
    assert_eq!(state(&s, TaskId(1)), Some(TaskState::Running));
    ok(&s);
}

/// A task nobody claims within a lease goes back to its queue, no attempt
/// counted, even though its worker is alive.
#[test]
fn an_unclaimed_task_goes_back_after_a_lease() {
    let mut s = scheduler();
    let w = WorkerId::new(77).unwrap();
    s.restore_worker(w, WorkerSpec::new("w", ["email"], 4), 0)
        .unwrap();
    s.restore_running(TaskId(1), spec("email"), (), 1, w, 0)
        .unwrap();
    s.restore_running(TaskId(2), spec("email"), (), 1, w, 0)
        .unwrap();
    s.drain_events();
    // Task 2 is reported: claimed by that.
    s.complete(TaskId(2), w, 10).unwrap();
    s.heartbeat(w, LEASE - 1).unwrap();
    s.tick(LEASE - 1);
    assert_eq!(state(&s, TaskId(1)), Some(TaskState::Running));
    s.tick(LEASE);
    let back = s.task(TaskId(1)).unwrap();
    assert_eq!((back.state, back.attempts), (TaskState::Queued, 0));
    assert!(s.worker(w).is_some(), "the worker itself is fine");
    ok(&s);
}

/// A poll answer that never reached its worker: once the worker says it
/// received a later answer and does not name the tasks of the lost one,
/// they go back to their queue, no attempt counted. The tasks of answers
/// it has not acknowledged yet, and those it names, stay.
#[test]
fn tasks_of_a_lost_poll_answer_go_back_once_a_later_one_is_acknowledged() {
    let mut s = scheduler();
    let w = worker(&mut s, &["email"], 4, 0);
    for id in 1..=3 {
        submit(&mut s, id, spec("email"), 0);
    }
    s.tick(0);
    // Answer 1 hands task 1 (and is lost on the way), answer 2 task 2.
    assert_eq!(s.poll(w, 1, 10).unwrap(), vec![TaskId(1)]);
    assert_eq!(s.worker(w).unwrap().handouts, 1);
    assert_eq!(s.poll(w, 1, 20).unwrap(), vec![TaskId(2)]);
    assert_eq!(s.worker(w).unwrap().handouts, 2);
    // An answer that hands nothing has no number.
    assert_eq!(s.poll(w, 0, 25).unwrap(), vec![]);
    assert_eq!(s.worker(w).unwrap().handouts, 2);
    s.drain_events();

    // Before it acknowledges anything, nothing moves.
    s.reconcile(w, 0, &[], 30);
    assert_eq!(state(&s, TaskId(1)), Some(TaskState::Running));
    // It got answer 2 only: task 1 goes back, task 2 stays.
    s.reconcile(w, 2, &[TaskId(2)], 40);
    let back = s.task(TaskId(1)).unwrap();
    assert_eq!(
        (back.state, back.attempts, back.worker),
        (TaskState::Queued, 0, None)
    );
    assert_eq!(state(&s, TaskId(2)), Some(TaskState::Running));
    assert_eq!(
        states(&transitions(&mut s)),
        vec![(TaskId(1), TaskState::Queued)]
    );
    ok(&s);

    // Answer 3 hands task 3; a heartbeat built before it arrived
    // acknowledges only answer 2 and does not name task 3: it stays.
    s.tick(50);
    let third = s.poll(w, 2, 60).unwrap();
    assert_eq!(s.worker(w).unwrap().handouts, 3);
    s.reconcile(w, 2, &[TaskId(2)], 70);
    for t in &third {
        assert_eq!(state(&s, *t), Some(TaskState::Running), "{t}");
    }
    ok(&s);
}
