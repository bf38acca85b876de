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

use std::collections::BTreeMap;

use dispatch_core::{TaskId, TaskSpec, TaskState};

use crate::{InsertOutcome, Store, TaskBody, TaskRecord, Write, WriteOutcome};

/// A queued task record with the given id and type, for tests.
pub fn sample(id: u64, kind: &str) -> TaskRecord {
    TaskRecord {
        id: TaskId(id),
        spec: TaskSpec::new(kind),
        body: TaskBody {
            payload: r#"{"n":1}"#.into(),
            idempotency_key: None,
            routing_key: None,
            strategy: None,
            labels: BTreeMap::new(),
            depends_on: Vec::new(),
            created_at: 1_700_000_000_000 + id,
        },
        state: TaskState::Queued,
        attempts: 0,
        worker: None,
        started_at: None,
        finished_at: None,
        result: None,
        error: None,
    }
}

/// Instantiates one `#[test]` per conformance case, each with a fresh store
/// made by evaluating `$make`.
#[macro_export]
macro_rules! store_conformance_tests {
    ($make:expr) => {
        $crate::store_conformance_tests!(@cases $make;
            insert_then_get_round_trips,
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

/// A stored record reads back exactly as written.
pub fn insert_then_get_round_trips(store: impl Store) {
    let r = sample(1, "email");
    let out = store.apply(&[Write::Insert(vec![r.clone()])]).expect("insert");
    assert_eq!(out, vec![WriteOutcome::Inserted(vec![InsertOutcome::Created])]);
    assert_eq!(store.get_task(TaskId(1)).expect("get"), Some(r));
    assert_eq!(store.get_task(TaskId(2)).expect("get"), None);
}
