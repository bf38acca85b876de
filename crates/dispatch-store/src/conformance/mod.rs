//! The conformance suite: every [`Store`] backend must pass these cases.
//!
//! Each case is a plain function taking a fresh, empty store. A backend runs
//! them all by invoking [`crate::store_conformance_tests!`] in a test module
//! with an expression that makes a fresh store:
//!
//! ```text
//! #[cfg(test)]
//! mod tests {
//!     dispatch_store::store_conformance_tests!(crate::MemoryStore::new());
//! }
//! ```
//!
//! The cases use only the public [`Store`] API, so that what they pin down is
//! the contract and not one backend's internals. Adding a case is two steps:
//! a `pub fn` here and its name in the macro's list.

use std::collections::BTreeMap;

mod admin;
pub use admin::*;

use dispatch_core::{Backoff, Strategy, TaskId, TaskSpec, TaskState, WorkerId};

use crate::{
    ErrorKind, FireOutcome, InsertOutcome, Replica, ScheduleRecord, Store, TaskBody, TaskQuery,
    TaskRecord, TaskUpdate, WorkerRecord, Write, WriteOutcome,
};

/// A queued task record with the given id and type, for tests.
pub fn sample(id: u64, kind: &str) -> TaskRecord {
    TaskRecord {
        id: TaskId(id),
        spec: TaskSpec::new(kind),
        body: TaskBody {
            payload: r#"{"n":1}"#.into(),
            idempotency_key: None,
            depends_on: Vec::new(),
            created_at: 1_700_000_000_000 + id,
            shard: None,
        },
        state: TaskState::Queued,
        attempts: 0,
        worker: None,
        started_at: None,
        finished_at: None,
        result: None,
        error: None,
        request_digest: None,
    }
}

/// Instantiates one `#[test]` per conformance case, each with a fresh store
/// made by evaluating `$make`.
#[macro_export]
macro_rules! store_conformance_tests {
    ($make:expr) => {
        $crate::store_conformance_tests!(@cases $make;
            insert_then_get_round_trips,
            every_field_round_trips,
            empty_batch_is_a_no_op,
            update_changes_state_attempts_worker_times_and_error,
            update_of_unknown_task_reports_false,
            update_without_result_keeps_the_stored_result,
            updates_in_one_batch_apply_in_order,
            insert_then_update_in_one_batch,
            duplicate_id_in_one_batch_stores_nothing,
            existing_id_stores_nothing_of_the_batch,
            idempotency_key_returns_the_original,
            idempotency_key_repeated_in_one_batch,
            idempotency_key_wins_over_a_repeated_id,
            idempotency_key_with_another_request_refuses_the_insert,
            list_tasks_newest_first_with_limit,
            list_tasks_filters_by_state_kind_and_queue,
            list_tasks_pages_with_the_before_cursor,
            load_live_returns_unfinished_tasks_oldest_first,
            max_task_id_tracks_inserts,
            payload_text_round_trips,
            results_and_errors_round_trip,
            purge_deletes_only_old_terminal_tasks,
            schedules_round_trip_and_list_by_name,
            upsert_replaces_a_schedule,
            delete_schedule_reports_whether_it_existed,
            fire_stores_its_task_and_advances_last_fire_at,
            a_fire_recorded_before_answers_its_task,
            a_fire_repeated_in_one_batch_stores_one_task,
            a_fire_of_an_unknown_schedule_stores_nothing,
            a_fire_with_a_taken_id_refuses_the_batch,
            a_fire_whose_key_is_taken_answers_the_key_holder,
            last_fire_at_never_goes_back,
            delete_schedule_forgets_its_fires_but_keeps_their_tasks,
            queue_pause_states_round_trip_and_list_by_name,
            queue_pause_states_of_a_refused_batch_are_not_stored,
            count_by_queue_state_counts_every_stored_task,
            a_batch_of_ten_thousand_tasks_is_one_write,
            ties_in_created_at_keep_id_order,
            reads_during_writes_see_whole_batches,
            a_write_under_a_stale_epoch_is_fenced_and_stores_nothing,
            a_write_before_any_lease_is_fenced,
            leases_renew_take_over_and_release,
            replicas_are_recorded_at_each_claim,
            reserved_ids_are_disjoint_and_above_every_stored_id,
            a_fire_raced_from_two_threads_has_one_task_and_the_loser_keeps_its_batch,
            a_finished_task_is_not_brought_back_by_a_stale_update,
            a_dead_task_is_brought_back_by_a_retry,
            workers_round_trip_are_replaced_and_deleted,
            attempts_ride_on_their_updates_and_list_by_number,
            an_attempt_of_a_refused_update_is_not_stored,
            an_attempt_stored_twice_keeps_the_first,
            attempts_are_purged_with_their_task,
            queue_configs_round_trip_are_replaced_and_list_by_name,
            queue_configs_of_a_refused_batch_are_not_stored,
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::conformance::$case($make);
            }
        )*
    };
}

