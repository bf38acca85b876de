//! Coalescing the updates of one task within a batch.
//!
//! A task's start (`running`) and its outcome (`succeeded`) are two
//! updates of its row. Under load they often reach the writer in the same
//! batch, and a store would then change the row, and every index the
//! change touches, twice in one transaction. The earlier update is not
//! needed when the later one alone leaves the store exactly as both would,
//! and answers what both would have answered. That holds for an update `a`
//! followed by an update `b` of the same task when:
//!
//! - `a` leaves the task live and is not a retry (a `dead` task set
//!   `queued` with no attempts): then `a` is applied exactly when the task
//!   is live before the batch, and `b`, not a retry either, exactly then
//!   too, alone or after `a`;
//! - `a` ends no attempt (its attempt record would be lost);
//! - `a` carries no result, or `b` carries one (a result is kept when an
//!   update carries none).
//!
//! Every other column of the row is set by `b` whatever `a` set. Writes in
//! between cannot tell either: other writes are of other tasks, or a purge,
//! which only deletes terminal tasks.

use std::collections::HashMap;

use dispatch_core::TaskState;

use crate::{TaskUpdate, Write, WriteOutcome};

/// For each write, the index of the later update of the same task that
/// stands for it, when the write is an update that can be left out.
pub(crate) fn superseded(writes: &[Write]) -> Vec<Option<usize>> {
    let mut by: Vec<Option<usize>> = vec![None; writes.len()];
    // The latest update of each task seen so far, walking backwards: the
    // next update of that task after the current write.
    let mut next_update: HashMap<dispatch_core::TaskId, usize> = HashMap::new();
    for (i, w) in writes.iter().enumerate().rev() {
        let Write::Update(a) = w else { continue };
        if let Some(&j) = next_update.get(&a.id)
            && let Write::Update(b) = &writes[j]
            && stands_for(a, b)
        {
            by[i] = Some(j);
        }
        next_update.insert(a.id, i);
    }
    by
}

/// Whether `b`, a later update of the same task, stands for `a` followed
/// by `b` (see the module's header).
fn stands_for(a: &TaskUpdate, b: &TaskUpdate) -> bool {
    !a.state.is_terminal()
        && !is_retry(a)
        && !is_retry(b)
        && a.attempt.is_none()
        && (a.result.is_none() || b.result.is_some())
}

fn is_retry(u: &TaskUpdate) -> bool {
    u.state == TaskState::Queued && u.attempts == 0
}

