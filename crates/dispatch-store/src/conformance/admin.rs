//! Conformance cases of what operators read and change: attempt history
//! and queue settings.

use dispatch_core::{AttemptOutcome, Strategy, TaskId, TaskState, WorkerId};

use super::{get, insert, sample, update};
use crate::{AttemptRecord, ErrorKind, QueueConfigRecord, Store, Write, WriteOutcome};

/// An ended attempt of task `id` with distinctive values.
pub(crate) fn attempt(id: u64, n: u32, outcome: AttemptOutcome) -> AttemptRecord {
    AttemptRecord {
        task: TaskId(id),
        attempt: n,
        // Worker ids are random 64-bit numbers: the high bit must survive.
        worker: WorkerId::new(u64::MAX - u64::from(n)).expect("not zero"),
        worker_name: format!("worker-{n} ünï"),
        collected_at: 1_800_000_000_000 + u64::from(n) * 10,
        finished_at: 1_800_000_000_005 + u64::from(n) * 10,
        outcome,
        error: (outcome != AttemptOutcome::Succeeded).then(|| format!("attempt {n}: exit 3")),
        retry_delay_ms: (outcome == AttemptOutcome::Failed).then_some(250 * u64::from(n)),
    }
}

fn ends(id: u64, state: TaskState, a: AttemptRecord) -> Write {
    let mut u = update(id, state, a.attempt);
    u.attempt = Some(Box::new(a));
    Write::Update(u)
}

fn attempts(store: &impl Store, id: u64) -> Vec<AttemptRecord> {
    store.list_attempts(TaskId(id)).expect("list_attempts")
}

/// Each update that ends an attempt stores it in the same batch; every
/// outcome and field reads back, by number, and only for its own task.
pub fn attempts_ride_on_their_updates_and_list_by_number(store: impl Store) {
    insert(&store, vec![sample(1, "job"), sample(2, "job")]);
    let all: Vec<AttemptRecord> = AttemptOutcome::ALL
        .into_iter()
        .enumerate()
        .map(|(i, o)| attempt(1, i as u32 + 1, o))
        .collect();
    // Stored out of order across two batches.
    let writes: Vec<Write> = all
        .iter()
        .rev()
        .map(|a| ends(1, TaskState::Scheduled, a.clone()))
        .collect();
    let (first, second) = writes.split_at(2);
    for batch in [first, second] {
        let out = store.apply(batch).expect("apply");
        assert!(
            out.iter().all(|o| *o == WriteOutcome::Updated(true)),
            "{out:?}"
        );
    }
    assert_eq!(attempts(&store, 1), all);
    let mut lone = attempt(2, 1, AttemptOutcome::Lost);
    lone.error = None;
    lone.retry_delay_ms = Some(0);
    store
        .apply(&[ends(2, TaskState::Queued, lone.clone())])
        .expect("apply");
    assert_eq!(attempts(&store, 2), vec![lone]);
    assert_eq!(attempts(&store, 3), Vec::new(), "no such task");
}

/// An update a store refuses (unknown task, or a terminal task it may not
/// change) stores no attempt either.
pub fn an_attempt_of_a_refused_update_is_not_stored(store: impl Store) {
    let mut done = sample(1, "job");
    done.state = TaskState::Succeeded;
    done.finished_at = Some(10);
    insert(&store, vec![done]);
    let out = store
        .apply(&[
            ends(1, TaskState::Queued, attempt(1, 1, AttemptOutcome::Failed)),
            ends(9, TaskState::Queued, attempt(9, 1, AttemptOutcome::Failed)),
        ])
        .expect("apply");
    assert_eq!(
        out,
        vec![WriteOutcome::Updated(false), WriteOutcome::Updated(false)]
    );
    assert!(attempts(&store, 1).is_empty());
    assert!(attempts(&store, 9).is_empty());
}

/// An attempt written again under its number (a retained write replayed)
/// keeps the one stored first.
pub fn an_attempt_stored_twice_keeps_the_first(store: impl Store) {
    insert(&store, vec![sample(1, "job")]);
    let first = attempt(1, 1, AttemptOutcome::Timeout);
    let mut again = first.clone();
    again.outcome = AttemptOutcome::Failed;
    again.error = Some("other".into());
    store
        .apply(&[
            ends(1, TaskState::Queued, first.clone()),
            ends(1, TaskState::Queued, again),
        ])
        .expect("apply");
    assert_eq!(attempts(&store, 1), vec![first]);
}

/// Purging a task deletes its attempts; a task kept keeps them.
pub fn attempts_are_purged_with_their_task(store: impl Store) {
    insert(
        &store,
        vec![sample(1, "job"), sample(2, "job"), sample(3, "job")],
    );
    for id in [1, 2] {
        let mut u = update(id, TaskState::Succeeded, 1);
        u.finished_at = Some(100);
        u.attempt = Some(Box::new(attempt(id, 1, AttemptOutcome::Succeeded)));
        store.apply(&[Write::Update(u)]).expect("apply");
    }
    let purged = store
        .apply(&[Write::Purge {
            finished_before: 150,
            limit: 1,
        }])
        .expect("purge");
    assert_eq!(purged, vec![WriteOutcome::Purged(1)]);
    assert_eq!(get(&store, 1), None);
    assert!(attempts(&store, 1).is_empty());
    assert_eq!(attempts(&store, 2).len(), 1);
}

fn queue_config(name: &str) -> QueueConfigRecord {
    QueueConfigRecord {
        name: name.to_owned(),
        weight: 7,
        max_running: Some(u32::MAX),
        rate_per_sec: Some(0.25),
        burst: Some(3),
        max_per_key: Some(2),
        max_depth: Some(i64::MAX as u64),
        strategy: Some(Strategy::ConsistentHash),
    }
}

/// Queue settings read back exactly, by name (a name sorts by its bytes);
/// a second write of a name replaces the first, cleared limits included.
pub fn queue_configs_round_trip_are_replaced_and_list_by_name(store: impl Store) {
    assert_eq!(store.list_queue_configs().expect("list"), Vec::new());
    let (b, a) = (queue_config("bulk"), queue_config("Bulk-ä"));
    let out = store
        .apply(&[
            Write::PutQueueConfig(b.clone()),
            Write::PutQueueConfig(a.clone()),
        ])
        .expect("apply");
    assert_eq!(
        out,
        vec![
            WriteOutcome::QueueConfigPut(false),
            WriteOutcome::QueueConfigPut(false)
        ]
    );
    assert_eq!(
        store.list_queue_configs().expect("list"),
        vec![a.clone(), b]
    );
    let cleared = QueueConfigRecord {
        name: "bulk".into(),
        weight: 1,
        max_running: None,
        rate_per_sec: None,
        burst: None,
        max_per_key: None,
        max_depth: None,
        strategy: None,
    };
    let out = store
        .apply(&[Write::PutQueueConfig(cleared.clone())])
        .expect("apply");
    assert_eq!(out, vec![WriteOutcome::QueueConfigPut(true)]);
    assert_eq!(store.list_queue_configs().expect("list"), vec![a, cleared]);
}

/// Settings in a batch that fails are not stored.
pub fn queue_configs_of_a_refused_batch_are_not_stored(store: impl Store) {
    insert(&store, vec![sample(1, "job")]);
    let err = store
        .apply(&[
            Write::PutQueueConfig(queue_config("bulk")),
            Write::Insert(vec![sample(1, "job")]),
        ])
        .expect_err("duplicate id");
    assert_eq!(err.kind, ErrorKind::Conflict, "{err}");
    assert_eq!(store.list_queue_configs().expect("list"), Vec::new());
}