/// A record with every optional field set and every field off its default.
fn full(id: u64) -> TaskRecord {
    TaskRecord {
        id: TaskId(id),
        spec: TaskSpec {
            kind: "report.render:v2".into(),
            queue: "critical".into(),
            priority: -42,
            run_at: Some(1_800_000_000_123),
            max_attempts: 7,
            timeout_ms: Some(45_000),
            backoff: Backoff {
                initial_ms: 250,
                max_ms: 60_000,
                multiplier: 1.5,
            },
            strategy: Strategy::ConsistentHash,
            routing_key: Some("customer-17".into()),
            labels: BTreeMap::from([
                ("gpu".to_string(), "a100".to_string()),
                ("region".to_string(), "eu-west".to_string()),
            ]),
            pinned: WorkerId::new(u64::MAX - 99),
            join: true,
        },
        body: TaskBody {
            payload: r#"{"report":"q3","pages":[1,2,3],"draft":false}"#.into(),
            idempotency_key: Some(format!("key-{id}")),
            depends_on: vec![TaskId(3), TaskId(1), TaskId(u64::from(u32::MAX) + 9)],
            created_at: 1_700_000_000_456,
            shard: Some((3, 8)),
        },
        state: TaskState::Running,
        attempts: 2,
        // Worker ids are random 64-bit numbers: the high bit must survive.
        worker: WorkerId::new(u64::MAX - 6),
        started_at: Some(1_800_000_001_000),
        finished_at: Some(1_800_000_002_000),
        result: Some(r#"{"ok":true}"#.into()),
        error: Some("previous attempt: timed out".into()),
        request_digest: Some([0xa5; 32]),
    }
}

/// An update that moves task `id` to `state` with distinctive values.
pub(crate) fn update(id: u64, state: TaskState, attempts: u32) -> TaskUpdate {
    TaskUpdate {
        id: TaskId(id),
        state,
        attempts,
        worker: WorkerId::new(0x8000_0000_0000_0000 | u64::from(attempts)),
        started_at: Some(1_800_000_000_000 + u64::from(attempts)),
        finished_at: None,
        run_at: None,
        result: None,
        error: None,
        attempt: None,
    }
}

pub(crate) fn insert(store: &impl Store, records: Vec<TaskRecord>) -> Vec<InsertOutcome> {
    match store.apply(&[Write::Insert(records)]).expect("insert") {
        mut outcomes if outcomes.len() == 1 => match outcomes.remove(0) {
            WriteOutcome::Inserted(out) => out,
            other => panic!("an insert answered {other:?}"),
        },
        outcomes => panic!("one write answered {outcomes:?}"),
    }
}

pub(crate) fn get(store: &impl Store, id: u64) -> Option<TaskRecord> {
    store.get_task(TaskId(id)).expect("get_task")
}

fn ids(records: &[TaskRecord]) -> Vec<u64> {
    records.iter().map(|r| r.id.0).collect()
}

fn list(store: &impl Store, query: TaskQuery) -> Vec<u64> {
    ids(&store.list_tasks(&query).expect("list_tasks"))
}

/// A stored record reads back exactly as written.
pub fn insert_then_get_round_trips(store: impl Store) {
    let r = sample(1, "email");
    let out = store
        .apply(&[Write::Insert(vec![r.clone()])])
        .expect("insert");
    assert_eq!(
        out,
        vec![WriteOutcome::Inserted(vec![InsertOutcome::Created])]
    );
    assert_eq!(store.get_task(TaskId(1)).expect("get"), Some(r));
    assert_eq!(store.get_task(TaskId(2)).expect("get"), None);
}

/// Every field, optional ones included, reads back exactly as written.
pub fn every_field_round_trips(store: impl Store) {
    let r = full(9);
    assert_eq!(
        insert(&store, vec![r.clone()]),
        vec![InsertOutcome::Created]
    );
    assert_eq!(get(&store, 9), Some(r.clone()));
    assert_eq!(
        store
            .list_tasks(&TaskQuery {
                limit: 10,
                ..TaskQuery::default()
            })
            .expect("list"),
        vec![r.clone()]
    );
    assert_eq!(store.load_live().expect("load_live"), vec![r]);
}

/// An empty batch succeeds and answers nothing.
pub fn empty_batch_is_a_no_op(store: impl Store) {
    assert_eq!(store.apply(&[]).expect("apply"), Vec::new());
    // An empty insert is how the server waits for the writer to catch up.
    assert_eq!(
        store.apply(&[Write::Insert(Vec::new())]).expect("apply"),
        vec![WriteOutcome::Inserted(Vec::new())]
    );
    assert_eq!(store.max_task_id().expect("max_task_id"), None);
}

/// An update replaces state, attempts, worker, times, run_at and error.
pub fn update_changes_state_attempts_worker_times_and_error(store: impl Store) {
    let mut r = full(4);
    insert(&store, vec![r.clone()]);
    let u = TaskUpdate {
        id: TaskId(4),
        state: TaskState::Dead,
        attempts: 7,
        worker: WorkerId::new(u64::MAX),
        started_at: Some(1_900_000_000_000),
        finished_at: Some(1_900_000_000_500),
        run_at: Some(1_900_000_001_000),
        result: Some(r#"{"partial":[1,2]}"#.into()),
        error: Some("exit status 3".into()),
        attempt: None,
    };
    assert_eq!(
        store.apply(&[Write::Update(u.clone())]).expect("update"),
        vec![WriteOutcome::Updated(true)]
    );
    r.apply(&u);
    assert_eq!(r.state, TaskState::Dead);
    assert_eq!(get(&store, 4), Some(r.clone()));

    // Optional fields can be cleared again.
    let cleared = TaskUpdate {
        id: TaskId(4),
        state: TaskState::Queued,
        attempts: 0,
        worker: None,
        started_at: None,
        finished_at: None,
        run_at: None,
        result: None,
        error: None,
        attempt: None,
    };
    store
        .apply(&[Write::Update(cleared.clone())])
        .expect("update");
    r.apply(&cleared);
    assert_eq!(r.worker, None);
    assert_eq!(get(&store, 4), Some(r));
}

/// An update of a task that was never stored answers `Updated(false)` and
/// stores nothing.
pub fn update_of_unknown_task_reports_false(store: impl Store) {
    insert(&store, vec![sample(1, "email")]);
    let out = store
        .apply(&[
            Write::Update(update(2, TaskState::Running, 1)),
            Write::Update(update(1, TaskState::Running, 1)),
        ])
        .expect("update");
    assert_eq!(
        out,
        vec![WriteOutcome::Updated(false), WriteOutcome::Updated(true)]
    );
    assert_eq!(get(&store, 2), None);
    assert_eq!(get(&store, 1).map(|r| r.state), Some(TaskState::Running));
    assert_eq!(store.max_task_id().expect("max_task_id"), Some(TaskId(1)));
}

/// An update without a result leaves a stored result in place (as
/// [`TaskRecord::apply`] does); one with a result replaces it.
pub fn update_without_result_keeps_the_stored_result(store: impl Store) {
    let mut r = sample(1, "email");
    r.result = Some(r#"{"first":1}"#.into());
    insert(&store, vec![r]);
    store
        .apply(&[Write::Update(update(1, TaskState::Running, 1))])
        .expect("update");
    assert_eq!(
        get(&store, 1).and_then(|r| r.result).as_deref(),
        Some(r#"{"first":1}"#)
    );

    let mut u = update(1, TaskState::Succeeded, 2);
    u.result = Some(r#"{"second":2}"#.into());
    store.apply(&[Write::Update(u)]).expect("update");
    assert_eq!(
        get(&store, 1).and_then(|r| r.result).as_deref(),
        Some(r#"{"second":2}"#)
    );
}

/// Several updates of one task in one batch apply in order: the last wins.
pub fn updates_in_one_batch_apply_in_order(store: impl Store) {
    let mut expected = sample(1, "email");
    insert(&store, vec![expected.clone(), sample(2, "email")]);
    let running = update(1, TaskState::Running, 1);
    let mut failed = update(1, TaskState::Scheduled, 1);
    failed.run_at = Some(1_800_000_005_000);
    failed.error = Some("boom".into());
    let rerun = update(1, TaskState::Running, 2);
    let mut done = update(1, TaskState::Succeeded, 2);
    done.finished_at = Some(1_800_000_009_000);
    done.result = Some("42".into());
    let other = update(2, TaskState::Cancelled, 0);
    let writes: Vec<Write> = [&running, &failed, &rerun, &other, &done]
        .into_iter()
        .map(|u| Write::Update(u.clone()))
        .collect();
    let out = store.apply(&writes).expect("apply");
    assert_eq!(out, vec![WriteOutcome::Updated(true); 5]);
    for u in [&running, &failed, &rerun, &done] {
        expected.apply(u);
    }
    assert_eq!(get(&store, 1), Some(expected));
    assert_eq!(get(&store, 2).map(|r| r.state), Some(TaskState::Cancelled));
}

/// A task inserted earlier in a batch can be updated later in the same batch.
pub fn insert_then_update_in_one_batch(store: impl Store) {
    let mut expected = sample(1, "email");
    let u = update(1, TaskState::Running, 1);
    let out = store
        .apply(&[
            Write::Insert(vec![expected.clone()]),
            Write::Update(u.clone()),
        ])
        .expect("apply");
    assert_eq!(
        out,
        vec![
            WriteOutcome::Inserted(vec![InsertOutcome::Created]),
            WriteOutcome::Updated(true)
        ]
    );
    expected.apply(&u);
    assert_eq!(get(&store, 1), Some(expected));
}

/// A task id repeated within one call is a conflict, and nothing of that call
/// is stored.
pub fn duplicate_id_in_one_batch_stores_nothing(store: impl Store) {
    // Within one insert.
    let err = store
        .apply(&[Write::Insert(vec![
            sample(1, "a"),
            sample(2, "a"),
            sample(1, "b"),
        ])])
        .expect_err("a duplicate id must be refused");
    assert_eq!(err.kind, ErrorKind::Conflict);
    // Across two inserts of one call.
    let err = store
        .apply(&[
            Write::Insert(vec![sample(3, "a")]),
            Write::Insert(vec![sample(4, "a"), sample(3, "b")]),
        ])
        .expect_err("a duplicate id must be refused");
    assert_eq!(err.kind, ErrorKind::Conflict);
    for id in 1..=4 {
        assert_eq!(
            get(&store, id),
            None,
            "task {id} was stored by a refused batch"
        );
    }
    assert_eq!(store.max_task_id().expect("max_task_id"), None);
    assert_eq!(store.load_live().expect("load_live"), Vec::new());
}

/// Inserting an id that is already stored is a conflict, and no other write
/// of that call (inserts, updates, idempotency keys) takes effect.
pub fn existing_id_stores_nothing_of_the_batch(store: impl Store) {
    let before = sample(1, "email");
    insert(&store, vec![before.clone()]);

    let mut keyed = sample(2, "email");
    keyed.body.idempotency_key = Some("k".into());
    let mut again = sample(1, "sms");
    again.body.payload = r#"{"n":2}"#.into();
    let err = store
        .apply(&[
            Write::Update(update(1, TaskState::Running, 1)),
            Write::Insert(vec![keyed.clone(), sample(3, "email")]),
            Write::Insert(vec![again]),
            Write::Insert(vec![sample(4, "email")]),
        ])
        .expect_err("an existing id must be refused");
    assert_eq!(err.kind, ErrorKind::Conflict);
    assert_eq!(
        get(&store, 1),
        Some(before),
        "an update of a refused batch was applied"
    );
    for id in 2..=4 {
        assert_eq!(
            get(&store, id),
            None,
            "task {id} was stored by a refused batch"
        );
    }
    assert_eq!(store.max_task_id().expect("max_task_id"), Some(TaskId(1)));

    // The key of the refused batch was not taken either.
    keyed.id = TaskId(5);
    assert_eq!(
        insert(&store, vec![keyed.clone()]),
        vec![InsertOutcome::Created]
    );
    assert_eq!(get(&store, 5), Some(keyed));
}

/// A second insert with a stored idempotency key answers the original's id
/// and stores nothing.
pub fn idempotency_key_returns_the_original(store: impl Store) {
    let mut first = sample(1, "email");
    first.body.idempotency_key = Some("order-77".into());
    assert_eq!(
        insert(&store, vec![first.clone()]),
        vec![InsertOutcome::Created]
    );

    let mut second = sample(2, "sms");
    second.body.idempotency_key = Some("order-77".into());
    second.body.payload = r#"{"n":2}"#.into();
    let mut other = sample(3, "email");
    other.body.idempotency_key = Some("order-78".into());
    assert_eq!(
        insert(&store, vec![second, other.clone()]),
        vec![InsertOutcome::Existing(TaskId(1)), InsertOutcome::Created]
    );
    assert_eq!(get(&store, 1), Some(first));
    assert_eq!(get(&store, 2), None);
    assert_eq!(get(&store, 3), Some(other));
    assert_eq!(
        list(
            &store,
            TaskQuery {
                limit: 10,
                ..TaskQuery::default()
            }
        ),
        vec![3, 1]
    );
}

/// A key repeated within one call: the first record is stored, the later ones
/// answer its id, whether in the same insert or a later one.
pub fn idempotency_key_repeated_in_one_batch(store: impl Store) {
    let keyed = |id: u64, key: &str| {
        let mut r = sample(id, "email");
        r.body.idempotency_key = Some(key.into());
        r
    };
    let out = store
        .apply(&[
            Write::Insert(vec![keyed(1, "a"), keyed(2, "b"), keyed(3, "a")]),
            Write::Insert(vec![keyed(4, "b"), keyed(5, "c")]),
        ])
        .expect("apply");
    assert_eq!(
        out,
        vec![
            WriteOutcome::Inserted(vec![
                InsertOutcome::Created,
                InsertOutcome::Created,
                InsertOutcome::Existing(TaskId(1)),
            ]),
            WriteOutcome::Inserted(vec![
                InsertOutcome::Existing(TaskId(2)),
                InsertOutcome::Created
            ]),
        ]
    );
    assert_eq!(get(&store, 1), Some(keyed(1, "a")));
    assert_eq!(get(&store, 2), Some(keyed(2, "b")));
    assert_eq!(get(&store, 3), None);
    assert_eq!(get(&store, 4), None);
    assert_eq!(get(&store, 5), Some(keyed(5, "c")));
}

/// A key reused with a different request digest refuses the whole insert
/// and stores nothing of it; the same digest, or a missing digest on either
/// side (a task stored before digests were kept), answers the original. A
/// refused insert leaves the other writes of the call alone.
pub fn idempotency_key_with_another_request_refuses_the_insert(store: impl Store) {
    let keyed = |id: u64, key: &str, digest: Option<u8>| {
        let mut r = sample(id, "email");
        r.body.idempotency_key = Some(key.into());
        r.request_digest = digest.map(|d| [d; 32]);
        r
    };
    let first = keyed(1, "order-1", Some(1));
    assert_eq!(
        insert(&store, vec![first.clone()]),
        vec![InsertOutcome::Created]
    );
    assert_eq!(get(&store, 1), Some(first.clone()));
    // The same request again, and a request without a digest.
    assert_eq!(
        insert(
            &store,
            vec![keyed(2, "order-1", Some(1)), keyed(3, "order-1", None)]
        ),
        vec![
            InsertOutcome::Existing(TaskId(1)),
            InsertOutcome::Existing(TaskId(1))
        ]
    );
    // Another request under the key: nothing of the insert is stored, and
    // the write beside it in the same call is.
    let out = store
        .apply(&[
            Write::Insert(vec![
                keyed(4, "fresh", Some(4)),
                keyed(5, "order-1", Some(2)),
            ]),
            Write::Insert(vec![keyed(6, "other", Some(6))]),
        ])
        .expect("apply");
    assert_eq!(
        out,
        vec![
            WriteOutcome::KeyConflict {
                index: 1,
                holder: TaskId(1)
            },
            WriteOutcome::Inserted(vec![InsertOutcome::Created]),
        ]
    );
    assert_eq!(get(&store, 4), None);
    assert_eq!(get(&store, 5), None);
    assert_eq!(get(&store, 6), Some(keyed(6, "other", Some(6))));
    // Within one insert: the second record's request differs from the first's.
    let out = store
        .apply(&[Write::Insert(vec![
            keyed(7, "twin", Some(7)),
            keyed(8, "twin", Some(8)),
        ])])
        .expect("apply");
    assert_eq!(
        out,
        vec![WriteOutcome::KeyConflict {
            index: 1,
            holder: TaskId(7)
        }]
    );
    assert_eq!(get(&store, 7), None);
    // A holder without a digest matches any request.
    let legacy = keyed(9, "legacy", None);
    assert_eq!(insert(&store, vec![legacy]), vec![InsertOutcome::Created]);
    assert_eq!(
        insert(&store, vec![keyed(10, "legacy", Some(3))]),
        vec![InsertOutcome::Existing(TaskId(9))]
    );
    assert_eq!(get(&store, 1), Some(first));
}

/// A record whose key is taken answers the original even when its id is
/// taken too, so that replaying a committed insert is harmless; a repeated id
/// with a fresh key is still a conflict.
pub fn idempotency_key_wins_over_a_repeated_id(store: impl Store) {
    let mut first = sample(1, "email");
    first.body.idempotency_key = Some("k".into());
    let replay = Write::Insert(vec![first.clone()]);
    assert_eq!(
        insert(&store, vec![first.clone()]),
        vec![InsertOutcome::Created]
    );
    let out = store.apply(&[replay.clone(), replay]).expect("replay");
    assert_eq!(
        out,
        vec![WriteOutcome::Inserted(vec![InsertOutcome::Existing(TaskId(1))]); 2]
    );
    assert_eq!(get(&store, 1), Some(first.clone()));

    // Within one batch: the second copy of a new record answers the first.
    let mut second = sample(2, "email");
    second.body.idempotency_key = Some("k2".into());
    assert_eq!(
        insert(&store, vec![second.clone(), second.clone()]),
        vec![InsertOutcome::Created, InsertOutcome::Existing(TaskId(2))]
    );

    // The same id under a key nobody holds is a conflict.
    let mut clash = first;
    clash.body.idempotency_key = Some("fresh".into());
    let err = store
        .apply(&[Write::Insert(vec![clash])])
        .expect_err("a repeated id");
    assert_eq!(err.kind, ErrorKind::Conflict);
    assert_eq!(
        list(
            &store,
            TaskQuery {
                limit: 10,
                ..TaskQuery::default()
            }
        ),
        vec![2, 1]
    );
}

/// Listing answers the highest ids first and at most `limit` of them.
pub fn list_tasks_newest_first_with_limit(store: impl Store) {
    // Inserted out of order, in several batches: the order is by id.
    insert(&store, vec![sample(3, "a"), sample(1, "a")]);
    insert(&store, vec![sample(7, "a"), sample(5, "a")]);
    let all = TaskQuery {
        limit: 100,
        ..TaskQuery::default()
    };
    assert_eq!(list(&store, all.clone()), vec![7, 5, 3, 1]);
    assert_eq!(
        list(
            &store,
            TaskQuery {
                limit: 2,
                ..all.clone()
            }
        ),
        vec![7, 5]
    );
    assert_eq!(
        list(
            &store,
            TaskQuery {
                limit: 1,
                ..all.clone()
            }
        ),
        vec![7]
    );
    assert_eq!(
        list(
            &store,
            TaskQuery {
                limit: usize::MAX,
                ..all
            }
        ),
        vec![7, 5, 3, 1]
    );
    let records = store
        .list_tasks(&TaskQuery {
            limit: 1,
            before: Some(TaskId(7)),
            ..TaskQuery::default()
        })
        .expect("list_tasks");
    assert_eq!(records, vec![sample(5, "a")]);
}

/// Listing filters by state, type and queue, alone and combined.
pub fn list_tasks_filters_by_state_kind_and_queue(store: impl Store) {
    let mut records = Vec::new();
    for id in 1..=24u64 {
        let mut r = sample(id, ["email", "sms", "push"][(id % 3) as usize]);
        r.spec.queue = ["default", "bulk"][(id % 2) as usize].into();
        r.state = TaskState::ALL[(id % 6) as usize];
        records.push(r);
    }
    insert(&store, records.clone());
    let expect = |f: &dyn Fn(&TaskRecord) -> bool| -> Vec<u64> {
        records
            .iter()
            .rev()
            .filter(|r| f(r))
            .map(|r| r.id.0)
            .collect()
    };
    let q = TaskQuery {
        limit: 100,
        ..TaskQuery::default()
    };
    for state in TaskState::ALL {
        let got = list(
            &store,
            TaskQuery {
                state: Some(state),
                ..q.clone()
            },
        );
        assert_eq!(got, expect(&|r| r.state == state), "state {state}");
        assert_eq!(got.len(), 4);
    }
    for kind in ["email", "sms", "push", "nope"] {
        let got = list(
            &store,
            TaskQuery {
                kind: Some(kind.into()),
                ..q.clone()
            },
        );
        assert_eq!(got, expect(&|r| &*r.spec.kind == kind), "type {kind}");
    }
    for queue in ["default", "bulk", "nope"] {
        let got = list(
            &store,
            TaskQuery {
                queue: Some(queue.into()),
                ..q.clone()
            },
        );
        assert_eq!(got, expect(&|r| &*r.spec.queue == queue), "queue {queue}");
    }
    let combined = TaskQuery {
        state: Some(TaskState::Queued),
        kind: Some("sms".into()),
        queue: Some("bulk".into()),
        before: Some(TaskId(20)),
        limit: 100,
    };
    let got = list(&store, combined.clone());
    assert_eq!(got, expect(&|r| r.matches(&combined)));
    assert!(
        !got.is_empty(),
        "the combined filter should match something"
    );
    let got = list(
        &store,
        TaskQuery {
            kind: Some("sms".into()),
            limit: 3,
            ..q
        },
    );
    assert_eq!(got, expect(&|r| &*r.spec.kind == "sms")[..3]);
}

/// Paging with `before` set to the last id of each page visits every task
/// exactly once, with or without a filter.
pub fn list_tasks_pages_with_the_before_cursor(store: impl Store) {
    let mut records: Vec<TaskRecord> = (1..=25u64).map(|id| sample(id * 2, "email")).collect();
    for r in records.iter_mut().filter(|r| r.id.0 % 3 == 0) {
        r.spec.queue = "bulk".into();
    }
    insert(&store, records);
    for queue in [None, Some("bulk")] {
        let mut seen = Vec::new();
        let mut pages = Vec::new();
        let mut before = None;
        loop {
            let page = list(
                &store,
                TaskQuery {
                    queue: queue.map(str::to_string),
                    before,
                    limit: 10,
                    ..TaskQuery::default()
                },
            );
            pages.push(page.len());
            let Some(&last) = page.last() else { break };
            seen.extend(page);
            before = Some(TaskId(last));
            assert!(pages.len() <= 10, "paging does not end");
        }
        let expected: Vec<u64> = (1..=25u64)
            .rev()
            .map(|id| id * 2)
            .filter(|id| queue.is_none() || id % 3 == 0)
            .collect();
        assert_eq!(seen, expected, "queue {queue:?}");
        if queue.is_none() {
            assert_eq!(pages, vec![10, 10, 5, 0]);
        }
    }
    assert_eq!(
        list(
            &store,
            TaskQuery {
                before: Some(TaskId(2)),
                limit: 10,
                ..TaskQuery::default()
            }
        ),
        Vec::<u64>::new()
    );
    assert_eq!(
        list(
            &store,
            TaskQuery {
                before: Some(TaskId(u64::MAX)),
                limit: 2,
                ..TaskQuery::default()
            }
        ),
        vec![50, 48]
    );
}

/// `load_live` answers the scheduled, queued and running tasks, oldest first.
pub fn load_live_returns_unfinished_tasks_oldest_first(store: impl Store) {
    assert_eq!(store.load_live().expect("load_live"), Vec::new());
    let mut records = Vec::new();
    for id in [9u64, 2, 14, 5, 11, 3, 8, 12, 1, 6, 13, 4] {
        let mut r = sample(id, "email");
        r.state = TaskState::ALL[(id % 6) as usize];
        records.push(r);
    }
    insert(&store, records.clone());
    // A task made terminal by an update leaves the live set; one made live
    // again by a retry joins it.
    store
        .apply(&[
            Write::Update(update(1, TaskState::Succeeded, 1)),
            Write::Update(update(4, TaskState::Queued, 0)),
        ])
        .expect("update");
    let live = store.load_live().expect("load_live");
    assert_eq!(ids(&live), vec![2, 4, 6, 8, 12, 13, 14]);
    assert!(live.iter().all(|r| !r.state.is_terminal()));
    let two = records.iter().find(|r| r.id.0 == 2).cloned();
    assert_eq!(live.first().cloned(), two);
}

/// `max_task_id` is `None` when empty, then the highest id stored.
pub fn max_task_id_tracks_inserts(store: impl Store) {
    assert_eq!(store.max_task_id().expect("max_task_id"), None);
    insert(&store, vec![sample(5, "a")]);
    assert_eq!(store.max_task_id().expect("max_task_id"), Some(TaskId(5)));
    insert(&store, vec![sample(9, "a"), sample(7, "a")]);
    assert_eq!(store.max_task_id().expect("max_task_id"), Some(TaskId(9)));
    insert(&store, vec![sample(6, "a")]);
    assert_eq!(store.max_task_id().expect("max_task_id"), Some(TaskId(9)));
    store
        .apply(&[Write::Update(update(9, TaskState::Succeeded, 1))])
        .expect("update");
    assert_eq!(store.max_task_id().expect("max_task_id"), Some(TaskId(9)));
    let big = 1u64 << 53;
    insert(&store, vec![sample(big, "a")]);
    assert_eq!(store.max_task_id().expect("max_task_id"), Some(TaskId(big)));
}

/// Payloads with unicode, quotes, backslashes and 1 MiB of text round-trip.
pub fn payload_text_round_trips(store: impl Store) {
    let small = [
        r#"{"greeting":"héllo wörld ✓ 日本語 🦀"}"#.to_string(),
        r#"{"q":"it's \"quoted\" and 'single' \\ back\\slashed; DROP TABLE tasks; --"}"#
            .to_string(),
        r#"["\u0000 escaped nul","tab\there","line\nbreak"]"#.to_string(),
        "null".to_string(),
    ];
    let mut big = String::from(r#"{"blob":""#);
    while big.len() < 1024 * 1024 {
        big.push_str("0123456789 abcdef ÄÖÜ 🦀 \\\" ");
    }
    big.push_str(r#""}"#);
    let mut records = Vec::new();
    for (i, payload) in small.iter().chain([&big]).enumerate() {
        let mut r = sample(i as u64 + 1, "email");
        r.body.payload = payload.as_str().into();
        r.spec
            .labels
            .insert("ключ \"k\"".into(), "значение 'v' 🦀".into());
        r.spec.routing_key = Some("user/Ω/\"7\"".into());
        records.push(r);
    }
    insert(&store, records.clone());
    for r in &records {
        assert_eq!(get(&store, r.id.0).as_ref(), Some(r), "task {}", r.id);
    }
    assert_eq!(
        get(&store, records.len() as u64).map(|r| r.body.payload.len()),
        Some(big.len())
    );
}

/// Results and errors round-trip, as written at insert and by updates.
pub fn results_and_errors_round_trip(store: impl Store) {
    let mut at_insert = sample(1, "email");
    at_insert.state = TaskState::Succeeded;
    at_insert.result = Some(r#"{"sent":true,"to":["a@example.com"],"note":"ünïcode 🦀"}"#.into());
    at_insert.error = Some("an earlier attempt failed: \"smtp 451\"".into());
    insert(
        &store,
        vec![at_insert.clone(), sample(2, "email"), sample(3, "email")],
    );
    assert_eq!(get(&store, 1), Some(at_insert));

    let mut ok = update(2, TaskState::Succeeded, 1);
    ok.result = Some(r#"[1,2,{"three":3.5e10}]"#.into());
    let mut failed = update(3, TaskState::Dead, 3);
    failed.error = Some(format!(
        "traceback:\n{}",
        "  at frame ✗ 'x'\n".repeat(2_000)
    ));
    store
        .apply(&[Write::Update(ok.clone()), Write::Update(failed.clone())])
        .expect("update");
    let two = get(&store, 2).expect("task 2");
    assert_eq!(two.result, ok.result);
    assert_eq!(two.error, None);
    let three = get(&store, 3).expect("task 3");
    assert_eq!(three.result, None);
    assert_eq!(three.error, failed.error);

    // A later update's error replaces the stored one; `None` clears it.
    let mut retried = update(3, TaskState::Queued, 0);
    retried.error = None;
    store.apply(&[Write::Update(retried)]).expect("update");
    assert_eq!(get(&store, 3).and_then(|r| r.error), None);
}

/// Purging deletes terminal tasks finished before the cut-off, at most
/// `limit` of them, never a live task nor the newest one, and frees their
/// idempotency keys.
pub fn purge_deletes_only_old_terminal_tasks(store: impl Store) {
    let ended = |id: u64, state: TaskState, finished: u64| {
        let mut r = sample(id, "job");
        r.state = state;
        r.finished_at = Some(finished);
        r.body.idempotency_key = Some(format!("k{id}"));
        r
    };
    insert(
        &store,
        vec![
            ended(1, TaskState::Succeeded, 100),
            ended(2, TaskState::Dead, 200),
            sample(3, "job"),
            ended(4, TaskState::Cancelled, 900),
            ended(5, TaskState::Succeeded, 50),
        ],
    );
    let purge = |limit| {
        store
            .apply(&[Write::Purge {
                finished_before: 500,
                limit,
            }])
            .expect("purge")
    };
    assert_eq!(purge(1), vec![WriteOutcome::Purged(1)]);
    assert_eq!(get(&store, 1), None, "oldest first");
    assert_eq!(purge(10), vec![WriteOutcome::Purged(1)]);
    assert_eq!(get(&store, 2), None);
    assert!(get(&store, 3).is_some(), "live tasks stay");
    assert!(get(&store, 4).is_some(), "finished after the cut-off");
    assert!(
        get(&store, 5).is_some(),
        "the newest task keeps the id high-water mark"
    );
    assert_eq!(store.max_task_id().expect("max"), Some(TaskId(5)));
    assert_eq!(purge(10), vec![WriteOutcome::Purged(0)]);
    let mut again = sample(6, "job");
    again.body.idempotency_key = Some("k1".into());
    assert_eq!(insert(&store, vec![again]), vec![InsertOutcome::Created]);
}

/// A schedule record with distinctive values, for tests.
pub fn sample_schedule(name: &str) -> ScheduleRecord {
    ScheduleRecord {
        name: name.to_owned(),
        cron: "*/15 9-17 * * 1-5".to_owned(),
        timezone: "America/New_York".to_owned(),
        task: r#"{"type":"report.render","payload":{"q":"it's \"quoted\" ✓"},"priority":5}"#.into(),
        misfire: "catch_up".to_owned(),
        catch_up_limit: 25,
        paused: false,
        created_at: 1_700_000_000_789,
        last_fire_at: None,
    }
}

/// The task of a fire: keyed by schedule and fire time, as the server does.
fn fire_task(id: u64, schedule: &str, fire_at: u64) -> TaskRecord {
    let mut t = sample(id, "report.render");
    t.body.idempotency_key = Some(format!("schedule:{schedule}:{fire_at}"));
    t
}

fn fire(store: &impl Store, schedule: &str, fire_at: u64, task: TaskRecord) -> FireOutcome {
    let w = Write::Fire {
        schedule: schedule.to_owned(),
        fire_at,
        task,
    };
    match store.apply(&[w]).expect("fire").as_slice() {
        [WriteOutcome::Fired(o)] => *o,
        other => panic!("a fire answered {other:?}"),
    }
}

fn upsert(store: &impl Store, r: ScheduleRecord) -> bool {
    match store
        .apply(&[Write::UpsertSchedule(r)])
        .expect("upsert")
        .as_slice()
    {
        [WriteOutcome::ScheduleUpserted(replaced)] => *replaced,
        other => panic!("an upsert answered {other:?}"),
    }
}

fn last_fire(store: &impl Store, name: &str) -> Option<u64> {
    store
        .get_schedule(name)
        .expect("get_schedule")
        .unwrap_or_else(|| panic!("schedule {name} is gone"))
        .last_fire_at
}

/// Schedules read back as written, listed by name.
pub fn schedules_round_trip_and_list_by_name(store: impl Store) {
    assert_eq!(store.list_schedules().expect("list"), Vec::new());
    assert_eq!(store.get_schedule("nightly").expect("get"), None);
    let mut paused = sample_schedule("b.paused");
    paused.paused = true;
    paused.misfire = "skip".into();
    paused.last_fire_at = Some(1_800_000_000_000);
    paused.timezone = "UTC".into();
    paused.cron = "0 0 * * * *".into();
    let all = [
        sample_schedule("nightly"),
        paused,
        sample_schedule("a:first"),
    ];
    for r in &all {
        assert!(!upsert(&store, r.clone()), "{} was new", r.name);
    }
    for r in &all {
        assert_eq!(store.get_schedule(&r.name).expect("get").as_ref(), Some(r));
    }
    let names: Vec<String> = store
        .list_schedules()
        .expect("list")
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["a:first", "b.paused", "nightly"]);
    assert_eq!(store.list_schedules().expect("list")[1], all[1]);
    // Schedules are not tasks.
    assert_eq!(store.max_task_id().expect("max_task_id"), None);
}

/// Upserting a stored name replaces the schedule and says so.
pub fn upsert_replaces_a_schedule(store: impl Store) {
    assert!(!upsert(&store, sample_schedule("s")));
    let mut changed = sample_schedule("s");
    changed.cron = "0 9 * * *".into();
    changed.paused = true;
    changed.last_fire_at = Some(5);
    assert!(upsert(&store, changed.clone()));
    assert_eq!(store.get_schedule("s").expect("get"), Some(changed));
    assert_eq!(store.list_schedules().expect("list").len(), 1);
}

/// Deleting answers whether the schedule existed.
pub fn delete_schedule_reports_whether_it_existed(store: impl Store) {
    upsert(&store, sample_schedule("s"));
    upsert(&store, sample_schedule("t"));
    let out = store
        .apply(&[
            Write::DeleteSchedule("s".into()),
            Write::DeleteSchedule("s".into()),
            Write::DeleteSchedule("nope".into()),
        ])
        .expect("delete");
    assert_eq!(
        out,
        vec![
            WriteOutcome::ScheduleDeleted(true),
            WriteOutcome::ScheduleDeleted(false),
            WriteOutcome::ScheduleDeleted(false),
        ]
    );
    assert_eq!(store.get_schedule("s").expect("get"), None);
    assert_eq!(
        store.list_schedules().expect("list"),
        vec![sample_schedule("t")]
    );
}

/// A fire stores its task and sets the schedule's `last_fire_at`.
pub fn fire_stores_its_task_and_advances_last_fire_at(store: impl Store) {
    upsert(&store, sample_schedule("s"));
    let task = fire_task(1, "s", 60_000);
    assert_eq!(
        fire(&store, "s", 60_000, task.clone()),
        FireOutcome::Created
    );
    assert_eq!(get(&store, 1), Some(task));
    assert_eq!(last_fire(&store, "s"), Some(60_000));
    assert_eq!(
        fire(&store, "s", 120_000, fire_task(2, "s", 120_000)),
        FireOutcome::Created
    );
    assert_eq!(last_fire(&store, "s"), Some(120_000));
    assert_eq!(ids(&store.load_live().expect("load_live")), vec![1, 2]);
    // The rest of the schedule is untouched.
    let mut expect = sample_schedule("s");
    expect.last_fire_at = Some(120_000);
    assert_eq!(store.get_schedule("s").expect("get"), Some(expect));
}

/// A fire written again, with a new task (a retry, a restart), stores
/// nothing and answers the first fire's task.
pub fn a_fire_recorded_before_answers_its_task(store: impl Store) {
    upsert(&store, sample_schedule("s"));
    assert_eq!(
        fire(&store, "s", 60_000, fire_task(1, "s", 60_000)),
        FireOutcome::Created
    );
    let mut again = fire_task(2, "s", 60_000);
    // Even a different key: the fire itself is the unique thing.
    again.body.idempotency_key = Some("another".into());
    assert_eq!(
        fire(&store, "s", 60_000, again),
        FireOutcome::Existing(TaskId(1))
    );
    assert_eq!(get(&store, 2), None);
    assert_eq!(store.max_task_id().expect("max_task_id"), Some(TaskId(1)));
    // The key of the refused task was not taken.
    let mut other = sample(3, "x");
    other.body.idempotency_key = Some("another".into());
    assert_eq!(insert(&store, vec![other]), vec![InsertOutcome::Created]);
    // The same time of another schedule is another fire.
    upsert(&store, sample_schedule("t"));
    assert_eq!(
        fire(&store, "t", 60_000, fire_task(4, "t", 60_000)),
        FireOutcome::Created
    );
}

/// Two writes of one fire in one batch: one task.
pub fn a_fire_repeated_in_one_batch_stores_one_task(store: impl Store) {
    let w = |id| Write::Fire {
        schedule: "s".into(),
        fire_at: 7_000,
        task: fire_task(id, "s", 7_000),
    };
    let out = store
        .apply(&[Write::UpsertSchedule(sample_schedule("s")), w(1), w(2)])
        .expect("apply");
    assert_eq!(
        out,
        vec![
            WriteOutcome::ScheduleUpserted(false),
            WriteOutcome::Fired(FireOutcome::Created),
            WriteOutcome::Fired(FireOutcome::Existing(TaskId(1))),
        ]
    );
    assert_eq!(ids(&store.load_live().expect("load_live")), vec![1]);
}

/// A fire of a schedule that does not exist (deleted meanwhile) stores
/// neither the fire nor its task.
pub fn a_fire_of_an_unknown_schedule_stores_nothing(store: impl Store) {
    assert_eq!(
        fire(&store, "gone", 60_000, fire_task(1, "gone", 60_000)),
        FireOutcome::UnknownSchedule
    );
    assert_eq!(get(&store, 1), None);
    assert_eq!(store.max_task_id().expect("max_task_id"), None);
    // Created afterwards, the same fire is a new one.
    upsert(&store, sample_schedule("gone"));
    assert_eq!(
        fire(&store, "gone", 60_000, fire_task(2, "gone", 60_000)),
        FireOutcome::Created
    );
}

/// A fire whose task id is taken refuses the whole batch, the fire included:
/// written again with a fresh id, it is created.
pub fn a_fire_with_a_taken_id_refuses_the_batch(store: impl Store) {
    upsert(&store, sample_schedule("s"));
    insert(&store, vec![sample(1, "email")]);
    let err = store
        .apply(&[
            Write::Insert(vec![sample(2, "email")]),
            Write::Fire {
                schedule: "s".into(),
                fire_at: 60_000,
                task: fire_task(1, "s", 60_000),
            },
        ])
        .expect_err("a taken id");
    assert_eq!(err.kind, ErrorKind::Conflict);
    assert_eq!(get(&store, 2), None);
    assert_eq!(last_fire(&store, "s"), None);
    assert_eq!(
        fire(&store, "s", 60_000, fire_task(3, "s", 60_000)),
        FireOutcome::Created
    );
    assert_eq!(get(&store, 1).map(|r| r.spec.kind), Some("email".into()));
}

/// A fire whose task's idempotency key is already held by a task is
/// recorded with that task, which it answers.
pub fn a_fire_whose_key_is_taken_answers_the_key_holder(store: impl Store) {
    upsert(&store, sample_schedule("s"));
    insert(&store, vec![fire_task(1, "s", 60_000)]);
    assert_eq!(
        fire(&store, "s", 60_000, fire_task(2, "s", 60_000)),
        FireOutcome::Existing(TaskId(1))
    );
    assert_eq!(get(&store, 2), None);
    assert_eq!(last_fire(&store, "s"), Some(60_000));
    assert_eq!(
        fire(&store, "s", 60_000, fire_task(3, "s", 60_000)),
        FireOutcome::Existing(TaskId(1))
    );
}

/// `last_fire_at` is the latest fire, whatever the order fires are written.
pub fn last_fire_at_never_goes_back(store: impl Store) {
    upsert(&store, sample_schedule("s"));
    fire(&store, "s", 180_000, fire_task(1, "s", 180_000));
    fire(&store, "s", 60_000, fire_task(2, "s", 60_000));
    assert_eq!(last_fire(&store, "s"), Some(180_000));
    let big = 1u64 << 52;
    fire(&store, "s", big, fire_task(3, "s", big));
    assert_eq!(last_fire(&store, "s"), Some(big));
}

/// Deleting a schedule forgets its fires, so a schedule created again under
/// the name starts afresh; the tasks of the old fires stay.
pub fn delete_schedule_forgets_its_fires_but_keeps_their_tasks(store: impl Store) {
    upsert(&store, sample_schedule("s"));
    fire(&store, "s", 60_000, fire_task(1, "s", 60_000));
    store
        .apply(&[Write::DeleteSchedule("s".into())])
        .expect("delete");
    assert!(get(&store, 1).is_some());
    upsert(&store, sample_schedule("s"));
    assert_eq!(last_fire(&store, "s"), None);
    let mut t = fire_task(2, "s", 60_000);
    t.body.idempotency_key = Some("schedule:s:60000:again".into());
    assert_eq!(fire(&store, "s", 60_000, t), FireOutcome::Created);
    assert_eq!(last_fire(&store, "s"), Some(60_000));
}

fn set_paused(name: &str, paused: bool) -> Write {
    Write::SetQueuePaused {
        name: name.to_owned(),
        paused,
    }
}

/// Pause states read back by queue name; the last write of a queue wins,
/// and each outcome says whether the state changed (a queue never set is
/// not paused).
pub fn queue_pause_states_round_trip_and_list_by_name(store: impl Store) {
    assert_eq!(store.list_queue_settings().expect("list"), Vec::new());
    let out = store
        .apply(&[
            set_paused("reports", true),
            set_paused("a:bulk.v2", true),
            set_paused("reports", false),
            set_paused("never-paused", false),
            set_paused("a:bulk.v2", true),
        ])
        .expect("apply");
    assert_eq!(
        out,
        vec![
            WriteOutcome::QueuePausedSet(true),
            WriteOutcome::QueuePausedSet(true),
            WriteOutcome::QueuePausedSet(true),
            WriteOutcome::QueuePausedSet(false),
            WriteOutcome::QueuePausedSet(false),
        ]
    );
    assert_eq!(
        store.list_queue_settings().expect("list"),
        vec![
            ("a:bulk.v2".to_owned(), true),
            ("never-paused".to_owned(), false),
            ("reports".to_owned(), false),
        ]
    );
    assert_eq!(
        store
            .apply(&[set_paused("reports", true)])
            .expect("pause again"),
        vec![WriteOutcome::QueuePausedSet(true)]
    );
    assert!(store.list_queue_settings().expect("list")[2].1);
    // Queue states are neither tasks nor touched by a purge.
    store
        .apply(&[Write::Purge {
            finished_before: u64::MAX >> 2,
            limit: 100,
        }])
        .expect("purge");
    assert_eq!(store.list_queue_settings().expect("list").len(), 3);
    assert_eq!(store.max_task_id().expect("max_task_id"), None);
    assert_eq!(store.count_by_queue_state().expect("count"), Vec::new());
}

/// A batch refused for a conflict stores none of its pause states.
pub fn queue_pause_states_of_a_refused_batch_are_not_stored(store: impl Store) {
    insert(&store, vec![sample(1, "email")]);
    store.apply(&[set_paused("kept", true)]).expect("pause");
    let err = store
        .apply(&[
            set_paused("lost", true),
            set_paused("kept", false),
            Write::Insert(vec![sample(1, "email")]),
        ])
        .expect_err("a taken id");
    assert_eq!(err.kind, ErrorKind::Conflict);
    assert_eq!(
        store.list_queue_settings().expect("list"),
        vec![("kept".to_owned(), true)]
    );
}

/// Every stored task counts once, under its queue and current state, live
/// or terminal; purged tasks no longer count.
pub fn count_by_queue_state_counts_every_stored_task(store: impl Store) {
    assert_eq!(store.count_by_queue_state().expect("count"), Vec::new());
    let in_queue = |id: u64, queue: &str, state: TaskState| {
        let mut r = sample(id, "job");
        r.spec.queue = queue.into();
        r.state = state;
        if state.is_terminal() {
            r.finished_at = Some(100 + id);
        }
        r
    };
    insert(
        &store,
        vec![
            in_queue(1, "default", TaskState::Queued),
            in_queue(2, "default", TaskState::Queued),
            in_queue(3, "default", TaskState::Succeeded),
            in_queue(4, "bulk", TaskState::Dead),
            in_queue(5, "bulk", TaskState::Scheduled),
            in_queue(6, "bulk", TaskState::Cancelled),
            in_queue(7, "a.first", TaskState::Running),
            in_queue(8, "default", TaskState::Succeeded),
            in_queue(9, "zz", TaskState::Queued),
        ],
    );
    let mut done = update(2, TaskState::Succeeded, 1);
    done.finished_at = Some(150);
    store.apply(&[Write::Update(done)]).expect("update");
    let row = |q: &str, s: TaskState, n: u64| (q.to_owned(), s, n);
    assert_eq!(
        store.count_by_queue_state().expect("count"),
        vec![
            row("a.first", TaskState::Running, 1),
            row("bulk", TaskState::Scheduled, 1),
            row("bulk", TaskState::Dead, 1),
            row("bulk", TaskState::Cancelled, 1),
            row("default", TaskState::Queued, 1),
            row("default", TaskState::Succeeded, 3),
            row("zz", TaskState::Queued, 1),
        ]
    );
    // Purged tasks (finished before 105: tasks 3 and 4) stop counting.
    store
        .apply(&[Write::Purge {
            finished_before: 105,
            limit: 100,
        }])
        .expect("purge");
    assert_eq!(
        store.count_by_queue_state().expect("count"),
        vec![
            row("a.first", TaskState::Running, 1),
            row("bulk", TaskState::Scheduled, 1),
            row("bulk", TaskState::Cancelled, 1),
            row("default", TaskState::Queued, 1),
            row("default", TaskState::Succeeded, 2),
            row("zz", TaskState::Queued, 1),
        ]
    );
}

/// A batch of 10,000 tasks (the largest a client may send) is one write:
/// every task stored, listed and loaded.
pub fn a_batch_of_ten_thousand_tasks_is_one_write(store: impl Store) {
    let records: Vec<TaskRecord> = (1..=10_000u64).map(|id| sample(id, "bulk")).collect();
    let outcomes = insert(&store, records);
    assert_eq!(outcomes.len(), 10_000);
    assert!(outcomes.iter().all(|o| *o == InsertOutcome::Created));
    assert_eq!(
        store.max_task_id().expect("max_task_id"),
        Some(TaskId(10_000))
    );
    assert_eq!(store.load_live().expect("load_live").len(), 10_000);
    let page = list(
        &store,
        TaskQuery {
            limit: 1_000,
            ..TaskQuery::default()
        },
    );
    assert_eq!(page, (9_001..=10_000u64).rev().collect::<Vec<_>>());
}

/// Tasks accepted in the same millisecond keep their id order: oldest
/// first when loaded, newest first when listed.
pub fn ties_in_created_at_keep_id_order(store: impl Store) {
    let records: Vec<TaskRecord> = [7u64, 3, 5, 1]
        .into_iter()
        .map(|id| {
            let mut r = sample(id, "email");
            r.body.created_at = 1_700_000_000_000;
            r
        })
        .collect();
    insert(&store, records);
    let loaded: Vec<u64> = store
        .load_live()
        .expect("load_live")
        .iter()
        .map(|r| r.id.0)
        .collect();
    assert_eq!(loaded, vec![1, 3, 5, 7]);
    let newest_first = list(
        &store,
        TaskQuery {
            limit: 10,
            ..TaskQuery::default()
        },
    );
    assert_eq!(newest_first, vec![7, 5, 3, 1]);
}

/// Readers running while batches are written see each batch whole or not
/// at all: never part of one.
pub fn reads_during_writes_see_whole_batches(store: impl Store) {
    const BATCH: u64 = 50;
    const BATCHES: u64 = 40;
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let mut reads = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) || reads == 0 {
                let live = store.load_live().expect("load_live").len() as u64;
                assert_eq!(live % BATCH, 0, "a read saw {live} tasks: part of a batch");
                let max = store.max_task_id().expect("max_task_id").map_or(0, |t| t.0);
                assert_eq!(max % BATCH, 0, "a read saw task {max}: part of a batch");
                reads += 1;
            }
            reads
        });
        for b in 0..BATCHES {
            let records = (1..=BATCH)
                .map(|i| sample(b * BATCH + i, "email"))
                .collect();
            insert(&store, records);
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(reader.join().expect("the reader") > 0);
    });
    assert_eq!(
        store.load_live().expect("load_live").len() as u64,
        BATCH * BATCHES
    );
}

fn replica(id: &str) -> Replica {
    Replica {
        id: id.to_owned(),
        url: format!("http://{id}.invalid:7070"),
    }
}

fn fence(epoch: u64) -> Write {
    Write::Fence {
        partition: "p1".to_owned(),
        epoch,
    }
}

/// Once another replica took the lease over, a batch fenced by the old
/// epoch fails as `Fenced` and stores nothing of itself; the new epoch's
/// batches go through.
pub fn a_write_under_a_stale_epoch_is_fenced_and_stores_nothing(store: impl Store) {
    let a = replica("a");
    let first = store.claim_lease("p1", &a, 50).expect("claim");
    assert!(first.held);
    insert(&store, vec![sample(1, "email")]);
    let out = store
        .apply(&[
            fence(first.epoch),
            Write::Update(update(1, TaskState::Running, 1)),
        ])
        .expect("a batch under the current epoch");
    assert_eq!(out, vec![WriteOutcome::Fenced, WriteOutcome::Updated(true)]);

    std::thread::sleep(std::time::Duration::from_millis(120));
    let b = store
        .claim_lease("p1", &replica("b"), 60_000)
        .expect("claim");
    assert!(b.held, "an expired lease is taken over");
    assert!(b.epoch > first.epoch);

    let stale = store.apply(&[
        fence(first.epoch),
        Write::Insert(vec![sample(2, "email")]),
        Write::Update(update(1, TaskState::Succeeded, 1)),
        Write::SetQueuePaused {
            name: "q".into(),
            paused: true,
        },
    ]);
    let e = stale.expect_err("a stale epoch must be refused");
    assert_eq!(e.kind, ErrorKind::Fenced, "{e}");
    assert_eq!(get(&store, 2), None);
    assert_eq!(get(&store, 1).expect("task 1").state, TaskState::Running);
    assert!(store.list_queue_settings().expect("settings").is_empty());

    let out = store
        .apply(&[fence(b.epoch), Write::Insert(vec![sample(2, "email")])])
        .expect("the new epoch writes");
    assert_eq!(out[0], WriteOutcome::Fenced);
    assert!(get(&store, 2).is_some());
}

/// A fence on a partition nobody ever claimed is stale too.
pub fn a_write_before_any_lease_is_fenced(store: impl Store) {
    let e = store
        .apply(&[fence(1), Write::Insert(vec![sample(1, "email")])])
        .expect_err("no lease, no writes under it");
    assert_eq!(e.kind, ErrorKind::Fenced);
    assert_eq!(get(&store, 1), None);
}

/// Renewal keeps the epoch; another replica is refused while the lease
/// runs; release and expiry let it take over with a higher epoch; a
/// holder taking its own expired lease back starts a new epoch too.
pub fn leases_renew_take_over_and_release(store: impl Store) {
    let (a, b) = (replica("a"), replica("b"));
    let l1 = store.claim_lease("p1", &a, 60_000).expect("claim");
    assert!(l1.held);
    assert_eq!(
        (l1.holder.as_str(), l1.holder_url.as_str()),
        ("a", a.url.as_str())
    );
    assert!(l1.remaining_ms > 0 && l1.remaining_ms <= 60_000);

    let renewed = store.claim_lease("p1", &a, 60_000).expect("renew");
    assert!(renewed.held);
    assert_eq!(renewed.epoch, l1.epoch, "a renewal keeps the epoch");

    let refused = store.claim_lease("p1", &b, 60_000).expect("claim by b");
    assert!(!refused.held);
    assert_eq!(refused.holder, "a");
    assert_eq!(refused.holder_url, a.url);
    assert_eq!(refused.epoch, l1.epoch);
    assert!(refused.remaining_ms > 0);

    // Partitions are independent.
    let other = store.claim_lease("p2", &b, 60_000).expect("claim p2");
    assert!(other.held);

    // A release by a stale epoch or by another replica does nothing.
    store.release_lease("p1", &b, l1.epoch).expect("release");
    store
        .release_lease("p1", &a, l1.epoch + 7)
        .expect("release");
    assert!(!store.claim_lease("p1", &b, 60_000).expect("claim").held);

    store.release_lease("p1", &a, l1.epoch).expect("release");
    let l2 = store.claim_lease("p1", &b, 50).expect("take over");
    assert!(l2.held);
    assert_eq!(l2.holder, "b");
    assert_eq!(l2.epoch, l1.epoch + 1);

    std::thread::sleep(std::time::Duration::from_millis(120));
    let l3 = store.claim_lease("p1", &b, 60_000).expect("retake");
    assert!(l3.held);
    assert_eq!(
        l3.epoch,
        l2.epoch + 1,
        "an expired lease taken back is a new term"
    );
    let l4 = store.claim_lease("p1", &a, 60_000).expect("claim by a");
    assert!(!l4.held);
    assert_eq!(l4.holder, "b");
}

/// Every claim, won or not, records the replica and when.
pub fn replicas_are_recorded_at_each_claim(store: impl Store) {
    assert!(store.list_replicas().expect("list").is_empty());
    store
        .claim_lease("p1", &replica("a"), 60_000)
        .expect("claim");
    store
        .claim_lease("p1", &replica("b"), 60_000)
        .expect("claim");
    let first = store.list_replicas().expect("list");
    assert_eq!(
        first.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert_eq!(first[1].url, replica("b").url);
    assert!(first.iter().all(|r| r.last_seen_at > 1_600_000_000_000));
    std::thread::sleep(std::time::Duration::from_millis(20));
    let moved = Replica {
        id: "b".into(),
        url: "http://b2.invalid:7070".into(),
    };
    store.claim_lease("p1", &moved, 60_000).expect("claim");
    let second = store.list_replicas().expect("list");
    assert_eq!(second.len(), 2);
    assert_eq!(second[1].url, moved.url);
    assert!(second[1].last_seen_at > first[1].last_seen_at);
    assert_eq!(second[0], first[0]);
}

/// Reserved ranges never overlap, from one thread or several, and start
/// above every stored task.
pub fn reserved_ids_are_disjoint_and_above_every_stored_id(store: impl Store) {
    insert(&store, vec![sample(41, "email")]);
    let first = store.reserve_ids(10).expect("reserve").0;
    assert!(first > 41, "reserved {first}, below a stored id");
    let second = store.reserve_ids(5).expect("reserve").0;
    assert!(second >= first + 10);
    // A task stored beyond the reservations (a leader using its range)
    // pushes later ranges above it.
    insert(&store, vec![sample(second + 1_000, "email")]);
    let third = store.reserve_ids(1).expect("reserve").0;
    assert!(third > second + 1_000);

    let store = std::sync::Arc::new(store);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            std::thread::spawn(move || {
                (0..25)
                    .map(|_| store.reserve_ids(3).expect("reserve").0)
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    let mut starts: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("thread"))
        .collect();
    starts.sort_unstable();
    assert_eq!(starts.len(), 100);
    assert!(starts[0] > third);
    for pair in starts.windows(2) {
        assert!(pair[1] >= pair[0] + 3, "ranges overlap: {pair:?}");
    }
}

/// Two writers storing the same fire at once: one task, and the loser's
/// other writes are stored all the same.
pub fn a_fire_raced_from_two_threads_has_one_task_and_the_loser_keeps_its_batch(store: impl Store) {
    upsert(&store, sample_schedule("nightly"));
    let store = std::sync::Arc::new(store);
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
    let racers: Vec<_> = [(10u64, 20u64), (11, 21)]
        .into_iter()
        .map(|(fire_id, other_id)| {
            let (store, barrier) = (store.clone(), barrier.clone());
            std::thread::spawn(move || {
                let batch = [
                    Write::Insert(vec![sample(other_id, "email")]),
                    Write::Fire {
                        schedule: "nightly".into(),
                        fire_at: 1_800_000_000_000,
                        task: fire_task(fire_id, "nightly", 1_800_000_000_000),
                    },
                    Write::Update(update(other_id, TaskState::Running, 1)),
                ];
                barrier.wait();
                store.apply(&batch).expect("a fire race loses no batch")
            })
        })
        .collect();
    let outcomes: Vec<Vec<WriteOutcome>> = racers
        .into_iter()
        .map(|t| t.join().expect("thread"))
        .collect();
    let fires: Vec<FireOutcome> = outcomes
        .iter()
        .map(|o| match &o[1] {
            WriteOutcome::Fired(f) => *f,
            other => panic!("a fire answered {other:?}"),
        })
        .collect();
    let created: Vec<usize> = (0..2)
        .filter(|&i| fires[i] == FireOutcome::Created)
        .collect();
    assert_eq!(created.len(), 1, "exactly one fire wins: {fires:?}");
    let winner = [10u64, 11][created[0]];
    let loser = 1 - created[0];
    assert_eq!(fires[loser], FireOutcome::Existing(TaskId(winner)));
    assert!(get(&store, winner).is_some());
    assert_eq!(get(&store, [10u64, 11][loser]), None);
    for (i, other) in [20u64, 21].into_iter().enumerate() {
        assert_eq!(outcomes[i][2], WriteOutcome::Updated(true));
        assert_eq!(
            get(&store, other).expect("the batch's insert").state,
            TaskState::Running
        );
    }
}

/// A terminal task stays terminal whatever a late writer sends, short of
/// a retry.
pub fn a_finished_task_is_not_brought_back_by_a_stale_update(store: impl Store) {
    insert(
        &store,
        vec![sample(1, "email"), sample(2, "email"), sample(3, "email")],
    );
    let mut done = update(1, TaskState::Succeeded, 1);
    done.finished_at = Some(1_800_000_009_000);
    done.result = Some(r#"{"ok":1}"#.into());
    let mut cancelled = update(2, TaskState::Cancelled, 0);
    cancelled.finished_at = Some(1_800_000_009_000);
    let mut dead = update(3, TaskState::Dead, 3);
    dead.finished_at = Some(1_800_000_009_000);
    store
        .apply(&[
            Write::Update(done),
            Write::Update(cancelled),
            Write::Update(dead),
        ])
        .expect("finish");
    let before: Vec<TaskRecord> = (1..=3).map(|i| get(&store, i).expect("task")).collect();
    let stale = [
        Write::Update(update(1, TaskState::Running, 1)),
        Write::Update(update(1, TaskState::Queued, 0)),
        Write::Update(update(2, TaskState::Queued, 0)),
        Write::Update(update(3, TaskState::Running, 3)),
        Write::Update(update(3, TaskState::Queued, 2)),
        Write::Update(update(1, TaskState::Dead, 1)),
    ];
    let out = store.apply(&stale).expect("stale updates are answered");
    assert_eq!(out, vec![WriteOutcome::Updated(false); stale.len()]);
    let after: Vec<TaskRecord> = (1..=3).map(|i| get(&store, i).expect("task")).collect();
    assert_eq!(after, before);
}

/// A retry (a dead task set queued with no attempts) is the one update a
/// terminal task takes.
pub fn a_dead_task_is_brought_back_by_a_retry(store: impl Store) {
    insert(&store, vec![sample(1, "email")]);
    let mut dead = update(1, TaskState::Dead, 3);
    dead.finished_at = Some(1_800_000_009_000);
    dead.error = Some("boom".into());
    store.apply(&[Write::Update(dead)]).expect("dead");
    let retry = TaskUpdate {
        id: TaskId(1),
        state: TaskState::Queued,
        attempts: 0,
        worker: None,
        started_at: None,
        finished_at: None,
        run_at: None,
        result: None,
        error: None,
        attempt: None,
    };
    let out = store.apply(&[Write::Update(retry)]).expect("retry");
    assert_eq!(out, vec![WriteOutcome::Updated(true)]);
    let r = get(&store, 1).expect("task");
    assert_eq!((r.state, r.attempts, r.error), (TaskState::Queued, 0, None));
    assert!(
        store
            .load_live()
            .expect("live")
            .iter()
            .any(|t| t.id == TaskId(1))
    );
}

fn worker_record(id: u64, name: &str) -> WorkerRecord {
    WorkerRecord {
        // Worker ids are random 64-bit numbers: the high bit must survive.
        id: WorkerId::new(id).expect("non-zero"),
        name: name.to_owned(),
        types: vec!["email".into(), "report.render:v2".into()],
        labels: BTreeMap::from([("gpu".to_string(), "a100".to_string())]),
        capacity: 16,
        weight: 3,
        owner: Some([0x5a; 32]),
        registered_at: 1_800_000_000_000,
    }
}

/// Workers read back as stored, by id; a put replaces, a delete forgets,
/// and both say whether there was one.
pub fn workers_round_trip_are_replaced_and_deleted(store: impl Store) {
    assert!(store.load_workers().expect("load").is_empty());
    let a = worker_record(u64::MAX - 1, "a");
    let mut b = worker_record(7, "b");
    b.owner = None;
    b.labels.clear();
    let out = store
        .apply(&[Write::PutWorker(a.clone()), Write::PutWorker(b.clone())])
        .expect("put");
    assert_eq!(out, vec![WriteOutcome::WorkerPut(false); 2]);
    assert_eq!(
        store.load_workers().expect("load"),
        vec![b.clone(), a.clone()]
    );
    let mut a2 = a.clone();
    a2.capacity = 1;
    a2.name = "a again".into();
    let out = store
        .apply(&[
            Write::PutWorker(a2.clone()),
            Write::DeleteWorker(b.id),
            Write::DeleteWorker(b.id),
        ])
        .expect("replace and delete");
    assert_eq!(
        out,
        vec![
            WriteOutcome::WorkerPut(true),
            WriteOutcome::WorkerDeleted(true),
            WriteOutcome::WorkerDeleted(false)
        ]
    );
    assert_eq!(store.load_workers().expect("load"), vec![a2]);
}