/// Applies `writes` through `apply` without the updates that later ones
/// stand for, and gives the writes back in their order with one outcome
/// each (a left-out update answers what the update standing for it does).
pub(crate) fn apply_coalesced<E>(
    writes: Vec<Write>,
    apply: impl FnOnce(Vec<Write>) -> (Vec<Write>, Result<Vec<WriteOutcome>, E>),
) -> (Vec<Write>, Result<Vec<WriteOutcome>, E>) {
    let by = superseded(&writes);
    if by.iter().all(Option::is_none) {
        return apply(writes);
    }
    // Where each kept write lands in the batch sent.
    let mut sent_at = vec![usize::MAX; writes.len()];
    let mut sent = Vec::with_capacity(writes.len());
    let mut left_out = Vec::new();
    for (i, w) in writes.into_iter().enumerate() {
        if by[i].is_some() {
            left_out.push((i, w));
        } else {
            sent_at[i] = sent.len();
            sent.push(w);
        }
    }
    let (sent, result) = apply(sent);
    let result = result.map(|outcomes| {
        (0..by.len())
            .map(|i| {
                let mut j = i;
                while let Some(k) = by[j] {
                    j = k;
                }
                outcomes[sent_at[j]].clone()
            })
            .collect()
    });
    let mut writes: Vec<Option<Write>> = (0..by.len()).map(|_| None).collect();
    let kept = (0..by.len()).filter(|&i| by[i].is_none());
    for (i, w) in kept.zip(sent).chain(left_out) {
        writes[i] = Some(w);
    }
    let writes = writes
        .into_iter()
        .map(|w| w.expect("every write given back"));
    (writes.collect(), result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dispatch_core::{AttemptOutcome, TaskId, WorkerId};

    use crate::AttemptRecord;

    fn update(id: u64, state: TaskState, attempts: u32) -> TaskUpdate {
        TaskUpdate {
            id: TaskId(id),
            state,
            attempts,
            worker: None,
            started_at: None,
            finished_at: None,
            run_at: None,
            result: None,
            error: None,
            attempt: None,
        }
    }

    fn ended(mut u: TaskUpdate) -> TaskUpdate {
        u.attempt = Some(Box::new(AttemptRecord {
            task: u.id,
            attempt: u.attempts,
            worker: WorkerId::new(7).expect("non-zero"),
            worker_name: "w".into(),
            collected_at: 1,
            finished_at: 2,
            outcome: AttemptOutcome::Succeeded,
            error: None,
            retry_delay_ms: None,
        }));
        u
    }

    #[test]
    fn a_start_is_left_out_for_the_outcome_after_it() {
        let writes = vec![
            Write::Update(update(1, TaskState::Running, 1)),
            Write::Update(update(2, TaskState::Running, 1)),
            Write::Update(ended(update(1, TaskState::Succeeded, 1))),
        ];
        assert_eq!(superseded(&writes), vec![Some(2), None, None]);
    }

    #[test]
    fn what_would_change_the_outcome_is_kept() {
        let cases = [
            // The earlier one ends an attempt.
            (
                ended(update(1, TaskState::Queued, 1)),
                update(1, TaskState::Running, 2),
            ),
            // The earlier one is terminal.
            (
                update(1, TaskState::Succeeded, 1),
                update(1, TaskState::Queued, 1),
            ),
            // A retry, earlier or later.
            (
                update(1, TaskState::Queued, 0),
                update(1, TaskState::Running, 1),
            ),
            (
                update(1, TaskState::Running, 1),
                update(1, TaskState::Queued, 0),
            ),
        ];
        for (a, b) in cases {
            let writes = vec![Write::Update(a), Write::Update(b)];
            assert_eq!(superseded(&writes), vec![None, None], "{writes:?}");
        }
        let mut a = update(1, TaskState::Running, 1);
        a.result = Some("1".into());
        let writes = vec![
            Write::Update(a),
            Write::Update(update(1, TaskState::Running, 1)),
        ];
        assert_eq!(superseded(&writes), vec![None, None]);
    }

    #[test]
    fn left_out_updates_answer_for_the_one_standing_for_them_and_come_back_in_order() {
        let writes = vec![
            Write::Update(update(1, TaskState::Running, 1)),
            Write::Update(update(1, TaskState::Queued, 1)),
            Write::Update(update(2, TaskState::Running, 1)),
            Write::Update(update(1, TaskState::Running, 2)),
        ];
        let expected = writes.clone();
        let (back, result) = apply_coalesced(writes, |sent| {
            assert_eq!(sent.len(), 2, "one update of each task is sent");
            let outcomes = vec![WriteOutcome::Updated(false), WriteOutcome::Updated(true)];
            (sent, Ok::<_, ()>(outcomes))
        });
        assert_eq!(back, expected);
        assert_eq!(
            result,
            Ok(vec![
                WriteOutcome::Updated(true),
                WriteOutcome::Updated(true),
                WriteOutcome::Updated(false),
                WriteOutcome::Updated(true),
            ])
        );
    }

    /// Applied to the memory store, a batch and its coalesced form leave
    /// the same tasks and attempts and answer the same outcomes, whatever
    /// the tasks' states before the batch.
    mod against_the_memory_store {
        use super::*;
        use crate::conformance::sample;
        use crate::{MemoryStore, Store};
        use proptest::prelude::*;

        const STATES: [TaskState; 5] = [
            TaskState::Queued,
            TaskState::Running,
            TaskState::Succeeded,
            TaskState::Dead,
            TaskState::Cancelled,
        ];

        fn an_update() -> impl Strategy<Value = TaskUpdate> {
            (1..=2u64, 0..5usize, 0..2u32, any::<bool>(), any::<bool>()).prop_map(
                |(id, state, attempts, result, ends)| {
                    let mut u = update(id, STATES[state], attempts);
                    u.result = result.then(|| format!("{id}{attempts}").into());
                    u.started_at = Some(u64::from(attempts));
                    if ends && attempts > 0 { ended(u) } else { u }
                },
            )
        }

        fn store_with(states: &[usize]) -> MemoryStore {
            let store = MemoryStore::new();
            let records = (1..=3u64)
                .zip(states)
                .map(|(id, &s)| {
                    let mut r = sample(id, "t");
                    r.state = STATES[s];
                    r
                })
                .collect();
            store.apply(&[Write::Insert(records)]).expect("inserted");
            store
        }

        fn contents(store: &MemoryStore) -> Vec<(Option<crate::TaskRecord>, Vec<AttemptRecord>)> {
            (1..=3u64)
                .map(|id| {
                    let id = TaskId(id);
                    (
                        store.get_task(id).expect("read"),
                        store.list_attempts(id).expect("read"),
                    )
                })
                .collect()
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1000))]
            #[test]
            fn coalescing_changes_nothing_a_store_shows(
                states in proptest::collection::vec(0..5usize, 3),
                updates in proptest::collection::vec(an_update(), 0..12),
            ) {
                let writes: Vec<Write> = updates.into_iter().map(Write::Update).collect();
                let plain = store_with(&states);
                let expected = plain.apply(&writes).expect("applied");
                let coalesced = store_with(&states);
                let (back, outcomes) = apply_coalesced(writes.clone(), |sent| {
                    let result = coalesced.apply(&sent);
                    (sent, result)
                });
                prop_assert_eq!(back, writes);
                prop_assert_eq!(outcomes.expect("applied"), expected);
                prop_assert_eq!(contents(&coalesced), contents(&plain));
            }
        }
    }
}
